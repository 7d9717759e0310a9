"""The SQL store on a replicated PostgreSQL: a libpq multi-host URL, hung standbys
(``replicas_timeout``), a primary killed, and a failover under token load.

The topology (a primary and two streaming standbys, ``synchronous_standby_names = 'ANY 1
(s1, s2)'``) is started by ``tests.replication.postgres_replicated`` on private ports. The
store is opened with the URL form CONTRACT.md gives
(``postgresql://u@h1:p1,h2:p2,h3:p3/db?target_session_attrs=read-write``): libpq tries the
hosts in turn and keeps the one that takes writes, so the same store object follows a
promotion without a restart. The load test kills the primary of a topology of its own.
Run alone with ``-m replication``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_tokenguard.errors import StoreError
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store

# The Redis failover test's load and retry, so that both stores face the same traffic.
from tests.failover_load import Load
from tests.failover_load import until
from tests.helpers import flask_cli
from tests.helpers import get_token
from tests.helpers import register
from tests.helpers import SampleServer
from tests.replication import postgres_replicated
from tests.replication import PostgresNode
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


@contextlib.contextmanager
def _standbys_paused(topology: PostgresTopology) -> t.Iterator[list[PostgresNode]]:
    """Every standby SIGSTOPped for the block (hung hosts), then waited for again."""
    standbys = topology.standbys
    assert standbys, "the topology has no standby left to pause"
    with contextlib.ExitStack() as stack:
        for standby in standbys:
            stack.enter_context(standby.paused())
        yield standbys
    topology.wait_for_sync_standby(topology.primary, len(standbys))


def _timed(action: t.Callable[[], t.Any], limit: float = 10) -> tuple[BaseException | None, float]:
    """The exception ``action()`` raised (None if none) and the seconds it took.

    Run in a thread, so that a call that hangs fails the test after ``limit`` seconds
    (and finishes once the standbys resume) instead of hanging the run.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    took = time.monotonic() - started
    assert outcome, f"the call still waits after {took:.1f} s"
    return outcome[0], took


