"""``Store.unrotate_refresh``: taking back a rotation whose new token was never sent.

A refresh that fails after its rotation (a lost read, a failover) must leave the token
the client holds current, or the client's retry would count as a replay and end the
session; and nothing else may be able to use it to revive a token that was spent.
"""

from __future__ import annotations

from flask_tokenguard.stores.base import Store
from tests.stores.records import make_session
from tests.stores.records import NOW

TTL = 1200.0


def _state(store: Store, refresh_hash: str, now: float) -> str:
    found = store.find_refresh(refresh_hash, now)
    return "unknown" if found is None else "current" if found[1] else "used"


def _rotated(store: Store) -> None:
    assert store.start_session(make_session("s1", expires_at=NOW + TTL), 5, NOW).started
    assert store.rotate_refresh("s1", "hash-s1", "next", NOW + TTL + 60, NOW + 60) is not None


def test_unrotate_makes_the_sent_hash_current_again(store: Store) -> None:
    _rotated(store)
    assert store.unrotate_refresh("s1", "hash-s1", "next", NOW + 61)
    found = store.find_refresh("hash-s1", NOW + 62)
    assert found is not None
    session, current = found
    assert current, "the sent token is current again, not a replay"
    # The session keeps the expiry the rotation gave it, and its seat.
    assert (session.refresh_hash, session.expires_at) == ("hash-s1", NOW + TTL + 60)
    assert store.find_refresh("next", NOW + 62) is None
    assert store.seats_in_use(NOW + 62) == 1
    # The client's retry rotates as a first refresh would.
    assert store.rotate_refresh("s1", "hash-s1", "again", NOW + TTL + 70, NOW + 70) is not None
    assert store.find_refresh("hash-s1", NOW + 71) == (
        make_session("s1", refresh_hash="again", expires_at=NOW + TTL + 70),
        False,
    )


def test_unrotate_needs_the_new_hash(store: Store) -> None:
    _rotated(store)
    assert not store.unrotate_refresh("s1", "hash-s1", "guessed", NOW + 61)
    assert _state(store, "hash-s1", NOW + 61) == "used"
    assert _state(store, "next", NOW + 61) == "current"


def test_unrotate_refuses_a_hash_the_session_never_used(store: Store) -> None:
    _rotated(store)
    assert not store.unrotate_refresh("s1", "never-used", "next", NOW + 61)
    assert _state(store, "never-used", NOW + 61) == "unknown"
    assert _state(store, "next", NOW + 61) == "current"


def test_unrotate_after_a_later_rotation_changes_nothing(store: Store) -> None:
    _rotated(store)
    assert store.rotate_refresh("s1", "next", "third", NOW + TTL + 90, NOW + 90) is not None
    assert not store.unrotate_refresh("s1", "hash-s1", "next", NOW + 91)
    assert _state(store, "third", NOW + 91) == "current"
    assert _state(store, "hash-s1", NOW + 91) == "used"


def test_unrotate_of_an_ended_or_expired_session_does_nothing(store: Store) -> None:
    _rotated(store)
    assert not store.unrotate_refresh("s1", "hash-s1", "next", NOW + TTL + 60)
    assert store.end_session("s1", NOW + 61) is not None
    assert not store.unrotate_refresh("s1", "hash-s1", "next", NOW + 62)
    assert store.get_session("s1", NOW + 62) is None
    assert store.seats_in_use(NOW + 62) == 0


def test_unrotate_twice_takes_back_once(store: Store) -> None:
    _rotated(store)
    assert store.unrotate_refresh("s1", "hash-s1", "next", NOW + 61)
    assert not store.unrotate_refresh("s1", "hash-s1", "next", NOW + 62)
    assert _state(store, "hash-s1", NOW + 62) == "current"
