"""``Store.failures_many``: the lockout counts of several keys in one call, on every backend;
and ``get_client_and_failures``, the client record with them, as a client's authentication
reads both.

The throttle reads a name's and an address's counts with it, so each answer must be the
one ``failures`` gives for that key, in the order asked.
"""

from __future__ import annotations

from flask_tokenguard.stores.base import Store
from tests.stores.records import make_client
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


def test_get_client_and_failures_answers_as_the_two_reads_do(store: Store) -> None:
    store.create_client(make_client("app", alias="legacy-app"))
    store.create_client(make_client("other"))
    store.record_failure("addr:10.0.0.1", WINDOW, NOW)
    store.record_failure("client:app|10.0.0.1", WINDOW, NOW + 1)
    store.record_failure("client:app|10.0.0.1", WINDOW, NOW + 2)
    keys = ["addr:10.0.0.1", "client:app|10.0.0.1"]
    for name in ("app", "legacy-app", "other", "nobody"):
        got = store.get_client_and_failures(name, keys, NOW + 3)
        assert got == (store.get_client(name), store.failures_many(keys, NOW + 3))
    client, counts = store.get_client_and_failures("legacy-app", keys, NOW + 3)
    assert client == make_client("app", alias="legacy-app")
    assert counts == [(1, NOW + WINDOW), (2, NOW + 1 + WINDOW)]


def test_get_client_and_failures_with_no_keys_no_client_or_expired_counts(store: Store) -> None:
    store.create_client(make_client("app"))
    assert store.get_client_and_failures("app", [], NOW) == (make_client("app"), [])
    assert store.get_client_and_failures("nobody", ["addr:x"], NOW) == (None, [(0, 0.0)])
    store.record_failure("addr:x", WINDOW, NOW)
    assert store.get_client_and_failures("nobody", ["addr:x", "addr:x"], NOW + 1) == (
        None,
        [(1, NOW + WINDOW), (1, NOW + WINDOW)],
    )
    assert store.get_client_and_failures("app", ["addr:x"], NOW + WINDOW) == (
        make_client("app"),
        [(0, 0.0)],
    )
    # A name outside the alphabet of ids matches nothing, and still gets its counts.
    assert store.get_client_and_failures("bad name!", ["addr:x"], NOW + 1) == (
        None,
        [(1, NOW + WINDOW)],
    )
