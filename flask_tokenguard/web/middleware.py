"""``TokenGuardMiddleware``: the same Bearer guard for a WSGI application that is not Flask.

Rules map path prefixes, optionally with methods, to the scopes they need::

    rules = {
        "/api/": "view",  # any method under /api/ needs view
        ("/api/orders", "POST"): "all",  # POST /api/orders needs all
        "/api/health": None,  # open
    }
    app = TokenGuardMiddleware(legacy_wsgi_app, rules, config={"TOKENGUARD_STORE_URL": ...})

The longest matching prefix wins, and a rule naming the method wins over one that does
not (a ``GET`` rule also covers ``HEAD``). A prefix matches whole path segments only, so
``/api/health`` does not open ``/api/health-internal``. The rule is decided on the very
path the wrapped app receives: a path with a ``.`` or ``..`` segment (also sent as
``%2e`` or behind an encoded slash) is refused with 400, never resolved for the check and
passed on raw. Repeated slashes are merged and case is ignored for matching only, so
``//Admin/x`` cannot slip past a ``/admin`` rule. Rules may name non-ASCII paths; they
match the UTF-8 paths a WSGI server hands over (decoded as latin-1, PEP 3333). Paths no
rule matches pass through untouched. The validated token is put in the WSGI environ as
``environ["tokenguard.token"]`` (an ``AccessToken``). Refused requests get the responses
the Flask guard gives, from the same renderer.
"""

from __future__ import annotations

import re
import typing as t
import warnings

from flask import Flask

from ..config import Settings
from ..errors import InvalidRequestError
from ..errors import OAuthError
from ..stores import store_from_url
from .extension import TokenGuard
from .guard import authorize
from .rendering import wsgi_response
from .state import AppState

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

#: ``prefix`` or ``(prefix, method)`` -> a scope, a list of scopes (all needed), or None (open).
Rules = t.Mapping[str | tuple[str, str], str | t.Sequence[str] | None]

#: The key under which the validated token is put in the WSGI environ.
ENVIRON_KEY = "tokenguard.token"

_SLASHES = re.compile(r"/{2,}")

#: How many (path, method) decisions a middleware remembers before it starts afresh, and
#: the longest path it remembers one for (so the memory stays small whatever is sent).
DECISION_CACHE_SIZE = 4096
DECISION_PATH_CHARS = 256


class DotSegmentError(InvalidRequestError):
    """A request path with a ``.`` or ``..`` segment, which the guard does not resolve."""

    description = "The request path holds a dot segment."


def _compile(rules: Rules) -> list[tuple[str, str | None, tuple[str, ...] | None]]:
    compiled = []
    for key, scopes in rules.items():
        prefix, method = (key, None) if isinstance(key, str) else key
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"a rule's path prefix must start with '/', got {prefix!r}")
        needed = (
            None if scopes is None else ((scopes,) if isinstance(scopes, str) else tuple(scopes))
        )
        compiled.append(
            (_SLASHES.sub("/", prefix.lower()), method.upper() if method else None, needed)
        )
    # Longest prefix first; for one prefix, the method-specific rule first.
    compiled.sort(key=lambda rule: (len(rule[0]), rule[1] is not None), reverse=True)
    return compiled


