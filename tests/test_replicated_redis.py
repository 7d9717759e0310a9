"""The Redis store on replicated topologies: Sentinel and Cluster URLs, acknowledged writes,
and a failover under token load.

The topologies are the session's own (``tests/replicated_backends.py``), which the store
suite (``tests/stores``, backends ``redis+sentinel`` and ``redis+cluster``) also runs its
whole contract on; every test works under its own key prefix. Run them with
``pytest -m replication``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.errors import StoreError
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.redis.store import RedisStore
from tests import replicated_backends
from tests.backends import backend_url_and_options
from tests.backends import open_store as open_backend_store
from tests.failover_load import Load
from tests.failover_load import until
from tests.helpers import flask_cli
from tests.helpers import SampleServer
from tests.replicated_backends import replicated_topologies
from tests.replication import ClusterTopology
from tests.replication import SentinelTopology
from tests.stores.records import make_session
from tests.stores.records import NOW

pytestmark = [pytest.mark.replication, pytest.mark.slow]

__all__ = ["replicated_topologies"]  # the session fixture that stops the topologies

Topology = SentinelTopology | ClusterTopology


@pytest.fixture(scope="module")
def sentinel_topology() -> SentinelTopology:
    """The session's Sentinel topology (shared with the store suite; started if need be)."""
    return replicated_backends.sentinel_topology()


@pytest.fixture(scope="module")
def cluster_topology() -> ClusterTopology:
    """The session's Cluster topology (shared with the store suite; started if need be)."""
    return replicated_backends.cluster_topology()


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Topology:
    return t.cast(Topology, request.getfixturevalue(f"{request.param}_topology"))


@pytest.fixture
def open_replicated(topology: Topology) -> t.Iterator[t.Callable[..., RedisStore]]:
    """``open_replicated(**options)``: a store on the topology under a fresh key prefix."""
    prefix = f"tg:{{{uuid.uuid4().hex[:12]}}}:"
    opened: list[RedisStore] = []

    def open_store(**options: t.Any) -> RedisStore:
        store = store_from_url(topology.url, key_prefix=prefix, **options)
        assert isinstance(store, RedisStore)
        store.check()
        opened.append(store)
        return store

    yield open_store
    opened[0].drop()
    for store in opened:
        store.close()


@pytest.fixture
def store(open_replicated: t.Callable[..., RedisStore]) -> RedisStore:
    return open_replicated()


def _replicas_of_store(topology: Topology, store: RedisStore) -> list[t.Any]:
    if isinstance(topology, SentinelTopology):
        return topology.replica_servers()
    return topology.replicas_of(store.key_prefix)


def test_the_url_reaches_the_topology_through_redis_py(
    topology: Topology, store: RedisStore
) -> None:
    store.start_session(make_session("seen"), 5, NOW)
    # What the store wrote is on the primary that the topology itself names.
    if isinstance(topology, SentinelTopology):
        primary = topology.server_at(topology.primary_address()).client(decode_responses=True)
    else:
        primary = topology.node_at(topology.master_of(store.key_prefix)).client(
            decode_responses=True
        )
    try:
        assert primary.zscore(store.key_prefix + "seats", "seen") is not None
    finally:
        primary.close()


@pytest.mark.parametrize("backend_id", ["redis+sentinel", "redis+cluster"])
def test_the_store_suite_runs_on_the_topology_with_acknowledged_writes(
    backend_id: str, tmp_path: Path
) -> None:
    # What tests/stores gets for these backend ids: the session's topology, and writes
    # that a replica holds by the time the store answers.
    url, options = backend_url_and_options(backend_id, tmp_path)
    topology = replicated_backends.topology(backend_id)
    assert url == topology.url and options["replicas"] == 1
    with open_backend_store(url, options) as store:
        assert isinstance(store, RedisStore)
        assert store.start_session(make_session("held"), 5, NOW).started
        replicas = _replicas_of_store(topology, store)
        assert replicas
        for replica in replicas:
            client = replica.client(decode_responses=True)
            try:
                # A replica may serve reads of its own keys (READONLY on a cluster node).
                if isinstance(topology, ClusterTopology):
                    client.execute_command("READONLY")
                assert client.zscore(store.key_prefix + "seats", "held") is not None
            finally:
                client.close()


