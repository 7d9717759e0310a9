"""Compare this checkout with another one under waitress, side by side in one run.

    .venv/bin/python bench/compare.py /path/to/other/checkout [--rounds 5] [--seconds 4]

Each checkout serves the same small app (SQLite store, RS256, waitress threads=4) in its
own process. wrk (-t2 -c16) then alternates between the two servers, round by round, on
three paths: an open route, the same route behind ``@require_token("view")``, and
``POST /token`` (client_credentials, scope ``view``). Printed: requests/s per round and the
median of the per-round ratios this/other, which is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

_SERVER = """
import base64, json, logging, sys
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
from flask import Flask
from flask_tokenguard import TokenGuard, require_token
from waitress import serve

app = Flask("compare")
app.config.update(
    TESTING=True,
    TOKENGUARD_STORE_URL=sys.argv[1],
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

_WRK_POST = """
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=view"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic {basic}"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One checkout's app under waitress, with a client created for it."""

    def __init__(self, tree: Path, workdir: Path) -> None:
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(tree)}
        store = f"sqlite:///{workdir / 'store.sqlite3'}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, store, str(self.port)],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        creds = json.loads(self.process.stdout.readline())
        self.client = (creds["client_id"], creds["client_secret"])
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

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


def _wrk(url: str, seconds: int, args: list[str]) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", *args, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"errors from {url}:\n{out}")
    line = next(row for row in out.splitlines() if row.startswith("Requests/sec"))
    return float(line.split()[1])


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args(argv)
    import base64

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "this").mkdir()
        (Path(tmp) / "other").mkdir()
        servers = {
            "this": Server(HERE, Path(tmp) / "this"),
            "other": Server(args.other.resolve(), Path(tmp) / "other"),
        }
        try:
            scripts = {}
            for name, server in servers.items():
                basic = base64.b64encode(":".join(server.client).encode()).decode()
                script = Path(tmp) / f"{name}.lua"
                script.write_text(_WRK_POST.format(basic=basic))
                scripts[name] = script
            paths: dict[str, t.Callable[[str], list[str]]] = {
                "open": lambda name: [],
                "guarded": lambda name: ["-H", f"Authorization: Bearer {servers[name].token()}"],
                "token": lambda name: ["-s", str(scripts[name])],
            }
            rates: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for path, extra in paths.items():
                    for name in ("this", "other"):
                        url = servers[name].url + ("/token" if path == "token" else f"/{path}")
                        rate = _wrk(url, args.seconds, extra(name))
                        rates.setdefault((path, name), []).append(rate)
            print(f"wrk -t2 -c16, {args.rounds} alternating rounds of {args.seconds} s")
            for path in paths:
                this, other = rates[(path, "this")], rates[(path, "other")]
                ratios = [a / b for a, b in zip(this, other, strict=True)]
                print(
                    f"  {path:8s} this {statistics.median(this):8.0f}/s  "
                    f"other {statistics.median(other):8.0f}/s  "
                    f"ratio median {statistics.median(ratios):.3f} "
                    f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
                )
            open_ratio = statistics.median(
                g / o
                for g, o in zip(rates[("guarded", "this")], rates[("open", "this")], strict=True)
            )
            other_ratio = statistics.median(
                g / o
                for g, o in zip(rates[("guarded", "other")], rates[("open", "other")], strict=True)
            )
            print(f"  guarded/open: this {open_ratio:.3f}, other {other_ratio:.3f}")
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
