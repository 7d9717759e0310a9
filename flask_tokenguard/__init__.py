"""flask_tokenguard: an OAuth 2.0 token server and Bearer route guard for Flask.

Licence-counted sessions, client and user management from the command line, and RFC
9068 access tokens that other services can verify with the published keys.
"""

from __future__ import annotations

from .errors import ConfigurationError
from .errors import InsufficientScopeError
from .errors import InvalidTokenError
from .errors import OAuthError
from .errors import StoreError
from .errors import TokenGuardError
from .models import AccessToken
from .web.extension import TokenGuard
from .web.guard import current_token
from .web.guard import require_token
from .web.middleware import TokenGuardMiddleware

__all__ = [
    "AccessToken",
    "ConfigurationError",
    "InsufficientScopeError",
    "InvalidTokenError",
    "OAuthError",
    "StoreError",
    "TokenGuard",
    "TokenGuardError",
    "TokenGuardMiddleware",
    "current_token",
    "require_token",
]
