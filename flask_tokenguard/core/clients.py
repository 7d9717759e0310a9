"""API clients: registration, authentication (RFC 6749 section 2.3), rotation, disabling.

A client authenticates by id or alias. A confidential client also proves its secret,
which is generated (256 bits), shown once, and stored only as a SHA-256 hash. A public
client has no secret and authenticates by id alone, so it may not use
``client_credentials``. Rotating, disabling or deleting a client ends its sessions;
updating it ends those that no longer fit what it may do.

Each administrator's action reports itself to the audit trail it is given (the command
line and the admin console pass theirs), so that the two never disagree about what an
action means: its ``client.*`` event, then ``session.ended`` with reason
``client_changed`` for every session it ended.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import AdminInputError
from ..errors import InvalidClientError
from ..errors import LockedOutError
from ..errors import NotFoundError
from ..models import Client
from ..models import TokenSession
from . import audit as events
from .security import hash_secret
from .security import new_client_id
from .security import new_secret
from .security import SAFE_NAME
from .security import verify_secret

if t.TYPE_CHECKING:  # pragma: no cover
    from ..stores.base import Store
    from .audit import Audit
    from .throttle import Throttle

#: Grant types this server implements.
GRANT_TYPES = ("client_credentials", "password", "refresh_token")
_DUMMY_HASH = hash_secret("no such client")


@dataclasses.dataclass(frozen=True)
class ClientCredentials:
    """What a request presented to authenticate its client."""

    client_id: str
    client_secret: str | None
    #: True when they came in an ``Authorization: Basic`` header (errors then answer 401).
    used_basic: bool = False


#: The longest client secret accepted before any hashing.
MAX_SECRET_LENGTH = 256


def authenticate_client(
    store: Store,
    credentials: ClientCredentials,
    throttle: Throttle | None = None,
    now: float = 0.0,
    audit: Audit | None = None,
) -> Client:
    """Return the client the credentials prove, or raise ``InvalidClientError``.

    An id or alias outside its alphabet (A-Z a-z 0-9 _ -, at most 128 characters), or a
    secret longer than 256 characters, is refused before any lookup, on every store. The
    secret check runs even for an unknown client, against a dummy hash, so timing does
    not tell which ids exist. With a ``throttle``, every attempt is counted before the check
    (a success gives the count back), and an address over the threshold (for this client
    id, or at all) gets ``LockedOutError`` without a check.
    With an ``audit`` trail, a failure is ``auth.failed`` and a throttled attempt
    ``auth.throttled``; the presented id is named only when it is a registered client's,
    since an id that matches nothing may be a secret pasted in the wrong place.
    """
    if not SAFE_NAME.fullmatch(credentials.client_id) or (
        len(credentials.client_secret or "") > MAX_SECRET_LENGTH
    ):
        if audit is not None:
            audit.emit(events.AUTH_FAILED, reason="invalid_client")
        raise InvalidClientError(used_basic=credentials.used_basic)
    # Counted before the check, atomically (``Throttle.reserve``): parallel attempts
    # cannot slip past the threshold; a success gives the count back.
    reserved = None
    if throttle is not None:
        try:
            reserved = throttle.reserve("client", credentials.client_id, now)
        except LockedOutError:
            if audit is not None:
                audit.emit(events.AUTH_THROTTLED, reason="slow_down")
            raise
    client = store.get_client(credentials.client_id)
    secret = credentials.client_secret or ""
    if client is None or client.is_public:
        verify_secret(secret, _DUMMY_HASH)
        proven = client is not None and not secret
    else:
        proven = verify_secret(secret, client.secret_hash)
    if client is None or not proven or not client.enabled:
        if audit is not None:
            known = None if client is None else client.client_id
            audit.emit(events.AUTH_FAILED, client_id=known, reason="invalid_client")
        raise InvalidClientError(used_basic=credentials.used_basic)
    if throttle is not None:
        throttle.succeeded(reserved)
    return client


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise AdminInputError(f"{kind} may use only A-Z a-z 0-9 _ - (1 to 128 characters)")
    return value


def _check_grants(grants: t.Sequence[str], public: bool) -> tuple[str, ...]:
    unknown = [g for g in grants if g not in GRANT_TYPES]
    if unknown:
        raise AdminInputError(f"unknown grant type {unknown[0]!r}; use {', '.join(GRANT_TYPES)}")
    if public and "client_credentials" in grants:
        raise AdminInputError("a public client has no secret and cannot use client_credentials")
    return tuple(dict.fromkeys(grants))


def _check_scopes(scopes: t.Sequence[str], known_scopes: t.Collection[str]) -> tuple[str, ...]:
    unknown = [s for s in scopes if s not in known_scopes]
    if unknown:
        raise AdminInputError(
            f"unknown scope {unknown[0]!r}; configured: {', '.join(known_scopes)}"
        )
    return tuple(dict.fromkeys(scopes))


def _check_max_seats(max_seats: int | None) -> int | None:
    if max_seats is not None and (
        not isinstance(max_seats, int) or isinstance(max_seats, bool) or max_seats < 0
    ):
        raise AdminInputError("max seats must be a whole number, 0 or more")
    return max_seats


#: The longest display name, in characters (every store's column holds it).
MAX_NAME_LENGTH = 255


def _check_display_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise AdminInputError("a client needs a display name")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise AdminInputError(f"a display name has at most {MAX_NAME_LENGTH} characters")
    # No control or format characters (NUL, line breaks, right-to-left overrides): a name
    # is shown to people in listings, pages and logs and must read as what it is.
    if not name.isprintable():
        raise AdminInputError("a display name may not hold control or format characters")
    return name


def create_client(
    store: Store,
    name: str,
    *,
    scopes: t.Sequence[str],
    known_scopes: t.Collection[str],
    grants: t.Sequence[str] | None = None,
    public: bool = False,
    alias: str | None = None,
    max_seats: int | None = None,
    now: float,
    audit: Audit | None = None,
) -> tuple[Client, str | None]:
    """Register a client; return it and its secret (None for a public client).

    ``max_seats`` is the client's own seat cap (None: ``TOKENGUARD_MAX_SEATS_PER_CLIENT``).
    Raises ``AdminInputError`` for unknown scopes or grants, a public client asking for
    ``client_credentials``, a malformed alias or a negative cap; ``ConflictError`` if the
    alias is taken. With ``audit``: ``client.created``.
    """
    name = _check_display_name(name)
    if grants is None or not grants:
        grants = (
            ("password", "refresh_token") if public else ("client_credentials", "refresh_token")
        )
    checked_grants = _check_grants(grants, public)
    checked_scopes = _check_scopes(scopes or list(known_scopes), known_scopes)
    if alias is not None:
        _check_name("an alias", alias)
    secret = None if public else new_secret()
    client = Client(
        client_id=new_client_id(),
        name=name,
        secret_hash=None if secret is None else hash_secret(secret),
        alias=alias,
        grants=checked_grants,
        scopes=checked_scopes,
        enabled=True,
        created_at=now,
        max_seats=_check_max_seats(max_seats),
    )
    store.create_client(client)
    if audit is not None:
        audit.emit(events.CLIENT_CREATED, client_id=client.client_id)
    return client, secret


class _Keep:
    """The type of ``KEEP``."""

    def __repr__(self) -> str:
        return "KEEP"


#: ``update_client``'s default for each field: leave it as it is.
KEEP: t.Final = _Keep()


def update_client(
    store: Store,
    id_or_alias: str,
    *,
    known_scopes: t.Collection[str],
    now: float,
    name: str | _Keep = KEEP,
    alias: str | None | _Keep = KEEP,
    scopes: t.Sequence[str] | _Keep = KEEP,
    grants: t.Sequence[str] | _Keep = KEEP,
    max_seats: int | None | _Keep = KEEP,
    default_cap: int | None = None,
    is_licensed: t.Callable[[str], bool] | None = None,
    audit: Audit | None = None,
) -> tuple[Client, list[str]]:
    """Change what is given (``alias=None`` / ``max_seats=None`` remove them), keep the rest.

    Returns the updated client and the ids of the sessions it ended, which no longer fit:

    - a scope removed: the sessions whose scope names it;
    - ``refresh_token`` removed: every session (none can go on); ``client_credentials`` or
      ``password`` removed: the sessions that grant started (the client's own, or its
      users');
    - a seat cap set or changed: the oldest seat holders beyond it. The cap is
      ``max_seats``, or ``default_cap`` (``TOKENGUARD_MAX_SEATS_PER_CLIENT``) when the
      client's own is removed. Sessions that ``is_licensed`` (their scope) says need a
      seat but that hold none (started while neither a pool nor a cap applied) end too:
      they cannot take a seat afterwards, and would go on past the cap.

    A new name or alias ends nothing. Raises as ``create_client`` does, ``NotFoundError``
    for an unknown client, and ``ConflictError`` if the alias is taken. With ``audit``:
    ``client.updated`` when something changed (a change to the same values is none), and
    each ended session.
    """
    client = find_client(store, id_or_alias)
    changes: dict[str, t.Any] = {}
    if not isinstance(name, _Keep):
        changes["name"] = _check_display_name(name)
    if not isinstance(alias, _Keep):
        changes["alias"] = None if alias is None else _check_name("an alias", alias)
    if not isinstance(scopes, _Keep):
        if not scopes:
            raise AdminInputError("a client needs at least one scope")
        changes["scopes"] = _check_scopes(scopes, known_scopes)
    if not isinstance(grants, _Keep):
        if not grants:
            raise AdminInputError("a client needs at least one grant type")
        changes["grants"] = _check_grants(grants, client.is_public)
    if not isinstance(max_seats, _Keep):
        changes["max_seats"] = _check_max_seats(max_seats)
    updated = dataclasses.replace(client, **changes)
    if updated == client:
        return client, []
    # The record first, then the sweep: a token request that authenticated before the
    # change either started its session before the sweep, which judges it, or reads the
    # changed record after starting and undoes it (grants._still_valid).
    if not store.update_client(updated):
        raise NotFoundError(f"no client {id_or_alias!r}")
    removed_scopes = set(client.scopes) - set(updated.scopes)
    removed_grants = set(client.grants) - set(updated.grants)
    live = store.list_sessions(client.client_id, now)

    def unfit(session: TokenSession) -> bool:
        own = session.subject == session.client_id  # client_credentials, as users.py reads it
        return (
            bool(removed_scopes.intersection(session.scope.split()))
            or "refresh_token" in removed_grants
            or ("client_credentials" in removed_grants and own)
            or ("password" in removed_grants and not own)
        )

    ending = [s for s in live if unfit(s)]
    if "max_seats" in changes and updated.max_seats != client.max_seats:
        cap = updated.max_seats if updated.max_seats is not None else default_cap
        if cap is not None and is_licensed is not None:
            ending += [
                s for s in live if not s.holds_seat and s not in ending and is_licensed(s.scope)
            ]
        ending_ids = {s.session_id for s in ending}
        holders = sorted(
            (s for s in live if s.holds_seat and s.session_id not in ending_ids),
            key=lambda s: (s.created_at, s.session_id),
        )
        if cap is not None and len(holders) > cap:
            # Oldest first, as the seat policy replaces them: the newest ``cap`` go on.
            ending += holders[: len(holders) - cap]
    ended = []
    for session in ending:
        if store.end_session(session.session_id, now) is not None:
            ended.append(session.session_id)
    if audit is not None:
        audit.emit(events.CLIENT_UPDATED, client_id=updated.client_id)
        _report_ended(audit, updated.client_id, ended)
    return updated, ended


def find_client(store: Store, id_or_alias: str) -> Client:
    """Look a client up for an administrator; raise ``NotFoundError`` if there is none."""
    client = store.get_client(id_or_alias) if SAFE_NAME.fullmatch(id_or_alias) else None
    if client is None:
        raise NotFoundError(f"no client {id_or_alias!r}")
    return client


def rotate_secret(
    store: Store,
    id_or_alias: str,
    *,
    keep_sessions: bool = False,
    now: float,
    audit: Audit | None = None,
) -> tuple[Client, str | None, list[str]]:
    """Give a client a new secret, or a public client a new id; the old one stops working.

    Returns the updated client, its new secret (None if public) and the ended session ids.
    With ``audit``: ``client.rotated`` (naming the new id) and each ended session (named
    with the id it had).
    """
    client = find_client(store, id_or_alias)
    ended: list[str] = []
    secret = None
    if client.is_public:
        # A public client's id is its only credential: a leaked id is answered with a new one.
        updated = dataclasses.replace(client, client_id=new_client_id(), alias=None)
        store.create_client(updated)
        store.delete_client(client.client_id)
        if client.alias:
            updated = dataclasses.replace(updated, alias=client.alias)
            store.update_client(updated)
        ended = _end_client_sessions(store, client.client_id, now)
    else:
        secret = new_secret()
        updated = dataclasses.replace(client, secret_hash=hash_secret(secret))
        store.update_client(updated)
        if not keep_sessions:
            ended = _end_client_sessions(store, client.client_id, now)
    if audit is not None:
        audit.emit(events.CLIENT_ROTATED, client_id=updated.client_id)
        _report_ended(audit, client.client_id, ended)
    return updated, secret, ended


def set_enabled(
    store: Store, id_or_alias: str, enabled: bool, *, now: float, audit: Audit | None = None
) -> tuple[Client, list[str]]:
    """Enable or disable a client; disabling ends its sessions at once.

    With ``audit``: ``client.enabled`` or ``client.disabled``, and each ended session.
    """
    client = find_client(store, id_or_alias)
    updated = dataclasses.replace(client, enabled=enabled)
    store.update_client(updated)
    ended = [] if enabled else _end_client_sessions(store, client.client_id, now)
    if audit is not None:
        event = events.CLIENT_ENABLED if enabled else events.CLIENT_DISABLED
        audit.emit(event, client_id=updated.client_id)
        _report_ended(audit, updated.client_id, ended)
    return updated, ended


def delete_client(
    store: Store, id_or_alias: str, *, now: float, audit: Audit | None = None
) -> tuple[Client, list[str]]:
    """Delete a client and end its sessions.

    With ``audit``: ``client.deleted`` and each ended session.
    """
    client = find_client(store, id_or_alias)
    ended = _end_client_sessions(store, client.client_id, now)
    store.delete_client(client.client_id)
    ended += _end_client_sessions(store, client.client_id, now)
    if audit is not None:
        audit.emit(events.CLIENT_DELETED, client_id=client.client_id)
        _report_ended(audit, client.client_id, ended)
    return client, ended


def _end_client_sessions(store: Store, client_id: str, now: float) -> list[str]:
    ids = [s.session_id for s in store.list_sessions(client_id, now)]
    store.end_sessions(client_id, now)
    return ids


def _report_ended(audit: Audit, client_id: str, session_ids: t.Iterable[str]) -> None:
    # A change to the client ended them: ``client_changed``, after the change's own event.
    for session_id in session_ids:
        audit.emit(
            events.SESSION_ENDED,
            client_id=client_id,
            session_id=session_id,
            reason="client_changed",
        )


def describe(client: Client) -> dict[str, t.Any]:
    """A client as JSON for listings (never its secret hash)."""
    return {
        "client_id": client.client_id,
        "name": client.name,
        "alias": client.alias,
        "public": client.is_public,
        "enabled": client.enabled,
        "grants": list(client.grants),
        "scopes": list(client.scopes),
        "max_seats": client.max_seats,
        "created_at": int(client.created_at),
    }
