"""The held-seats counter of the SQLite and SQL stores equals the true count.

A seat start reads the counter instead of counting the live sessions, so every path
that adds, ends, replaces or sweeps a seat holder must keep it exact: each test below
takes one such path and compares the counter with the seat-holding rows in the table.
"""

from __future__ import annotations

import contextlib
import sqlite3
import typing as t

import pytest

from flask_tokenguard.stores.base import Store
from tests.stores import _workers
from tests.stores.records import make_session
from tests.stores.records import NOW
from tests.stores.records import TTL

#: The stores that keep a counter (memory and Redis count their own way).
COUNTING = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    pytest.param("sqlite+pysqlite", id="sqlite+pysqlite"),
]

pytestmark = pytest.mark.parametrize("store_id", COUNTING)


def counter_and_rows(store: Store) -> tuple[int, int]:
    """(the counter, the seat-holding rows of ``tg_sessions``), read from the tables."""
    anystore = t.cast(t.Any, store)
    if hasattr(anystore, "_q"):
        q = anystore._q
        with anystore._tx() as conn:
            counter = conn.execute(q.get_seats).scalar_one()
            rows = conn.execute(q.count_seat_rows).scalar_one()
        return int(counter), int(rows)
    with contextlib.closing(sqlite3.connect(anystore.path)) as conn:
        (counter,) = conn.execute(
            "SELECT value FROM tg_counters WHERE name = 'seats_held'"
        ).fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM tg_sessions WHERE holds_seat = 1").fetchone()
    return int(counter), int(rows)


def assert_counter(store: Store, expected: int) -> None:
    assert counter_and_rows(store) == (expected, expected)


def test_a_new_store_counts_no_seat(store: Store) -> None:
    assert_counter(store, 0)


