"""What only the SQLAlchemy store does: URLs, schemas, concurrent creation, caching.

The shared contract runs in ``test_contract.py``; these tests cover SQL-specific
behaviour on PostgreSQL and MariaDB (marked; skipped with a printed reason when no
server answers, failed under ``CI=true``) and, where no server is needed, on a SQLite
file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
import time
import typing as t
import uuid
import warnings
from pathlib import Path

import pytest

from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.errors import ConflictError
from flask_tokenguard.errors import StoreError
from flask_tokenguard.models import Client
from flask_tokenguard.models import SigningKey
from flask_tokenguard.models import TokenSession
from flask_tokenguard.stores import store_from_url
from tests.helpers import unavailable
from tests.stores import records

if t.TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.pool import QueuePool

    from flask_tokenguard.stores.sql import SQLAlchemyStore

sa = pytest.importorskip("sqlalchemy")

from flask_tokenguard.stores.sql import store as sql_module  # noqa: E402 - needs the skip above

POSTGRESQL_URL = (
    os.environ.get("TOKENGUARD_TEST_POSTGRESQL_URL") or "postgresql://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = (
    os.environ.get("TOKENGUARD_TEST_MARIADB_URL") or "mysql+pymysql://root@127.0.0.1:3306/test"
)

SERVERS = [
    pytest.param(POSTGRESQL_URL, id="postgresql", marks=pytest.mark.postgresql),
    pytest.param(MARIADB_URL, id="mariadb", marks=pytest.mark.mariadb),
]


def new_schema() -> str:
    return f"tgtest_{uuid.uuid4().hex[:12]}"


# This file's sessions start at 1000 and end at 2000 unless a test says otherwise.
make_session = functools.partial(records.make_session, created_at=1000.0, expires_at=2000.0)


def count_rows(store: SQLAlchemyStore, table_name: str) -> int:
    """Rows of one of the store's tables, read through its own schema mapping."""
    table = store._q.metadata.tables[table_name]
    with store._engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def schema_exists(store: SQLAlchemyStore, schema: str) -> bool:
    query = sa.text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s")
    with store._base_engine.connect() as conn:
        return bool(conn.execute(query, {"s": schema}).scalar_one())


def tables_in(store: SQLAlchemyStore, schema: str) -> set[str]:
    query = sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s")
    with store._base_engine.connect() as conn:
        return {str(name) for name in conn.execute(query, {"s": schema}).scalars()}


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> str:
    """The URL of a database server that answers (checked with a throwaway store)."""
    url = t.cast(str, request.param)
    probe = store_from_url(url)
    try:
        probe.check()
    except StoreError as exc:
        unavailable(f"{url} unreachable: {exc}")
    finally:
        probe.close()
    return url


@pytest.fixture
def make_store() -> t.Iterator[t.Callable[..., SQLAlchemyStore]]:
    """Build SQL stores; each one's schema (or tables) is dropped at teardown."""
    made: list[SQLAlchemyStore] = []

    def make(url: str, **options: t.Any) -> SQLAlchemyStore:
        store = t.cast("SQLAlchemyStore", store_from_url(url, **options))
        made.append(store)
        return store

    yield make
    for store in made:
        try:
            store.drop()
        finally:
            store.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+pysqlite:///{tmp_path / 'tokenguard-sa.sqlite3'}"


# -- URLs and options ------------------------------------------------------------------


def test_postgresql_url_selects_psycopg3() -> None:
    pytest.importorskip("psycopg")
    store = t.cast("SQLAlchemyStore", store_from_url("postgresql://postgres@127.0.0.1:5432/test"))
    try:
        assert store._base_engine.url.drivername == "postgresql+psycopg"
        assert store._base_engine.dialect.driver == "psycopg"
        dbapi = store._base_engine.dialect.dbapi
        assert dbapi is not None
        assert dbapi.__name__ == "psycopg"
    finally:
        store.close()


