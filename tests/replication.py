"""Replicated store topologies that a test run starts itself, on private ports.

Three context managers, each usable from a fixture of any scope:

- ``redis_sentinel(directory)`` yields a :class:`SentinelTopology`: one Redis primary, two
  replicas and three Sentinels (quorum 2), which fail over within a few seconds.
- ``redis_cluster(directory)`` yields a :class:`ClusterTopology`: a Redis Cluster of three
  masters, each with one replica.
- ``postgres_replicated(directory)`` yields a :class:`PostgresTopology`: a PostgreSQL 15 primary
  and two streaming standbys (``synchronous_standby_names = 'ANY 1 (s1, s2)'``), made with
  ``pg_createcluster`` and ``pg_basebackup -R``.

Each one kills, stops and removes everything it started when the ``with`` block ends, however
it ends. A missing binary skips the test with the reason (fails it under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import psycopg.sql
import redis
import redis.cluster
import redis.exceptions
import redis.sentinel

from tests.helpers import unavailable

Address = tuple[str, int]
HOST = "127.0.0.1"


class TopologyError(RuntimeError):
    """A topology did not reach the state a test waited for in time."""


#: What a node that is starting, failing over or gone raises while a harness polls it.
TRANSIENT = (OSError, LookupError, ValueError, redis.exceptions.RedisError, psycopg.Error)


def _command(client: redis.Redis, *args: t.Any) -> t.Any:
    """``client.execute_command(*args)`` (which redis-py leaves unannotated)."""
    untyped: t.Any = client
    return untyped.execute_command(*args)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus_offset: int = 0) -> list[int]:
    """``count`` distinct free ports below the ephemeral range (with ``port + bus_offset`` free).

    Redis Cluster also listens on ``port + 10000`` (its bus), hence ``bus_offset``.
    """
    ports: list[int] = []
    while len(ports) < count:
        # Below the ephemeral range (32768 on), where the kernel hands out free_port()'s ports.
        port = random.randint(20000, 32767 - bus_offset if bus_offset else 29999)
        if port in ports or (port + bus_offset) in ports or (port - bus_offset) in ports:
            continue
        if _port_is_free(port) and (not bus_offset or _port_is_free(port + bus_offset)):
            ports.append(port)
    return ports


def has_binary(binary: str) -> bool:
    """Whether ``binary`` (a name on PATH or an absolute path) can be run."""
    return shutil.which(binary) is not None


def _require(*binaries: str) -> None:
    for binary in binaries:
        if not has_binary(binary):
            unavailable(f"{binary} not found on PATH (needed for the replicated store tests)")


def _wait(
    condition: t.Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``condition`` until it is true; return the seconds it took, or raise TopologyError."""
    start = time.monotonic()
    deadline = start + timeout
    last: BaseException | None = None
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except TRANSIENT as exc:  # a node that is still starting or already gone
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            raise TopologyError(f"timed out after {timeout:.1f} s waiting for {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- Redis


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the thread that started it ends (a killed test run).

    Linux only; elsewhere a killed test run leaves its servers to be ended by hand.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class RedisProcess:
    """One ``redis-server`` (or Sentinel) process in its own folder."""

    def __init__(self, directory: Path, port: int, name: str) -> None:
        self.directory = directory
        self.port = port
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.args: tuple[str, ...] = ()
        directory.mkdir(parents=True, exist_ok=True)

    def restart(self, *extra: str) -> None:
        """Start a killed process again with the command line it had (plus ``extra``)."""
        self.kill()
        args = self.args
        self.start(*args, *extra)
        self.args = args
        self.wait_ready()

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *args: str) -> None:
        """Run ``args`` (a whole command line); ``wait_ready()`` waits until it answers."""
        self.args = args
        self.process = subprocess.Popen(
            args,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, timeout: float = 10) -> None:
        client = self.client()
        try:

            def answers() -> bool:
                if not self.alive:
                    raise TopologyError(f"{self.name} exited: {self.log_tail()}")
                return bool(client.ping())

            _wait(answers, timeout, f"{self.name} on port {self.port} to answer")
        finally:
            client.close()

    def client(self, **kwargs: t.Any) -> redis.Redis:
        options: dict[str, t.Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 2}
        options.update(kwargs)
        return redis.Redis(host=HOST, port=self.port, **options)

    def log_tail(self) -> str:
        return self.log_path.read_text()[-2000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the process, as a crashed machine would go away."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    @contextlib.contextmanager
    def paused(self) -> t.Iterator[None]:
        """SIGSTOP the process for the ``with`` block (a hung host): it answers nothing, and
        its peers see no closed connection; SIGCONT after, however the block ends."""
        if not self.alive or self.process is None:
            raise TopologyError(f"{self.name} is not running")
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            if self.alive:
                self.process.send_signal(signal.SIGCONT)


def _redis_server_args(node: RedisProcess, *extra: str) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(node.port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(node.directory),
        "--logfile",
        str(node.log_path),
        # A replica's full sync starts at once, not after waiting 5 s for more replicas.
        "--repl-diskless-sync-delay",
        "0",
        *extra,
    ]


def _caught_up(node: RedisProcess, replicas: int) -> t.Callable[[], bool]:
    """A condition for ``_wait``: ``node`` is a master whose ``replicas`` online replicas
    acknowledged every write it held when first polled.

    Not its newest offset: under a steady write load the replicas (which acknowledge once
    a second) always trail that one a little, and the wait would never end.
    """
    target: list[int] = []

    def condition() -> bool:
        client = node.client()
        try:
            return _replication_caught_up(client, replicas, target)
        finally:
            client.close()

    return condition


def _replication_caught_up(
    primary: redis.Redis, replicas: int, target: list[int] | None = None
) -> bool:
    """Whether ``primary`` has at least ``replicas`` online replicas at its offset (the one
    in ``target``, which the first call fills in, when given)."""
    info = primary.info("replication")
    if info.get("role") != "master":
        return False
    offset = int(info["master_repl_offset"])
    if target is not None:
        if not target:
            target.append(offset)
        offset = target[0]
    caught_up = 0
    for key, value in info.items():
        if re.fullmatch(r"slave\d+", key) and isinstance(value, dict):
            if value.get("state") == "online" and int(value.get("offset", -1)) >= offset:
                caught_up += 1
    return caught_up >= replicas


class SentinelTopology:
    """A Redis primary with two replicas, watched by three Sentinels (quorum 2).

    ``sentinels`` are the Sentinel addresses, ``service`` the monitored name; ``url`` is the
    ``redis+sentinel://`` form of both; ``sentinel()`` is redis-py's own client for them.
    """

    def __init__(self, directory: Path, service: str = "tokenguard") -> None:
        self.directory = directory
        self.service = service
        ports = free_ports(6)
        self.servers = [
            RedisProcess(directory / f"redis-{i}", port, f"redis {i}")
            for i, port in enumerate(ports[:3])
        ]
        self.sentinel_processes = [
            RedisProcess(directory / f"sentinel-{i}", port, f"sentinel {i}")
            for i, port in enumerate(ports[3:])
        ]
        self.failover_seconds: float | None = None
        self._killed_at: float | None = None
        self._old_primary: Address | None = None

    @property
    def sentinels(self) -> list[Address]:
        return [s.address for s in self.sentinel_processes]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def sentinel(self, **connection_kwargs: t.Any) -> redis.sentinel.Sentinel:
        """redis-py's ``Sentinel`` for these Sentinels (short timeouts, for failover tests)."""
        options: dict[str, t.Any] = {"socket_timeout": 1, "socket_connect_timeout": 0.5}
        options.update(connection_kwargs)
        factory: t.Any = redis.sentinel.Sentinel  # redis-py's Sentinel carries no annotations
        return t.cast(
            "redis.sentinel.Sentinel", factory(self.sentinels, sentinel_kwargs=options, **options)
        )

    def start(self) -> None:
        primary, *replicas = self.servers
        primary.start(*_redis_server_args(primary))
        for replica in replicas:
            replica.start(*_redis_server_args(replica, "--replicaof", HOST, str(primary.port)))
        for server in self.servers:
            server.wait_ready()
        for sentinel in self.sentinel_processes:
            conf = sentinel.directory / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {sentinel.port}",
                        f"bind {HOST}",
                        f"dir {sentinel.directory}",
                        f"logfile {sentinel.log_path}",
                        f"sentinel monitor {self.service} {HOST} {primary.port} 2",
                        f"sentinel down-after-milliseconds {self.service} 1000",
                        f"sentinel failover-timeout {self.service} 6000",
                        f"sentinel parallel-syncs {self.service} 2",
                        "",
                    ]
                )
            )
            sentinel.start("redis-server", str(conf), "--sentinel")
        for sentinel in self.sentinel_processes:
            sentinel.wait_ready()
        _wait(
            _caught_up(primary, 2),
            15,
            "both replicas to be in sync with the primary",
        )
        # A failover needs every Sentinel to know the others and the replicas (hello messages
        # go out every 2 s on the primary).
        _wait(self._sentinels_see_everything, 15, "the Sentinels to discover each other", 0.2)

    def _sentinels_see_everything(self) -> bool:
        for sentinel in self.sentinel_processes:
            client = sentinel.client()
            try:
                state = t.cast("dict[str, t.Any]", client.sentinel_master(self.service))
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 2:
                    return False
            finally:
                client.close()
        return True

    def primary_address(self) -> Address:
        """The primary's address as the Sentinels report it now."""
        sentinel: t.Any = self.sentinel()
        try:
            host, port = sentinel.discover_master(self.service)
        finally:
            for client in sentinel.sentinels:
                client.close()
        return (str(host), int(port))

    def replica_servers(self) -> list[RedisProcess]:
        """The live servers other than the current primary."""
        primary = self.primary_address()
        return [s for s in self.servers if s.alive and s.address != primary]

    def server_at(self, address: Address) -> RedisProcess:
        for server in self.servers:
            if server.address == tuple(address):
                return server
        raise KeyError(address)

    def kill_primary(self) -> Address:
        """SIGKILL the current primary; return its address."""
        address = self.primary_address()
        self._old_primary = address
        self._killed_at = time.monotonic()
        self.server_at(address).kill()
        return address

    def wait_for_new_primary(self, timeout: float = 20) -> Address:
        """Wait until the Sentinels name a live new primary; return its address.

        Also waits until the remaining replica replicates from it, so that ``WAIT 1`` on the new
        primary can succeed. ``failover_seconds`` is set to the time since ``kill_primary()``.
        """
        if self._old_primary is None:
            raise TopologyError("kill_primary() was not called")
        old = self._old_primary
        found: list[Address] = []

        def promoted() -> bool:
            for sentinel in self.sentinel_processes:
                if not sentinel.alive:
                    continue
                client = sentinel.client()
                try:
                    reply = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                finally:
                    client.close()
                if not reply:
                    continue
                address = (
                    reply[0] if isinstance(reply[0], str) else reply[0].decode(),
                    int(reply[1]),
                )
                if address == old:
                    return False
                node = self.server_at(address).client()
                try:
                    if node.info("replication").get("role") != "master":
                        return False
                finally:
                    node.close()
                found[:] = [address]
                return True
            return False

        _wait(promoted, timeout, "the Sentinels to promote a replica", 0.1)
        if self._killed_at is not None:
            self.failover_seconds = time.monotonic() - self._killed_at
        new_primary = self.server_at(found[0])
        remaining = max(0, sum(1 for s in self.servers if s.alive) - 1)
        _wait(
            _caught_up(new_primary, remaining),
            timeout,
            f"{remaining} replica(s) to follow the new primary",
            0.1,
        )
        return found[0]

    def wait_for_replication(self, timeout: float = 10) -> None:
        """Wait until every live replica has everything the current primary has."""
        primary = self.server_at(self.primary_address())
        remaining = sum(1 for s in self.servers if s.alive) - 1
        _wait(
            _caught_up(primary, remaining),
            timeout,
            "the replicas to catch up",
        )

    def restart_killed(self, timeout: float = 20) -> None:
        """Start killed servers again as replicas of the current primary (as an operator would;
        the Sentinels would convert a returning old primary only after some 10 to 20 s).

        Returns once the primary has two replicas in sync again.
        """
        primary = self.server_at(self.primary_address())
        for server in self.servers:
            if not server.alive:
                server.restart("--replicaof", HOST, str(primary.port))
        _wait(
            _caught_up(primary, len(self.servers) - 1),
            timeout,
            "the restarted server to replicate from the new primary",
            0.1,
        )

    def close(self) -> None:
        for process in [*self.sentinel_processes, *self.servers]:
            process.kill()


