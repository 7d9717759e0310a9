"""Statements and commits per request, counted by a hook on each SQL store's connection.

A regression in the store's round trips (a count of the live sessions back in the seat
path, a seat-less session taking the pool lock, a second commit) fails here without
timing anything. The bounds are what the stores run today; the figures are printed
(``pytest -s``) so that a change can be judged by them.

Hooks: SQLAlchemy's ``before_cursor_execute`` and ``commit`` events on the SQL store's
engine; for the stdlib SQLite store, ``sqlite3``'s trace callback on the connection of
the thread that serves the requests (Flask's test client serves in the caller's).
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

#: (statements, commits) at most, per backend and request. ``seat``: POST /token for
#: scope "all" (licensed: takes a seat); ``free``: for scope "view" (no seat); ``get``:
#: a guarded GET with a valid token.
#: The SQL store runs every lookup in a transaction of its own, on a connection of its
#: own (checked out, pinged: ``pool_pre_ping``), hence 5 commits: two lockout reads,
#: the client twice, and the write.
BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "sqlite": {"seat": (11, 1), "free": (9, 1), "get": (0, 0)},
    "sqlite+pysqlite": {"seat": (12, 5), "free": (10, 5), "get": (0, 0)},
    "postgresql": {"seat": (7, 5), "free": (5, 5), "get": (0, 0)},
    "mariadb": {"seat": (8, 5), "free": (5, 5), "get": (0, 0)},
}
#: Statements that write.
_WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclasses.dataclass
class Counts:
    statements: int = 0
    commits: int = 0
    #: Commits of transactions that wrote something.
    write_commits: int = 0
    #: Connections taken from the SQL store's pool (each one pinged first).
    checkouts: int = 0
    texts: list[str] = dataclasses.field(default_factory=list)
    _wrote: bool = False

    def statement(self, text: str) -> None:
        self.statements += 1
        self.texts.append(" ".join(text.split())[:100])
        self._wrote |= text.lstrip().upper().startswith(_WRITES)

    def commit(self) -> None:
        self.commits += 1
        self.write_commits += self._wrote
        self._wrote = False


@contextlib.contextmanager
def counting(store: Store) -> t.Iterator[Counts]:
    """Count the statements and commits that ``store`` runs in this thread meanwhile."""
    counts = Counts()
    anystore = t.cast(t.Any, store)
    if hasattr(anystore, "_base_engine"):
        from sqlalchemy import event

        engine = anystore._base_engine

        def on_execute(conn: t.Any, cursor: t.Any, text: str, *args: t.Any) -> None:
            counts.statement(text)

        def on_commit(conn: t.Any) -> None:
            counts.commit()

        def on_checkout(*args: t.Any) -> None:
            counts.checkouts += 1

        event.listen(engine, "before_cursor_execute", on_execute)
        event.listen(engine, "commit", on_commit)
        event.listen(engine, "checkout", on_checkout)
        try:
            yield counts
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
            event.remove(engine, "commit", on_commit)
            event.remove(engine, "checkout", on_checkout)
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
                f" ({counts.write_commits} of a write), {counts.checkouts} pool checkouts"
            )
            for text in counts.texts:
                print(f"    {text}")
        figures = {kind: (c.statements, c.commits) for kind, c in measured.items()}
        bounds = BOUNDS[backend]
        assert all(
            figures[kind][0] <= bounds[kind][0] and figures[kind][1] <= bounds[kind][1]
            for kind in bounds
        ), (figures, bounds)
        # The seat-less start never writes the pool row (its lock) on the SQL stores.
        if backend != "sqlite":
            assert not any("tg_pool" in text for text in measured["free"].texts)
        # A token request writes in one transaction; a guarded GET not at all.
        assert [measured[k].write_commits for k in ("seat", "free", "get")] == [1, 1, 0]
