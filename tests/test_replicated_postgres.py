"""The SQL store on a replicated PostgreSQL: a libpq multi-host URL, a primary killed.

The topology (a primary and two streaming standbys, ``synchronous_standby_names = 'ANY 1
(s1, s2)'``) is started by ``tests.replication.postgres_replicated`` on private ports. The
store is opened with the URL form CONTRACT.md gives
(``postgresql://u@h1:p1,h2:p2,h3:p3/db?target_session_attrs=read-write``): libpq tries the
hosts in turn and keeps the one that takes writes, so the same store object follows a
promotion without a restart. Run alone with ``-m replication``.
"""

from __future__ import annotations

import time
import typing as t

import pytest

from flask_tokenguard.errors import StoreError
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store
from tests.replication import postgres_replicated
from tests.replication import PostgresTopology
from tests.stores.records import make_session
from tests.stores.records import NOW

pytestmark = [pytest.mark.replication, pytest.mark.slow]


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[PostgresTopology]:
    with postgres_replicated(tmp_path_factory.mktemp("postgres-store")) as started:
        yield started


@pytest.fixture
def store(topology: PostgresTopology) -> t.Iterator[Store]:
    opened = store_from_url(topology.url, schema="tg_replicated")
    try:
        yield opened
    finally:
        opened.close()


def _until_it_answers(action: t.Callable[[], t.Any], timeout: float = 30) -> tuple[t.Any, int]:
    """``action()`` once the store answers again; also how many StoreErrors came first."""
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        try:
            return action(), refused
        except StoreError:
            refused += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_multi_host_url_reaches_the_primary_wherever_it_is_listed(
    topology: PostgresTopology,
) -> None:
    # Standbys first: target_session_attrs=read-write still lands every write on the primary.
    hosts = [node for node in topology.nodes if node is not topology.primary] + [topology.primary]
    url = (
        "postgresql://postgres@"
        + ",".join(f"127.0.0.1:{node.port}" for node in hosts)
        + "/postgres?target_session_attrs=read-write&connect_timeout=2"
    )
    store = store_from_url(url, schema="tg_multi_host")
    try:
        assert store.start_session(make_session("first"), 2, NOW).started
        assert store.seats_in_use(NOW) == 1
    finally:
        store.drop()
        store.close()


def test_seats_survive_a_primary_kill_and_the_store_follows_the_promotion(
    store: Store, topology: PostgresTopology
) -> None:
    store.reset()
    for name in ("a", "b"):
        assert store.start_session(make_session(name), 3, NOW).started
    ended = store.end_session("b", NOW)
    assert ended is not None

    topology.kill_primary()
    topology.failover(timeout=20)

    # The same store object: refused as an outage (the web layer's 503) until the new
    # primary answers, then served, with what was committed before the kill.
    seats, refused = _until_it_answers(lambda: store.seats_in_use(NOW))
    assert seats == 1, "the committed seat survived; the logged-off one stayed ended"
    assert store.get_session("a", NOW) is not None
    assert store.get_session("b", NOW) is None
    revoked, _ = store.revocations_since(0, NOW)
    assert "b" in revoked
    # Writes go to the new primary; the pool still counts the surviving seat.
    assert store.start_session(make_session("c"), 2, NOW).started
    assert not store.start_session(make_session("d"), 2, NOW).started
    print(f"\nstore answered again after {refused} refused call(s)")