class ClusterTopology:
    """A Redis Cluster of three masters, each with one replica (``--cluster-replicas 1``).

    ``startup_nodes`` are all six addresses; ``url`` is the ``redis+cluster://`` form;
    ``client()`` is redis-py's own ``RedisCluster`` for them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes = [
            RedisProcess(directory / f"node-{i}", port, f"cluster node {i}")
            for i, port in enumerate(free_ports(6, bus_offset=10000))
        ]
        self.failover_seconds: float | None = None
        self._killed: tuple[RedisProcess, RedisProcess, float] | None = None

    @property
    def startup_nodes(self) -> list[Address]:
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes)

    def client(self, **kwargs: t.Any) -> redis.cluster.RedisCluster:
        options: dict[str, t.Any] = {"socket_timeout": 1, "socket_connect_timeout": 0.5}
        options.update(kwargs)
        node_factory: t.Any = redis.cluster.ClusterNode  # carries no annotations
        nodes = [node_factory(h, p) for h, p in self.startup_nodes]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **options)

    def start(self) -> None:
        for node in self.nodes:
            node.start(
                *_redis_server_args(
                    node,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node.directory / "nodes.conf"),
                    "--cluster-node-timeout",
                    "1000",
                )
            )
        for node in self.nodes:
            node.wait_ready()
        result = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{h}:{p}" for h, p in self.startup_nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise TopologyError(f"redis-cli --cluster create failed: {result.stdout[-2000:]}")
        _wait(self._healthy, 20, "the cluster to be ok with three masters and three replicas", 0.1)

    def _healthy(self) -> bool:
        masters = replicas = 0
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
                role = _command(client, "ROLE")[0]
                role = role.decode() if isinstance(role, bytes) else role
                if role == "master":
                    masters += 1
                else:
                    info = client.info("replication")
                    if info.get("master_link_status") != "up":
                        return False
                    replicas += 1
            finally:
                client.close()
        return masters == 3 and replicas == sum(1 for n in self.nodes if n.alive) - 3

    def node_at(self, address: Address) -> RedisProcess:
        for node in self.nodes:
            if node.address == tuple(address):
                return node
        raise KeyError(address)

    def _slot_owner(self, slot: int, via: RedisProcess) -> tuple[Address, list[Address]]:
        client = via.client()
        try:
            for start, end, master, *replicas in _command(client, "CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return (
                        (HOST, int(master[1])),
                        [(HOST, int(replica[1])) for replica in replicas],
                    )
        finally:
            client.close()
        raise TopologyError(f"no node serves slot {slot}")

    def replicas_of(self, key: str) -> list[RedisProcess]:
        """The live replicas of the master serving ``key``'s slot now (once they show)."""
        via = next(node for node in self.nodes if node.alive)
        client = via.client()
        try:
            slot = int(_command(client, "CLUSTER KEYSLOT", key))
        finally:
            client.close()
        _wait(
            lambda: bool(self._slot_owner(slot, via)[1]),
            10,
            f"the master of {key!r} to show its replica",
            0.1,
        )
        return [self.node_at(a) for a in self._slot_owner(slot, via)[1] if self.node_at(a).alive]

    def master_of(self, key: str) -> Address:
        """The address of the master serving ``key``'s slot now."""
        via = next(node for node in self.nodes if node.alive)
        client = via.client()
        try:
            slot = int(_command(client, "CLUSTER KEYSLOT", key))
        finally:
            client.close()
        return self._slot_owner(slot, via)[0]

    def kill_master_of(self, key: str) -> Address:
        """SIGKILL the master serving ``key``; return its address."""
        via = next(node for node in self.nodes if node.alive)
        client = via.client()
        try:
            slot = int(_command(client, "CLUSTER KEYSLOT", key))
        finally:
            client.close()
        # A node's view of who replicates whom settles a moment after the cluster says ok.
        _wait(
            lambda: bool(self._slot_owner(slot, via)[1]),
            10,
            f"the master of {key!r} to show its replica",
            0.1,
        )
        master, replicas = self._slot_owner(slot, via)
        if not replicas:
            raise TopologyError(f"the master of {key!r} has no replica")
        victim = self.node_at(master)
        killed_at = time.monotonic()
        victim.kill()
        self._killed = (victim, self.node_at(replicas[0]), killed_at)
        return master

    def wait_for_promotion(self, timeout: float = 20) -> Address:
        """Wait until the killed master's replica is a master and the cluster is ok again.

        Returns the promoted node's address; ``failover_seconds`` is the time since the kill.
        """
        if self._killed is None:
            raise TopologyError("kill_master_of() was not called")
        _victim, replica, killed_at = self._killed

        def promoted() -> bool:
            client = replica.client()
            try:
                role = _command(client, "ROLE")[0]
            finally:
                client.close()
            if (role.decode() if isinstance(role, bytes) else role) != "master":
                return False
            for node in self.nodes:
                if node.alive:
                    other = node.client()
                    try:
                        if other.cluster("info")["cluster_state"] != "ok":
                            return False
                    finally:
                        other.close()
            return True

        _wait(promoted, timeout, "the replica of the killed master to be promoted", 0.1)
        self.failover_seconds = time.monotonic() - killed_at
        return replica.address

    def wait_for_replication(self, timeout: float = 10) -> None:
        """Wait until every live replica has everything its master has."""

        def caught_up() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                client = node.client()
                try:
                    info = client.info("replication")
                    if info.get("role") != "master":
                        continue
                    live = int(info.get("connected_slaves", 0))
                    if not _replication_caught_up(client, live):
                        return False
                finally:
                    client.close()
            return True

        _wait(caught_up, timeout, "the cluster replicas to catch up")

    def restart_killed(self, timeout: float = 20) -> None:
        """Start killed nodes again; each rejoins as a replica. Returns once the cluster is ok
        with three masters and three replicas."""
        for node in self.nodes:
            if not node.alive:
                node.restart()
        self._killed = None
        _wait(self._healthy, timeout, "the restarted node to rejoin as a replica", 0.1)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@contextlib.contextmanager
