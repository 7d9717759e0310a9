"""The one list of store backends the tests run on (as limits' ``ALL_STORAGES``).

Server URLs can be overridden per backend with environment variables:

- ``TOKENGUARD_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``)
- ``TOKENGUARD_TEST_POSTGRESQL_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
- ``TOKENGUARD_TEST_MARIADB_URL`` (default ``mysql+pymysql://root@127.0.0.1:3306/test``)

The store suite also runs on a Redis Sentinel and a Redis Cluster topology
(``REPLICATED_BACKENDS``), which the run starts itself on private ports.

Each test gets its own Redis key prefix, or its own PostgreSQL schema or MariaDB
database, dropped afterwards, so runs sharing a server never collide. A server that
cannot be reached skips its tests with the reason, or fails them when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import typing as t
import uuid
from pathlib import Path

import pytest

from flask_tokenguard.errors import StoreError
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store
from tests.helpers import unavailable
from tests.replicated_backends import is_replicated
from tests.replicated_backends import topology_url

#: Every backend, by id. Servers are marked, so ``pytest -m "not postgresql"`` works.
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    # The SQLAlchemy store on a SQLite file: runs its code on every machine, no server.
    pytest.param("sqlite+pysqlite", id="sqlite+pysqlite"),
]

#: Backends whose state separate processes share (all but ``memory``).
CROSS_PROCESS_BACKENDS = [p for p in BACKENDS if p.values[0] != "memory"]

#: The replicated Redis topologies the run starts itself (``tests/replicated_backends.py``),
#: each at its first use, with every write acknowledged by a replica (``replicas=1``).
#: ``pytest -m replication`` runs them, ``-m "not replication"`` leaves them out.
REPLICATED_BACKENDS = [
    pytest.param(
        "redis+sentinel",
        id="redis+sentinel",
        marks=[pytest.mark.redis, pytest.mark.replication],
    ),
    pytest.param(
        "redis+cluster",
        id="redis+cluster",
        marks=[pytest.mark.redis, pytest.mark.replication],
    ),
]

#: What the store suite (``tests/stores``) runs on: every backend and the topologies.
STORE_BACKENDS = BACKENDS + REPLICATED_BACKENDS

#: The store suite's backends that separate processes share.
CROSS_PROCESS_STORE_BACKENDS = CROSS_PROCESS_BACKENDS + REPLICATED_BACKENDS

#: Plain Redis and the topologies: for a Redis-only test that should hold on all three.
REDIS_BACKENDS = [p for p in STORE_BACKENDS if str(p.values[0]).startswith("redis")]

_SERVERS = {
    "redis": ("TOKENGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    "postgresql": ("TOKENGUARD_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mariadb": ("TOKENGUARD_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def server_url(backend_id: str) -> str:
    """The URL of a server backend (``redis``, ``postgresql``, ``mariadb``) for tests."""
    env, default = _SERVERS[backend_id]
    return os.environ.get(env) or default


def backend_url_and_options(backend_id: str, tmp_path: Path) -> tuple[str, dict[str, t.Any]]:
    """The URL and options of a fresh, isolated store; nothing is created yet."""
    run = uuid.uuid4().hex[:12]
    if backend_id == "memory":
        return "memory://", {}
    if backend_id == "sqlite":
        return f"sqlite:///{tmp_path / 'tokenguard.sqlite3'}", {}
    if backend_id == "sqlite+pysqlite":
        return f"sqlite+pysqlite:///{tmp_path / 'tokenguard-sa.sqlite3'}", {}
    if is_replicated(backend_id):
        # Started at the first test that asks (once per run), stopped when the run ends.
        return topology_url(backend_id), {"key_prefix": f"tgtest:{{{run}}}:", "replicas": 1}
    url = server_url(backend_id)
    if backend_id == "redis":
        return url, {"key_prefix": f"tgtest:{{{run}}}:"}
    return url, {"schema": f"tgtest_{run}"}


@contextlib.contextmanager
def open_store(url: str, options: dict[str, t.Any], *, reset: bool = True) -> t.Iterator[Store]:
    """Build and check a store (emptied unless ``reset=False``); drop and close it after.

    Skips if the server is down, or fails under ``CI=true``.
    """
    try:
        store = store_from_url(url, **options)
        store.check()
    except StoreError as exc:
        unavailable(f"{url} unreachable: {exc}")
    try:
        if reset:
            store.reset()
        yield store
    finally:
        try:
            store.drop()
        finally:
            store.close()


@contextlib.contextmanager
def isolated_store(backend_id: str, tmp_path: Path) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    """``(url, options)`` of a reachable, isolated store for apps and processes to open."""
    url, options = backend_url_and_options(backend_id, tmp_path)
    with open_store(url, options):
        yield url, options
