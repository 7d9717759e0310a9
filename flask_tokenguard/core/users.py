"""The built-in user table for the resource-owner password grant (RFC 6749 section 4.3).

Passwords are hashed with salted scrypt. An app with its own user store replaces this
table with ``@guard.password_verifier``. A new password or a deleted user ends the user's
sessions. Each administrator's action reports itself to the audit trail it is given, as
``core.clients``' do.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import AdminInputError
from ..errors import NotFoundError
from ..models import TokenSession
from ..models import User
from . import audit as events
from .security import hash_password
from .security import password_hash_cost
from .security import verify_password

if t.TYPE_CHECKING:  # pragma: no cover
    from ..stores.base import Store
    from .audit import Audit


def _check_username(username: str) -> str:
    if not username or not username.strip() or not username.isprintable() or len(username) > 256:
        raise AdminInputError("a user name must be 1 to 256 printable characters")
    return username


def _check_password(password: str) -> str:
    if not password:
        raise AdminInputError("the password must not be empty")
    return password


def create_user(
    store: Store,
    username: str,
    password: str,
    *,
    cost: int,
    now: float,
    admin: bool = False,
    audit: Audit | None = None,
) -> User:
    """Add a user (an administrator of the admin console with ``admin``); raise
    ``ConflictError`` if the name is taken. With ``audit``: ``user.created``."""
    user = User(
        username=_check_username(username),
        password_hash=hash_password(_check_password(password), cost),
        created_at=now,
        admin=admin,
    )
    store.create_user(user)
    if audit is not None:
        audit.emit(events.USER_CREATED, subject=user.username)
    return user


def set_password(
    store: Store,
    username: str,
    password: str,
    *,
    cost: int,
    now: float,
    audit: Audit | None = None,
) -> tuple[User, list[str]]:
    """Replace a user's password (the rest, ``admin`` included, stays) and end the user's
    sessions, which the old password started; return the user and the ended session ids.

    Raises ``NotFoundError`` for an unknown user. With ``audit``: ``user.updated``, then
    ``session.ended`` with reason ``user_changed`` for each ended session.
    """
    user = store.get_user(username)
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    updated = dataclasses.replace(
        user, password_hash=hash_password(_check_password(password), cost)
    )
    store.update_user(updated)
    if audit is not None:
        audit.emit(events.USER_UPDATED, subject=updated.username)
    ended = end_user_sessions(store, updated.username, now, reason="user_changed", audit=audit)
    return updated, [s.session_id for s in ended]


def delete_user(
    store: Store, username: str, *, now: float, audit: Audit | None = None
) -> list[str]:
    """Remove a user and end the user's sessions; return the ended session ids.

    Raises ``NotFoundError`` for an unknown user. With ``audit``: ``user.deleted``, then
    ``session.ended`` with reason ``user_changed`` for each ended session.
    """
    if not store.delete_user(username):
        raise NotFoundError(f"no user {username!r}")
    if audit is not None:
        audit.emit(events.USER_DELETED, subject=username)
    ended = end_user_sessions(store, username, now, reason="user_changed", audit=audit)
    return [s.session_id for s in ended]


def authenticate_user(store: Store, username: str, password: str, *, cost: int) -> User | None:
    """The user the password proves, or None; unknown users cost the same KDF work.

    An unknown user's check runs at the configured ``cost``; a user whose hash was made at
    another cost is rehashed at this one on a successful sign-in, so that response time
    tells neither who exists nor whose password is old.
    """
    user = store.get_user(username)
    if not verify_password(password, None if user is None else user.password_hash, cost):
        return None
    assert user is not None
    if password_hash_cost(user.password_hash) != cost:
        rehashed = dataclasses.replace(user, password_hash=hash_password(password, cost))
        if store.update_user(rehashed):
            user = rehashed
    return user


def end_user_sessions(
    store: Store, username: str, now: float, *, reason: str, audit: Audit | None = None
) -> list[TokenSession]:
    """End every live session whose subject is ``username``; return what ended.

    With ``audit``, each is ``session.ended`` with ``reason`` (``user_changed`` when the
    user changed, ``admin`` when an administrator logged the user off).
    """
    ended = []
    for session in store.list_sessions(None, now):
        if session.subject != username or session.subject == session.client_id:
            continue  # a client_credentials session is the client's own
        done = store.end_session(session.session_id, now)
        if done is None:
            continue  # ended meanwhile, by something that reports it
        ended.append(done)
        if audit is not None:
            audit.session_ended(done, reason)
    return ended


def describe(user: User) -> dict[str, t.Any]:
    """A user as JSON for listings (never the password hash)."""
    return {"username": user.username, "admin": user.admin, "created_at": int(user.created_at)}
