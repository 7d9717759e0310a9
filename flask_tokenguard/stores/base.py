"""The one contract every store backend keeps.

Backends are small: records in, records out, and a few primitives that must be atomic
*inside the engine* (seat acquisition, refresh rotation, ending sessions) because several
threads, processes or hosts share one store. Every method that depends on time takes
``now`` (epoch seconds) from the caller, so that backends agree and tests never sleep.

Driver exceptions listed in ``base_exceptions`` are wrapped in ``StoreError`` so that
the HTTP layer can answer 503 instead of 500: every API method of a subclass is wrapped
once, when the class is created (as ``limits`` does); ``wrap_errors`` serves the rest.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import secrets
import typing as t

from ..errors import StoreError
from ..models import AdminSession
from ..models import Client
from ..models import SeatOutcome
from ..models import SigningKey
from ..models import TokenSession
from ..models import User

#: The longest id, name or hash a store keeps as a key; a longer one cannot exist.
MAX_KEY_CHARS = 256

#: Every URL scheme, and the module of ``flask_tokenguard.stores`` whose class serves it
#: (imported on first use, so that drivers stay optional). Classes name their schemes
#: with ``schemes_of(module)``.
SCHEME_MODULES: dict[str, str] = {
    "memory": "memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "redis+unix": "redis",
    "redis+sentinel": "redis",
    "redis+cluster": "redis",
    "postgresql": "sql",
    "postgresql+psycopg": "sql",
    "mysql+pymysql": "sql",
    "mariadb+pymysql": "sql",
    "mssql+pyodbc": "sql",
    "mssql+pymssql": "sql",
    "sqlite+pysqlite": "sql",
}

#: How many security events ``add_event`` keeps (the newest); older ones are dropped.
EVENTS_KEPT = 1000

#: An ended session's id stays revoked at least this long beyond ``now``, so that other
#: processes' next poll still sees a session that was ended just as it expired.
REVOKE_MARGIN = 1.0


def schemes_of(module: str) -> tuple[str, ...]:
    """The URL schemes that the store class of ``module`` serves."""
    return tuple(scheme for scheme, owner in SCHEME_MODULES.items() if owner == module)


def session_revoked_until(expires_at: float, now: float) -> float:
    """Until when the id of a session ended at ``now`` stays revoked."""
    return max(expires_at, now + REVOKE_MARGIN)


def new_epoch() -> int:
    """A fresh revocation epoch: random, positive, and fits a signed 64-bit column."""
    return secrets.randbits(62) + 1


def epoch_text(epoch: int) -> str:
    """The form ``revocation_epoch()`` returns an epoch in (16 hex digits)."""
    return f"{epoch:016x}"


#: Registry filled by ``Store.__init_subclass__``: URL scheme -> store class.
SCHEMES: dict[str, type[Store]] = {}


def impossible_key(value: str) -> bool:
    """Whether no record can have ``value`` as its key: a NUL byte, or too long.

    Lookups answer None for such keys without asking the engine, whose driver would
    reject them (PostgreSQL refuses NUL in text) with an error that means "outage".
    """
    return "\x00" in value or len(value) > MAX_KEY_CHARS


class Store(abc.ABC):
    """Abstract store: clients, users, sessions, seats, revocations, signing keys and lockouts."""

    #: URL schemes this class serves, e.g. ``("sqlite",)``.
    schemes: t.ClassVar[tuple[str, ...]] = ()
    #: Whether separate processes share state (``memory://`` does not).
    crosses_processes: t.ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__init_subclass__(**kwargs)
        for scheme in cls.schemes:
            SCHEMES[scheme] = cls
        # Every operation of the store API, as the subclass defines it, runs under
        # ``wrap_errors``: backends write no error handling of their own for it.
        for name in _API_METHODS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_wraps_errors", False):
                setattr(cls, name, _wrapping_errors(method))

    @abc.abstractmethod
    def __init__(self, url: str, **options: t.Any) -> None:
        """Parse ``url``; connect lazily or at once, and create the schema if missing."""

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        """Driver exceptions that mean the engine failed; wrapped into ``StoreError``."""
        return ()

    @contextlib.contextmanager
    def wrap_errors(self) -> t.Iterator[None]:
        """Turn driver failures into ``StoreError`` carrying the original."""
        try:
            yield
        except StoreError:
            raise
        except self.base_exceptions as exc:
            raise StoreError(f"{type(self).__name__} failed: {type(exc).__name__}", exc) from exc

    # -- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``StoreError`` if the engine cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store may be used again afterwards (reconnects)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Delete every record (tests only)."""

    def drop(self) -> None:
        """Remove everything this store created (its schema, key prefix); tests only."""
        self.reset()

    @abc.abstractmethod
    def claim_once(self, name: str) -> bool:
        """Return True to exactly one caller ever for ``name``, across processes.

        Used for one-time set-up such as the sample app's demo client.
        """

    # -- signing keys ------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        """Store ``candidate`` only if no key exists yet; return all keys, oldest first.

        Atomic, so processes opening a new store at once agree on a single first key.
        """

    @abc.abstractmethod
    def add_signing_key(self, key: SigningKey, retire_others_at: float) -> None:
        """Add ``key`` and mark every other unretired key to retire at ``retire_others_at``."""

    @abc.abstractmethod
    def signing_keys(self, now: float) -> list[SigningKey]:
        """Return keys not yet retired at ``now``, oldest first; drop the others."""

    # -- clients -----------------------------------------------------------------------

    @abc.abstractmethod
    def create_client(self, client: Client) -> None:
        """Insert ``client``; ``ConflictError`` if its id or alias is taken by any id or alias."""

    @abc.abstractmethod
    def get_client(self, id_or_alias: str) -> Client | None:
        """Look a client up by id, then by alias."""

    @abc.abstractmethod
    def update_client(self, client: Client) -> bool:
        """Replace the record with ``client.client_id``; False if there is none.

        Raise ``ConflictError`` if a changed alias is taken by another client.
        """

    @abc.abstractmethod
    def delete_client(self, client_id: str) -> bool:
        """Delete a client (not its sessions: see ``end_sessions``); False if absent."""

    @abc.abstractmethod
    def list_clients(self) -> list[Client]:
        """Every client, ordered by creation time."""

    # -- users -------------------------------------------------------------------------

    @abc.abstractmethod
    def create_user(self, user: User) -> None:
        """Insert ``user``; raise ``ConflictError`` if the name is taken."""

    @abc.abstractmethod
    def get_user(self, username: str) -> User | None: ...

    @abc.abstractmethod
    def update_user(self, user: User) -> bool:
        """Replace the user's record; False if there is none."""

    @abc.abstractmethod
    def delete_user(self, username: str) -> bool: ...

    @abc.abstractmethod
    def list_users(self) -> list[User]:
        """Every user, ordered by name."""

    # -- sessions and seats ------------------------------------------------------------

    @abc.abstractmethod
    def start_session(
        self,
        session: TokenSession,
        seat_limit: int | None,
        now: float,
        *,
        skew: float = 0.0,
        client_cap: int | None = None,
        replace_oldest: bool = False,
    ) -> SeatOutcome:
        """Insert ``session``; if it holds a seat, only while a seat is free for it.

        Atomic: expired sessions are swept, live seat holders counted (in all, and of
        ``session.client_id``) and the session inserted in one critical section, so no
        number of threads, processes or hosts can over-allocate. ``seat_limit=None``
        means an unlimited pool; ``client_cap=None`` no cap per client.

        A session that holds no seat always starts. One that holds a seat:

        - when its client already holds ``client_cap`` or more live seats: without
          ``replace_oldest``, is refused (``refused="client"``); with it, the client's
          oldest seat holders (by ``created_at``) end, as by ``end_session`` (deleted,
          their ids revoked), as many as needed to leave ``client_cap - 1``, and the
          session takes the seat (``replaced`` lists what ended, oldest first). A cap of 0
          has nothing to replace: refused;
        - then, when ``seat_limit`` seats are held in all, is refused (``refused="pool"``).

        Nothing changes when the session is refused (the sweep of expired sessions aside).

        ``skew`` is how far the hosts' clocks may disagree (seconds, ``>= 0``): a seat is
        reclaimed (swept, and no longer counted) only once its session expired at or
        before ``now - skew``, so that a host whose clock runs ahead never takes a seat
        that the other hosts still count as held.
        """

    @abc.abstractmethod
    def earliest_seat_expiry(self, now: float, client_id: str | None = None) -> float | None:
        """The ``expires_at`` of the live seat-holding session that expires first
        (of ``client_id`` only, when given)."""

    @abc.abstractmethod
    def seats_in_use(self, now: float) -> int:
        """Live sessions that hold a seat."""

    @abc.abstractmethod
    def get_session(self, session_id: str, now: float) -> TokenSession | None:
        """A live session by id; None if absent or expired."""

    @abc.abstractmethod
    def find_refresh(self, refresh_hash: str, now: float) -> tuple[TokenSession, bool] | None:
        """The live session a refresh-token hash belongs to, and whether it is current.

        ``(session, False)`` means the token was already used: a replay.
        """

    @abc.abstractmethod
    def rotate_refresh(
        self, session_id: str, old_hash: str, new_hash: str, expires_at: float, now: float
    ) -> TokenSession | None:
        """Swap the session's refresh hash if it is still ``old_hash`` and the session is live.

        Atomic compare-and-swap: of two concurrent refreshes with one token only one wins.
        Remembers ``old_hash`` as used, sets ``expires_at``, and returns the updated session,
        or None when the swap did not happen.

        A backend whose driver may resend a command after a lost reply (redis-py does)
        must treat the resend as the success it was: when the session's hash already is
        ``new_hash`` and ``old_hash`` is recorded as used by it, return the session again.
        ``new_hash`` is known only to the caller that made it, so this admits no replay.
        """

    @abc.abstractmethod
    def unrotate_refresh(self, session_id: str, old_hash: str, new_hash: str, now: float) -> bool:
        """Take back ``rotate_refresh(session_id, old_hash, new_hash, ...)`` whose new
        token was never handed out (the request failed after the rotation).

        Only while the session is live and ``new_hash`` still current: ``old_hash`` becomes
        current again and is no longer recorded as used, so the client's retry with it is
        a refresh, not a replay. The session keeps the expiry the rotation gave it. Returns
        whether it was taken back (False when the session ended, expired or moved on).
        ``new_hash`` is known only to the caller that made it: this admits no replay.
        """

    @abc.abstractmethod
    def end_session(self, session_id: str, now: float) -> TokenSession | None:
        """Delete a session, free its seat and record its id as revoked; return what ended."""

    @abc.abstractmethod
    def end_sessions(self, client_id: str | None, now: float) -> int:
        """End every session of ``client_id`` (every session at all if None); return the count."""

    @abc.abstractmethod
    def list_sessions(self, client_id: str | None, now: float) -> list[TokenSession]:
        """Live sessions, optionally of one client, ordered by creation time."""

    # -- revocation --------------------------------------------------------------------

    @abc.abstractmethod
    def revoke(self, token_id: str, expires_at: float, now: float) -> None:
        """Record one access token id (``jti``) as revoked until ``expires_at``."""

    @abc.abstractmethod
    def revocation_seq(self) -> int:
        """A number that grows with every revocation (session ends included)."""

    @abc.abstractmethod
    def revocation_epoch(self) -> str:
        """The id of the current run of ``revocation_seq``: it changes when the count restarts.

        A random string, created together with the revocation counter (atomically, when
        either is missing) and replaced whenever the counter is created again: by
        ``reset()``, or on Redis after the keys were lost (a restart without
        persistence, a failover to a replica that lagged, a restore, a FLUSH). Stable
        otherwise, across calls, processes and hosts.

        Sequence numbers compare only within one epoch. A process that caches
        revocations reads the epoch *before* each ``revocations_since`` (or on each poll
        of ``revocation_seq``); when it differs from the one its cache was built in,
        it discards its position and calls ``revocations_since(0, now)`` to read every
        live entry again. Comparing sequence numbers alone would miss the revocations
        numbered 1 to N of a counter that restarted below the N it had seen.
        """

    @abc.abstractmethod
    def revocations_since(self, seq: int, now: float) -> tuple[dict[str, float], int]:
        """Revoked ids (``sid`` or ``jti``) with ``seq`` greater than ``seq``, still unexpired.

        Returns ``({id: expires_at}, current_seq)``. Passing 0 returns every live entry.
        ``seq`` is meaningful only within the ``revocation_epoch()`` it was read in.
        """

    # -- admin console sessions --------------------------------------------------------

    @abc.abstractmethod
    def start_admin_session(self, session: AdminSession) -> None:
        """Insert an admin session (its hash is new: a collision may simply overwrite)."""

    @abc.abstractmethod
    def touch_admin_session(
        self, session_hash: str, now: float, expires_at: float
    ) -> AdminSession | None:
        """The live admin session with ``session_hash``, its expiry moved to ``expires_at``.

        Atomic. None when there is none or it expired at or before ``now`` (an expired
        one is deleted then).
        """

    @abc.abstractmethod
    def end_admin_session(self, session_hash: str) -> AdminSession | None:
        """Delete an admin session; return it (expired or not), or None if absent."""

    # -- recent security events --------------------------------------------------------

    @abc.abstractmethod
    def add_event(self, event: t.Mapping[str, str], keep: int = EVENTS_KEPT) -> None:
        """Append one audit event (``{"time": ..., "event": ..., ...}``, strings only).

        Keeps at least the newest ``keep`` events and at most about twice as many (a
        backend may trim in batches); never fails because of what it trims.
        """

    @abc.abstractmethod
    def recent_events(self, limit: int = 100) -> list[dict[str, str]]:
        """The newest ``limit`` events, newest first, as ``add_event`` received them."""

    # -- lockout counters --------------------------------------------------------------

    @abc.abstractmethod
    def record_failure(self, key: str, window: float, now: float) -> tuple[int, float]:
        """Count one failed attempt for ``key`` (e.g. "user:alice"); return (count, until).

        The count lives ``window`` seconds from the first failure of its window: when a
        failure arrives at or after ``until``, the count restarts at 1 with until = now + window.
        Atomic: N concurrent calls on a fresh key return counts 1..N exactly once each,
        and a driver's resend of one call after a lost reply counts it once.
        Keys are arbitrary strings (any printable Unicode, a few hundred characters),
        compared exactly: case, spaces and normalization all count.
        """

    @abc.abstractmethod
    def failures(self, key: str, now: float) -> tuple[int, float]:
        """(count, until) for ``key``; (0, 0.0) if none or if ``until <= now``."""

    def failures_many(self, keys: t.Sequence[str], now: float) -> list[tuple[int, float]]:
        """``failures`` of each key, in order; backends override it to ask once."""
        return [self.failures(key, now) for key in keys]

    @abc.abstractmethod
    def clear_failures(self, key: str) -> None:
        """Forget ``key``'s failures (after a success)."""

    @abc.abstractmethod
    def release_failure(self, key: str, now: float) -> None:
        """Take back one count of ``key`` (a reservation whose check succeeded).

        Never below 0; nothing when the key is absent or its window ended (``until <= now``);
        ``until`` is kept. Atomic: N concurrent calls take back N counts (down to 0), and a
        driver's resend of one call after a lost reply takes back one.
        """

    def record_failures(
        self, keys: t.Sequence[str], window: float, now: float
    ) -> list[tuple[int, float]]:
        """``record_failure`` of each key, in order, answered together (a throttle's
        reservation); each key is counted atomically on its own. Backends override it to
        ask once."""
        return [self.record_failure(key, window, now) for key in keys]

    def release_reservation(self, release_key: str, clear_key: str, now: float) -> None:
        """``release_failure(release_key)`` and ``clear_failures(clear_key)`` (a reservation
        whose check succeeded); backends override it to ask once."""
        self.release_failure(release_key, now)
        self.clear_failures(clear_key)


#: Methods wrapped by ``Store.__init_subclass__``: the abstract API, ``drop`` and the
#: overridable combined calls.
_API_METHODS = frozenset(
    Store.__abstractmethods__ - {"__init__"}
    | {"drop", "failures_many", "record_failures", "release_reservation"}
)

_Method = t.TypeVar("_Method", bound=t.Callable[..., t.Any])


def _wrapping_errors(method: _Method) -> _Method:
    """``method``, with driver failures raised as ``StoreError`` (see ``wrap_errors``)."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except self.base_exceptions as exc:
            raise StoreError(f"{type(self).__name__} failed: {type(exc).__name__}", exc) from exc

    wrapper._wraps_errors = True  # type: ignore[attr-defined]
    return t.cast("_Method", wrapper)
