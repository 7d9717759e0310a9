"""API clients: registration, authentication (RFC 6749 section 2.3), rotation, disabling.

A client authenticates by id or alias. A confidential client also proves its secret,
which is generated (256 bits), shown once, and stored only as a SHA-256 hash. A public
client has no secret and authenticates by id alone, so it may not use
``client_credentials``. Rotating, disabling or deleting a client ends its sessions.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import AdminInputError
from ..errors import InvalidClientError
from ..errors import LockedOutError
from ..errors import NotFoundError
from ..models import Client
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
    not tell which ids exist. With a ``throttle``, an address over the threshold (for this client
    id, or at all) gets ``LockedOutError`` without a check, and a failure is counted.
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
    key, had_failures = None, False
    if throttle is not None:
        try:
            key, had_failures = throttle.check("client", credentials.client_id, now)
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
        if throttle is not None:
            throttle.failed(now, key)
        if audit is not None:
            known = None if client is None else client.client_id
            audit.emit(events.AUTH_FAILED, client_id=known, reason="invalid_client")
        raise InvalidClientError(used_basic=credentials.used_basic)
    if throttle is not None and had_failures:
        throttle.succeeded(key)
    return client


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise AdminInputError(f"{kind} may use only A-Z a-z 0-9 _ - (1 to 128 characters)")
    return value


def create_client(
    store: Store,
    name: str,
    *,
    scopes: t.Sequence[str],
    known_scopes: t.Collection[str],
    grants: t.Sequence[str] | None = None,
    public: bool = False,
    alias: str | None = None,
    now: float,
) -> tuple[Client, str | None]:
    """Register a client; return it and its secret (None for a public client).

    Raises ``AdminInputError`` for unknown scopes or grants, a public client asking for
    ``client_credentials``, or a malformed alias; ``ConflictError`` if the alias is taken.
    """
    if not name or not name.strip():
        raise AdminInputError("a client needs a display name")
    if grants is None or not grants:
        grants = (
            ("password", "refresh_token") if public else ("client_credentials", "refresh_token")
        )
    unknown_grants = [g for g in grants if g not in GRANT_TYPES]
    if unknown_grants:
        raise AdminInputError(
            f"unknown grant type {unknown_grants[0]!r}; use {', '.join(GRANT_TYPES)}"
        )
    if public and "client_credentials" in grants:
        raise AdminInputError("a public client has no secret and cannot use client_credentials")
    scopes = list(dict.fromkeys(scopes or known_scopes))
    unknown_scopes = [s for s in scopes if s not in known_scopes]
    if unknown_scopes:
        raise AdminInputError(
            f"unknown scope {unknown_scopes[0]!r}; configured: {', '.join(known_scopes)}"
        )
    if alias is not None:
        _check_name("an alias", alias)
    secret = None if public else new_secret()
    client = Client(
        client_id=new_client_id(),
        name=name.strip(),
        secret_hash=None if secret is None else hash_secret(secret),
        alias=alias,
        grants=tuple(dict.fromkeys(grants)),
        scopes=tuple(scopes),
        enabled=True,
        created_at=now,
    )
    store.create_client(client)
    return client, secret


def find_client(store: Store, id_or_alias: str) -> Client:
    """Look a client up for an administrator; raise ``NotFoundError`` if there is none."""
    client = store.get_client(id_or_alias) if SAFE_NAME.fullmatch(id_or_alias) else None
    if client is None:
        raise NotFoundError(f"no client {id_or_alias!r}")
    return client


def rotate_secret(
    store: Store, id_or_alias: str, *, keep_sessions: bool = False, now: float
) -> tuple[Client, str | None, list[str]]:
    """Give a client a new secret, or a public client a new id; the old one stops working.

    Returns the updated client, its new secret (None if public) and the ended session ids.
    """
    client = find_client(store, id_or_alias)
    ended: list[str] = []
    if client.is_public:
        # A public client's id is its only credential: a leaked id is answered with a new one.
        renamed = dataclasses.replace(client, client_id=new_client_id(), alias=None)
        store.create_client(renamed)
        store.delete_client(client.client_id)
        if client.alias:
            renamed = dataclasses.replace(renamed, alias=client.alias)
            store.update_client(renamed)
        ended = _end_client_sessions(store, client.client_id, now)
        return renamed, None, ended
    secret = new_secret()
    updated = dataclasses.replace(client, secret_hash=hash_secret(secret))
    store.update_client(updated)
    if not keep_sessions:
        ended = _end_client_sessions(store, client.client_id, now)
    return updated, secret, ended


def set_enabled(
    store: Store, id_or_alias: str, enabled: bool, *, now: float
) -> tuple[Client, list[str]]:
    """Enable or disable a client; disabling ends its sessions at once."""
    client = find_client(store, id_or_alias)
    updated = dataclasses.replace(client, enabled=enabled)
    store.update_client(updated)
    ended = [] if enabled else _end_client_sessions(store, client.client_id, now)
    return updated, ended


def delete_client(store: Store, id_or_alias: str, *, now: float) -> tuple[Client, list[str]]:
    """Delete a client and end its sessions."""
    client = find_client(store, id_or_alias)
    ended = _end_client_sessions(store, client.client_id, now)
    store.delete_client(client.client_id)
    ended += _end_client_sessions(store, client.client_id, now)
    return client, ended


def _end_client_sessions(store: Store, client_id: str, now: float) -> list[str]:
    ids = [s.session_id for s in store.list_sessions(client_id, now)]
    store.end_sessions(client_id, now)
    return ids


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
        "created_at": int(client.created_at),
    }