def test_explicit_driver_urls_are_kept() -> None:
    for url, driver in (
        ("postgresql+psycopg://postgres@127.0.0.1/test", "psycopg"),
        ("mysql+pymysql://root@127.0.0.1/test", "pymysql"),
        ("mariadb+pymysql://root@127.0.0.1/test", "pymysql"),
    ):
        store = t.cast("SQLAlchemyStore", store_from_url(url))
        try:
            assert store._base_engine.dialect.driver == driver
        finally:
            store.close()


def test_engine_options_are_passed_through(sqlite_url: str) -> None:
    store = t.cast("SQLAlchemyStore", store_from_url(sqlite_url, pool_size=3, pool_pre_ping=False))
    try:
        assert t.cast("QueuePool", store._base_engine.pool).size() == 3
        assert store._base_engine.pool._pre_ping is False
    finally:
        store.close()
    store = t.cast("SQLAlchemyStore", store_from_url(sqlite_url))
    try:
        assert store._base_engine.pool._pre_ping is True
    finally:
        store.close()


def test_bad_options_are_configuration_errors(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="isolation_level"):
        store_from_url("postgresql://postgres@127.0.0.1/test", isolation_level="SERIALIZABLE")
    with pytest.raises(ConfigurationError, match="schema"):
        store_from_url("postgresql://postgres@127.0.0.1/test", schema="x; DROP TABLE y")
    with pytest.raises(ConfigurationError, match="schema"):
        store_from_url(sqlite_url, schema="tgtest_x")
    with pytest.raises(ConfigurationError):
        store_from_url(sqlite_url, no_such_engine_option=1)


def test_missing_sqlalchemy_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(ConfigurationError, match=r"flask-tokenguard\[sql\]"):
        store_from_url(sqlite_url)


def test_importing_the_module_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, flask_tokenguard.stores.sql\n"
        "assert 'sqlalchemy' not in sys.modules, 'imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unreachable_server_raises_store_error() -> None:
    # Port 1 on loopback refuses at once; nothing is created before the first call.
    store = store_from_url(
        "postgresql://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    try:
        with pytest.raises(StoreError) as caught:
            store.check()
        assert isinstance(caught.value.original, sa.exc.OperationalError)
        with pytest.raises(StoreError):
            store.get_client("app")
    finally:
        store.close()


# -- statements are built once ---------------------------------------------------------


def test_statements_are_built_once_per_process(sqlite_url: str, tmp_path: Path) -> None:
    first = t.cast("SQLAlchemyStore", store_from_url(sqlite_url))
    second = t.cast("SQLAlchemyStore", store_from_url(f"sqlite+pysqlite:///{tmp_path / 'b.db'}"))
    try:
        assert sql_module._sql() is sql_module._sql()
        assert first._q is second._q is sql_module._sql()
        assert first._q.lock_pool is second._q.lock_pool
        assert first._q.insert_session is sql_module._sql().insert_session
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "mariadb", "mssql", "sqlite"])
def test_schema_and_statements_compile_for_every_dialect(dialect: str) -> None:
    # SQL Server has no server here: compiling still catches constructs it lacks.
    from sqlalchemy.schema import CreateIndex
    from sqlalchemy.schema import CreateTable

    engine_dialect = sa.make_url(f"{dialect}://").get_dialect()()
    q = sql_module._sql()
    ddl = []
    for table in q.metadata.sorted_tables:
        ddl.append(str(CreateTable(table).compile(dialect=engine_dialect)))
        ddl.extend(
            str(CreateIndex(index).compile(dialect=engine_dialect)) for index in table.indexes
        )
    text = "\n".join(ddl)
    assert "FLOAT" not in text.upper().replace("DOUBLE", "")
    statements = [v for v in vars(q).values() if isinstance(v, sa.sql.ClauseElement)]
    statements += [s for triple in q.end.values() for s in triple]
    statements += [s for pair in q.seeds for s in pair]
    for statement in statements:
        if isinstance(statement, sa.Table):
            continue
        assert str(statement.compile(dialect=engine_dialect))
    if dialect == "mssql":
        # Filtered, because a SQL Server UNIQUE constraint admits only one NULL.
        assert "WHERE alias IS NOT NULL" in text
        assert "Latin1_General_100_BIN2" in text
    if dialect in ("mysql", "mariadb"):
        # Tables take the database's NO PAD collation, set up when the store opens.
        assert "ENGINE=InnoDB" in text
        assert "utf8mb4_bin" not in text
        assert "DOUBLE" in text


