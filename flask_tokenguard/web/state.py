"""``AppState``: what one app's guard needs, and ``current_state()`` to reach it.

The extension, the endpoints, the CLI, the guard and the middleware all read the state
from here; this module imports nothing else of the web layer (``metrics`` for a type only), so
the imports form a tree.
"""

from __future__ import annotations

import functools
import time
import typing as t

from flask import current_app

from ..config import Settings
from ..core.admin import AdminVerifier
from ..core.audit import Audit
from ..core.grants import PasswordVerifier
from ..core.tokens import KeyRing
from ..core.tokens import RevocationCache
from ..core.tokens import TokenVerifier
from ..stores.base import Store

if t.TYPE_CHECKING:  # pragma: no cover
    from .metrics import Metrics


class AppState:
    """Everything one app's guard needs: settings, store, keys and the token verifier."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        password_verifier: t.Callable[[], PasswordVerifier | None] = lambda: None,
        *,
        admin_verifier: t.Callable[[], AdminVerifier | None] = lambda: None,
    ) -> None:
        self._password_verifier = password_verifier
        self._admin_verifier = admin_verifier
        #: The validated ``TOKENGUARD_*`` settings.
        self.settings = settings
        #: The store chosen by ``TOKENGUARD_STORE_URL``.
        self.store = store
        #: Signing keys (newest signs; older ones verify until their tokens expire).
        self.keys = KeyRing.from_settings(store, settings)
        #: Bearer token validation with the per-process cache and revocation set.
        self.verifier = TokenVerifier(
            self.keys,
            RevocationCache(store, settings.revocation_lag, settings.clock_skew),
            settings,
        )
        #: The audit trail: the ``flask_tokenguard.audit`` logger, ``TOKENGUARD_AUDIT_LOG``,
        #: and the store's recent events (for the admin console of every process).
        self.audit = Audit(settings.audit_log, store=store)
        #: The Prometheus metrics when ``TOKENGUARD_METRICS_ENABLED`` (set by ``init_ops``).
        self.metrics: Metrics | None = None

    @property
    def password_verifier(self) -> PasswordVerifier | None:
        """The app's own user check, if one was registered."""
        return self._password_verifier()

    @property
    def admin_verifier(self) -> AdminVerifier | None:
        """The app's own administrator check for the admin console, if one was registered."""
        return self._admin_verifier()

    def sync_revocations(self) -> None:
        """Pull revocations now: after this process ended a session it must refuse its
        tokens at once, not after ``TOKENGUARD_REVOCATION_LAG``."""
        self.verifier.revocations.poll(time.time(), wait=True)

    def note_ended_session(self, session_id: str) -> None:
        """Refuse the tokens of a session this process just ended, at once and without a
        store round trip (other processes see it at their next revocation poll)."""
        settings = self.settings
        until = time.time() + settings.access_token_ttl + settings.clock_skew
        self.verifier.revocations.add(session_id, until)

    def has_scopes(self, granted: frozenset[str], required: t.Iterable[str]) -> bool:
        """True if ``granted`` (with what it implies) covers every ``required`` scope."""
        return all(s in self._expanded(granted) for s in required)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one state per app, lives as long
    def _expanded(self, granted: frozenset[str]) -> frozenset[str]:
        return self.settings.expand_scopes(granted)


def current_state() -> AppState:
    """The state of the current Flask app; ``RuntimeError`` if ``init_app`` was not called."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    guard = app.extensions.get("tokenguard")
    if guard is None:
        raise RuntimeError("TokenGuard.init_app(app) was not called for this app")
    return t.cast(AppState, guard.state(app))
