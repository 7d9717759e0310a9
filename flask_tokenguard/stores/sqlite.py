"""``sqlite:///path``: several processes on one machine, stdlib ``sqlite3`` only.

The default store (``sqlite:///<instance_path>/tokenguard.sqlite3``): the default
install needs no server and no extra dependency.

Concurrency:

- WAL journal: readers never block the single writer, nor the writer the readers.
- Every write runs in ``BEGIN IMMEDIATE``, which takes the database's write lock
  *before* the first read. A seat count and the insert that depends on it therefore
  cannot interleave with another writer in any thread or process, and a writer that
  has to wait goes through the busy handler (``busy_timeout``). A deferred transaction
  that reads and then writes would instead fail at once with ``SQLITE_BUSY`` when
  another writer got in between, without ever calling the busy handler.
- Seats are counted by a counter row (``tg_counters.seats_held``: seat-holding rows,
  expired ones included until swept), changed under the write lock by whatever adds,
  ends, replaces or sweeps a seat holder, so a seat start reads one row instead of
  counting the live sessions.
- One connection per thread: a ``sqlite3`` connection must not be used by two threads
  at once, and per-thread connections need no pool.

WAL needs every process on one host with a local disk: SQLite is not for network
shares.
"""

# Every statement below is built from constant table and column names.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import typing as t
from urllib.parse import parse_qsl

from ..errors import ConfigurationError
from ..errors import ConflictError
from ..errors import StoreError
from ..models import AdminSession
from ..models import Client
from ..models import SeatOutcome
from ..models import SigningKey
from ..models import TokenSession
from ..models import User
from . import records
from .base import epoch_text
from .base import EVENTS_KEPT
from .base import impossible_key
from .base import new_epoch
from .base import schemes_of
from .base import session_revoked_until
from .base import Store
from .files import prepare_private_file
from .forks import forget_after_fork
from .retry import retry

#: Version of the tables below, kept in ``tg_schema_version``; older files are migrated
#: in place by the steps of ``_MIGRATIONS``.
SCHEMA_VERSION = 3

_PREFIX = "sqlite:///"

#: Primary result codes of "database is locked" and "database table is locked".
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED

#: Accepted values of ``?synchronous=``. NORMAL survives application crashes; FULL
#: also survives a power loss, at the price of one more fsync per write.
_SYNCHRONOUS = ("normal", "full", "extra")

#: Lockout counters: one row per key, purged once ``until`` has passed.
_FAILURES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tg_failures (
        key TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        until REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tg_failures_until ON tg_failures (until)",
)

#: Tables and the index that version 3 added (seat caps, admin console, events).
_V3_SCHEMA = (
    # A client's live seats are counted, and its oldest found, on every capped start.
    """CREATE INDEX IF NOT EXISTS tg_sessions_client_seat
        ON tg_sessions (client_id, holds_seat, created_at)""",
    """CREATE TABLE IF NOT EXISTS tg_admin_sessions (
        session_hash TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS tg_admin_sessions_expires_at
        ON tg_admin_sessions (expires_at)""",
    # AUTOINCREMENT: ids never go back after a trim, so "newest" is "highest id".
    """CREATE TABLE IF NOT EXISTS tg_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL
    )""",
)