def _exercise(store: SQLAlchemyStore, round_: int) -> None:
    now = 1000.0 + round_
    sid = f"s{round_}"
    assert store.start_session(make_session(sid), 100, now)
    assert store.get_session(sid, now) is not None
    assert store.find_refresh(f"hash-{sid}", now) is not None
    assert store.rotate_refresh(sid, f"hash-{sid}", f"new-{sid}", 3000.0, now) is not None
    assert store.seats_in_use(now) == 1
    assert store.end_session(sid, now) is not None
    store.revoke(f"jti-{round_}", 3000.0, now)
    store.revocations_since(0, now)


def _compiled_cache_size(store: SQLAlchemyStore) -> int:
    cache = store._base_engine._compiled_cache
    assert cache is not None
    return len(cache)


def test_repeated_calls_hit_the_compiled_cache(sqlite_url: str) -> None:
    store = t.cast("SQLAlchemyStore", store_from_url(sqlite_url))
    try:
        store.reset()
        _exercise(store, 0)
        warm = _compiled_cache_size(store)
        for round_ in range(1, 6):
            _exercise(store, round_)
        assert _compiled_cache_size(store) == warm
    finally:
        store.drop()
        store.close()


def test_schemas_share_compiled_statements(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    # schema_translate_map applies after compilation: a schema adds no cache entry.
    store = make_store(server_url, schema=new_schema())
    store.reset()
    _exercise(store, 0)
    warm = _compiled_cache_size(store)
    other = make_store(server_url, schema=new_schema())
    other.reset()
    for round_ in range(1, 4):
        _exercise(store, round_)
        _exercise(other, round_)
    assert _compiled_cache_size(store) == warm
    assert store._q is other._q


# -- schemas ---------------------------------------------------------------------------


def test_schema_isolates_stores_and_drop_removes_it(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    first_schema, second_schema = new_schema(), new_schema()
    first = make_store(server_url, schema=first_schema)
    second = make_store(server_url, schema=second_schema)
    first.reset()
    second.reset()

    first.create_client(Client("app", "App", alias="the-app"))
    assert first.start_session(make_session("s1"), 1, now=1000.0)
    assert second.get_client("app") is None
    assert second.start_session(make_session("s1"), 1, now=1000.0), "seats are per schema"
    second.create_client(Client("app", "Other"))

    assert schema_exists(first, first_schema)
    expected = {table.name for table in first._q.metadata.sorted_tables}
    assert all(name.startswith("tg_") for name in expected)
    assert tables_in(first, first_schema) == expected

    first.drop()
    assert not schema_exists(first, first_schema)
    assert second.get_client("app") == Client("app", "Other")

    # A dropped store recreates its schema when used again.
    assert first.get_client("app") is None
    assert schema_exists(first, first_schema)
    assert count_rows(first, "tg_pool") == 1


def test_reset_keeps_the_schema_and_reseeds(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    store = make_store(server_url, schema=new_schema())
    store.create_client(Client("app", "App"))
    store.revoke("jti", 3000.0, now=1000.0)
    assert store.revocation_seq() == 1

    store.reset()

    assert store.get_client("app") is None
    assert store.revocation_seq() == 0
    for table in ("tg_pool", "tg_schema_version"):
        assert count_rows(store, table) == 1
    # The counter, and the epoch that reset() renewed with it.
    assert count_rows(store, "tg_counters") == 2
    assert count_rows(store, "tg_clients") == 0
    assert store.start_session(make_session("s1"), 1, now=1000.0)


def test_drop_without_schema_drops_the_tables(sqlite_url: str) -> None:
    store = t.cast("SQLAlchemyStore", store_from_url(sqlite_url))
    try:
        store.create_client(Client("app", "App"))
        store.drop()
        with store._base_engine.connect() as conn:
            assert not [n for n in sa.inspect(conn).get_table_names() if n.startswith("tg_")]
        assert store.get_client("app") is None
    finally:
        store.drop()
        store.close()


def test_newer_schema_version_is_refused(sqlite_url: str) -> None:
    store = t.cast("SQLAlchemyStore", store_from_url(sqlite_url))
    try:
        store.check()
        store.get_client("app")  # creates the schema
        with store._engine.begin() as conn:
            conn.execute(store._q.schema_version.update().values(version=999))
        newer = store_from_url(sqlite_url)
        try:
            with pytest.raises(ConfigurationError, match="999"):
                newer.get_client("app")
        finally:
            newer.close()
    finally:
        store.close()


def _open_concurrently(url: str, options: dict[str, t.Any], workers: int) -> list[list[str]]:
    """Open ``workers`` new stores on one fresh schema at one moment, from threads."""
    barrier = threading.Barrier(workers)
    results: list[t.Any] = [None] * workers

    def run(worker: int) -> None:
        store = store_from_url(url, **options)
        try:
            barrier.wait(30)
            candidate = SigningKey(f"key-{worker}", "ES256", f"pem-{worker}", created_at=1000.0)
            results[worker] = [k.kid for k in store.ensure_signing_key(candidate)]
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            results[worker] = exc
        finally:
            store.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return t.cast("list[list[str]]", results)


def _assert_created_once(store: SQLAlchemyStore, keys: list[list[str]]) -> None:
    assert len({tuple(k) for k in keys}) == 1, f"workers disagree on the first key: {keys}"
    assert len(keys[0]) == 1
    for table in ("tg_pool", "tg_schema_version", "tg_signing_keys"):
        assert count_rows(store, table) == 1, table
    # The revocation counter and one epoch, whichever opener created it.
    assert count_rows(store, "tg_counters") == 2


def test_stores_opened_concurrently_on_a_fresh_schema_threads(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    schema = new_schema()
    keys = _open_concurrently(server_url, {"schema": schema}, workers=8)
    _assert_created_once(make_store(server_url, schema=schema), keys)


@pytest.mark.slow
def test_stores_opened_concurrently_on_a_fresh_schema_processes(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    from tests.stores import _workers

    schema = new_schema()
    workers = 4
    reports = _workers.spawn(
        workers, _workers.open_and_ensure_key, server_url, {"schema": schema}, 1000.0
    )
    errors = [r for r in reports if r[1] != "ok"]
    assert not errors, errors
    _assert_created_once(make_store(server_url, schema=schema), [r[2] for r in reports])


def test_stores_opened_concurrently_on_a_fresh_sqlite_file(
    sqlite_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    keys = _open_concurrently(sqlite_url, {}, workers=8)
    _assert_created_once(make_store(sqlite_url), keys)


# -- engine-specific details -----------------------------------------------------------


def test_connections_run_at_read_committed(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    store = make_store(server_url, schema=new_schema())
    with store._engine.connect() as conn:
        level = conn.get_isolation_level()
    assert level == "READ COMMITTED"


def test_times_keep_double_precision(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    # MySQL's FLOAT would round 1.7e9 to a multiple of 128 seconds.
    store = make_store(server_url, schema=new_schema())
    now = 1_700_000_000.123456
    session = TokenSession("s1", "app", "alice", "all", True, "h1", now, now + 0.5)
    assert store.start_session(session, 1, now)
    assert store.get_session("s1", now) == session
    assert store.get_session("s1", now + 0.5) is None
    assert store.earliest_seat_expiry(now) == now + 0.5


def test_ids_are_case_sensitive(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    # MariaDB's default collations ignore case; the tables use a binary collation.
    store = make_store(server_url, schema=new_schema())
    store.create_client(Client("App", "Upper"))
    store.create_client(Client("app", "Lower"))
    assert store.get_client("APP") is None
    assert t.cast(Client, store.get_client("app")).name == "Lower"
    with pytest.raises(ConflictError):
        store.create_client(Client("other", "Other", alias="App"))


def _waiting_for_a_row_lock(store: SQLAlchemyStore, schema: str) -> bool:
    """Whether a statement on ``schema`` waits for a row lock another one holds."""
    if store._backend == "postgresql":
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE :pattern"
        )
    else:
        query = sa.text(
            "SELECT count(*) FROM information_schema.innodb_trx"
            " WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE :pattern"
        )
    with store._base_engine.connect() as conn:
        return bool(conn.execute(query, {"pattern": f"%{schema}%"}).scalar_one())


@pytest.mark.parametrize("kind", ["session", "client", "all"])
def test_ending_sessions_during_a_rotation_revokes_the_rotated_expiry(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore], kind: str
) -> None:
    # A rotation holds the session's row lock, uncommitted, while the session ends. If
    # the end read the row before the rotation committed, it would delete the rotated
    # row and revoke the id only until the old expiry: tokens the rotation issued would
    # pass again after it.
    schema = new_schema()
    store = make_store(server_url, schema=schema)
    store.reset()
    assert store.start_session(make_session("s1", expires_at=2000.0), None, now=1000.0)
    rotated = make_session("s1", refresh_hash="hash-s1b", expires_at=5000.0)
    params = {
        "b_session_id": "s1",
        "b_old_hash": "hash-s1",
        "b_new_hash": "hash-s1b",
        "b_expires_at": 5000.0,
        "now": 1500.0,
    }
    ended: list[t.Any] = []

    def end() -> None:
        try:
            if kind == "session":
                ended.append(store.end_session("s1", now=1500.0))
            else:
                client_id = "app" if kind == "client" else None
                ended.append(store.end_sessions(client_id, now=1500.0))
        except BaseException as exc:  # noqa: BLE001 - reported in the test's thread below
            ended.append(exc)

    with store._engine.connect() as rotation:
        transaction = rotation.begin()
        assert rotation.execute(store._q.rotate, params).rowcount == 1
        rotation.execute(store._q.insert_used, {"refresh_hash": "hash-s1", "session_id": "s1"})
        ender = threading.Thread(target=end)
        ender.start()
        try:
            # Commit only once the end waits for the row lock the rotation holds.
            deadline = time.monotonic() + 30
            waiting = False
            while not waiting and ender.is_alive() and time.monotonic() < deadline:
                # MariaDB refreshes innodb_trx only when unread for 0.1 s.
                ender.join(0.15)
                waiting = _waiting_for_a_row_lock(store, schema)
            assert waiting, f"the end did not wait for the rotation: {ended}"
        finally:
            transaction.commit()
            ender.join(60)
    assert ended == [rotated if kind == "session" else 1]
    assert store.revocations_since(0, now=1500.0)[0] == {"s1": 5000.0}
    assert store.get_session("s1", now=1500.0) is None
    assert store.find_refresh("hash-s1b", now=1500.0) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_connections(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    # A pooled socket used by parent and child at once corrupts both sessions.
    store = make_store(server_url, schema=new_schema())
    store.create_client(Client("app", "App"))
    parent_pool = store._base_engine.pool
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            fresh_pool = store._base_engine.pool is not parent_pool
            if fresh_pool and store.get_client("app") is not None:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._base_engine.pool is parent_pool
    assert store.get_client("app") is not None
    assert store.claim_once("parent-still-works")


def test_store_works_again_after_close(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    store = make_store(server_url, schema=new_schema())
    store.create_client(Client("app", "App"))
    store.close()
    assert store.get_client("app") is not None
    store.close()
    store.close()
    store.check()
    assert store.claim_once("after-close")


def test_record_failure_reruns_a_transaction_rolled_back_by_a_deadlock() -> None:
    """InnoDB may answer racing first failures of one key with a deadlock (1213)."""
    from flask_tokenguard.errors import StoreError

    pymysql = pytest.importorskip("pymysql")

    def wrapped(code: int) -> StoreError:
        driver = pymysql.err.OperationalError(code, "message")
        return StoreError("failed", sa.exc.OperationalError("INSERT", {}, driver))

    lost_race = sql_module.SQLAlchemyStore._lost_race
    assert lost_race(wrapped(1213))
    # A lock wait timeout already waited for long: not retried.
    assert not lost_race(wrapped(1205))
    assert not lost_race(StoreError("failed", ConnectionError()))


# -- connections the server closed -----------------------------------------------------


def _backend_ids(store: SQLAlchemyStore) -> list[int]:
    """Record the server's id of every connection the store opens from now on."""
    ids: list[int] = []
    query = (
        "SELECT pg_backend_pid()" if store._backend == "postgresql" else "SELECT CONNECTION_ID()"
    )

    def on_connect(dbapi_connection: t.Any, record: t.Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(query)
        ids.append(int(cursor.fetchone()[0]))
        cursor.close()
        if store._backend != "postgresql":
            dbapi_connection.commit()  # PyMySQL: end the implicit transaction

    for engine in {store._base_engine, store._base_reader}:
        sa.event.listen(engine, "connect", on_connect)
    return ids


def _kill(url: str, ids: list[int]) -> None:
    """Have the server close these connections, as a restart closes them all."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            for backend_id in ids:
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_terminate_backend(:id)"), {"id": backend_id})
                else:
                    conn.exec_driver_sql(f"KILL CONNECTION {int(backend_id)}")
    finally:
        engine.dispose()


def test_connections_the_server_closed_are_replaced_without_a_ping(
    server_url: str, make_store: t.Callable[..., SQLAlchemyStore]
) -> None:
    store = make_store(server_url, schema=new_schema())
    store.create_client(Client("app", "App"))
    # No ping per checkout on psycopg and PyMySQL: the socket is looked at instead.
    assert store._base_engine.pool._pre_ping is False
    assert store._base_reader.pool._pre_ping is False
    store.close()
    ids = _backend_ids(store)
    assert store.get_client("app") is not None
    assert store.start_session(make_session("before"), 10, 1000.0).started
    assert len(ids) == 2  # one pooled connection for reads, one for writes
    _kill(server_url, ids)
    time.sleep(0.2)  # the server's goodbye reaches the pooled sockets
    # Neither the read nor the write fails: both get new connections.
    assert store.get_client("app") is not None
    assert store.start_session(make_session("after"), 10, 1000.0).started
    assert store.seats_in_use(1000.0) == 2
    assert len(ids) == 4


def test_a_read_runs_once_more_when_its_connection_was_lost(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = t.cast("SQLAlchemyStore", store_from_url(sqlite_url))
    try:
        store.create_client(Client("app", "App"))
        real = store._read_once
        calls: list[bool] = []

        def lose_first(*args: t.Any) -> t.Any:
            calls.append(True)
            if len(calls) == 1:
                raise sa.exc.OperationalError(
                    "SELECT", {}, Exception("server closed"), connection_invalidated=True
                )
            return real(*args)

        monkeypatch.setattr(store, "_read_once", lose_first)
        assert store.get_client("app") is not None
        assert len(calls) == 2

        # Any other failure is not retried, and is a StoreError.
        def fail(*args: t.Any) -> t.Any:
            calls.append(True)
            raise sa.exc.OperationalError("SELECT", {}, Exception("syntax"))

        monkeypatch.setattr(store, "_read_once", fail)
        calls.clear()
        with pytest.raises(StoreError):
            store.get_client("app")
        assert len(calls) == 1
    finally:
        store.drop()
        store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write",
            "postgresql://u:pw@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
            id="libpq-multi-host",
        ),
        pytest.param(
            "postgresql+psycopg://h1,h2/db",
            "postgresql+psycopg:///db?host=h1&host=h2",
            id="no-user",
        ),
        pytest.param("postgresql://u@h1:5432/db", "postgresql://u@h1:5432/db", id="one-host"),
        pytest.param("mysql+pymysql://root@h1/test", "mysql+pymysql://root@h1/test", id="mysql"),
    ],
)
def test_multi_host_postgresql_urls_take_sqlalchemys_form(url: str, expected: str) -> None:
    from flask_tokenguard.stores.sql.store import _multihost_url

    assert _multihost_url(url) == expected


def test_replicas_timeout_is_a_postgresql_option_in_milliseconds(sqlite_url: str) -> None:
    url = "postgresql://postgres@127.0.0.1/test"
    default = store_from_url(url)
    given = store_from_url(url, replicas_timeout=250)
    try:
        assert default.replicas_timeout == sql_module.REPLICAS_TIMEOUT_MS == 1000  # type: ignore[attr-defined]
        assert given.replicas_timeout == 250  # type: ignore[attr-defined]
    finally:
        default.close()
        given.close()
    for value in (0, -1, 1.5, "500", True):
        with pytest.raises(ConfigurationError, match="replicas_timeout must be an integer"):
            store_from_url(url, replicas_timeout=value)
    for other in (sqlite_url, "mysql+pymysql://root@127.0.0.1/test"):
        with pytest.raises(ConfigurationError, match="option of PostgreSQL"):
            store_from_url(other, replicas_timeout=500)
    # The standbys a commit waits for are the server's setting: no ``replicas`` here.
    with pytest.raises(ConfigurationError):
        store_from_url(url, replicas=1)


def test_the_commit_watch_cancels_only_what_outlasts_its_deadline() -> None:
    watch = sql_module._CommitWatch()
    fired = threading.Event()
    late = watch.arm(0.05, fired.set)
    in_time = watch.arm(30, lambda: pytest.fail("a disarmed commit was cancelled"))
    assert fired.wait(5), "the cancel was not sent"
    assert watch.disarm(in_time) is True, "disarmed before its deadline"
    assert watch.disarm(late) is False, "its cancel went out already"
    # A cancel that raises (the server is gone) does not stop the watch.
    again = threading.Event()

    def failing() -> None:
        raise OSError("unreachable")

    watch.arm(0.01, failing)
    watch.arm(0.02, again.set)
    assert again.wait(5)


# -- resends across a failover (failover_timeout) ----------------------------------------


def _lose_the_next_commit_reply(store: SQLAlchemyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next transaction commits, then its connection breaks before the answer (a
    primary killed after its standby had the commit): the caller sees an OperationalError."""
    real = store._tx
    lost: list[bool] = []

    @contextlib.contextmanager
    def tx(undo: t.Callable[[], object] | None = None) -> t.Iterator[t.Any]:
        with real(undo) as conn:
            yield conn
        if not lost:
            lost.append(True)
            broken = sa.exc.OperationalError(
                "COMMIT", {}, Exception("server closed the connection")
            )
            raise StoreError("SQLAlchemyStore failed: OperationalError", broken) from broken

    monkeypatch.setattr(store, "_tx", tx)


def _session(session_id: str) -> TokenSession:
    return records.make_session(session_id, created_at=records.NOW, expires_at=records.NOW + 1000)


def _writes_are_resent_and_recognised(
    store: SQLAlchemyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.start_session(_session("a"), 5, records.NOW).started
    # A start whose commit held: resent, found, not inserted (or counted) twice.
    _lose_the_next_commit_reply(store, monkeypatch)
    assert store.start_session(_session("b"), 5, records.NOW).started
    assert store.seats_in_use(records.NOW) == 2
    # A rotation whose commit held: the resend finds its own new hash, not a replay.
    _lose_the_next_commit_reply(store, monkeypatch)
    rotated = store.rotate_refresh("b", "hash-b", "next-b", records.NOW + 1100, records.NOW + 10)
    assert rotated is not None and rotated.refresh_hash == "next-b"
    assert store.find_refresh("hash-b", records.NOW + 11) == (rotated, False)
    # Its take-back, likewise.
    _lose_the_next_commit_reply(store, monkeypatch)
    assert store.unrotate_refresh("b", "hash-b", "next-b", records.NOW + 12)
    found = store.find_refresh("hash-b", records.NOW + 13)
    assert found is not None and found[1] is True
    # A logoff whose commit held stays done.
    _lose_the_next_commit_reply(store, monkeypatch)
    store.end_session("b", records.NOW + 14)
    assert store.get_session("b", records.NOW + 15) is None
    assert store.seats_in_use(records.NOW + 15) == 1


def test_writes_are_resent_across_a_failover_and_know_their_first_run(
    server_url: str,
    make_store: t.Callable[..., SQLAlchemyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(server_url, schema=new_schema(), failover_timeout=2)
    _writes_are_resent_and_recognised(store, monkeypatch)


def test_writes_are_resent_on_the_sqlalchemy_sqlite_store_too(
    sqlite_url: str,
    make_store: t.Callable[..., SQLAlchemyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _writes_are_resent_and_recognised(make_store(sqlite_url, failover_timeout=2), monkeypatch)


def test_failover_timeout_defaults_to_ten_seconds_for_several_hosts_only(
    make_store: t.Callable[..., SQLAlchemyStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    several = store_from_url("postgresql://postgres@127.0.0.1:5432,127.0.0.1:5432/test")
    one = make_store(POSTGRESQL_URL, schema=new_schema())
    try:
        assert several.failover_timeout == sql_module.FAILOVER_TIMEOUT == 10.0  # type: ignore[attr-defined]
        assert one.failover_timeout == 0.0
    finally:
        several.close()
    for value in (-1, "5", True):
        with pytest.raises(ConfigurationError, match="failover_timeout"):
            store_from_url(POSTGRESQL_URL, failover_timeout=value)
    # One host: an outage is answered at once (503), nothing is sent twice.
    try:
        one.check()
    except StoreError as exc:
        unavailable(f"{POSTGRESQL_URL} unreachable: {exc}")
    _lose_the_next_commit_reply(one, monkeypatch)
    with pytest.raises(StoreError):
        one.start_session(_session("x"), 5, records.NOW)


@pytest.mark.postgresql
def test_an_unacknowledged_commit_that_then_breaks_is_taken_back_not_resent(
    make_store: t.Callable[..., SQLAlchemyStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server warned that the commit stopped waiting for its standbys, then the
    # connection broke: the start is taken back and reported, never sent again (a resend
    # would start a session whose id the take-back revoked).
    import psycopg

    store = make_store(POSTGRESQL_URL, schema=new_schema(), failover_timeout=2)
    try:
        store.check()
    except StoreError as exc:
        unavailable(f"{POSTGRESQL_URL} unreachable: {exc}")
    real_arm = sql_module.SQLAlchemyStore._arm_commit
    broke: list[bool] = []

    def arm(self: SQLAlchemyStore, conn: t.Any) -> t.Any:
        armed = real_arm(self, conn)
        if armed is not None and not broke:
            broke.append(True)
            notices = armed[1]
            dbapi = conn.connection.dbapi_connection
            real_commit = type(dbapi).commit

            def commit_then_break() -> None:
                del dbapi.commit
                real_commit(dbapi)
                notices.warned = notices.seen = True  # the server's WARNING, then ...
                raise psycopg.OperationalError("server closed the connection unexpectedly")

            dbapi.commit = commit_then_break
        return armed

    monkeypatch.setattr(sql_module.SQLAlchemyStore, "_arm_commit", arm)
    with pytest.raises(StoreError, match="no synchronous standby acknowledged"):
        store.start_session(_session("x"), 5, records.NOW)
    assert store.get_session("x", records.NOW) is None
    assert store.seats_in_use(records.NOW) == 0


def test_a_resent_start_whose_first_commit_lands_late_is_recognised(
    server_url: str,
    make_store: t.Callable[..., SQLAlchemyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first attempt's connection broke while its commit was still under way on the
    # server: the resend's first look misses it, then its insert meets the row. That is
    # our own session: started, once, and no ConflictError (which would be a 500).
    store = make_store(server_url, schema=new_schema(), failover_timeout=5)
    real_once = sql_module.SQLAlchemyStore._start_once
    calls: list[int] = []

    def once(self: SQLAlchemyStore, *args: t.Any, **kwargs: t.Any) -> t.Any:
        calls.append(1)
        if len(calls) == 1:
            real_once(self, *args, **kwargs)  # commits ...
            # ... but the resend's first look is made before it shows:
            monkeypatch.setattr(store, "_read", lambda *a, **k: [])
            cause = Exception("connection lost")
            broken = sa.exc.OperationalError("COMMIT", {}, cause)
            raise StoreError("SQLAlchemyStore failed: OperationalError", broken) from broken
        monkeypatch.undo()  # the look after the conflict sees the row
        return real_once(self, *args, **kwargs)

    monkeypatch.setattr(sql_module.SQLAlchemyStore, "_start_once", once)
    assert store.start_session(_session("y"), 5, records.NOW).started
    assert len(calls) == 2
    assert store.seats_in_use(records.NOW) == 1
