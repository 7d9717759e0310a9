"""What only the Redis store does: key prefixes, safety-net TTLs, the per-client seat index,
commands resent after a lost reply, a server that goes away.

The shared contract runs in ``test_contract.py``; these tests cover Redis-specific
behaviour. Tests that need to stop a server start their own ``redis-server`` on a free port
in a temporary directory, never touching the shared one.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
import typing as t
import uuid

import pytest

from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.errors import StoreError
from flask_tokenguard.models import AdminSession
from flask_tokenguard.models import Client
from flask_tokenguard.models import SeatOutcome
from flask_tokenguard.models import SigningKey
from flask_tokenguard.models import User
from flask_tokenguard.stores import store_from_url
from tests.helpers import RedisServer
from tests.helpers import unavailable
from tests.stores import records

if t.TYPE_CHECKING:  # pragma: no cover
    from flask_tokenguard.stores.redis import RedisStore

try:
    import redis
except ImportError:  # pragma: no cover - the test extra installs redis-py
    if os.environ.get("CI", "").lower() in ("true", "1"):
        raise
    pytest.skip("redis-py is not installed", allow_module_level=True)

pytestmark = pytest.mark.redis

SHARED_URL = os.environ.get("TOKENGUARD_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"


def new_prefix() -> str:
    """A fresh prefix with a hash tag, so that runs sharing a server never collide."""
    return f"tgtest:{{{uuid.uuid4().hex}}}:"


# This file's sessions start at 1000 and end at 2000 unless a test says otherwise.
make_session = functools.partial(records.make_session, created_at=1000.0, expires_at=2000.0)


def keys_under(raw: redis.Redis, prefix: str) -> list[str]:
    pattern = "".join("\\" + c if c in "\\*?[]" else c for c in prefix) + "*"
    return sorted(raw.scan_iter(match=pattern))


@pytest.fixture
def raw() -> t.Iterator[redis.Redis]:
    """A plain client of the shared server, to look at the keys a store writes."""
    client = redis.Redis.from_url(SHARED_URL, decode_responses=True, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        client.close()
        unavailable(f"{SHARED_URL} unreachable: {exc}")
    yield client
    client.close()


@pytest.fixture
def make_store(raw: redis.Redis) -> t.Iterator[t.Callable[..., RedisStore]]:
    """Build stores on the shared server; every one is reset and closed afterwards."""
    made: list[RedisStore] = []

    def make(url: str = SHARED_URL, **options: t.Any) -> RedisStore:
        options.setdefault("key_prefix", new_prefix())
        store = t.cast("RedisStore", store_from_url(url, **options))
        made.append(store)
        return store

    yield make
    for store in made:
        try:
            store.reset()
        finally:
            store.close()


# -- key prefix -----------------------------------------------------------------------


def test_reset_deletes_only_its_own_prefix(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    first = make_store()
    second = make_store()
    for store in (first, second):
        store.create_client(Client("app", "App", alias="the-app"))
        assert store.start_session(make_session("s1"), 5, now=1000.0)
        store.revoke("jti-1", 3000.0, now=1000.0)

    first.reset()

    assert keys_under(raw, first.key_prefix) == []
    assert first.get_client("app") is None
    assert first.seats_in_use(now=1000.0) == 0
    assert second.get_client("the-app") is not None
    assert second.get_session("s1", now=1000.0) is not None
    assert second.revocations_since(0, now=1000.0) == ({"jti-1": 3000.0}, 1)


def test_every_key_carries_the_prefix_and_one_cluster_slot(own_redis_server: RedisServer) -> None:
    # A private server, so that every key in it is this store's.
    store = t.cast("RedisStore", store_from_url(own_redis_server.url))
    raw = redis.Redis.from_url(own_redis_server.url, decode_responses=True)
    try:
        store.claim_once("demo-client")
        store.ensure_signing_key(SigningKey("k1", "ES256", "pem", created_at=1000.0))
        store.create_client(Client("app", "App", alias="the-app"))
        store.create_user(User("alice", "pw-hash"))
        assert store.start_session(make_session("s1"), 5, now=1000.0)
        assert store.start_session(make_session("s2"), 5, now=1000.0)
        assert store.rotate_refresh("s1", "hash-s1", "hash-s1b", 2500.0, now=1100.0)
        store.revoke("jti-1", 3000.0, now=1000.0)
        assert store.end_session("s2", now=1200.0) is not None
        capped = store.start_session(
            make_session("s3"), 5, now=1200.0, client_cap=1, replace_oldest=True
        )
        assert [s.session_id for s in capped.replaced] == ["s1"]
        store.start_admin_session(AdminSession("admin-hash", "root", 1000.0, 2000.0))
        store.add_event({"time": "1000", "event": "login"})

        written = list(raw.scan_iter(match="*"))
        assert len(written) > 10
        assert all(key.startswith("tg:{tg}:") for key in written)
        assert {redis.crc.key_slot(key.encode()) for key in written} == {
            redis.crc.key_slot(b"{tg}")
        }
    finally:
        raw.close()
        store.close()


def test_admin_session_with_past_epoch_expiry_is_not_dropped_by_redis(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    store.start_admin_session(AdminSession("h1", "root", created_at=1000.0, expires_at=2000.0))

    key = f"{store.key_prefix}admin:h1"
    # Relative to created_at: the remaining 1000 s plus the margin, not a deadline in 1970.
    assert 1000 * 1000 < raw.pttl(key) <= (1000 + 3600) * 1000
    touched = store.touch_admin_session("h1", now=1500.0, expires_at=100_000.0)
    assert touched == AdminSession("h1", "root", 1000.0, 100_000.0)
    assert raw.pttl(key) > 98_000 * 1000
    assert store.touch_admin_session("h1", now=100_000.0, expires_at=200_000.0) is None
    assert not raw.exists(key)


def test_events_are_trimmed_to_keep_on_every_add(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    for i in range(8):
        store.add_event({"time": str(i), "event": "login_failed"}, keep=3)
        assert raw.llen(f"{store.key_prefix}events") == min(i + 1, 3)

    assert [e["time"] for e in store.recent_events(10)] == ["7", "6", "5"]
    # LRANGE 0 -1 would be every event: a limit of 0 asks for none.
    assert store.recent_events(0) == []


def test_default_prefix_is_hash_tagged() -> None:
    store = store_from_url(SHARED_URL)
    try:
        assert t.cast("RedisStore", store).key_prefix == "tg:{tg}:"
    finally:
        store.close()


@pytest.mark.parametrize("prefix", ["tg:", "tg:{}:", "tg:{tg", "tg:}tg{:", "tg:{}{tg}:", "tg:tg}:"])
def test_prefix_without_a_hash_tag_is_refused(prefix: str) -> None:
    # The scripts build keys from the prefix: Cluster-safe only if all share one slot.
    with pytest.raises(ConfigurationError, match="hash tag") as caught:
        store_from_url(SHARED_URL, key_prefix=prefix)
    assert "Cluster slot" in str(caught.value)


@pytest.mark.parametrize("prefix", ["{tg}", "app:{tg}:", "a{b}c{}:", "x{{y}:"])
def test_prefix_with_a_hash_tag_is_accepted(prefix: str) -> None:
    store = t.cast("RedisStore", store_from_url(SHARED_URL, key_prefix=prefix))
    try:
        assert store.key_prefix == prefix
    finally:
        store.close()


# -- expiry: decided by now, Redis TTLs only a safety net -----------------------------


def test_session_with_past_epoch_expiry_is_not_dropped_by_redis(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    # expires_at=2000 is in 1970: an absolute PEXPIREAT would delete the key at once.
    store = make_store()
    assert store.start_session(make_session("s1", expires_at=2000.0), 5, now=1000.0)

    session_key = f"{store.key_prefix}session:s1"
    ttl_ms = raw.pttl(session_key)
    assert ttl_ms > 1000 * 1000, "TTL must cover the remaining 1000 s plus a margin"
    assert store.get_session("s1", now=1999.0) is not None
    assert store.find_refresh("hash-s1", now=1999.0) is not None
    # Expiry itself follows now, whatever the key's TTL.
    assert store.get_session("s1", now=2000.0) is None
    assert store.seats_in_use(now=2000.0) == 0
    assert raw.exists(session_key)


def test_rotation_extends_the_safety_net(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    assert store.start_session(make_session("s1", expires_at=1100.0), 5, now=1000.0)
    before = raw.pttl(f"{store.key_prefix}session:s1")

    assert store.rotate_refresh("s1", "hash-s1", "hash-s1b", 100_000.0, now=1050.0) is not None

    for suffix in ("session:s1", "refresh:hash-s1b", "used:hash-s1", "used_by:s1"):
        assert raw.pttl(f"{store.key_prefix}{suffix}") > before + 90_000 * 1000


def test_sweep_removes_every_index_entry(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    assert store.start_session(make_session("old", expires_at=1500.0), 5, now=1000.0)
    assert store.rotate_refresh("old", "hash-old", "hash-old2", 1500.0, now=1100.0)

    # A start at now=1600 sweeps the expired session and everything pointing at it.
    assert store.start_session(make_session("new", expires_at=3000.0), 5, now=1600.0)

    leftovers = [k[len(store.key_prefix) :] for k in keys_under(raw, store.key_prefix)]
    assert not [k for k in leftovers if "old" in k]
    assert raw.zrange(f"{store.key_prefix}sessions", 0, -1) == ["new"]


# -- the per-client seat index ----------------------------------------------------------


def zset(raw: redis.Redis, key: str) -> dict[str, float]:
    """A sorted set as {member: score}."""
    pairs = t.cast("list[tuple[str, float]]", raw.zrange(key, 0, -1, withscores=True))
    return dict(pairs)


def seat_index(raw: redis.Redis, store: RedisStore) -> dict[str, dict[str, float]]:
    """Every client's seat index as stored: client id -> {session id: expires_at}."""
    head = f"{store.key_prefix}client_seats:"
    return {key[len(head) :]: zset(raw, key) for key in keys_under(raw, head)}


