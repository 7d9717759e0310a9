"""Seat caps per client and replacing the oldest seat (``Store.start_session``), every backend.

The pool (``seat_limit``) and a client's cap (``client_cap``) are decided in the same
critical section as the insert; these tests pin what each refusal leaves behind.
"""

from __future__ import annotations

import typing as t

import pytest

from flask_tokenguard.stores.base import Store
from tests.stores import _workers
from tests.stores.records import make_session
from tests.stores.records import NOW
from tests.stores.records import TTL


def _live_ids(store: Store, now: float = NOW, client_id: str | None = None) -> list[str]:
    return [s.session_id for s in store.list_sessions(client_id, now)]


def test_client_cap_refuses_a_seat_at_the_cap(store: Store) -> None:
    for i in range(2):
        assert store.start_session(make_session(f"a{i}"), None, NOW, client_cap=2).started
    outcome = store.start_session(make_session("late"), None, NOW, client_cap=2)
    assert (outcome.started, outcome.refused, outcome.replaced) == (False, "client", ())
    assert not outcome
    assert store.get_session("late", NOW) is None
    assert store.seats_in_use(NOW) == 2


def test_full_pool_refuses_with_pool(store: Store) -> None:
    store.start_session(make_session("a1", client_id="a"), 2, NOW, client_cap=5)
    store.start_session(make_session("b1", client_id="b"), 2, NOW, client_cap=5)
    outcome = store.start_session(make_session("c1", client_id="c"), 2, NOW, client_cap=5)
    assert (outcome.started, outcome.refused, outcome.replaced) == (False, "pool", ())
    assert store.get_session("c1", NOW) is None
    assert store.seats_in_use(NOW) == 2


def test_started_outcome_names_no_refusal(store: Store) -> None:
    outcome = store.start_session(make_session("s1"), 3, NOW, client_cap=3)
    assert (outcome.started, outcome.refused, outcome.replaced) == (True, None, ())
    assert outcome


def test_client_at_its_cap_is_refused_for_the_client_even_with_the_pool_full(
    store: Store,
) -> None:
    store.start_session(make_session("a1"), 1, NOW, client_cap=1)
    assert store.start_session(make_session("a2"), 1, NOW, client_cap=1).refused == "client"


def test_client_cap_counts_the_clients_own_seats_only(store: Store) -> None:
    store.start_session(make_session("a1", client_id="a"), None, NOW, client_cap=1)
    assert store.start_session(make_session("b1", client_id="b"), None, NOW, client_cap=1).started
    assert store.start_session(make_session("a2", client_id="a"), None, NOW, client_cap=1).refused
    assert store.seats_in_use(NOW) == 2
    assert _live_ids(store, client_id="a") == ["a1"]


def test_view_sessions_are_never_capped_nor_counted(store: Store) -> None:
    view = make_session("v1", holds_seat=False, scope="view")
    assert store.start_session(view, 1, NOW, client_cap=0).started
    assert store.start_session(make_session("a1"), 1, NOW, client_cap=1).started
    second_view = make_session("v2", holds_seat=False, scope="view")
    outcome = store.start_session(second_view, 1, NOW, client_cap=1, replace_oldest=True)
    assert (outcome.started, outcome.replaced) == (True, ())
    assert sorted(_live_ids(store)) == ["a1", "v1", "v2"]


@pytest.mark.parametrize("replace_oldest", [False, True])
def test_cap_zero_refuses_every_seat(store: Store, replace_oldest: bool) -> None:
    store.start_session(make_session("a1"), None, NOW)
    outcome = store.start_session(
        make_session("a2"), None, NOW, client_cap=0, replace_oldest=replace_oldest
    )
    assert (outcome.started, outcome.refused, outcome.replaced) == (False, "client", ())
    assert _live_ids(store) == ["a1"]


def test_no_cap_means_no_limit_per_client(store: Store) -> None:
    for i in range(12):
        assert store.start_session(make_session(f"a{i}"), None, NOW, client_cap=None).started
    assert store.seats_in_use(NOW) == 12


