"""The SQL server store's tables and statements (SQLAlchemy Core), apart from its logic.

Built once per process on first use (SQLAlchemy is an optional dependency) and shared by
every store, so that the compiled-statement cache hits on every call. Table and column
names are those of the SQLite store too.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    import sqlalchemy as sa

#: Bumped whenever the tables change; stored in ``tg_schema_version``. Older schemas are
#: migrated in place by the steps of ``SQLAlchemyStore._MIGRATIONS``.
SCHEMA_VERSION = 3
#: Name of the counter row that numbers revocations.
SEQ = "revocation_seq"
#: Name of the counter row that holds the revocation epoch (a random number).
EPOCH = "revocation_epoch"
#: Characters of a lockout key kept, for people reading the table; the hash is the key.
FAILURE_KEY_CHARS = 512


class SQL:
    """Tables and prebuilt statements, shared by every store in the process.

    Built on first use (SQLAlchemy is an optional dependency). Tables carry no schema:
    a store that uses one maps ``None`` to it with ``schema_translate_map``, which is
    applied after compilation, so all stores share one compiled cache entry.
    """

    def __init__(self) -> None:
        self._define_tables()
        self._build_statements()

    def _define_tables(self) -> None:
        """The tables: their names and columns are the same on every engine."""
        import sqlalchemy as sa

        self.metadata = metadata = sa.MetaData()
        # MySQL/MariaDB: InnoDB for row locks and transactions. The tables take the
        # database's collation, a NO PAD binary one that the store sets up (see
        # ``SQLAlchemyStore._use_no_pad_collation``): ids compare byte for byte.
        table_kw: dict[str, t.Any] = {
            f"{prefix}_{key}": value
            for prefix in ("mysql", "mariadb")
            for key, value in (("engine", "InnoDB"),)
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

        self.pool = sa.Table(
            "tg_pool",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("version", sa.BigInteger, nullable=False),
            #: Since version 3: the seat-holding rows of ``tg_sessions`` (expired ones
            #: included until swept), kept by every transaction that adds or deletes
            #: one, under this row's lock; a seat start reads it instead of counting.
            sa.Column("seats", sa.BigInteger, nullable=False, server_default="0"),
            **table_kw,
        )
        self.counters = sa.Table(
            "tg_counters",
            metadata,
            sa.Column("name", key(64), primary_key=True),
            sa.Column("value", sa.BigInteger, nullable=False),
            **table_kw,
        )
        self.schema_version = sa.Table(
            "tg_schema_version",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("version", sa.Integer, nullable=False),
            **table_kw,
        )
        self.clients = sa.Table(
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
            #: Since version 3: the client's own seat cap; NULL for none.
            sa.Column("max_seats", sa.Integer, nullable=True),
            # Filtered: a SQL Server UNIQUE constraint admits only one NULL.
            sa.Index(
                "tg_clients_alias",
                "alias",
                unique=True,
                mssql_where=sa.column("alias").isnot(None),
            ),
            **table_kw,
        )
        self.users = sa.Table(
            "tg_users",
            metadata,
            sa.Column("username", key(), primary_key=True),
            sa.Column("password_hash", sa.Unicode(512), nullable=False),
            sa.Column("created_at", when(), nullable=False),
            #: Since version 3; the default fills the rows of older schemas.
            sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
            **table_kw,
        )
        self.sessions = sa.Table(
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
            # Since version 3: a client's live seats counted, and its oldest found, on
            # every capped start.
            sa.Index("tg_sessions_client_seat", "client_id", "holds_seat", "created_at"),
            **table_kw,
        )
        self.used_refresh = sa.Table(
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
        self.revoked = sa.Table(
            "tg_revoked",
            metadata,
            sa.Column("token_id", key(), primary_key=True),
            sa.Column("expires_at", when(), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Index("tg_revoked_seq", "seq"),
            sa.Index("tg_revoked_expiry", "expires_at"),
            **table_kw,
        )
        self.claims = sa.Table(
            "tg_claims",
            metadata,
            sa.Column("name", key(255), primary_key=True),
            **table_kw,
        )
        self.signing_keys = sa.Table(
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
        self.failures = sa.Table(
            "tg_failures",
            metadata,
            sa.Column("key_hash", key(64), primary_key=True),
            sa.Column("key", sa.Unicode(FAILURE_KEY_CHARS), nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("until", when(), nullable=False),
            sa.Index("tg_failures_until", "until"),
            **table_kw,
        )
        #: Since version 3: signed-in administrators of the admin console.
        self.admin_sessions = sa.Table(
            "tg_admin_sessions",
            metadata,
            sa.Column("session_hash", key(), primary_key=True),
            sa.Column("username", key(), nullable=False),
            sa.Column("created_at", when(), nullable=False),
            sa.Column("expires_at", when(), nullable=False),
            sa.Index("tg_admin_sessions_expiry", "expires_at"),
            **table_kw,
        )
        #: Since version 3: recent security events, newest = highest id. On SQLite,
        #: AUTOINCREMENT (an INTEGER key) so that ids never go back after a trim.
        self.events = sa.Table(
            "tg_events",
            metadata,
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("event", sa.UnicodeText, nullable=False),
            sqlite_autoincrement=True,
            **table_kw,
        )

    def _build_statements(self) -> None:
        """Every statement the store runs, built once."""
        import sqlalchemy as sa

        (
            pool,
            counters,
            schema_version,
            clients,
            users,
            sessions,
            used_refresh,
            revoked,
            claims,
            keys,
            failures,
            admins,
            events,
        ) = (
            self.pool,
            self.counters,
            self.schema_version,
            self.clients,
            self.users,
            self.sessions,
            self.used_refresh,
            self.revoked,
            self.claims,
            self.signing_keys,
            self.failures,
            self.admin_sessions,
            self.events,
        )

        bp = sa.bindparam
        now: sa.BindParameter[float] = bp("now")
        live = sessions.c.expires_at > now
        seat_live = sa.and_(sessions.c.holds_seat == sa.true(), live)

        # -- lifecycle
        self.ping = sa.text("SELECT 1")
        self.get_version = sa.select(schema_version.c.version).where(schema_version.c.id == 1)
        self.set_version = (
            schema_version.update()
            .where(schema_version.c.id == 1, schema_version.c.version == bp("b_from"))
            .values(version=bp("b_to"))
        )
        #: (probe, seed) pairs: a SELECT that finds the row, an INSERT that creates it.
        self.seeds: tuple[tuple[sa.Select[t.Any], sa.Insert], ...] = (
            (
                sa.select(pool.c.id).where(pool.c.id == 1),
                pool.insert().values(id=1, version=0, seats=0),
            ),
            (
                sa.select(counters.c.name).where(counters.c.name == SEQ),
                counters.insert().values(name=SEQ, value=0),
            ),
            (
                sa.select(schema_version.c.id).where(schema_version.c.id == 1),
                schema_version.insert().values(id=1, version=SCHEMA_VERSION),
            ),
        )
        #: Children before parents, for ``reset``.
        self.wipe = tuple(table.delete() for table in reversed(self.metadata.sorted_tables))

        # -- locks: a write on one row is an exclusive row lock on every engine
        self.lock_pool = pool.update().where(pool.c.id == 1).values(version=pool.c.version + 1)
        #: A seat start's lock: counts its seat in advance (a refusal puts it back)
        #: and returns the counter, so that the usual start is this statement, the
        #: sweep and the insert.
        self.take_seat_lock = (
            pool.update()
            .where(pool.c.id == 1)
            .values(version=pool.c.version + 1, seats=pool.c.seats + 1)
        )
        self.take_seat_lock_returning = self.take_seat_lock.returning(pool.c.seats)
        self.get_seats = sa.select(pool.c.seats).where(pool.c.id == 1)
        #: Only under the pool lock, which the caller took first.
        self.set_seats = pool.update().where(pool.c.id == 1).values(seats=bp("b_seats"))
        self.add_seats = (
            pool.update().where(pool.c.id == 1).values(seats=pool.c.seats + bp("b_delta"))
        )
        #: The counter computed from the rows (the migration that adds it).
        self.count_seat_rows = (
            sa.select(sa.func.count())
            .select_from(sessions)
            .where(sessions.c.holds_seat == sa.true())
        )
        self.bump_seq = (
            counters.update().where(counters.c.name == SEQ).values(value=counters.c.value + 1)
        )
        self.bump_seq_returning = self.bump_seq.returning(counters.c.value)
        self.get_seq = sa.select(counters.c.value).where(counters.c.name == SEQ)
        self.get_epoch = sa.select(counters.c.value).where(counters.c.name == EPOCH)
        self.insert_epoch = counters.insert().values(name=EPOCH, value=bp("b_epoch"))

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
        #: Expired seats are swept under the pool lock, by seat-taking starts, which
        #: subtract the rows deleted from the counter; expired seat-less rows by
        #: seat-less starts, without it. The two sets are disjoint: no sweeper waits
        #: for another's row locks.
        expired = sessions.c.expires_at <= now
        self.sweep_seats = sessions.delete().where(sessions.c.holds_seat == sa.true(), expired)
        self.sweep_free = sessions.delete().where(sessions.c.holds_seat == sa.false(), expired)
        self.count_seats = sa.select(sa.func.count()).select_from(sessions).where(seat_live)
        self.earliest_seat = sa.select(sa.func.min(sessions.c.expires_at)).where(seat_live)
        client_seat_live = sa.and_(sessions.c.client_id == bp("b_client_id"), seat_live)
        self.earliest_client_seat = sa.select(sa.func.min(sessions.c.expires_at)).where(
            client_seat_live
        )
        #: By ``tg_sessions_client_seat``: one client's seats, in the order they are
        #: replaced.
        self.count_client_seats = (
            sa.select(sa.func.count()).select_from(sessions).where(client_seat_live)
        )
        self.client_seat_ids = (
            sa.select(sessions.c.session_id)
            .where(client_seat_live)
            .order_by(sessions.c.created_at, sessions.c.session_id)
        )
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
        #: Taking a rotation back: only while the session is live, the new hash is
        #: current and the old one recorded as used by this session (by that rotation).
        self.unrotate = (
            sessions.update()
            .where(
                sessions.c.session_id == bp("b_session_id"),
                sessions.c.refresh_hash == bp("b_new_hash"),
                live,
                sa.exists().where(
                    used_refresh.c.refresh_hash == bp("b_old_hash"),
                    used_refresh.c.session_id == sessions.c.session_id,
                ),
            )
            .values(refresh_hash=bp("b_old_hash"))
        )
        self.delete_used = used_refresh.delete().where(
            used_refresh.c.refresh_hash == bp("b_old_hash"),
            used_refresh.c.session_id == bp("b_session_id"),
        )
        self.list_sessions = sa.select(sessions).where(live)
        self.list_client_sessions = sa.select(sessions).where(
            sessions.c.client_id == bp("b_client_id"), live
        )

        #: Ending sessions by one id, by client or all:
        #: (lock rows, select, prune revoked); the rows picked go by ``delete_ids``.
        self.end: dict[str, tuple[sa.Update, sa.Select[t.Any], sa.Delete]] = {}
        by_ids = sessions.c.session_id.in_(bp("b_ids", expanding=True))
        filters: dict[str, sa.ColumnElement[bool] | None] = {
            "session": sessions.c.session_id == bp("b_key"),
            "client": sessions.c.client_id == bp("b_key"),
            "all": None,
            # Seats replaced by a capped start (their ids, picked under the pool lock).
            "ids": by_ids,
        }
        #: Deletes what ``pick`` returned, by id: a seat-less start takes no pool lock,
        #: so a session inserted between the pick and a delete by client would go
        #: unrevoked, and the counter would lose track of it.
        self.delete_ids = sessions.delete().where(by_ids)
        for kind, where in filters.items():
            # A write that changes nothing, for its row locks: a refresh rotation that
            # commits a later expiry between our read and our delete would otherwise
            # be deleted with the earlier expiry revoked (see ``_end``).
            lock = sessions.update().values(expires_at=sessions.c.expires_at)
            pick = sa.select(sessions)
            ids = sa.select(sessions.c.session_id)
            if where is not None:
                lock, pick, ids = lock.where(where), pick.where(where), ids.where(where)
            # Prune expired revocations and any earlier entry under the same ids, so the
            # inserts that follow cannot collide (the counter lock keeps others out).
            prune = revoked.delete().where(
                sa.or_(
                    revoked.c.expires_at <= now,
                    revoked.c.token_id.in_(ids.scalar_subquery()),
                )
            )
            self.end[kind] = (lock, pick, prune)

        # -- revocation
        self.prune_revoked = revoked.delete().where(
            sa.or_(revoked.c.expires_at <= now, revoked.c.token_id == bp("b_token_id"))
        )
        self.insert_revoked = revoked.insert()
        self.revoked_since = sa.select(revoked.c.token_id, revoked.c.expires_at).where(
            revoked.c.seq > bp("b_seq"), revoked.c.expires_at > now
        )

        # -- admin console sessions
        admin_hash = admins.c.session_hash == bp("b_session_hash")
        self.insert_admin = admins.insert()
        self.purge_admins = admins.delete().where(admins.c.expires_at <= now)
        #: The touch: the WHERE clause is the liveness check, so a session cannot
        #: expire between being checked and being extended.
        self.touch_admin = (
            admins.update()
            .where(admin_hash, admins.c.expires_at > now)
            .values(expires_at=bp("b_expires_at"))
        )
        #: A write that changes nothing, for its row lock (writes first: see SQLite).
        self.lock_admin = admins.update().where(admin_hash).values(expires_at=admins.c.expires_at)
        self.get_admin = sa.select(admins).where(admin_hash)
        self.delete_admin = admins.delete().where(admin_hash)

        # -- recent security events
        self.insert_event = events.insert()
        #: Newest first; LIMIT/OFFSET are added per call (compiled once per shape).
        self.event_ids = sa.select(events.c.id).order_by(events.c.id.desc())
        self.newest_events = sa.select(events.c.event).order_by(events.c.id.desc())
        self.trim_events = events.delete().where(events.c.id < bp("b_cutoff"))

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
        self.get_live_failures_many = sa.select(
            failures.c.key_hash, failures.c.count, failures.c.until
        ).where(failures.c.key_hash.in_(bp("b_key_hashes", expanding=True)), live_window)
        self.insert_failure = failures.insert()
        self.clear_failures = failures.delete().where(failures.c.key_hash == bp("b_key_hash"))
        #: One statement, so its row lock makes concurrent releases each take one count.
        self.release_failure = (
            failures.update()
            .where(failures.c.key_hash == bp("b_key_hash"), live_window, failures.c.count > 0)
            .values(count=failures.c.count - 1)
        )
        self.purge_failures = failures.delete().where(failures.c.until <= now)
