"""Statements, commits and round trips per request, counted by hooks on each SQL store.

A regression in the store's round trips (a count of the live sessions back in the seat
path, a seat-less session taking the pool lock, a second commit, a read back in a
transaction) fails here without timing anything. The bounds are what the stores run
today; the figures are printed (``pytest -s``) so that a change can be judged by them.

Hooks: SQLAlchemy's ``before_cursor_execute``, ``begin``, ``commit`` and ``checkout``
events on both engines of the SQL store (writes, and autocommit reads); for the stdlib
SQLite store, ``sqlite3``'s trace callback on the connection of the thread that serves
the requests (Flask's test client serves in the caller's).

Round trips to a server are counted as: each statement, each COMMIT, each BEGIN that the
driver sends on its own (psycopg does; PyMySQL's transactions begin implicitly), each
pre-ping (one per checkout from a pool that pings, if any), and on MariaDB the ROLLBACK that
SQLAlchemy's pool sends when a connection comes back after a commit (psycopg sends
nothing for a connection that is idle).
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_tokenguard.stores.base import Store
from tests.backends import isolated_store
from tests.helpers import bearer
from tests.helpers import get_token
from tests.helpers import register

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("sqlite+pysqlite", id="sqlite+pysqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]

#: (statements, commits, round trips) at most, per backend and request. ``seat``: POST
#: /token for scope "all" (licensed: takes a seat); ``free``: for scope "view" (no seat);
#: ``get``: a guarded GET with a valid token. Round trips are not counted on SQLite.
#: The SQL store's token request: the client authentication's reservation (a lockout
#: count for the address and for the client id, each one statement; the first for a key
#: also inserts its row), the client read in autocommit, the session's start (one
#: transaction, or on PostgreSQL one INSERT in autocommit for a seat-less session), the
#: client again after the start, then the reservation given back (two statements). No
#: pre-ping: the store looks at the pooled socket instead. On PostgreSQL each of those
#: writes is one statement in autocommit, and the reservation and its release are one
#: statement each (``record_failures``, ``release_reservation``). Before, PostgreSQL ran
#: (7, 5, 22) for a seat: every call was pinged, BEGIN, its statements, COMMIT.
BOUNDS: dict[str, dict[str, tuple[int, int, int]]] = {
    "sqlite": {"seat": (21, 5, 0), "free": (19, 5, 0), "get": (0, 0, 0)},
    "sqlite+pysqlite": {"seat": (17, 5, 0), "free": (15, 5, 0), "get": (0, 0, 0)},
    "postgresql": {"seat": (7, 3, 9), "free": (5, 3, 5), "get": (0, 0, 0)},
    "mariadb": {"seat": (12, 5, 22), "free": (9, 5, 19), "get": (0, 0, 0)},
}
#: Statements that write.
_WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclasses.dataclass
class Counts:
    statements: int = 0
    commits: int = 0
    #: Commits of transactions that wrote something.
    write_commits: int = 0
    #: Connections taken from the SQL store's pools.
    checkouts: int = 0
    #: Requests sent to the server, each awaiting its reply (see the module docstring).
    round_trips: int = 0
    texts: list[str] = dataclasses.field(default_factory=list)
    _wrote: bool = False

    def statement(self, text: str) -> None:
        self.statements += 1
        self.round_trips += 1
        self.texts.append(" ".join(text.split())[:100])
        upper = text.lstrip().upper()
        # A WITH that holds a DELETE, UPDATE or INSERT writes too.
        self._wrote |= upper.startswith(_WRITES) or (
            upper.startswith("WITH") and any(f"{w} " in upper for w in _WRITES)
        )

    def commit(self, *, sent: bool = True) -> None:
        """A commit: a COMMIT sent, or (``sent=False``) a write in autocommit, which
        commits with its statement."""
        self.commits += 1
        self.round_trips += sent
        self.write_commits += self._wrote
        self._wrote = False


@contextlib.contextmanager
def counting(store: Store) -> t.Iterator[Counts]:
    """Count the statements and commits that ``store`` runs in this thread meanwhile."""
    counts = Counts()
    anystore = t.cast(t.Any, store)
    if hasattr(anystore, "_base_engine"):
        from sqlalchemy import event

        engines = {anystore._base_engine, anystore._base_reader}
        backend = anystore._backend
        listeners: list[tuple[t.Any, str, t.Callable[..., None]]] = []

        def autocommit(conn: t.Any) -> bool:
            # psycopg's attribute (PyMySQL's ``autocommit`` is a method: never here).
            return getattr(conn.connection.dbapi_connection, "autocommit", None) is True

        def on_execute(conn: t.Any, cursor: t.Any, text: str, *args: t.Any) -> None:
            counts.statement(text)
            if conn.engine.pool is anystore._base_engine.pool and autocommit(conn):
                counts.commit(sent=False)  # a write that commits by itself

        def on_commit(conn: t.Any) -> None:
            counts.commit()
            if backend in ("mysql", "mariadb"):
                counts.round_trips += 1  # the pool's ROLLBACK on check-in

        def on_begin(conn: t.Any) -> None:
            # psycopg's BEGIN, sent before the first statement; none in autocommit.
            counts.round_trips += not autocommit(conn)

        for engine in engines:
            pings = bool(engine.pool._pre_ping) and backend != "sqlite"

            def on_checkout(*args: t.Any, pings: bool = pings) -> None:
                counts.checkouts += 1
                counts.round_trips += pings

            listeners += [
                (engine, "before_cursor_execute", on_execute),
                (engine, "commit", on_commit),
                (engine, "checkout", on_checkout),
            ]
        if backend == "postgresql":
            # The write engine's only: the read engine's autocommit sends no BEGIN.
            listeners.append((anystore._base_engine, "begin", on_begin))
        for target, name, listener in listeners:
            event.listen(target, name, listener)
        try:
            yield counts
        finally:
            for target, name, listener in listeners:
                event.remove(target, name, listener)
        if backend == "sqlite":
            counts.round_trips = 0
        return
    conn = anystore._connection()

    def trace(text: str) -> None:
        if text.strip().upper() == "COMMIT":
            counts.commit()
        else:
            counts.statement(text)

    conn.set_trace_callback(trace)
    try:
        yield counts
    finally:
        conn.set_trace_callback(None)
        counts.round_trips = 0  # in-process: no server to reach


def _app(app_factory: t.Callable[..., Flask], url: str, options: dict[str, t.Any]) -> Flask:
    # A long revocation lag: no poll of the store falls inside a counted request.
    return app_factory(url, STORE_OPTIONS=options, LICENSES=1000, REVOCATION_LAG=3600)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trips_per_request_stay_within_their_bounds(
    app_factory: t.Callable[..., Flask], backend: str, tmp_path: Path
) -> None:
    with isolated_store(backend, tmp_path) as (url, options):
        app = _app(app_factory, url, options)
        store = app.extensions["tokenguard"].store(app)
        http = app.test_client()
        creds = register(app, "counted", "--scope", "view", "--scope", "all")
        # Warm up: keys loaded, the revocation cache filled, statements compiled.
        token = ""
        for scope in ("all", "view", "all", "view"):
            response = get_token(http, creds, scope=scope)
            assert response.status_code == 200, response.get_json()
            token = response.get_json()["access_token"]
        assert http.get("/orders", headers=bearer(token)).status_code == 200

        measured: dict[str, Counts] = {}
        for kind, scope in (("seat", "all"), ("free", "view")):
            with counting(store) as counts:
                response = get_token(http, creds, scope=scope)
            assert response.status_code == 200, response.get_json()
            measured[kind] = counts
        token = response.get_json()["access_token"]
        with counting(store) as counts:
            assert http.get("/orders", headers=bearer(token)).status_code == 200
        measured["get"] = counts

        for kind, counts in measured.items():
            print(
                f"{backend} {kind}: {counts.statements} statements, {counts.commits} commits"
                f" ({counts.write_commits} of a write), {counts.checkouts} pool checkouts,"
                f" {counts.round_trips} round trips"
            )
            for text in counts.texts:
                print(f"    {text}")
        figures = {kind: (c.statements, c.commits, c.round_trips) for kind, c in measured.items()}
        bounds = BOUNDS[backend]
        assert all(
            all(got <= most for got, most in zip(figures[kind], bounds[kind], strict=True))
            for kind in bounds
        ), (figures, bounds)
        # The seat-less start never writes the pool row (its lock) on the SQL stores.
        if backend != "sqlite":
            assert not any("tg_pool" in text for text in measured["free"].texts)
        # A token request's own writes: the session in one transaction, plus the four of
        # the throttle's reservation; a guarded GET writes nothing.
        assert [measured[k].write_commits for k in ("seat", "free", "get")] == [
            bounds["seat"][1],
            bounds["free"][1],
            0,
        ]