def _matches(path: str, prefix: str) -> bool:
    """True if ``prefix`` covers ``path`` in whole segments."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


def _has_dot_segment(path: str) -> bool:
    return "." in path and any(segment in (".", "..") for segment in path.split("/"))


def _match_form(path: str) -> str:
    """The form rules are matched against: real text, lower case, slashes merged."""
    if not path.isascii():
        # PEP 3333: PATH_INFO holds the raw bytes decoded as latin-1.
        path = path.encode("latin-1", "replace").decode("utf-8", "surrogateescape")
    path = path.lower()
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path


class TokenGuardMiddleware:
    """Guard ``wsgi_app`` by ``rules``, with the store and keys of a token server.

    :param app: a Flask app on which ``TokenGuard`` was initialised; the middleware
        shares its store, keys and revocations.
    :param config: ``TOKENGUARD_*`` settings, when there is no such Flask app; the
        middleware opens the store and keys itself.
    :param serve_endpoints: also answer the token server's endpoints (``/token``,
        ``/logoff``, ...) under ``TOKENGUARD_URL_PREFIX``, from a Flask app built on
        ``config`` for them.
    """

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        rules: Rules,
        *,
        app: Flask | None = None,
        config: t.Mapping[str, t.Any] | None = None,
        serve_endpoints: bool = False,
    ) -> None:
        if app is not None and config:
            raise ValueError("pass either app or config, not both")
        self._rules = tuple(_compile(rules))
        # (PATH_INFO, REQUEST_METHOD) as received -> the scopes they need: the same paths
        # come again and again, and the rule is a function of these two strings only.
        self._decided: dict[tuple[str, str], tuple[str, ...] | None] = {}
        self.wsgi_app = wsgi_app
        if app is None and serve_endpoints:
            app = Flask("flask_tokenguard.middleware")
            app.config.update(config or {})
            TokenGuard(app)
        self._app = app
        self._state: AppState
        if app is not None:
            self._state = app.extensions["tokenguard"].state(app)
        else:
            self._state = _state_from_config(config or {})
        self._endpoint_paths: frozenset[str] = frozenset()
        if serve_endpoints and app is not None:
            prefix = self._state.settings.url_prefix
            self._endpoint_paths = frozenset(
                rule.rule
                for rule in app.url_map.iter_rules()
                if rule.endpoint.startswith("tokenguard.")
            ) | {prefix + "/token"}

    def scopes_for(self, path: str, method: str) -> tuple[str, ...] | None:
        """The scopes a request for ``path`` (a WSGI ``PATH_INFO``) needs, or None when no
        rule guards it. Dot segments are the caller's to refuse."""
        path = _match_form(path)
        method = "GET" if method == "HEAD" else method
        for prefix, rule_method, scopes in self._rules:
            if rule_method in (None, method) and _matches(path, prefix):
                return scopes
        return None

    @property
    def rules(self) -> tuple[tuple[str, str | None, tuple[str, ...] | None], ...]:
        """The compiled rules, longest prefix first: ``(prefix, method, scopes)``."""
        return self._rules

    def _decide(self, path: str, method: str) -> tuple[str, ...] | None:
        """``scopes_for``, remembered per (path, method) as the server handed them over."""
        scopes = self.scopes_for(path, method.upper())
        decided = self._decided
        if len(path) > DECISION_PATH_CHARS or len(method) > 16:
            return scopes
        if len(decided) >= DECISION_CACHE_SIZE:
            # Bounded: paths that hold ids would otherwise grow it without end.
            decided.clear()
        decided[(path, method)] = scopes
        return scopes

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        try:
            if _has_dot_segment(path):
                raise DotSegmentError()
            if self._app is not None and path in self._endpoint_paths:
                return self._app.wsgi_app(environ, start_response)
            key = (path, environ.get("REQUEST_METHOD", "GET"))
            try:
                scopes = self._decided[key]
            except KeyError:
                scopes = self._decide(*key)
            if scopes is None:
                return self.wsgi_app(environ, start_response)
            environ[ENVIRON_KEY] = authorize(self._state, environ, scopes)
        except OAuthError as error:
            return wsgi_response(error, self._state.settings.realm, start_response)
        return self.wsgi_app(environ, start_response)


def _state_from_config(config: t.Mapping[str, t.Any]) -> AppState:
    settings = Settings.from_mapping(config)
    if settings.store_url.startswith("memory:") and not config.get("TESTING"):
        warnings.warn(
            "TOKENGUARD_STORE_URL is memory://: tokens and clients vanish with the "
            "process and are not shared between processes",
            stacklevel=3,
        )
    return AppState(settings, store_from_url(settings.store_url, **settings.store_options))
