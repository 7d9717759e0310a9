"""``memory://``: one process, no persistence; for tests and throwaway demos.

One ``threading.Lock`` makes every primitive atomic across threads.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import typing as t

from ..errors import ConflictError
from ..models import AdminSession
from ..models import Client
from ..models import SeatOutcome
from ..models import SigningKey
from ..models import TokenSession
from ..models import User
from .base import epoch_text
from .base import EVENTS_KEPT
from .base import new_epoch
from .base import schemes_of
from .base import session_revoked_until
from .base import Store

#: ``record_failure`` purges expired counts once the dict reaches this size, then again
#: at twice the size left after the purge: amortized O(1) per call.
_FAILURES_PURGE_MIN = 1024


class MemoryStore(Store):
    """Dicts behind a lock."""

    schemes = schemes_of("memory")
    crosses_processes = False

    def __init__(self, url: str = "memory://", **options: t.Any) -> None:
        self._lock = threading.Lock()
        self.reset()

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None

    def reset(self) -> None:
        self._claims: set[str] = set()
        self._keys: list[SigningKey] = []
        self._clients: dict[str, Client] = {}
        self._users: dict[str, User] = {}
        self._sessions: dict[str, TokenSession] = {}
        #: refresh hash -> session id, for hashes already used (replay detection).
        self._used_refresh: dict[str, str] = {}
        self._revoked: dict[str, tuple[float, int]] = {}
        self._seq = 0
        self._epoch = epoch_text(new_epoch())
        #: lockout key -> (count, until).
        self._failures: dict[str, tuple[int, float]] = {}
        #: Size of ``_failures`` at which ``record_failure`` next purges expired counts.
        self._failures_purge_at = _FAILURES_PURGE_MIN
        self._admin_sessions: dict[str, AdminSession] = {}
        self._events: collections.deque[dict[str, str]] = collections.deque(maxlen=EVENTS_KEPT)

    def claim_once(self, name: str) -> bool:
        with self._lock:
            if name in self._claims:
                return False
            self._claims.add(name)
            return True

    # -- signing keys

    def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        with self._lock:
            if not self._keys:
                self._keys.append(candidate)
            return list(self._keys)

    def add_signing_key(self, key: SigningKey, retire_others_at: float) -> None:
        with self._lock:
            self._keys = [
                k if k.retire_at is not None else dataclasses.replace(k, retire_at=retire_others_at)
                for k in self._keys
            ]
            self._keys.append(key)

    def signing_keys(self, now: float) -> list[SigningKey]:
        with self._lock:
            self._keys = [k for k in self._keys if k.retire_at is None or k.retire_at > now]
            return sorted(self._keys, key=lambda k: k.created_at)

    # -- clients

    def _name_taken(self, name: str, other_than: str | None = None) -> bool:
        return any(
            c.client_id != other_than and name in (c.client_id, c.alias)
            for c in self._clients.values()
        )

    def create_client(self, client: Client) -> None:
        with self._lock:
            if self._name_taken(client.client_id) or (
                client.alias and self._name_taken(client.alias)
            ):
                raise ConflictError("client id or alias is taken")
            self._clients[client.client_id] = client

    def get_client(self, id_or_alias: str) -> Client | None:
        with self._lock:
            client = self._clients.get(id_or_alias)
            if client is None:
                client = next((c for c in self._clients.values() if c.alias == id_or_alias), None)
            return client

    def update_client(self, client: Client) -> bool:
        with self._lock:
            if client.client_id not in self._clients:
                return False
            if client.alias and self._name_taken(client.alias, other_than=client.client_id):
                raise ConflictError("alias is taken")
            self._clients[client.client_id] = client
            return True

    def delete_client(self, client_id: str) -> bool:
        with self._lock:
            return self._clients.pop(client_id, None) is not None

    def list_clients(self) -> list[Client]:
        with self._lock:
            clients = list(self._clients.values())
        return sorted(clients, key=lambda c: (c.created_at, c.client_id))

    # -- users

    def create_user(self, user: User) -> None:
        with self._lock:
            if user.username in self._users:
                raise ConflictError("user exists")
            self._users[user.username] = user

    def get_user(self, username: str) -> User | None:
        return self._users.get(username)

    def update_user(self, user: User) -> bool:
        with self._lock:
            if user.username not in self._users:
                return False
            self._users[user.username] = user
            return True

    def delete_user(self, username: str) -> bool:
        with self._lock:
            return self._users.pop(username, None) is not None

    def list_users(self) -> list[User]:
        with self._lock:
            users = list(self._users.values())
        return sorted(users, key=lambda u: u.username)

    # -- sessions

    def _sweep(self, now: float, skew: float = 0.0) -> None:
        before = now - max(skew, 0.0)
        for sid in [s.session_id for s in self._sessions.values() if not s.is_live(before)]:
            del self._sessions[sid]
        live = set(self._sessions)
        self._used_refresh = {h: s for h, s in self._used_refresh.items() if s in live}
        self._revoked = {k: v for k, v in self._revoked.items() if v[0] > now}

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
        with self._lock:
            # After a sweep up to ``now - skew``, every session left counts.
            self._sweep(now, skew)
            replaced: list[TokenSession] = []
            if session.holds_seat:
                to_end: list[TokenSession] = []
                if client_cap is not None:
                    mine = sorted(
                        (
                            s
                            for s in self._sessions.values()
                            if s.holds_seat and s.client_id == session.client_id
                        ),
                        key=lambda s: (s.created_at, s.session_id),
                    )
                    excess = len(mine) - client_cap + 1
                    if excess > 0:
                        if not replace_oldest or client_cap <= 0:
                            return SeatOutcome(False, "client")
                        to_end = mine[:excess]
                held = sum(1 for s in self._sessions.values() if s.holds_seat) - len(to_end)
                if seat_limit is not None and held >= seat_limit:
                    return SeatOutcome(False, "pool")
                for old in to_end:
                    self._end(old.session_id, now)
                    replaced.append(old)
            self._sessions[session.session_id] = session
            return SeatOutcome(True, None, tuple(replaced))

    def earliest_seat_expiry(self, now: float, client_id: str | None = None) -> float | None:
        with self._lock:
            expiries = [
                s.expires_at
                for s in self._sessions.values()
                if s.holds_seat and s.is_live(now) and client_id in (None, s.client_id)
            ]
        return min(expiries, default=None)

    def seats_in_use(self, now: float) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.holds_seat and s.is_live(now))

    def get_session(self, session_id: str, now: float) -> TokenSession | None:
        session = self._sessions.get(session_id)
        return session if session is not None and session.is_live(now) else None

    def find_refresh(self, refresh_hash: str, now: float) -> tuple[TokenSession, bool] | None:
        with self._lock:
            for session in self._sessions.values():
                if session.refresh_hash == refresh_hash and session.is_live(now):
                    return session, True
            sid = self._used_refresh.get(refresh_hash)
            used = self._sessions.get(sid) if sid else None
            if used is not None and used.is_live(now):
                return used, False
            return None

    def rotate_refresh(
        self, session_id: str, old_hash: str, new_hash: str, expires_at: float, now: float
    ) -> TokenSession | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not session.is_live(now) or session.refresh_hash != old_hash:
                return None
            updated = dataclasses.replace(session, refresh_hash=new_hash, expires_at=expires_at)
            self._sessions[session_id] = updated
            self._used_refresh[old_hash] = session_id
            return updated

    def unrotate_refresh(self, session_id: str, old_hash: str, new_hash: str, now: float) -> bool:
        with self._lock:
            session = self._sessions.get(session_id)
            if (
                session is None
                or not session.is_live(now)
                or session.refresh_hash != new_hash
                or self._used_refresh.get(old_hash) != session_id
            ):
                return False
            self._sessions[session_id] = dataclasses.replace(session, refresh_hash=old_hash)
            del self._used_refresh[old_hash]
            return True

    def _end(self, session_id: str, now: float) -> TokenSession | None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        self._seq += 1
        self._revoked[session_id] = (session_revoked_until(session.expires_at, now), self._seq)
        return session if session.is_live(now) else None

    def end_session(self, session_id: str, now: float) -> TokenSession | None:
        with self._lock:
            return self._end(session_id, now)

    def end_sessions(self, client_id: str | None, now: float) -> int:
        with self._lock:
            ids = [
                s.session_id for s in self._sessions.values() if client_id in (None, s.client_id)
            ]
            return sum(1 for sid in ids if self._end(sid, now) is not None)

    def list_sessions(self, client_id: str | None, now: float) -> list[TokenSession]:
        with self._lock:
            sessions = [
                s
                for s in self._sessions.values()
                if s.is_live(now) and client_id in (None, s.client_id)
            ]
        return sorted(sessions, key=lambda s: (s.created_at, s.session_id))

    # -- revocation

    def revoke(self, token_id: str, expires_at: float, now: float) -> None:
        with self._lock:
            self._seq += 1
            self._revoked[token_id] = (expires_at, self._seq)

    def revocation_seq(self) -> int:
        return self._seq

    def revocation_epoch(self) -> str:
        return self._epoch

    def revocations_since(self, seq: int, now: float) -> tuple[dict[str, float], int]:
        with self._lock:
            entries = {k: exp for k, (exp, s) in self._revoked.items() if s > seq and exp > now}
            return entries, self._seq

    # -- admin console sessions

    def start_admin_session(self, session: AdminSession) -> None:
        with self._lock:
            # Sessions nobody signed out of go when the next one starts, as on SQL.
            self._admin_sessions = {
                h: s for h, s in self._admin_sessions.items() if s.expires_at > session.created_at
            }
            self._admin_sessions[session.session_hash] = session

    def touch_admin_session(
        self, session_hash: str, now: float, expires_at: float
    ) -> AdminSession | None:
        with self._lock:
            session = self._admin_sessions.get(session_hash)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._admin_sessions[session_hash]
                return None
            session = dataclasses.replace(session, expires_at=expires_at)
            self._admin_sessions[session_hash] = session
            return session

    def end_admin_session(self, session_hash: str) -> AdminSession | None:
        with self._lock:
            return self._admin_sessions.pop(session_hash, None)

    # -- recent security events

    def add_event(self, event: t.Mapping[str, str], keep: int = EVENTS_KEPT) -> None:
        with self._lock:
            if self._events.maxlen != max(keep, 1):
                self._events = collections.deque(self._events, maxlen=max(keep, 1))
            self._events.append(dict(event))

    def recent_events(self, limit: int = 100) -> list[dict[str, str]]:
        with self._lock:
            newest = list(self._events)[::-1]
        return [dict(e) for e in newest[: max(limit, 0)]]

    # -- lockout counters

    def record_failure(self, key: str, window: float, now: float) -> tuple[int, float]:
        with self._lock:
            if len(self._failures) >= self._failures_purge_at:
                self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
                self._failures_purge_at = max(_FAILURES_PURGE_MIN, 2 * len(self._failures))
            count, until = self._failures.get(key, (0, 0.0))
            if until > now:
                count += 1
            else:
                count, until = 1, now + window
            self._failures[key] = (count, until)
            return count, until

    def failures(self, key: str, now: float) -> tuple[int, float]:
        with self._lock:
            count, until = self._failures.get(key, (0, 0.0))
        return (count, until) if until > now else (0, 0.0)

    def clear_failures(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def release_failure(self, key: str, now: float) -> None:
        with self._lock:
            count, until = self._failures.get(key, (0, 0.0))
            if until > now and count > 0:
                self._failures[key] = (count - 1, until)