def test_an_acknowledged_write_loads_its_script_where_the_primary_lost_it(
    topology: Topology, open_replicated: t.Callable[..., RedisStore]
) -> None:
    # Acknowledged writes send EVALSHA and WAIT in one pipeline, without asking SCRIPT
    # EXISTS first; a primary without the script (restarted, or promoted) runs nothing
    # and answers NOSCRIPT: the store loads it and sends both again, once.
    store = open_replicated(replicas=1)
    assert store.start_session(make_session("before"), 5, NOW).started
    if isinstance(topology, SentinelTopology):
        primary = topology.server_at(topology.primary_address()).client()
    else:
        primary = topology.node_at(topology.master_of(store.key_prefix)).client()
    try:
        primary.script_flush()
    finally:
        primary.close()
    assert store.start_session(make_session("after"), 5, NOW).started
    assert store.seats_in_use(NOW) == 2
    assert store.end_session("before", NOW) is not None
    assert store.seats_in_use(NOW) == 1


def test_acknowledged_writes_succeed_while_a_replica_is_up(
    open_replicated: t.Callable[..., RedisStore],
) -> None:
    store = open_replicated(replicas=1)
    assert store.start_session(make_session("a", refresh_hash="h1"), 2, NOW).started
    rotated = store.rotate_refresh("a", "h1", "h2", NOW + 100, NOW)
    assert rotated is not None and rotated.refresh_hash == "h2"
    store.revoke("jti-1", NOW + 60, NOW)
    assert "jti-1" in store.revocations_since(0, NOW)[0]
    assert store.end_session("a", NOW) is not None
    assert store.seats_in_use(NOW) == 0


def test_unacknowledged_writes_fail_fast_and_hold_nothing(
    topology: Topology, open_replicated: t.Callable[..., RedisStore]
) -> None:
    store = open_replicated(replicas=1, replicas_timeout=300)
    assert store.start_session(make_session("kept", refresh_hash="k1"), 5, NOW).started
    replicas = _replicas_of_store(topology, store)
    assert replicas
    with contextlib.ExitStack() as stack:
        for replica in replicas:
            stack.enter_context(replica.paused())
        started = time.monotonic()
        with pytest.raises(StoreError, match="0 of 1 replicas"):
            store.start_session(make_session("lost", refresh_hash="l1"), 5, NOW)
        with pytest.raises(StoreError, match="0 of 1 replicas"):
            store.rotate_refresh("kept", "k1", "k2", NOW + 100, NOW)
        elapsed = time.monotonic() - started
        # The failed start took its seat back and the failed rotation its new hash.
        assert store.seats_in_use(NOW) == 1
        assert store.get_session("lost", NOW) is None
        found = store.find_refresh("k1", NOW)
        assert found is not None and found[1] is True
        assert store.find_refresh("k2", NOW) is None
    # Each write waited its replicas_timeout, not a socket timeout or longer.
    assert elapsed < 2.5
    topology.wait_for_replication()
    # With the replicas back, the client's retry with the token it holds is a refresh.
    assert store.rotate_refresh("kept", "k1", "k2", NOW + 100, NOW) is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names the service"),
        ("redis+sentinel://127.0.0.1:26379/svc/x", "is a number"),
        ("redis+sentinel://127.0.0.1:26379/svc?db=1", "no query string"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
        ("redis+cluster://127.0.0.1:notaport", "bad host"),
    ],
)
def test_bad_replicated_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        store_from_url(url)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": -1}, "replicas must be an integer"),
        ({"replicas": "1"}, "replicas must be an integer"),
        ({"replicas": 1, "replicas_timeout": 0}, "replicas_timeout must be an integer"),
        ({"replicas": 1, "replicas_timeout": 5000}, "shorter than socket_timeout"),
        ({"failover_timeout": -1}, "failover_timeout"),
    ],
)
def test_bad_replica_options_are_configuration_errors(
    options: dict[str, t.Any], message: str
) -> None:
    # Refused before any connection: no Sentinel needs to answer.
    with pytest.raises(ConfigurationError, match=message):
        store_from_url("redis+sentinel://127.0.0.1:1/tokenguard", **options)


