"""``TokenGuardMiddleware``: the same Bearer guard for a WSGI application that is not Flask.

Rules map path prefixes, optionally with methods, to the scopes they need::

    rules = {
        "/api/": "view",  # any method under /api/ needs view
        ("/api/orders", "POST"): "all",  # POST /api/orders needs all
        "/api/health": None,  # open
    }
    app = TokenGuardMiddleware(legacy_wsgi_app, rules, config={"TOKENGUARD_STORE_URL": ...})

The longest matching prefix wins, and a rule naming the method wins over one that does
not (a ``GET`` rule also covers ``HEAD``). Paths are matched after merging repeated
slashes and resolving dot segments, and without regard to case, so ``//Admin/./x``
cannot slip past a ``/admin`` rule. Paths no rule matches pass through untouched. The validated token is put in the
WSGI environ as ``environ["tokenguard.token"]`` (an ``AccessToken``). Responses to
refused requests are the RFC 6750 ones the Flask guard gives.
"""

from __future__ import annotations

import posixpath
import re
import typing as t

from flask import Flask

from ..errors import OAuthError
from .extension import AppState
from .extension import TokenGuard
from .guard import authorize

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

#: ``prefix`` or ``(prefix, method)`` -> a scope, a list of scopes (all needed), or None (open).
Rules = t.Mapping[str | tuple[str, str], str | t.Sequence[str] | None]

#: The key under which the validated token is put in the WSGI environ.
ENVIRON_KEY = "tokenguard.token"


def _compile(rules: Rules) -> list[tuple[str, str | None, tuple[str, ...] | None]]:
    compiled = []
    for key, scopes in rules.items():
        prefix, method = (key, None) if isinstance(key, str) else key
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"a rule's path prefix must start with '/', got {prefix!r}")
        needed = (
            None if scopes is None else ((scopes,) if isinstance(scopes, str) else tuple(scopes))
        )
        compiled.append((prefix.lower(), method.upper() if method else None, needed))
    # Longest prefix first; for one prefix, the method-specific rule first.
    compiled.sort(key=lambda rule: (len(rule[0]), rule[1] is not None), reverse=True)
    return compiled


def _normalize(path: str) -> str:
    """Lower-case ``path``, merge repeated slashes, resolve ``.`` and ``..`` segments."""
    path = path.lower()
    if "//" not in path and "/." not in path:
        return path  # the common case, on every request: nothing to resolve
    merged = re.sub(r"/+", "/", path)
    normal = posixpath.normpath(merged)
    if merged.endswith("/") and normal != "/":
        normal += "/"
    return normal


class TokenGuardMiddleware:
    """Guard ``wsgi_app`` by ``rules``, with the store and keys of a token server.

    :param app: a Flask app on which ``TokenGuard`` was initialised; the middleware
        shares its store, keys and revocations.
    :param config: ``TOKENGUARD_*`` settings, when there is no such Flask app; a small
        internal one is built from them.
    :param serve_endpoints: also answer the token server's endpoints (``/token``,
        ``/logoff``, ...) under ``TOKENGUARD_URL_PREFIX`` from the internal app.
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
        self.rules = _compile(rules)
        if app is None:
            app = Flask("flask_tokenguard.middleware")
            app.config.update(config or {})
            TokenGuard(app)
        elif config:
            raise ValueError("pass either app or config, not both")
        self.wsgi_app = wsgi_app
        self._app = app
        self._state: AppState = app.extensions["tokenguard"].state(app)
        self._endpoint_paths: frozenset[str] = frozenset()
        if serve_endpoints:
            prefix = self._state.settings.url_prefix
            self._endpoint_paths = frozenset(
                rule.rule
                for rule in app.url_map.iter_rules()
                if rule.endpoint.startswith("tokenguard.")
            ) | {prefix + "/token"}

    def scopes_for(self, path: str, method: str) -> tuple[str, ...] | None:
        """The scopes a request needs, or None when no rule guards it."""
        path = _normalize(path)
        method = "GET" if method == "HEAD" else method
        for prefix, rule_method, scopes in self.rules:
            if path.startswith(prefix) and rule_method in (None, method):
                return scopes
        return None

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path in self._endpoint_paths:
            return self._app.wsgi_app(environ, start_response)
        scopes = self.scopes_for(path, environ.get("REQUEST_METHOD", "GET").upper())
        if scopes is None:
            return self.wsgi_app(environ, start_response)
        try:
            environ[ENVIRON_KEY] = authorize(self._state, environ, scopes)
        except OAuthError as error:
            return error(environ, start_response)
        return self.wsgi_app(environ, start_response)