def _on_standby(node: PostgresNode, query: str, expected: t.Any, timeout: float = 10) -> None:
    """Poll ``query`` on a standby until it returns ``expected`` (replay is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (rows := node.query(query)) != expected:
        assert time.monotonic() < deadline, f"{node.cluster}: {query} gave {rows}"
        time.sleep(0.05)


def test_an_unacknowledged_commit_fails_in_time_and_holds_nothing(
    topology: PostgresTopology,
) -> None:
    store = store_from_url(topology.url, schema="tg_unacknowledged", replicas_timeout=500)
    try:
        store.reset()
        assert store.start_session(make_session("kept", refresh_hash="k1"), 5, NOW).started
        assert store.start_session(make_session("gone", refresh_hash="g1"), 5, NOW).started
        with _standbys_paused(topology) as standbys:
            start_error, start_took = _timed(
                lambda: store.start_session(make_session("lost", refresh_hash="l1"), 5, NOW)
            )
            # A seat-less start is one statement in autocommit: watched all the same.
            free = make_session("free", refresh_hash="f1", holds_seat=False)
            free_error, free_took = _timed(lambda: store.start_session(free, 5, NOW))
            rotate_error, rotate_took = _timed(
                lambda: store.rotate_refresh("kept", "k1", "k2", NOW + 100, NOW)
            )
            # A logoff is not taken back: it stays done on the primary, the client retries.
            end_error, end_took = _timed(lambda: store.end_session("gone", NOW))
            assert store.get_session("gone", NOW) is None
            # The primary (reads need no standby): the start and the rotation taken back.
            assert store.seats_in_use(NOW) == 1
            assert store.get_session("lost", NOW) is None
            assert store.get_session("free", NOW) is None
            found = store.find_refresh("k1", NOW)
            assert found is not None and found[1] is True, "k1 is current again"
            assert store.find_refresh("k2", NOW) is None
        for error in (start_error, free_error, rotate_error, end_error):
            assert isinstance(error, StoreError), error
            assert "no synchronous standby acknowledged the commit within 500 ms" in str(error)
        # replicas_timeout, plus the cancel and the undo; never the unbounded wait.
        for took in (start_took, free_took, rotate_took, end_took):
            assert 0.5 <= took < 2.0, (start_took, free_took, rotate_took, end_took)
        # Back: the client's retry with the token it holds is a refresh, and seats start.
        assert store.rotate_refresh("kept", "k1", "k2", NOW + 100, NOW) is not None
        assert store.start_session(make_session("after", refresh_hash="a1"), 5, NOW).started
        assert store.seats_in_use(NOW) == 2
        # The standbys replayed the start and its undo too: no seat held there for "lost".
        sessions = "SELECT session_id FROM tg_unacknowledged.tg_sessions ORDER BY 1"
        for standby in standbys:
            _on_standby(standby, sessions, [("after",), ("kept",)])
        print(
            f"\nunacknowledged (replicas_timeout 500 ms): a start failed after "
            f"{start_took:.2f} s, a rotation after {rotate_took:.2f} s, a logoff after "
            f"{end_took:.2f} s"
        )
    finally:
        store.drop()
        store.close()


def test_a_token_request_gets_503_while_no_standby_answers(
    topology: PostgresTopology, app_factory: t.Callable[..., Flask]
) -> None:
    options = {"schema": "tg_unacknowledged_http", "replicas_timeout": 500}
    app = app_factory(topology.url, LICENSES=2, STORE_OPTIONS=options)
    creds = register(app, "hung standbys")
    http = app.test_client()
    first = get_token(http, creds)
    assert first.status_code == 200, first.get_json()
    watcher = store_from_url(topology.url, **options)
    try:
        with _standbys_paused(topology):
            answers: list[t.Any] = []
            error, took = _timed(lambda: answers.append(get_token(http, creds)))
            assert error is None and answers, error
            refused = answers[0]
            assert refused.status_code == 503
            assert refused.get_json()["error"] == "temporarily_unavailable"
            assert refused.headers["Retry-After"].isdigit()
            assert watcher.seats_in_use(time.time()) == 1, "the refused start holds no seat"
        assert took < 2.0, took
        # Once a standby answers, the seat the refused request did not keep is there, and
        # then the pool of two is full.
        again = get_token(http, creds)
        assert again.status_code == 200, again.get_json()
        full = get_token(http, creds)
        assert full.status_code == 400 and full.get_json()["error"] == "license_unavailable"
        assert watcher.seats_in_use(time.time()) == 2
    finally:
        watcher.drop()
        watcher.close()


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


@pytest.fixture
def own_topology(tmp_path: Path) -> t.Iterator[PostgresTopology]:
    """A topology for one test that kills its primary (the module's lost one already)."""
    with postgres_replicated(tmp_path / "postgres-logs") as started:
        yield started


def test_failover_under_load_keeps_seats_sessions_and_logoffs(
    own_topology: PostgresTopology, sample_server: t.Callable[..., SampleServer]
) -> None:
    topology = own_topology
    options = {"schema": "tg_load"}
    env = {
        "LICENSES": "5",
        "STORE_OPTIONS": json.dumps(options),
        "ISSUER": "https://tokens.example.test",
    }
    servers = [sample_server(topology.url, **env) for _ in range(3)]
    creds = flask_cli(topology.url, "create-client", "load", **env)
    auth = (creds["client_id"], creds["client_secret"])
    watcher = store_from_url(topology.url, **options)
    seats_seen: list[int] = []
    load = Load(servers, auth)

    def watch_seats() -> None:
        while not load.stop.wait(0.1):
            with contextlib.suppress(StoreError):
                seats_seen.append(watcher.seats_in_use(time.time()))

    def busy() -> bool:
        # Under way on every path: sessions started, refreshed and logged off.
        kinds = {kind for _, _, kind, status in load.answers if status in (200, 204)}
        return kinds == {"start", "refresh", "logoff"} and len(load.answers) >= 50

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=9)
    try:
        futures = [pool.submit(load.worker, n) for n in range(8)]
        futures.append(pool.submit(watch_seats))
        until(busy, 20, "the load to start, refresh and log off sessions")
        killed_at = time.monotonic()
        topology.kill_primary()
        # Promote the most advanced standby and repoint the other one, whose vote the new
        # primary's commits wait for (until then they time out: 503).
        topology.failover(timeout=20)
        assert topology.failover_seconds is not None
        promoted_at = killed_at + topology.failover_seconds
        until(lambda: bool(load.successes_after(promoted_at)), 10, "a 200 after the promotion")
        # And a little more load on the new primary.
        moment = time.monotonic()
        until(lambda: len(load.successes_after(moment)) >= 20, 10, "20 more 200s")
    finally:
        load.stop.set()
        pool.shutdown(wait=True)
    for future in futures:
        future.result()

    try:
        # No bad answer at all: in particular no held session whose refresh got 503 at the
        # kill and then invalid_grant on the retry (a rotation that the promoted standby
        # has, answered 503): the store resends it across the failover and knows its own.
        first_200 = load.check_after_failover(promoted_at, seats_seen, 5, watcher)
        statuses = sorted({status for _, _, _, status in load.answers})
        print(
            f"\npostgresql failover: promoted {topology.failover_seconds:.2f} s after the kill, "
            f"first 200 {first_200:.2f} s after the promotion (the other standby "
            f"voting again {topology.resync_seconds or 0:.2f} s after the kill); "
            f"{len(load.answers)} answers {statuses}, {len(load.held)} held, "
            f"{len(load.logged_off)} logged off"
        )
    finally:
        watcher.drop()
        watcher.close()
