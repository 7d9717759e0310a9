"""Throttling of failed client authentications and passwords, counted in the store.

Failures are counted per name (a client id or a user name) **and** remote address, and per
remote address alone, both against ``TOKENGUARD_LOCKOUT_THRESHOLD`` within
``TOKENGUARD_LOCKOUT_SECONDS``. Beyond it an address gets 429 ``slow_down`` with
``Retry-After`` and its secret or password is not checked, so guessing stops costing the
server CPU; the same name from another address is not affected.

For a client secret and a password alike, both counts are reserved atomically before the
check runs (``Store.record_failures`` counts and answers in one step), so parallel guesses
cannot slip past either, with one name or with many. A success clears the name's count and
takes back its address reservation (``Store.release_failure``), so that an office
behind one address that signs in all day is never throttled by its successes. A refusal
takes back what it reserved: an attempt that checked nothing counts for nothing, so a
count is the failures plus the attempts being checked at that moment, one locked name
does not lock the others behind the same address, and a burst of parallel successes
leaves no lockout behind it.

The price: a success costs two store writes (``Store.record_failures`` for both counts,
then ``Store.release_reservation``), and while more than the threshold of attempts from
one address are between their reservation and their check at the same moment, the later
ones get 429, successes included. That window is a store call and a hash long.

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
    """The counts ``Throttle.reserve`` took for one check."""

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

        For ``kind`` "client", "user" or "admin". Counts the address and the name in one
        store call, each atomically. Returns what ``succeeded`` takes back (None when
        throttling is off); after a failed check there is nothing more to count.
        """
        if not self.enabled:
            return None
        threshold, window = self.settings.lockout_threshold, self.settings.lockout_seconds
        address_key, key = self._address_key(), self._name_key(kind, name)
        # Both counts in one store call (one round trip on PostgreSQL and Redis).
        counts = self.store.record_failures([address_key, key], window, now)
        over = [(count, until) for count, until in counts if count > threshold]
        if over:
            # Nothing is checked: both counts go back (see the module docstring).
            for reserved in (address_key, key):
                self.store.release_failure(reserved, now)
            raise LockedOutError(retry_after=max(until for _, until in over) - now)
        return Reservation(name_key=key, address_key=address_key, now=now)

    def succeeded(self, reserved: Reservation | None) -> None:
        """After a successful check: clear the name's count and take back the address's
        reservation, so that successes never add up to a lockout."""
        if reserved is not None:
            self.store.release_reservation(reserved.address_key, reserved.name_key, reserved.now)
