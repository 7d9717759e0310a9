"""Stores written by the release with schema version 1 open, and migrate, in place.

The fixtures under ``fixtures/`` were written by that release (one client with a secret
and an alias, a public client, a user, two live sessions, one holding a seat and one
refreshed once, a revoked token id, a signing key, a lockout counter and a claim):
a SQLite file for each SQLite store, and a dump of a PostgreSQL schema and of a MariaDB
database that the tests replay into a fresh schema with plain SQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sqlite3
import typing as t
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from flask_tokenguard.core.security import verify_password
from flask_tokenguard.core.security import verify_secret
from flask_tokenguard.models import AdminSession
from flask_tokenguard.models import TokenSession
from flask_tokenguard.stores import store_from_url
from flask_tokenguard.stores.base import Store
from tests.backends import server_url
from tests.helpers import unavailable

FIXTURES = Path(__file__).parent / "fixtures"
#: The fixtures' clock: records were written at 1_700_000_000 and live until 4e9.
NOW = 1_700_000_100.0
FAR = 4_000_000_000.0


def _h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def assert_everything_is_there(store: Store) -> None:
    """Every record of the fixture, read back and used through the store's API."""
    reports = store.get_client("reports")
    assert reports is not None
    assert verify_secret("reports-secret", reports.secret_hash)
    assert not verify_secret("wrong", reports.secret_hash)
    assert reports.alias == "rep"
    assert reports.grants == ("client_credentials", "refresh_token", "password")
    assert reports.scopes == ("view", "all")
    assert reports.enabled and reports.created_at == 1_700_000_000.0
    assert store.get_client("rep") == reports
    spa = store.get_client("spa")
    assert spa is not None and spa.secret_hash is None and spa.alias is None
    assert [c.client_id for c in store.list_clients()] == ["reports", "spa"]

    alice = store.get_user("alice")
    assert alice is not None and verify_password("alice-password", alice.password_hash)

    assert store.seats_in_use(NOW) == 1
    assert {s.session_id for s in store.list_sessions(None, NOW)} == {"sess-seat", "sess-free"}
    assert store.list_sessions("spa", NOW)[0].holds_seat is False
    current = store.find_refresh(_h("refresh-2"), NOW)
    assert current is not None and current[1] is True
    assert current[0].session_id == "sess-seat" and current[0].holds_seat
    replay = store.find_refresh(_h("refresh-1"), NOW)
    assert replay is not None and replay[0].session_id == "sess-seat" and replay[1] is False
    rotated = store.rotate_refresh("sess-seat", _h("refresh-2"), _h("refresh-3"), FAR, NOW)
    assert rotated is not None and rotated.refresh_hash == _h("refresh-3")
    assert store.find_refresh(_h("refresh-2"), NOW) == (rotated, False)
    # The seat still counts against the limit.
    extra = TokenSession("sess-new", "reports", "bob", "view", True, _h("new"), NOW, FAR)
    assert not store.start_session(extra, 1, NOW)
    assert store.start_session(extra, 2, NOW)

    revoked, seq = store.revocations_since(0, NOW)
    assert revoked == {"jti-revoked": FAR} and seq == 1
    store.revoke("jti-2", FAR, NOW)
    assert store.revocations_since(1, NOW)[0] == {"jti-2": FAR}

    (key,) = store.signing_keys(NOW)
    assert key.kid == "kid-1" and key.alg == "ES256" and key.retire_at is None
    serialization.load_pem_private_key(key.private_pem.encode(), password=None)

    assert store.failures("user:alice", NOW)[0] == 1
    assert store.claim_once("demo-client") is False
    assert store.end_session("sess-free", NOW) is not None


def assert_version_3_works(store: Store) -> None:
    """What version 3 added works on a migrated store, and old rows read as before it."""
    reports = store.get_client("reports")
    alice = store.get_user("alice")
    assert reports is not None and reports.max_seats is None
    assert alice is not None and alice.admin is False
    assert store.update_client(dataclasses.replace(reports, max_seats=2))
    assert store.get_client("rep") == dataclasses.replace(reports, max_seats=2)
    assert store.update_user(dataclasses.replace(alice, admin=True))
    assert store.get_user("alice") == dataclasses.replace(alice, admin=True)

    # "reports" holds two seats (sess-seat of the fixture, sess-new): at a cap of 2 the
    # next is refused, or replaces the fixture's older one.
    seats = [s for s in store.list_sessions("reports", NOW) if s.holds_seat]
    assert len(seats) == 2
    late = TokenSession("sess-late", "reports", "bob", "all", True, _h("late"), NOW + 1, FAR)
    assert store.start_session(late, None, NOW, client_cap=2).refused == "client"
    outcome = store.start_session(late, None, NOW, client_cap=2, replace_oldest=True)
    assert outcome.started and [s.session_id for s in outcome.replaced] == ["sess-seat"]
    assert store.earliest_seat_expiry(NOW, "reports") == FAR

    admin = AdminSession(_h("admin"), "alice", NOW, NOW + 600)
    store.start_admin_session(admin)
    assert store.touch_admin_session(admin.session_hash, NOW, NOW + 900) == dataclasses.replace(
        admin, expires_at=NOW + 900
    )
    assert store.end_admin_session(admin.session_hash) is not None
    store.add_event({"time": "t1", "event": "upgraded"})
    assert store.recent_events() == [{"time": "t1", "event": "upgraded"}]
    # The held-seats counter, computed by the migration, kept exact since.
    assert seats_counter(store) == seat_rows(store) == 2


