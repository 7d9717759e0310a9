"""Sessions and licence seats.

A session starts with a ``client_credentials`` or ``password`` token request and goes on
with each ``refresh_token`` request, which rotates its refresh token and extends its
idle lifetime (``TOKENGUARD_SESSION_TTL``), never past ``TOKENGUARD_SESSION_MAX_TTL``
after it started. A session whose scope includes a licensed scope holds one of
``TOKENGUARD_LICENSES`` seats until it ends or expires. Reusing a refresh token ends the
session (OAuth 2.0 Security BCP, refresh token rotation). Seats are reclaimed only once
expired by every host's clock (``TOKENGUARD_CLOCK_SKEW``).

A client may also be capped: ``Client.max_seats``, or ``TOKENGUARD_MAX_SEATS_PER_CLIENT``
when it has none of its own. A licensed session holds a seat when there is a pool *or* a
cap applies to its client, so that a cap without a pool still caps. At the cap,
``TOKENGUARD_SEAT_POLICY`` refuses the new session or ends the client's oldest one; the
store does either atomically with the start.
"""

from __future__ import annotations

import math
import typing as t

from ..errors import AdminInputError
from ..errors import InvalidGrantError
from ..errors import LicenseUnavailableError
from ..errors import NotFoundError
from ..models import Client
from ..models import TokenSession
from . import audit as events
from .clients import find_client
from .security import hash_secret
from .security import new_id
from .security import new_secret
from .security import SAFE_NAME
from .users import end_user_sessions

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store
    from .audit import Audit


def seat_cap(settings: Settings, client: Client) -> int | None:
    """The most seats ``client`` may hold at once: its own cap, else the configured one."""
    return client.max_seats if client.max_seats is not None else settings.max_seats_per_client


def is_licensed(settings: Settings, scope: str) -> bool:
    """True if ``scope`` names (or implies) a licensed scope (``TOKENGUARD_LICENSED_SCOPES``)."""
    return bool(settings.expand_scopes(scope.split()) & settings.licensed_scopes)


def needs_seat(settings: Settings, scope: str, cap: int | None = None) -> bool:
    """True if a session with ``scope`` must hold a seat: it names a licensed scope and
    there is a pool (``TOKENGUARD_LICENSES``) or a cap (``cap``) to count it against."""
    if settings.licenses is None and cap is None:
        return False
    return is_licensed(settings, scope)


class NewSession(t.NamedTuple):
    """What ``start_session`` started, and what it ended to make room."""

    session: TokenSession
    refresh_token: str
    #: The client's oldest sessions ended for this one (``replace_oldest``), oldest first.
    replaced: tuple[TokenSession, ...] = ()


def start_session(
    store: Store,
    settings: Settings,
    *,
    client: Client,
    subject: str,
    scope: str,
    now: float,
    audit: Audit | None = None,
) -> NewSession:
    """Start a session of ``client``; return it, its refresh token and what it replaced.

    Raises ``LicenseUnavailableError`` (with ``Retry-After``) when it needs a seat and
    none is free for it, in the pool or under the client's cap; nothing is stored then.
    With ``audit``, a refusal is ``license.refused`` (``reason`` ``pool`` or ``client``)
    and each replaced session ``session.ended`` with reason ``replaced``. The caller
    must still stop honouring the replaced sessions' access tokens in its own process.
    """
    cap = seat_cap(settings, client)
    refresh_token = new_secret()
    session = TokenSession(
        session_id=new_id(),
        client_id=client.client_id,
        subject=subject,
        scope=scope,
        holds_seat=needs_seat(settings, scope, cap),
        refresh_hash=hash_secret(refresh_token),
        created_at=now,
        expires_at=session_expiry(settings, created_at=now, now=now),
    )
    outcome = store.start_session(
        session,
        settings.licenses,
        now,
        skew=settings.clock_skew,
        client_cap=cap,
        replace_oldest=settings.seat_policy == "replace_oldest",
    )
    if audit is not None:
        for old in outcome.replaced:
            audit.session_ended(old, "replaced")
    if not outcome.started:
        if audit is not None:
            audit.emit(
                events.LICENSE_REFUSED,
                client_id=client.client_id,
                subject=subject,
                reason=outcome.refused,
            )
        if outcome.refused == "client":
            wait = seconds_until_seat(store, settings, now, client_id=client.client_id, cap=cap)
        else:
            wait = seconds_until_seat(store, settings, now)
        raise LicenseUnavailableError(retry_after=wait)
    return NewSession(session, refresh_token, outcome.replaced)


def session_expiry(settings: Settings, *, created_at: float, now: float) -> float:
    """When a session used at ``now`` expires: ``SESSION_TTL`` idle, at most ``SESSION_MAX_TTL``
    after ``created_at``."""
    expires_at = now + settings.session_ttl
    if settings.session_max_ttl is not None:
        expires_at = min(expires_at, created_at + settings.session_max_ttl)
    return expires_at


