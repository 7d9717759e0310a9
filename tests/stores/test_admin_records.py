"""Admin console sessions, recent security events, client caps and admin users, every backend."""

from __future__ import annotations

import dataclasses

import pytest

from flask_tokenguard.models import AdminSession
from flask_tokenguard.models import User
from flask_tokenguard.stores.base import Store
from tests.stores.records import make_client
from tests.stores.records import NOW

ADMIN_TTL = 600.0


def make_admin(session_hash: str = "ab" * 32, **fields: object) -> AdminSession:
    fields.setdefault("username", "root")
    fields.setdefault("created_at", NOW)
    fields.setdefault("expires_at", NOW + ADMIN_TTL)
    return AdminSession(session_hash=session_hash, **fields)  # type: ignore[arg-type]


# -- admin sessions ----------------------------------------------------------------------


def test_touch_admin_session_returns_it_with_the_new_expiry(store: Store) -> None:
    admin = make_admin(created_at=NOW + 0.5)
    store.start_admin_session(admin)
    touched = store.touch_admin_session(admin.session_hash, NOW + 100, NOW + 100 + ADMIN_TTL)
    assert touched == dataclasses.replace(admin, expires_at=NOW + 100 + ADMIN_TTL)


def test_touch_extends_the_admin_session(store: Store) -> None:
    admin = make_admin()
    store.start_admin_session(admin)
    store.touch_admin_session(admin.session_hash, NOW + 500, NOW + 500 + ADMIN_TTL)
    # Past the first expiry, alive thanks to the touch.
    again = store.touch_admin_session(admin.session_hash, NOW + 900, NOW + 900 + ADMIN_TTL)
    assert again is not None
    assert again.expires_at == NOW + 900 + ADMIN_TTL


def test_touch_with_an_unchanged_expiry_keeps_the_session(store: Store) -> None:
    # Two requests in the same instant: the second changes nothing, and must not be
    # taken for a miss (MySQL counts changed rows unless asked for matched ones).
    admin = make_admin()
    store.start_admin_session(admin)
    assert store.touch_admin_session(admin.session_hash, NOW, admin.expires_at) == admin
    assert store.touch_admin_session(admin.session_hash, NOW, admin.expires_at) == admin
    assert store.end_admin_session(admin.session_hash) == admin


def test_expired_admin_session_is_none_and_gone(store: Store) -> None:
    admin = make_admin()
    store.start_admin_session(admin)
    assert (
        store.touch_admin_session(admin.session_hash, NOW + ADMIN_TTL, NOW + 2 * ADMIN_TTL) is None
    )
    # Deleted: a touch with an earlier clock or an end finds nothing.
    assert store.touch_admin_session(admin.session_hash, NOW, NOW + ADMIN_TTL) is None
    assert store.end_admin_session(admin.session_hash) is None


def test_touch_of_an_unknown_admin_session_is_none(store: Store) -> None:
    assert store.touch_admin_session("cd" * 32, NOW, NOW + ADMIN_TTL) is None
    assert store.touch_admin_session("x" * 300, NOW, NOW + ADMIN_TTL) is None


def test_end_admin_session_returns_it_and_ends_it(store: Store) -> None:
    admin = make_admin()
    store.start_admin_session(admin)
    assert store.end_admin_session(admin.session_hash) == admin
    assert store.touch_admin_session(admin.session_hash, NOW, NOW + ADMIN_TTL) is None
    assert store.end_admin_session(admin.session_hash) is None


def test_end_admin_session_returns_an_expired_one_too(store: Store) -> None:
    admin = make_admin(expires_at=NOW + 1)
    store.start_admin_session(admin)
    assert store.end_admin_session(admin.session_hash) == admin


def test_admin_sessions_are_isolated_by_hash(store: Store) -> None:
    first = make_admin("11" * 32, username="root")
    second = make_admin("22" * 32, username="ops")
    store.start_admin_session(first)
    store.start_admin_session(second)
    assert store.end_admin_session(first.session_hash) == first
    touched = store.touch_admin_session(second.session_hash, NOW, NOW + ADMIN_TTL + 5)
    assert touched == dataclasses.replace(second, expires_at=NOW + ADMIN_TTL + 5)
    # A hash that differs only in case is another session.
    assert store.touch_admin_session(second.session_hash.upper() + "X", NOW, NOW + 1) is None


