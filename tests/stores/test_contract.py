"""The ``Store`` contract (``flask_tokenguard/stores/base.py``), run on every backend.

Written against the ``store`` fixture only. Time is always an explicit ``now``; nothing
sleeps. A backend-specific quirk belongs in ``test_<backend>.py`` instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import typing as t
from pathlib import Path

import pytest

from flask_tokenguard.errors import ConflictError
from flask_tokenguard.models import AdminSession
from flask_tokenguard.models import Client
from flask_tokenguard.models import TokenSession
from flask_tokenguard.models import User
from flask_tokenguard.stores.base import Store
from tests.stores import _workers
from tests.stores.records import make_client
from tests.stores.records import make_key
from tests.stores.records import make_session
from tests.stores.records import NOW
from tests.stores.records import TTL

# -- lifecycle -------------------------------------------------------------------------


def test_check_passes_on_a_reachable_store(store: Store) -> None:
    assert store.check() is None


def test_store_works_again_after_close(store: Store) -> None:
    store.create_client(make_client("app"))
    store.close()
    assert store.get_client("app") == make_client("app")


def test_reset_deletes_every_record(store: Store) -> None:
    store.create_client(make_client("app"))
    store.create_user(User("alice", "pw-hash", NOW))
    store.start_session(make_session("s1"), None, NOW)
    store.revoke("jti-1", NOW + 60, NOW)
    store.ensure_signing_key(make_key("k1"))
    store.claim_once("demo")
    store.start_admin_session(AdminSession("ab" * 32, "root", NOW, NOW + 60))
    store.add_event({"time": "1", "event": "login"})
    store.reset()
    assert store.list_clients() == []
    assert store.list_users() == []
    assert store.list_sessions(None, NOW) == []
    assert store.revocations_since(0, NOW)[0] == {}
    assert store.signing_keys(NOW) == []
    assert store.claim_once("demo") is True
    assert store.touch_admin_session("ab" * 32, NOW, NOW + 60) is None
    assert store.recent_events() == []


# -- one-time claims -------------------------------------------------------------------


def test_claim_once_is_true_only_the_first_time(store: Store) -> None:
    assert store.claim_once("demo-client") is True
    assert store.claim_once("demo-client") is False


def test_claims_with_different_names_are_independent(store: Store) -> None:
    assert store.claim_once("a") is True
    assert store.claim_once("b") is True


# -- signing keys ----------------------------------------------------------------------


def test_ensure_signing_key_stores_the_candidate_if_empty(store: Store) -> None:
    assert store.ensure_signing_key(make_key("k1")) == [make_key("k1")]


def test_ensure_signing_key_keeps_the_first_candidate_only(store: Store) -> None:
    store.ensure_signing_key(make_key("k1"))
    assert store.ensure_signing_key(make_key("k2", NOW + 1)) == [make_key("k1")]


def test_signing_keys_round_trip_every_field(store: Store) -> None:
    key = make_key("k1", NOW + 0.25)
    store.ensure_signing_key(key)
    (stored,) = store.signing_keys(NOW)
    assert stored == key
    assert stored.private_pem == key.private_pem


def test_add_signing_key_retires_the_others_at_the_given_time(store: Store) -> None:
    store.ensure_signing_key(make_key("k1"))
    store.add_signing_key(make_key("k2", NOW + 10), retire_others_at=NOW + 100)
    assert store.signing_keys(NOW + 10) == [
        make_key("k1", retire_at=NOW + 100),
        make_key("k2", NOW + 10),
    ]


def test_add_signing_key_keeps_an_earlier_retirement(store: Store) -> None:
    store.ensure_signing_key(make_key("k1"))
    store.add_signing_key(make_key("k2", NOW + 10), retire_others_at=NOW + 100)
    store.add_signing_key(make_key("k3", NOW + 20), retire_others_at=NOW + 200)
    retire_at = {k.kid: k.retire_at for k in store.signing_keys(NOW + 20)}
    assert retire_at == {"k1": NOW + 100, "k2": NOW + 200, "k3": None}


def test_signing_keys_are_listed_oldest_first(store: Store) -> None:
    store.ensure_signing_key(make_key("k-b", NOW))
    store.add_signing_key(make_key("k-a", NOW + 5), retire_others_at=NOW + 100)
    assert [k.kid for k in store.signing_keys(NOW + 5)] == ["k-b", "k-a"]


def test_signing_keys_drops_keys_once_retired(store: Store) -> None:
    store.ensure_signing_key(make_key("k1"))
    store.add_signing_key(make_key("k2", NOW + 10), retire_others_at=NOW + 100)
    assert [k.kid for k in store.signing_keys(NOW + 100)] == ["k2"]
    # Dropped for good, not just filtered out of one answer.
    assert [k.kid for k in store.signing_keys(NOW + 50)] == ["k2"]


def test_signing_keys_keeps_a_retired_key_until_its_retire_at(store: Store) -> None:
    store.ensure_signing_key(make_key("k1"))
    store.add_signing_key(make_key("k2", NOW + 10), retire_others_at=NOW + 100)
    assert [k.kid for k in store.signing_keys(NOW + 99.5)] == ["k1", "k2"]


# -- clients ---------------------------------------------------------------------------


def test_client_round_trips_every_field(store: Store) -> None:
    client = Client(
        client_id="reporting",
        name="Reporting – nightly",
        secret_hash="ab" * 32,
        alias="reports",
        grants=("client_credentials", "password", "refresh_token"),
        scopes=("view",),
        enabled=False,
        created_at=NOW + 0.125,
        max_seats=7,
    )
    store.create_client(client)
    stored = store.get_client("reporting")
    assert stored == client
    assert stored is not None and stored.secret_hash == client.secret_hash


def test_public_client_round_trips_without_secret(store: Store) -> None:
    grants = ("password", "refresh_token")
    client = make_client("mobile", secret_hash=None, grants=grants)
    store.create_client(client)
    stored = store.get_client("mobile")
    assert stored == client
    assert stored is not None and stored.is_public


def test_client_with_no_grants_or_scopes_round_trips(store: Store) -> None:
    client = make_client("bare", grants=(), scopes=())
    store.create_client(client)
    assert store.get_client("bare") == client


def test_get_client_finds_a_client_by_alias(store: Store) -> None:
    store.create_client(make_client("app", alias="legacy-name"))
    assert store.get_client("legacy-name") == make_client("app", alias="legacy-name")


def test_get_client_returns_none_for_an_unknown_name(store: Store) -> None:
    store.create_client(make_client("app", alias="other"))
    assert store.get_client("nobody") is None


def test_create_client_with_a_taken_id_conflicts(store: Store) -> None:
    store.create_client(make_client("app"))
    with pytest.raises(ConflictError):
        store.create_client(make_client("app", name="Second"))
    assert store.get_client("app") == make_client("app")


def test_create_client_whose_id_is_an_existing_alias_conflicts(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    with pytest.raises(ConflictError):
        store.create_client(make_client("shop"))
    assert [c.client_id for c in store.list_clients()] == ["app"]


def test_create_client_whose_alias_is_an_existing_id_conflicts(store: Store) -> None:
    store.create_client(make_client("app"))
    with pytest.raises(ConflictError):
        store.create_client(make_client("other", alias="app"))
    assert store.get_client("other") is None


def test_create_client_whose_alias_is_an_existing_alias_conflicts(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    with pytest.raises(ConflictError):
        store.create_client(make_client("other", alias="shop"))
    assert store.get_client("other") is None


def test_update_client_replaces_the_record(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    updated = make_client(
        "app",
        alias="store",
        name="Renamed",
        secret_hash="new",
        scopes=("view",),
        enabled=False,
    )
    assert store.update_client(updated) is True
    assert store.get_client("app") == updated
    assert store.get_client("store") == updated
    assert store.get_client("shop") is None


def test_update_client_may_remove_the_alias(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    store.update_client(make_client("app"))
    assert store.get_client("shop") is None


def test_update_client_returns_false_for_an_unknown_client(store: Store) -> None:
    assert store.update_client(make_client("ghost")) is False
    assert store.get_client("ghost") is None


def test_update_client_keeping_its_own_alias_is_no_conflict(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    renamed = make_client("app", alias="shop", name="New name")
    assert store.update_client(renamed) is True


def test_update_client_to_an_alias_that_is_another_id_conflicts(store: Store) -> None:
    store.create_client(make_client("app"))
    store.create_client(make_client("other"))
    with pytest.raises(ConflictError):
        store.update_client(make_client("other", alias="app"))
    assert store.get_client("other") == make_client("other")


def test_update_client_to_an_alias_of_another_client_conflicts(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    store.create_client(make_client("other"))
    with pytest.raises(ConflictError):
        store.update_client(make_client("other", alias="shop"))
    assert store.get_client("shop") == make_client("app", alias="shop")


def test_delete_client_removes_id_and_alias(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    assert store.delete_client("app") is True
    assert store.get_client("app") is None
    assert store.get_client("shop") is None


def test_delete_client_returns_false_for_an_unknown_client(store: Store) -> None:
    assert store.delete_client("ghost") is False


def test_deleted_client_frees_its_id_and_alias(store: Store) -> None:
    store.create_client(make_client("app", alias="shop"))
    store.delete_client("app")
    store.create_client(make_client("shop", alias="app"))
    assert store.get_client("app") == make_client("shop", alias="app")


def test_delete_client_keeps_its_sessions(store: Store) -> None:
    store.create_client(make_client("app"))
    store.start_session(make_session("s1", client_id="app"), None, NOW)
    store.delete_client("app")
    assert store.get_session("s1", NOW) == make_session("s1", client_id="app")


def test_list_clients_orders_by_creation_time(store: Store) -> None:
    store.create_client(make_client("b-late", created_at=NOW + 2))
    store.create_client(make_client("c-early", created_at=NOW))
    store.create_client(make_client("a-middle", created_at=NOW + 1))
    ids = [c.client_id for c in store.list_clients()]
    assert ids == ["c-early", "a-middle", "b-late"]


# -- users -----------------------------------------------------------------------------


def test_user_round_trips_every_field(store: Store) -> None:
    user = User("alice", "scrypt$16384$8$1$salt$hash", NOW + 0.5, admin=True)
    store.create_user(user)
    stored = store.get_user("alice")
    assert stored == user
    assert stored is not None and stored.password_hash == user.password_hash


def test_get_user_returns_none_for_an_unknown_name(store: Store) -> None:
    assert store.get_user("nobody") is None


def test_create_user_with_a_taken_name_conflicts(store: Store) -> None:
    store.create_user(User("alice", "first", NOW))
    with pytest.raises(ConflictError):
        store.create_user(User("alice", "second", NOW))
    assert store.get_user("alice") == User("alice", "first", NOW)


def test_update_user_replaces_the_record(store: Store) -> None:
    store.create_user(User("alice", "old", NOW))
    assert store.update_user(User("alice", "new", NOW)) is True
    assert store.get_user("alice") == User("alice", "new", NOW)


def test_update_user_returns_false_for_an_unknown_user(store: Store) -> None:
    assert store.update_user(User("ghost", "pw", NOW)) is False
    assert store.get_user("ghost") is None


def test_delete_user_removes_the_user(store: Store) -> None:
    store.create_user(User("alice", "pw", NOW))
    assert store.delete_user("alice") is True
    assert store.get_user("alice") is None


def test_delete_user_returns_false_for_an_unknown_user(store: Store) -> None:
    assert store.delete_user("ghost") is False


def test_list_users_orders_by_name(store: Store) -> None:
    for name in ("carol", "alice", "bob"):
        store.create_user(User(name, "pw", NOW))
    assert [u.username for u in store.list_users()] == ["alice", "bob", "carol"]


# -- sessions and seats ----------------------------------------------------------------


def test_session_round_trips_every_field(store: Store) -> None:
    session = TokenSession(
        session_id="s-full",
        client_id="app",
        subject="alice@example.org",
        scope="view all",
        holds_seat=False,
        refresh_hash="cd" * 32,
        created_at=NOW + 0.25,
        expires_at=NOW + TTL + 0.75,
    )
    assert store.start_session(session, None, NOW).started is True
    stored = store.get_session("s-full", NOW)
    assert stored == session
    assert stored is not None and stored.refresh_hash == session.refresh_hash


def test_start_session_grants_seats_up_to_the_limit(store: Store) -> None:
    results = [store.start_session(make_session(f"s{i}"), 3, NOW).started for i in range(3)]
    assert results == [True] * 3
    assert store.seats_in_use(NOW) == 3


def test_start_session_refuses_a_seat_at_the_limit(store: Store) -> None:
    for i in range(2):
        store.start_session(make_session(f"s{i}"), 2, NOW)
    assert store.start_session(make_session("late"), 2, NOW).started is False
    assert store.get_session("late", NOW) is None
    assert store.seats_in_use(NOW) == 2


def test_seat_limit_zero_refuses_every_seat(store: Store) -> None:
    assert store.start_session(make_session("s1"), 0, NOW).started is False


def test_seat_limit_none_is_unlimited(store: Store) -> None:
    results = [store.start_session(make_session(f"s{i}"), None, NOW) for i in range(25)]
    assert all(r.started for r in results)
    assert store.seats_in_use(NOW) == 25


def test_sessions_without_a_seat_ignore_the_limit(store: Store) -> None:
    store.start_session(make_session("seat"), 1, NOW)
    view = make_session("view", holds_seat=False, scope="view")
    assert store.start_session(view, 1, NOW).started is True
    assert store.get_session("view", NOW) == view


def test_sessions_without_a_seat_are_not_counted(store: Store) -> None:
    store.start_session(make_session("view", holds_seat=False), 1, NOW)
    assert store.seats_in_use(NOW) == 0
    assert store.start_session(make_session("seat"), 1, NOW).started is True


def test_expired_sessions_do_not_hold_seats(store: Store) -> None:
    store.start_session(make_session("old", expires_at=NOW + 10), 1, NOW)
    assert store.seats_in_use(NOW + 10) == 0
    assert store.start_session(make_session("new"), 1, NOW + 10).started is True


def test_start_session_sweeps_expired_sessions(store: Store) -> None:
    store.start_session(make_session("old", expires_at=NOW + 10), None, NOW)
    new = make_session("new", created_at=NOW + 20, expires_at=NOW + 500)
    store.start_session(new, None, NOW + 20)
    # Asked with an earlier ``now``, a session that was only hidden would reappear.
    assert store.get_session("old", NOW) is None
    assert store.find_refresh("hash-old", NOW) is None


def test_start_session_sweeps_used_hashes_of_expired_sessions(store: Store) -> None:
    store.start_session(make_session("old", expires_at=NOW + 10), None, NOW)
    store.rotate_refresh("old", "hash-old", "hash-old-2", NOW + 15, NOW + 5)
    store.start_session(make_session("new", expires_at=NOW + 500), None, NOW + 20)
    assert store.find_refresh("hash-old", NOW) is None


def test_seats_in_use_counts_only_live_seat_holders(store: Store) -> None:
    store.start_session(make_session("short", expires_at=NOW + 10), None, NOW)
    store.start_session(make_session("long", expires_at=NOW + 100), None, NOW)
    store.start_session(make_session("view", holds_seat=False), None, NOW)
    assert store.seats_in_use(NOW) == 2
    assert store.seats_in_use(NOW + 10) == 1
    assert store.seats_in_use(NOW + 100) == 0


def test_earliest_seat_expiry_is_none_without_seats(store: Store) -> None:
    store.start_session(make_session("view", holds_seat=False), None, NOW)
    assert store.earliest_seat_expiry(NOW) is None


def test_earliest_seat_expiry_is_the_first_live_seat_to_expire(store: Store) -> None:
    view = make_session("view", holds_seat=False, expires_at=NOW + 5)
    store.start_session(view, None, NOW)
    store.start_session(make_session("a", expires_at=NOW + 10), None, NOW)
    store.start_session(make_session("b", expires_at=NOW + 30), None, NOW)
    store.start_session(make_session("c", expires_at=NOW + 20), None, NOW)
    assert store.earliest_seat_expiry(NOW) == NOW + 10
    assert store.earliest_seat_expiry(NOW + 10) == NOW + 20


def test_get_session_returns_none_once_expired(store: Store) -> None:
    store.start_session(make_session("s1", expires_at=NOW + 60), None, NOW)
    assert store.get_session("s1", NOW + 59.9) is not None
    assert store.get_session("s1", NOW + 60) is None


def test_get_session_returns_none_for_an_unknown_id(store: Store) -> None:
    assert store.get_session("ghost", NOW) is None


def test_list_sessions_orders_live_sessions_by_creation(store: Store) -> None:
    store.start_session(make_session("b", created_at=NOW + 2), None, NOW)
    store.start_session(make_session("c", created_at=NOW), None, NOW)
    store.start_session(make_session("a", created_at=NOW + 1), None, NOW)
    assert [s.session_id for s in store.list_sessions(None, NOW)] == ["c", "a", "b"]


def test_list_sessions_filters_by_client(store: Store) -> None:
    store.start_session(make_session("s1", client_id="app"), None, NOW)
    store.start_session(make_session("s2", client_id="other"), None, NOW)
    assert store.list_sessions("other", NOW) == [make_session("s2", client_id="other")]


def test_list_sessions_leaves_out_expired_sessions(store: Store) -> None:
    store.start_session(make_session("short", expires_at=NOW + 10), None, NOW)
    store.start_session(make_session("long", expires_at=NOW + 100), None, NOW)
    assert [s.session_id for s in store.list_sessions(None, NOW + 10)] == ["long"]


# -- refresh tokens --------------------------------------------------------------------


def test_find_refresh_finds_the_current_hash(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    assert store.find_refresh("hash-s1", NOW) == (make_session("s1"), True)


def test_find_refresh_reports_a_used_hash_as_not_current(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    updated = store.rotate_refresh("s1", "hash-s1", "next", NOW + TTL + 5, NOW + 5)
    assert store.find_refresh("hash-s1", NOW + 6) == (updated, False)


def test_find_refresh_returns_none_for_an_unknown_hash(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    assert store.find_refresh("never-issued", NOW) is None


def test_find_refresh_returns_none_for_an_expired_session(store: Store) -> None:
    store.start_session(make_session("s1", expires_at=NOW + 10), None, NOW)
    assert store.find_refresh("hash-s1", NOW + 10) is None


def test_rotate_refresh_swaps_the_hash_and_extends_the_session(store: Store) -> None:
    store.start_session(make_session("s1", expires_at=NOW + 100), None, NOW)
    updated = store.rotate_refresh("s1", "hash-s1", "next", NOW + 150, NOW + 50)
    expected = make_session("s1", refresh_hash="next", expires_at=NOW + 150)
    assert updated == expected
    assert store.get_session("s1", NOW + 120) == expected
    assert store.find_refresh("next", NOW + 50) == (expected, True)


def test_rotate_refresh_fails_with_a_stale_hash(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    store.rotate_refresh("s1", "hash-s1", "hash-s1-b", NOW + TTL, NOW)
    stale = store.rotate_refresh("s1", "hash-s1", "other", NOW + TTL + 9, NOW + 1)
    assert stale is None
    stored = store.get_session("s1", NOW + 1)
    assert stored is not None
    assert (stored.refresh_hash, stored.expires_at) == ("hash-s1-b", NOW + TTL)


def test_rotate_refresh_fails_on_an_expired_session(store: Store) -> None:
    store.start_session(make_session("s1", expires_at=NOW + 10), None, NOW)
    late = store.rotate_refresh("s1", "hash-s1", "next", NOW + 100, NOW + 10)
    assert late is None
    assert store.get_session("s1", NOW + 50) is None


def test_rotate_refresh_fails_on_an_unknown_session(store: Store) -> None:
    assert store.rotate_refresh("ghost", "a", "b", NOW + 100, NOW) is None


def test_rotate_refresh_keeps_the_seat(store: Store) -> None:
    store.start_session(make_session("s1"), 1, NOW)
    store.rotate_refresh("s1", "hash-s1", "hash-s1-b", NOW + TTL + 60, NOW + 60)
    assert store.seats_in_use(NOW + TTL + 30) == 1
    assert store.start_session(make_session("s2"), 1, NOW + 61).started is False


# -- ending sessions -------------------------------------------------------------------


def test_end_session_returns_the_ended_session(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    assert store.end_session("s1", NOW + 1) == make_session("s1")
    assert store.get_session("s1", NOW + 1) is None


def test_end_session_returns_none_for_an_unknown_session(store: Store) -> None:
    assert store.end_session("ghost", NOW) is None


def test_end_session_frees_its_seat(store: Store) -> None:
    store.start_session(make_session("s1"), 1, NOW)
    store.end_session("s1", NOW + 1)
    assert store.seats_in_use(NOW + 1) == 0
    assert store.start_session(make_session("s2"), 1, NOW + 1).started is True


def test_end_session_forgets_its_refresh_hashes(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)
    store.rotate_refresh("s1", "hash-s1", "hash-s1-b", NOW + TTL, NOW)
    store.end_session("s1", NOW + 1)
    assert store.find_refresh("hash-s1", NOW + 1) is None
    assert store.find_refresh("hash-s1-b", NOW + 1) is None


def test_end_session_records_the_session_as_revoked(store: Store) -> None:
    store.start_session(make_session("s1", expires_at=NOW + 100), None, NOW)
    before = store.revocation_seq()
    store.end_session("s1", NOW + 1)
    assert store.revocation_seq() > before
    entries, seq = store.revocations_since(0, NOW + 1)
    assert entries == {"s1": NOW + 100}
    assert seq == store.revocation_seq()


def test_end_sessions_of_one_client_leaves_the_others(store: Store) -> None:
    store.start_session(make_session("a1", client_id="a"), None, NOW)
    store.start_session(make_session("a2", client_id="a"), None, NOW)
    store.start_session(make_session("b1", client_id="b"), None, NOW)
    assert store.end_sessions("a", NOW + 1) == 2
    assert [s.session_id for s in store.list_sessions(None, NOW + 1)] == ["b1"]


def test_end_sessions_of_every_client(store: Store) -> None:
    store.start_session(make_session("a1", client_id="a"), 5, NOW)
    store.start_session(make_session("b1", client_id="b"), 5, NOW)
    assert store.end_sessions(None, NOW + 1) == 2
    assert store.list_sessions(None, NOW + 1) == []
    assert store.seats_in_use(NOW + 1) == 0


def test_end_sessions_revokes_every_ended_id(store: Store) -> None:
    store.start_session(make_session("a1", client_id="a"), None, NOW)
    store.start_session(make_session("a2", client_id="a"), None, NOW)
    seq = store.revocation_seq()
    store.end_sessions("a", NOW + 1)
    assert set(store.revocations_since(seq, NOW + 1)[0]) == {"a1", "a2"}


def test_end_sessions_counts_zero_without_sessions(store: Store) -> None:
    assert store.end_sessions("nobody", NOW) == 0


# -- revocation ------------------------------------------------------------------------


def test_revoke_lists_the_token_id(store: Store) -> None:
    store.revoke("jti-1", NOW + 300, NOW)
    assert store.revocations_since(0, NOW)[0] == {"jti-1": NOW + 300}


def test_revocation_seq_grows_with_each_revocation(store: Store) -> None:
    first = store.revocation_seq()
    store.revoke("jti-1", NOW + 300, NOW)
    second = store.revocation_seq()
    store.revoke("jti-2", NOW + 300, NOW)
    assert first < second < store.revocation_seq()


def test_revocations_since_returns_only_newer_entries(store: Store) -> None:
    store.revoke("jti-1", NOW + 300, NOW)
    seq = store.revocation_seq()
    store.revoke("jti-2", NOW + 300, NOW)
    assert store.revocations_since(seq, NOW)[0] == {"jti-2": NOW + 300}


def test_revocations_since_returns_the_current_seq(store: Store) -> None:
    store.revoke("jti-1", NOW + 300, NOW)
    store.revoke("jti-2", NOW + 300, NOW)
    assert store.revocations_since(0, NOW)[1] == store.revocation_seq()


def test_revocations_since_the_current_seq_is_empty(store: Store) -> None:
    store.revoke("jti-1", NOW + 300, NOW)
    assert store.revocations_since(store.revocation_seq(), NOW)[0] == {}


def test_revocations_leave_out_expired_entries(store: Store) -> None:
    store.revoke("short", NOW + 10, NOW)
    store.revoke("long", NOW + 100, NOW)
    assert store.revocations_since(0, NOW + 10)[0] == {"long": NOW + 100}


# -- lockout counters ------------------------------------------------------------------

WINDOW = 300.0


def test_record_failure_counts_failures_within_the_window(store: Store) -> None:
    assert store.record_failure("user:alice", WINDOW, NOW) == (1, NOW + WINDOW)
    assert store.record_failure("user:alice", WINDOW, NOW + 10) == (2, NOW + WINDOW)
    assert store.record_failure("user:alice", WINDOW, NOW + 20) == (3, NOW + WINDOW)


def test_record_failure_keeps_the_window_of_its_first_failure(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    # A later call's window does not move ``until``, longer or shorter.
    assert store.record_failure("user:alice", 10 * WINDOW, NOW + 1) == (2, NOW + WINDOW)
    assert store.record_failure("user:alice", 1.0, NOW + 2) == (3, NOW + WINDOW)


def test_failures_reports_the_count_and_until(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    store.record_failure("user:alice", WINDOW, NOW + 1)
    assert store.failures("user:alice", NOW + 2) == (2, NOW + WINDOW)


def test_failures_is_zero_for_an_unknown_key(store: Store) -> None:
    assert store.failures("user:nobody", NOW) == (0, 0.0)


def test_failures_is_zero_once_until_is_reached(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    assert store.failures("user:alice", NOW + WINDOW - 0.5) == (1, NOW + WINDOW)
    assert store.failures("user:alice", NOW + WINDOW) == (0, 0.0)
    assert store.failures("user:alice", NOW + 2 * WINDOW) == (0, 0.0)


def test_record_failure_restarts_at_until(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    store.record_failure("user:alice", WINDOW, NOW + 1)
    later = NOW + WINDOW
    assert store.record_failure("user:alice", WINDOW, later) == (1, later + WINDOW)
    assert store.failures("user:alice", later) == (1, later + WINDOW)


def test_record_failure_restarts_long_after_until(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    later = NOW + 10 * WINDOW
    assert store.record_failure("user:alice", 60.0, later) == (1, later + 60.0)
    assert store.record_failure("user:alice", 60.0, later + 1) == (2, later + 60.0)


def test_until_keeps_fractional_seconds(store: Store) -> None:
    now = NOW + 0.123456
    assert store.record_failure("user:alice", 0.5, now) == (1, now + 0.5)
    assert store.failures("user:alice", now) == (1, now + 0.5)


def test_clear_failures_resets_the_count(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    store.record_failure("user:alice", WINDOW, NOW + 1)
    store.clear_failures("user:alice")
    assert store.failures("user:alice", NOW + 2) == (0, 0.0)
    assert store.record_failure("user:alice", WINDOW, NOW + 3) == (1, NOW + 3 + WINDOW)


def test_clear_failures_of_an_unknown_key_does_nothing(store: Store) -> None:
    assert store.clear_failures("user:nobody") is None
    assert store.failures("user:nobody", NOW) == (0, 0.0)


def test_failure_keys_are_independent(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    store.record_failure("user:alice", WINDOW, NOW)
    store.record_failure("user:bob", WINDOW, NOW + 5)
    store.clear_failures("user:bob")
    assert store.failures("user:alice", NOW + 5) == (2, NOW + WINDOW)
    assert store.failures("user:bob", NOW + 5) == (0, 0.0)


def test_failure_keys_may_hold_unicode_and_spaces(store: Store) -> None:
    keys = [
        "user:Zoë O'Brien",
        "user:山田 太郎",
        "user:emoji 😀 \\ {tag} * ? [x]",
        "user:" + "é" * 300,
    ]
    for i, key in enumerate(keys):
        for _ in range(i + 1):
            store.record_failure(key, WINDOW, NOW)
    assert [store.failures(key, NOW)[0] for key in keys] == [1, 2, 3, 4]
    store.clear_failures(keys[1])
    assert [store.failures(key, NOW)[0] for key in keys] == [1, 0, 3, 4]


def test_failure_keys_compare_exactly(store: Store) -> None:
    # Case, trailing spaces and Unicode normalization all make different keys (SQL
    # collations may ignore some of them).
    keys = ["user:bob", "user:Bob", "user:bob ", "user:e\u0301", "user:\u00e9"]
    for i, key in enumerate(keys):
        for _ in range(i + 1):
            store.record_failure(key, WINDOW, NOW)
    assert [store.failures(key, NOW)[0] for key in keys] == [1, 2, 3, 4, 5]


def test_reset_clears_failures(store: Store) -> None:
    store.record_failure("user:alice", WINDOW, NOW)
    store.reset()
    assert store.failures("user:alice", NOW) == (0, 0.0)
    assert store.record_failure("user:alice", WINDOW, NOW) == (1, NOW + WINDOW)


# -- concurrency -----------------------------------------------------------------------


def _run_threads(count: int, target: t.Callable[[int], t.Any]) -> list[t.Any]:
    """Run ``target(i)`` in ``count`` threads released at once; return the results."""
    barrier = threading.Barrier(count)
    results: list[t.Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


def test_racing_threads_never_over_allocate_seats(store: Store) -> None:
    def start(i: int) -> bool:
        return store.start_session(make_session(f"t{i}"), 5, NOW).started

    results = _run_threads(32, start)
    assert results.count(True) == 5
    assert store.seats_in_use(NOW) == 5


def test_racing_refreshes_of_one_token_have_one_winner(store: Store) -> None:
    store.start_session(make_session("s1"), None, NOW)

    def refresh(i: int) -> TokenSession | None:
        return store.rotate_refresh("s1", "hash-s1", f"next-{i}", NOW + TTL, NOW + 1)

    results = _run_threads(16, refresh)
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert store.find_refresh(winners[0].refresh_hash, NOW + 1) == (winners[0], True)
    assert store.find_refresh("hash-s1", NOW + 1) == (winners[0], False)


def test_racing_failures_of_one_key_count_each_once(store: Store) -> None:
    def fail(i: int) -> tuple[int, float]:
        return store.record_failure("user:alice", WINDOW, NOW)

    results = _run_threads(16, fail)
    assert sorted(results) == [(count, NOW + WINDOW) for count in range(1, 17)]
    assert store.failures("user:alice", NOW) == (16, NOW + WINDOW)


@pytest.mark.slow
@pytest.mark.cross_process
def test_racing_processes_never_over_allocate_seats(
    store: Store, store_url_and_options: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = store_url_and_options
    reports = _workers.spawn(6, _workers.race_seats, url, options, 20, 5, NOW)
    assert [status for _, status, _ in reports] == ["ok"] * 6, reports
    assert sum(granted for _, _, granted in reports) == 5
    assert store.seats_in_use(NOW) == 5


@pytest.mark.slow
@pytest.mark.cross_process
def test_processes_opening_a_new_store_agree_on_one_signing_key(
    store_url_and_options: tuple[str, dict[str, t.Any]],
    open_store: t.Callable[..., t.ContextManager[Store]],
) -> None:
    url, options = store_url_and_options
    reports = _workers.spawn(6, _workers.open_and_ensure_key, url, options, NOW)
    # Opened here only afterwards, so the workers found no schema, file or keys. This
    # also skips when the server is down, and drops the per-run schema.
    with open_store(url, options, reset=False) as store:
        stored = [k.kid for k in store.signing_keys(NOW)]
    assert [status for _, status, _ in reports] == ["ok"] * 6, reports
    assert len(stored) == 1
    assert [kids for _, _, kids in reports] == [stored] * 6


@pytest.mark.slow
@pytest.mark.parametrize("store_id", ["sqlite", "sqlite+pysqlite"])
def test_processes_opening_new_sqlite_files_at_once_all_succeed(
    store_id: str, tmp_path: Path
) -> None:
    # The stress form of the test above, for the file stores: switching a new file to
    # WAL fails at once ("database is locked", without the busy handler) while another
    # process holds a lock on it, and the store must wait that out. One spawn, several
    # rounds of fresh files, to keep it fast.
    url = f"{store_id}:///{tmp_path / 'round-{round}.sqlite3'}"
    rounds = 10
    reports = _workers.spawn(8, _workers.open_fresh_stores, url, {}, rounds, NOW)
    assert [status for _, status, _ in reports] == ["ok"] * 8, reports
    for round_ in range(rounds):
        kids = {tuple(per_round[round_]) for _, _, per_round in reports}
        assert len(kids) == 1, (round_, kids)
        assert len(next(iter(kids))) == 1
        with contextlib.closing(sqlite3.connect(tmp_path / f"round-{round_}.sqlite3")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
