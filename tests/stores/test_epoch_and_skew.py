"""Revocation epochs, seat reclaim under clock skew, and Redis's per-client session sets.

Epoch: a process that saw revocation seq N of a counter that later restarted (a reset,
or Redis losing its keys) would otherwise miss the revocations numbered 1 to N of the
new run; the epoch tells it to read everything again.
"""

from __future__ import annotations

import typing as t

import pytest

from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store
from tests.backends import REDIS_BACKENDS
from tests.stores import _workers
from tests.stores.records import make_session
from tests.stores.records import NOW
from tests.stores.records import TTL

# -- revocation epoch ------------------------------------------------------------------


def test_epoch_is_a_stable_non_empty_string(store: Store) -> None:
    epoch = store.revocation_epoch()

    assert isinstance(epoch, str) and epoch
    store.revoke("jti-1", NOW + TTL, NOW)
    store.start_session(make_session("s1"), None, NOW)
    store.end_session("s1", NOW)
    assert store.revocation_epoch() == epoch
    assert store.revocation_epoch() == epoch


def test_reset_starts_a_new_epoch_with_the_counter(store: Store) -> None:
    store.revoke("jti-1", NOW + TTL, NOW)
    before = store.revocation_epoch()

    store.reset()

    assert store.revocation_seq() == 0
    assert store.revocation_epoch() != before


def test_a_restarted_counter_is_told_apart_by_its_epoch(store: Store) -> None:
    # A process cached everything up to seq 3 ...
    for i in range(3):
        store.revoke(f"old-{i}", NOW + TTL, NOW)
    seen_epoch, seen_seq = store.revocation_epoch(), store.revocation_seq()
    assert seen_seq == 3
    # ... then the store lost its state and numbered three new revocations 1 to 3.
    store.reset()
    for i in range(3):
        store.revoke(f"new-{i}", NOW + TTL, NOW)

    # By seq alone nothing is new: the three revocations would be missed.
    assert store.revocation_seq() == seen_seq
    assert store.revocations_since(seen_seq, NOW) == ({}, 3)
    # The epoch says the counter restarted; reading from 0 finds all three.
    assert store.revocation_epoch() != seen_epoch
    entries, seq = store.revocations_since(0, NOW)
    assert set(entries) == {"new-0", "new-1", "new-2"}
    assert seq == 3