def redis_sentinel(directory: Path, service: str = "tokenguard") -> t.Iterator[SentinelTopology]:
    """Start a Sentinel-watched primary with two replicas under ``directory``; stop it after."""
    _require("redis-server")
    topology = SentinelTopology(directory, service)
    try:
        topology.start()
        yield topology
    finally:
        topology.close()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> t.Iterator[ClusterTopology]:
    """Start a three-master Redis Cluster with one replica each under ``directory``."""
    _require("redis-server", "redis-cli")
    topology = ClusterTopology(directory)
    try:
        topology.start()
        yield topology
    finally:
        topology.close()
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- PostgreSQL

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
PG_CONF = Path(f"/etc/postgresql/{PG_VERSION}")
#: Names of the clusters this harness creates: ``tgrepl_<pid>_<random>_<node>``.
CLUSTER_PREFIX = "tgrepl_"
STANDBY_NAMES = ("s1", "s2")

PG_HBA = """\
# Written by the replicated store tests: trust on loopback only.
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
"""


def _pg_settings(port: int) -> str:
    standbys = ", ".join(STANDBY_NAMES)
    return "\n".join(
        [
            "# Written by the replicated store tests.",
            f"port = {port}",
            f"listen_addresses = '{HOST}'",
            "ssl = off",
            # Three sample app processes (two pools each) and the test's own connections.
            "max_connections = 60",
            "shared_buffers = 16MB",
            "fsync = off",  # safe against a killed process; only a crashed OS loses data
            "wal_level = replica",
            "max_wal_senders = 10",
            "wal_keep_size = 64MB",
            "hot_standby = on",
            "wal_receiver_status_interval = 1s",
            "wal_retrieve_retry_interval = 500ms",
            f"synchronous_standby_names = 'ANY 1 ({standbys})'",
            "synchronous_commit = on",
            "",
        ]
    )


