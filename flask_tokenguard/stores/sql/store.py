"""SQL server engines through SQLAlchemy Core: PostgreSQL, MySQL/MariaDB, SQL Server.

One class serves every server engine, so the seat-locking design is written once:

- every transaction that may change seats first *writes* the single ``tg_pool``
  row (``UPDATE tg_pool SET version = version + 1 WHERE id = 1``). A write takes an
  exclusive row lock on every engine without dialect hints, unlike ``SELECT ... FOR
  UPDATE``, which SQLAlchemy renders as a plain SELECT on mssql;
- transactions run at READ COMMITTED, so each statement after the lock takes a fresh
  snapshot and sees what the previous lock holder committed (InnoDB defaults to
  REPEATABLE READ, under which the count would read a stale snapshot);
- the pool row also holds the held-seats counter (``tg_pool.seats``: seat-holding
  rows, expired ones included until swept), changed only under its lock by whatever
  adds, ends, replaces or sweeps a seat holder, so a seat start reads one row instead
  of counting the live sessions. A session that holds no seat never takes the pool
  lock: its insert commits on its own (PostgreSQL can group such commits), and it
  sweeps only expired seat-less rows, now and then, which no seat path touches;
- revocations write the ``revocation_seq`` counter row first, which both serializes
  revokers and hands out the sequence number stored with the revoked ids. Beside it,
  the ``revocation_epoch`` row holds a random number that ``reset()`` renews in the
  transaction that restarts the counter (and that the first reader creates on a schema
  older than epochs).

Round trips: a read of one statement runs on a second engine in autocommit (no BEGIN,
no COMMIT), and neither pool pings its connections at checkout; for psycopg and PyMySQL
the pooled socket is polled instead (``_drop_closed_connections``), and a read whose
connection turns out dead runs once more (``_read``). A write is never run twice.

Lock order, to rule out deadlocks: pool row, then session rows, then counter row, then
revoked rows; failure rows come after the pool row (the opportunistic purge). A writer
of one session row (refresh rotation) or of one failure row (``record_failure``) takes
no other lock; ``revoke`` takes the counter row, then revoked rows.

Lockout counters (``tg_failures``) are keyed by the SHA-256 hex of the caller's key, so a
key of any length and characters fits one short primary key on every engine (InnoDB
limits index keys to 3072 bytes, 768 utf8mb4 characters) and compares byte for byte,
whatever the column collations (MySQL's PAD SPACE would make "bob" equal "bob ").

Synchronous standbys (PostgreSQL): with ``synchronous_standby_names`` set, a COMMIT
returns once enough standbys have the transaction, and waits for ever while none
answers; ``statement_timeout`` does not bound that wait (the server turns it off before
committing). So each commit is watched (``_CommitWatch``, no round trip): past
``replicas_timeout`` milliseconds the backend is sent a cancel. A cancelled wait leaves
the transaction committed on the primary alone and only says so in a WARNING, which a
notice handler on each connection notices (``_SyncRepNotices``); the store then takes
back what the caller must not leave held (a started session, a rotation), in a
transaction with ``synchronous_commit = local`` so that it does not wait in turn, and
raises ``StoreError``. A connection that was sent a cancel is not reused.

Failover (a libpq multi-host URL): while libpq finds the new primary, a call whose
connection broke, or that found no host taking writes, is sent again for up to
``failover_timeout`` seconds (default 10 for several hosts, 0 for one). A write may have
committed before its connection broke, so each one recognises its own first run when it
is resent: a start finds its session (with its refresh hash), a rotation finds its new
hash current (only that caller knows it), a take-back finds the old hash current, and an
end finds nothing left to end. Reads are simply read again.

SQLAlchemy is imported lazily: the tables and statements are built once per process by
``_sql()`` on first use and then shared by every store, so the compiled-statement cache
hits on every call (building statements per call triples the cost of Core).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import threading
import time
import typing as t

from ...errors import ConfigurationError
from ...errors import ConflictError
from ...errors import StoreError
from ...models import AdminSession
from ...models import Client
from ...models import SeatOutcome
from ...models import SigningKey
from ...models import TokenSession
from ...models import User
from .. import records
from ..base import epoch_text
from ..base import EVENTS_KEPT
from ..base import impossible_key
from ..base import new_epoch
from ..base import schemes_of
from ..base import session_revoked_until
from ..base import Store
from ..files import prepare_private_file
from ..forks import forget_after_fork
from ..retry import retry
from . import migrations
from .schema import FAILURE_KEY_CHARS
from .schema import SCHEMA_VERSION
from .schema import SQL

if t.TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine

#: A schema (PostgreSQL, SQL Server) or database (MySQL) name we are willing to quote.
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")
#: Seconds for which schema creation is retried; concurrent creators lose races.
_SETUP_PATIENCE = 15.0
#: Attempts of ``record_failure`` before giving up; one retry follows each lost race to
#: insert a key's first row, and each deletion of the row between two statements.
_FAILURE_ATTEMPTS = 10
#: A transaction rolled back to break a deadlock: the SQLSTATEs (PostgreSQL's deadlock,
#: and the serialization failure that SQL Server drivers report), and MySQL/MariaDB's
#: error number.
_DEADLOCK_SQLSTATES = frozenset({"40P01", "40001"})
_DEADLOCK_CODES = frozenset({1213, *_DEADLOCK_SQLSTATES})
#: Every this many lockout windows started (each successful authentication starts one for
#: its name), one also purges the expired rows.
_FAILURE_PURGE_EVERY = 256
#: Every this many seat-less starts of a store, one also sweeps expired seat-less
#: sessions.
_FREE_SWEEP_EVERY = 16
#: Ids per ``DELETE ... IN (...)`` when ending many sessions (drivers cap parameters).
_IDS_PER_DELETE = 500
#: Drivers whose connection's socket ``_drop_closed_connections`` can find.
_POLLED_DRIVERS = frozenset({"psycopg", "pymysql"})
#: Default ``failover_timeout`` for a multi-host URL: seconds a call that lost its
#: connection is sent again while libpq finds the new primary (none for one host).
FAILOVER_TIMEOUT = 10.0
#: Seconds between two such attempts.
_RESEND_PAUSE = 0.2
_T = t.TypeVar("_T")
#: Default ``replicas_timeout`` (PostgreSQL): milliseconds a COMMIT may wait for the
#: synchronous standbys before it is cancelled; the Redis store's default for its WAIT.
REPLICAS_TIMEOUT_MS = 1000
#: Seconds the watch gives psycopg to deliver one cancel request.
_CANCEL_TIMEOUT = 2.0
#: Seconds without a commit to watch after which the watch's thread ends.
_WATCH_IDLE = 10.0
#: The key of a connection's ``_SyncRepNotices`` in its pool record's ``info``.
_NOTICES_KEY = "tokenguard_sync_rep_notices"


class _CommitWatch:
    """Send a cancel to each watched commit still running at its deadline.

    One thread per process serves every store, started at the first commit and ended
    after ``_WATCH_IDLE`` seconds with nothing to watch. Arming and disarming a commit
    cost a dictionary entry: the thread wakes only for the earliest deadline, and a
    commit that returns in time never wakes it.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Forget everything (also in a forked child, whose copy of the thread is gone)."""
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, t.Callable[[], object]]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")

    def arm(self, seconds: float, cancel: t.Callable[[], object]) -> int:
        """Call ``cancel()`` in ``seconds`` unless ``disarm`` comes first; return its key."""
        deadline = time.monotonic() + seconds
        with self._cond:
            key = next(self._keys)
            self._armed[key] = (deadline, cancel)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tokenguard-commit-watch", daemon=True
                )
                self._thread.start()
            elif deadline < self._wake_at:
                self._cond.notify()
        return key

    def disarm(self, key: int) -> bool:
        """Stop watching; False when the cancel was sent already (and has returned)."""
        with self._cond:
            return self._armed.pop(key, None) is not None

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, cancel) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        # Under the lock, so that ``disarm`` returns only after the cancel
                        # went out: its connection is not closed or reused meanwhile.
                        with contextlib.suppress(Exception):
                            cancel()
                if self._armed:
                    self._wake_at = min(deadline for deadline, _ in self._armed.values())
                    self._cond.wait(max(self._wake_at - time.monotonic(), 0.0))
                    continue
                self._wake_at = float("inf")
                if not self._cond.wait(_WATCH_IDLE) and not self._armed:
                    self._thread = None
                    return


_COMMIT_WATCH = _CommitWatch()
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_COMMIT_WATCH._reset)


class _SyncRepNotices:
    """psycopg's notice handler on a PostgreSQL connection: notes the WARNING that says a
    commit stopped waiting for its synchronous standbys (cancelled, by the watch or by
    anyone else), which is all the client learns: the COMMIT itself succeeds."""

    def __init__(self) -> None:
        #: A plain warning (SQLSTATE 01000) came, in any language.
        self.warned = False
        #: It was the server's English one about synchronous replication.
        self.seen = False

    def clear(self) -> None:
        self.warned = self.seen = False

    def __call__(self, diagnostic: t.Any) -> None:
        if diagnostic.sqlstate == "01000":
            self.warned = True
            self.seen = self.seen or "synchronous replication" in (diagnostic.message_primary or "")


def _listen_for_sync_rep_notices(dbapi_connection: t.Any, record: t.Any) -> None:
    """The pool's ``connect`` event: a ``_SyncRepNotices`` on each new connection."""
    notices = _SyncRepNotices()
    dbapi_connection.add_notice_handler(notices)
    record.info[_NOTICES_KEY] = notices


