"""Records for store tests: a client, a session or a key with every field filled in."""

from __future__ import annotations

import typing as t

from flask_tokenguard.models import Client
from flask_tokenguard.models import SigningKey
from flask_tokenguard.models import TokenSession

#: The ``now`` of most store tests: any fixed value works, the stores never read a clock.
NOW = 1_700_000_000.0
#: A session's lifetime in the tests.
TTL = 1200.0


def make_client(client_id: str = "app", **fields: t.Any) -> Client:
    fields.setdefault("name", f"Client {client_id}")
    fields.setdefault("secret_hash", f"hash-of-{client_id}")
    fields.setdefault("created_at", NOW)
    return Client(client_id=client_id, **fields)


def make_session(session_id: str = "s1", **fields: t.Any) -> TokenSession:
    fields.setdefault("client_id", "app")
    fields.setdefault("subject", "alice")
    fields.setdefault("scope", "all")
    fields.setdefault("holds_seat", True)
    fields.setdefault("refresh_hash", f"hash-{session_id}")
    fields.setdefault("created_at", NOW)
    fields.setdefault("expires_at", NOW + TTL)
    return TokenSession(session_id=session_id, **fields)


def make_key(kid: str, created_at: float = NOW, **fields: t.Any) -> SigningKey:
    pem = f"-----PEM {kid}-----"
    return SigningKey(kid, "ES256", pem, created_at, **fields)