def _run(args: list[str], *, user: str | None = None, timeout: float = 60) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, user=user, cwd="/"
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout)[-2000:]
        raise TopologyError(f"{' '.join(args)} exited {result.returncode}: {output}")
    return result.stdout


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def drop_cluster(name: str) -> None:
    """Stop and remove cluster ``name`` (config, data, log), however far it got."""
    data = _cluster_data_dir(name)
    stopped = subprocess.run(
        ["pg_dropcluster", "--stop", PG_VERSION, name], capture_output=True, timeout=60
    )
    if stopped.returncode != 0:
        if data is not None:
            _kill_postmaster(data)
        subprocess.run(["pg_dropcluster", PG_VERSION, name], capture_output=True, timeout=60)
    shutil.rmtree(PG_CONF / name, ignore_errors=True)
    if data is not None:
        shutil.rmtree(data, ignore_errors=True)


def _cluster_data_dir(name: str) -> Path | None:
    conf = PG_CONF / name / "postgresql.conf"
    if not conf.exists():
        return None
    match = re.search(r"^data_directory\s*=\s*'([^']+)'", conf.read_text(), re.MULTILINE)
    return Path(match.group(1)) if match else None


def _kill_postmaster(data: Path) -> bool:
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def drop_stale_clusters() -> None:
    """Drop clusters an earlier test run created and could not remove (it was killed)."""
    if not PG_CONF.is_dir():
        return
    for entry in PG_CONF.iterdir():
        match = re.fullmatch(rf"{CLUSTER_PREFIX}(\d+)_\w+", entry.name)
        if match and not _pid_alive(int(match.group(1))):
            drop_cluster(entry.name)