def assert_seat_indexes_agree(raw: redis.Redis, store: RedisStore) -> None:
    """The per-client index holds exactly the pool's seats, each under its own client."""
    prefix = store.key_prefix
    expected: dict[str, dict[str, float]] = {}
    for sid, expires_at in zset(raw, f"{prefix}seats").items():
        client_id = t.cast("str | None", raw.hget(f"{prefix}session_client", sid))
        assert client_id is not None
        expected.setdefault(client_id, {})[sid] = expires_at
    assert seat_index(raw, store) == expected


def test_client_seat_index_follows_every_session_change(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    for i in (1, 2):
        assert store.start_session(make_session(f"a{i}", created_at=1000.0 + i), None, 1000.0)
    assert store.start_session(make_session("view", holds_seat=False), None, 1000.0)
    assert store.start_session(make_session("o1", client_id="other"), None, 1000.0)
    assert store.start_session(make_session("o2", client_id="other"), None, 1000.0)
    assert seat_index(raw, store) == {
        "app": {"a1": 2000.0, "a2": 2000.0},
        "other": {"o1": 2000.0, "o2": 2000.0},
    }

    # Replacing the oldest moves the index with the pool.
    outcome = store.start_session(
        make_session("a3", created_at=1003.0), None, 1010.0, client_cap=2, replace_oldest=True
    )
    assert [s.session_id for s in outcome.replaced] == ["a1"]
    assert seat_index(raw, store)["app"] == {"a2": 2000.0, "a3": 2000.0}

    # A rotation moves the seat's expiry in both indexes.
    assert store.rotate_refresh("a2", "hash-a2", "hash-a2b", 2500.0, now=1100.0)
    assert seat_index(raw, store)["app"] == {"a2": 2500.0, "a3": 2000.0}
    assert store.earliest_seat_expiry(1100.0, client_id="app") == 2000.0
    assert_seat_indexes_agree(raw, store)

    assert store.end_session("a3", now=1200.0) is not None
    assert seat_index(raw, store)["app"] == {"a2": 2500.0}
    assert store.end_sessions("other", now=1200.0) == 2
    assert seat_index(raw, store) == {"app": {"a2": 2500.0}}
    assert_seat_indexes_agree(raw, store)

    assert store.end_sessions(None, now=1200.0) == 2  # a2 and the view session
    assert seat_index(raw, store) == {}
    assert raw.zcard(f"{store.key_prefix}seats") == 0


def test_client_seat_index_is_swept_with_the_pool_by_the_skewed_clock(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    assert store.start_session(make_session("e1", expires_at=1500.0), None, 1000.0)
    assert store.start_session(make_session("o1", client_id="other"), None, 1000.0)

    # Expired 20 s ago by this clock, but within the 30 s skew: still held everywhere.
    assert store.start_session(make_session("x1", client_id="other"), None, 1520.0, skew=30)
    assert seat_index(raw, store)["app"] == {"e1": 1500.0}
    assert_seat_indexes_agree(raw, store)

    assert store.start_session(make_session("x2", client_id="other"), None, 1540.0, skew=30)
    assert "app" not in seat_index(raw, store)
    assert_seat_indexes_agree(raw, store)


def test_client_seat_index_is_swept_beyond_the_sweep_limit(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    from flask_tokenguard.stores.redis.store import SWEEP_LIMIT

    store = make_store()
    expired = SWEEP_LIMIT + 20
    for i in range(expired):
        assert store.start_session(make_session(f"e{i}", expires_at=1100.0), None, 1000.0)

    # One start sweeps at most SWEEP_LIMIT sessions, but every expired seat everywhere.
    assert store.start_session(make_session("new", expires_at=3000.0), 1, 2000.0, client_cap=1)
    assert raw.zcard(f"{store.key_prefix}sessions") == 21  # 20 left for later sweeps
    assert seat_index(raw, store) == {"app": {"new": 3000.0}}
    assert_seat_indexes_agree(raw, store)


def test_seats_taken_before_the_client_index_existed_count_against_the_cap(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    assert store.start_session(make_session("s1"), None, 1000.0)
    assert store.start_session(make_session("s2"), None, 1000.0)
    # As a store written by a release without the per-client index leaves it.
    raw.delete(f"{store.key_prefix}client_seats:app", f"{store.key_prefix}seat_index")

    assert store.start_session(make_session("s3"), None, 1000.0, client_cap=2) == SeatOutcome(
        False, "client"
    )
    assert seat_index(raw, store) == {"app": {"s1": 2000.0, "s2": 2000.0}}
    assert store.earliest_seat_expiry(1000.0, client_id="app") == 2000.0


def test_a_seat_whose_session_hash_is_gone_does_not_hold_the_client_cap(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    assert store.start_session(make_session("s1"), None, 1000.0)
    raw.delete(f"{store.key_prefix}session:s1")  # the safety-net TTL ran out, or eviction

    outcome = store.start_session(make_session("s2"), None, 1000.0, client_cap=1)
    assert outcome == SeatOutcome(True)
    assert seat_index(raw, store) == {"app": {"s2": 2000.0}}
    assert_seat_indexes_agree(raw, store)


# -- a command resent after its reply was lost -----------------------------------------


def lose_next_reply(store: RedisStore) -> None:
    """Drop the reply of the store's next command, as a connection breaking would.

    The command has run on the server; redis-py sees a ConnectionError and resends it on
    a new connection (the store's retry policy), so the script runs a second time.
    """
    pool = store._client.connection_pool
    conn = pool.get_connection()
    original = conn.read_response

    def read_response(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        del conn.read_response  # once
        original(*args, **kwargs)
        raise redis.exceptions.ConnectionError("connection lost before the reply")

    conn.read_response = read_response  # type: ignore[method-assign]
    pool.release(conn)


def test_rotate_refresh_run_twice_returns_the_same_session(
    make_store: t.Callable[..., RedisStore],
) -> None:
    store = make_store()
    assert store.start_session(make_session("s1"), 5, now=1000.0)

    first = store.rotate_refresh("s1", "hash-s1", "hash-s1b", 2500.0, now=1100.0)
    again = store.rotate_refresh("s1", "hash-s1", "hash-s1b", 2500.0, now=1100.0)

    expected = make_session("s1", refresh_hash="hash-s1b", expires_at=2500.0)
    assert first == again == expected
    assert store.find_refresh("hash-s1b", now=1100.0) == (expected, True)
    assert store.find_refresh("hash-s1", now=1100.0) == (expected, False)
    # Only the caller that made hash-s1b is recognised: any other is a replay.
    assert store.rotate_refresh("s1", "hash-s1", "hash-s1c", 2600.0, now=1100.0) is None
    assert store.get_session("s1", now=1100.0) == expected


def test_rotate_refresh_is_not_repeated_after_a_later_rotation(
    make_store: t.Callable[..., RedisStore],
) -> None:
    store = make_store()
    assert store.start_session(make_session("s1"), 5, now=1000.0)
    assert store.rotate_refresh("s1", "hash-s1", "hash-s1b", 2500.0, now=1100.0)
    assert store.rotate_refresh("s1", "hash-s1b", "hash-s1c", 2600.0, now=1200.0)

    assert store.rotate_refresh("s1", "hash-s1", "hash-s1b", 2500.0, now=1200.0) is None


def test_rotate_refresh_resent_after_a_lost_reply_succeeds(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    assert store.start_session(make_session("s1"), 5, now=1000.0)

    lose_next_reply(store)
    updated = store.rotate_refresh("s1", "hash-s1", "hash-s1b", 2500.0, now=1100.0)

    assert updated == make_session("s1", refresh_hash="hash-s1b", expires_at=2500.0)
    assert store.get_session("s1", now=1100.0) == updated
    assert raw.zscore(f"{store.key_prefix}seats", "s1") == 2500.0


def start_two_then_replace(store: RedisStore) -> SeatOutcome:
    for i in (1, 2):
        assert store.start_session(make_session(f"s{i}", created_at=1000.0 + i), None, 1000.0)
    return store.start_session(
        make_session("s3", created_at=1003.0), None, 1010.0, client_cap=2, replace_oldest=True
    )


def test_start_session_resent_after_a_lost_reply_replaces_once(
    make_store: t.Callable[..., RedisStore],
) -> None:
    store = make_store()
    for i in (1, 2):
        assert store.start_session(make_session(f"s{i}", created_at=1000.0 + i), None, 1000.0)

    lose_next_reply(store)
    outcome = store.start_session(
        make_session("s3", created_at=1003.0), None, 1010.0, client_cap=2, replace_oldest=True
    )

    # The resend reports what the first run did, and ends nothing more.
    assert outcome == SeatOutcome(True, None, (make_session("s1", created_at=1001.0),))
    assert [s.session_id for s in store.list_sessions("app", 1010.0)] == ["s2", "s3"]
    assert store.revocations_since(0, 1010.0) == ({"s1": 2000.0}, 1)
    assert store.seats_in_use(1010.0) == 2


def test_start_session_run_twice_returns_the_same_outcome(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    first = start_two_then_replace(store)
    again = store.start_session(
        make_session("s3", created_at=1003.0), None, 1010.0, client_cap=2, replace_oldest=True
    )

    assert first == again == SeatOutcome(True, None, (make_session("s1", created_at=1001.0),))
    assert [s.session_id for s in store.list_sessions("app", 1010.0)] == ["s2", "s3"]
    assert store.revocation_seq() == 1
    # Once the record of what it replaced is gone, a late resend still replaces nothing.
    raw.delete(f"{store.key_prefix}replaced:s3")
    late = store.start_session(
        make_session("s3", created_at=1003.0), None, 1010.0, client_cap=2, replace_oldest=True
    )
    assert late == SeatOutcome(True)
    assert store.revocation_seq() == 1


def test_what_a_start_replaced_is_kept_only_briefly(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    start_two_then_replace(store)
    assert 0 < raw.pttl(f"{store.key_prefix}replaced:s3") <= 60_000
    # A start that replaced nothing leaves no such key.
    assert not raw.exists(f"{store.key_prefix}replaced:s2")


def test_record_failure_resent_after_a_lost_reply_counts_once(
    make_store: t.Callable[..., RedisStore],
) -> None:
    store = make_store()
    lose_next_reply(store)
    assert store.record_failure("user:alice", 60.0, now=1000.0) == (1, 1060.0)
    lose_next_reply(store)
    assert store.record_failure("user:alice", 60.0, now=1001.0) == (2, 1060.0)
    assert store.failures("user:alice", now=1001.0) == (2, 1060.0)


def test_record_failure_remembers_only_a_few_attempts(
    make_store: t.Callable[..., RedisStore], raw: redis.Redis
) -> None:
    store = make_store()
    for count in range(1, 101):
        assert store.record_failure("user:alice", 60.0, now=1000.0) == (count, 1060.0)
    recent = raw.hget(f"{store.key_prefix}failures:user:alice", "recent")
    assert isinstance(recent, str)  # the client decodes responses
    entries = recent.split()
    assert len(entries) == 16
    assert [int(entry.partition("=")[2]) for entry in entries] == list(range(85, 101))
    # A new window forgets the old one's attempts.
    assert store.record_failure("user:alice", 60.0, now=1060.0) == (1, 1120.0)
    recent = raw.hget(f"{store.key_prefix}failures:user:alice", "recent")
    assert recent is not None
    assert len(recent.split()) == 1


# -- errors, reconnects, lifecycle ----------------------------------------------------


def test_server_going_away_raises_store_error_and_recovers(own_redis_server: RedisServer) -> None:
    store = store_from_url(own_redis_server.url, key_prefix=new_prefix())
    try:
        store.check()
        store.create_client(Client("app", "App"))
        assert store.start_session(make_session("s1"), 1, now=1000.0)

        own_redis_server.kill()
        with pytest.raises(StoreError) as caught:
            store.get_client("app")
        assert isinstance(caught.value.original, redis.exceptions.RedisError)
        with pytest.raises(StoreError):
            store.start_session(make_session("s2"), 1, now=1000.0)
        with pytest.raises(StoreError):
            store.check()

        own_redis_server.start()  # same port, empty: no persistence
        store.check()
        assert store.get_client("app") is None
        # The scripts were flushed with the server: EVALSHA falls back to loading them.
        assert store.start_session(make_session("s2"), 1, now=1000.0)
        assert not store.start_session(make_session("s3"), 1, now=1000.0)
        assert store.seats_in_use(now=1000.0) == 1
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP (POSIX)")
def test_hung_server_fails_within_the_socket_timeout(own_redis_server: RedisServer) -> None:
    # Timeouts are not retried: a hung server costs one socket_timeout, then StoreError.
    store = store_from_url(own_redis_server.url, key_prefix=new_prefix(), socket_timeout=0.5)
    assert own_redis_server.process is not None
    try:
        assert store.start_session(make_session("s1"), 5, now=1000.0)
        own_redis_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError) as caught:
                store.seats_in_use(now=1000.0)
            assert time.monotonic() - started < 2.0
            assert isinstance(caught.value.original, redis.exceptions.TimeoutError)
        finally:
            own_redis_server.process.send_signal(signal.SIGCONT)
        assert store.seats_in_use(now=1000.0) == 1
    finally:
        store.close()


def test_scripts_reload_after_script_flush(own_redis_server: RedisServer) -> None:
    store = store_from_url(own_redis_server.url, key_prefix=new_prefix())
    raw = redis.Redis.from_url(own_redis_server.url)
    try:
        assert store.start_session(make_session("s1"), 5, now=1000.0)
        raw.script_flush()
        assert store.start_session(make_session("s2"), 5, now=1000.0)
        assert store.seats_in_use(now=1000.0) == 2
    finally:
        raw.close()
        store.close()


def test_store_works_again_after_close(make_store: t.Callable[..., RedisStore]) -> None:
    store = make_store()
    store.create_client(Client("app", "App"))
    store.close()
    assert store.get_client("app") is not None
    store.close()
    store.close()
    assert store.claim_once("after-close")


def test_check_warns_when_keys_may_be_evicted(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_from_url(own_redis_server.url)
    raw = redis.Redis.from_url(own_redis_server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="flask_tokenguard.stores.redis"):
            store.check()
        assert not caplog.records

        raw.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING, logger="flask_tokenguard.stores.redis"):
            store.check()
        assert "noeviction" in caplog.text
        assert "allkeys-lru" in caplog.text
    finally:
        raw.close()
        store.close()


def test_check_tolerates_a_disabled_config_command(
    make_store: t.Callable[..., RedisStore],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store()

    def refuse(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise redis.exceptions.ResponseError("unknown command 'CONFIG'")

    monkeypatch.setattr(store._client, "config_get", refuse)
    with caplog.at_level(logging.WARNING, logger="flask_tokenguard.stores.redis"):
        store.check()
    assert not caplog.records


def test_unix_socket_scheme(own_redis_server: RedisServer) -> None:
    store = store_from_url(
        f"redis+unix://{own_redis_server.socket_path}?db=0", key_prefix=new_prefix()
    )
    try:
        store.check()
        assert store.claim_once("via-socket")
        assert not store.claim_once("via-socket")
    finally:
        store.close()


def test_missing_driver_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"flask-tokenguard\[redis\]"):
        store_from_url(SHARED_URL)


def test_tls_urls_go_through_redis_pys_ssl_connections() -> None:
    # rediss:// (TLS) as redis-py takes it; a Sentinel's primary over TLS with ssl=True.
    # Nothing connects until the first call, so no server is needed to see the choice.
    from redis.connection import SSLConnection
    from redis.sentinel import SentinelManagedSSLConnection

    tls_url = "rediss://127.0.0.1:6380/0"
    plain = t.cast("RedisStore", store_from_url(tls_url, key_prefix="tg:{tls}:"))
    sentinel = t.cast(
        "RedisStore",
        store_from_url(
            "redis+sentinel://127.0.0.1:26379/tokenguard", key_prefix="tg:{tls}:", ssl=True
        ),
    )
    assert plain._client.connection_pool.connection_class is SSLConnection
    assert sentinel._client.connection_pool.connection_class is SentinelManagedSSLConnection
