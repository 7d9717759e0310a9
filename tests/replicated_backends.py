"""The replicated Redis backends of the store suite: one Sentinel and one Cluster topology
per test run, each started at its first use and stopped at the end of the session.

``topology_url("redis+sentinel")`` (or ``"redis+cluster"``) starts the topology on first
call (``tests/replication.py``, private ports) and returns its URL; later calls return the
same URL. A topology that could not start is not tried again: every later call skips (or,
under ``CI=true``, fails) with the first reason. ``close_all()`` stops whatever was started;
the ``replicated_topologies`` session fixture calls it, and ``atexit`` does too for a run
outside pytest (``bench/bench.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import typing as t
from pathlib import Path

import pytest

from tests.helpers import unavailable
from tests.replication import ClusterTopology
from tests.replication import redis_cluster
from tests.replication import redis_sentinel
from tests.replication import SentinelTopology

Topology = SentinelTopology | ClusterTopology

#: Backend id -> the context manager that starts its topology in a folder.
_OPENERS: dict[str, t.Callable[[Path], t.ContextManager[Topology]]] = {
    "redis+sentinel": redis_sentinel,
    "redis+cluster": redis_cluster,
}


class _Lazy:
    """One topology, started on first use and kept until ``close()``."""

    def __init__(self, backend_id: str) -> None:
        self.backend_id = backend_id
        self._stack: contextlib.ExitStack | None = None
        self._topology: Topology | None = None
        self._directory: Path | None = None
        #: ``("skip", reason)`` or ``("fail", reason)`` once a start went wrong.
        self._failed: tuple[str, str] | None = None

    def get(self) -> Topology:
        if self._topology is not None:
            return self._topology
        if self._failed is not None:
            kind, reason = self._failed
            if kind == "skip":
                unavailable(reason)
            pytest.fail(reason)
        directory = Path(tempfile.mkdtemp(prefix=f"tg-{self.backend_id.replace('+', '-')}-"))
        stack = contextlib.ExitStack()
        try:
            topology = stack.enter_context(_OPENERS[self.backend_id](directory))
        except pytest.skip.Exception as exc:
            self._failed = ("skip", str(exc.msg))
            shutil.rmtree(directory, ignore_errors=True)
            raise
        except pytest.fail.Exception as exc:  # a missing binary under CI=true
            self._failed = ("fail", str(exc.msg))
            shutil.rmtree(directory, ignore_errors=True)
            raise
        except Exception as exc:  # TopologyError, OSError: it did not come up in time
            self._failed = ("fail", f"the {self.backend_id} topology did not start: {exc!r}")
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._stack, self._topology, self._directory = stack, topology, directory
        return topology

    def close(self) -> None:
        stack, directory = self._stack, self._directory
        self._stack = self._topology = self._directory = None
        try:
            if stack is not None:
                stack.close()
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


_TOPOLOGIES = {backend_id: _Lazy(backend_id) for backend_id in _OPENERS}


def is_replicated(backend_id: str) -> bool:
    """Whether ``backend_id`` names one of the topologies this module starts."""
    return backend_id in _TOPOLOGIES


def topology(backend_id: str) -> Topology:
    """The running topology of ``backend_id``, started now if it is the first use."""
    return _TOPOLOGIES[backend_id].get()


def sentinel_topology() -> SentinelTopology:
    """The session's Sentinel topology (a primary, two replicas, three Sentinels)."""
    return t.cast(SentinelTopology, topology("redis+sentinel"))


def cluster_topology() -> ClusterTopology:
    """The session's Cluster topology (three masters with one replica each)."""
    return t.cast(ClusterTopology, topology("redis+cluster"))


def topology_url(backend_id: str) -> str:
    """The ``redis+sentinel://`` or ``redis+cluster://`` URL of the running topology."""
    return topology(backend_id).url


def close_all() -> None:
    """Stop every topology that was started (idempotent)."""
    for lazy in _TOPOLOGIES.values():
        lazy.close()


atexit.register(close_all)


@pytest.fixture(scope="session", autouse=True)
def replicated_topologies() -> t.Iterator[None]:
    """Stop the topologies that the session's tests started, when the session ends.

    Import it into a conftest or test module that uses the replicated backends.
    """
    yield
    close_all()
