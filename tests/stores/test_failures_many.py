"""``Store.failures_many``: the lockout counts of several keys in one call, on every backend.

The throttle reads a name's and an address's counts with it, so each answer must be the
one ``failures`` gives for that key, in the order asked.
"""

from __future__ import annotations

from flask_tokenguard.stores.base import Store
from tests.stores.records import NOW

WINDOW = 300.0


def test_failures_many_answers_as_failures_does_per_key(store: Store) -> None:
    store.record_failure("addr:10.0.0.1", WINDOW, NOW)
    store.record_failure("client:app|10.0.0.1", WINDOW, NOW + 1)
    store.record_failure("client:app|10.0.0.1", WINDOW, NOW + 2)
    keys = ["client:app|10.0.0.1", "addr:10.0.0.1", "user:nobody"]
    got = store.failures_many(keys, NOW + 3)
    assert got == [(2, NOW + 1 + WINDOW), (1, NOW + WINDOW), (0, 0.0)]
    assert got == [store.failures(key, NOW + 3) for key in keys]


def test_failures_many_of_no_keys_or_unknown_keys(store: Store) -> None:
    assert store.failures_many([], NOW) == []
    assert store.failures_many(["user:a", "user:b"], NOW) == [(0, 0.0), (0, 0.0)]


def test_failures_many_leaves_out_expired_counts(store: Store) -> None:
    store.record_failure("addr:old", WINDOW, NOW)
    store.record_failure("addr:new", WINDOW, NOW + 10)
    later = NOW + WINDOW  # "addr:old" ends here; "addr:new" lives 10 s more
    assert store.failures_many(["addr:old", "addr:new"], later) == [
        (0, 0.0),
        (1, NOW + 10 + WINDOW),
    ]


def test_failures_many_repeats_the_answer_for_a_repeated_key(store: Store) -> None:
    store.record_failure("Alice", WINDOW, NOW)
    # Keys compare exactly: "alice" is another key.
    assert store.failures_many(["Alice", "alice", "Alice"], NOW + 1) == [
        (1, NOW + WINDOW),
        (0, 0.0),
        (1, NOW + WINDOW),
    ]