def test_start_admin_session_with_a_taken_hash_overwrites(store: Store) -> None:
    store.start_admin_session(make_admin(username="root"))
    store.start_admin_session(make_admin(username="ops"))
    ended = store.end_admin_session(make_admin().session_hash)
    assert ended is not None and ended.username == "ops"


def test_reset_deletes_admin_sessions_and_events(store: Store) -> None:
    store.start_admin_session(make_admin())
    store.add_event({"time": "1", "event": "login"})
    store.reset()
    assert store.end_admin_session(make_admin().session_hash) is None
    assert store.recent_events() == []


# -- recent security events --------------------------------------------------------------


def _event(i: int) -> dict[str, str]:
    return {"time": f"2026-01-01T00:00:{i:02d}Z", "event": "login_failed", "n": str(i)}


def test_recent_events_are_newest_first(store: Store) -> None:
    for i in range(5):
        store.add_event(_event(i))
    assert store.recent_events() == [_event(i) for i in reversed(range(5))]


def test_recent_events_honours_the_limit(store: Store) -> None:
    for i in range(5):
        store.add_event(_event(i))
    assert store.recent_events(2) == [_event(4), _event(3)]
    assert store.recent_events(0) == []


def test_recent_events_is_empty_at_first(store: Store) -> None:
    assert store.recent_events() == []


@pytest.mark.parametrize("keep", [1, 10])
def test_add_event_keeps_the_newest_and_stays_bounded(store: Store, keep: int) -> None:
    total = keep + 50
    for i in range(total):
        store.add_event(_event(i), keep=keep)
    kept = store.recent_events(10_000)
    assert kept[:keep] == [_event(i) for i in reversed(range(total - keep, total))]
    assert keep <= len(kept) <= 2 * keep
    # Whatever is kept beyond ``keep`` is still the next newest, in order.
    assert kept == [_event(i) for i in reversed(range(total - len(kept), total))]


def test_events_round_trip_exactly(store: Store) -> None:
    event = {
        "time": "2026-12-02T02:43:45.123456Z",
        "event": "admin_sign_in",
        "user": "Zoë 🦊 ﬁ \u00e9 e\u0301",
        "detail": 'quote " backslash \\ newline \n tab \t',
        "empty": "",
        "remote_addr": "::ffff:127.0.0.1",
    }
    store.add_event(event)
    (stored,) = store.recent_events()
    assert stored == event
    assert list(stored) == list(event)


def test_recent_events_are_copies(store: Store) -> None:
    store.add_event(_event(1))
    store.recent_events()[0]["event"] = "changed"
    assert store.recent_events() == [_event(1)]


# -- client seat caps and admin users ----------------------------------------------------


@pytest.mark.parametrize("max_seats", [None, 0, 1, 250])
def test_client_max_seats_round_trips(store: Store, max_seats: int | None) -> None:
    client = make_client("app", alias="app-alias", max_seats=max_seats)
    store.create_client(client)
    assert store.get_client("app") == client
    assert store.get_client("app-alias") == client
    assert store.list_clients() == [client]


def test_update_client_writes_max_seats(store: Store) -> None:
    store.create_client(make_client("app"))
    capped = make_client("app", max_seats=3)
    assert store.update_client(capped) is True
    assert store.get_client("app") == capped
    uncapped = make_client("app", max_seats=None)
    assert store.update_client(uncapped) is True
    assert store.get_client("app") == uncapped
    assert store.list_clients() == [uncapped]


def test_client_without_max_seats_reads_back_none(store: Store) -> None:
    store.create_client(make_client("app"))
    stored = store.get_client("app")
    assert stored is not None and stored.max_seats is None


def test_admin_user_round_trips(store: Store) -> None:
    admin = User("root", "pw-hash", NOW, admin=True)
    plain = User("alice", "pw-hash-2", NOW + 1)
    store.create_user(admin)
    store.create_user(plain)
    assert store.get_user("root") == admin
    assert store.get_user("alice") == plain
    assert store.get_user("alice").admin is False  # type: ignore[union-attr]
    assert store.list_users() == [plain, admin]


def test_update_user_changes_admin(store: Store) -> None:
    store.create_user(User("root", "pw-hash", NOW, admin=True))
    demoted = User("root", "pw-hash", NOW, admin=False)
    assert store.update_user(demoted) is True
    assert store.get_user("root") == demoted
    promoted = User("root", "pw-hash", NOW, admin=True)
    assert store.update_user(promoted) is True
    assert store.list_users() == [promoted]