class PostgresNode:
    """One PostgreSQL cluster of the topology: ``cluster`` (its pg_createcluster name),
    ``application_name`` (``primary``, ``s1``, ``s2``) and ``port``."""

    def __init__(self, cluster: str, application_name: str, port: int, data: Path) -> None:
        self.cluster = cluster
        self.application_name = application_name
        self.port = port
        self.data = data
        self.killed = False

    @property
    def address(self) -> Address:
        return (HOST, self.port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @property
    def conninfo(self) -> str:
        return f"host={HOST} port={self.port} user=postgres dbname=postgres connect_timeout=2"

    def connect(self) -> psycopg.Connection[t.Any]:
        return psycopg.connect(self.conninfo, autocommit=True)

    def query(self, query: str | psycopg.sql.Composed, *params: t.Any) -> list[tuple[t.Any, ...]]:
        with self.connect() as conn:
            return conn.execute(query, params or None).fetchall()

    def in_recovery(self) -> bool:
        return bool(self.query("SELECT pg_is_in_recovery()")[0][0])

    def pg_ctlcluster(self, action: str, *args: str) -> str:
        return _run(["pg_ctlcluster", PG_VERSION, self.cluster, action, *args])

    def start(self, log: Path) -> None:
        """Start the cluster with ``pg_ctl start -w`` as ``postgres`` (what ``pg_ctlcluster
        start`` runs, without its half-second polling); return once it accepts connections."""
        config = PG_CONF / self.cluster / "postgresql.conf"
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "30",
                "-s",
                "-D",
                str(self.data),
                "-l",
                str(log),
                "-o",
                f"-c config_file={config}",
            ],
            user="postgres",
        )

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends notice and exit on their own)."""
        _kill_postmaster(self.data)
        self.killed = True

    def processes(self) -> list[int]:
        """The postmaster's pid and its children's (walreceiver, startup, backends...)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            if int(stat.rsplit(")", 1)[-1].split()[1]) == postmaster:
                found.append(int(entry.name))
        return found

    @contextlib.contextmanager
    def paused(self) -> t.Iterator[None]:
        """SIGSTOP the whole cluster for the ``with`` block (a hung host: connections stay
        open, nothing answers); SIGCONT after, however the block ends."""
        stopped: list[int] = []
        try:
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