def test_replace_oldest_ends_exactly_the_oldest_seat_holder(store: Store) -> None:
    oldest = make_session("a1", created_at=NOW)
    store.start_session(oldest, None, NOW)
    store.start_session(make_session("a2", created_at=NOW + 1), None, NOW)
    store.start_session(make_session("b1", client_id="b", created_at=NOW - 5), None, NOW)
    store.start_session(make_session("v1", holds_seat=False, created_at=NOW - 9), None, NOW)
    seq = store.revocation_seq()
    outcome = store.start_session(
        make_session("a3", created_at=NOW + 2), None, NOW + 3, client_cap=2, replace_oldest=True
    )
    assert (outcome.started, outcome.refused, outcome.replaced) == (True, None, (oldest,))
    assert store.get_session("a1", NOW + 3) is None
    assert store.find_refresh(oldest.refresh_hash, NOW + 3) is None
    assert sorted(_live_ids(store, NOW + 3)) == ["a2", "a3", "b1", "v1"]
    assert store.seats_in_use(NOW + 3) == 3
    revoked, new_seq = store.revocations_since(seq, NOW + 3)
    assert set(revoked) == {"a1"}
    assert revoked["a1"] >= oldest.expires_at
    assert new_seq > seq


def test_replace_oldest_orders_by_creation_not_by_insertion(store: Store) -> None:
    store.start_session(make_session("late", created_at=NOW + 5), None, NOW)
    early = make_session("early", created_at=NOW + 1)
    store.start_session(early, None, NOW)
    outcome = store.start_session(
        make_session("new", created_at=NOW + 9), None, NOW, client_cap=2, replace_oldest=True
    )
    assert outcome.replaced == (early,)
    assert sorted(_live_ids(store)) == ["late", "new"]


def test_replace_oldest_ends_as_many_as_needed_oldest_first(store: Store) -> None:
    # The cap was lowered after a1..a4 started: two must go to leave room for one more.
    olds = [make_session(f"a{i}", created_at=NOW + i) for i in range(1, 5)]
    for old in olds:
        store.start_session(old, None, NOW)
    outcome = store.start_session(
        make_session("a5", created_at=NOW + 5), None, NOW, client_cap=3, replace_oldest=True
    )
    assert outcome.started
    assert outcome.replaced == (olds[0], olds[1])
    assert _live_ids(store) == ["a3", "a4", "a5"]
    assert set(store.revocations_since(0, NOW)[0]) == {"a1", "a2"}


def test_replace_oldest_below_the_cap_replaces_nothing(store: Store) -> None:
    store.start_session(make_session("a1"), None, NOW)
    outcome = store.start_session(make_session("a2"), None, NOW, client_cap=2, replace_oldest=True)
    assert (outcome.started, outcome.replaced) == (True, ())
    assert store.revocations_since(0, NOW)[0] == {}


def test_replace_oldest_frees_the_pool_seat_it_takes(store: Store) -> None:
    # The client holds every seat of the pool: replacing its oldest makes room.
    store.start_session(make_session("a1", created_at=NOW), 2, NOW)
    store.start_session(make_session("a2", created_at=NOW + 1), 2, NOW)
    outcome = store.start_session(
        make_session("a3", created_at=NOW + 2), 2, NOW, client_cap=2, replace_oldest=True
    )
    assert outcome.started
    assert [s.session_id for s in outcome.replaced] == ["a1"]
    assert store.seats_in_use(NOW) == 2


def test_replace_oldest_under_the_cap_with_the_pool_full_is_refused_unchanged(
    store: Store,
) -> None:
    store.start_session(make_session("a1", client_id="a"), 2, NOW)
    store.start_session(make_session("b1", client_id="b"), 2, NOW)
    seq = store.revocation_seq()
    outcome = store.start_session(
        make_session("a2", client_id="a"), 2, NOW, client_cap=2, replace_oldest=True
    )
    assert (outcome.started, outcome.refused, outcome.replaced) == (False, "pool", ())
    assert sorted(_live_ids(store)) == ["a1", "b1"]
    assert store.revocation_seq() == seq


def test_refusal_changes_nothing(store: Store) -> None:
    store.start_session(make_session("a1"), None, NOW)
    store.start_session(make_session("v1", holds_seat=False), None, NOW)
    before = store.list_sessions(None, NOW)
    seq = store.revocation_seq()
    assert not store.start_session(make_session("a2"), None, NOW, client_cap=1)
    assert not store.start_session(make_session("b1", client_id="b"), 1, NOW)
    assert store.list_sessions(None, NOW) == before
    assert store.revocation_seq() == seq
    assert store.revocations_since(0, NOW)[0] == {}


def test_expired_sessions_do_not_count_against_the_cap(store: Store) -> None:
    store.start_session(make_session("old", expires_at=NOW + 10), None, NOW)
    outcome = store.start_session(
        make_session("new", expires_at=NOW + 10 + TTL), None, NOW + 10, client_cap=1
    )
    assert (outcome.started, outcome.replaced) == (True, ())
    assert _live_ids(store, NOW + 10) == ["new"]