def test_failover_under_load_keeps_seats_sessions_and_logoffs(
    sentinel_topology: SentinelTopology, sample_server: t.Callable[..., SampleServer]
) -> None:
    topology = sentinel_topology
    prefix = f"tg:{{{uuid.uuid4().hex[:12]}}}:"
    options = {"replicas": 1, "key_prefix": prefix}
    env = {
        "LICENSES": "5",
        "STORE_OPTIONS": json.dumps(options),
        "ISSUER": "https://tokens.example.test",
    }
    servers = [sample_server(topology.url, **env) for _ in range(3)]
    creds = flask_cli(topology.url, "create-client", "load", **env)
    auth = (creds["client_id"], creds["client_secret"])
    watcher = store_from_url(topology.url, key_prefix=prefix, socket_timeout=1)
    seats_seen: list[int] = []
    load = Load(servers, auth)

    def watch_seats() -> None:
        while not load.stop.wait(0.1):
            with contextlib.suppress(StoreError):
                seats_seen.append(watcher.seats_in_use(time.time()))

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=9)
    try:
        futures = [pool.submit(load.worker, n) for n in range(8)]
        futures.append(pool.submit(watch_seats))
        time.sleep(2.5)
        assert load.successes_after(0), load.bad
        killed_at = time.monotonic()
        topology.kill_primary()
        topology.wait_for_new_primary(timeout=30)
        assert topology.failover_seconds is not None
        promoted_at = killed_at + topology.failover_seconds
        # Keep the load on until requests succeed again (or 10 s have passed), and a bit more.
        deadline = promoted_at + 10
        while not load.successes_after(promoted_at) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        load.stop.set()
        pool.shutdown(wait=True)
    for future in futures:
        future.result()

    try:
        first_200 = load.check_after_failover(promoted_at, seats_seen, 5, watcher)
        statuses = {status for _, _, _, status in load.answers}
        print(
            f"\nfailover: promoted {topology.failover_seconds:.2f} s after the kill, first 200 "
            f"{first_200:.2f} s after; {len(load.answers)} answers {sorted(statuses)}, "
            f"{len(load.held)} held, {len(load.logged_off)} logged off"
        )
    finally:
        watcher.drop()
        watcher.close()
        topology.restart_killed()


def test_cluster_failover_keeps_acknowledged_sessions_without_a_restart(
    cluster_topology: ClusterTopology,
) -> None:
    topology = cluster_topology
    prefix = f"tg:{{{uuid.uuid4().hex[:12]}}}:"
    store = store_from_url(topology.url, key_prefix=prefix, replicas=1, failover_timeout=2.0)
    assert isinstance(store, RedisStore)
    try:
        _cluster_failover(topology, store)
    finally:
        topology.restart_killed()
        store.drop()
        store.close()


def _cluster_failover(topology: ClusterTopology, store: RedisStore) -> None:
    for i in range(3):
        assert store.start_session(make_session(f"s{i}", refresh_hash=f"h{i}"), 5, NOW).started
    assert store.rotate_refresh("s0", "h0", "h0b", NOW + 100, NOW) is not None

    topology.kill_master_of(store.key_prefix)
    # While the slot has no master, and then while its new master has no replica, a start
    # fails with StoreError (never another error) and takes nothing.
    with pytest.raises(StoreError):
        store.start_session(make_session("during", refresh_hash="d"), 5, NOW)
    topology.wait_for_promotion(timeout=30)

    def acknowledged_sessions_are_there() -> bool:
        with contextlib.suppress(StoreError):
            found = store.find_refresh("h0b", NOW)
            return (
                found is not None
                and found[1]
                and all(store.get_session(f"s{i}", NOW) for i in range(3))
            )
        return False

    # The same store object finds the promoted master through the slot map.
    until(acknowledged_sessions_are_there, 10, "the acknowledged sessions on the new master")
    with pytest.raises(StoreError, match="0 of 1 replicas"):
        store.start_session(make_session("alone", refresh_hash="a"), 5, NOW)
    assert store.get_session("alone", NOW) is None
    assert store.seats_in_use(NOW) == 3

    # Once the killed node is back as the new master's replica, writes are answered again.
    topology.restart_killed()
    assert topology.node_at(topology.master_of(store.key_prefix)).alive

    def starts() -> bool:
        with contextlib.suppress(StoreError):
            return store.start_session(make_session("after", refresh_hash="x"), 5, NOW).started
        return False

    until(starts, 10, "a start acknowledged after the old master rejoined")
    assert store.seats_in_use(NOW) == 4
