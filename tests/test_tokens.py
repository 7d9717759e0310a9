"""Signing keys, the verifier and the revocation cache: directly on a store, and over HTTP
and the CLI on every backend (keys encrypted at rest, emergency retirement, bounded
token lifetimes, issuer checks, revocation polls that hang or see a reset store)."""

from __future__ import annotations

import threading
import time
import typing as t
from pathlib import Path

import jwt
import pytest
from cryptography.fernet import Fernet
from flask import Flask

import sample_app
from flask_tokenguard.core.tokens import KEY_REFRESH_SECONDS
from flask_tokenguard.core.tokens import KeyRing
from flask_tokenguard.core.tokens import RevocationCache
from flask_tokenguard.core.tokens import ROTATION_CLAIM_SECONDS
from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.errors import StoreError
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store
from tests.backends import BACKENDS
from tests.backends import isolated_store
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import get_token
from tests.helpers import register

NOW = 1_800_000_000.0


@pytest.fixture
def store() -> t.Iterator[Store]:
    opened = store_from_url("memory://")
    yield opened
    opened.close()


def test_a_cold_ring_creates_one_key_and_signs_with_it(store: Store) -> None:
    ring = KeyRing(store, "ES256", access_token_ttl=300)
    assert store.signing_keys(NOW) == []
    signer = ring.signer(NOW)
    assert [k.kid for k in store.signing_keys(NOW)] == [signer.record.kid]
    assert signer.record.alg == "ES256"
    assert ring.verifier(signer.record.kid, NOW) is signer


def test_rings_sharing_a_store_share_the_key(store: Store) -> None:
    first = KeyRing(store, "ES256", access_token_ttl=300).signer(NOW)
    second = KeyRing(store, "ES256", access_token_ttl=300).signer(NOW)
    assert first.record.kid == second.record.kid


def test_after_rotation_the_new_key_signs_and_the_old_verifies_until_retired(
    store: Store,
) -> None:
    ring = KeyRing(store, "ES256", access_token_ttl=300)
    old = ring.signer(NOW).record.kid
    new = ring.rotate(NOW + 10).kid
    assert ring.signer(NOW + 11).record.kid == new
    assert ring.verifier(old, NOW + 11) is not None
    retired_at = NOW + 10 + 300 + KEY_REFRESH_SECONDS
    assert ring.verifier(old, retired_at + 1) is None
    assert ring.verifier(new, retired_at + 1) is not None


def test_another_process_finds_a_new_kid_by_reloading(store: Store) -> None:
    here = KeyRing(store, "ES256", access_token_ttl=300)
    here.signer(NOW)
    elsewhere = KeyRing(store, "ES256", access_token_ttl=300)
    new = elsewhere.rotate(NOW + 5).kid
    assert here.verifier(new, NOW + 5) is not None


def test_unknown_kids_are_none(store: Store) -> None:
    ring = KeyRing(store, "ES256", access_token_ttl=300)
    ring.signer(NOW)
    assert ring.verifier("no-such-kid", NOW + 2) is None


def test_a_key_older_than_its_max_age_is_replaced(store: Store) -> None:
    ring = KeyRing(store, "ES256", access_token_ttl=300, max_age=3600)
    first = ring.signer(NOW).record.kid
    assert ring.signer(NOW + 3599).record.kid == first
    assert ring.signer(NOW + 3600).record.kid != first


def test_jwks_publishes_public_keys_only(store: Store) -> None:
    ring = KeyRing(store, "RS256", access_token_ttl=300)
    kid = ring.signer(NOW).record.kid
    (jwk,) = ring.jwks(NOW)["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"], jwk["kty"]) == (kid, "RS256", "sig", "RSA")
    assert "d" not in jwk and "key_ops" not in jwk


def test_revocations_are_seen_at_the_next_poll_after_the_lag(store: Store) -> None:
    cache = RevocationCache(store, lag=5)
    assert not cache.is_revoked("sid-1", "jti-1", NOW)
    store.revoke("jti-1", NOW + 300, NOW)
    assert not cache.is_revoked("sid-1", "jti-1", NOW + 1)  # within the lag: not polled
    assert cache.is_revoked("sid-1", "jti-1", NOW + 5)
    assert not cache.is_revoked("sid-1", "jti-2", NOW + 5)


