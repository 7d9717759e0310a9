"""Access tokens: RFC 9068 JWTs, the signing key ring, and the per-process verifier.

- Tokens carry ``typ: at+jwt`` and ``kid`` in the header and ``iss``, ``sub``, ``aud``,
  ``client_id``, ``scope``, ``jti``, ``iat``, ``exp`` and ``sid`` (the session) as claims
  (RFC 9068 section 2). ``exp`` never passes the session's end, so expiry needs no store.
- Keys live in the store so every process and host signs and verifies alike; the newest
  unretired key signs, older ones verify until their tokens have expired (the way
  itsdangerous key lists work). ``/jwks.json`` publishes them (RFC 7517).
- Verification is the hot path: a verified token is cached by its exact bytes until its
  ``exp``, and revocation is checked against a per-process set of revoked session and
  token ids, refreshed from the store at most once per ``TOKENGUARD_REVOCATION_LAG``.
"""

from __future__ import annotations

import json
import threading
import time
import typing as t

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import InvalidTokenError
from ..models import AccessToken
from ..models import SigningKey
from ..models import TokenSession
from .security import new_id

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store

#: How often a process re-reads the key list to pick up a rotation made elsewhere.
KEY_REFRESH_SECONDS = 30.0
_TOKEN_TYPE = "at+jwt"


def generate_signing_key(alg: str, now: float) -> SigningKey:
    """Create a new key pair for ``alg`` (RSA 2048 for RS256, P-256 for ES256)."""
    if alg == "RS256":
        private: t.Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:  # pragma: no cover - config validation rejects other values
        raise ValueError(f"unsupported signing algorithm {alg}")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return SigningKey(kid=new_id()[:16], alg=alg, private_pem=pem, created_at=now)


class _LoadedKey:
    """A ``SigningKey`` with its parsed key objects, parsed once."""

    __slots__ = ("record", "private", "public")

    def __init__(self, record: SigningKey) -> None:
        self.record = record
        self.private = serialization.load_pem_private_key(record.private_pem.encode(), None)
        self.public = self.private.public_key()


class KeyRing:
    """The store's signing keys, cached per process.

    Loading is lazy, so an app that only runs CLI commands never generates a key.
    """

    def __init__(
        self, store: Store, alg: str, access_token_ttl: int, max_age: int | None = None
    ) -> None:
        self._store = store
        self._alg = alg
        self._ttl = access_token_ttl
        self._max_age = max_age
        self._lock = threading.Lock()
        self._keys: dict[str, _LoadedKey] = {}
        self._signer: _LoadedKey | None = None
        self._loaded_at = float("-inf")

    def reload(self, now: float) -> None:
        """Re-read the keys; create the first one if the store has none."""
        # One reload at a time, so a slow one cannot overwrite a newer key list, and a
        # cold start generates one key, not one per thread.
        with self._lock:
            records = self._store.signing_keys(now)
            if not records:
                records = self._store.ensure_signing_key(generate_signing_key(self._alg, now))
            keys = {r.kid: self._keys.get(r.kid) or _LoadedKey(r) for r in records}
            signers = [k for k in keys.values() if k.record.retire_at is None]
            self._keys = keys
            self._signer = max(signers or keys.values(), key=lambda k: k.record.created_at)
            self._loaded_at = now

    def _fresh(self, now: float) -> None:
        if now - self._loaded_at >= KEY_REFRESH_SECONDS or self._signer is None:
            loaded_at = self._loaded_at
            with self._lock:
                if self._loaded_at != loaded_at:
                    return  # another thread reloaded while this one waited
            self.reload(now)

    def signer(self, now: float) -> _LoadedKey:
        """The key that signs new tokens; replaced once it is older than ``max_age``."""
        self._fresh(now)
        signer = self._signer
        assert signer is not None
        if self._max_age is not None and now - signer.record.created_at >= self._max_age:
            # claim_once picks one process (of any number sharing the store) to rotate;
            # the others pick the new key up at their next reload.
            if self._store.claim_once(f"key-rotation:{signer.record.kid}"):
                self.rotate(now)
            elif now - self._loaded_at >= 1.0:
                self.reload(now)
            assert self._signer is not None
            signer = self._signer
        return signer

    def verifier(self, kid: str, now: float) -> _LoadedKey | None:
        """The key with ``kid``; an unknown kid triggers one reload (rate-limited)."""
        key = self._keys.get(kid)
        if key is None and now - self._loaded_at >= 1.0:
            self.reload(now)
            key = self._keys.get(kid)
        if key is not None and key.record.retire_at is not None and key.record.retire_at <= now:
            return None
        return key

    def rotate(self, now: float) -> SigningKey:
        """Add a new signing key; older keys retire once tokens they signed have expired.

        The grace covers ``ACCESS_TOKEN_TTL`` plus the time other processes take to
        notice the new key (``KEY_REFRESH_SECONDS``), during which they still sign with
        the old one.
        """
        record = generate_signing_key(self._alg, now)
        self._store.add_signing_key(record, retire_others_at=now + self._ttl + KEY_REFRESH_SECONDS)
        self.reload(now)
        return record

    def jwks(self, now: float) -> dict[str, t.Any]:
        """The public keys as a JWK Set (RFC 7517 section 5)."""
        self._fresh(now)
        keys = []
        for key in sorted(self._keys.values(), key=lambda k: k.record.created_at):
            if isinstance(key.public, rsa.RSAPublicKey):
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public))
            else:
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public))
            jwk.pop("key_ops", None)  # RFC 7517 4.3: not together with "use"
            jwk.update(kid=key.record.kid, alg=key.record.alg, use="sig")
            keys.append(jwk)
        return {"keys": keys}


