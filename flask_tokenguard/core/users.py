"""The built-in user table for the resource-owner password grant (RFC 6749 section 4.3).

Passwords are hashed with salted scrypt. An app with its own user store replaces this
table with ``@guard.password_verifier``.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import ConfigurationError
from ..models import User
from .security import hash_password
from .security import verify_password

if t.TYPE_CHECKING:  # pragma: no cover
    from ..stores.base import Store


def _check_username(username: str) -> str:
    if not username or not username.strip() or not username.isprintable() or len(username) > 256:
        raise ConfigurationError("a user name must be 1 to 256 printable characters")
    return username


def _check_password(password: str) -> str:
    if not password:
        raise ConfigurationError("the password must not be empty")
    return password


def create_user(store: Store, username: str, password: str, *, cost: int, now: float) -> User:
    """Add a user; raise ``ConflictError`` if the name is taken."""
    user = User(
        username=_check_username(username),
        password_hash=hash_password(_check_password(password), cost),
        created_at=now,
    )
    store.create_user(user)
    return user


def set_password(store: Store, username: str, password: str, *, cost: int) -> User:
    """Replace a user's password; raise ``LookupError`` for an unknown user."""
    user = store.get_user(username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    updated = dataclasses.replace(
        user, password_hash=hash_password(_check_password(password), cost)
    )
    store.update_user(updated)
    return updated


def check_user_password(store: Store, username: str, password: str, *, cost: int) -> bool:
    """True if the password is right; unknown users cost the same KDF work."""
    user = store.get_user(username)
    return verify_password(password, None if user is None else user.password_hash, cost)
