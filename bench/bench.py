"""Benchmarks of the bearer check, seats and token requests; not a test (machines are noisy).

    .venv/bin/python bench/bench.py guard      # bearer check in-process, 1 vs 10,000 sessions
    .venv/bin/python bench/bench.py waitress   # guarded vs open under waitress (needs wrk)
    .venv/bin/python bench/bench.py seats      # scope=all vs scope=view tokens/s at N live sessions
    .venv/bin/python bench/bench.py pairs      # seat acquire + release per second, per store
    .venv/bin/python bench/bench.py tokens     # token and guarded requests per second, per store
    .venv/bin/python bench/bench.py replicas [N [ROUNDS]]  # writes acknowledged by a replica or not
    .venv/bin/python bench/bench.py all

    .venv/bin/python bench/vs_authlib.py       # ours vs Authlib's documented app, waitress + wrk

Everything compared is measured side by side in one run; quote the ratios.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
import uuid
from pathlib import Path

from flask import Flask

from flask_tokenguard import require_token
from flask_tokenguard import TokenGuard
from flask_tokenguard.models import TokenSession
from flask_tokenguard.stores import store_from_url

SERVERS: dict[str, tuple[str, t.Callable[[str], dict[str, t.Any]]]] = {
    "redis": ("redis://127.0.0.1:6379/15", lambda run: {"key_prefix": f"tgbench:{{{run}}}:"}),
    "postgresql": (
        "postgresql://postgres@127.0.0.1:5432/test",
        lambda run: {"schema": f"tgbench_{run}"},
    ),
    "mariadb": (
        "mysql+pymysql://root@127.0.0.1:3306/test",
        lambda run: {"schema": f"tgbench_{run}"},
    ),
}


def make_app(store_url: str = "memory://", **options: t.Any) -> Flask:
    app = Flask("bench")
    app.config.update(
        TESTING=True,
        TOKENGUARD_STORE_URL=store_url,
        TOKENGUARD_STORE_OPTIONS=options,
        TOKENGUARD_LICENSES=1_000_000,
        TOKENGUARD_PASSWORD_HASH_COST=10,
    )
    TokenGuard(app)

    @app.get("/open")
    def open_route() -> t.Any:
        return {"ok": True}

    @app.get("/guarded")
    @require_token("view")
    def guarded_route() -> t.Any:
        return {"ok": True}

    return app


def new_client(app: Flask) -> tuple[str, str]:
    result = app.test_cli_runner().invoke(args=["tokenguard", "create-client", "bench", "--json"])
    data = json.loads(result.output)
    return data["client_id"], data["client_secret"]


def get_token(app: Flask, client_id: str, secret: str, scope: str = "all") -> str:
    auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    response = app.test_client().post(
        "/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"Authorization": f"Basic {auth}"},
    )
    assert response.status_code == 200, response.json
    token: str = response.get_json()["access_token"]
    return token


def per_request_us(
    app: Flask, path: str, headers: dict[str, str], n: int, blocks: int = 5
) -> float:
    """Median µs of one WSGI call, in blocks of n (no test-client overhead)."""
    return statistics.median(_blocks(app, path, headers, n) for _ in range(blocks))


def _blocks(app: Flask, path: str, headers: dict[str, str], n: int) -> float:
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(
        path=path, headers=list(headers.items()), environ_base={"REMOTE_ADDR": "127.0.0.1"}
    ).get_environ()

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: object = None
    ) -> t.Callable[[bytes], object]:
        assert status.startswith("200"), status
        return _discard

    wsgi = app.wsgi_app
    start = time.perf_counter()
    for _ in range(n):
        for _chunk in wsgi(dict(environ), start_response):
            pass
    return (time.perf_counter() - start) / n * 1e6


def _discard(data: bytes) -> None:
    """The WSGI ``write`` callable handed to the app: the body is not kept."""


def side_by_side(app: Flask, auth: dict[str, str], n: int, rounds: int = 7) -> tuple[float, float]:
    """Alternate open and guarded blocks so that machine noise hits both alike."""
    open_us, guarded_us = [], []
    for _ in range(rounds):
        open_us.append(_blocks(app, "/open", {}, n))
        guarded_us.append(_blocks(app, "/guarded", auth, n))
    return statistics.median(open_us), statistics.median(guarded_us)


def bench_guard(n: int = 4000) -> None:
    print(f"== bearer check in-process (median µs per WSGI request, 7 alternating blocks of {n})")
    app = make_app()
    client_id, secret = new_client(app)
    token = get_token(app, client_id, secret)
    auth = {"Authorization": f"Bearer {token}"}
    _blocks(app, "/guarded", auth, 200)  # warm the cache and the key ring
    open_us, guarded_us = side_by_side(app, auth, n)
    print(
        f"  1 client, 1 session:        open {open_us:7.1f}  guarded {guarded_us:7.1f}  "
        f"extra {guarded_us - open_us:6.1f} µs"
    )
    store = app.extensions["tokenguard"].store(app)
    now = time.time()
    for i in range(10_000):
        store.create_client(
            type(store.get_client(client_id))(client_id=f"c{i}", name="x", secret_hash="0" * 64)
        )
    tokens = [get_token(app, client_id, secret) for _ in range(2000)]
    store_sessions = len(store.list_sessions(None, now))
    for i in range(8000):
        store.start_session(
            TokenSession(f"s{i}", "c1", "c1", "all", True, f"h{i}", now, now + 1200), None, now
        )
    for other in tokens:  # fill the verified-token cache too
        _blocks(app, "/guarded", {"Authorization": f"Bearer {other}"}, 1)
    open_us, guarded_us = side_by_side(app, auth, n)
    print(
        f"  10,001 clients, {store_sessions + 8000:,} sessions: "
        f"open {open_us:7.1f}  guarded {guarded_us:7.1f}  "
        f"extra {guarded_us - open_us:6.1f} µs"
    )
    verifier = app.extensions["tokenguard"].state(app).verifier
    start = time.perf_counter()
    for _ in range(200):
        verifier.decode(token, time.time())
    full_us = (time.perf_counter() - start) / 200 * 1e6
    print(f"  full signature check without the cache: {full_us:.1f} µs")


_SERVER_SCRIPT = """
import logging, sys, time
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
sys.path.insert(0, {bench_dir!r})
from bench import make_app
from flask_tokenguard import TokenGuardMiddleware
from waitress import serve
app = make_app({store_url!r})

