"""The replicated topologies themselves: a write survives SIGKILL of the primary.

Each test writes through the driver's own discovery (redis-py's ``Sentinel`` and
``RedisCluster``, a libpq multi-host URL with psycopg), kills the primary, waits for a replica to
take over and reads the write back the same way. Run them alone with ``-m replication``.
"""

from __future__ import annotations

import subprocess
import time
import typing as t
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from tests import replication
from tests.replication import ClusterTopology
from tests.replication import postgres_replicated
from tests.replication import PostgresTopology
from tests.replication import redis_cluster
from tests.replication import redis_sentinel
from tests.replication import SentinelTopology
from tests.replication import TRANSIENT

pytestmark = [pytest.mark.replication, pytest.mark.slow]


@pytest.fixture(scope="module")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[SentinelTopology]:
    started = time.monotonic()
    with redis_sentinel(tmp_path_factory.mktemp("sentinel")) as topology:
        print(f"\nsentinel topology up in {time.monotonic() - started:.1f} s")
        yield topology


@pytest.fixture(scope="module")
def cluster_topology(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ClusterTopology]:
    started = time.monotonic()
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as topology:
        print(f"\nredis cluster up in {time.monotonic() - started:.1f} s")
        yield topology


@pytest.fixture(scope="module")
def postgres_topology(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[PostgresTopology]:
    started = time.monotonic()
    with postgres_replicated(tmp_path_factory.mktemp("postgres")) as topology:
        print(f"\npostgres primary and two standbys up in {time.monotonic() - started:.1f} s")
        yield topology


def _retry(operation: t.Callable[[], t.Any], timeout: float = 15) -> t.Any:
    """Call ``operation`` until it stops raising (a client finding the new primary)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return operation()
        except (*TRANSIENT, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _role(client: redis.Redis) -> str:
    try:
        return str(client.info("replication")["role"])
    finally:
        client.close()


def test_sentinel_write_survives_primary_kill(sentinel_topology: SentinelTopology) -> None:
    topology = sentinel_topology
    sentinel: t.Any = topology.sentinel()  # redis-py's Sentinel carries no annotations
    primary = sentinel.master_for(topology.service, socket_timeout=1)
    key, value = f"seat:{uuid.uuid4().hex}", uuid.uuid4().hex
    # The write and the WAIT go down one connection, so the WAIT counts this write.
    pipe = primary.pipeline(transaction=False)
    pipe.set(key, value)
    pipe.wait(2, 2000)
    assert pipe.execute() == [True, 2]

    old = topology.kill_primary()
    killed = time.monotonic()
    # The client that was talking to the old primary finds the new one through the Sentinels.
    assert _retry(lambda: primary.get(key), timeout=20) == value.encode()
    read_back = time.monotonic() - killed
    new = topology.wait_for_new_primary(timeout=20)
    print(
        f"\nsentinel failover {old[1]} -> {new[1]}: promoted {topology.failover_seconds:.2f} s"
        f" after the kill, the client read the write back after {read_back:.2f} s"
    )

    assert new != old
    assert sentinel.discover_master(topology.service) == new
    # The new primary accepts writes and has its remaining replica acknowledging them.
    pipe = primary.pipeline(transaction=False)
    pipe.set(key + ":after", "1")
    pipe.wait(1, 2000)
    assert pipe.execute() == [True, 1]
    fresh = sentinel.master_for(topology.service)
    assert fresh.get(key) == value.encode()
    assert fresh.get(key + ":after") == b"1"

    for client in (primary, fresh, *sentinel.sentinels):
        client.close()


def test_cluster_write_survives_master_kill(cluster_topology: ClusterTopology) -> None:
    topology = cluster_topology
    client = topology.client()
    key, value = f"seat:{uuid.uuid4().hex}", uuid.uuid4().hex
    assert client.set(key, value) is True
    topology.wait_for_replication()

    old = topology.kill_master_of(key)
    killed = time.monotonic()
    # The client that knew the old slot map finds the promoted replica itself.
    assert _retry(lambda: client.get(key), timeout=20) == value.encode()
    read_back = time.monotonic() - killed
    new = topology.wait_for_promotion(timeout=20)
    print(
        f"\ncluster failover {old[1]} -> {new[1]}: promoted {topology.failover_seconds:.2f} s"
        f" after the kill, the client read the write back after {read_back:.2f} s"
    )

    assert topology.master_of(key) == new
    assert client.set(key + ":after", "1") is True
    fresh = topology.client()
    assert fresh.get(key) == value.encode()
    assert fresh.get(key + ":after") == b"1"

    # The killed master comes back as the replica of the node that took its slots.
    started = time.monotonic()
    topology.restart_killed()
    print(f"old master back as a replica after {time.monotonic() - started:.2f} s")
    assert _role(topology.node_at(old).client()) == "slave"
    assert topology.master_of(key) == new
    assert fresh.get(key) == value.encode()
    fresh.close()
    client.close()


def test_postgres_commit_survives_primary_kill(postgres_topology: PostgresTopology) -> None:
    topology = postgres_topology
    table = sql.Identifier(f"seats_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(topology.url, autocommit=True) as conn:
        assert conn.info.port == topology.nodes[0].port
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        standbys = conn.execute(
            "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1"
        ).fetchall()
        assert standbys == [("s1", "quorum"), ("s2", "quorum")]
        conn.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY)").format(table))
        # synchronous_commit = on with ANY 1 (s1, s2): the commit returns once a standby has it.
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('before')").format(table))

    old = topology.kill_primary()
    new = topology.failover(timeout=20)
    print(
        f"\npostgres failover {old.application_name} -> {new.application_name}"
        f" promoted {topology.failover_seconds:.2f} s after the kill,"
        f" the other standby acknowledging again after {topology.resync_seconds:.2f} s"
    )

    def reconnect() -> psycopg.Connection[t.Any]:
        return psycopg.connect(topology.url, autocommit=True)

    with _retry(reconnect) as conn:
        assert conn.info.port == new.port
        assert conn.execute(sql.SQL("SELECT id FROM {}").format(table)).fetchall() == [("before",)]
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('after')").format(table))
    others = [node for node in topology.standbys if node is not new]
    assert len(others) == 1

    # The remaining standby follows the new primary: it sees the write made after the switch.
    def replayed() -> list[tuple[t.Any, ...]]:
        rows = others[0].query(sql.SQL("SELECT id FROM {} ORDER BY id").format(table))
        assert rows == [("after",), ("before",)]
        return rows

    _retry(replayed, timeout=10)


def _postmaster_running(data: Path) -> bool:
    """Whether any process runs with ``data`` on its command line (a postmaster's ``-D``)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(data).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


class _SimulatedFailureError(Exception):
    pass


def test_postgres_clusters_are_dropped_even_when_the_test_fails(tmp_path: Path) -> None:
    with pytest.raises(_SimulatedFailureError), postgres_replicated(tmp_path) as topology:
        names = [node.cluster for node in topology.nodes]
        data = [node.data for node in topology.nodes]
        assert all(Path("/etc/postgresql/15", name).is_dir() for name in names)
        topology.kill_primary()
        raise _SimulatedFailureError
    assert not any(Path("/etc/postgresql/15", name).exists() for name in names)
    assert not any(path.exists() for path in data)
    assert not topology.base.exists()
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    assert not any(name in listed.stdout for name in names)
    assert not any(_postmaster_running(path) for path in data)
    # The servers' logs are kept with the test's files.
    assert (tmp_path / "primary.log").exists()


@pytest.mark.parametrize("start", [redis_sentinel, redis_cluster, postgres_replicated])
def test_missing_binary_skips_outside_ci_and_fails_under_ci(
    start: t.Callable[[Path], t.ContextManager[t.Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replication, "has_binary", lambda _binary: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found on PATH"), start(tmp_path):
        pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not found on PATH"), start(tmp_path):
        pass