def test_cap_counts_a_session_until_it_expired_by_the_skew(store: Store) -> None:
    store.start_session(make_session("old", expires_at=NOW + 10), None, NOW)
    early = store.start_session(
        make_session("s2", expires_at=NOW + 500), None, NOW + 20, skew=30, client_cap=1
    )
    assert early.refused == "client"
    later = store.start_session(
        make_session("s3", expires_at=NOW + 500), None, NOW + 40, skew=30, client_cap=1
    )
    assert (later.started, later.replaced) == (True, ())


def test_replace_oldest_never_reports_an_expired_session_as_replaced(store: Store) -> None:
    store.start_session(make_session("gone", created_at=NOW, expires_at=NOW + 10), None, NOW)
    store.start_session(make_session("live", created_at=NOW + 1, expires_at=NOW + 900), None, NOW)
    outcome = store.start_session(
        make_session("new", created_at=NOW + 20), None, NOW + 20, client_cap=1, replace_oldest=True
    )
    assert outcome.started
    assert [s.session_id for s in outcome.replaced] == ["live"]
    assert _live_ids(store, NOW + 20) == ["new"]


def test_earliest_seat_expiry_per_client(store: Store) -> None:
    store.start_session(make_session("a1", client_id="a", expires_at=NOW + 50), None, NOW)
    store.start_session(make_session("a2", client_id="a", expires_at=NOW + 30), None, NOW)
    store.start_session(make_session("b1", client_id="b", expires_at=NOW + 10), None, NOW)
    view = make_session("av", client_id="a", holds_seat=False, expires_at=NOW + 5)
    store.start_session(view, None, NOW)
    assert store.earliest_seat_expiry(NOW) == NOW + 10
    assert store.earliest_seat_expiry(NOW, "a") == NOW + 30
    assert store.earliest_seat_expiry(NOW, client_id="b") == NOW + 10
    assert store.earliest_seat_expiry(NOW, "nobody") is None
    # Once a2 expired, a1 is the client's first seat to free.
    assert store.earliest_seat_expiry(NOW + 30, "a") == NOW + 50


# -- across processes -------------------------------------------------------------------

_WORKERS = 3
_ATTEMPTS = 12
_CAP = 2


def _outcomes(
    reports: list[tuple[int, str, t.Any]],
) -> list[tuple[str, bool, str | None, list[str]]]:
    assert [status for _, status, _ in reports] == ["ok"] * _WORKERS, reports
    return [tuple(o) for _, _, outcomes in reports for o in outcomes]


@pytest.mark.slow
@pytest.mark.cross_process
def test_racing_processes_never_exceed_a_client_cap(
    store: Store, store_url_and_options: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = store_url_and_options
    reports = _workers.spawn(
        _WORKERS, _workers.race_capped_seats, url, options, _ATTEMPTS, _CAP, False, NOW
    )
    outcomes = _outcomes(reports)
    started = [sid for sid, ok, _, _ in outcomes if ok]
    assert len(started) == _CAP
    assert {refused for _, ok, refused, _ in outcomes if not ok} == {"client"}
    assert all(replaced == [] for _, _, _, replaced in outcomes)
    assert sorted(_live_ids(store, client_id="capped")) == sorted(started)


@pytest.mark.slow
@pytest.mark.cross_process
def test_racing_processes_replacing_the_oldest_keep_the_client_at_its_cap(
    store: Store, store_url_and_options: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = store_url_and_options
    reports = _workers.spawn(
        _WORKERS, _workers.race_capped_seats, url, options, _ATTEMPTS, _CAP, True, NOW
    )
    outcomes = _outcomes(reports)
    # With an unlimited pool and a cap of 2, every start succeeds by replacing.
    assert all(ok for _, ok, _, _ in outcomes), outcomes
    started = {sid for sid, _, _, _ in outcomes}
    replaced = [sid for _, _, _, ids in outcomes for sid in ids]
    # Each session ended at most once, and only one that had started.
    assert len(replaced) == len(set(replaced))
    assert set(replaced) <= started
    live = _live_ids(store, client_id="capped")
    assert len(live) == _CAP
    assert set(live) == started - set(replaced)
    assert store.seats_in_use(NOW) == _CAP
    assert set(store.revocations_since(0, NOW)[0]) == set(replaced)