def test_a_waiting_poll_sees_a_revocation_at_once(store: Store) -> None:
    cache = RevocationCache(store, lag=60)
    cache.poll(NOW)
    store.revoke("jti-1", NOW + 300, NOW)
    cache.poll(NOW + 1, wait=True)
    assert cache.is_revoked("sid", "jti-1", NOW + 1)


def test_entries_last_until_expiry_plus_clock_skew(store: Store) -> None:
    cache = RevocationCache(store, lag=0, clock_skew=30)
    store.revoke("jti-1", NOW + 100, NOW)
    assert cache.is_revoked("sid", "jti-1", NOW + 129)
    store.revoke("jti-2", NOW + 500, NOW + 200)  # a new entry makes the next poll prune
    assert not cache.is_revoked("sid", "jti-1", NOW + 200)
    assert cache.is_revoked("sid", "jti-2", NOW + 200)


def test_ended_sessions_are_revoked_by_session_id(store: Store) -> None:
    from flask_tokenguard.models import TokenSession

    session = TokenSession(
        session_id="sid-9",
        client_id="tg_c",
        subject="tg_c",
        scope="view",
        holds_seat=False,
        refresh_hash="h" * 64,
        created_at=NOW,
        expires_at=NOW + 1200,
    )
    store.start_session(session, None, NOW)
    cache = RevocationCache(store, lag=0)
    assert not cache.is_revoked("sid-9", "any", NOW)
    store.end_session("sid-9", NOW + 1)
    assert cache.is_revoked("sid-9", "any", NOW + 1)


# -- helpers for the HTTP tests below ----------------------------------------------------


def _token(http: t.Any, creds: dict[str, t.Any]) -> str:
    response = get_token(http, creds)
    assert response.status_code == 200, response.json
    return str(response.json["access_token"])


def _state(app: Flask) -> t.Any:
    return app.extensions["tokenguard"].state(app)


def _forged(app: Flask, token: str, **changes: t.Any) -> str:
    """``token`` re-signed with the store's real signing key, with ``changes`` to its claims."""
    claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
    header = jwt.get_unverified_header(token)
    signer = _state(app).keys.signer(time.time())
    return jwt.encode(claims, signer.private, algorithm=signer.record.alg, headers=header)


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    with isolated_store(request.param, tmp_path) as url_and_options:
        yield url_and_options


def _pair(
    app_factory: t.Callable[..., Flask], backend: tuple[str, dict[str, t.Any]], **config: t.Any
) -> tuple[Flask, Flask]:
    """Two apps on one store, as two processes would be (one app twice on ``memory``)."""
    url, options = backend
    first = app_factory(url, STORE_OPTIONS=options, **config)
    if url.startswith("memory:"):
        return first, first
    return first, app_factory(url, STORE_OPTIONS=options, **config)


# -- signing keys encrypted at rest ------------------------------------------------------


def test_encrypted_keys_are_stored_as_ciphertext_and_work(
    app_factory: t.Callable[..., Flask], backend: tuple[str, dict[str, t.Any]]
) -> None:
    key = Fernet.generate_key().decode()
    app, other = _pair(app_factory, backend, KEY_ENCRYPTION_KEY=key, REVOCATION_LAG=0)
    token = _token(app.test_client(), register(app))
    assert other.test_client().get("/whoami", headers=bearer(token)).status_code == 200
    (record,) = _state(app).store.signing_keys(time.time())
    assert record.private_pem.startswith("fernet:")
    assert "PRIVATE KEY" not in record.private_pem
    assert "BEGIN" not in record.private_pem
    assert b"PRIVATE KEY" not in _raw_bytes(*backend)


def _raw_bytes(url: str, options: dict[str, t.Any]) -> bytes:
    """Everything a store holds, as an attacker reading its files or its server sees it."""
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    if url.startswith("redis"):
        import redis

        server: t.Any = redis.Redis.from_url(url)
        try:
            chunks: list[bytes] = []
            for name in server.scan_iter(match=options["key_prefix"] + "*"):
                kind = server.type(name)
                if kind == b"hash":
                    chunks.extend(b"%s=%s" % kv for kv in server.hgetall(name).items())
                elif kind == b"string":
                    chunks.append(server.get(name) or b"")
                elif kind == b"zset":
                    chunks.extend(m for m, _ in server.zrange(name, 0, -1, withscores=True))
                elif kind in (b"set", b"list"):
                    members = (
                        server.smembers(name) if kind == b"set" else server.lrange(name, 0, -1)
                    )
                    chunks.extend(members)
            assert chunks
            return b"\n".join(chunks)
        finally:
            server.close()
    return b""  # memory and the SQL servers: the record above is the stored value


