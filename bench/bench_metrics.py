"""The cost of ``TOKENGUARD_METRICS_ENABLED`` on a guarded route: metrics on vs off.

    .venv/bin/python bench/bench_metrics.py metrics     # WSGI loop, then wrk if installed
    .venv/bin/python bench/bench_metrics.py inprocess   # only the WSGI loop
    .venv/bin/python bench/bench_metrics.py wrk         # only wrk against two waitress servers

Both apps run side by side in one run, in interleaved rounds, so that machine noise hits
both alike; quote the ratio (on / off requests per second; the goal is >= 0.97).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

from flask import Flask

from flask_tokenguard import require_token
from flask_tokenguard import TokenGuard


def make_app(store_url: str, metrics: bool) -> Flask:
    """A guarded route on ``store_url``, with or without metrics (the guard counts its
    checks itself; the token view is timed only when metrics are on)."""
    app = Flask("bench_metrics")
    app.config.update(
        TESTING=True,
        TOKENGUARD_STORE_URL=store_url,
        TOKENGUARD_LICENSES=1_000_000,
        TOKENGUARD_PASSWORD_HASH_COST=10,
        TOKENGUARD_METRICS_ENABLED=metrics,
    )
    TokenGuard(app)

    @app.get("/guarded")
    @require_token("view")
    def guarded_route() -> t.Any:
        return {"ok": True}

    return app


def new_client(app: Flask) -> tuple[str, str]:
    result = app.test_cli_runner().invoke(args=["tokenguard", "create-client", "bench", "--json"])
    data = json.loads(result.output)
    return data["client_id"], data["client_secret"]


def get_token(app: Flask, client_id: str, secret: str) -> str:
    auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    response = app.test_client().post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "view"},
        headers={"Authorization": f"Basic {auth}"},
    )
    assert response.status_code == 200, response.get_json()
    return t.cast(str, response.get_json()["access_token"])


def _block(app: Flask, headers: dict[str, str], n: int) -> float:
    """Requests per second of ``n`` direct WSGI calls of the guarded route."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(
        path="/guarded", headers=list(headers.items()), environ_base={"REMOTE_ADDR": "127.0.0.1"}
    ).get_environ()

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> None:
        assert status.startswith("200"), status

    wsgi = app.wsgi_app
    start = time.perf_counter()
    for _ in range(n):
        for _chunk in wsgi(dict(environ), t.cast(t.Any, start_response)):
            pass
    return n / (time.perf_counter() - start)


def bench_inprocess(n: int = 2000, rounds: int = 21) -> None:
    print(f"== in-process WSGI loop, {rounds} interleaved rounds of {n} requests (requests/s)")
    store_url = f"sqlite:///{tempfile.mkdtemp()}/metrics.sqlite3"
    apps = {
        "off": make_app(store_url, metrics=False),
        "on": make_app(store_url, metrics=True),
    }
    client_id, secret = new_client(apps["off"])
    token = get_token(apps["off"], client_id, secret)
    headers = {"Authorization": f"Bearer {token}"}
    for app in apps.values():  # warm the token caches
        _block(app, headers, 200)
    results: dict[str, list[float]] = {name: [] for name in apps}
    for i in range(rounds):
        # Alternate which goes first, so neither always runs on a warmer machine.
        for name in list(apps) if i % 2 == 0 else list(apps)[::-1]:
            results[name].append(_block(apps[name], headers, n))
    _report(results)
    on = apps["on"]
    counted = on.extensions["tokenguard"].state(on).metrics.bearer_children["ok"]._value.get()
    print(f"  bearer checks counted with metrics on: {counted:.0f}")


def _report(results: dict[str, list[float]]) -> float:
    """Print the medians and the median of the per-round ratios (each round's pair ran
    back to back, so its ratio is the least disturbed by the machine's other work)."""
    off = statistics.median(results["off"])
    on = statistics.median(results["on"])
    ratio = statistics.median(a / b for a, b in zip(results["on"], results["off"], strict=True))
    print(
        f"  metrics off {off:9.0f}   metrics on {on:9.0f}   "
        f"ratio on/off {on / off:.3f} (median of round ratios {ratio:.3f})"
    )
    print("  rounds: " + ", ".join(f"{k} {[round(x) for x in v]}" for k, v in results.items()))
    return ratio


_SERVER_SCRIPT = """
import logging, sys
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
sys.path.insert(0, {bench_dir!r})
from bench_metrics import make_app
from flask_tokenguard.serving.runner import Runner
app = make_app({store_url!r}, metrics={metrics!r})
runner = Runner(app, host="127.0.0.1", port={port}, threads=4)
runner.start()
runner.wait()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_wrk(seconds: int = 3, rounds: int = 5) -> float | None:
    print(f"== waitress, wrk -t1 -c8, {rounds} interleaved rounds of {seconds} s (requests/s)")
    if shutil.which("wrk") is None:
        print("  wrk not found (apt-get install wrk): skipped")
        return None
    import requests

    store_url = f"sqlite:///{tempfile.mkdtemp()}/metrics-wrk.sqlite3"
    setup = make_app(store_url, metrics=False)
    client_id, secret = new_client(setup)
    token = get_token(setup, client_id, secret)
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    ports = {"off": _free_port(), "on": _free_port()}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    servers = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVER_SCRIPT.format(
                    bench_dir=bench_dir, store_url=store_url, metrics=name == "on", port=port
                ),
            ],
            env=env,
        )
        for name, port in ports.items()
    }
    try:
        headers = {"Authorization": f"Bearer {token}"}
        for port in ports.values():
            for _ in range(100):
                try:
                    requests.get(f"http://127.0.0.1:{port}/guarded", headers=headers, timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
        results: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(rounds):
            names = ("off", "on") if i % 2 == 0 else ("on", "off")
            for name in names:
                out = subprocess.run(
                    [
                        "wrk",
                        "-t1",
                        "-c8",
                        f"-d{seconds}s",
                        "-H",
                        f"Authorization: Bearer {token}",
                        f"http://127.0.0.1:{ports[name]}/guarded",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                if "Non-2xx" in out:
                    raise SystemExit(f"errors with metrics {name}: {out}")
                line = next(x for x in out.splitlines() if x.startswith("Requests/sec"))
                results[name].append(float(line.split()[1]))
        return _report(results)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait()


def main(argv: list[str]) -> None:
    mode = argv[1] if len(argv) > 1 else "metrics"
    if mode in ("metrics", "inprocess"):
        bench_inprocess()
    if mode in ("metrics", "wrk"):
        bench_wrk()
    if mode not in ("metrics", "inprocess", "wrk"):
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
