"""Secrets, their hashes, and the password KDF.

Client secrets and refresh tokens are 256-bit random values, so a single SHA-256 is as
strong a hash for them as any KDF and costs nothing; only user-chosen passwords go
through scrypt. Every comparison is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import typing as t

from ..errors import KdfBusyError

#: Client ids, aliases and generated secrets use only these characters, so HTTP Basic
#: credentials read the same whether or not a client form-encodes them (RFC 6749 2.3.1).
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")

_SCRYPT_R = 8
_SCRYPT_P = 1


def new_secret() -> str:
    """Return a fresh 256-bit secret in URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def new_client_id() -> str:
    """Return a fresh client id; the prefix keeps it from starting with ``-`` on a command line."""
    return "tg_" + secrets.token_urlsafe(12)


def new_id() -> str:
    """Return a random hex id for sessions, tokens and keys."""
    return secrets.token_hex(16)


def hash_secret(secret: str) -> str:
    """Hash a high-entropy secret (client secret, refresh token) for storage."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def verify_secret(secret: str, secret_hash: str | None) -> bool:
    """Check ``secret`` against a stored hash in constant time."""
    if secret_hash is None:
        return False
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def hash_password(password: str, cost: int = 15) -> str:
    """Hash a user password with salted scrypt; the result names its own parameters."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, 2**cost)
    encoded_salt = base64.b64encode(salt).decode()
    encoded_digest = base64.b64encode(digest).decode()
    return f"scrypt${cost}${_SCRYPT_R}${_SCRYPT_P}${encoded_salt}${encoded_digest}"


def verify_password(password: str, password_hash: str | None, cost: int = 15) -> bool:
    """Check a password; with no hash (unknown user) do the same work and return False.

    Doing the KDF either way keeps response time from telling which user names exist.
    """
    if password_hash is None:
        _scrypt(password, b"\0" * 16, 2**cost)
        return False
    try:
        scheme, hash_cost, r, p, salt, digest = password_hash.split("$")
        if scheme != "scrypt" or int(r) != _SCRYPT_R or int(p) != _SCRYPT_P:
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), 2 ** int(hash_cost))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def password_hash_cost(password_hash: str) -> int | None:
    """The scrypt cost (log2 N) a stored hash was made with; None if it is not ours."""
    parts = password_hash.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not parts[1].isdigit():
        return None
    return int(parts[1])


#: How long a password check waits for a free KDF slot before the request gets 503.
KDF_WAIT_SECONDS = 5.0
_kdf_slots: dict[int, threading.BoundedSemaphore] = {}
_kdf_slots_lock = threading.Lock()


@contextlib.contextmanager
def kdf_slot(concurrency: int, wait: float | None = None) -> t.Iterator[None]:
    """Hold one of ``concurrency`` password-check slots of this process while the KDF runs.

    Bounds the CPU that unauthenticated password attempts can take: a check that finds
    every slot busy for ``wait`` seconds raises ``KdfBusyError`` (503 with ``Retry-After``)
    instead of queueing without end. ``wait`` defaults to ``KDF_WAIT_SECONDS``.
    """
    wait = KDF_WAIT_SECONDS if wait is None else wait
    with _kdf_slots_lock:
        slots = _kdf_slots.get(concurrency)
        if slots is None:
            slots = _kdf_slots[concurrency] = threading.BoundedSemaphore(concurrency)
    if not slots.acquire(timeout=wait):
        raise KdfBusyError(retry_after=max(1, int(wait)))
    try:
        yield
    finally:
        slots.release()


def _scrypt(password: str, salt: bytes, n: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=256 * n * _SCRYPT_R,
        dklen=32,
    )