def test_seat_starts_count_and_seatless_ones_do_not(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    store.start_session(make_session("s2"), 5, NOW)
    store.start_session(make_session("v1", holds_seat=False), None, NOW)
    assert_counter(store, 2)


def test_a_refused_start_leaves_the_counter(store: Store) -> None:
    store.start_session(make_session("s1"), 1, NOW)
    assert not store.start_session(make_session("s2"), 1, NOW)
    assert not store.start_session(make_session("s3"), None, NOW, client_cap=1)
    assert_counter(store, 1)


def test_the_limit_is_decided_by_the_counter(store: Store) -> None:
    for i in range(3):
        assert store.start_session(make_session(f"s{i}"), 3, NOW)
    assert store.start_session(make_session("free", holds_seat=False), 3, NOW)
    assert store.start_session(make_session("late"), 3, NOW).refused == "pool"
    store.end_session("s0", NOW)
    assert store.start_session(make_session("late"), 3, NOW)
    assert_counter(store, 3)


def test_end_session_frees_a_seat_and_a_seatless_end_frees_none(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    store.start_session(make_session("s2"), None, NOW)
    store.start_session(make_session("v1", holds_seat=False), None, NOW)
    assert store.end_session("s1", NOW) is not None
    assert store.end_session("v1", NOW) is not None
    assert store.end_session("s1", NOW) is None  # ended twice: counted once
    assert_counter(store, 1)


def test_end_sessions_of_a_client_and_of_all(store: Store) -> None:
    for i in range(3):
        store.start_session(make_session(f"a{i}", client_id="a"), None, NOW)
        store.start_session(make_session(f"b{i}", client_id="b"), None, NOW)
    store.start_session(make_session("av", client_id="a", holds_seat=False), None, NOW)
    assert store.end_sessions("a", NOW) == 4
    assert_counter(store, 3)
    assert store.end_sessions(None, NOW) == 3
    assert_counter(store, 0)


def test_ending_an_expired_seat_frees_it(store: Store) -> None:
    store.start_session(make_session("old", expires_at=NOW + 10), None, NOW)
    later = NOW + 20
    assert store.end_session("old", later) is None  # expired: nothing live ended
    assert_counter(store, 0)


def test_replacing_the_oldest_keeps_the_count(store: Store) -> None:
    for i in range(2):
        store.start_session(make_session(f"s{i}", created_at=NOW + i), None, NOW, client_cap=2)
    outcome = store.start_session(
        make_session("new", created_at=NOW + 5), 10, NOW, client_cap=2, replace_oldest=True
    )
    assert [s.session_id for s in outcome.replaced] == ["s0"]
    assert_counter(store, 2)
    # A lower cap replaces several at once.
    outcome = store.start_session(
        make_session("newer", created_at=NOW + 6), 10, NOW, client_cap=1, replace_oldest=True
    )
    assert [s.session_id for s in outcome.replaced] == ["s1", "new"]
    assert_counter(store, 1)


def test_the_sweep_takes_expired_seats_off_once_past_the_skew(store: Store) -> None:
    store.start_session(make_session("short", expires_at=NOW + 10), None, NOW)
    store.start_session(
        make_session("short-free", holds_seat=False, expires_at=NOW + 10), None, NOW
    )
    store.start_session(make_session("long"), None, NOW)
    # Expired 2 s ago, but hosts may disagree by 5 s: still counted, not swept.
    outcome = store.start_session(make_session("x1"), 3, NOW + 12, skew=5.0)
    assert outcome.started
    assert_counter(store, 3)
    assert store.start_session(make_session("x2"), 3, NOW + 12, skew=5.0).refused == "pool"
    assert_counter(store, 3)
    # Past the skew: swept, and its seat is free for a new session.
    assert store.start_session(make_session("x3"), 3, NOW + 16, skew=5.0)
    assert_counter(store, 3)
    assert store.seats_in_use(NOW + 16) == 3


def test_a_refused_start_still_records_its_sweep(store: Store) -> None:
    store.start_session(make_session("short", expires_at=NOW + 10), None, NOW)
    store.start_session(make_session("a1", client_id="capped"), None, NOW)
    later = NOW + 20
    outcome = store.start_session(make_session("a2", client_id="capped"), None, later, client_cap=1)
    assert outcome.refused == "client"
    assert_counter(store, 1)


def test_rotation_keeps_the_count_and_its_used_hashes_go_with_the_sweep(store: Store) -> None:
    store.start_session(make_session("s1", expires_at=NOW + 10), None, NOW)
    rotated = store.rotate_refresh("s1", "hash-s1", "hash-s1b", NOW + 20, NOW + 1)
    assert rotated is not None and rotated.expires_at == NOW + 20
    assert_counter(store, 1)
    # Not swept at the first expiry: the rotation moved it.
    assert store.start_session(make_session("s2"), 2, NOW + 15)
    assert_counter(store, 2)
    # Swept at the second; the cascade of its used hash is not counted as a seat.
    assert store.start_session(make_session("s3"), 2, NOW + 25)
    assert_counter(store, 2)
    assert store.find_refresh("hash-s1", NOW + 25) is None


def test_reset_zeroes_the_counter(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    store.reset()
    assert_counter(store, 0)
    assert store.start_session(make_session("s1"), 1, NOW)
    assert_counter(store, 1)


def test_seatless_starts_after_a_seat_expired_keep_the_counter_exact(store: Store) -> None:
    """SQLite sweeps the expired seat here; the SQL stores leave it to a seat start."""
    store.start_session(make_session("short", expires_at=NOW + 10), None, NOW)
    for i in range(40):  # more than the opportunistic sweep's period on SQL servers
        store.start_session(make_session(f"v{i}", holds_seat=False), None, NOW + 20)
    counter, rows = counter_and_rows(store)
    assert counter == rows and rows in (0, 1)
    assert store.seats_in_use(NOW + 20) == 0
    assert store.start_session(make_session("s1"), 1, NOW + 20)
    assert_counter(store, 1)


def test_expired_seatless_sessions_are_swept_by_seatless_starts(store: Store) -> None:
    store.start_session(make_session("old-free", holds_seat=False, expires_at=NOW + 10), None, NOW)
    for i in range(16):  # the SQL stores sweep seat-less rows every 16th seat-less start
        store.start_session(make_session(f"v{i}", holds_seat=False), None, NOW + 20)
    every_row = {s.session_id for s in store.list_sessions(None, 0.0)}
    assert "old-free" not in every_row and len(every_row) == 16
    assert_counter(store, 0)


@pytest.mark.slow
def test_racing_processes_keep_the_counter_exact(
    store: Store, store_url_and_options: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = store_url_and_options
    # A few seat holders that expire, and seat-less ones, for the racers to sweep.
    for i in range(5):
        store.start_session(make_session(f"old{i}", expires_at=NOW - 1), None, NOW - TTL)
        store.start_session(make_session(f"v{i}", holds_seat=False), None, NOW)
    reports = _workers.spawn(3, _workers.race_capped_seats, url, options, 15, 4, True, NOW)
    assert [status for _, status, _ in reports] == ["ok"] * 3, reports
    assert len(store.list_sessions("capped", NOW)) == 4
    assert_counter(store, 4)
    reports = _workers.spawn(3, _workers.race_seats, url, options, 10, 9, NOW)
    assert [status for _, status, _ in reports] == ["ok"] * 3, reports
    assert sum(granted for _, _, granted in reports) == 5
    assert_counter(store, 9)
