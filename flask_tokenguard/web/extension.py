"""``TokenGuard``: the Flask extension object (``__init__(app=None)`` + ``init_app``).

State is kept per app, never on ``self``, so one guard may serve several apps; views and
commands reach it through ``current_app.extensions["tokenguard"]``.
"""

from __future__ import annotations

import functools
import time
import typing as t
import warnings
from weakref import WeakKeyDictionary

from flask import Flask

from ..config import DEFAULTS
from ..config import Settings
from ..core.grants import PasswordVerifier
from ..core.tokens import KeyRing
from ..core.tokens import RevocationCache
from ..core.tokens import TokenVerifier
from ..stores import store_from_url
from ..stores.base import Store
from . import endpoints
from .cli import tokenguard as cli_group


class AppState:
    """Everything one app's guard needs, built once by ``init_app``."""

    def __init__(self, guard: TokenGuard, settings: Settings, store: Store) -> None:
        self._guard = guard
        #: The validated ``TOKENGUARD_*`` settings.
        self.settings = settings
        #: The store chosen by ``TOKENGUARD_STORE_URL``.
        self.store = store
        #: Signing keys (newest signs; older ones verify until their tokens expire).
        self.keys = KeyRing(
            store, settings.signing_alg, settings.access_token_ttl, settings.key_rotation
        )
        #: Bearer token validation with the per-process cache and revocation set.
        self.verifier = TokenVerifier(
            self.keys,
            RevocationCache(store, settings.revocation_lag, settings.clock_skew),
            settings,
        )

    @property
    def password_verifier(self) -> PasswordVerifier | None:
        """The app's own user check, if one was registered."""
        return self._guard._password_verifier

    def sync_revocations(self) -> None:
        """Pull revocations now: after this process ended a session it must refuse its
        tokens at once, not after ``TOKENGUARD_REVOCATION_LAG``."""
        self.verifier.revocations.poll(time.time(), wait=True)

    def has_scopes(self, granted: frozenset[str], required: t.Iterable[str]) -> bool:
        """True if ``granted`` (with what it implies) covers every ``required`` scope."""
        return all(s in self._expanded(granted) for s in required)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one state per app, lives as long
    def _expanded(self, granted: frozenset[str]) -> frozenset[str]:
        return self.settings.expand_scopes(granted)


class TokenGuard:
    """OAuth 2.0 token endpoints, a Bearer route guard and licence-counted sessions.

    ``TokenGuard(app)`` or ``guard = TokenGuard(); guard.init_app(app)``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._states: WeakKeyDictionary[Flask, AppState] = WeakKeyDictionary()
        self._password_verifier: PasswordVerifier | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the config, open the store, register the endpoints and the CLI group."""
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        settings = Settings.from_app(app)
        if settings.store_url.startswith("memory:") and not app.testing:
            warnings.warn(
                "TOKENGUARD_STORE_URL is memory://: tokens and clients vanish with the "
                "process and are not shared between processes",
                stacklevel=2,
            )
        store = store_from_url(settings.store_url, **settings.store_options)
        self._states[app] = AppState(self, settings, store)
        app.extensions["tokenguard"] = self
        app.register_blueprint(endpoints.bp, url_prefix=settings.url_prefix or None)
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
        """Close the app's store connections (the runner calls this on shutdown)."""
        self.state(app).store.close()

    def password_verifier(self, fn: PasswordVerifier) -> PasswordVerifier:
        """Register ``fn(username, password) -> subject or None`` for the password grant.

        Without one the built-in user table (``flask tokenguard create-user``) is used.
        """
        self._password_verifier = fn
        return fn
