"""flask_tokenguard: an OAuth 2.0 token server and Bearer route guard for Flask.

License-counted sessions, client and user management from the command line, and RFC
9068 access tokens that other services can verify with the published keys.

The Flask layer (``TokenGuard``, ``require_token``, ``current_token``,
``TokenGuardMiddleware``) is imported on first use, so that the product's logic and the
stores (``flask_tokenguard.core``, ``flask_tokenguard.stores``) load without Flask.
"""

from __future__ import annotations

import importlib
import typing as t

from .errors import AdminInputError
from .errors import ConfigurationError
from .errors import InsufficientScopeError
from .errors import InvalidTokenError
from .errors import NotFoundError
from .errors import OAuthError
from .errors import StoreError
from .errors import TokenGuardError
from .models import AccessToken

if t.TYPE_CHECKING:  # pragma: no cover
    from .web.extension import TokenGuard
    from .web.guard import current_token
    from .web.guard import require_token
    from .web.middleware import TokenGuardMiddleware

_WEB_NAMES = {
    "TokenGuard": ".web.extension",
    "current_token": ".web.guard",
    "require_token": ".web.guard",
    "TokenGuardMiddleware": ".web.middleware",
}

__all__ = [
    "AccessToken",
    "AdminInputError",
    "ConfigurationError",
    "InsufficientScopeError",
    "InvalidTokenError",
    "NotFoundError",
    "OAuthError",
    "StoreError",
    "TokenGuard",
    "TokenGuardError",
    "TokenGuardMiddleware",
    "current_token",
    "require_token",
]


def __getattr__(name: str) -> t.Any:
    module = _WEB_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
