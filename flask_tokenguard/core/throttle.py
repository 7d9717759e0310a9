"""Throttling of failed client authentications and passwords, counted in the store.

Failures are counted per name (a client id or a user name) **and** remote address, and per
remote address alone, both against ``TOKENGUARD_LOCKOUT_THRESHOLD`` within
``TOKENGUARD_LOCKOUT_SECONDS``. Beyond it an address gets 429 ``slow_down`` with
``Retry-After`` and its secret or password is not checked, so guessing stops costing the
server CPU; the same name from another address is not affected.

For a password, both counts are reserved atomically before the KDF runs
(``Store.record_failure`` counts and answers in one step), so parallel guesses cannot
slip past either, with one name or with many. A success clears the name's count and
takes back its address reservation (``Store.release_failure``), so that an office
behind one address that signs in all day is never throttled by its successes. A
refusal by the name's count takes back the address reservation too: an attempt that
checked nothing costs the address nothing, and one locked name does not lock the others
behind the same address. A refusal by the address's own count keeps its count (one
store write, no more); that only raises a count already over the threshold.

A client secret is a 256-bit value checked with one SHA-256, where a parallel burst gains
nothing, and a client's own requests arrive in parallel all day: its counts are read
before the check and written only on a failure, so that successful requests are never
throttled and cost no store write (``check`` and ``failed``; a documented deviation from
the reservation).

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
class Reservation:
    """The counts ``Throttle.reserve`` took for one password check."""

    name_key: str
    address_key: str
    #: The time of the reservation: its release applies to that window.
    now: float


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

    def reserve(self, kind: str, name: str, now: float) -> Reservation | None:
        """Count this attempt before its check; raise ``LockedOutError`` over the threshold.

        For passwords (``kind="user"`` or ``"admin"``). Counts the address, then the name,
        each in one atomic store call. Returns what ``succeeded`` takes back (None when
        throttling is off); after a failed check there is nothing more to count.
        """
        if not self.enabled:
            return None
        threshold, window = self.settings.lockout_threshold, self.settings.lockout_seconds
        address_key = self._address_key()
        count, until = self.store.record_failure(address_key, window, now)
        if count > threshold:
            raise LockedOutError(retry_after=until - now)
        key = self._name_key(kind, name)
        count, until = self.store.record_failure(key, window, now)
        if count > threshold:
            # Nothing was checked: the address gets its count back (see the module docstring).
            self.store.release_failure(address_key, now)
            raise LockedOutError(retry_after=until - now)
        return Reservation(name_key=key, address_key=address_key, now=now)

    def check_keys(self, kind: str, name: str) -> list[str]:
        """The keys whose counts ``check`` judges: the address's, then the name's; none
        when throttling is off."""
        if not self.enabled:
            return []
        return [self._address_key(), self._name_key(kind, name)]

    def check(
        self,
        kind: str,
        name: str,
        now: float,
        counts: t.Sequence[tuple[int, float]] | None = None,
    ) -> tuple[str | None, bool]:
        """Refuse an address or name over the threshold, without counting this attempt.

        For client secrets (``kind="client"``). ``counts`` are those of ``check_keys``
        when the caller read them already (with the client, in one store call). Returns
        the key to pass to ``failed`` (None when throttling is off) and whether it holds
        failures a success must clear.
        """
        if not self.enabled:
            return None, False
        keys = self.check_keys(kind, name)
        if counts is None:
            # Both counts in one store call (one round trip on the server stores).
            counts = self.store.failures_many(keys, now)
        (address_count, address_until), (count, until) = counts
        key = keys[1]
        if address_count >= self.settings.lockout_threshold:
            raise LockedOutError(retry_after=address_until - now)
        if count >= self.settings.lockout_threshold:
            raise LockedOutError(retry_after=until - now)
        return key, count > 0

    def failed(self, now: float, key: str | None = None) -> None:
        """Record a failed check that was only checked (``check``): against ``key`` and the
        address. After ``reserve`` (no key) both counts are already taken: nothing to do."""
        if self.enabled and key is not None:
            window = self.settings.lockout_seconds
            self.store.record_failure(key, window, now)
            self.store.record_failure(self._address_key(), window, now)

    def succeeded(self, key: Reservation | str | None) -> None:
        """Clear the name's count after a successful check; after ``reserve``, also take
        back the address's reservation, so that successes never add up to a lockout."""
        if isinstance(key, Reservation):
            self.store.release_failure(key.address_key, key.now)
            self.store.clear_failures(key.name_key)
        elif key is not None:
            self.store.clear_failures(key)
