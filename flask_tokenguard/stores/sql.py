"""SQL server engines through SQLAlchemy Core: PostgreSQL, MySQL/MariaDB, SQL Server.

One class serves every server engine, so the seat-locking design is written once:

- every transaction that may change seats first *writes* the single ``tg_pool``
  row (``UPDATE tg_pool SET version = version + 1 WHERE id = 1``). A write takes an
  exclusive row lock on every engine without dialect hints, unlike ``SELECT ... FOR
  UPDATE``, which SQLAlchemy renders as a plain SELECT on mssql;
- transactions run at READ COMMITTED, so each statement after the lock takes a fresh
  snapshot and sees what the previous lock holder committed (InnoDB defaults to
  REPEATABLE READ, under which the count would read a stale snapshot);
- revocations write the ``revocation_seq`` counter row first, which both serializes
  revokers and hands out the sequence number stored with the revoked ids.

Lock order, to rule out deadlocks: pool row, then session rows, then counter row, then
revoked rows; failure rows come after the pool row (the opportunistic purge). A writer
of one session row (refresh rotation) or of one failure row (``record_failure``) takes
no other lock; ``revoke`` takes the counter row, then revoked rows.

Lockout counters (``tg_failures``) are keyed by the SHA-256 hex of the caller's key, so a
key of any length and characters fits one short primary key on every engine (InnoDB
limits index keys to 3072 bytes, 768 utf8mb4 characters) and compares byte for byte,
whatever the column collations (MySQL's PAD SPACE would make "bob" equal "bob ").

SQLAlchemy is imported lazily: the tables and statements are built once per process by
``_sql()`` on first use and then shared by every store, so the compiled-statement cache
hits on every call (building statements per call triples the cost of Core).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import threading
import time
import typing as t
import weakref

from ..errors import ConfigurationError
from ..errors import ConflictError
from ..errors import StoreError
from ..models import Client
from ..models import SigningKey
from ..models import TokenSession
from ..models import User
from .base import Store

if t.TYPE_CHECKING:  # pragma: no cover
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine import Row

#: Bumped whenever the tables change; stored in ``tg_schema_version``.
SCHEMA_VERSION = 1
#: A schema (PostgreSQL, SQL Server) or database (MySQL) name we are willing to quote.
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")
#: Name of the counter row that numbers revocations.
_SEQ = "revocation_seq"
#: Seconds for which schema creation is retried; concurrent creators lose races.
_SETUP_PATIENCE = 15.0
#: Characters of a lockout key kept, for people reading the table; the hash is the key.
_FAILURE_KEY_CHARS = 512
#: Attempts of ``record_failure`` before giving up; one retry follows each lost race to
#: insert a key's first row, and each deletion of the row between two statements.
_FAILURE_ATTEMPTS = 10
#: One ``record_failure`` in this many that starts a window also purges expired rows.
_FAILURE_PURGE_EVERY = 16

#: Stores alive in this process, so that a forked child drops the parent's connections.
_STORES: weakref.WeakSet[SQLAlchemyStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Forget pooled connections inherited from the parent without closing them.

    A socket shared by two processes corrupts both sessions; SQLAlchemy's recipe is
    ``dispose(close=False)`` in the child.
    """
    for store in list(_STORES):
        store._forget_connections()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _SQL:
    """Tables and prebuilt statements, shared by every store in the process.

    Built on first use (SQLAlchemy is an optional dependency). Tables carry no schema:
    a store that uses one maps ``None`` to it with ``schema_translate_map``, which is
    applied after compilation, so all stores share one compiled cache entry.
    """

    def __init__(self) -> None:
        import sqlalchemy as sa

        self.metadata = metadata = sa.MetaData()
        # MySQL/MariaDB: binary collation so that ids compare case-sensitively, as on
        # every other engine; InnoDB for row locks and transactions.
        table_kw: dict[str, t.Any] = {
            f"{prefix}_{key}": value
            for prefix in ("mysql", "mariadb")
            for key, value in (
                ("engine", "InnoDB"),
                ("charset", "utf8mb4"),
                ("collate", "utf8mb4_bin"),
            )
        }

        def key(length: int = 128) -> sa.types.TypeEngine[str]:
            # 128 characters keeps composite and unique indexes under InnoDB's limits;
            # SQL Server's default collations are case-insensitive, hence BIN2 there.
            return sa.Unicode(length).with_variant(
                sa.Unicode(length, collation="Latin1_General_100_BIN2"), "mssql"
            )

        def when() -> sa.types.TypeEngine[float]:
            # Double precision everywhere: MySQL's FLOAT is single precision and would
            # round epoch seconds to about two minutes.
            return sa.Double()

        self.pool = pool = sa.Table(
            "tg_pool",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("version", sa.BigInteger, nullable=False),
            **table_kw,
        )
        self.counters = counters = sa.Table(
            "tg_counters",
            metadata,
            sa.Column("name", key(64), primary_key=True),
            sa.Column("value", sa.BigInteger, nullable=False),
            **table_kw,
        )
        self.schema_version = schema_version = sa.Table(
            "tg_schema_version",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("version", sa.Integer, nullable=False),
            **table_kw,
        )
        self.clients = clients = sa.Table(
            "tg_clients",
            metadata,
            sa.Column("client_id", key(), primary_key=True),
            sa.Column("alias", key(), nullable=True),
            sa.Column("name", sa.Unicode(255), nullable=False),
            sa.Column("secret_hash", key(), nullable=True),
            sa.Column("grants", sa.Unicode(1024), nullable=False),
            sa.Column("scopes", sa.UnicodeText, nullable=False),
            sa.Column("enabled", sa.Boolean, nullable=False),
            sa.Column("created_at", when(), nullable=False),
            # Filtered: a SQL Server UNIQUE constraint admits only one NULL.
            sa.Index(
                "tg_clients_alias",
                "alias",
                unique=True,
                mssql_where=sa.column("alias").isnot(None),
            ),
            **table_kw,
        )
        self.users = users = sa.Table(
            "tg_users",
            metadata,
            sa.Column("username", key(), primary_key=True),
            sa.Column("password_hash", sa.Unicode(512), nullable=False),
            sa.Column("created_at", when(), nullable=False),
            **table_kw,
        )
        self.sessions = sessions = sa.Table(
            "tg_sessions",
            metadata,
            sa.Column("session_id", key(), primary_key=True),
            sa.Column("client_id", key(), nullable=False),
            sa.Column("subject", sa.Unicode(255), nullable=False),
            sa.Column("scope", sa.UnicodeText, nullable=False),
            sa.Column("holds_seat", sa.Boolean, nullable=False),
            sa.Column("refresh_hash", key(), nullable=False),
            sa.Column("created_at", when(), nullable=False),
            sa.Column("expires_at", when(), nullable=False),
            sa.UniqueConstraint("refresh_hash", name="tg_sessions_refresh_hash"),
            sa.Index("tg_sessions_client", "client_id"),
            sa.Index("tg_sessions_expiry", "expires_at"),
            **table_kw,
        )
        self.used_refresh = used_refresh = sa.Table(
            "tg_used_refresh",
            metadata,
            sa.Column("refresh_hash", key(), primary_key=True),
            # Cascade: sweeping or ending a session forgets its used hashes for free.
            sa.Column(
                "session_id",
                key(),
                sa.ForeignKey("tg_sessions.session_id", ondelete="CASCADE"),
                nullable=False,
                index=True,
            ),
            **table_kw,
        )
        self.revoked = revoked = sa.Table(
            "tg_revoked",
            metadata,
            sa.Column("token_id", key(), primary_key=True),
            sa.Column("expires_at", when(), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Index("tg_revoked_seq", "seq"),
            sa.Index("tg_revoked_expiry", "expires_at"),
            **table_kw,
        )
        self.claims = claims = sa.Table(
            "tg_claims",
            metadata,
            sa.Column("name", key(255), primary_key=True),
            **table_kw,
        )
        self.signing_keys = keys = sa.Table(
            "tg_signing_keys",
            metadata,
            sa.Column("kid", key(), primary_key=True),
            sa.Column("alg", sa.Unicode(16), nullable=False),
            sa.Column("private_pem", sa.UnicodeText, nullable=False),
            sa.Column("created_at", when(), nullable=False),
            sa.Column("retire_at", when(), nullable=True),
            **table_kw,
        )
        #: Not in schema version 1 at first: ``_create`` adds it to older schemas.
        self.failures = failures = sa.Table(
            "tg_failures",
            metadata,
            sa.Column("key_hash", key(64), primary_key=True),
            sa.Column("key", sa.Unicode(_FAILURE_KEY_CHARS), nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("until", when(), nullable=False),
            sa.Index("tg_failures_until", "until"),
            **table_kw,
        )

        bp = sa.bindparam
        now: sa.BindParameter[float] = bp("now")
        live = sessions.c.expires_at > now
        seat_live = sa.and_(sessions.c.holds_seat == sa.true(), live)

        # -- lifecycle
        self.ping = sa.text("SELECT 1")
        self.get_version = sa.select(schema_version.c.version).where(schema_version.c.id == 1)
        #: (probe, seed) pairs: a SELECT that finds the row, an INSERT that creates it.
        self.seeds: tuple[tuple[sa.Select[t.Any], sa.Insert], ...] = (
            (
                sa.select(pool.c.id).where(pool.c.id == 1),
                pool.insert().values(id=1, version=0),
            ),
            (
                sa.select(counters.c.name).where(counters.c.name == _SEQ),
                counters.insert().values(name=_SEQ, value=0),
            ),
            (
                sa.select(schema_version.c.id).where(schema_version.c.id == 1),
                schema_version.insert().values(id=1, version=SCHEMA_VERSION),
            ),
        )
        #: Children before parents, for ``reset``.
        self.wipe = tuple(table.delete() for table in reversed(metadata.sorted_tables))

        # -- locks: a write on one row is an exclusive row lock on every engine
        self.lock_pool = pool.update().where(pool.c.id == 1).values(version=pool.c.version + 1)
        self.bump_seq = (
            counters.update().where(counters.c.name == _SEQ).values(value=counters.c.value + 1)
        )
        self.bump_seq_returning = self.bump_seq.returning(counters.c.value)
        self.get_seq = sa.select(counters.c.value).where(counters.c.name == _SEQ)

        # -- claims
        self.insert_claim = claims.insert()

        # -- signing keys
        self.list_keys = sa.select(keys).order_by(keys.c.created_at, keys.c.kid)
        self.insert_key = keys.insert()
        self.retire_keys = (
            keys.update().where(keys.c.retire_at.is_(None)).values(retire_at=bp("b_retire_at"))
        )
        self.delete_retired_keys = keys.delete().where(keys.c.retire_at <= now)

        # -- clients
        self.insert_client = clients.insert()
        self.get_client = sa.select(clients).where(
            sa.or_(clients.c.client_id == bp("key"), clients.c.alias == bp("key"))
        )
        self.client_exists = sa.select(clients.c.client_id).where(
            clients.c.client_id == bp("b_client_id")
        )
        #: Rows whose id or alias is one of two names (a new id and alias).
        self.names_taken = (
            sa.select(sa.func.count())
            .select_from(clients)
            .where(
                sa.or_(
                    clients.c.client_id == bp("n1"),
                    clients.c.client_id == bp("n2"),
                    clients.c.alias == bp("n1"),
                    clients.c.alias == bp("n2"),
                )
            )
        )
        self.alias_taken = (
            sa.select(sa.func.count())
            .select_from(clients)
            .where(
                clients.c.client_id != bp("b_client_id"),
                sa.or_(
                    clients.c.client_id == bp("b_alias"),
                    clients.c.alias == bp("b_alias"),
                ),
            )
        )
        # SET columns come from the parameter names of each call.
        self.update_client = clients.update().where(clients.c.client_id == bp("b_client_id"))
        self.delete_client = clients.delete().where(clients.c.client_id == bp("b_client_id"))
        self.list_clients = sa.select(clients)

        # -- users
        self.insert_user = users.insert()
        self.get_user = sa.select(users).where(users.c.username == bp("b_username"))
        self.update_user = users.update().where(users.c.username == bp("b_username"))
        self.delete_user = users.delete().where(users.c.username == bp("b_username"))
        self.list_users = sa.select(users)

        # -- sessions and seats
        self.sweep_sessions = sessions.delete().where(sessions.c.expires_at <= now)
        self.count_seats = sa.select(sa.func.count()).select_from(sessions).where(seat_live)
        self.earliest_seat = sa.select(sa.func.min(sessions.c.expires_at)).where(seat_live)
        self.insert_session = sessions.insert()
        self.get_session = sa.select(sessions).where(
            sessions.c.session_id == bp("b_session_id"), live
        )
        self.find_current = sa.select(sessions).where(
            sessions.c.refresh_hash == bp("b_refresh_hash"), live
        )
        self.find_used = (
            sa.select(sessions)
            .join(used_refresh, used_refresh.c.session_id == sessions.c.session_id)
            .where(used_refresh.c.refresh_hash == bp("b_refresh_hash"), live)
        )
        # Compare-and-swap: only the caller holding the current hash matches the row.
        self.rotate = (
            sessions.update()
            .where(
                sessions.c.session_id == bp("b_session_id"),
                sessions.c.refresh_hash == bp("b_old_hash"),
                live,
            )
            .values(refresh_hash=bp("b_new_hash"), expires_at=bp("b_expires_at"))
        )
        self.rotate_returning = self.rotate.returning(*sessions.c)
        self.get_session_any = sa.select(sessions).where(
            sessions.c.session_id == bp("b_session_id")
        )
        self.insert_used = used_refresh.insert()
        self.list_sessions = sa.select(sessions).where(live)
        self.list_client_sessions = sa.select(sessions).where(
            sessions.c.client_id == bp("b_client_id"), live
        )

        #: Ending sessions by one id, by client or all:
        #: (lock rows, select, prune revoked, delete).
        self.end: dict[str, tuple[sa.Update, sa.Select[t.Any], sa.Delete, sa.Delete]] = {}
        filters: dict[str, sa.ColumnElement[bool] | None] = {
            "session": sessions.c.session_id == bp("b_key"),
            "client": sessions.c.client_id == bp("b_key"),
            "all": None,
        }
        for kind, where in filters.items():
            # A write that changes nothing, for its row locks: a refresh rotation that
            # commits a later expiry between our read and our delete would otherwise
            # be deleted with the earlier expiry revoked (see ``_end``).
            lock = sessions.update().values(expires_at=sessions.c.expires_at)
            pick = sa.select(sessions)
            ids = sa.select(sessions.c.session_id)
            drop = sessions.delete()
            if where is not None:
                lock, pick = lock.where(where), pick.where(where)
                ids, drop = ids.where(where), drop.where(where)
            # Prune expired revocations and any earlier entry under the same ids, so the
            # inserts that follow cannot collide (the counter lock keeps others out).
            prune = revoked.delete().where(
                sa.or_(
                    revoked.c.expires_at <= now,
                    revoked.c.token_id.in_(ids.scalar_subquery()),
                )
            )
            self.end[kind] = (lock, pick, prune, drop)

        # -- revocation
        self.prune_revoked = revoked.delete().where(
            sa.or_(revoked.c.expires_at <= now, revoked.c.token_id == bp("b_token_id"))
        )
        self.insert_revoked = revoked.insert()
        self.revoked_since = sa.select(revoked.c.token_id, revoked.c.expires_at).where(
            revoked.c.seq > bp("b_seq"), revoked.c.expires_at > now
        )

        # -- lockout counters
        live_window = failures.c.until > now
        #: Count one failure, or start a new window if the row's has ended, in one
        #: statement: its row lock serializes concurrent failures of the key, and on
        #: READ COMMITTED a waiting UPDATE re-reads the row its predecessor committed.
        #: Ordered: MySQL evaluates SET left to right with the new values, so ``count``
        #: must read ``until`` before ``until`` changes.
        self.count_failure = (
            failures.update()
            .where(failures.c.key_hash == bp("b_key_hash"))
            .ordered_values(
                (
                    failures.c.count,
                    sa.case((live_window, failures.c.count + 1), else_=1),
                ),
                (
                    failures.c.until,
                    sa.case((live_window, failures.c.until), else_=bp("b_until")),
                ),
            )
        )
        self.count_failure_returning = self.count_failure.returning(
            failures.c.count, failures.c.until
        )
        self.get_failures = sa.select(failures.c.count, failures.c.until).where(
            failures.c.key_hash == bp("b_key_hash")
        )
        self.get_live_failures = self.get_failures.where(live_window)
        self.insert_failure = failures.insert()
        self.clear_failures = failures.delete().where(failures.c.key_hash == bp("b_key_hash"))
        self.purge_failures = failures.delete().where(failures.c.until <= now)


_SQL_LOCK = threading.Lock()
_SQL_SHARED: _SQL | None = None


def _sql() -> _SQL:
    """The process-wide tables and statements, built once on first use."""
    global _SQL_SHARED
    if _SQL_SHARED is None:
        # Double-checked, so that every store shares one set of statements (and so
        # one compiled-cache entry each) even when threads open stores at once.
        with _SQL_LOCK:
            if _SQL_SHARED is None:
                _SQL_SHARED = _SQL()
    return _SQL_SHARED


def _session(row: Row[t.Any]) -> TokenSession:
    return TokenSession(
        session_id=row.session_id,
        client_id=row.client_id,
        subject=row.subject,
        scope=row.scope,
        holds_seat=bool(row.holds_seat),
        refresh_hash=row.refresh_hash,
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
    )


def _client(row: Row[t.Any]) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        secret_hash=row.secret_hash,
        alias=row.alias,
        grants=tuple(row.grants.split()),
        scopes=tuple(row.scopes.split()),
        enabled=bool(row.enabled),
        created_at=float(row.created_at),
    )


def _client_params(client: Client) -> dict[str, t.Any]:
    return {
        "client_id": client.client_id,
        "alias": client.alias,
        "name": client.name,
        "secret_hash": client.secret_hash,
        "grants": " ".join(client.grants),
        "scopes": " ".join(client.scopes),
        "enabled": client.enabled,
        "created_at": client.created_at,
    }


def _user(row: Row[t.Any]) -> User:
    return User(
        username=row.username,
        password_hash=row.password_hash,
        created_at=float(row.created_at),
    )


def _key(row: Row[t.Any]) -> SigningKey:
    return SigningKey(
        kid=row.kid,
        alg=row.alg,
        private_pem=row.private_pem,
        created_at=float(row.created_at),
        retire_at=None if row.retire_at is None else float(row.retire_at),
    )


def _key_params(key: SigningKey) -> dict[str, t.Any]:
    return {
        "kid": key.kid,
        "alg": key.alg,
        "private_pem": key.private_pem,
        "created_at": key.created_at,
        "retire_at": key.retire_at,
    }


class SQLAlchemyStore(Store):
    """PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL) and SQL Server, via Core.

    ``sqlite+pysqlite`` is served too, so that CI runs this code without servers; the
    embedded default remains the stdlib ``sqlite://`` store.

    Options go to ``create_engine`` except ``schema``: a PostgreSQL/SQL Server schema
    or a MySQL database, created if missing, that holds the tables (tests isolate runs
    with it).
    """

    schemes = (
        "postgresql",
        "postgresql+psycopg",
        "mysql+pymysql",
        "mariadb+pymysql",
        "mssql+pyodbc",
        "mssql+pymssql",
        "sqlite+pysqlite",
    )

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
            parsed = sa.make_url(url)
        except sa_exc.ArgumentError as exc:
            raise ConfigurationError(f"TOKENGUARD_STORE_URL is not a database URL: {exc}") from exc
        if parsed.drivername == "postgresql":
            # SQLAlchemy's bare "postgresql" means psycopg2; we ship psycopg 3.
            parsed = parsed.set(drivername="postgresql+psycopg")
        backend = parsed.get_backend_name()
        if schema is not None and (backend == "sqlite" or not _SCHEMA_NAME.fullmatch(schema)):
            raise ConfigurationError(
                f"schema {schema!r} is not usable: letters, digits, '_' and '-' only, "
                "and not on SQLite"
            )
        options.setdefault("pool_pre_ping", True)
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
        self._base_engine: Engine = engine
        self._engine: Engine = (
            engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        )
        self._schema = schema
        self._backend = backend
        self._ready = False
        self._setup_lock = threading.Lock()
        #: Whether UPDATE ... RETURNING saves a round trip; known once connected.
        self._returning = False
        _STORES.add(self)

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
        self._base_engine.dispose(close=False)

    # -- plumbing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> t.Iterator[Connection]:
        """One pooled connection and one transaction per store call.

        A unique violation means the record exists: ``ConflictError``. Other driver
        failures become ``StoreError``.
        """
        if not self._ready:
            self._setup()
        with self.wrap_errors():
            try:
                with self._engine.begin() as conn:
                    yield conn
            except self._exc.IntegrityError as exc:
                raise ConflictError("a record with that key exists") from exc

    def _lock_pool(self, conn: Connection) -> None:
        # The lock every seat, client and key change queues on (see module docstring).
        if conn.execute(self._q.lock_pool).rowcount != 1:
            raise StoreError("tg_pool has no row 1; the store's seed rows are missing")

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
                deadline = time.monotonic() + _SETUP_PATIENCE
                delay = 0.02
                while True:
                    try:
                        self._create()
                        break
                    except (
                        exc_.ProgrammingError,
                        exc_.OperationalError,
                        exc_.IntegrityError,
                    ):
                        if time.monotonic() > deadline:
                            raise
                        # Jitter, so that the losers do not collide again in step.
                        time.sleep(delay * (0.5 + random.random()))
                        delay = min(delay * 2, 0.5)
            self._returning = bool(self._engine.dialect.update_returning)
            self._ready = True

    def _create(self) -> None:
        q = self._q
        version = self._stored_version()
        if version == SCHEMA_VERSION:
            # Tables added within version 1 (old code ignores them), for schemas created
            # before them. A concurrent creator's error is retried by ``_setup``.
            with self._engine.begin() as conn:
                q.failures.create(conn, checkfirst=True)
            return
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"The store's schema is version {version}; this flask-tokenguard knows "
                f"{SCHEMA_VERSION}. Upgrade flask-tokenguard."
            )
        if self._schema is not None:
            self._create_schema()
        with self._engine.begin() as conn:
            q.metadata.create_all(conn, checkfirst=True)
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

    def _create_schema(self) -> None:
        name = self._quoted_schema()
        if self._backend in ("mysql", "mariadb"):
            statement = (
                f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
        elif self._backend == "mssql":
            statement = f"IF SCHEMA_ID(N'{self._schema}') IS NULL EXEC('CREATE SCHEMA {name}')"
        else:
            # Concurrent IF NOT EXISTS can still fail on PostgreSQL; _setup retries.
            statement = f"CREATE SCHEMA IF NOT EXISTS {name}"
        with self._base_engine.begin() as conn:
            conn.exec_driver_sql(statement)

    # -- lifecycle ---------------------------------------------------------------------

    def check(self) -> None:
        with self.wrap_errors(), self._base_engine.connect() as conn:
            conn.execute(self._q.ping)

    def close(self) -> None:
        # The pool opens new connections on the next call.
        self._base_engine.dispose()

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
            keys = [_key(row) for row in conn.execute(q.list_keys)]
            if not keys:
                conn.execute(q.insert_key, _key_params(candidate))
                keys = [candidate]
        return keys

    def add_signing_key(self, key: SigningKey, retire_others_at: float) -> None:
        q = self._q
        with self._tx() as conn:
            self._lock_pool(conn)
            conn.execute(q.retire_keys, {"b_retire_at": retire_others_at})
            conn.execute(q.insert_key, _key_params(key))

    def signing_keys(self, now: float) -> list[SigningKey]:
        with self._tx() as conn:
            keys = [_key(row) for row in conn.execute(self._q.list_keys)]
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
            conn.execute(q.insert_client, _client_params(client))

    def get_client(self, id_or_alias: str) -> Client | None:
        with self._tx() as conn:
            rows = list(conn.execute(self._q.get_client, {"key": id_or_alias}))
        # An id never equals another client's alias, but prefer the id if it ever did.
        rows.sort(key=lambda row: row.client_id != id_or_alias)
        return _client(rows[0]) if rows else None

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
            params = _client_params(client)
            del params["client_id"]
            conn.execute(q.update_client, {**params, "b_client_id": client.client_id})
        return True

    def delete_client(self, client_id: str) -> bool:
        with self._tx() as conn:
            return conn.execute(self._q.delete_client, {"b_client_id": client_id}).rowcount > 0

    def list_clients(self) -> list[Client]:
        with self._tx() as conn:
            clients = [_client(row) for row in conn.execute(self._q.list_clients)]
        # Sorted here: database collations order strings differently from Python.
        return sorted(clients, key=lambda c: (c.created_at, c.client_id))

    # -- users -------------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        with self._tx() as conn:
            conn.execute(
                self._q.insert_user,
                {
                    "username": user.username,
                    "password_hash": user.password_hash,
                    "created_at": user.created_at,
                },
            )

    def get_user(self, username: str) -> User | None:
        with self._tx() as conn:
            row = conn.execute(self._q.get_user, {"b_username": username}).first()
        return None if row is None else _user(row)

    def update_user(self, user: User) -> bool:
        with self._tx() as conn:
            result = conn.execute(
                self._q.update_user,
                {
                    "password_hash": user.password_hash,
                    "created_at": user.created_at,
                    "b_username": user.username,
                },
            )
            return result.rowcount > 0

    def delete_user(self, username: str) -> bool:
        with self._tx() as conn:
            return conn.execute(self._q.delete_user, {"b_username": username}).rowcount > 0

    def list_users(self) -> list[User]:
        with self._tx() as conn:
            users = [_user(row) for row in conn.execute(self._q.list_users)]
        return sorted(users, key=lambda u: u.username)

    # -- sessions and seats ------------------------------------------------------------

    def start_session(self, session: TokenSession, seat_limit: int | None, now: float) -> bool:
        q = self._q
        with self._tx() as conn:
            # 1. Lock: concurrent acquirers queue here, across processes and hosts.
            self._lock_pool(conn)
            # 2. Sweep: expired seats are free (used hashes go by cascade).
            conn.execute(q.sweep_sessions, {"now": now})
            # 3. Count: READ COMMITTED, so this sees the previous holder's commit.
            if session.holds_seat and seat_limit is not None:
                if conn.execute(q.count_seats, {"now": now}).scalar_one() >= seat_limit:
                    return False
            # 4. Take the seat; the commit releases the lock.
            conn.execute(
                q.insert_session,
                {
                    "session_id": session.session_id,
                    "client_id": session.client_id,
                    "subject": session.subject,
                    "scope": session.scope,
                    "holds_seat": session.holds_seat,
                    "refresh_hash": session.refresh_hash,
                    "created_at": session.created_at,
                    "expires_at": session.expires_at,
                },
            )
        return True

    def earliest_seat_expiry(self, now: float) -> float | None:
        with self._tx() as conn:
            value = conn.execute(self._q.earliest_seat, {"now": now}).scalar()
        return None if value is None else float(value)

    def seats_in_use(self, now: float) -> int:
        with self._tx() as conn:
            return int(conn.execute(self._q.count_seats, {"now": now}).scalar_one())

    def get_session(self, session_id: str, now: float) -> TokenSession | None:
        with self._tx() as conn:
            row = conn.execute(
                self._q.get_session, {"b_session_id": session_id, "now": now}
            ).first()
        return None if row is None else _session(row)

    def find_refresh(self, refresh_hash: str, now: float) -> tuple[TokenSession, bool] | None:
        q = self._q
        params = {"b_refresh_hash": refresh_hash, "now": now}
        with self._tx() as conn:
            row = conn.execute(q.find_current, params).first()
            if row is not None:
                return _session(row), True
            row = conn.execute(q.find_used, params).first()
        return None if row is None else (_session(row), False)

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
        with self._tx() as conn:
            # The UPDATE is the compare-and-swap; its row lock holds off a second
            # refresh with the same token until we commit.
            if self._returning:
                row = conn.execute(q.rotate_returning, params).first()
                if row is None:
                    return None
            else:
                if conn.execute(q.rotate, params).rowcount != 1:
                    return None
                row = conn.execute(q.get_session_any, {"b_session_id": session_id}).one()
            conn.execute(q.insert_used, {"refresh_hash": old_hash, "session_id": session_id})
        return _session(row)

    def _end(self, kind: str, key: str | None, now: float) -> list[TokenSession]:
        """End the sessions ``kind`` picks, record them as revoked; return live ones."""
        lock, pick, prune, drop = self._q.end[kind]
        params = {"b_key": key, "now": now}
        with self._tx() as conn:
            # Lock order: pool, session rows, counter, revoked rows (module docstring).
            self._lock_pool(conn)
            # Lock the rows before reading them: a concurrent rotation (which takes no
            # pool lock) either committed before the lock, and the read below sees its
            # expiry (READ COMMITTED), or waits and then finds the row gone. A plain
            # read would revoke the session only until the expiry before the rotation,
            # and tokens issued by that rotation would be accepted again afterwards.
            conn.execute(lock, params)
            ended = [_session(row) for row in conn.execute(pick, params)]
            if not ended:
                return []
            seq = self._bump_seq(conn)
            conn.execute(prune, params)
            conn.execute(drop, params)
            conn.execute(
                self._q.insert_revoked,
                [
                    {
                        "token_id": s.session_id,
                        "expires_at": max(s.expires_at, now + 1),
                        "seq": seq,
                    }
                    for s in ended
                ],
            )
        return [s for s in ended if s.is_live(now)]

    def end_session(self, session_id: str, now: float) -> TokenSession | None:
        ended = self._end("session", session_id, now)
        return ended[0] if ended else None

    def end_sessions(self, client_id: str | None, now: float) -> int:
        if client_id is None:
            return len(self._end("all", None, now))
        return len(self._end("client", client_id, now))

    def list_sessions(self, client_id: str | None, now: float) -> list[TokenSession]:
        q = self._q
        with self._tx() as conn:
            if client_id is None:
                rows = conn.execute(q.list_sessions, {"now": now})
            else:
                rows = conn.execute(q.list_client_sessions, {"b_client_id": client_id, "now": now})
            sessions = [_session(row) for row in rows]
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
        with self._tx() as conn:
            return int(conn.execute(self._q.get_seq).scalar_one())

    def revocations_since(self, seq: int, now: float) -> tuple[dict[str, float], int]:
        q = self._q
        with self._tx() as conn:
            # Counter first: entries committed with a higher seq are then visible to the
            # next statement (READ COMMITTED), so none is skipped; a later one may be
            # returned twice, which is harmless.
            current = int(conn.execute(q.get_seq).scalar_one())
            rows = conn.execute(q.revoked_since, {"b_seq": seq, "now": now}).all()
        return {row.token_id: float(row.expires_at) for row in rows}, current

    # -- lockout counters --------------------------------------------------------------

    def record_failure(self, key: str, window: float, now: float) -> tuple[int, float]:
        q = self._q
        key_hash = _failure_key_hash(key)
        until = now + window
        params = {"b_key_hash": key_hash, "b_until": until, "now": now}
        for _attempt in range(_FAILURE_ATTEMPTS):
            try:
                with self._tx() as conn:
                    # The UPDATE locks the key's row (no other lock): count or restart.
                    if self._returning:
                        row = conn.execute(q.count_failure_returning, params).first()
                    elif conn.execute(q.count_failure, params).rowcount == 1:
                        # Our own row lock holds: this reads what we just wrote.
                        row = conn.execute(q.get_failures, params).first()
                    else:
                        row = None
                    if row is None:
                        # The key's first failure (or first since clear/purge). A racing
                        # first insert makes one of us fail and retry with the UPDATE.
                        conn.execute(
                            q.insert_failure,
                            {
                                "key_hash": key_hash,
                                "key": key[:_FAILURE_KEY_CHARS],
                                "count": 1,
                                "until": until,
                            },
                        )
                        result = (1, until)
                    else:
                        result = (int(row[0]), float(row[1]))
            except ConflictError:
                continue
            if result[0] == 1 and random.randrange(_FAILURE_PURGE_EVERY) == 0:
                self._purge_failures(now)
            return result
        raise StoreError(f"record_failure lost {_FAILURE_ATTEMPTS} races for one key in a row")

    def _purge_failures(self, now: float) -> None:
        """Delete expired lockout rows; under the pool lock, so purgers never deadlock."""
        with self._tx() as conn:
            self._lock_pool(conn)
            conn.execute(self._q.purge_failures, {"now": now})

    def failures(self, key: str, now: float) -> tuple[int, float]:
        params = {"b_key_hash": _failure_key_hash(key), "now": now}
        with self._tx() as conn:
            row = conn.execute(self._q.get_live_failures, params).first()
        return (0, 0.0) if row is None else (int(row[0]), float(row[1]))

    def clear_failures(self, key: str) -> None:
        with self._tx() as conn:
            conn.execute(self._q.clear_failures, {"b_key_hash": _failure_key_hash(key)})


def _failure_key_hash(key: str) -> str:
    """The primary key of a lockout key: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
