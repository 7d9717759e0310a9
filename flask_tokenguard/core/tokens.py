"""Access tokens: RFC 9068 JWTs, the signing key ring, and the per-process verifier.

- Tokens carry ``typ: at+jwt`` and ``kid`` in the header and ``iss``, ``sub``, ``aud``,
  ``client_id``, ``scope``, ``jti``, ``iat``, ``exp`` and ``sid`` (the session) as claims
  (RFC 9068 section 2). ``exp`` never passes the session's end, so expiry needs no store.
- Keys live in the store so every process and host signs and verifies alike; the newest
  unretired key signs, older ones verify until their tokens have expired (the way
  itsdangerous key lists work). ``/jwks.json`` publishes them (RFC 7517).
- With ``TOKENGUARD_KEY_ENCRYPTION_KEY`` the private keys are stored encrypted (Fernet,
  the first key encrypting); a store whose keys cannot be decrypted is a
  ``ConfigurationError`` when the keys are first loaded.
- Verification is the hot path: a verified token is cached by its exact bytes until its
  ``exp`` (a hit still checks that its key is live), and revocation is checked against a
  per-process set of revoked session and token ids, refreshed from the store at most
  once per ``TOKENGUARD_REVOCATION_LAG``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import typing as t

import jwt
from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken
from cryptography.fernet import MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import ConfigurationError
from ..errors import InvalidTokenError
from ..errors import StoreError
from ..models import AccessToken
from ..models import SigningKey
from ..models import TokenSession
from .issuer import is_local_issuer
from .security import new_id

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store

#: How often a process re-reads the key list to pick up a rotation made elsewhere.
KEY_REFRESH_SECONDS = 30.0
#: How long one process's claim to rotate an old signing key lasts. If the process that
#: claimed it dies before rotating, a process claims the next window and rotates then.
ROTATION_CLAIM_SECONDS = 60.0
#: Marks a private key stored encrypted with ``TOKENGUARD_KEY_ENCRYPTION_KEY``.
ENCRYPTED_PREFIX = "fernet:"
#: Revocation entries ``key:<kid>`` drop a key everywhere (``rotate-keys --retire-now``).
RETIRED_KEY_PREFIX = "key:"
#: How long a request waits for another thread's revocation poll once its set is too old.
MAX_POLL_WAIT_SECONDS = 5.0
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


class KeySealer:
    """Encrypts private keys for the store and decrypts them (``TOKENGUARD_KEY_ENCRYPTION_KEY``).

    With no Fernet keys, keys are stored as plain PEM. With keys, new private keys are
    stored as ``fernet:<token>`` (the first key encrypts, every key decrypts, as
    ``MultiFernet`` does). A plain PEM key already in the store still loads, so turning
    encryption on never breaks a running deployment.
    """

    def __init__(self, keys: t.Sequence[str] | None = None) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys]) if keys else None

    @property
    def enabled(self) -> bool:
        """True when new keys are stored encrypted."""
        return self._fernet is not None

    def seal(self, pem: str) -> str:
        """The form ``pem`` is stored in: encrypted when a key is configured."""
        if self._fernet is None:
            return pem
        return ENCRYPTED_PREFIX + self._fernet.encrypt(pem.encode("ascii")).decode("ascii")

    def unseal(self, record: SigningKey) -> str:
        """The PEM of ``record``; ``ConfigurationError`` if it is encrypted and cannot be read.

        The message names the setting and the key id, never a key.
        """
        stored = record.private_pem
        if not stored.startswith(ENCRYPTED_PREFIX):
            return stored
        if self._fernet is None:
            raise ConfigurationError(
                "the store's signing keys are encrypted: set TOKENGUARD_KEY_ENCRYPTION_KEY "
                "to the key that encrypted them"
            )
        try:
            token = stored[len(ENCRYPTED_PREFIX) :].encode("ascii")
            return self._fernet.decrypt(token).decode("ascii")
        except (InvalidToken, UnicodeError, ValueError):
            raise ConfigurationError(
                f"TOKENGUARD_KEY_ENCRYPTION_KEY does not decrypt signing key {record.kid}: "
                "set the key that encrypted it (a list of keys decrypts with any of them)"
            ) from None


class _LoadedKey:
    """A ``SigningKey`` with its parsed key objects, parsed once."""

    __slots__ = ("record", "private", "public")

    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    def __init__(self, record: SigningKey, parsed: _LoadedKey | None, sealer: KeySealer) -> None:
        """Parse ``record``, or take the key objects of ``parsed``, the same key's."""
        self.record = record
        if parsed is not None:
            self.private, self.public = parsed.private, parsed.public
            return
        pem = sealer.unseal(record)
        private = serialization.load_pem_private_key(pem.encode(), None)
        if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {record.kid} is neither RSA nor EC")
        self.private = private
        self.public = private.public_key()


