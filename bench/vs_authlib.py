"""Ours against Authlib's documented app (``authlib_app.py``), under waitress, side by side.

    .venv/bin/python bench/vs_authlib.py [--stores sqlite,postgresql] [--rounds 3] [--seconds 4]
    .venv/bin/python bench/vs_authlib.py --across-stores sqlite,postgresql,redis --rounds 5

The second form runs ours alone, one process per store, and compares ``POST /token``
across the stores (per-round ratio to the first store, median and spread).

Per store, both apps run in their own process (waitress threads=4) on that engine: ours
with ``TOKENGUARD_STORE_URL`` (``sqlite:///...`` or a fresh PostgreSQL schema), Authlib's
with its SQLAlchemy models on the same kind of database. wrk (-t2 -c16, as
``compare.py``) alternates between the two, round by round, on ``/open``, ``/guarded``
(a bearer token for scope ``view``) and ``POST /token`` (client_credentials, scope
``view``). Printed: requests/s per app and the median of the per-round ratios
ours/Authlib, the figure to quote. Authlib issues opaque tokens that it stores and
looks up on every guarded request; ours issues signed JWTs (RS256 by default).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import typing as t
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import _free_port  # noqa: E402 - the folder is put on the path just above
from compare import _wrk  # noqa: E402
from compare import _WRK_POST  # noqa: E402

HERE = Path(__file__).resolve().parent
POSTGRESQL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/15"

_OURS = """
import json, logging, sys
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
from flask import Flask
from flask_tokenguard import TokenGuard, require_token
from waitress import serve

app = Flask("ours")
app.config.update(
    TOKENGUARD_STORE_URL=sys.argv[1],
    TOKENGUARD_STORE_OPTIONS=json.loads(sys.argv[3]),
    TOKENGUARD_LICENSES=1_000_000,
    TOKENGUARD_ISSUER="http://127.0.0.1",
)
TokenGuard(app)

@app.get("/open")
def open_route():
    return {"ok": True}

@app.get("/guarded")
@require_token("view")
def guarded():
    return {"ok": True}

result = app.test_cli_runner().invoke(args=["tokenguard", "create-client", "bench", "--json"])
print(json.dumps(json.loads(result.output)), flush=True)
serve(app, host="127.0.0.1", port=int(sys.argv[2]), threads=4, _quiet=True)
"""


class App:
    """One app under waitress in a subprocess, with its client's credentials."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        self.port = _free_port()
        env = {**os.environ, "AUTHLIB_INSECURE_TRANSPORT": "1"}
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.process = subprocess.Popen(
            argv, env=env, cwd=workdir, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"{argv[:3]} did not start")
        creds = json.loads(line)
        self.client = (creds["client_id"], creds["client_secret"])
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_for(self.port)

    def token(self) -> str:
        import requests

        response = requests.post(
            self.url + "/token",
            data={"grant_type": "client_credentials", "scope": "view"},
            auth=self.client,
            timeout=10,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _wait_for(port: int) -> None:
    import socket
    import time

    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)


def _ours_args(store: str, workdir: Path, run: str) -> list[str]:
    """``_OURS``'s arguments on ``store`` ("sqlite", "postgresql" or "redis"): URL, port,
    store options (a fresh PostgreSQL schema or Redis key prefix per run)."""
    if store == "sqlite":
        return [f"sqlite:///{workdir / 'store.sqlite3'}", "{port}", "{}"]
    if store == "redis":
        return [REDIS, "{port}", json.dumps({"key_prefix": f"tgbench:{{{run}}}:"})]
    return [POSTGRESQL, "{port}", json.dumps({"schema": f"tgbench_ours_{run}"})]