class PostgresTopology:
    """A PostgreSQL primary and two synchronous-quorum standbys (``ANY 1 (s1, s2)``).

    ``nodes`` are the three clusters (``nodes[0]`` starts as the primary); ``url`` is the libpq
    multi-host URL with ``target_session_attrs=read-write``, which reaches whichever node is
    primary. After ``kill_primary()``, ``promote(standby)`` and ``repoint(other, new_primary)``
    (or ``failover()``, which does both) make a standby the primary with the other following it.
    The killed primary is left down (rebuilding it with ``pg_rewind`` is out of scope).
    """

    def __init__(self) -> None:
        token = uuid.uuid4().hex[:8]
        ports = free_ports(3)
        self.base = Path(tempfile.mkdtemp(prefix="tokenguard-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        names = ("primary", *STANDBY_NAMES)
        self.nodes = [
            PostgresNode(
                f"{CLUSTER_PREFIX}{os.getpid()}_{token}_{name}",
                name,
                port,
                self.base / name,
            )
            for name, port in zip(names, ports, strict=True)
        ]
        self.created: list[str] = []
        self.failover_seconds: float | None = None
        self.resync_seconds: float | None = None
        self._killed_at: float | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        return (
            f"postgresql://postgres@{hosts}/postgres"
            "?target_session_attrs=read-write&connect_timeout=2"
        )

    @property
    def primary(self) -> PostgresNode:
        """The node that answers as a primary now."""
        for node in self.nodes:
            if not node.killed:
                with contextlib.suppress(Exception):
                    if not node.in_recovery():
                        return node
        raise TopologyError("no node answers as primary")

    @property
    def standbys(self) -> list[PostgresNode]:
        """The live nodes that are in recovery now."""
        found = []
        for node in self.nodes:
            if not node.killed:
                with contextlib.suppress(Exception):
                    if node.in_recovery():
                        found.append(node)
        return found

    def _log(self, node: PostgresNode) -> Path:
        return self.base / f"{node.application_name}.log"

    def _register(self, node: PostgresNode, *initdb_options: str) -> None:
        """``pg_createcluster`` for ``node``: initdb, or adopt the data folder already there."""
        self.created.append(node.cluster)
        args = [
            "pg_createcluster",
            PG_VERSION,
            node.cluster,
            "-p",
            str(node.port),
            "-d",
            str(node.data),
            "-l",
            str(self._log(node)),
        ]
        _run([*args, "--", *initdb_options] if initdb_options else args)
        conf = PG_CONF / node.cluster
        (conf / "pg_hba.conf").write_text(PG_HBA)
        (conf / "conf.d").mkdir(exist_ok=True)
        (conf / "conf.d" / "replication.conf").write_text(_pg_settings(node.port))

    def start(self) -> None:
        primary, *standbys = self.nodes
        self._register(primary, "--no-sync", "--auth-local=trust", "--auth-host=trust")
        primary.start(self._log(primary))
        # Each standby is a base backup of the primary; both are made side by side.
        with ThreadPoolExecutor(len(standbys)) as pool:
            list(pool.map(lambda standby: self._make_standby(standby, primary), standbys))
        self.wait_for_sync_standby(primary, 2, 20)

    def _make_standby(self, standby: PostgresNode, primary: PostgresNode) -> None:
        _run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-D",
                str(standby.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-d",
                self._primary_conninfo(standby, primary),
            ],
            user="postgres",
        )
        self._set_primary_conninfo_file(standby, primary)
        # pg_createcluster adopts a data folder (no initdb) when it holds these three files;
        # it moves them to /etc/postgresql and points the cluster at them.
        for name, text in (
            ("postgresql.conf", "include_dir = 'conf.d'\n"),
            ("pg_hba.conf", PG_HBA),
            ("pg_ident.conf", ""),
        ):
            path = standby.data / name
            path.write_text(text)
            shutil.chown(path, "postgres", "postgres")
        self._register(standby)
        standby.start(self._log(standby))

    def _primary_conninfo(self, standby: PostgresNode, primary: PostgresNode) -> str:
        return (
            f"host={HOST} port={primary.port} user=postgres "
            f"application_name={standby.application_name}"
        )

    def _set_primary_conninfo_file(self, standby: PostgresNode, primary: PostgresNode) -> None:
        auto = standby.data / "postgresql.auto.conf"
        lines = [
            line
            for line in auto.read_text().splitlines()
            if not line.startswith("primary_conninfo")
        ]
        lines.append(f"primary_conninfo = '{self._primary_conninfo(standby, primary)}'")
        auto.write_text("\n".join(lines) + "\n")

    def wait_for_sync_standby(
        self, primary: PostgresNode, count: int = 1, timeout: float = 20
    ) -> None:
        """Wait until ``primary`` streams to ``count`` standbys that count for the quorum."""

        def streaming() -> bool:
            rows = primary.query(
                "SELECT application_name FROM pg_stat_replication"
                " WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')"
            )
            return len(rows) >= count

        _wait(streaming, timeout, f"{count} synchronous standby(s) on {primary.cluster}", 0.1)

    def kill_primary(self) -> PostgresNode:
        """SIGKILL the primary's postmaster; return that node."""
        node = self.primary
        self._killed_at = time.monotonic()
        node.kill()
        return node

    def most_advanced_standby(self) -> PostgresNode:
        """The live standby that received the most WAL (the one to promote)."""

        def lsn(node: PostgresNode) -> int:
            value = node.query("SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn")[0][0]
            return int(value or 0)

        return max(self.standbys, key=lsn)

    def promote(self, standby: PostgresNode, timeout: float = 20) -> None:
        """``pg_ctlcluster 15 NAME promote`` and wait until it accepts writes."""
        standby.pg_ctlcluster("promote")
        _wait(lambda: not standby.in_recovery(), timeout, f"{standby.cluster} to be promoted")
        if self._killed_at is not None:
            self.failover_seconds = time.monotonic() - self._killed_at

    def repoint(self, standby: PostgresNode, primary: PostgresNode) -> None:
        """Make ``standby`` stream from ``primary`` (reloads; follows the new timeline)."""
        with standby.connect() as conn:
            conn.execute(
                "ALTER SYSTEM SET primary_conninfo = "
                + "'"
                + self._primary_conninfo(standby, primary).replace("'", "''")
                + "'"
            )
            conn.execute("SELECT pg_reload_conf()")

    def failover(self, timeout: float = 20) -> PostgresNode:
        """Promote the most advanced standby, repoint the other, wait for its quorum vote.

        The most advanced standby has every commit the other one has, so the other can follow
        its new timeline. ``failover_seconds`` is the time from ``kill_primary()`` to the
        promotion, ``resync_seconds`` to the other standby acknowledging again (until then a
        commit on the new primary waits, as ``synchronous_commit`` asks).
        """
        new_primary = self.most_advanced_standby()
        others = [node for node in self.standbys if node is not new_primary]
        self.promote(new_primary, timeout)
        for other in others:
            self.repoint(other, new_primary)
        if others:
            self.wait_for_sync_standby(new_primary, len(others), timeout)
        if self._killed_at is not None:
            self.resync_seconds = time.monotonic() - self._killed_at
        return new_primary

    def close(self) -> None:
        for name in reversed(self.created):
            with contextlib.suppress(Exception):
                drop_cluster(name)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_replicated(directory: Path | None = None) -> t.Iterator[PostgresTopology]:
    """Create, start, and finally drop a primary and two standbys (PostgreSQL 15).

    The clusters live in a folder of their own owned by ``postgres`` (the server refuses to run
    as root, and a pytest ``tmp_path`` is not reachable for other users); their logs are copied
    to ``directory`` at the end when given.
    """
    _require(
        "pg_createcluster",
        "pg_ctlcluster",
        "pg_dropcluster",
        str(PG_BIN / "pg_ctl"),
        str(PG_BIN / "pg_basebackup"),
    )
    if os.geteuid() != 0:
        unavailable("the replicated PostgreSQL tests create clusters and need root")
    drop_stale_clusters()
    topology = PostgresTopology()
    try:
        topology.start()
        yield topology
    finally:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for log in topology.base.glob("*.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(log, directory / log.name)
        topology.close()
