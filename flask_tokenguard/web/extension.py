"""``TokenGuard``: the Flask extension object (``__init__(app=None)`` + ``init_app``).

State is kept per app, never on ``self``, so one guard may serve several apps; views and
commands reach it through ``current_state()`` (``current_app.extensions["tokenguard"]``).
"""

from __future__ import annotations

import logging
import warnings
from weakref import WeakKeyDictionary

from flask import Flask
from flask import Response

from ..config import DEFAULTS
from ..config import Settings
from ..core.admin import AdminVerifier
from ..core.grants import PasswordVerifier
from ..errors import OAuthError
from ..stores import store_from_url
from ..stores.base import Store
from . import admin
from . import endpoints
from . import ops
from .cli import tokenguard as cli_group
from .rendering import flask_response
from .state import AppState
from .state import current_state

log = logging.getLogger("flask_tokenguard")

__all__ = ["AppState", "TokenGuard"]


def handle_oauth_error(error: OAuthError) -> Response:
    """The app's error handler for every ``OAuthError`` (JSON body, challenge, no-store)."""
    return flask_response(error, current_state().settings.realm)


def _has_own_handler(app: Flask) -> bool:
    handlers = app.error_handler_spec.get(None, {})
    return any(OAuthError in by_class for by_class in handlers.values())


class TokenGuard:
    """OAuth 2.0 token endpoints, a Bearer route guard and license-counted sessions.

    ``TokenGuard(app)`` or ``guard = TokenGuard(); guard.init_app(app)``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._states: WeakKeyDictionary[Flask, AppState] = WeakKeyDictionary()
        self._password_verifier: PasswordVerifier | None = None
        self._admin_verifier: AdminVerifier | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the config, open the store, register the endpoints, errors and CLI group.

        An ``app.errorhandler(OAuthError)`` the app registered itself, before or after
        this call, is kept and wins over the built-in one.
        """
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        settings = Settings.from_app(app)
        if settings.store_url.startswith("memory:") and not app.testing:
            warnings.warn(
                "TOKENGUARD_STORE_URL is memory://: tokens and clients vanish with the "
                "process and are not shared between processes",
                stacklevel=2,
            )
        if settings.issuer is None:
            log.warning(
                "TOKENGUARD_ISSUER is not configured: only requests to a loopback host%s get "
                "tokens and metadata; others get 400. Set it in production.",
                f" or {settings.server_name}" if settings.server_name else "",
            )
        store = store_from_url(settings.store_url, **settings.store_options)
        self._states[app] = AppState(
            settings,
            store,
            lambda: self._password_verifier,
            admin_verifier=lambda: self._admin_verifier,
        )
        app.extensions["tokenguard"] = self
        app.register_blueprint(endpoints.bp, url_prefix=settings.url_prefix or None)
        if settings.admin_enabled:
            app.register_blueprint(admin.bp, url_prefix=f"{settings.url_prefix}/admin")
        ops.init_ops(app, hooks=False)
        if not _has_own_handler(app):
            app.register_error_handler(OAuthError, handle_oauth_error)
        app.cli.add_command(cli_group)

    def state(self, app: Flask) -> AppState:
        """The per-app state; raises ``RuntimeError`` if ``init_app`` was not called."""
        try:
            return self._states[app]
        except KeyError:
            raise RuntimeError("TokenGuard.init_app(app) was not called for this app") from None

    def store(self, app: Flask) -> Store:
        """The store of ``app`` (for admin code and tests)."""
        return self.state(app).store

    def close_store(self, app: Flask) -> None:
        """Close the app's store connections and audit file (the runner calls this on
        shutdown)."""
        probe = app.extensions.get("tokenguard_ops")
        if probe is not None:
            probe.close()
        state = self.state(app)
        state.audit.close()
        state.store.close()

    def password_verifier(self, fn: PasswordVerifier) -> PasswordVerifier:
        """Register ``fn(username, password) -> subject or None`` for the password grant.

        Without one the built-in user table (``flask tokenguard create-user``) is used.
        """
        self._password_verifier = fn
        return fn

    def admin_verifier(self, fn: AdminVerifier) -> AdminVerifier:
        """Register ``fn(username, password) -> bool`` for the admin console's sign-in.

        Without one, built-in users created with ``create-user --admin`` sign in.
        """
        self._admin_verifier = fn
        return fn
