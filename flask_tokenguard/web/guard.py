"""The route guard: ``require_token``, ``current_token`` and the HTTPS rule. The hot path.

- Bearer tokens come only from the ``Authorization`` header (RFC 6750 section 2.1): never
  the query string, which ends up in logs.
- A missing token gets a bare ``WWW-Authenticate: Bearer`` challenge, a bad one
  ``error="invalid_token"`` (401), a valid one lacking a scope ``insufficient_scope``
  (403) naming what is needed (RFC 6750 section 3.1).
- Settings were read once by ``init_app``; nothing here parses ``app.config``.
"""

from __future__ import annotations

import functools
import ipaddress
import time
import typing as t

from flask import current_app
from flask import g
from flask import request
from werkzeug.local import LocalProxy

from ..errors import BearerError
from ..errors import HTTPSRequiredError
from ..errors import InsufficientScopeError
from ..errors import InvalidTokenError
from ..errors import MissingTokenError
from ..errors import StoreError
from ..errors import TemporarilyUnavailableError
from ..models import AccessToken
from .metrics import count_bearer_check
from .metrics import count_store_error
from .state import AppState
from .state import current_state

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from ..config import Settings

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def _get_current_token() -> AccessToken:
    token: AccessToken | None = g.get("_tokenguard_token")
    if token is None:
        raise RuntimeError(
            "current_token is only set inside a view protected by @require_token "
            "(or a blueprint with require_token as before_request)."
        )
    return token


#: The validated access token of this request (``client_id``, ``subject``, ``scopes``,
#: ``session_id``, ``expires_at``, ``claims``).
current_token: AccessToken = t.cast(AccessToken, LocalProxy(_get_current_token))


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (also IPv4-mapped)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def is_https(settings: Settings, environ: t.Mapping[str, t.Any]) -> bool:
    """Whether the request came over HTTPS, as far as this server can tell.

    Under our waitress runner the trusted proxy's ``X-Forwarded-Proto``/``-For`` were
    already applied to ``wsgi.url_scheme`` and ``REMOTE_ADDR``. Under another server the
    peer is still the proxy itself, so its ``X-Forwarded-Proto`` is read here, and
    only when the peer is exactly that address.
    """
    if environ.get("wsgi.url_scheme") == "https":
        return True
    proxy = settings.trusted_proxy
    if proxy is None or environ.get("REMOTE_ADDR") != proxy:
        return False
    if "x-forwarded-proto" not in settings.trusted_proxy_headers:
        return False
    forwarded = environ.get("HTTP_X_FORWARDED_PROTO", "")
    # The proxy appends its own value last; earlier ones came from the client.
    return bool(forwarded.rsplit(",", 1)[-1].strip().lower() == "https")


def check_https(settings: Settings, environ: t.Mapping[str, t.Any]) -> None:
    """Refuse plain HTTP unless it comes from loopback with no proxy in front.

    With a proxy configured the loopback exemption is off, because a proxy on the same
    host makes every request loopback.
    """
    if not settings.require_https or is_https(settings, environ):
        return
    if settings.trusted_proxy is None and is_loopback(environ.get("REMOTE_ADDR")):
        return
    raise HTTPSRequiredError()


def parse_bearer(header: str | None) -> str:
    """Return the token of an ``Authorization: Bearer`` header (RFC 6750 section 2.1)."""
    if not header:
        raise MissingTokenError()
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingTokenError()
    token = token.strip()
    if not token or " " in token:
        raise InvalidTokenError()
    return token


def authorize(
    state: AppState, environ: t.Mapping[str, t.Any], scopes: t.Collection[str]
) -> AccessToken:
    """Validate a WSGI request's bearer token against ``scopes``; raise an ``OAuthError``.

    Plain WSGI, so that ``TokenGuardMiddleware`` runs the very same check.
    """
    settings = state.settings
    check_https(settings, environ)
    try:
        token = parse_bearer(environ.get("HTTP_AUTHORIZATION"))
        try:
            access = state.verifier.verify(token, time.time())
        except StoreError:
            if state.metrics is not None:
                count_store_error(state)
            raise TemporarilyUnavailableError() from None
        # Granted scopes are part of what they imply: holding every required one as
        # granted settles it without expanding the implications.
        granted = access.scopes
        if scopes and not granted.issuperset(scopes) and not state.has_scopes(granted, scopes):
            raise InsufficientScopeError(scopes)
    except BearerError as error:
        if state.metrics is not None:
            outcome = "missing_token" if isinstance(error, MissingTokenError) else error.error
            count_bearer_check(state, outcome)
        raise
    if state.metrics is not None:
        count_bearer_check(state, "ok")
    return access


class require_token:  # noqa: N801 - used as a decorator, named like one
    """Require a valid bearer token with every scope in ``scopes`` (none: any token).

    Use as ``@require_token("view")`` on a view, or ``bp.before_request(require_token("all"))``
    for a whole blueprint. ``'all'`` implies ``'view'`` by ``TOKENGUARD_SCOPE_IMPLIES``.
    """

    def __init__(self, *scopes: str) -> None:
        self._view: t.Callable[..., t.Any] | None = None
        if len(scopes) == 1 and callable(scopes[0]):
            # Bare ``@require_token`` without parentheses: any valid token.
            self._view = t.cast(t.Callable[..., t.Any], scopes[0])
            scopes = ()
            functools.update_wrapper(self, self._view)
        self.scopes = tuple(scopes)

    def __call__(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if self._view is not None:
            self.check()
            return _app().ensure_sync(self._view)(*args, **kwargs)
        if len(args) == 1 and not kwargs and callable(args[0]):
            return self._wrap(args[0])
        # Called with no arguments: as a ``before_request`` function.
        self.check()
        return None

    def check(self) -> AccessToken:
        """Validate the current request and publish the token as ``current_token``."""
        # The hot path: the objects behind the proxies, read once (see ``_app``).
        environ = request._get_current_object().environ  # type: ignore[attr-defined]
        access = authorize(current_state(), environ, self.scopes)
        g._get_current_object()._tokenguard_token = access
        return access

    def _wrap(self, view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: t.Any, **kwargs: t.Any) -> t.Any:
            self.check()
            return _app().ensure_sync(view)(*args, **kwargs)

        return t.cast(F, guarded)


def _app() -> Flask:
    """The current app itself: an attribute read through the ``current_app`` proxy costs
    about a microsecond per request, a read on the app a tenth of that."""
    return t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