#: DDL run in one ``BEGIN IMMEDIATE`` transaction, so that processes opening a new file
#: at the same moment create it exactly once: the first takes the write lock, and the
#: others wait for it, then find every ``IF NOT EXISTS`` satisfied.
#: Table and column names are those of the SQL server store (``stores/sql/schema.py``).
_SCHEMA = (
    # Kept only so that a release that knows version 1 alone refuses a newer file
    # instead of taking it for a new one; this release reads ``tg_schema_version``.
    """CREATE TABLE IF NOT EXISTS tg_meta (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tg_schema_version (
        id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tg_counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS tg_claims (name TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS tg_signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        private_pem TEXT NOT NULL,
        created_at REAL NOT NULL,
        retire_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS tg_clients (
        client_id TEXT PRIMARY KEY,
        alias TEXT UNIQUE,
        name TEXT NOT NULL,
        secret_hash TEXT,
        grants TEXT NOT NULL,
        scopes TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_at REAL NOT NULL,
        max_seats INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS tg_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS tg_sessions (
        session_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        scope TEXT NOT NULL,
        holds_seat INTEGER NOT NULL,
        refresh_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tg_sessions_expires_at ON tg_sessions (expires_at)",
    "CREATE INDEX IF NOT EXISTS tg_sessions_client_id ON tg_sessions (client_id)",
    # Used refresh hashes are kept for replay detection while their session lives; the
    # cascade drops them with the session (expiry sweep or end).
    """CREATE TABLE IF NOT EXISTS tg_used_refresh (
        refresh_hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL
            REFERENCES tg_sessions (session_id) ON DELETE CASCADE
    )""",
    """CREATE INDEX IF NOT EXISTS tg_used_refresh_session_id
        ON tg_used_refresh (session_id)""",
    """CREATE TABLE IF NOT EXISTS tg_revoked (
        token_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tg_revoked_seq ON tg_revoked (seq)",
    "CREATE INDEX IF NOT EXISTS tg_revoked_expires_at ON tg_revoked (expires_at)",
    *_FAILURES_SCHEMA,
    *_V3_SCHEMA,
    "INSERT OR IGNORE INTO tg_counters (name, value) VALUES ('revocation_seq', 0)",
    "INSERT OR IGNORE INTO tg_counters (name, value) VALUES ('seats_held', 0)",
    f"INSERT OR IGNORE INTO tg_meta (name, value) VALUES ('schema_version', {SCHEMA_VERSION})",
    f"INSERT OR IGNORE INTO tg_schema_version (id, version) VALUES (1, {SCHEMA_VERSION})",
)

#: Version 1 to 2: the names of the SQL server store (``tg_counters``,
#: ``tg_schema_version``, ``tg_used_refresh.refresh_hash``), and ``tg_failures``, which
#: files created by the first releases of version 1 lack. Every row is kept.
_MIGRATE_1_TO_2 = (
    *_FAILURES_SCHEMA,
    "ALTER TABLE tg_used_refresh RENAME COLUMN hash TO refresh_hash",
    """CREATE TABLE tg_counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    "INSERT INTO tg_counters (name, value)"
    " SELECT name, value FROM tg_meta WHERE name = 'revocation_seq'",
    "INSERT OR IGNORE INTO tg_counters (name, value) VALUES ('revocation_seq', 0)",
    "DELETE FROM tg_meta WHERE name != 'schema_version'",
    """CREATE TABLE tg_schema_version (
        id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
    "INSERT INTO tg_schema_version (id, version) VALUES (1, 2)",
    "UPDATE tg_meta SET value = 2 WHERE name = 'schema_version'",
)

#: Version 2 to 3: clients' seat caps, admin users, admin sessions and events, and the
#: held-seats counter, computed from the sessions. Old clients get no cap of their own
#: (NULL) and old users are no administrators.
_MIGRATE_2_TO_3 = (
    "ALTER TABLE tg_clients ADD COLUMN max_seats INTEGER",
    "ALTER TABLE tg_users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0",
    *_V3_SCHEMA,
    "INSERT OR REPLACE INTO tg_counters (name, value)"
    " SELECT 'seats_held', count(*) FROM tg_sessions WHERE holds_seat = 1",
    "UPDATE tg_schema_version SET version = 3 WHERE id = 1",
    "UPDATE tg_meta SET value = 3 WHERE name = 'schema_version'",
)

#: Upgrade steps: the version a file has -> statements that bring it to the next one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _MIGRATE_1_TO_2, 2: _MIGRATE_2_TO_3}

#: Tables emptied by ``reset()``; ``tg_used_refresh`` before ``tg_sessions``.
_DATA_TABLES = (
    "tg_claims",
    "tg_signing_keys",
    "tg_clients",
    "tg_users",
    "tg_used_refresh",
    "tg_sessions",
    "tg_revoked",
    "tg_failures",
    "tg_admin_sessions",
    "tg_events",
)

# Statements, written once here so that each method reads as its logic, and so that
# every query in the store can be reviewed (and index-checked) in one place.

_GET_SCHEMA_VERSION = "SELECT version FROM tg_schema_version WHERE id = 1"
#: Where version 1 kept its version number.
_GET_V1_SCHEMA_VERSION = "SELECT value FROM tg_meta WHERE name = 'schema_version'"
_GET_SEQ = "SELECT value FROM tg_counters WHERE name = 'revocation_seq'"
_ADD_TO_SEQ = "UPDATE tg_counters SET value = value + ? WHERE name = 'revocation_seq'"
_ZERO_SEQ = "UPDATE tg_counters SET value = 0 WHERE name = 'revocation_seq'"
_GET_SEATS_HELD = "SELECT value FROM tg_counters WHERE name = 'seats_held'"
_SET_SEATS_HELD = "UPDATE tg_counters SET value = ? WHERE name = 'seats_held'"
_ADD_SEATS_HELD = "UPDATE tg_counters SET value = value + ? WHERE name = 'seats_held'"
_ZERO_SEATS_HELD = "UPDATE tg_counters SET value = 0 WHERE name = 'seats_held'"
#: The revocation epoch is a random number in the counters table, beside the counter.
_GET_EPOCH = "SELECT value FROM tg_counters WHERE name = 'revocation_epoch'"
_CREATE_EPOCH = "INSERT OR IGNORE INTO tg_counters (name, value) VALUES ('revocation_epoch', ?)"
_RENEW_EPOCH = "INSERT OR REPLACE INTO tg_counters (name, value) VALUES ('revocation_epoch', ?)"

_CLAIM = "INSERT OR IGNORE INTO tg_claims (name) VALUES (?)"

_KEY_COLUMNS = ", ".join(records.KEY_COLUMNS)
_KEY_VALUES = ", ".join(f":{c}" for c in records.KEY_COLUMNS)
_ANY_KEY = "SELECT 1 FROM tg_signing_keys LIMIT 1"
_LIST_KEYS = f"SELECT {_KEY_COLUMNS} FROM tg_signing_keys ORDER BY created_at, rowid"
_INSERT_KEY = f"INSERT INTO tg_signing_keys ({_KEY_COLUMNS}) VALUES ({_KEY_VALUES})"
_RETIRE_KEYS = "UPDATE tg_signing_keys SET retire_at = ? WHERE retire_at IS NULL"
_DROP_RETIRED_KEYS = "DELETE FROM tg_signing_keys WHERE retire_at IS NOT NULL AND retire_at <= ?"

_CLIENT_COLUMNS = ", ".join(records.CLIENT_COLUMNS)
_CLIENT_VALUES = ", ".join(f":{c}" for c in records.CLIENT_COLUMNS)
#: Ids and aliases share one namespace: a new client's id and alias (or its id twice).
_NAME_TAKEN = (
    "SELECT 1 FROM tg_clients WHERE client_id IN (:id, :alias) OR alias IN (:id, :alias) LIMIT 1"
)
_ALIAS_TAKEN_BY_OTHER = (
    "SELECT 1 FROM tg_clients WHERE client_id != :id AND (client_id = :alias OR alias = :alias)"
)
_CLIENT_EXISTS = "SELECT 1 FROM tg_clients WHERE client_id = ?"
_INSERT_CLIENT = f"INSERT INTO tg_clients ({_CLIENT_COLUMNS}) VALUES ({_CLIENT_VALUES})"
#: Ids and aliases are disjoint, so one row at most matches; the ORDER BY only makes
#: "id first" explicit.
_GET_CLIENT = (
    f"SELECT {_CLIENT_COLUMNS} FROM tg_clients WHERE client_id = :name OR alias = :name"
    " ORDER BY client_id = :name DESC LIMIT 1"
)
_UPDATE_CLIENT = (
    "UPDATE tg_clients SET alias = :alias, name = :name, secret_hash = :secret_hash,"
    " grants = :grants, scopes = :scopes, enabled = :enabled, created_at = :created_at,"
    " max_seats = :max_seats WHERE client_id = :client_id"
)
_DELETE_CLIENT = "DELETE FROM tg_clients WHERE client_id = ?"
_LIST_CLIENTS = f"SELECT {_CLIENT_COLUMNS} FROM tg_clients ORDER BY created_at, client_id"

_USER_COLUMNS = ", ".join(records.USER_COLUMNS)
_USER_VALUES = ", ".join(f":{c}" for c in records.USER_COLUMNS)
_INSERT_USER = f"INSERT OR IGNORE INTO tg_users ({_USER_COLUMNS}) VALUES ({_USER_VALUES})"
_GET_USER = f"SELECT {_USER_COLUMNS} FROM tg_users WHERE username = ?"
_UPDATE_USER = (
    "UPDATE tg_users SET password_hash = :password_hash, created_at = :created_at,"
    " admin = :admin WHERE username = :username"
)
_DELETE_USER = "DELETE FROM tg_users WHERE username = ?"
_LIST_USERS = f"SELECT {_USER_COLUMNS} FROM tg_users ORDER BY username"

_SESSION_COLUMNS = ", ".join(records.SESSION_COLUMNS)
_SESSION_VALUES = ", ".join(f":{c}" for c in records.SESSION_COLUMNS)
_S_SESSION_COLUMNS = ", ".join(f"s.{c.strip()}" for c in _SESSION_COLUMNS.split(","))
#: Deleting a session cascades to its used refresh hashes; the cascade is not in the
#: statement's change count, so the seat sweep's count is of seats alone.
_SWEEP_SEATS = "DELETE FROM tg_sessions WHERE holds_seat = 1 AND expires_at <= ?"
_SWEEP_FREE = "DELETE FROM tg_sessions WHERE holds_seat = 0 AND expires_at <= ?"
_COUNT_SEATS = "SELECT count(*) FROM tg_sessions WHERE holds_seat = 1 AND expires_at > ?"
_EARLIEST_SEAT_EXPIRY = (
    "SELECT min(expires_at) FROM tg_sessions WHERE holds_seat = 1 AND expires_at > ?"
)
#: By ``tg_sessions_client_seat``: one client's seats, in the order they are replaced.
_COUNT_CLIENT_SEATS = (
    "SELECT count(*) FROM tg_sessions WHERE client_id = ? AND holds_seat = 1 AND expires_at > ?"
)
_OLDEST_CLIENT_SEATS = (
    f"SELECT {_SESSION_COLUMNS} FROM tg_sessions"
    " WHERE client_id = ? AND holds_seat = 1 AND expires_at > ?"
    " ORDER BY created_at, session_id LIMIT ?"
)
_EARLIEST_CLIENT_SEAT_EXPIRY = (
    "SELECT min(expires_at) FROM tg_sessions"
    " WHERE client_id = ? AND holds_seat = 1 AND expires_at > ?"
)
_INSERT_SESSION = f"INSERT INTO tg_sessions ({_SESSION_COLUMNS}) VALUES ({_SESSION_VALUES})"
_GET_SESSION = f"SELECT {_SESSION_COLUMNS} FROM tg_sessions WHERE session_id = ?"
_GET_LIVE_SESSION = _GET_SESSION + " AND expires_at > ?"
#: Current hash first, else a used one; one statement, so one snapshot: a concurrent
#: rotation moves a hash from current to used atomically, and we see exactly one side.
_FIND_REFRESH = (
    f"SELECT {_SESSION_COLUMNS}, 1 AS is_current FROM tg_sessions"
    " WHERE refresh_hash = :hash AND expires_at > :now"
    f" UNION ALL SELECT {_S_SESSION_COLUMNS}, 0"
    " FROM tg_used_refresh AS u JOIN tg_sessions AS s ON s.session_id = u.session_id"
    " WHERE u.refresh_hash = :hash AND s.expires_at > :now"
    " LIMIT 1"
)
#: The compare-and-swap: the WHERE clause is the comparison.
_SWAP_REFRESH = (
    "UPDATE tg_sessions SET refresh_hash = ?, expires_at = ?"
    " WHERE session_id = ? AND refresh_hash = ? AND expires_at > ?"
)
_MARK_USED = "INSERT OR REPLACE INTO tg_used_refresh (refresh_hash, session_id) VALUES (?, ?)"
_UNSWAP_REFRESH = (
    "UPDATE tg_sessions SET refresh_hash = ?"
    " WHERE session_id = ? AND refresh_hash = ? AND expires_at > ? AND EXISTS (SELECT 1"
    " FROM tg_used_refresh AS u WHERE u.refresh_hash = ? AND u.session_id = tg_sessions.session_id)"
)
_FORGET_USED = "DELETE FROM tg_used_refresh WHERE refresh_hash = ? AND session_id = ?"
_DELETE_SESSION = "DELETE FROM tg_sessions WHERE session_id = ?"
_ALL_SESSIONS = f"SELECT {_SESSION_COLUMNS} FROM tg_sessions"
_CLIENT_SESSIONS = _ALL_SESSIONS + " WHERE client_id = ?"
_LIST_SESSIONS = (
    f"SELECT {_SESSION_COLUMNS} FROM tg_sessions"
    " WHERE expires_at > :now AND (:client_id IS NULL OR client_id = :client_id)"
    " ORDER BY created_at, session_id"
)

_REVOKE = "INSERT OR REPLACE INTO tg_revoked (token_id, expires_at, seq) VALUES (?, ?, ?)"
_PURGE_REVOKED = "DELETE FROM tg_revoked WHERE expires_at <= ?"
_REVOKED_SINCE = "SELECT token_id, expires_at FROM tg_revoked WHERE seq > ? AND expires_at > ?"

_ADMIN_COLUMNS = "session_hash, username, created_at, expires_at"
_INSERT_ADMIN = f"INSERT OR REPLACE INTO tg_admin_sessions ({_ADMIN_COLUMNS}) VALUES (?, ?, ?, ?)"
_PURGE_ADMIN = "DELETE FROM tg_admin_sessions WHERE expires_at <= ?"
#: The touch: the WHERE clause is the liveness check, so a session cannot expire
#: between being checked and being extended.
_TOUCH_ADMIN = (
    "UPDATE tg_admin_sessions SET expires_at = ? WHERE session_hash = ? AND expires_at > ?"
)
_GET_ADMIN = f"SELECT {_ADMIN_COLUMNS} FROM tg_admin_sessions WHERE session_hash = ?"
_DELETE_ADMIN = "DELETE FROM tg_admin_sessions WHERE session_hash = ?"

_INSERT_EVENT = "INSERT INTO tg_events (event) VALUES (?)"
#: The id of the ``keep``-th newest event (OFFSET ``keep - 1``); older ones are trimmed.
_EVENT_CUTOFF = "SELECT id FROM tg_events ORDER BY id DESC LIMIT 1 OFFSET ?"
_TRIM_EVENTS = "DELETE FROM tg_events WHERE id < ?"
_RECENT_EVENTS = "SELECT event FROM tg_events ORDER BY id DESC LIMIT ?"

#: Run first in ``record_failure``: afterwards any row of the key is live.
_PURGE_FAILURES = "DELETE FROM tg_failures WHERE until <= ?"
_GET_FAILURES = "SELECT count, until FROM tg_failures WHERE key = ?"
_GET_LIVE_FAILURES = _GET_FAILURES + " AND until > ?"
_COUNT_FAILURE = "UPDATE tg_failures SET count = count + 1 WHERE key = ?"
_FIRST_FAILURE = "INSERT INTO tg_failures (key, count, until) VALUES (?, 1, ?)"
_CLEAR_FAILURES = "DELETE FROM tg_failures WHERE key = ?"
_RELEASE_FAILURE = (
    "UPDATE tg_failures SET count = count - 1 WHERE key = ? AND until > ? AND count > 0"
)

#: Connections inherited through ``fork()``. SQLite forbids using, and advises against
#: closing, a connection in a child process: they stay referenced and are never closed.
_FORK_ORPHANS: list[sqlite3.Connection] = []

#: ``_enable_wal``'s sleeps between attempts: the first, and the cap.
_WAL_DELAYS = (0.002, 0.05)


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?opt=value`` into the file path and its options.

    As in SQLAlchemy, the path is everything after the third slash: ``sqlite:///rel/x``
    is relative to the working directory and ``sqlite:////abs/x`` is absolute.
    """
    if not url.lower().startswith(_PREFIX):
        raise ConfigurationError(
            f"TOKENGUARD_STORE_URL {url!r} must look like sqlite:///relative/path"
            " or sqlite:////absolute/path"
        )
    path, _, query = url[len(_PREFIX) :].partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        # An in-memory database would be private to one connection, i.e. one thread.
        raise ConfigurationError(
            f"TOKENGUARD_STORE_URL {url!r} must name a file; use memory:// for a throwaway store"
        )
    return path, dict(parse_qsl(query, keep_blank_values=True))


class SQLiteStore(Store):
    """Tables in one SQLite file, shared by the processes of one machine."""

    schemes = schemes_of("sqlite")

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        synchronous: str | None = None,
        **options: t.Any,
    ) -> None:
        """Open ``url`` and create the schema if the file is new.

        :param timeout: seconds a writer waits for the write lock before ``StoreError``.
        :param synchronous: ``normal`` (default), ``full`` or ``extra``; the URL's
            ``?synchronous=`` wins.
        """
        path, query = parse_url(url)
        synchronous = query.pop("synchronous", synchronous) or "normal"
        if query or options:
            unknown = ", ".join(sorted({*query, *options}))
            raise ConfigurationError(f"unknown SQLite store option(s): {unknown}")
        if synchronous.lower() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SQLite synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        #: The database file; absolute, so that changing directory is harmless.
        self.path = os.path.abspath(path)
        self._synchronous = synchronous.upper()
        self._timeout = float(timeout)
        self._local = threading.local()
        #: Guards ``_connections`` and ``_generation``.
        self._lock = threading.Lock()
        #: Every open connection by owning thread, so that ``close()`` and the pruning
        #: of ended threads close them explicitly instead of leaving it to the GC.
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        #: Bumped by ``close()``: a thread whose connection is older reconnects.
        self._generation = 0
        forget_after_fork(self)
        prepare_private_file(self.path)
        with self.wrap_errors():
            self._create_schema()
            # Hold no connection after set-up: a server that forks its workers after
            # loading the app must not hand this process's connection to them.
            self.close()

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    # -- connections and transactions --------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and again after ``close()``."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.generation == self._generation:
            return conn
        conn = self._open()
        thread = threading.current_thread()
        with self._lock:
            # Close the connections of ended threads: a server that starts a thread per
            # request would otherwise pile them up.
            for ended in [th for th in self._connections if not th.is_alive()]:
                self._connections.pop(ended).close()
            previous = self._connections.pop(thread, None)
            if previous is not None:
                previous.close()
            self._connections[thread] = conn
            local.conn = conn
            local.generation = self._generation
        return conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the module never issues an implicit BEGIN; we issue
        # our own. check_same_thread=False only so that close() may close another
        # thread's connection; each connection is still used by its own thread alone.
        conn = sqlite3.connect(
            self.path,
            timeout=self._timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Rows read by column name, for ``records``; by index where that is clearer.
            conn.row_factory = sqlite3.Row
        except BaseException:
            conn.close()
            raise
        return conn

    def _forget_connections(self) -> None:
        """After ``fork()``, in the child: drop the parent's connections untouched."""
        _FORK_ORPHANS.extend(self._connections.values())
        self._connections = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def _write(self) -> t.ContextManager[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement."""
        # BEGIN IMMEDIATE: take the write lock before reading anything, so that what
        # we read (a seat count, a refresh hash, a taken alias) cannot change before
        # we write, and so that waiting for another writer uses the busy handler.
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> t.ContextManager[sqlite3.Connection]:
        """A read transaction: its statements share one snapshot, and never block."""
        return self._transaction("BEGIN")

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> t.Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute(begin)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (persistent: once per file); wait out other openers.

        Switching takes exclusive access for a moment, and while another process holds
        any lock on the file (it is opening the same new file, say) the PRAGMA fails at
        once with "database is locked": the busy handler is not used. So retry, with
        short jittered sleeps, for up to the store's timeout.
        """

        def switch() -> None:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL").fetchone()

        first, cap = _WAL_DELAYS
        retry(
            switch,
            retry_if=lambda exc: isinstance(exc, sqlite3.OperationalError) and _is_busy(exc),
            patience=self._timeout,
            delay=first,
            max_delay=cap,
        )

    def _create_schema(self) -> None:
        conn = self._connection()
        self._enable_wal(conn)
        # Read first: an existing file (the usual case) needs no write lock.
        version = _schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version};"
                f" this flask_tokenguard supports {SCHEMA_VERSION}. Upgrade flask-tokenguard."
            )
        with self._write() as conn:
            # Under the write lock, read again: another process may have created or
            # migrated the file since our first read.
            version = _schema_version(conn)
            if version is None:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(_CREATE_EPOCH, (new_epoch(),))
                return
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1

    # -- lifecycle ---------------------------------------------------------------------

    def check(self) -> None:
        self._connection().execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Close every connection of this store; any thread reconnects on next use."""
        with self._lock:
            self._generation += 1
            connections = list(self._connections.values())
            self._connections.clear()
        self._local.conn = None
        for conn in connections:
            conn.close()

    def reset(self) -> None:
        with self._write() as conn:
            for table in _DATA_TABLES:
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - constant names
            # A counter that restarts starts a new epoch, in the same transaction.
            conn.execute(_ZERO_SEQ)
            conn.execute(_ZERO_SEATS_HELD)
            conn.execute(_RENEW_EPOCH, (new_epoch(),))

    def claim_once(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute(_CLAIM, (name,)).rowcount == 1

    # -- signing keys ------------------------------------------------------------------

    def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        with self._write() as conn:
            # Under the write lock: of processes starting at once, exactly one inserts.
            if conn.execute(_ANY_KEY).fetchone() is None:
                conn.execute(_INSERT_KEY, records.key_record(candidate))
            return [records.key_from(row) for row in conn.execute(_LIST_KEYS)]

    def add_signing_key(self, key: SigningKey, retire_others_at: float) -> None:
        with self._write() as conn:
            conn.execute(_RETIRE_KEYS, (retire_others_at,))
            conn.execute(_INSERT_KEY, records.key_record(key))

    def signing_keys(self, now: float) -> list[SigningKey]:
        # Read first: every process calls this every few seconds, and only rarely
        # is there a key to drop, the one case that needs the write lock.
        keys = [records.key_from(row) for row in self._connection().execute(_LIST_KEYS)]
        if any(k.retire_at is not None and k.retire_at <= now for k in keys):
            with self._write() as conn:
                conn.execute(_DROP_RETIRED_KEYS, (now,))
                keys = [records.key_from(row) for row in conn.execute(_LIST_KEYS)]
        return keys

    # -- clients -----------------------------------------------------------------------

    def create_client(self, client: Client) -> None:
        with self._write() as conn:
            # No UNIQUE constraint spans ids and aliases together; the write lock makes
            # this check and the insert one step.
            names = {"id": client.client_id, "alias": client.alias or client.client_id}
            if conn.execute(_NAME_TAKEN, names).fetchone() is not None:
                raise ConflictError("client id or alias is taken")
            conn.execute(_INSERT_CLIENT, records.client_record(client))

    def get_client(self, id_or_alias: str) -> Client | None:
        if impossible_key(id_or_alias):
            return None
        name = {"name": id_or_alias}
        row = self._connection().execute(_GET_CLIENT, name).fetchone()
        return None if row is None else records.client_from(row)

    def update_client(self, client: Client) -> bool:
        with self._write() as conn:
            if conn.execute(_CLIENT_EXISTS, (client.client_id,)).fetchone() is None:
                return False
            if client.alias:
                names = {"id": client.client_id, "alias": client.alias}
                if conn.execute(_ALIAS_TAKEN_BY_OTHER, names).fetchone() is not None:
                    raise ConflictError("alias is taken")
            conn.execute(_UPDATE_CLIENT, records.client_record(client))
            return True

    def delete_client(self, client_id: str) -> bool:
        if impossible_key(client_id):
            return False
        with self._write() as conn:
            return conn.execute(_DELETE_CLIENT, (client_id,)).rowcount == 1

    def list_clients(self) -> list[Client]:
        return [records.client_from(row) for row in self._connection().execute(_LIST_CLIENTS)]

    # -- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        with self._write() as conn:
            if conn.execute(_INSERT_USER, records.user_record(user)).rowcount != 1:
                raise ConflictError("user exists")

    def get_user(self, username: str) -> User | None:
        if impossible_key(username):
            return None
        row = self._connection().execute(_GET_USER, (username,)).fetchone()
        return None if row is None else records.user_from(row)

    def update_user(self, user: User) -> bool:
        with self._write() as conn:
            return conn.execute(_UPDATE_USER, records.user_record(user)).rowcount == 1

    def delete_user(self, username: str) -> bool:
        if impossible_key(username):
            return False
        with self._write() as conn:
            return conn.execute(_DELETE_USER, (username,)).rowcount == 1

    def list_users(self) -> list[User]:
        return [records.user_from(row) for row in self._connection().execute(_LIST_USERS)]

    # -- sessions and seats ------------------------------------------------------------

    def start_session(
        self,
        session: TokenSession,
        seat_limit: int | None,
        now: float,
        *,
        skew: float = 0.0,
        client_cap: int | None = None,
        replace_oldest: bool = False,
    ) -> SeatOutcome:
        # Seats are reclaimed only once expired on every host's clock (see ``Store``).
        before = now - max(skew, 0.0)
        with self._write() as conn:
            # Sweep, count, replace and insert under one write lock: no other thread or
            # process can take a seat between our counts and our insert.
            swept = conn.execute(_SWEEP_SEATS, (before,)).rowcount
            conn.execute(_SWEEP_FREE, (before,))
            conn.execute(_PURGE_REVOKED, (now,))
            if not session.holds_seat:
                if swept:
                    conn.execute(_ADD_SEATS_HELD, (-swept,))
                conn.execute(_INSERT_SESSION, records.session_record(session))
                return SeatOutcome(True, None)
            (counter,) = conn.execute(_GET_SEATS_HELD).fetchone()
            held = int(counter) - swept
            outcome = self._take_seat(
                conn, session, held, seat_limit, before, client_cap, now, replace_oldest
            )
            if outcome.started:
                held += 1 - len(outcome.replaced)
            if held != int(counter):
                conn.execute(_SET_SEATS_HELD, (held,))
            return outcome

    @staticmethod
    def _take_seat(
        conn: sqlite3.Connection,
        session: TokenSession,
        held: int,
        seat_limit: int | None,
        before: float,
        client_cap: int | None,
        now: float,
        replace_oldest: bool,
    ) -> SeatOutcome:
        """Insert a seat holder if the caps allow, replacing the client's oldest if asked.

        In ``start_session``'s write transaction, after the sweep; ``held`` is the
        counter then. The caller updates the counter.
        """
        replaced: list[TokenSession] = []
        if client_cap is not None:
            key = (session.client_id, before)
            (mine,) = conn.execute(_COUNT_CLIENT_SEATS, key).fetchone()
            excess = int(mine) - client_cap + 1
            if excess > 0:
                if not replace_oldest or client_cap <= 0:
                    return SeatOutcome(False, "client")
                rows = conn.execute(_OLDEST_CLIENT_SEATS, (*key, excess)).fetchall()
                replaced = [records.session_from(row) for row in rows]
        # Decided before anything ends, so that a refusal changes nothing.
        if seat_limit is not None and held - len(replaced) >= seat_limit:
            return SeatOutcome(False, "pool")
        _end(conn, replaced, now)
        conn.execute(_INSERT_SESSION, records.session_record(session))
        return SeatOutcome(True, None, tuple(replaced))

    def earliest_seat_expiry(self, now: float, client_id: str | None = None) -> float | None:
        conn = self._connection()
        if client_id is None:
            (earliest,) = conn.execute(_EARLIEST_SEAT_EXPIRY, (now,)).fetchone()
        elif impossible_key(client_id):
            return None
        else:
            query = (client_id, now)
            (earliest,) = conn.execute(_EARLIEST_CLIENT_SEAT_EXPIRY, query).fetchone()
        return None if earliest is None else float(earliest)

    def seats_in_use(self, now: float) -> int:
        (held,) = self._connection().execute(_COUNT_SEATS, (now,)).fetchone()
        return int(held)

    def get_session(self, session_id: str, now: float) -> TokenSession | None:
        if impossible_key(session_id):
            return None
        row = self._connection().execute(_GET_LIVE_SESSION, (session_id, now)).fetchone()
        return None if row is None else records.session_from(row)

    def find_refresh(self, refresh_hash: str, now: float) -> tuple[TokenSession, bool] | None:
        if impossible_key(refresh_hash):
            return None
        row = (
            self._connection().execute(_FIND_REFRESH, {"hash": refresh_hash, "now": now}).fetchone()
        )
        return None if row is None else (records.session_from(row), bool(row["is_current"]))

    def rotate_refresh(
        self,
        session_id: str,
        old_hash: str,
        new_hash: str,
        expires_at: float,
        now: float,
    ) -> TokenSession | None:
        with self._write() as conn:
            # The write lock makes the swap and the "used" record of the old hash one
            # step: no reader sees the old hash as neither current nor used.
            swap = (new_hash, expires_at, session_id, old_hash, now)
            if conn.execute(_SWAP_REFRESH, swap).rowcount != 1:
                return None
            conn.execute(_MARK_USED, (old_hash, session_id))
            return records.session_from(conn.execute(_GET_SESSION, (session_id,)).fetchone())

    def unrotate_refresh(self, session_id: str, old_hash: str, new_hash: str, now: float) -> bool:
        with self._write() as conn:
            unswap = (old_hash, session_id, new_hash, now, old_hash)
            if conn.execute(_UNSWAP_REFRESH, unswap).rowcount != 1:
                return False
            conn.execute(_FORGET_USED, (old_hash, session_id))
            return True

    def end_session(self, session_id: str, now: float) -> TokenSession | None:
        if impossible_key(session_id):
            return None
        with self._write() as conn:
            conn.execute(_PURGE_REVOKED, (now,))
            row = conn.execute(_GET_SESSION, (session_id,)).fetchone()
            if row is None:
                return None
            session = records.session_from(row)
            _end(conn, [session], now)
            if session.holds_seat:
                conn.execute(_ADD_SEATS_HELD, (-1,))
            return session if session.is_live(now) else None

    def end_sessions(self, client_id: str | None, now: float) -> int:
        with self._write() as conn:
            conn.execute(_PURGE_REVOKED, (now,))
            if client_id is None:
                rows = conn.execute(_ALL_SESSIONS).fetchall()
            else:
                rows = conn.execute(_CLIENT_SESSIONS, (client_id,)).fetchall()
            sessions = [records.session_from(row) for row in rows]
            _end(conn, sessions, now)
            seats = sum(1 for s in sessions if s.holds_seat)
            if seats:
                conn.execute(_ADD_SEATS_HELD, (-seats,))
            return sum(1 for s in sessions if s.is_live(now))

    def list_sessions(self, client_id: str | None, now: float) -> list[TokenSession]:
        query = {"now": now, "client_id": client_id}
        rows = self._connection().execute(_LIST_SESSIONS, query)
        return [records.session_from(row) for row in rows]

    # -- revocation --------------------------------------------------------------------

    def revoke(self, token_id: str, expires_at: float, now: float) -> None:
        with self._write() as conn:
            conn.execute(_PURGE_REVOKED, (now,))
            seq = _advance_seq(conn, 1)
            conn.execute(_REVOKE, (token_id, expires_at, seq))

    def revocation_seq(self) -> int:
        # Polled by every process several times a second: one primary-key read.
        (seq,) = self._connection().execute(_GET_SEQ).fetchone()
        return int(seq)

    def revocation_epoch(self) -> str:
        row = self._connection().execute(_GET_EPOCH).fetchone()
        if row is None:
            # A file created before epochs: create it once, under the write lock.
            with self._write() as conn:
                conn.execute(_CREATE_EPOCH, (new_epoch(),))
                row = conn.execute(_GET_EPOCH).fetchone()
        return epoch_text(int(row[0]))

    def revocations_since(self, seq: int, now: float) -> tuple[dict[str, float], int]:
        with self._read() as conn:
            # One snapshot for both reads. Read apart, a revocation committed in
            # between could be counted in the returned seq yet missing from the
            # entries, and the caller would never ask for it again.
            (current,) = conn.execute(_GET_SEQ).fetchone()
            rows = conn.execute(_REVOKED_SINCE, (seq, now)).fetchall()
            return {token_id: float(exp) for token_id, exp in rows}, int(current)

    # -- admin console sessions --------------------------------------------------------

    def start_admin_session(self, session: AdminSession) -> None:
        row = (session.session_hash, session.username, session.created_at, session.expires_at)
        with self._write() as conn:
            # Sessions never signed out would stay forever: drop those expired by now.
            conn.execute(_PURGE_ADMIN, (session.created_at,))
            conn.execute(_INSERT_ADMIN, row)

    def touch_admin_session(
        self, session_hash: str, now: float, expires_at: float
    ) -> AdminSession | None:
        if impossible_key(session_hash):
            return None
        with self._write() as conn:
            if conn.execute(_TOUCH_ADMIN, (expires_at, session_hash, now)).rowcount != 1:
                conn.execute(_DELETE_ADMIN, (session_hash,))  # expired, or absent
                return None
            return _admin_from(conn.execute(_GET_ADMIN, (session_hash,)).fetchone())

    def end_admin_session(self, session_hash: str) -> AdminSession | None:
        if impossible_key(session_hash):
            return None
        with self._write() as conn:
            row = conn.execute(_GET_ADMIN, (session_hash,)).fetchone()
            if row is None:
                return None
            conn.execute(_DELETE_ADMIN, (session_hash,))
            return _admin_from(row)

    # -- recent security events --------------------------------------------------------

    def add_event(self, event: t.Mapping[str, str], keep: int = EVENTS_KEPT) -> None:
        # ASCII JSON: escapes keep any string exact, whatever the column's encoding.
        text = json.dumps(dict(event))
        keep = max(keep, 1)
        with self._write() as conn:
            event_id = conn.execute(_INSERT_EVENT, (text,)).lastrowid
            # Trim once per batch, not per insert: between trims at most ``batch - 1``
            # extra events stay, so never more than twice ``keep``.
            if event_id is not None and event_id % _event_batch(keep) == 0:
                row = conn.execute(_EVENT_CUTOFF, (keep - 1,)).fetchone()
                if row is not None:
                    conn.execute(_TRIM_EVENTS, (row[0],))

    def recent_events(self, limit: int = 100) -> list[dict[str, str]]:
        if limit <= 0:
            return []
        rows = self._connection().execute(_RECENT_EVENTS, (limit,))
        return [json.loads(row[0]) for row in rows]

    # -- lockout counters --------------------------------------------------------------

    def record_failure(self, key: str, window: float, now: float) -> tuple[int, float]:
        with self._write() as conn:
            # Under the write lock, purge, read and write are one step: concurrent
            # failures of one key each see the previous one's count.
            conn.execute(_PURGE_FAILURES, (now,))
            row = conn.execute(_GET_FAILURES, (key,)).fetchone()
            if row is None:
                until = now + window
                conn.execute(_FIRST_FAILURE, (key, until))
                return 1, until
            conn.execute(_COUNT_FAILURE, (key,))
            return int(row[0]) + 1, float(row[1])

    def failures(self, key: str, now: float) -> tuple[int, float]:
        row = self._connection().execute(_GET_LIVE_FAILURES, (key, now)).fetchone()
        return (0, 0.0) if row is None else (int(row[0]), float(row[1]))

    def clear_failures(self, key: str) -> None:
        with self._write() as conn:
            conn.execute(_CLEAR_FAILURES, (key,))

    def release_failure(self, key: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(_RELEASE_FAILURE, (key, now))


# -- helpers ---------------------------------------------------------------------------


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` means another connection holds a lock ("database is locked")."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        # An extended result code keeps its primary code in the low byte.
        return (code & 0xFF) in _BUSY_CODES
    message = str(exc)
    return "database is locked" in message or "database table is locked" in message


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after a failure, keeping the original error if this fails too."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """The file's schema version; None for a new file without tables."""
    for query in (_GET_SCHEMA_VERSION, _GET_V1_SCHEMA_VERSION):
        try:
            row = conn.execute(query).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                continue
            raise
        if row is not None:
            return int(row[0])
    return None


def _admin_from(row: sqlite3.Row) -> AdminSession:
    return AdminSession(
        session_hash=row["session_hash"],
        username=row["username"],
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
    )


def _event_batch(keep: int) -> int:
    """Every how many inserts ``add_event`` trims: at most ``keep``, at most 100."""
    return max(1, min(100, keep))


def _advance_seq(conn: sqlite3.Connection, count: int) -> int:
    """Advance ``revocation_seq`` by ``count`` (in a write transaction); return it."""
    conn.execute(_ADD_TO_SEQ, (count,))
    (seq,) = conn.execute(_GET_SEQ).fetchone()
    return int(seq)


def _end(conn: sqlite3.Connection, sessions: list[TokenSession], now: float) -> None:
    """Delete ``sessions`` and revoke their ids, in the caller's write transaction.

    The caller takes the ended seats off the counter.
    """
    if not sessions:
        return
    first = _advance_seq(conn, len(sessions)) - len(sessions) + 1
    conn.executemany(_DELETE_SESSION, [(s.session_id,) for s in sessions])
    conn.executemany(
        _REVOKE,
        [
            (s.session_id, session_revoked_until(s.expires_at, now), seq)
            for seq, s in enumerate(sessions, start=first)
        ],
    )
