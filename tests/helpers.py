"""Helpers for the tests: CLI calls, auth headers, servers in subprocesses."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import requests
from flask import Flask

ROOT = Path(__file__).resolve().parent.parent


#: ``clock(seconds)``: the ``clock`` fixture, which moves ``time.time`` forward.
Clock = t.Callable[[float], None]


def cli(app: Flask, *args: str, input: str | None = None) -> t.Any:  # noqa: A002 - click's name
    """Run ``flask tokenguard ARGS`` on ``app``; return the JSON output (``--json`` is added)."""
    result = app.test_cli_runner().invoke(args=["tokenguard", *args, "--json"], input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def register(app: Flask, name: str = "test client", *args: str) -> dict[str, t.Any]:
    """Create a client through the CLI; returns its JSON (with ``client_secret``)."""
    creds: dict[str, t.Any] = cli(app, "create-client", name, *args)
    return creds


def basic(client_id: str, secret: str = "") -> dict[str, str]:
    """An ``Authorization: Basic`` header (ids and secrets need no form-encoding)."""
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get_token(http: t.Any, creds: dict[str, t.Any], **params: str) -> t.Any:
    """POST /token with client_credentials by Basic; returns the test-client response."""
    data = {"grant_type": "client_credentials", **params}
    return http.post("/token", data=data, headers=basic(creds["client_id"], creds["client_secret"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SampleServer:
    """A ``python -m sample_app`` subprocess on a free port."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sample_app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sample app exited: {log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"sample app did not start: {log.read_text()[-2000:]}")

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


def flask_cli(store_url: str, *args: str, stdin: str | None = None, **config: str) -> t.Any:
    """Run ``flask --app sample_app tokenguard ARGS --json`` in a subprocess; return its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env["FLASK_TOKENGUARD_STORE_URL"] = store_url
    env.update({f"FLASK_TOKENGUARD_{k}": str(v) for k, v in config.items()})
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "sample_app", "tokenguard", *args, "--json"],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def unavailable(reason: str) -> t.NoReturn:
    """Skip (printing why) when a server or binary is missing; fail under CI instead."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason)
    print(f"skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


class RedisServer:
    """A private ``redis-server`` without persistence, which a test may kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.socket_path = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                str(self.socket_path),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = self.directory / "redis.log"
                        text = log.read_text() if log.exists() else ""
                        raise RuntimeError(f"redis-server did not start: {text[-2000:]}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """Stop the server at once, as a crash or a dropped network would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