def test_encrypted_keys_without_the_key_or_with_a_wrong_one_are_a_configuration_error(
    app_factory: t.Callable[..., Flask], backend: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = backend
    if url.startswith("memory:"):
        pytest.skip("a memory store is never opened twice")
    key = Fernet.generate_key().decode()
    app = app_factory(url, STORE_OPTIONS=options, KEY_ENCRYPTION_KEY=key)
    _token(app.test_client(), register(app))
    wrong = Fernet.generate_key().decode()
    for config in ({}, {"KEY_ENCRYPTION_KEY": wrong}):
        other = app_factory(url, STORE_OPTIONS=options, **config)
        with pytest.raises(ConfigurationError, match="TOKENGUARD_KEY_ENCRYPTION_KEY") as error:
            other.test_client().get("/jwks.json")
        assert key not in str(error.value) and wrong not in str(error.value)
        result = other.test_cli_runner().invoke(args=["tokenguard", "rotate-keys"])
        assert result.exit_code == 1
        assert "TOKENGUARD_KEY_ENCRYPTION_KEY" in result.output
        assert key not in result.output and wrong not in result.output
    # A list with the old key second decrypts the old keys and encrypts with the new one.
    listed = app_factory(url, STORE_OPTIONS=options, KEY_ENCRYPTION_KEY=[wrong, key])
    assert listed.test_client().get("/jwks.json").status_code == 200


def test_turning_encryption_on_keeps_plain_keys_working_and_replaces_them(
    app_factory: t.Callable[..., Flask], backend: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = backend
    if url.startswith("memory:"):
        pytest.skip("a memory store is never opened twice")
    plain = app_factory(url, STORE_OPTIONS=options, REVOCATION_LAG=0)
    creds = register(plain)
    old_token = _token(plain.test_client(), creds)
    key = Fernet.generate_key().decode()
    sealed = app_factory(url, STORE_OPTIONS=options, KEY_ENCRYPTION_KEY=key, REVOCATION_LAG=0)
    http = sealed.test_client()
    assert http.get("/whoami", headers=bearer(old_token)).status_code == 200
    new_token = _token(http, creds)
    assert http.get("/whoami", headers=bearer(new_token)).status_code == 200
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != jwt.get_unverified_header(old_token)["kid"]
    records = {r.kid: r for r in _state(sealed).store.signing_keys(time.time())}
    assert records[new_kid].private_pem.startswith("fernet:")
    # The plain key only verifies from now on, and leaves the store once its tokens expire.
    old = records[jwt.get_unverified_header(old_token)["kid"]]
    assert old.retire_at is not None


# -- key retirement reaches cached tokens; bounded lifetimes ----------------------------


def test_retire_now_refuses_cached_tokens_of_the_old_key_in_every_process(
    app_factory: t.Callable[..., Flask], backend: tuple[str, dict[str, t.Any]]
) -> None:
    app, other = _pair(app_factory, backend, REVOCATION_LAG=0)
    creds = register(app)
    token = _token(app.test_client(), creds)
    http = other.test_client()
    assert http.get("/whoami", headers=bearer(token)).status_code == 200  # now cached
    result = cli(app, "rotate-keys", "--retire-now")
    assert result["kid"] != jwt.get_unverified_header(token)["kid"]
    assert http.get("/whoami", headers=bearer(token)).status_code == 401
    assert app.test_client().get("/whoami", headers=bearer(token)).status_code == 401
    kids = [key["kid"] for key in http.get("/jwks.json").get_json()["keys"]]
    assert kids == [result["kid"]]
    # Both processes sign with the new key at once, and their tokens verify.
    fresh = _token(http, creds)
    assert jwt.get_unverified_header(fresh)["kid"] == result["kid"]
    assert app.test_client().get("/whoami", headers=bearer(fresh)).status_code == 200


def test_plain_rotation_keeps_the_old_key_verifying(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(REVOCATION_LAG=0)
    http = app.test_client()
    token = _token(http, register(app))
    assert http.get("/whoami", headers=bearer(token)).status_code == 200
    cli(app, "rotate-keys")
    assert http.get("/whoami", headers=bearer(token)).status_code == 200


def test_tokens_living_longer_than_the_ttl_or_issued_in_the_future_are_refused(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory(ACCESS_TOKEN_TTL=300, CLOCK_SKEW=5)
    http = app.test_client()
    token = _token(http, register(app))
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    within = _forged(app, token, exp=iat + 305)
    assert http.get("/whoami", headers=bearer(within)).status_code == 200
    for changes in (
        {"exp": iat + 365 * 86400},
        {"exp": iat + 306},
        {"iat": iat + 600, "exp": iat + 800},
        {"iat": float(iat)},
        {"iat": "now"},
    ):
        forged = _forged(app, token, **changes)
        assert http.get("/whoami", headers=bearer(forged)).status_code == 401, changes


def test_without_an_issuer_only_loopback_or_server_name_issuers_are_accepted(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory()
    http = app.test_client()
    token = _token(http, register(app))
    for value in ("http://127.0.0.1:9999", "http://localhost:8081", "http://[::1]:5000"):
        forged = _forged(app, token, iss=value, aud=value)
        assert http.get("/whoami", headers=bearer(forged)).status_code == 200, value
    for changes in (
        {"iss": "http://evil.example"},
        {"aud": "http://evil.example"},
        {"iss": "http://evil.example", "aud": "http://evil.example"},
        {"aud": ["http://127.0.0.1"]},
    ):
        forged = _forged(app, token, **changes)
        assert http.get("/whoami", headers=bearer(forged)).status_code == 401, changes
    named = sample_app.create_app(
        {
            "TESTING": True,
            "SERVER_NAME": "auth.example.com",
            "TOKENGUARD_STORE_URL": "memory://",
            "TOKENGUARD_REQUIRE_HTTPS": False,
        }
    )
    named_http = named.test_client()
    named_token = _token(named_http, register(named))
    for value in ("http://auth.example.com", "https://auth.example.com"):
        forged = _forged(named, named_token, iss=value, aud=value)
        assert named_http.get("/whoami", headers=bearer(forged)).status_code == 200, value
    forged = _forged(named, named_token, iss="http://evil.example", aud="http://evil.example")
    assert named_http.get("/whoami", headers=bearer(forged)).status_code == 401
    named.extensions["tokenguard"].close_store(named)


# -- automatic rotation claims -----------------------------------------------------------


def test_a_rotation_claimed_by_a_process_that_died_is_done_by_another_later(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = KeyRing(store, "ES256", access_token_ttl=300, max_age=3600)
    first = ring.signer(NOW).record.kid
    due = NOW + 3600
    # The process that won the claim died before rotating.
    window = int(due // ROTATION_CLAIM_SECONDS)
    assert store.claim_once(f"key-rotation:{first}:{window}")
    claims: list[str] = []
    real_claim = store.claim_once

    def counted_claim(name: str) -> bool:
        claims.append(name)
        return real_claim(name)

    monkeypatch.setattr(store, "claim_once", counted_claim)
    for step in range(int(ROTATION_CLAIM_SECONDS) - 1):
        assert ring.signer(window * ROTATION_CLAIM_SECONDS + step * 0.9).record.kid == first
    assert len(claims) <= 1
    later = (window + 1) * ROTATION_CLAIM_SECONDS
    assert ring.signer(later).record.kid != first
    assert len(claims) <= 2


def test_one_rotation_among_rings_sharing_a_store(store: Store) -> None:
    rings = [KeyRing(store, "ES256", access_token_ttl=300, max_age=3600) for _ in range(3)]
    first = {ring.signer(NOW).record.kid for ring in rings}
    assert len(first) == 1
    kids = {ring.signer(NOW + 3600).record.kid for ring in rings}
    assert len(kids) == 1 and kids != first
    assert len(store.signing_keys(NOW + 3600)) == 2


# -- the revocation poll -----------------------------------------------------------------


class _HungStore:
    """A store whose ``revocation_seq`` blocks until released, as a hung server would."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.release = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._store, name)

    def revocation_seq(self) -> int:
        self.entered.set()
        self.release.wait(10)
        return self._store.revocation_seq()


def test_a_hung_poll_leaves_the_set_usable_for_one_lag_then_fails_closed(store: Store) -> None:
    hung = _HungStore(store)
    cache = RevocationCache(t.cast(Store, hung), lag=0.5)
    hung.release.set()
    cache.poll(NOW)
    hung.release.clear()
    hung.entered.clear()
    poller = threading.Thread(target=cache.is_revoked, args=("sid", "jti", NOW + 0.5))
    poller.start()
    try:
        assert hung.entered.wait(5)
        assert not cache.is_revoked("sid", "jti", NOW + 0.99)  # at most one lag stale
        with pytest.raises(StoreError):
            cache.is_revoked("sid", "jti", NOW + 1.0)
        with pytest.raises(StoreError):
            cache.is_revoked("sid", "jti", NOW + 60)
    finally:
        hung.release.set()
        poller.join(10)
    assert not cache.is_revoked("sid", "jti", NOW + 61)  # a poll succeeded: open again


def test_an_idle_process_waits_for_a_slow_poll_rather_than_failing(store: Store) -> None:
    hung = _HungStore(store)
    cache = RevocationCache(t.cast(Store, hung), lag=1)
    hung.release.set()
    cache.poll(NOW)
    hung.release.clear()
    hung.entered.clear()
    store.revoke("jti", NOW + 3600, NOW)
    poller = threading.Thread(target=cache.is_revoked, args=("sid", "jti", NOW + 600))
    poller.start()
    try:
        assert hung.entered.wait(5)
        threading.Timer(0.1, hung.release.set).start()
        assert cache.is_revoked("sid", "jti", NOW + 600)  # waited, then saw the new entry
    finally:
        hung.release.set()
        poller.join(10)


def test_a_hung_revocation_poll_gives_503_beyond_the_lag(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_factory(REVOCATION_LAG=1)
    http = app.test_client()
    token = _token(http, register(app))
    assert http.get("/whoami", headers=bearer(token)).status_code == 200
    cache = _state(app).verifier.revocations
    release = threading.Event()
    entered = threading.Event()
    real_seq = cache._store.revocation_seq

    def hung_seq() -> int:
        entered.set()
        release.wait(10)
        return t.cast(int, real_seq())

    monkeypatch.setattr(cache._store, "revocation_seq", hung_seq)
    real_time = time.time
    offset = [2.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    poller = threading.Thread(
        target=lambda: app.test_client().get("/whoami", headers=bearer(token))
    )
    poller.start()
    try:
        assert entered.wait(5)
        offset[0] = 10.0
        response = http.get("/whoami", headers=bearer(token))
        assert response.status_code == 503
        assert response.get_json()["error"] == "temporarily_unavailable"
    finally:
        release.set()
        poller.join(10)
    assert http.get("/whoami", headers=bearer(token)).status_code == 200


def test_an_ended_session_noted_locally_is_refused_without_a_poll(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory(REVOCATION_LAG=3600)
    http = app.test_client()
    token = _token(http, register(app))
    assert http.get("/whoami", headers=bearer(token)).status_code == 200
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    _state(app).note_ended_session(sid)
    assert http.get("/whoami", headers=bearer(token)).status_code == 401


def test_revocations_survive_a_reset_counter_that_climbs_past_the_old_one(
    backend: tuple[str, dict[str, t.Any]],
) -> None:
    url, options = backend
    here = store_from_url(url, **options)
    elsewhere = here if url.startswith("memory:") else store_from_url(url, **options)
    try:
        now = time.time()
        cache = RevocationCache(elsewhere, lag=0)
        for n in range(3):
            here.revoke(f"old-{n}", now + 300, now)
        assert cache.is_revoked("sid", "old-2", now)
        here.reset()  # the revocation state is wiped and created again
        here.revoke("victim", now + 300, now)
        for n in range(4):
            here.revoke(f"new-{n}", now + 300, now)
        assert here.revocation_seq() > 3
        assert cache.is_revoked("sid", "victim", now)
        assert cache.is_revoked("sid", "new-0", now)
    finally:
        if elsewhere is not here:
            elsewhere.close()
        here.close()