def bare(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{{"ok": true}}']

guarded_bare = TokenGuardMiddleware(bare, {{"/mw": "view"}}, app=app)

def root(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/bare":
        return bare(environ, start_response)
    if path == "/mw":
        return guarded_bare(environ, start_response)
    return app(environ, start_response)

serve(root, host="127.0.0.1", port={port}, threads=4, _quiet=True)
"""


def bench_waitress(seconds: int = 5, rounds: int = 5) -> None:
    print(f"== waitress, wrk -t2 -c16, {rounds} alternating rounds of {seconds} s (requests/s)")
    if shutil.which("wrk") is None:
        print("  wrk not found (apt-get install wrk): skipped")
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store_url = f"sqlite:///{tempfile.mkdtemp()}/waitress.sqlite3"
    client_id, secret = new_client(make_app(store_url))
    script = _SERVER_SCRIPT.format(
        bench_dir=os.path.dirname(os.path.abspath(__file__)), port=port, store_url=store_url
    )
    server = subprocess.Popen([sys.executable, "-c", script])
    try:
        import requests

        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(base + "/open", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        token = requests.post(
            base + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, secret),
            timeout=10,
        ).json()["access_token"]
        paths = ("open", "guarded", "bare", "mw")
        results: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(rounds):
            for path in paths:
                out = subprocess.run(
                    [
                        "wrk",
                        "-t2",
                        "-c16",
                        f"-d{seconds}s",
                        "-H",
                        f"Authorization: Bearer {token}",
                        f"{base}/{path}",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                line = next(row for row in out.splitlines() if row.startswith("Requests/sec"))
                if "Non-2xx" in out:
                    raise SystemExit(f"errors on /{path}: {out}")
                results[path].append(float(line.split()[1]))
        rps = {path: statistics.median(results[path]) for path in paths}
        print(
            f"  Flask route: open {rps['open']:8.0f}   @require_token {rps['guarded']:8.0f}   "
            f"ratio {rps['guarded'] / rps['open']:.3f}"
        )
        print(
            f"  bare WSGI:   open {rps['bare']:8.0f}   TokenGuardMiddleware {rps['mw']:8.0f}   "
            f"ratio {rps['mw'] / rps['bare']:.3f}"
        )
        print(
            "  rounds: "
            + ", ".join(f"{path} {[round(x) for x in results[path]]}" for path in paths)
        )
    finally:
        server.terminate()
        server.wait()


#: Live seat-holding sessions present while ``seats`` measures; each step adds rows.
SEAT_STEPS = (10, 10_000, 50_000, 100_000)


def add_live_sessions(store: t.Any, count: int, first: int, now: float) -> None:
    """Insert ``count`` live seat-holding sessions at once (bench only).

    One multi-row insert, with the held-seats counter moved by as much, through the
    store's own statements: one ``start_session`` per row would take minutes on a
    server. Other stores get ``start_session`` calls.
    """
    from flask_tokenguard.stores import records
    from flask_tokenguard.stores import sqlite as sqlite_store

    rows = [
        TokenSession(f"pre{i}", "pre", "pre", "all", True, f"pre-h{i}", now, now + 3600)
        for i in range(first, first + count)
    ]
    if hasattr(store, "_q"):
        q = store._q
        with store._tx() as conn:
            store._lock_pool(conn)
            for start in range(0, len(rows), 5000):
                chunk = rows[start : start + 5000]
                conn.execute(q.insert_session, [records.session_record(s) for s in chunk])
            if hasattr(q, "add_seats"):  # a checkout before the counter has none
                conn.execute(q.add_seats, {"b_delta": len(rows)})
        if store._backend == "postgresql":
            # What autovacuum does after a bulk load, only sooner: without statistics
            # the planner takes the sweep's range for a third of the table and scans
            # all of it.
            prefix = f"{store._quoted_schema()}." if store._schema else ""
            with store._tx() as conn:
                conn.exec_driver_sql(f"ANALYZE {prefix}tg_sessions")
    elif isinstance(store, sqlite_store.SQLiteStore):
        with store._write() as conn:
            conn.executemany(
                sqlite_store._INSERT_SESSION, [records.session_record(s) for s in rows]
            )
            if hasattr(sqlite_store, "_ADD_SEATS_HELD"):
                conn.execute(sqlite_store._ADD_SEATS_HELD, (len(rows),))
    else:
        for session in rows:
            store.start_session(session, None, now)


def bench_seats(n: int = 150, rounds: int = 3) -> None:
    """Token requests for scope=all (a seat) and scope=view (none), at N live seats."""
    print(
        f"== tokens/s for scope=all and scope=view with N live seat-holding sessions,"
        f" in-process, {rounds} alternating blocks of {n}"
    )
    tmp = tempfile.mkdtemp()
    stores: dict[str, tuple[str, dict[str, t.Any]]] = {
        "memory": ("memory://", {}),
        "sqlite": (f"sqlite:///{tmp}/seats.sqlite3", {}),
    }
    run = uuid.uuid4().hex[:8]
    stores.update({name: (url, opts(run)) for name, (url, opts) in SERVERS.items()})
    only = os.environ.get("BENCH_STORES")
    for name, (url, options) in stores.items():
        if only and name not in only.split(","):
            continue
        try:
            app = make_app(url, **options)
            store = app.extensions["tokenguard"].store(app)
            store.check()
        except Exception as exc:  # noqa: BLE001 - report and go on to the next store
            print(f"  {name:10s} unavailable: {exc}")
            continue
        store.reset()
        client_id, secret = new_client(app)
        get_token(app, client_id, secret)  # first key generation out of the timing
        now, present = time.time(), 0
        firsts: dict[str, float] = {}
        for target in SEAT_STEPS:
            add_live_sessions(store, target - present, present, now)
            present = target
            rates: dict[str, list[float]] = {"all": [], "view": []}
            for _ in range(rounds):
                for scope in ("all", "view"):
                    start = time.perf_counter()
                    for _ in range(n):
                        get_token(app, client_id, secret, scope=scope)
                    rates[scope].append(n / (time.perf_counter() - start))
            ratio = statistics.median(
                a / v for a, v in zip(rates["all"], rates["view"], strict=True)
            )
            all_rate, view_rate = statistics.median(rates["all"]), statistics.median(rates["view"])
            firsts.setdefault("all", all_rate)
            print(
                f"  {name:10s} N={target:>7,}  all {all_rate:6.0f}/s  view {view_rate:6.0f}/s"
                f"  all/view {ratio:.2f}  all vs N=10 {all_rate / firsts['all']:.2f}"
            )
        getattr(store, "drop", store.reset)()
        store.close()


def bench_pairs(n: int = 2000) -> None:
    print(f"== seat acquire + release (start_session + end_session), {n} pairs")
    tmp = tempfile.mkdtemp()
    stores: dict[str, tuple[str, dict[str, t.Any]]] = {
        "memory": ("memory://", {}),
        "sqlite": (f"sqlite:///{tmp}/seats.sqlite3", {}),
    }
    run = uuid.uuid4().hex[:8]
    stores.update({name: (url, opts(run)) for name, (url, opts) in SERVERS.items()})
    for name, (url, options) in stores.items():
        try:
            store = store_from_url(url, **options)
            store.check()
        except Exception as exc:  # noqa: BLE001 - report and go on to the next store
            print(f"  {name:10s} unavailable: {exc}")
            continue
        store.reset()
        now = time.time()
        start = time.perf_counter()
        for i in range(n):
            session = TokenSession(f"s{i}", "c", "c", "all", True, f"h{i}", now, now + 1200)
            assert store.start_session(session, 5, now)
            store.end_session(f"s{i}", now)
        elapsed = time.perf_counter() - start
        print(f"  {name:10s} {n / elapsed:8.0f} pairs/s   {elapsed / n * 1e6:7.0f} µs per pair")
        getattr(store, "drop", store.reset)()
        store.close()


def bench_tokens(n: int = 300) -> None:
    print(f"== token requests and guarded requests per second, in-process, per store ({n} each)")
    tmp = tempfile.mkdtemp()
    stores: dict[str, tuple[str, dict[str, t.Any]]] = {
        "memory": ("memory://", {}),
        "sqlite": (f"sqlite:///{tmp}/tokens.sqlite3", {}),
    }
    run = uuid.uuid4().hex[:8]
    stores.update({name: (url, opts(run)) for name, (url, opts) in SERVERS.items()})
    for name, (url, options) in stores.items():
        try:
            app = make_app(url, **options)
            store = app.extensions["tokenguard"].store(app)
            store.check()
        except Exception as exc:  # noqa: BLE001 - report and go on to the next store
            print(f"  {name:10s} unavailable: {exc}")
            continue
        app.config["TOKENGUARD_REVOCATION_LAG"] = 1
        client_id, secret = new_client(app)
        get_token(app, client_id, secret)  # first key generation out of the timing
        start = time.perf_counter()
        for _ in range(n):
            token = get_token(app, client_id, secret, scope="view")
        token_rate = n / (time.perf_counter() - start)
        guarded = per_request_us(app, "/guarded", {"Authorization": f"Bearer {token}"}, n * 10)
        print(f"  {name:10s} tokens {token_rate:7.0f}/s   guarded {1e6 / guarded:8.0f}/s")
        getattr(store, "drop", store.reset)()
        store.close()


#: Token requests per block and blocks per side in ``bench.py replicas`` (argv overrides).
REPLICAS_N, REPLICAS_ROUNDS = 200, 7


class _RoundTrips:
    """Counts what reaches a store while on: Redis round trips (one per packed send, so a
    pipeline of a script and its WAIT is one) and SQL statements plus commits."""

    def __init__(self) -> None:
        self.count = 0
        self.on = False
        import redis.connection
        import sqlalchemy as sa

        original: t.Any = redis.connection.AbstractConnection.send_packed_command
        counter = self

        def send_packed_command(conn: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
            if counter.on:
                counter.count += 1
            original(conn, *args, **kwargs)

        patched: t.Any = redis.connection.AbstractConnection
        patched.send_packed_command = send_packed_command

        def sql_event(*_args: t.Any, **_kwargs: t.Any) -> None:
            if counter.on:
                counter.count += 1

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", sql_event)
        sa.event.listen(sa.engine.Engine, "commit", sql_event)

    def per_request(self, app: Flask, client_id: str, secret: str, scope: str, n: int) -> float:
        self.count, self.on = 0, True
        try:
            for _ in range(n):
                get_token(app, client_id, secret, scope=scope)
        finally:
            self.on = False
        return self.count / n


@contextlib.contextmanager
def _redis_primary_with_a_replica() -> t.Iterator[str]:
    """A private ``redis-server`` primary and one ``--replicaof`` replica; yields the
    primary's URL and stops both after."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.replication import free_ports
    from tests.replication import RedisProcess

    base = Path(tempfile.mkdtemp(prefix="tgbench-redis-"))
    ports = free_ports(2)
    nodes = [RedisProcess(base / f"redis-{i}", port, f"redis {i}") for i, port in enumerate(ports)]
    try:
        for i, node in enumerate(nodes):
            extra = ["--replicaof", "127.0.0.1", str(ports[0])] if i else []
            node.start(
                "redis-server",
                *("--port", str(node.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(node.directory)),
                *("--logfile", str(node.log_path), "--repl-diskless-sync-delay", "0"),
                *extra,
            )
            node.wait_ready()
        primary = nodes[0].client(decode_responses=True)
        try:
            deadline = time.monotonic() + 15
            while primary.info("replication").get("slave0", {}).get("state") != "online":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not come online within 15 s")
                time.sleep(0.05)
        finally:
            primary.close()
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _postgres_with_a_synchronous_standby() -> t.Iterator[str]:
    """``tests.replication.postgres_replicated``: a primary whose commits wait for one of
    two standbys (``synchronous_commit = on``); yields its multi-host URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.replication import postgres_replicated

    with postgres_replicated() as topology:
        yield topology.url


def _compare(name: str, sides: dict[str, Flask], n: int, rounds: int, counter: _RoundTrips) -> None:
    """Interleave token blocks of each side, per scope; print rates and the median ratio."""
    clients = {label: new_client(app) for label, app in sides.items()}
    for label, app in sides.items():
        get_token(app, *clients[label])  # key generation and script loading out of timing
    (base, base_app), (other, other_app) = sides.items()
    for scope in ("all", "view"):
        rates: dict[str, list[float]] = {base: [], other: []}
        for round_ in range(rounds):
            # Swap which side goes first each round, so drift hits both alike.
            order = [base, other] if round_ % 2 == 0 else [other, base]
            for label in order:
                start = time.perf_counter()
                for _ in range(n):
                    get_token(sides[label], *clients[label], scope=scope)
                rates[label].append(n / (time.perf_counter() - start))
        pairs = list(zip(rates[base], rates[other], strict=True))
        ratio = statistics.median(o / b for b, o in pairs)
        extra_us = statistics.median((1 / o - 1 / b) * 1e6 for b, o in pairs)
        trips = {
            label: counter.per_request(sides[label], *clients[label], scope, 50)
            for label in (base, other)
        }
        print(
            f"  {name:10s} scope={scope:4s} {base} {statistics.median(rates[base]):6.0f}/s"
            f"  {other} {statistics.median(rates[other]):6.0f}/s"
            f"  ratio {ratio:.3f} ({extra_us:+.0f} µs/request)"
            f"  store round trips/request {trips[base]:.1f} vs {trips[other]:.1f}"
        )


def bench_replicas(n: int = REPLICAS_N, rounds: int = REPLICAS_ROUNDS) -> None:
    """Token requests/s with every write acknowledged by a replica vs not, side by side.

    Redis: one primary with one replica, stores with ``replicas`` 0 and 1 on it (WAIT).
    PostgreSQL: a primary with synchronous standbys, ``synchronous_commit`` ``local`` vs
    ``on`` (needs root and PostgreSQL 15's cluster tools, else reported unavailable).
    """
    print(
        f"== tokens/s without vs with replica acknowledgement, in-process, {rounds}"
        f" interleaved rounds of {n}; ratio = median over rounds of with/without"
    )
    counter = _RoundTrips()
    only = os.environ.get("BENCH_STORES")
    run = uuid.uuid4().hex[:8]
    setups: dict[str, tuple[t.Callable[[], t.ContextManager[str]], t.Any]] = {
        "redis": (
            _redis_primary_with_a_replica,
            lambda url: {
                "replicas=0": make_app(url, key_prefix=f"tgbench:{{{run}a}}:"),
                "replicas=1": make_app(url, key_prefix=f"tgbench:{{{run}b}}:", replicas=1),
            },
        ),
        "postgresql": (
            _postgres_with_a_synchronous_standby,
            lambda url: {
                "sync=local": make_app(
                    url,
                    schema=f"tgbench_{run}_a",
                    connect_args={"options": "-c synchronous_commit=local"},
                ),
                "sync=on": make_app(url, schema=f"tgbench_{run}_b"),
            },
        ),
    }
    for name, (topology, build) in setups.items():
        if only and name not in only.split(","):
            continue
        try:
            with topology() as url:
                sides = build(url)
                stores = [app.extensions["tokenguard"].store(app) for app in sides.values()]
                try:
                    for store in stores:
                        store.check()
                        store.reset()
                    _compare(name, sides, n, rounds, counter)
                finally:
                    for store in stores:
                        getattr(store, "drop", store.reset)()
                        store.close()
        except BaseException as exc:  # noqa: BLE001 - pytest.skip from the harness, too
            if isinstance(exc, KeyboardInterrupt):
                raise
            print(f"  {name:10s} unavailable: {exc!r}")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    benches: dict[str, t.Callable[[], None]] = {
        "guard": bench_guard,
        "waitress": bench_waitress,
        "seats": bench_seats,
        "pairs": bench_pairs,
        "tokens": bench_tokens,
        "replicas": bench_replicas,
    }
    if which == "replicas" and len(sys.argv) > 2:
        sizes = [int(arg) for arg in sys.argv[2:4]]
        benches["replicas"] = lambda: bench_replicas(*sizes)
    for name, bench in benches.items():
        if which in (name, "all"):
            bench()
