"""Throttling of failed client authentications and passwords, counted in the store.

Failures are counted per name (a client id or a user name) **and** remote address, and per
remote address alone, both against ``TOKENGUARD_LOCKOUT_THRESHOLD`` within
``TOKENGUARD_LOCKOUT_SECONDS``. Beyond it an address gets 429 ``slow_down`` with
``Retry-After`` and its secret or password is not checked, so guessing stops costing the
server CPU; the same name from another address is not affected.

For a password, the per-name count is reserved atomically before the KDF runs
(``Store.record_failure`` counts and answers in one step), so parallel guesses cannot
slip past it; a success clears it. A client secret is a 256-bit value checked with one
SHA-256, where a parallel burst gains nothing, and a client's own requests arrive in
parallel all day: its counts are read before the check and written only on a failure,
so that successful requests are never throttled and cost no store write. The per-address
count records failures only, after the check, for the same reason.

Names are compared as the verifiers compare them: NFKC-normalised, case-folded and
stripped, so ``Alice``, ``alice `` and ``ａｌｉｃｅ`` share one counter.
"""

from __future__ import annotations

import dataclasses
import typing as t
import unicodedata

from ..errors import LockedOutError

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store


def normalize_name(name: str) -> str:
    """The form of a name its counter is kept under: NFKC, case-folded, stripped."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


@dataclasses.dataclass(frozen=True)
class Throttle:
    """The throttling rule of one request: its store, its settings and its remote address."""

    store: Store
    settings: Settings
    #: ``REMOTE_ADDR`` as the server gives it (after the trusted proxy); "" if unknown.
    remote_addr: str

    @property
    def enabled(self) -> bool:
        """False when ``TOKENGUARD_LOCKOUT_THRESHOLD`` is 0."""
        return bool(self.settings.lockout_threshold)

    def _address_key(self) -> str:
        return f"addr:{self.remote_addr}"

    def _name_key(self, kind: str, name: str) -> str:
        return f"{kind}:{normalize_name(name)}|{self.remote_addr}"

    def _check_address(self, now: float) -> None:
        count, until = self.store.failures(self._address_key(), now)
        if count >= self.settings.lockout_threshold:
            raise LockedOutError(retry_after=until - now)

    def reserve(self, kind: str, name: str, now: float) -> str | None:
        """Count this attempt before its check; raise ``LockedOutError`` over the threshold.

        For passwords (``kind="user"``). Returns the key a success clears (None when
        throttling is off). An address already over the threshold costs one store read.
        """
        if not self.enabled:
            return None
        self._check_address(now)
        key = self._name_key(kind, name)
        count, until = self.store.record_failure(key, self.settings.lockout_seconds, now)
        if count > self.settings.lockout_threshold:
            raise LockedOutError(retry_after=until - now)
        return key

    def check(self, kind: str, name: str, now: float) -> tuple[str | None, bool]:
        """Refuse an address or name over the threshold, without counting this attempt.

        For client secrets (``kind="client"``). Returns the key to pass to ``failed``
        (None when throttling is off) and whether it holds failures a success must clear.
        """
        if not self.enabled:
            return None, False
        key = self._name_key(kind, name)
        # Both counts in one store call (one round trip on the server stores).
        (address_count, address_until), (count, until) = self.store.failures_many(
            [self._address_key(), key], now
        )
        if address_count >= self.settings.lockout_threshold:
            raise LockedOutError(retry_after=address_until - now)
        if count >= self.settings.lockout_threshold:
            raise LockedOutError(retry_after=until - now)
        return key, count > 0

    def failed(self, now: float, key: str | None = None) -> None:
        """Record a failed check against the address, and against ``key`` when it was
        only checked, not reserved."""
        if self.enabled:
            window = self.settings.lockout_seconds
            if key is not None:
                self.store.record_failure(key, window, now)
            self.store.record_failure(self._address_key(), window, now)

    def succeeded(self, key: str | None) -> None:
        """Clear the name's count after a successful check."""
        if key is not None:
            self.store.clear_failures(key)
