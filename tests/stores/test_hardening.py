"""Store-side defences: private SQLite files, exact key comparison, impossible keys."""

from __future__ import annotations

import os
import stat
import sys
import typing as t
from pathlib import Path

import pytest

from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.models import Client
from flask_tokenguard.models import TokenSession
from flask_tokenguard.models import User
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")

SQLITE_SCHEMES = ["sqlite", "sqlite+pysqlite"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask() -> t.Iterator[None]:
    """A umask that would give new files mode 0644 and folders 0755."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@posix_only
@pytest.mark.usefixtures("loose_umask")
@pytest.mark.parametrize("scheme", SQLITE_SCHEMES)
def test_new_sqlite_store_is_private_to_its_owner(scheme: str, tmp_path: Path) -> None:
    path = tmp_path / "instance" / "store.sqlite3"
    store = store_from_url(f"{scheme}:///{path}")
    try:
        store.create_user(User("alice", "hash", 1.0))  # opens the WAL
        assert _mode(path.parent) == 0o700
        assert _mode(path) == 0o600
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            assert side.exists(), side
            assert _mode(side) == 0o600, side
    finally:
        store.close()


@posix_only
@pytest.mark.parametrize("scheme", SQLITE_SCHEMES)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_sqlite_store_open_to_others_is_refused(scheme: str, mode: int, tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store_from_url(f"{scheme}:///{path}").close()
    os.chmod(path, mode)
    with pytest.raises(ConfigurationError) as info:
        store = store_from_url(f"{scheme}:///{path}")
        store.check()
        store.close()
    assert f"chmod 600 {path}" in str(info.value)
    os.chmod(path, 0o600)
    store = store_from_url(f"{scheme}:///{path}")  # fixed as the message says
    store.check()
    store.close()


def _client(client_id: str, alias: str | None) -> Client:
    return Client(client_id=client_id, name="App", secret_hash="0" * 64, alias=alias)


def test_trailing_spaces_do_not_match(store: Store) -> None:
    """Names compare exactly: MySQL's PAD SPACE collations would find "alice" here."""
    store.create_user(User("alice", "hash", 1.0))
    store.create_client(_client("app", "reports"))
    assert store.get_user("alice   ") is None
    assert store.get_user("alice ") is None
    assert store.get_client("app  ") is None
    assert store.get_client("reports ") is None
    assert store.get_user("alice") is not None
    assert store.get_client("reports") is not None
    # And a padded name is a different record, not a conflict.
    store.create_user(User("alice ", "hash2", 2.0))
    assert [u.username for u in store.list_users()] == ["alice", "alice "]


@pytest.mark.parametrize("key", ["a\x00b", "\x00", "x" * 257, "é" * 1000])
def test_lookups_of_impossible_keys_find_nothing(store: Store, key: str) -> None:
    """A key no record can have (NUL, overlong) is absent, not an engine failure."""
    store.create_user(User("alice", "hash", 1.0))
    store.create_client(_client("app", None))
    live = TokenSession("s1", "app", "alice", "view", False, "h" * 64, 1.0, 1e10)
    assert store.start_session(live, None, 1.0)
    assert store.get_user(key) is None
    assert store.get_client(key) is None
    assert store.get_session(key, 2.0) is None
    assert store.find_refresh(key, 2.0) is None
    assert store.end_session(key, 2.0) is None
    assert store.delete_user(key) is False
    assert store.delete_client(key) is False
    assert store.get_user("alice") is not None


@pytest.mark.parametrize("scheme", SQLITE_SCHEMES)
def test_driver_failures_are_store_errors(scheme: str, tmp_path: Path) -> None:
    """Every store operation turns an engine failure into ``StoreError`` (HTTP 503)."""
    import sqlite3

    from flask_tokenguard.errors import StoreError

    path = tmp_path / "store.sqlite3"
    store = store_from_url(f"{scheme}:///{path}")
    try:
        store.create_user(User("alice", "hash", 1.0))
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE tg_users")
        with pytest.raises(StoreError):
            store.get_user("alice")
        with pytest.raises(StoreError):
            store.list_users()
    finally:
        store.close()