@pytest.mark.cross_process
def test_epoch_is_shared_by_stores_and_processes(
    store: Store, store_url_and_options: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = store_url_and_options
    other = store_from_url(url, **options)
    try:
        assert other.revocation_epoch() == store.revocation_epoch()
    finally:
        other.close()
    reports = _workers.spawn(3, _workers.read_epoch, url, options)

    assert [(status, value) for _, status, value in reports] == [
        ("ok", store.revocation_epoch())
    ] * 3


@pytest.mark.cross_process
def test_processes_creating_the_first_epoch_at_once_agree(
    store_url_and_options: tuple[str, dict[str, t.Any]],
    open_store: t.Callable[..., t.ContextManager[Store]],
) -> None:
    url, options = store_url_and_options
    with open_store(url, options) as store:
        reports = _workers.spawn(4, _workers.read_epoch, url, options)

        epochs = {value for _, status, value in reports if status == "ok"}
        assert [status for _, status, _ in reports] == ["ok"] * 4
        assert epochs == {store.revocation_epoch()}


@pytest.mark.parametrize("store_id", REDIS_BACKENDS)
def test_redis_keys_lost_mean_a_new_epoch(store: Store) -> None:
    """A restart without persistence, a failover or a FLUSH loses the counter's keys."""
    client = t.cast("t.Any", store)._client
    store.revoke("jti-1", NOW + TTL, NOW)
    before = store.revocation_epoch()

    # FLUSH of this store's keys (and nothing else on the server).
    keys = list(
        client.scan_iter(
            match=t.cast("t.Any", store).key_prefix.replace("{", "\\{").replace("}", "\\}") + "*"
        )
    )
    assert keys
    client.delete(*keys)

    after = store.revocation_epoch()
    assert after != before
    store.revoke("jti-2", NOW + TTL, NOW)
    assert store.revocation_epoch() == after
    assert store.revocations_since(0, NOW) == ({"jti-2": NOW + TTL}, 1)


@pytest.mark.parametrize("store_id", REDIS_BACKENDS)
def test_redis_revoking_after_the_keys_were_lost_starts_a_new_epoch(store: Store) -> None:
    client = t.cast("t.Any", store)._client
    prefix = t.cast("t.Any", store).key_prefix
    store.revoke("jti-1", NOW + TTL, NOW)
    before = store.revocation_epoch()

    client.delete(prefix + "revocation_seq", prefix + "revocation_epoch")
    store.revoke("jti-2", NOW + TTL, NOW)

    assert store.revocation_seq() == 1
    assert store.revocation_epoch() != before


@pytest.mark.parametrize("store_id", REDIS_BACKENDS)
def test_redis_counter_from_before_epochs_keeps_its_value(store: Store) -> None:
    client = t.cast("t.Any", store)._client
    prefix = t.cast("t.Any", store).key_prefix
    for i in range(4):
        store.revoke(f"jti-{i}", NOW + TTL, NOW)
    client.delete(prefix + "revocation_epoch")

    epoch = store.revocation_epoch()

    assert store.revocation_seq() == 4
    store.revoke("jti-9", NOW + TTL, NOW)
    assert store.revocation_epoch() == epoch
    assert store.revocation_seq() == 5


# -- seat reclaim and clock skew -------------------------------------------------------


def test_a_clock_ahead_does_not_reclaim_seats_within_the_skew(store: Store) -> None:
    assert store.start_session(make_session("s1", expires_at=NOW + 100), 1, NOW)
    # This host's clock runs 20 s ahead of the one that started s1: by its clock s1 has
    # just expired, but the other hosts, allowed 30 s of skew, still count it.
    ahead = NOW + 120

    assert not store.start_session(make_session("s2", expires_at=ahead + TTL), 1, ahead, skew=30)
    assert store.get_session("s1", NOW + 99) is not None
    # Once expired on every clock, the seat is free.
    later = NOW + 131
    assert store.start_session(make_session("s3", expires_at=later + TTL), 1, later, skew=30)
    assert [s.session_id for s in store.list_sessions(None, later)] == ["s3"]


def test_without_skew_an_expired_seat_is_reclaimed_at_once(store: Store) -> None:
    assert store.start_session(make_session("s1", expires_at=NOW + 100), 1, NOW)

    assert store.start_session(make_session("s2", expires_at=NOW + TTL), 1, NOW + 100)


def test_skew_keeps_unexpired_sessions_that_hold_no_seat(store: Store) -> None:
    store.start_session(make_session("s1", holds_seat=False, expires_at=NOW + 100), 1, NOW)

    assert store.start_session(make_session("s2", expires_at=NOW + TTL), 1, NOW + 110, skew=30)
    # s1 expired 10 s ago by this clock: kept (within the skew), but not live for reads.
    assert store.get_session("s1", NOW + 90) is not None


# -- Redis: per-client session sets ----------------------------------------------------


@pytest.mark.parametrize("store_id", REDIS_BACKENDS)
def test_redis_client_set_does_not_grow_with_sessions_expired_by_ttl(store: Store) -> None:
    client = t.cast("t.Any", store)._client
    prefix = t.cast("t.Any", store).key_prefix
    for i in range(40):
        store.start_session(make_session(f"old-{i}", expires_at=NOW + 100), None, NOW)
        # The safety-net TTL ran out before any sweep: the session's hash is gone.
        client.delete(f"{prefix}session:old-{i}")
    # The dead members are still indexed by the sessions zset, which the sweep reads.
    assert client.zcard(f"{prefix}sessions") == 40

    later = NOW + 1000
    for i in range(3):
        store.start_session(make_session(f"new-{i}", expires_at=later + TTL), None, later)

    members = client.smembers(f"{prefix}client_sessions:app")
    assert members == {"new-0", "new-1", "new-2"}
    assert client.hlen(f"{prefix}session_client") == 3
    assert [s.session_id for s in store.list_sessions("app", later)] == ["new-0", "new-1", "new-2"]


@pytest.mark.parametrize("store_id", REDIS_BACKENDS)
def test_redis_client_set_sheds_members_no_index_names(store: Store) -> None:
    """Members left by a release that kept no session-to-client index leave the set too."""
    client = t.cast("t.Any", store)._client
    prefix = t.cast("t.Any", store).key_prefix
    key = f"{prefix}client_sessions:app"
    client.sadd(key, *[f"gone-{i}" for i in range(20)])

    for i in range(60):
        store.start_session(make_session(f"s{i}", expires_at=NOW + TTL), None, NOW)

    assert client.scard(key) < 60 + 20 / 2
    assert len(store.list_sessions("app", NOW)) == 60


@pytest.mark.parametrize("store_id", ["postgresql", "mariadb", "sqlite+pysqlite", "sqlite"])
def test_a_missing_epoch_row_is_created_once(store: Store) -> None:
    """A store whose counters lack the epoch row (as one created before epochs) gets one."""
    store.revoke("jti-1", NOW + TTL, NOW)
    delete = "DELETE FROM tg_counters WHERE name = 'revocation_epoch'"
    if hasattr(store, "_engine"):
        sql = t.cast("t.Any", store)
        counters = sql._q.counters
        with sql._engine.begin() as conn:
            conn.execute(counters.delete().where(counters.c.name == "revocation_epoch"))
    else:
        with t.cast("t.Any", store)._write() as conn:
            conn.execute(delete)

    epoch = store.revocation_epoch()

    assert epoch == store.revocation_epoch()
    assert store.revocation_seq() == 1