def _drop(stores: t.Iterable[str], run: str, schemas: t.Sequence[str] = ()) -> None:
    """Remove what the apps of ``run`` left on the servers."""
    stores = set(stores)
    if "postgresql" in stores:
        import sqlalchemy as sa

        with sa.create_engine(POSTGRESQL).begin() as conn:
            for schema in [f"tgbench_ours_{run}", *schemas]:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    if "redis" in stores:
        import redis

        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(f"tgbench:{{{run}}}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def _apps(store: str, tmp: Path) -> tuple[dict[str, App], t.Callable[[], None]]:
    """Ours and Authlib's on ``store`` ("sqlite" or "postgresql"), and their clean-up."""
    run = uuid.uuid4().hex[:8]
    (tmp / "ours").mkdir()
    (tmp / "authlib").mkdir()
    ours = _ours_args(store, tmp / "ours", run)
    if store == "sqlite":
        theirs = [f"sqlite:///{tmp / 'authlib' / 'authlib.sqlite3'}", "{port}"]
        schemas: list[str] = []
    else:
        schemas = [f"tgbench_authlib_{run}"]
        theirs = [POSTGRESQL, "{port}", schemas[0]]
    apps = {
        "ours": App([sys.executable, "-c", _OURS, *ours], tmp / "ours"),
        "authlib": App([sys.executable, str(HERE / "authlib_app.py"), *theirs], tmp / "authlib"),
    }

    def clean_up() -> None:
        for app in apps.values():
            app.stop()
        _drop([store], run, schemas)

    return apps, clean_up


def _post_script(app: App, path: Path) -> list[str]:
    """wrk's arguments for ``POST /token`` (client_credentials, scope view) as ``app``'s
    client."""
    basic = base64.b64encode(":".join(app.client).encode()).decode()
    path.write_text(_WRK_POST.format(basic=basic))
    return ["-s", str(path)]


def across_stores(stores: t.Sequence[str], rounds: int, seconds: int) -> None:
    """Ours alone, one process per store, ``POST /token`` interleaved round by round;
    each store's per-round ratio to the first store, median and spread."""
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        apps: dict[str, App] = {}
        try:
            for store in stores:
                (Path(tmp) / store).mkdir()
                args = _ours_args(store, Path(tmp) / store, run)
                apps[store] = App([sys.executable, "-c", _OURS, *args], Path(tmp) / store)
            posts = {s: _post_script(app, Path(tmp) / f"{s}.lua") for s, app in apps.items()}
            rates: dict[str, list[float]] = {store: [] for store in stores}
            for _ in range(rounds):
                for store in stores:
                    rates[store].append(_wrk(apps[store].url + "/token", seconds, posts[store]))
        finally:
            for app in apps.values():
                app.stop()
            _drop(stores, run)
    base = stores[0]
    print(f"  POST /token (client_credentials, scope view), ours per store; ratio to {base}:")
    for store in stores:
        ratios = [a / b for a, b in zip(rates[store], rates[base], strict=True)]
        print(
            f"    {store:10s} {statistics.median(rates[store]):7.0f}/s"
            f"  {store}/{base} median {statistics.median(ratios):.2f}"
            f" (min {min(ratios):.2f}, max {max(ratios):.2f};"
            f" rounds {', '.join(f'{r:.0f}' for r in rates[store])}/s)"
        )


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument(
        "--across-stores",
        metavar="STORES",
        help="ours only, POST /token on each of these stores (sqlite,postgresql,redis), "
        "ratios to the first",
    )
    args = parser.parse_args(argv)
    print(f"wrk -t2 -c16, {args.rounds} alternating rounds of {args.seconds} s; waitress threads=4")
    if args.across_stores:
        across_stores(args.across_stores.split(","), args.rounds, args.seconds)
        return 0
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            apps, clean_up = _apps(store, Path(tmp))
            try:
                posts = {n: _post_script(app, Path(tmp) / f"{n}.lua") for n, app in apps.items()}
                tokens = {name: app.token() for name, app in apps.items()}
                guarded = {n: ["-H", f"Authorization: Bearer {tk}"] for n, tk in tokens.items()}
                paths: dict[str, dict[str, list[str]]] = {
                    "open": {name: [] for name in apps},
                    "guarded": guarded,
                    "token": posts,
                }
                rates: dict[tuple[str, str], list[float]] = {}
                for _ in range(args.rounds):
                    for path, extra in paths.items():
                        for name in ("ours", "authlib"):
                            url = apps[name].url + ("/token" if path == "token" else f"/{path}")
                            rate = _wrk(url, args.seconds, extra[name])
                            rates.setdefault((path, name), []).append(rate)
                print(f"  {store}:")
                for path in paths:
                    ours, theirs = rates[(path, "ours")], rates[(path, "authlib")]
                    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
                    print(
                        f"    {path:8s} ours {statistics.median(ours):7.0f}/s"
                        f"  authlib {statistics.median(theirs):7.0f}/s"
                        f"  ours/authlib {statistics.median(ratios):.2f}"
                        f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
                    )
            finally:
                clean_up()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