class _Undoing(threading.local):
    """Per thread: whether the store is taking back an unacknowledged commit now."""

    active = False


_SQL_LOCK = threading.Lock()
_SQL_SHARED: SQL | None = None


def _sql() -> SQL:
    """The process-wide tables and statements, built once on first use."""
    global _SQL_SHARED
    if _SQL_SHARED is None:
        # Double-checked, so that every store shares one set of statements (and so
        # one compiled-cache entry each) even when threads open stores at once.
        with _SQL_LOCK:
            if _SQL_SHARED is None:
                _SQL_SHARED = SQL()
    return _SQL_SHARED


def _multihost_url(url: str) -> str:
    """A libpq multi-host URL (``postgresql://u@h1:5432,h2:5432/db?...``) in the form
    SQLAlchemy's PostgreSQL dialects take it (``postgresql://u@/db?host=h1:5432&host=...``);
    any other URL unchanged. libpq then tries the hosts in turn, and with
    ``target_session_attrs=read-write`` connects only to the one that takes writes."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return url
    path, question, query = tail.partition("?")
    params = [f"host={host}" for host in hosts.split(",") if host]
    if query:
        params.append(query)
    return f"{scheme}://{userinfo}{at}/{path}?{'&'.join(params)}"


def _replicas_timeout(value: t.Any, watched: bool) -> int | None:
    """The ``replicas_timeout`` option: milliseconds >= 1 (as the Redis store's), or None
    when commits are not watched (only psycopg on PostgreSQL can be)."""
    if not watched:
        if value is not None:
            raise ConfigurationError(
                "replicas_timeout is an option of PostgreSQL (postgresql:// with psycopg) only"
            )
        return None
    if value is None:
        return REPLICAS_TIMEOUT_MS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError("replicas_timeout must be an integer >= 1 (milliseconds)")
    return value


class SQLAlchemyStore(Store):
    """PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL) and SQL Server, via Core.

    ``sqlite+pysqlite`` is served too, so that CI runs this code without servers; the
    embedded default remains the stdlib ``sqlite://`` store.

    Options go to ``create_engine`` except ``schema``: a PostgreSQL/SQL Server schema
    or a MySQL database, created if missing, that holds the tables (tests isolate runs
    with it), and ``replicas_timeout`` (PostgreSQL with psycopg; milliseconds, default
    ``REPLICAS_TIMEOUT_MS``): how long a commit may wait for synchronous standbys before
    it is cancelled, taken back and reported as ``StoreError`` (module docstring).
    """

    schemes = schemes_of("sql")

    def __init__(self, url: str, **options: t.Any) -> None:
        try:
            import sqlalchemy as sa
            import sqlalchemy.exc as sa_exc
        except ImportError as exc:
            raise ConfigurationError(
                "The SQL store needs SQLAlchemy: install flask-tokenguard[sql]"
            ) from exc
        self._exc = sa_exc
        self._q = _sql()
        schema: str | None = options.pop("schema", None)
        try:
            parsed = sa.make_url(_multihost_url(url))
        except (sa_exc.ArgumentError, ValueError) as exc:
            raise ConfigurationError(f"TOKENGUARD_STORE_URL is not a database URL: {exc}") from exc
        if parsed.drivername == "postgresql":
            # SQLAlchemy's bare "postgresql" means psycopg2; we ship psycopg 3.
            parsed = parsed.set(drivername="postgresql+psycopg")
        backend = parsed.get_backend_name()
        watched = backend == "postgresql" and parsed.get_driver_name() == "psycopg"
        #: Milliseconds a commit may wait for synchronous standbys (None: not watched).
        self.replicas_timeout: int | None = _replicas_timeout(
            options.pop("replicas_timeout", None), watched
        )
        failover = options.pop(
            "failover_timeout", FAILOVER_TIMEOUT if _multihost_url(url) != url else 0.0
        )
        if isinstance(failover, bool) or not isinstance(failover, (int, float)) or failover < 0:
            raise ConfigurationError("failover_timeout must be a number of seconds >= 0")
        #: Seconds a call that lost its connection is sent again (module docstring).
        self.failover_timeout: float = float(failover)
        if schema is not None and (backend == "sqlite" or not _SCHEMA_NAME.fullmatch(schema)):
            raise ConfigurationError(
                f"schema {schema!r} is not usable: letters, digits, '_' and '-' only, "
                "and not on SQLite"
            )
        # psycopg and PyMySQL connections are checked at checkout without a round trip
        # (``_drop_closed_connections``); other drivers ping.
        polled = backend != "sqlite" and parsed.get_driver_name() in _POLLED_DRIVERS
        options.setdefault("pool_pre_ping", not polled)
        if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
            if not parsed.database.startswith("file:"):
                prepare_private_file(os.path.abspath(parsed.database))
        if backend == "sqlite":
            connect_args = dict(options.pop("connect_args", {}))
            connect_args.setdefault("timeout", 30.0)
            options["connect_args"] = connect_args
        else:
            # The seat lock relies on READ COMMITTED (see the module docstring). Set
            # on the engine, it applies once per new connection, not per checkout.
            level = options.setdefault("isolation_level", "READ COMMITTED")
            if level != "READ COMMITTED":
                raise ConfigurationError("The SQL store needs isolation_level READ COMMITTED")
        try:
            engine = sa.create_engine(parsed, **options)
        except (ImportError, TypeError, sa_exc.ArgumentError) as exc:
            raise ConfigurationError(f"Cannot build the SQL store's engine: {exc}") from exc
        if backend == "sqlite":
            self._sqlite_events(engine)
            reader = engine
        else:
            # Single-statement reads: a pool of their own in autocommit, so a read is
            # one round trip (no BEGIN/COMMIT, no ping; see ``_read``). Its own pool,
            # because switching a pooled connection's mode costs round trips on MySQL.
            read_options = {**options, "isolation_level": "AUTOCOMMIT", "pool_pre_ping": False}
            try:
                try:
                    # PyMySQL sends a ROLLBACK even in autocommit, unless told not to.
                    reader = sa.create_engine(parsed, **read_options, skip_autocommit_rollback=True)
                except TypeError:  # SQLAlchemy before 2.0.43
                    reader = sa.create_engine(parsed, **read_options)
            except (ImportError, TypeError, sa_exc.ArgumentError) as exc:
                raise ConfigurationError(f"Cannot build the SQL store's engine: {exc}") from exc
        if polled:
            for pooled in {engine, reader}:
                sa.event.listen(pooled, "checkout", _drop_closed_connections)
        if watched:
            # Only the writer commits; autocommit reads never wait for a standby.
            sa.event.listen(engine, "connect", _listen_for_sync_rep_notices)
        self._undoing = _Undoing()
        #: psycopg switches autocommit without a round trip (PyMySQL sends SET autocommit).
        self._autocommit_statements = watched
        #: PostgreSQL's own statements for a throttle's reservation (``_pg_throttle``).
        self._pg = _pg_throttle(self._q) if backend == "postgresql" else None
        self._base_engine: Engine = engine
        self._base_reader: Engine = reader
        translate = {"schema_translate_map": {None: schema}} if schema else {}
        self._engine: Engine = engine.execution_options(**translate) if schema else engine
        self._reader: Engine = reader.execution_options(**translate) if schema else reader
        self._schema = schema
        self._backend = backend
        self._ready = False
        self._setup_lock = threading.Lock()
        #: Whether UPDATE ... RETURNING saves a round trip; known once connected.
        self._returning = False
        #: Seat-less starts so far; every ``_FREE_SWEEP_EVERY``-th sweeps (atomic in CPython).
        self._free_starts = itertools.count()
        #: New lockout rows so far (``_count_new_failure_row``).
        self._new_failure_rows = itertools.count()
        forget_after_fork(self)

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        return (self._exc.SQLAlchemyError,)

    @staticmethod
    def _sqlite_events(engine: Engine) -> None:
        """Give pysqlite real transactions, WAL and foreign keys.

        The driver's legacy mode begins transactions only before DML; we emit BEGIN
        ourselves (SQLAlchemy's documented recipe). Every writing transaction starts
        with a write, so a deferred BEGIN takes the write lock through the busy handler.
        """
        from sqlalchemy import event

        def on_connect(dbapi_connection: t.Any, record: t.Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA synchronous=NORMAL")
                with contextlib.suppress(Exception):
                    # Persistent; may be refused while another process holds the file.
                    cursor.execute("PRAGMA journal_mode=WAL")
            finally:
                cursor.close()

        def on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)

    def _forget_connections(self) -> None:
        """After ``fork()``, in the child: SQLAlchemy's recipe, ``dispose(close=False)``."""
        self._base_engine.dispose(close=False)
        self._base_reader.dispose(close=False)

    # -- plumbing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(
        self, undo: t.Callable[[], object] | None = None, *, one_statement: bool = False
    ) -> t.Iterator[Connection]:
        """One pooled connection and one transaction per store call.

        ``one_statement``: the caller runs a single statement, which on PostgreSQL then
        commits on its own (autocommit: no BEGIN or COMMIT, two round trips fewer),
        watched as a commit is.

        A unique violation means the record exists: ``ConflictError``. Other driver
        failures become ``StoreError``, and so does a commit that the synchronous
        standbys did not acknowledge in time: it holds on the primary only, so ``undo()``
        first takes back (best effort) what the caller must not leave held.
        """
        if not self._ready:
            self._setup()
        unacknowledged = False
        try:
            with self.wrap_errors():
                try:
                    with self._engine.connect() as conn:
                        armed: tuple[int, _SyncRepNotices] | None = None
                        try:
                            if (
                                one_statement
                                and self._autocommit_statements
                                and not self._undoing.active
                            ):
                                conn.execution_options(isolation_level="AUTOCOMMIT")
                                armed = self._arm_commit(conn)  # the statement commits
                                yield conn
                            else:
                                with conn.begin():
                                    if self._undoing.active and self.replicas_timeout is not None:
                                        # The undo of a commit nobody acknowledged: no wait.
                                        conn.exec_driver_sql("SET LOCAL synchronous_commit = local")
                                    yield conn
                                    armed = self._arm_commit(conn)  # the block's end commits
                        finally:
                            if armed is not None:
                                unacknowledged = self._disarm_commit(conn, *armed)
                except self._exc.IntegrityError as exc:
                    raise ConflictError("a record with that key exists") from exc
        except StoreError:
            if not unacknowledged:
                raise
            # Unacknowledged, then broken: reported as unacknowledged (below, after the
            # take-back), never as a lost connection, which ``_resending`` would resend.
        finally:
            if unacknowledged and undo is not None:
                self._take_back(undo)
        if unacknowledged:
            done = "it was taken back" if undo is not None else "it holds on the primary only"
            raise StoreError(
                f"SQLAlchemyStore: no synchronous standby acknowledged the commit within "
                f"{self.replicas_timeout} ms; {done}"
            )

    def _arm_commit(self, conn: Connection) -> tuple[int, _SyncRepNotices] | None:
        """Watch the commit about to be sent on ``conn``; None when it is not watched."""
        if self.replicas_timeout is None or self._undoing.active:
            return None
        pooled = conn.connection
        notices: _SyncRepNotices = pooled.info[_NOTICES_KEY]  # set by the connect event
        notices.clear()
        driver: t.Any = pooled.dbapi_connection

        def cancel() -> None:
            driver.cancel_safe(timeout=_CANCEL_TIMEOUT)

        return _COMMIT_WATCH.arm(self.replicas_timeout / 1000, cancel), notices

    @staticmethod
    def _disarm_commit(conn: Connection, key: int, notices: _SyncRepNotices) -> bool:
        """Whether the watched commit went unacknowledged: the server said it stopped
        waiting for the standbys (cancelled by anyone), or warned while our cancel was out
        (whatever its ``lc_messages``). A commit that our cancel reached too late, with no
        warning, was acknowledged: a slow commit on a server without standbys succeeds."""
        cancelled = not _COMMIT_WATCH.disarm(key)
        if cancelled:
            # A cancel that reached the backend late must not hit a later statement.
            conn.invalidate()
        return notices.seen or (cancelled and notices.warned)

    def _take_back(self, undo: t.Callable[[], object]) -> None:
        """Run ``undo`` with ``synchronous_commit = local`` (see ``_tx``); best effort."""
        self._undoing.active = True
        try:
            undo()
        except StoreError:
            pass  # the unacknowledged commit is the failure to report
        finally:
            self._undoing.active = False

    def _read(self, statement: t.Any, params: t.Mapping[str, t.Any] | None = None) -> list[t.Any]:
        """The rows of one read-only statement, in one round trip (autocommit).

        The read pool does not ping its connections: one that died with its server
        unnoticed at checkout fails its statement, SQLAlchemy then invalidates the
        pool's older connections, and the read runs once more on a new one. Only reads
        come here, so running one twice is harmless.
        """
        if not self._ready:
            self._setup()
        with self.wrap_errors():
            try:
                return self._read_once(statement, params)
            except self._exc.DBAPIError as exc:
                if not exc.connection_invalidated and not self._failing_over(exc):
                    raise
            deadline = time.monotonic() + self.failover_timeout
            while True:
                try:
                    return self._read_once(statement, params)
                except self._exc.DBAPIError as exc:
                    if not self._failing_over(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(_RESEND_PAUSE)

    def _failing_over(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` may be a failover under way: the connection broke, or no host
        takes writes yet (with ``failover_timeout``; a driver's OperationalError)."""
        return bool(self.failover_timeout) and isinstance(exc, self._exc.OperationalError)

    def _resending(self, call: t.Callable[[bool], _T]) -> _T:
        """``call(False)``; while it fails as by a failover, ``call(True)`` until it
        answers or ``failover_timeout`` passes. The first attempt may have committed
        before its connection broke: each write recognises its own earlier run when
        called with True, so the answer matches what the new primary holds."""
        deadline = time.monotonic() + self.failover_timeout
        resend = False
        while True:
            try:
                return call(resend)
            except StoreError as exc:
                if not self._failing_over(exc.__cause__) or time.monotonic() >= deadline:
                    raise
            resend = True
            time.sleep(_RESEND_PAUSE)

    def _read_once(self, statement: t.Any, params: t.Mapping[str, t.Any] | None) -> list[t.Any]:
        with self._reader.connect() as conn:
            return list(conn.execute(statement, params))

    def _lock_pool(self, conn: Connection) -> None:
        # The lock every seat, client and key change queues on (see module docstring).
        if conn.execute(self._q.lock_pool).rowcount != 1:
            raise StoreError("tg_pool has no row 1; the store's seed rows are missing")

    def _take_seat_lock(self, conn: Connection) -> int:
        """Take the pool lock for a seat start: the counter, this seat counted already."""
        q = self._q
        if self._returning:
            value = conn.execute(q.take_seat_lock_returning).scalar_one_or_none()
        elif conn.execute(q.take_seat_lock).rowcount == 1:
            value = conn.execute(q.get_seats).scalar_one_or_none()
        else:
            value = None
        if value is None:
            raise StoreError("tg_pool has no row 1; the store's seed rows are missing")
        return int(value)

    def _bump_seq(self, conn: Connection) -> int:
        """Lock the counter row by writing it, and return the new sequence number."""
        if self._returning:
            value = conn.execute(self._q.bump_seq_returning).scalar_one_or_none()
        elif conn.execute(self._q.bump_seq).rowcount == 1:
            value = conn.execute(self._q.get_seq).scalar_one()
        else:
            value = None
        if value is None:
            raise StoreError("tg_counters has no revocation_seq row")
        return int(value)

    def _setup(self) -> None:
        """Create the schema and seed rows once, tolerating concurrent creators.

        Processes opening a new store at once all see tables missing; the losers'
        CREATE or INSERT fails ("already exists", or on PostgreSQL a unique violation
        in the catalog) and a retry, once the winner is done, finds everything.
        """
        exc_ = self._exc
        with self._setup_lock:
            if self._ready:
                return
            with self.wrap_errors():
                # An unreachable server fails here at once instead of being retried.
                with self._base_engine.connect():
                    pass
                lost_race = (exc_.ProgrammingError, exc_.OperationalError, exc_.IntegrityError)
                retry(
                    self._prepare,
                    retry_if=lambda exc: isinstance(exc, lost_race),
                    patience=_SETUP_PATIENCE,
                    delay=0.02,
                    max_delay=0.5,
                )
            self._returning = bool(self._engine.dialect.update_returning)
            self._ready = True

    def _prepare(self) -> None:
        """Create or upgrade the schema, then make sure the revocation epoch exists."""
        self._create()
        # Here rather than on first read: processes that open a new store at once would
        # otherwise all insert it from request threads, and InnoDB may answer racing
        # inserts of one key with a deadlock; here a lost race is retried.
        with self._engine.begin() as conn:
            if conn.execute(self._q.get_epoch).first() is None:
                conn.execute(self._q.insert_epoch, {"b_epoch": new_epoch()})

    def _create(self) -> None:
        q = self._q
        version = self._stored_version()
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"The store's schema is version {version}; this flask-tokenguard knows "
                f"{SCHEMA_VERSION}. Upgrade flask-tokenguard."
            )
        if version is not None:
            # Every step is idempotent, so concurrent openers may run one together; a
            # loser's error is retried by ``_setup``.
            while version < SCHEMA_VERSION:
                migrations.MIGRATIONS[version](self)
                with self._engine.begin() as conn:
                    conn.execute(q.set_version, {"b_from": version, "b_to": version + 1})
                version += 1
            return
        if self._schema is not None:
            migrations.create_schema(self)
        with self._engine.begin() as conn:
            q.metadata.create_all(conn, checkfirst=True)
        migrations.use_no_pad_collation(self)
        for probe, seed in q.seeds:
            try:
                with self._engine.begin() as conn:
                    if conn.execute(probe).first() is None:
                        conn.execute(seed)
            except self._exc.IntegrityError:
                pass  # another process seeded it between our probe and insert

    def _stored_version(self) -> int | None:
        """The schema version, or None when the tables do not exist (yet)."""
        try:
            with self._engine.connect() as conn:
                value = conn.execute(self._q.get_version).scalar()
        except (self._exc.ProgrammingError, self._exc.OperationalError):
            return None
        return None if value is None else int(value)

    def _quoted_schema(self) -> str:
        assert self._schema is not None
        return self._base_engine.dialect.identifier_preparer.quote_schema(self._schema)

    # -- lifecycle ---------------------------------------------------------------------

    def check(self) -> None:
        with self.wrap_errors(), self._base_engine.connect() as conn:
            conn.execute(self._q.ping)

    def close(self) -> None:
        # The pools open new connections on the next call.
        self._base_engine.dispose()
        if self._base_reader is not self._base_engine:
            self._base_reader.dispose()

    def drop(self) -> None:
        """Drop the schema (or database) with every table; without one, drop our tables.

        Tests call this at teardown. The store recreates everything if used again.
        """
        with self.wrap_errors():
            if self._schema is None or self._backend == "mssql":
                with self._engine.begin() as conn:
                    self._q.metadata.drop_all(conn, checkfirst=True)
            if self._schema is not None:
                name = self._quoted_schema()
                statement = {
                    "mysql": f"DROP DATABASE IF EXISTS {name}",
                    "mariadb": f"DROP DATABASE IF EXISTS {name}",
                    "mssql": (
                        f"IF SCHEMA_ID(N'{self._schema}') IS NOT NULL EXEC('DROP SCHEMA {name}')"
                    ),
                }.get(self._backend, f"DROP SCHEMA IF EXISTS {name} CASCADE")
                with self._base_engine.begin() as conn:
                    conn.exec_driver_sql(statement)
        with self._setup_lock:
            self._ready = False

    def reset(self) -> None:
        q = self._q
        with self._tx() as conn:
            for wipe in q.wipe:
                conn.execute(wipe)
            for _probe, seed in q.seeds:
                conn.execute(seed)
            # The counter restarts: a new epoch, in the same transaction.
            conn.execute(q.insert_epoch, {"b_epoch": new_epoch()})

    def claim_once(self, name: str) -> bool:
        try:
            with self._tx() as conn:
                conn.execute(self._q.insert_claim, {"name": name})
        except ConflictError:
            return False
        return True

    # -- signing keys ------------------------------------------------------------------

    def ensure_signing_key(self, candidate: SigningKey) -> list[SigningKey]:
        q = self._q
        with self._tx() as conn:
            # Serializes first-key creation across processes: one candidate wins.
            self._lock_pool(conn)
            keys = [records.key_from(row._mapping) for row in conn.execute(q.list_keys)]
            if not keys:
                conn.execute(q.insert_key, records.key_record(candidate))
                keys = [candidate]
        return keys

    def add_signing_key(self, key: SigningKey, retire_others_at: float) -> None:
        q = self._q
        with self._tx() as conn:
            self._lock_pool(conn)
            conn.execute(q.retire_keys, {"b_retire_at": retire_others_at})
            conn.execute(q.insert_key, records.key_record(key))

    def signing_keys(self, now: float) -> list[SigningKey]:
        keys = [records.key_from(row._mapping) for row in self._read(self._q.list_keys)]
        live = [k for k in keys if k.retire_at is None or k.retire_at > now]
        if len(live) != len(keys):
            # Rare, so read-only calls stay one statement; a separate write transaction
            # also keeps SQLite's "writes come first" rule.
            with self._tx() as conn:
                conn.execute(self._q.delete_retired_keys, {"now": now})
        return live

    # -- clients -----------------------------------------------------------------------

    def create_client(self, client: Client) -> None:
        q = self._q
        with self._tx() as conn:
            # Under the pool lock, nobody can take the id or alias after our check.
            self._lock_pool(conn)
            names = {"n1": client.client_id, "n2": client.alias or client.client_id}
            if conn.execute(q.names_taken, names).scalar_one():
                raise ConflictError("client id or alias is taken")
            conn.execute(q.insert_client, records.client_record(client))

    def get_client(self, id_or_alias: str) -> Client | None:
        if impossible_key(id_or_alias):
            return None
        rows = self._read(self._q.get_client, {"key": id_or_alias})
        # An id never equals another client's alias, but prefer the id if it ever did.
        rows.sort(key=lambda row: row.client_id != id_or_alias)
        return records.client_from(rows[0]._mapping) if rows else None

    def update_client(self, client: Client) -> bool:
        q = self._q
        with self._tx() as conn:
            self._lock_pool(conn)
            if conn.execute(q.client_exists, {"b_client_id": client.client_id}).first() is None:
                return False
            if (
                client.alias
                and conn.execute(
                    q.alias_taken,
                    {"b_client_id": client.client_id, "b_alias": client.alias},
                ).scalar_one()
            ):
                raise ConflictError("alias is taken")
            params = records.client_record(client)
            del params["client_id"]
            conn.execute(q.update_client, {**params, "b_client_id": client.client_id})
        return True

    def delete_client(self, client_id: str) -> bool:
        if impossible_key(client_id):
            return False
        with self._tx() as conn:
            return conn.execute(self._q.delete_client, {"b_client_id": client_id}).rowcount > 0

    def list_clients(self) -> list[Client]:
        clients = [records.client_from(row._mapping) for row in self._read(self._q.list_clients)]
        # Sorted here: database collations order strings differently from Python.
        return sorted(clients, key=lambda c: (c.created_at, c.client_id))

    # -- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        with self._tx() as conn:
            conn.execute(self._q.insert_user, records.user_record(user))

    def get_user(self, username: str) -> User | None:
        if impossible_key(username):
            return None
        rows = self._read(self._q.get_user, {"b_username": username})
        return records.user_from(rows[0]._mapping) if rows else None

    def update_user(self, user: User) -> bool:
        with self._tx() as conn:
            result = conn.execute(
                self._q.update_user,
                {
                    "password_hash": user.password_hash,
                    "created_at": user.created_at,
                    "admin": bool(user.admin),
                    "b_username": user.username,
                },
            )
            return result.rowcount > 0

    def delete_user(self, username: str) -> bool:
        if impossible_key(username):
            return False
        with self._tx() as conn:
            return conn.execute(self._q.delete_user, {"b_username": username}).rowcount > 0

    def list_users(self) -> list[User]:
        users = [records.user_from(row._mapping) for row in self._read(self._q.list_users)]
        return sorted(users, key=lambda u: u.username)

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
        q = self._q
        # Seats are reclaimed only once expired on every host's clock (see ``Store``).
        before = {"now": now - max(skew, 0.0)}

        def ours() -> bool:
            found = self._read(q.get_session_any, {"b_session_id": session.session_id})
            return bool(found) and found[0].refresh_hash == session.refresh_hash

        def start(resend: bool) -> SeatOutcome:
            # The first attempt may have committed before its connection broke.
            if resend and ours():
                return SeatOutcome(True, None)
            try:
                return self._start_once(
                    session, seat_limit, now, before, client_cap, replace_oldest
                )
            except ConflictError:
                # Its commit was still under way when the resend looked, then landed.
                if resend and ours():
                    return SeatOutcome(True, None)
                raise

        return self._resending(start)

    def _start_once(
        self,
        session: TokenSession,
        seat_limit: int | None,
        now: float,
        before: dict[str, float],
        client_cap: int | None,
        replace_oldest: bool,
    ) -> SeatOutcome:
        q = self._q

        def undo() -> None:
            # An unacknowledged start is ended again, so its seat is free (``_tx``).
            self.end_session(session.session_id, now)

        if not session.holds_seat:
            # No pool lock: nothing about seats changes (see the module docstring).
            with self._tx(undo, one_statement=True) as conn:
                conn.execute(q.insert_session, records.session_record(session))
            # Counted, not drawn: a request's round trips stay predictable (tests).
            if next(self._free_starts) % _FREE_SWEEP_EVERY == _FREE_SWEEP_EVERY - 1:
                self._sweep_free(before)
            return SeatOutcome(True, None)
        replaced: list[TokenSession] = []
        with self._tx(undo) as conn:
            # 1. Lock: concurrent acquirers queue here, across processes and hosts.
            counter = self._take_seat_lock(conn)
            held = counter - 1  # counted in advance by the lock
            # 2. Sweep: expired seats are free (used hashes go by cascade, which the
            # row count leaves out).
            held -= conn.execute(q.sweep_seats, before).rowcount
            # 3. Check the caps; the counter needs no count of the live sessions.
            victims: list[str] = []
            refused: t.Literal["pool", "client"] | None = None
            if client_cap is not None:
                mine = {**before, "b_client_id": session.client_id}
                excess = conn.execute(q.count_client_seats, mine).scalar_one() - client_cap + 1
                if excess > 0:
                    if not replace_oldest or client_cap <= 0:
                        refused = "client"
                    else:
                        ids = conn.execute(q.client_seat_ids, mine).scalars().all()
                        victims = list(ids[:excess])
            # Decided before anything ends, so that a refusal changes nothing.
            if refused is None and seat_limit is not None and held - len(victims) >= seat_limit:
                refused = "pool"
            if refused is None:
                if victims:
                    # Under the pool lock nobody else ends or sweeps these rows.
                    ended = self._end_in(conn, "ids", {"b_ids": victims, "now": now}, now)
                    replaced = sorted(ended, key=lambda s: (s.created_at, s.session_id))
                    held -= len(replaced)
                # 4. Take the seat; the commit releases the lock.
                conn.execute(q.insert_session, records.session_record(session))
                held += 1
            if held != counter:
                conn.execute(q.set_seats, {"b_seats": held})
        if refused is not None:
            return SeatOutcome(False, refused)
        return SeatOutcome(True, None, tuple(replaced))

    def _sweep_free(self, before: dict[str, float]) -> None:
        """Delete expired seat-less sessions, without the pool lock; best effort.

        No seat path deletes seat-less rows by expiry, so sweepers never wait on each
        other; an end of many sessions may, and then one of the two is rolled back
        (a deadlock): if it is this sweep, a later one does the work.
        """
        with contextlib.suppress(StoreError):
            with self._tx() as conn:
                conn.execute(self._q.sweep_free, before)

    def earliest_seat_expiry(self, now: float, client_id: str | None = None) -> float | None:
        q = self._q
        if client_id is None:
            rows = self._read(q.earliest_seat, {"now": now})
        elif impossible_key(client_id):
            return None
        else:
            rows = self._read(q.earliest_client_seat, {"now": now, "b_client_id": client_id})
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    def seats_in_use(self, now: float) -> int:
        return int(self._read(self._q.count_seats, {"now": now})[0][0])

    def get_session(self, session_id: str, now: float) -> TokenSession | None:
        if impossible_key(session_id):
            return None
        rows = self._read(self._q.get_session, {"b_session_id": session_id, "now": now})
        return records.session_from(rows[0]._mapping) if rows else None

    def find_refresh(self, refresh_hash: str, now: float) -> tuple[TokenSession, bool] | None:
        if impossible_key(refresh_hash):
            return None
        q = self._q
        params = {"b_refresh_hash": refresh_hash, "now": now}
        with self._tx() as conn:
            row = conn.execute(q.find_current, params).first()
            if row is not None:
                return records.session_from(row._mapping), True
            row = conn.execute(q.find_used, params).first()
        return None if row is None else (records.session_from(row._mapping), False)

    def rotate_refresh(
        self,
        session_id: str,
        old_hash: str,
        new_hash: str,
        expires_at: float,
        now: float,
    ) -> TokenSession | None:
        q = self._q
        params = {
            "b_session_id": session_id,
            "b_old_hash": old_hash,
            "b_new_hash": new_hash,
            "b_expires_at": expires_at,
            "now": now,
        }

        def undo() -> None:
            # Unacknowledged: the client's retry with its old token must be a refresh.
            self.unrotate_refresh(session_id, old_hash, new_hash, now)

        def rotate(resend: bool) -> TokenSession | None:
            with self._tx(undo) as conn:
                # The UPDATE is the compare-and-swap; its row lock holds off a second
                # refresh with the same token until we commit.
                if self._returning:
                    row = conn.execute(q.rotate_returning, params).first()
                elif conn.execute(q.rotate, params).rowcount == 1:
                    row = conn.execute(q.get_session_any, {"b_session_id": session_id}).one()
                else:
                    row = None
                if row is None:
                    if resend:
                        # The first attempt committed before its connection broke: the
                        # new hash, which only this caller knows, is current.
                        again = conn.execute(q.get_session_any, {"b_session_id": session_id})
                        row = again.first()
                        if row is not None and row.refresh_hash == new_hash:
                            return records.session_from(row._mapping)
                    return None
                conn.execute(q.insert_used, {"refresh_hash": old_hash, "session_id": session_id})
            return records.session_from(row._mapping)

        return self._resending(rotate)

    def unrotate_refresh(self, session_id: str, old_hash: str, new_hash: str, now: float) -> bool:
        params = {
            "b_session_id": session_id,
            "b_old_hash": old_hash,
            "b_new_hash": new_hash,
            "now": now,
        }

        def unrotate(resend: bool) -> bool:
            with self._tx() as conn:
                if conn.execute(self._q.unrotate, params).rowcount != 1:
                    if resend:  # the first attempt's commit made the old hash current
                        again = conn.execute(self._q.get_session, params).first()
                        return again is not None and again.refresh_hash == old_hash
                    return False
                conn.execute(self._q.delete_used, params)
            return True

        return self._resending(unrotate)

    def _end(self, kind: str, key: str | None, now: float) -> list[TokenSession]:
        """End the sessions ``kind`` picks, record them as revoked; return live ones.

        Across a failover it is sent again (``_resending``): the sessions end either way,
        though what a first attempt that committed ended is not reported again."""
        return self._resending(lambda resend: self._end_once(kind, key, now))

    def _end_once(self, kind: str, key: str | None, now: float) -> list[TokenSession]:
        with self._tx() as conn:
            # Lock order: pool, session rows, counter, revoked rows (module docstring).
            self._lock_pool(conn)
            ended = self._end_in(conn, kind, {"b_key": key, "now": now}, now)
            seats = sum(1 for s in ended if s.holds_seat)
            if seats:
                conn.execute(self._q.add_seats, {"b_delta": -seats})
        return [s for s in ended if s.is_live(now)]

    def _end_in(
        self, conn: Connection, kind: str, params: dict[str, t.Any], now: float
    ) -> list[TokenSession]:
        """End the sessions ``kind`` picks in ``conn`` (pool row locked); return them all.

        The caller takes the ended seats off the counter.
        """
        lock, pick, prune = self._q.end[kind]
        # Lock the rows before reading them: a concurrent rotation (which takes no
        # pool lock) either committed before the lock, and the read below sees its
        # expiry (READ COMMITTED), or waits and then finds the row gone. A plain
        # read would revoke the session only until the expiry before the rotation,
        # and tokens issued by that rotation would be accepted again afterwards.
        conn.execute(lock, params)
        ended = [records.session_from(row._mapping) for row in conn.execute(pick, params)]
        if not ended:
            return []
        seq = self._bump_seq(conn)
        conn.execute(prune, params)
        ids = [s.session_id for s in ended]
        for first in range(0, len(ids), _IDS_PER_DELETE):
            chunk = ids[first : first + _IDS_PER_DELETE]
            conn.execute(self._q.delete_ids, {"b_ids": chunk})
        conn.execute(
            self._q.insert_revoked,
            [
                {
                    "token_id": s.session_id,
                    "expires_at": session_revoked_until(s.expires_at, now),
                    "seq": seq,
                }
                for s in ended
            ],
        )
        return ended

    def end_session(self, session_id: str, now: float) -> TokenSession | None:
        if impossible_key(session_id):
            return None
        ended = self._end("session", session_id, now)
        return ended[0] if ended else None

    def end_sessions(self, client_id: str | None, now: float) -> int:
        if client_id is None:
            return len(self._end("all", None, now))
        return len(self._end("client", client_id, now))

    def list_sessions(self, client_id: str | None, now: float) -> list[TokenSession]:
        q = self._q
        if client_id is None:
            rows = self._read(q.list_sessions, {"now": now})
        else:
            rows = self._read(q.list_client_sessions, {"b_client_id": client_id, "now": now})
        sessions = [records.session_from(row._mapping) for row in rows]
        return sorted(sessions, key=lambda s: (s.created_at, s.session_id))

    # -- revocation --------------------------------------------------------------------

    def revoke(self, token_id: str, expires_at: float, now: float) -> None:
        q = self._q
        with self._tx() as conn:
            # The counter write serializes revokers: prune-then-insert cannot collide.
            seq = self._bump_seq(conn)
            conn.execute(q.prune_revoked, {"now": now, "b_token_id": token_id})
            conn.execute(
                q.insert_revoked,
                {"token_id": token_id, "expires_at": expires_at, "seq": seq},
            )

    def revocation_seq(self) -> int:
        rows = self._read(self._q.get_seq)
        if not rows:
            raise StoreError("tg_counters has no revocation_seq row")
        return int(rows[0][0])

    def revocation_epoch(self) -> str:
        rows = self._read(self._q.get_epoch)
        value = rows[0][0] if rows else None
        if value is None:
            # Set-up creates it; only a row deleted by hand since then is missing.
            value = retry(
                self._create_epoch,
                retry_if=self._lost_race,
                attempts=5,
                delay=0.01,
            )
        return epoch_text(int(value))

    def _create_epoch(self) -> int:
        """Insert the revocation epoch if missing; return it (a race's loser retries)."""
        q = self._q
        with self._tx() as conn:
            value = conn.execute(q.get_epoch).scalar()
            if value is None:
                value = new_epoch()
                conn.execute(q.insert_epoch, {"b_epoch": value})
        return int(value)

    def revocations_since(self, seq: int, now: float) -> tuple[dict[str, float], int]:
        q = self._q
        with self._tx() as conn:
            # Counter first: entries committed with a higher seq are then visible to the
            # next statement (READ COMMITTED), so none is skipped; a later one may be
            # returned twice, which is harmless.
            current = int(conn.execute(q.get_seq).scalar_one())
            rows = conn.execute(q.revoked_since, {"b_seq": seq, "now": now}).all()
        return {row.token_id: float(row.expires_at) for row in rows}, current

    # -- admin console sessions --------------------------------------------------------

    def start_admin_session(self, session: AdminSession) -> None:
        q = self._q
        row = {
            "session_hash": session.session_hash,
            "username": session.username,
            "created_at": float(session.created_at),
            "expires_at": float(session.expires_at),
        }
        with self._tx() as conn:
            # Sessions never signed out would stay forever: drop those expired by now.
            conn.execute(q.purge_admins, {"now": session.created_at})
            conn.execute(q.delete_admin, {"b_session_hash": session.session_hash})
            conn.execute(q.insert_admin, row)

    def touch_admin_session(
        self, session_hash: str, now: float, expires_at: float
    ) -> AdminSession | None:
        if impossible_key(session_hash):
            return None
        q = self._q
        params = {"b_session_hash": session_hash, "b_expires_at": expires_at, "now": now}
        with self._tx() as conn:
            # The UPDATE's row lock keeps a concurrent end or touch out until we commit.
            # (MySQL counts matched rows: SQLAlchemy connects with FOUND_ROWS.)
            if conn.execute(q.touch_admin, params).rowcount != 1:
                conn.execute(q.delete_admin, params)  # expired, or absent
                return None
            row = conn.execute(q.get_admin, params).one()
        return _admin_from(row._mapping)

    def end_admin_session(self, session_hash: str) -> AdminSession | None:
        if impossible_key(session_hash):
            return None
        q = self._q
        params = {"b_session_hash": session_hash}
        with self._tx() as conn:
            # Write first (see ``_sqlite_events``), then read what we delete.
            if conn.execute(q.lock_admin, params).rowcount != 1:
                return None
            row = conn.execute(q.get_admin, params).one()
            conn.execute(q.delete_admin, params)
        return _admin_from(row._mapping)

    # -- recent security events --------------------------------------------------------

    def add_event(self, event: t.Mapping[str, str], keep: int = EVENTS_KEPT) -> None:
        q = self._q
        # ASCII JSON: escapes keep any string exact, whatever the column's encoding.
        text = json.dumps(dict(event))
        keep = max(keep, 1)
        with self._tx() as conn:
            inserted = conn.execute(q.insert_event, {"event": text}).inserted_primary_key
            event_id = None if inserted is None else inserted[0]
            # Trim once per batch, not per insert: between trims at most ``batch - 1``
            # extra events stay, so never more than twice ``keep``. The cutoff is the
            # ``keep``-th newest id, not ``event_id - keep``: ids may have gaps (a
            # sequence skips values that rolled back).
            if event_id is not None and int(event_id) % max(1, min(100, keep)) == 0:
                cutoff = conn.execute(q.event_ids.offset(keep - 1).limit(1)).scalar()
                if cutoff is not None:
                    conn.execute(q.trim_events, {"b_cutoff": cutoff})

    def recent_events(self, limit: int = 100) -> list[dict[str, str]]:
        if limit <= 0:
            return []
        rows = self._read(self._q.newest_events.limit(limit))
        return [json.loads(row[0]) for row in rows]

    # -- lockout counters --------------------------------------------------------------

    def record_failure(self, key: str, window: float, now: float) -> tuple[int, float]:
        q = self._q
        key_hash = _failure_key_hash(key)
        until = now + window
        params = {"b_key_hash": key_hash, "b_until": until, "now": now}

        first = {
            "key_hash": key_hash,
            # For people reading the table; NUL is not text.
            "key": key[:FAILURE_KEY_CHARS].replace("\x00", "\ufffd"),
            "count": 1,
            "until": until,
        }

        def attempt() -> tuple[int, float]:
            if self._autocommit_statements:
                # PostgreSQL: each statement commits on its own, one round trip each; the
                # UPDATE is atomic by its row lock, and a racing first INSERT reruns it.
                with self._tx(one_statement=True) as conn:
                    row = conn.execute(q.count_failure_returning, params).first()
                if row is not None:
                    return int(row[0]), float(row[1])
                with self._tx(one_statement=True) as conn:
                    conn.execute(q.insert_failure, first)
                return 1, until
            with self._tx() as conn:
                # The UPDATE locks the key's row (no other lock): count or restart.
                if self._returning:
                    row = conn.execute(q.count_failure_returning, params).first()
                elif conn.execute(q.count_failure, params).rowcount == 1:
                    # Our own row lock holds: this reads what we just wrote.
                    row = conn.execute(q.get_failures, params).first()
                else:
                    row = None
                if row is not None:
                    return int(row[0]), float(row[1])
                # The key's first failure (or first since clear/purge). A racing first
                # insert makes one of us fail and retry with the UPDATE.
                conn.execute(q.insert_failure, first)
                return 1, until

        try:
            result = retry(
                attempt,
                retry_if=self._lost_race,
                attempts=_FAILURE_ATTEMPTS,
                delay=0.002,
            )
        except ConflictError as exc:
            raise StoreError(
                f"record_failure lost {_FAILURE_ATTEMPTS} races for one key in a row", exc
            ) from exc
        if result[0] == 1:
            self._count_new_failure_row(now)
        return result

    def _count_new_failure_row(self, now: float) -> None:
        """Every ``_FAILURE_PURGE_EVERY``-th new lockout row purges the expired ones:
        counted, not drawn, so a request's round trips stay predictable (tests)."""
        if next(self._new_failure_rows) % _FAILURE_PURGE_EVERY == _FAILURE_PURGE_EVERY - 1:
            self._purge_failures(now)

    @staticmethod
    def _lost_race(exc: BaseException) -> bool:
        """Whether ``exc`` means a racing transaction won and ours, rolled back, may rerun.

        A racing insert of the same key (``ConflictError``), or a deadlock: InnoDB
        check, by rolling one back (error 1213), PostgreSQL with SQLSTATE 40P01, SQL
        Server with SQLSTATE 40001.
        """
        if isinstance(exc, ConflictError):
            return True
        if not isinstance(exc, StoreError):
            return False
        original = getattr(exc.original, "orig", exc.original)
        if getattr(original, "sqlstate", None) in _DEADLOCK_SQLSTATES:
            return True
        args: tuple[t.Any, ...] = tuple(getattr(original, "args", ()))
        return bool(args) and args[0] in _DEADLOCK_CODES

    def _purge_failures(self, now: float) -> None:
        """Delete expired lockout rows; under the pool lock, so purgers never deadlock."""
        with self._tx() as conn:
            self._lock_pool(conn)
            conn.execute(self._q.purge_failures, {"now": now})

    def failures(self, key: str, now: float) -> tuple[int, float]:
        rows = self._read(
            self._q.get_live_failures, {"b_key_hash": _failure_key_hash(key), "now": now}
        )
        return (int(rows[0][0]), float(rows[0][1])) if rows else (0, 0.0)

    def failures_many(self, keys: t.Sequence[str], now: float) -> list[tuple[int, float]]:
        hashes = [_failure_key_hash(key) for key in keys]
        if not hashes:
            return []
        rows = self._read(
            self._q.get_live_failures_many, {"b_key_hashes": sorted(set(hashes)), "now": now}
        )
        found = {row[0]: (int(row[1]), float(row[2])) for row in rows}
        return [found.get(h, (0, 0.0)) for h in hashes]

    def record_failures(
        self, keys: t.Sequence[str], window: float, now: float
    ) -> list[tuple[int, float]]:
        if self._pg is None or len(keys) != 2 or keys[0] == keys[1]:
            return [self.record_failure(key, window, now) for key in keys]
        hashes = [_failure_key_hash(key) for key in keys]
        params: dict[str, t.Any] = {"now": now, "b_until": now + window}
        for n, (key, key_hash) in enumerate(zip(keys, hashes, strict=True)):
            params[f"b_h{n}"] = key_hash
            params[f"b_k{n}"] = key[:FAILURE_KEY_CHARS].replace("\x00", "\ufffd")
        with self._tx(one_statement=True) as conn:
            rows = conn.execute(self._pg.count_two, params).all()
        found = {row[0]: (int(row[1]), float(row[2])) for row in rows}
        counts = [found[key_hash] for key_hash in hashes]
        for count, _ in counts:
            if count == 1:
                self._count_new_failure_row(now)
        return counts

    def release_reservation(self, release_key: str, clear_key: str, now: float) -> None:
        if self._pg is None or release_key == clear_key:
            self.release_failure(release_key, now)
            self.clear_failures(clear_key)
            return
        params = {
            "b_release": _failure_key_hash(release_key),
            "b_clear": _failure_key_hash(clear_key),
            "now": now,
        }
        with self._tx(one_statement=True) as conn:
            conn.execute(self._pg.release_and_clear, params)

    def clear_failures(self, key: str) -> None:
        with self._tx(one_statement=True) as conn:
            conn.execute(self._q.clear_failures, {"b_key_hash": _failure_key_hash(key)})

    def release_failure(self, key: str, now: float) -> None:
        with self._tx(one_statement=True) as conn:
            conn.execute(
                self._q.release_failure, {"b_key_hash": _failure_key_hash(key), "now": now}
            )


class _PgThrottle(t.NamedTuple):
    """A throttle's reservation in one statement each, on PostgreSQL."""

    #: Count a failure of two keys, each atomically by its row (a new window when the
    #: row's has ended, a new row for a new key): INSERT ... ON CONFLICT DO UPDATE.
    count_two: t.Any
    #: Take back one count of a key and clear another: a DELETE in a WITH, which runs
    #: to completion whether or not the UPDATE reads it.
    release_and_clear: t.Any


@functools.lru_cache(maxsize=1)
def _pg_throttle(q: SQL) -> _PgThrottle:
    """Built once per process, like ``_sql()``, so the compiled cache hits."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    failures = q.failures
    bp = sa.bindparam
    rows = [
        {"key_hash": bp(f"b_h{n}"), "key": bp(f"b_k{n}"), "count": 1, "until": bp("b_until")}
        for n in range(2)
    ]
    insert = postgresql.insert(failures).values(rows)
    live = failures.c.until > bp("now")
    count_two = insert.on_conflict_do_update(
        index_elements=[failures.c.key_hash],
        set_={
            "count": sa.case((live, failures.c.count + 1), else_=1),
            "until": sa.case((live, failures.c.until), else_=insert.excluded.until),
        },
    ).returning(failures.c.key_hash, failures.c.count, failures.c.until)
    cleared = failures.delete().where(failures.c.key_hash == bp("b_clear")).cte("cleared")
    release_and_clear = (
        failures.update()
        .where(failures.c.key_hash == bp("b_release"), live, failures.c.count > 0)
        .values(count=failures.c.count - 1)
        .add_cte(cleared)
    )
    return _PgThrottle(count_two, release_and_clear)


def _drop_closed_connections(dbapi_connection: t.Any, record: t.Any, proxy: t.Any) -> None:
    """Refuse a pooled connection whose server has closed it, without a round trip.

    Between requests the client reads nothing, so a socket with something to read
    holds the server's goodbye: its FIN after a restart, or a termination notice. The
    pool then discards the connection and checks out (or opens) another, as after a
    failed ``pool_pre_ping``. A server that vanished without a word is noticed by the
    statement that fails instead: reads run once more (``_read``), a write reports
    ``StoreError``, and either way SQLAlchemy drops the pool's older connections.
    """
    import select

    from sqlalchemy.exc import DisconnectionError

    if callable(getattr(dbapi_connection, "fileno", None)):  # psycopg
        if dbapi_connection.closed:
            raise DisconnectionError("the connection is closed")
        fd = dbapi_connection.fileno()
    else:  # PyMySQL
        sock = getattr(dbapi_connection, "_sock", None)
        if sock is None:
            raise DisconnectionError("the connection is closed")
        fd = sock.fileno()
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        readable = bool(poller.poll(0))
    else:  # Windows
        readable = bool(select.select([fd], [], [fd], 0) != ([], [], []))
    if readable:
        raise DisconnectionError("the server closed the connection")


def _admin_from(row: t.Any) -> AdminSession:
    return AdminSession(
        session_hash=row["session_hash"],
        username=row["username"],
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
    )


def _failure_key_hash(key: str) -> str:
    """The primary key of a lockout key: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
