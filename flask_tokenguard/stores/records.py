"""Records to and from the flat form every backend keeps: one dict of columns per record.

The SQLite and SQL server stores bind these dicts as named parameters and read their
rows back through the same functions; the Redis store keeps them as JSON documents or
hash fields. Values arrive as the engine returns them (a Redis hash holds strings only),
so every reader converts: numbers with ``float``, flags with ``flag``.

Grants and scopes are tokens without spaces (RFC 6749, section 3.3), so one space joins
them in a single column.
"""

from __future__ import annotations

import typing as t

from ..models import Client
from ..models import SigningKey
from ..models import TokenSession
from ..models import User


class Record(t.Protocol):
    """A row read by column name: a dict, ``sqlite3.Row``, or SQLAlchemy's ``Row._mapping``."""

    def __getitem__(self, column: str, /) -> t.Any: ...


#: Column order of each table, shared by the SQL statements that name them.
CLIENT_COLUMNS = (
    "client_id",
    "alias",
    "name",
    "secret_hash",
    "grants",
    "scopes",
    "enabled",
    "created_at",
    "max_seats",
)
USER_COLUMNS = ("username", "password_hash", "created_at", "admin")
SESSION_COLUMNS = (
    "session_id",
    "client_id",
    "subject",
    "scope",
    "holds_seat",
    "refresh_hash",
    "created_at",
    "expires_at",
)
KEY_COLUMNS = ("kid", "alg", "private_pem", "created_at", "retire_at")


def flag(value: t.Any) -> bool:
    """A stored boolean: ``True``/``1`` from SQL, ``"1"``/``"0"`` from a Redis hash."""
    if isinstance(value, str):
        return value in ("1", "true", "True")
    return bool(value)


def _words(value: str | t.Sequence[str]) -> tuple[str, ...]:
    # Redis documents written by earlier releases hold JSON lists.
    return tuple(value.split()) if isinstance(value, str) else tuple(value)


def _time(value: t.Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _count(value: t.Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _optional(record: Record, column: str) -> t.Any:
    """``record[column]``, or None for a record written before the column existed.

    Redis documents of earlier releases lack the newer fields; SQL rows always have them.
    """
    try:
        return record[column]
    except (KeyError, IndexError):  # a dict or SQLAlchemy mapping; ``sqlite3.Row``
        return None


def client_record(client: Client) -> dict[str, t.Any]:
    """The columns of ``client``."""
    return {
        "client_id": client.client_id,
        "alias": client.alias,
        "name": client.name,
        "secret_hash": client.secret_hash,
        "grants": " ".join(client.grants),
        "scopes": " ".join(client.scopes),
        "enabled": bool(client.enabled),
        "created_at": float(client.created_at),
        "max_seats": client.max_seats,
    }


def client_from(record: Record) -> Client:
    """The client whose columns are ``record``."""
    return Client(
        client_id=record["client_id"],
        name=record["name"],
        secret_hash=record["secret_hash"],
        alias=record["alias"] or None,
        grants=_words(record["grants"]),
        scopes=_words(record["scopes"]),
        enabled=flag(record["enabled"]),
        created_at=float(record["created_at"]),
        max_seats=_count(_optional(record, "max_seats")),
    )


def user_record(user: User) -> dict[str, t.Any]:
    """The columns of ``user``."""
    return {
        "username": user.username,
        "password_hash": user.password_hash,
        "created_at": float(user.created_at),
        "admin": bool(user.admin),
    }


def user_from(record: Record) -> User:
    """The user whose columns are ``record``."""
    return User(
        username=record["username"],
        password_hash=record["password_hash"],
        created_at=float(record["created_at"]),
        admin=flag(_optional(record, "admin")),
    )


def session_record(session: TokenSession) -> dict[str, t.Any]:
    """The columns of ``session``."""
    return {
        "session_id": session.session_id,
        "client_id": session.client_id,
        "subject": session.subject,
        "scope": session.scope,
        "holds_seat": bool(session.holds_seat),
        "refresh_hash": session.refresh_hash,
        "created_at": float(session.created_at),
        "expires_at": float(session.expires_at),
    }


def session_from(record: Record) -> TokenSession:
    """The session whose columns are ``record``."""
    return TokenSession(
        session_id=record["session_id"],
        client_id=record["client_id"],
        subject=record["subject"],
        scope=record["scope"],
        holds_seat=flag(record["holds_seat"]),
        refresh_hash=record["refresh_hash"],
        created_at=float(record["created_at"]),
        expires_at=float(record["expires_at"]),
    )


def key_record(key: SigningKey) -> dict[str, t.Any]:
    """The columns of ``key``."""
    return {
        "kid": key.kid,
        "alg": key.alg,
        "private_pem": key.private_pem,
        "created_at": float(key.created_at),
        "retire_at": _time(key.retire_at),
    }


def key_from(record: Record) -> SigningKey:
    """The signing key whose columns are ``record``."""
    return SigningKey(
        kid=record["kid"],
        alg=record["alg"],
        private_pem=record["private_pem"],
        created_at=float(record["created_at"]),
        retire_at=_time(record["retire_at"]),
    )