def seats_counter(store: Store) -> int:
    """The held-seats counter: SQL ``tg_pool.seats``, SQLite ``tg_counters``."""
    anystore = t.cast(t.Any, store)
    if hasattr(anystore, "_q"):
        with anystore._tx() as conn:
            return int(conn.execute(anystore._q.get_seats).scalar_one())
    with contextlib.closing(sqlite3.connect(anystore.path)) as conn:
        query = "SELECT value FROM tg_counters WHERE name = 'seats_held'"
        return int(conn.execute(query).fetchone()[0])


def seat_rows(store: Store) -> int:
    """Seat-holding rows of ``tg_sessions``, expired or not."""
    return len([s for s in store.list_sessions(None, 0.0) if s.holds_seat])


def test_sqlite_file_of_version_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copyfile(FIXTURES / "v1-store.sqlite3", path)
    os.chmod(path, 0o600)
    store = store_from_url(f"sqlite:///{path}")
    try:
        assert_everything_is_there(store)
        assert_version_3_works(store)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM tg_schema_version").fetchall() == [(3,)]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(tg_used_refresh)")]
        assert columns == ["refresh_hash", "session_id"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = store_from_url(f"sqlite:///{path}")  # a migrated file opens as it is
    try:
        assert again.get_client("rep") is not None
    finally:
        again.close()


def test_sqlite_file_of_version_2_is_migrated(tmp_path: Path) -> None:
    from flask_tokenguard.stores import sqlite as sqlite_store

    path = tmp_path / "store.sqlite3"
    shutil.copyfile(FIXTURES / "v1-store.sqlite3", path)
    os.chmod(path, 0o600)
    # A version-2 file: the version-1 fixture with the first step alone applied.
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        for statement in sqlite_store._MIGRATE_1_TO_2:
            conn.execute(statement)
        conn.execute("COMMIT")
    store = store_from_url(f"sqlite:///{path}")
    try:
        assert_everything_is_there(store)
        assert_version_3_works(store)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version FROM tg_schema_version").fetchall() == [(3,)]


def test_sqlite_file_of_version_1_is_refused_by_no_one_and_v2_by_version_1(
    tmp_path: Path,
) -> None:
    """The version-1 release reads ``tg_meta``: a migrated file tells it version 3."""
    path = tmp_path / "store.sqlite3"
    shutil.copyfile(FIXTURES / "v1-store.sqlite3", path)
    os.chmod(path, 0o600)
    store_from_url(f"sqlite:///{path}").close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name, value FROM tg_meta").fetchall()
    assert rows == [("schema_version", 3)]


def test_sqlalchemy_sqlite_file_of_version_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    shutil.copyfile(FIXTURES / "v1-sqlalchemy.sqlite3", path)
    os.chmod(path, 0o600)
    store = store_from_url(f"sqlite+pysqlite:///{path}")
    try:
        assert_everything_is_there(store)
        assert_version_3_works(store)
        assert t.cast(t.Any, store)._stored_version() == 3
    finally:
        store.close()


def _replay_postgresql(url: str, schema: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    script = (FIXTURES / "v1-postgresql.sql").read_text().replace("tgtest_v1fixture", schema)
    try:
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    except psycopg.OperationalError as exc:
        unavailable(f"{url} unreachable: {exc}")
    with conn:
        conn.execute(script)


def _replay_mariadb(url: str, schema: str) -> None:
    pymysql = pytest.importorskip("pymysql")
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    try:
        conn = pymysql.connect(
            host=parsed.host,
            port=parsed.port or 3306,
            user=parsed.username,
            password=parsed.password or "",
        )
    except pymysql.err.OperationalError as exc:
        unavailable(f"{url} unreachable: {exc}")
    with conn, conn.cursor() as cursor:
        # As the version-1 release created its databases.
        cursor.execute(f"CREATE DATABASE {schema} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        cursor.execute(f"USE {schema}")
        script = (FIXTURES / "v1-mariadb.sql").read_text()
        lines = [line for line in script.splitlines() if not line.startswith("-- ")]
        for statement in "\n".join(lines).split(";\n"):
            if statement.strip():
                cursor.execute(statement)
        conn.commit()


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_server_schema_of_version_1_is_migrated(backend: str) -> None:
    url = server_url(backend)
    schema = f"tgtest_{uuid.uuid4().hex[:12]}"
    (_replay_postgresql if backend == "postgresql" else _replay_mariadb)(url, schema)
    store = store_from_url(url, schema=schema)
    try:
        assert_everything_is_there(store)
        assert_version_3_works(store)
        assert t.cast(t.Any, store)._stored_version() == 3
        if backend == "mariadb":
            # The migration converted the PAD SPACE tables of version 1.
            assert store.get_user("alice   ") is None
            assert store.get_client("reports  ") is None
            assert store.get_client("rep ") is None
        store.close()
        again = store_from_url(url, schema=schema)
        try:
            assert again.get_user("alice") is not None
        finally:
            again.close()
    finally:
        store.drop()
        store.close()
