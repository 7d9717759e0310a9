"""Creating the SQL server store's schema, and upgrading older ones in place.

Every step is idempotent, so processes opening one store at once may run a step
together; a loser's error is retried by the store's set-up.
"""

from __future__ import annotations

import typing as t

from ...errors import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine

    from .schema import SQL


class MigratingStore(t.Protocol):
    """What a migration step reads of the store it upgrades (the store's own attributes;
    a protocol, so that this module does not import the store that imports it)."""

    _backend: str
    _base_engine: Engine
    _engine: Engine
    _q: SQL
    _schema: str | None

    def _quoted_schema(self) -> str: ...


#: NO PAD binary collations, best first: with them "alice" differs from "alice  ".
#: MariaDB has the first; MySQL 8 the second.
NO_PAD_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")


def migrate_1_to_2(store: MigratingStore) -> None:
    """Version 1 to 2: ``tg_failures`` (missing from the first releases of version 1),
    and on MySQL/MariaDB a NO PAD collation, under which ``"alice "`` is not ``"alice"``.
    """
    with store._engine.begin() as conn:
        store._q.failures.create(conn, checkfirst=True)
    use_no_pad_collation(store)


def migrate_2_to_3(store: MigratingStore) -> None:
    """Version 2 to 3: clients' seat caps, admin users, admin sessions and events, and
    the held-seats counter in the pool row.

    Old clients get no cap of their own (NULL); old users are no administrators (the
    column's default fills their rows). The counter is computed from the sessions
    under the pool lock.
    """
    import sqlalchemy as sa
    from sqlalchemy.schema import CreateColumn

    q = store._q
    prefix = f"{store._quoted_schema()}." if store._schema is not None else ""
    with store._engine.begin() as conn:
        inspector = sa.inspect(conn)
        for table, column in (
            (q.clients, "max_seats"),
            (q.users, "admin"),
            (q.pool, "seats"),
        ):
            present = {c["name"] for c in inspector.get_columns(table.name, schema=store._schema)}
            if column not in present:
                # "ADD name type ...": every engine takes ADD without COLUMN.
                definition = CreateColumn(table.c[column]).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {prefix}{table.name} ADD {definition}")
    with store._engine.begin() as conn:
        for index in q.sessions.indexes:
            index.create(conn, checkfirst=True)
        q.admin_sessions.create(conn, checkfirst=True)
        q.events.create(conn, checkfirst=True)
    with store._engine.begin() as conn:
        # The lock first, as every seat path takes it: the count cannot go stale.
        conn.execute(q.lock_pool)
        seats = conn.execute(q.count_seat_rows).scalar_one()
        conn.execute(q.set_seats, {"b_seats": seats})
    # New tables on a MySQL database the store did not create take its collation.
    use_no_pad_collation(store)


def use_no_pad_collation(store: MigratingStore) -> None:
    """On MySQL/MariaDB, convert every table (and the database) to a NO PAD collation.

    The ``utf8mb4_bin`` of version 1 is PAD SPACE: trailing spaces are ignored in
    comparisons, so a padded user name or client id found the unpadded record.
    """
    if store._backend not in ("mysql", "mariadb"):
        return
    with store._base_engine.connect() as conn:
        collation = no_pad_collation(conn)
        if store._schema is not None:
            conn.exec_driver_sql(
                f"ALTER DATABASE {store._quoted_schema()} CHARACTER SET utf8mb4 COLLATE {collation}"
            )
        database = store._schema or conn.exec_driver_sql("SELECT DATABASE()").scalar()
        ours = ", ".join(f"'{table.name}'" for table in store._q.metadata.sorted_tables)
        stale = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables"  # noqa: S608 - ours
                f" WHERE table_schema = %s AND table_name IN ({ours})"
                " AND table_collation != %s",
                (database, collation),
            )
        ]
        if not stale:
            return
        prefix = f"{store._quoted_schema()}." if store._schema is not None else ""
        # A column that a foreign key references cannot change collation while the
        # key exists (whatever foreign_key_checks says): drop the keys, convert the
        # tables, and add the keys back.
        keys = list(
            conn.exec_driver_sql(
                "SELECT table_name, constraint_name FROM information_schema.table_constraints"
                " WHERE table_schema = %s AND constraint_type = 'FOREIGN KEY'",
                (database,),
            )
        )
        for table_name, constraint in keys:
            if table_name in store._q.metadata.tables:
                conn.exec_driver_sql(
                    f"ALTER TABLE {prefix}{table_name} DROP FOREIGN KEY {constraint}"
                )
        for name in stale:
            conn.exec_driver_sql(
                f"ALTER TABLE {prefix}{name} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}"
            )
        for table in store._q.metadata.sorted_tables:
            for fk in table.foreign_key_constraints:
                columns = ", ".join(c.name for c in fk.columns)
                target = fk.referred_table.name
                referred = ", ".join(e.column.name for e in fk.elements)
                on_delete = f" ON DELETE {fk.ondelete}" if fk.ondelete else ""
                conn.exec_driver_sql(
                    f"ALTER TABLE {prefix}{table.name} ADD FOREIGN KEY ({columns})"
                    f" REFERENCES {prefix}{target} ({referred}){on_delete}"
                )
        conn.commit()


def no_pad_collation(conn: Connection) -> str:
    """The best NO PAD binary collation the MySQL/MariaDB server has."""
    names = ", ".join(f"'{name}'" for name in NO_PAD_COLLATIONS)
    found = {
        row[0]
        for row in conn.exec_driver_sql(
            "SELECT collation_name FROM information_schema.collations"  # noqa: S608
            f" WHERE collation_name IN ({names})"
        )
    }
    for collation in NO_PAD_COLLATIONS:
        if collation in found:
            return collation
    raise ConfigurationError(
        "The SQL store needs MariaDB 10.2+ or MySQL 8.0+"
        f" (a NO PAD collation: {' or '.join(NO_PAD_COLLATIONS)})"
    )


def create_schema(store: MigratingStore) -> None:
    name = store._quoted_schema()
    if store._backend in ("mysql", "mariadb"):
        with store._base_engine.connect() as conn:
            collation = no_pad_collation(conn)
        statement = (
            f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4 COLLATE {collation}"
        )
    elif store._backend == "mssql":
        statement = f"IF SCHEMA_ID(N'{store._schema}') IS NULL EXEC('CREATE SCHEMA {name}')"
    else:
        # Concurrent IF NOT EXISTS can still fail on PostgreSQL; _setup retries.
        statement = f"CREATE SCHEMA IF NOT EXISTS {name}"
    with store._base_engine.begin() as conn:
        conn.exec_driver_sql(statement)


#: Upgrade steps: the version a schema has -> the function that brings it to the next.
MIGRATIONS: dict[int, t.Callable[[MigratingStore], None]] = {
    1: migrate_1_to_2,
    2: migrate_2_to_3,
}