def seconds_until_seat(
    store: Store,
    settings: Settings,
    now: float,
    *,
    client_id: str | None = None,
    cap: int | None = None,
) -> int:
    """Seconds until the earliest held seat expires (for ``Retry-After``): of the whole
    pool, or of ``client_id`` alone when its cap (``cap``) refused the session."""
    if client_id is None:
        earliest = store.earliest_seat_expiry(now)
    else:
        earliest = store.earliest_seat_expiry(now, client_id)
    if earliest is None:
        # No seat is held: either none exist (a pool or cap of 0) or one freed just now.
        limit = settings.licenses if client_id is None else cap
        return settings.session_ttl if not limit else 1
    return max(1, math.ceil(earliest - now))


def refresh_session(
    store: Store,
    settings: Settings,
    *,
    client_id: str,
    refresh_token: str,
    now: float,
    check: t.Callable[[TokenSession], None] | None = None,
    audit: Audit | None = None,
) -> tuple[TokenSession, str]:
    """Continue the session of ``refresh_token``; return it and the new refresh token.

    A used refresh token, or one presented by another client, ends the session: either
    means the token leaked (RFC 6749 section 10.4, Security BCP 4.14). ``check`` may
    refuse the request (raising) before anything changes. With ``audit``, a session ended
    this way is reported as ``session.ended`` with reason ``replay``.
    """
    old_hash = hash_secret(refresh_token)
    found = store.find_refresh(old_hash, now)
    if found is None:
        raise InvalidGrantError()
    session, is_current = found
    if not is_current or session.client_id != client_id:
        _end_replayed(store, session, now, audit)
        raise InvalidGrantError()
    if check is not None:
        check(session)
    expires_at = session_expiry(settings, created_at=session.created_at, now=now)
    if expires_at <= now:
        # Past its absolute lifetime: the session is over, however recently it was used.
        store.end_session(session.session_id, now)
        raise InvalidGrantError()
    new_token = new_secret()
    updated = store.rotate_refresh(
        session.session_id, old_hash, hash_secret(new_token), expires_at, now
    )
    if updated is None:
        # Another request used this token first: a replay, by the rule above.
        _end_replayed(store, session, now, audit)
        raise InvalidGrantError()
    return updated, new_token


def take_back_refresh(
    store: Store, session: TokenSession, refresh_token: str, new_token: str, now: float
) -> bool:
    """Undo the rotation ``refresh_session`` made, when ``new_token`` was never sent.

    The client still holds ``refresh_token``; without this, its retry would be a replay
    and end the session. False when the session ended or expired meanwhile.
    """
    return store.unrotate_refresh(
        session.session_id, hash_secret(refresh_token), hash_secret(new_token), now
    )


def _end_replayed(store: Store, session: TokenSession, now: float, audit: Audit | None) -> None:
    ended = store.end_session(session.session_id, now)
    if ended is not None and audit is not None:
        audit.session_ended(ended, "replay")


def end_session_by_refresh_token(
    store: Store, refresh_token: str, now: float
) -> TokenSession | None:
    """End the session a refresh token (current or used) belongs to, if it is live."""
    found = store.find_refresh(hash_secret(refresh_token), now)
    if found is None:
        return None
    return store.end_session(found[0].session_id, now)


def log_off(
    store: Store,
    *,
    now: float,
    session_id: str | None = None,
    client: str | None = None,
    username: str | None = None,
    everything: bool = False,
    audit: Audit | None = None,
) -> list[TokenSession]:
    """End sessions at once for an administrator; return what ended.

    Exactly one target: one session by ``session_id``, every session of ``client`` (id or
    alias), of ``username`` (their subject; not a client's own ``client_credentials``
    sessions), or ``everything``. With ``audit``, each is ``session.ended`` with reason
    ``admin``. A session that starts while a client's or all sessions end is ended too,
    but is not returned or named: it was not listed. Raises ``NotFoundError`` for a session
    that is not live or an unknown client.
    """
    targets = (session_id is not None, client is not None, username is not None, everything)
    if sum(targets) != 1:
        raise AdminInputError("give exactly one of a session id, a client, a user or everything")
    if username is not None:
        return end_user_sessions(store, username, now, reason="admin", audit=audit)
    if session_id is not None:
        one = store.end_session(session_id, now) if SAFE_NAME.fullmatch(session_id) else None
        if one is None:
            raise NotFoundError(f"no live session {session_id!r}")
        ended = [one]
    else:
        client_id = None if client is None else find_client(store, client).client_id
        # Listed first, so that each ended session is named in the audit trail.
        ended = store.list_sessions(client_id, now)
        store.end_sessions(client_id, now)
    if audit is not None:
        for session in ended:
            audit.session_ended(session, "admin")
    return ended


def describe(session: TokenSession) -> dict[str, t.Any]:
    """A session as JSON for listings (never its refresh hash)."""
    return {
        "session_id": session.session_id,
        "client_id": session.client_id,
        "subject": session.subject,
        "scopes": session.scope.split(),
        "holds_seat": session.holds_seat,
        "created_at": int(session.created_at),
        "expires_at": int(session.expires_at),
    }