class KeyRing:
    """The store's signing keys, cached per process.

    Loading is lazy, so an app that only runs CLI commands never generates a key; the
    first load (the first token issued or checked, ``/jwks.json``, ``rotate-keys``) is
    where keys that cannot be decrypted raise ``ConfigurationError``.
    """

    def __init__(
        self,
        store: Store,
        alg: str,
        access_token_ttl: int,
        max_age: int | None = None,
        *,
        sealer: KeySealer | None = None,
        clock_skew: float = 0,
    ) -> None:
        self._store = store
        self._alg = alg
        self._ttl = access_token_ttl
        self._max_age = max_age
        self._sealer = sealer or KeySealer()
        self._skew = clock_skew
        self._lock = threading.Lock()
        self._keys: dict[str, _LoadedKey] = {}
        # kid -> until when it verifies; the cheap test a cached token passes on each use.
        self._live: dict[str, float] = {}
        # Keys dropped at once (``rotate-keys --retire-now``): never loaded again.
        self._dropped: set[str] = set()
        self._signer: _LoadedKey | None = None
        self._loaded_at = float("-inf")
        self._claimed_window: int | None = None

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> KeyRing:
        """The key ring an app with ``settings`` uses on ``store``."""
        return cls(
            store,
            settings.signing_alg,
            settings.access_token_ttl,
            settings.key_rotation,
            sealer=KeySealer(settings.key_encryption_key),
            clock_skew=settings.clock_skew,
        )

    def reload(self, now: float) -> None:
        """Re-read the keys; create the first one if the store has none."""
        # One reload at a time, so a slow one cannot overwrite a newer key list, and a
        # cold start generates one key, not one per thread.
        with self._lock:
            records = self._store.signing_keys(now)
            if not records:
                records = self._store.ensure_signing_key(self._new_key(now))
            dropped = self._dropped
            keys = {r.kid: self._loaded(r) for r in records if r.kid not in dropped}
            if not keys:
                # Every stored key was dropped here: sign with a new one, retiring them.
                record = self._new_key(now)
                self._store.add_signing_key(record, retire_others_at=now)
                keys = {record.kid: self._loaded(record)}
            signers = [k for k in keys.values() if k.record.retire_at is None]
            self._keys = keys
            self._live = {
                kid: math.inf if k.record.retire_at is None else k.record.retire_at
                for kid, k in keys.items()
            }
            self._signer = max(signers or keys.values(), key=lambda k: k.record.created_at)
            self._loaded_at = now

    def _new_key(self, now: float) -> SigningKey:
        record = generate_signing_key(self._alg, now)
        return dataclasses.replace(record, private_pem=self._sealer.seal(record.private_pem))

    def _loaded(self, record: SigningKey) -> _LoadedKey:
        # Parsed once per kid, but the record is the store's latest: a retirement time
        # set by a rotation must reach keys this process loaded before it.
        cached = self._keys.get(record.kid)
        if cached is not None and cached.record == record:
            return cached
        return _LoadedKey(record, cached, self._sealer)

    def _fresh(self, now: float) -> None:
        if now - self._loaded_at >= KEY_REFRESH_SECONDS or self._signer is None:
            loaded_at = self._loaded_at
            with self._lock:
                if self._loaded_at != loaded_at:
                    return  # another thread reloaded while this one waited
            self.reload(now)

    def _due(self, signer: _LoadedKey, now: float) -> bool:
        """Whether ``signer`` must be replaced: too old, or stored in plain PEM while
        keys are to be encrypted (its replacement is encrypted; it retires as usual)."""
        record = signer.record
        if self._max_age is not None and now - record.created_at >= self._max_age:
            return True
        return self._sealer.enabled and not record.private_pem.startswith(ENCRYPTED_PREFIX)

    def signer(self, now: float) -> _LoadedKey:
        """The key that signs new tokens; replaced once it is older than ``max_age``.

        One process of those sharing the store rotates: it claims the rotation for the
        current ``ROTATION_CLAIM_SECONDS`` window. Each process asks for a claim at most
        once per window, so a claimant that dies before rotating costs one store write
        per window and process, and another process rotates in the next window.
        """
        self._fresh(now)
        signer = self._signer
        assert signer is not None
        if not self._due(signer, now):
            return signer
        if now - self._loaded_at >= 1.0:
            self.reload(now)  # another process may have rotated already
            assert self._signer is not None
            signer = self._signer
            if not self._due(signer, now):
                return signer
        window = int(now // ROTATION_CLAIM_SECONDS)
        if window != self._claimed_window:
            self._claimed_window = window
            if self._store.claim_once(f"key-rotation:{signer.record.kid}:{window}"):
                self.rotate(now)
                assert self._signer is not None
                return self._signer
        return signer

    def is_live(self, kid: str, now: float) -> bool:
        """True while the key ``kid`` verifies: a set lookup, for the cached-token path."""
        return self._live.get(kid, -math.inf) > now

    def verifier(self, kid: str, now: float) -> _LoadedKey | None:
        """The key with ``kid``; an unknown kid triggers one reload (rate-limited)."""
        key = self._keys.get(kid)
        if key is None and now - self._loaded_at >= 1.0:
            self.reload(now)
            key = self._keys.get(kid)
        if key is None or not self.is_live(kid, now):
            return None
        return key

    def forget(self, kid: str) -> None:
        """Stop accepting and signing with ``kid`` at once (it was retired elsewhere)."""
        self._dropped.add(kid)
        if kid in self._live:
            live = dict(self._live)
            live.pop(kid, None)
            self._live = live
            self._loaded_at = float("-inf")  # the next use reloads, and finds a new signer

    def rotate(self, now: float, *, retire_now: bool = False) -> SigningKey:
        """Add a new signing key; older keys retire once tokens they signed have expired.

        The grace covers ``ACCESS_TOKEN_TTL`` plus the time other processes take to
        notice the new key (``KEY_REFRESH_SECONDS``), during which they still sign with
        the old one. ``retire_now`` (after a leak) drops the older keys at once: the
        store forgets them, and a revocation entry per key makes every process sharing
        the store refuse their tokens, cached ones included, at its next revocation
        poll (within ``TOKENGUARD_REVOCATION_LAG``).
        """
        record = self._new_key(now)
        if not retire_now:
            self._store.add_signing_key(
                record, retire_others_at=now + self._ttl + KEY_REFRESH_SECONDS
            )
        else:
            older = self._store.signing_keys(now)
            self._store.add_signing_key(record, retire_others_at=now)
            until = now + self._ttl + self._skew + KEY_REFRESH_SECONDS
            for old in older:
                self._store.revoke(RETIRED_KEY_PREFIX + old.kid, until, now)
                self.forget(old.kid)
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

    The process that revokes polls at once (``poll(wait=True)``) or adds the id itself
    (``add``); the others see it at their next poll, at most ``lag`` seconds later. A
    poll is two cheap reads of the store (``revocation_epoch`` and ``revocation_seq``)
    and pulls entries only when they changed; a new epoch (the store's revocation state
    was wiped and created again) means every live entry is read again from the start.

    One thread polls at a time. While it does, the others go on with the set they have
    as long as it is at most one lag past due (``2 * lag`` old); an older set (an idle
    process) makes them wait for that poll, up to ``lag`` (at most
    ``MAX_POLL_WAIT_SECONDS``). Beyond that, as when the store hangs, every request fails
    closed with ``StoreError`` (503 ``temporarily_unavailable``) until a poll succeeds.
    A failed poll fails its own request the same way, and the next request polls again.
    """

    def __init__(self, store: Store, lag: float, clock_skew: float = 0) -> None:
        self._store = store
        self._lag = lag
        # Tokens are accepted until exp + skew, so their revocations must last as long.
        self._skew = clock_skew
        self._revoked: dict[str, float] = {}
        self._seq = 0
        self._epoch: str | None = None
        self._polled_at = float("-inf")
        self._poll_lock = threading.Lock()
        #: Called with the kid of each key dropped by ``rotate-keys --retire-now``.
        self.on_key_retired: t.Callable[[str], None] | None = None

    def is_revoked(self, session_id: str, token_id: str, now: float) -> bool:
        """True if the session or the single token was revoked; polls when due."""
        if now - self._polled_at >= self._lag:
            self.poll(now)
        revoked = self._revoked
        return session_id in revoked or token_id in revoked

    def add(self, entry_id: str, until: float) -> None:
        """Revoke ``entry_id`` (a session or token id) in this process until ``until``,
        without a store round trip: for what this process just ended in the store."""
        revoked = self._revoked
        revoked[entry_id] = max(until, revoked.get(entry_id, until))

    def poll(self, now: float, *, wait: bool = False) -> None:
        """Pull new revocations from the store; raises ``StoreError`` if it is down.

        ``wait=True`` is for the process that just revoked something: it must see it.
        """
        if not self._poll_lock.acquire(blocking=wait or self._lag == 0):
            # Another thread is polling: the set serves until it is one lag past due.
            if now - self._polled_at < 2 * self._lag:
                return
            # Too stale to use: wait for that poll (briefly), and fail closed without it.
            polled_at = self._polled_at
            if self._poll_lock.acquire(timeout=min(self._lag, MAX_POLL_WAIT_SECONDS)):
                self._poll_lock.release()
                if self._polled_at != polled_at:
                    return
            raise StoreError("the revocation poll has not completed within the revocation lag")
        try:
            epoch = self._store.revocation_epoch()
            seq = self._store.revocation_seq()
            if epoch != self._epoch or seq < self._seq:
                # A new run of the counter (the store was reset, lost its data, failed
                # over or was restored): positions of the old run mean nothing.
                self._seq = 0
            if seq != self._seq:
                entries, seq = self._store.revocations_since(self._seq, now - self._skew)
                # Update in place: a concurrent ``add`` from a request thread must survive.
                revoked = self._revoked
                fresh = [entry_id for entry_id in entries if entry_id not in revoked]
                revoked.update(entries)
                for token_id, expires_at in list(revoked.items()):
                    if expires_at + self._skew <= now:
                        revoked.pop(token_id, None)
                self._key_retirements(fresh)
            self._seq = seq
            self._epoch = epoch
            self._polled_at = now
        finally:
            self._poll_lock.release()

    def _key_retirements(self, entry_ids: list[str]) -> None:
        listener = self.on_key_retired
        if listener is None:
            return
        for entry_id in entry_ids:
            if entry_id.startswith(RETIRED_KEY_PREFIX):
                listener(entry_id[len(RETIRED_KEY_PREFIX) :])


class TokenVerifier:
    """Validate bearer tokens: signature, ``typ``, claims, lifetime, expiry and revocation.

    ``iss`` and ``aud`` are checked on every token: against ``TOKENGUARD_ISSUER`` and
    ``TOKENGUARD_AUDIENCE`` when set; when unset, each must be a loopback URL (any port)
    or the ``SERVER_NAME`` URL. A token whose ``iat`` is in the future, or whose
    ``exp - iat`` exceeds the access-token TTL plus the clock skew, is refused, so a
    token signed with a leaked key cannot live for a year.
    """

    def __init__(self, keys: KeyRing, revocations: RevocationCache, settings: Settings) -> None:
        self._keys = keys
        self.revocations = revocations
        revocations.on_key_retired = keys.forget
        self._issuer = settings.issuer
        self._audience = settings.audience or settings.issuer
        self._server_name = settings.server_name
        self._leeway = settings.clock_skew
        self._max_lifetime = settings.access_token_ttl + settings.clock_skew
        self._cache_size = settings.token_cache_size
        # token string -> (validated token, kid); a hit means these bytes verified before.
        self._cache: dict[str, tuple[AccessToken, str]] = {}

    def verify(self, token: str, now: float | None = None) -> AccessToken:
        """Return the validated token or raise ``InvalidTokenError``."""
        if now is None:
            now = time.time()
        entry = self._cache.get(token)
        if entry is None:
            access, kid = self._decode(token, now, verify_exp=True)
            self._remember(token, access, kid, now)
        else:
            access, kid = entry
            if access.expires_at <= now - self._leeway:
                self._cache.pop(token, None)
                raise InvalidTokenError()
        if self.revocations.is_revoked(access.session_id, access.token_id, now):
            raise InvalidTokenError()
        if not self._keys.is_live(kid, now):
            # Its key was retired, or dropped after a leak, since it was cached.
            self._cache.pop(token, None)
            raise InvalidTokenError()
        return access

    def decode(self, token: str, now: float, *, verify_exp: bool = True) -> AccessToken:
        """Check the signature and claims without the cache or revocation."""
        return self._decode(token, now, verify_exp=verify_exp)[0]

    def _decode(self, token: str, now: float, *, verify_exp: bool) -> tuple[AccessToken, str]:
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
            self._check_claims(claims, now, verify_exp)
            scope = claims.get("scope", "")
            if not isinstance(scope, str):
                raise InvalidTokenError()
            access = AccessToken(
                client_id=str(claims["client_id"]),
                subject=str(claims["sub"]),
                scopes=frozenset(scope.split()),
                session_id=str(claims["sid"]),
                expires_at=float(claims["exp"]),
                claims=claims,
            )
            return access, str(kid)
        except InvalidTokenError:
            raise
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError):
            raise InvalidTokenError() from None

    def _check_claims(self, claims: dict[str, t.Any], now: float, verify_exp: bool) -> None:
        exp, iat = claims["exp"], claims["iat"]
        if type(exp) is not int or type(iat) is not int:
            raise InvalidTokenError()
        if verify_exp and exp <= now - self._leeway:
            raise InvalidTokenError()
        if iat > now + self._leeway or exp - iat > self._max_lifetime:
            raise InvalidTokenError()
        if self._issuer is None and not is_local_issuer(claims.get("iss", ""), self._server_name):
            raise InvalidTokenError()
        if self._audience is None and not is_local_issuer(claims.get("aud", ""), self._server_name):
            raise InvalidTokenError()

    def _remember(self, token: str, access: AccessToken, kid: str, now: float) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            # list() copies in one step under the GIL: other threads insert meanwhile.
            for stale, (entry, _) in list(cache.items()):
                if entry.expires_at <= now:
                    cache.pop(stale, None)
            if len(cache) >= self._cache_size:
                # Still full of live tokens: forget the oldest half rather than grow.
                for old in list(cache)[: max(1, len(cache) // 2)]:
                    cache.pop(old, None)
        if self._cache_size:
            cache[token] = (access, kid)
