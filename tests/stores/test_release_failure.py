"""``Store.release_failure``: one count of a lockout key taken back, on every backend.

The throttle reserves a count before a password check and takes it back when the check
succeeds, so that successes from one address never add up to a lockout.
"""

from __future__ import annotations

import concurrent.futures

from flask_tokenguard.stores.base import Store
from tests.stores.records import NOW

WINDOW = 300.0


def test_release_takes_back_one_count_and_keeps_the_window(store: Store) -> None:
    for i in range(3):
        store.record_failure("addr:10.0.0.1", WINDOW, NOW + i)
    store.release_failure("addr:10.0.0.1", NOW + 5)
    assert store.failures("addr:10.0.0.1", NOW + 6) == (2, NOW + WINDOW)
    # The next failure counts on from there, in the same window.
    assert store.record_failure("addr:10.0.0.1", WINDOW, NOW + 7) == (3, NOW + WINDOW)


def test_release_stops_at_zero(store: Store) -> None:
    store.record_failure("addr:10.0.0.2", WINDOW, NOW)
    for _ in range(3):
        store.release_failure("addr:10.0.0.2", NOW + 1)
    assert store.failures("addr:10.0.0.2", NOW + 2) == (0, NOW + WINDOW)
    assert store.record_failure("addr:10.0.0.2", WINDOW, NOW + 3) == (1, NOW + WINDOW)


def test_release_of_an_absent_key_does_nothing(store: Store) -> None:
    store.release_failure("addr:nobody", NOW)
    assert store.failures("addr:nobody", NOW) == (0, 0.0)
    assert store.record_failure("addr:nobody", WINDOW, NOW + 1) == (1, NOW + 1 + WINDOW)


def test_release_after_the_window_ended_does_nothing(store: Store) -> None:
    store.record_failure("addr:old", WINDOW, NOW)
    store.record_failure("addr:old", WINDOW, NOW + 1)
    store.release_failure("addr:old", NOW + WINDOW)  # the window ends at NOW + WINDOW
    # The ended window is not touched: it is still what record_failure restarts from.
    assert store.failures("addr:old", NOW + WINDOW - 1) == (2, NOW + WINDOW)
    assert store.record_failure("addr:old", WINDOW, NOW + WINDOW + 1) == (
        1,
        NOW + 2 * WINDOW + 1,
    )


def test_release_compares_keys_exactly(store: Store) -> None:
    store.record_failure("user:Alice|10.0.0.1", WINDOW, NOW)
    store.release_failure("user:alice|10.0.0.1", NOW + 1)
    assert store.failures("user:Alice|10.0.0.1", NOW + 1) == (1, NOW + WINDOW)


def test_parallel_reserve_and_release_leaves_zero(store: Store) -> None:
    key = "addr:10.0.0.9"

    def reserve_and_release(_: int) -> int:
        count, _until = store.record_failure(key, WINDOW, NOW)
        store.release_failure(key, NOW)
        return count

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(reserve_and_release, range(40)))
    assert all(1 <= count <= 40 for count in counts)
    assert store.failures(key, NOW + 1) == (0, NOW + WINDOW)


# -- a throttle's reservation in one call each: record_failures, release_reservation ------


def test_record_failures_counts_each_key_as_record_failure_does(store: Store) -> None:
    store.record_failure("addr:10.0.0.9", WINDOW, NOW)
    store.record_failure("old", WINDOW, NOW - WINDOW - 1)  # its window has ended
    got = store.record_failures(["addr:10.0.0.9", "client:app|10.0.0.9"], WINDOW, NOW + 1)
    assert got == [(2, NOW + WINDOW), (1, NOW + 1 + WINDOW)]
    assert store.record_failures(["old", "addr:10.0.0.9"], WINDOW, NOW + 2) == [
        (1, NOW + 2 + WINDOW),
        (3, NOW + WINDOW),
    ]
    assert store.failures("client:app|10.0.0.9", NOW + 3) == (1, NOW + 1 + WINDOW)


def test_parallel_reservations_count_the_shared_key_once_each(store: Store) -> None:
    # One address, a different name each: the address's counts come out 1..N, once each.
    def reserve(i: int) -> list[tuple[int, float]]:
        return store.record_failures(["addr:10.0.0.10", f"user:u{i}|10.0.0.10"], WINDOW, NOW)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reserve, range(16)))
    assert sorted(address for (address, _), _ in results) == list(range(1, 17))
    assert all(name == (1, NOW + WINDOW) for _, name in results)


def test_release_reservation_gives_one_count_back_and_clears_the_other(store: Store) -> None:
    store.record_failures(["addr:10.0.0.11", "client:app|10.0.0.11"], WINDOW, NOW)
    store.record_failures(["addr:10.0.0.11", "client:app|10.0.0.11"], WINDOW, NOW + 1)
    store.release_reservation("addr:10.0.0.11", "client:app|10.0.0.11", NOW + 2)
    assert store.failures("addr:10.0.0.11", NOW + 3) == (1, NOW + WINDOW)
    assert store.failures("client:app|10.0.0.11", NOW + 3) == (0, 0.0)
    # Never below zero, and a key that is absent is no error.
    for _ in range(2):
        store.release_reservation("addr:10.0.0.11", "nothing", NOW + 4)
    assert store.failures("addr:10.0.0.11", NOW + 5) == (0, NOW + WINDOW)