def issue_access_token(
    keys: KeyRing,
    session: TokenSession,
    scope: str,
    issuer: str,
    audience: str,
    ttl: int,
    now: float,
    clock_skew: int = 0,
) -> tuple[str, int]:
    """Sign an access token for ``session``; return it and its ``expires_in``.

    ``expires_in`` is min(ttl, seconds left in the session), so no access token outlives
    the seat its session holds; with a clock skew the guard accepts a token that much
    past its ``exp``, so the skew comes off the session's share.
    """
    expires_in = max(0, min(ttl, int(session.expires_at - now - clock_skew)))
    issued_at = int(now)
    claims = {
        "iss": issuer,
        "sub": session.subject,
        "aud": audience,
        "client_id": session.client_id,
        "scope": scope,
        "jti": new_id(),
        "sid": session.session_id,
        "iat": issued_at,
        "exp": issued_at + expires_in,
    }
    signer = keys.signer(now)
    token = jwt.encode(
        claims,
        signer.private,
        algorithm=signer.record.alg,
        headers={"kid": signer.record.kid, "typ": _TOKEN_TYPE},
    )
    return token, expires_in


class RevocationCache:
    """Revoked session and token ids, mirrored from the store per process.

    The process that revokes polls at once (``poll(wait=True)``); the others see it at
    their next poll, at most ``lag`` seconds later. A poll is one cheap read of the store's
    ``revocation_seq``, and pulls entries only when it changed.
    """

    def __init__(self, store: Store, lag: float, clock_skew: float = 0) -> None:
        self._store = store
        self._lag = lag
        # Tokens are accepted until exp + skew, so their revocations must last as long.
        self._skew = clock_skew
        self._revoked: dict[str, float] = {}
        self._seq = 0
        self._polled_at = float("-inf")
        self._poll_lock = threading.Lock()

    def is_revoked(self, session_id: str, token_id: str, now: float) -> bool:
        """True if the session or the single token was revoked; polls when due."""
        if now - self._polled_at >= self._lag:
            self.poll(now)
        revoked = self._revoked
        return session_id in revoked or token_id in revoked

    def poll(self, now: float, *, wait: bool = False) -> None:
        """Pull new revocations from the store; raises ``StoreError`` if it is down.

        ``wait=True`` is for the process that just revoked something: it must see it.
        """
        # Only one thread polls; the others go on with a set at most one poll old.
        if not self._poll_lock.acquire(blocking=wait or self._lag == 0):
            return
        try:
            seq = self._store.revocation_seq()
            if seq < self._seq:
                # The counter went back (a store emptied or restarted): read it all again.
                self._seq = 0
            if seq != self._seq:
                entries, seq = self._store.revocations_since(self._seq, now - self._skew)
                # Update in place: a concurrent ``add`` from a request thread must survive.
                revoked = self._revoked
                revoked.update(entries)
                for token_id, expires_at in list(revoked.items()):
                    if expires_at + self._skew <= now:
                        revoked.pop(token_id, None)
                self._seq = seq
            self._polled_at = now
        finally:
            self._poll_lock.release()


class TokenVerifier:
    """Validate bearer tokens: signature, ``typ``, claims, expiry and revocation."""

    def __init__(self, keys: KeyRing, revocations: RevocationCache, settings: Settings) -> None:
        self._keys = keys
        self.revocations = revocations
        self._issuer = settings.issuer
        self._audience = settings.audience or settings.issuer
        self._leeway = settings.clock_skew
        self._cache_size = settings.token_cache_size
        # token string -> validated token; a hit means these exact bytes verified before.
        self._cache: dict[str, AccessToken] = {}

    def verify(self, token: str, now: float | None = None) -> AccessToken:
        """Return the validated token or raise ``InvalidTokenError``."""
        if now is None:
            now = time.time()
        access = self._cache.get(token)
        if access is None:
            access = self.decode(token, now)
            self._remember(token, access, now)
        elif access.expires_at <= now - self._leeway:
            self._cache.pop(token, None)
            raise InvalidTokenError()
        if self.revocations.is_revoked(access.session_id, access.token_id, now):
            raise InvalidTokenError()
        return access

    def decode(self, token: str, now: float, *, verify_exp: bool = True) -> AccessToken:
        """Check the signature and claims without the cache or revocation."""
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if header.get("typ", "").lower() not in (_TOKEN_TYPE, "application/" + _TOKEN_TYPE):
                raise InvalidTokenError()
            key = self._keys.verifier(kid, now) if isinstance(kid, str) else None
            if key is None:
                raise InvalidTokenError()
            claims = jwt.decode(
                token,
                key.public,
                algorithms=[key.record.alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp", "iat", "sub", "jti", "sid", "client_id"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
            exp = claims["exp"]
            if not isinstance(exp, int) or (verify_exp and exp <= now - self._leeway):
                raise InvalidTokenError()
            scope = claims.get("scope", "")
            if not isinstance(scope, str):
                raise InvalidTokenError()
            return AccessToken(
                client_id=str(claims["client_id"]),
                subject=str(claims["sub"]),
                scopes=frozenset(scope.split()),
                session_id=str(claims["sid"]),
                expires_at=float(exp),
                claims=claims,
            )
        except InvalidTokenError:
            raise
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError):
            raise InvalidTokenError() from None

    def _remember(self, token: str, access: AccessToken, now: float) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            # list() copies in one step under the GIL: other threads insert meanwhile.
            for stale, entry in list(cache.items()):
                if entry.expires_at <= now:
                    cache.pop(stale, None)
            if len(cache) >= self._cache_size:
                # Still full of live tokens: forget the oldest half rather than grow.
                for old in list(cache)[: max(1, len(cache) // 2)]:
                    cache.pop(old, None)
        if self._cache_size:
            cache[token] = access
