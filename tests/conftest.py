"""Fixtures shared by the HTTP, CLI and guard tests.

- ``app_factory(store_url=..., **config)`` builds the sample app on an isolated store
  (compare flask-limiter's ``extension_factory``); ``app`` and ``client`` use it with
  defaults.
- ``register(app, ...)`` creates a client through the CLI, as an administrator would.
- ``live_server(app)`` serves an app with waitress on a free port in a thread.
- ``sample_server(**env)`` runs ``python -m sample_app`` in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

import sample_app
from tests.helpers import Clock
from tests.helpers import free_port
from tests.helpers import RedisServer
from tests.helpers import SampleServer
from tests.helpers import unavailable


@pytest.fixture(autouse=True)
def _no_app_context_leaks() -> t.Iterator[None]:
    """Fail a test that leaves an app or request context pushed (flask's leak_detector)."""
    from flask.globals import _cv_app

    yield
    leaked = []
    while _cv_app.get(None) is not None:  # pragma: no cover - only on a leak
        leaked.append(_cv_app.get())
        _cv_app.get().pop()
    assert not leaked, f"app contexts leaked: {leaked}"


@pytest.fixture
def app_factory(tmp_path: Path) -> t.Iterator[t.Callable[..., Flask]]:
    """Build the sample app on a fresh store: ``app_factory(store_url=None, **config)``.

    Config keys may drop the ``TOKENGUARD_`` prefix. The apps' stores are closed after.
    """
    apps: list[Flask] = []

    def build(store_url: str | None = None, **config: t.Any) -> Flask:
        settings = {
            "TESTING": True,
            "TOKENGUARD_STORE_URL": store_url or "memory://",
            # The cheapest scrypt cost allowed: tests hash many passwords.
            "TOKENGUARD_PASSWORD_HASH_COST": 10,
            **{
                (k if k.startswith("TOKENGUARD_") else f"TOKENGUARD_{k}"): v
                for k, v in config.items()
            },
        }
        app = sample_app.create_app(settings)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["tokenguard"].close_store(app)


@pytest.fixture
def app(app_factory: t.Callable[..., Flask]) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> t.Any:
    return app.test_client()


@pytest.fixture
def live_server() -> t.Iterator[t.Callable[[t.Any], str]]:
    """``live_server(wsgi_app)`` serves an app with our waitress runner on a free port.

    A WSGI app that is not Flask is mounted in an empty Flask shell so that the runner,
    which reads its settings from a Flask config, can serve it.
    """
    from flask_tokenguard.serving.runner import Runner

    runners: list[Runner] = []

    def start(app: t.Any) -> str:
        if not isinstance(app, Flask):
            shell = Flask("live_server")
            shell.wsgi_app = app  # type: ignore[method-assign]
            app = shell
        runner = Runner(app, host="127.0.0.1", port=0, threads=4, drain_timeout=5)
        runner.start()
        runners.append(runner)
        return runner.url

    yield start
    for runner in runners:
        runner.stop()


@pytest.fixture
def sample_server(tmp_path: Path) -> t.Iterator[t.Callable[..., SampleServer]]:
    """``sample_server(**FLASK_env)`` starts ``python -m sample_app`` on its own store."""
    started: list[SampleServer] = []

    def start(store_url: str | None = None, **config: str) -> SampleServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
        env["FLASK_TOKENGUARD_STORE_URL"] = store_url or f"sqlite:///{tmp_path / 'sample.sqlite3'}"
        env["FLASK_TOKENGUARD_PASSWORD_HASH_COST"] = "10"
        env.update({f"FLASK_TOKENGUARD_{k}": str(v) for k, v in config.items()})
        server = SampleServer(env, free_port(), tmp_path / f"server-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> t.Iterator[RedisServer]:
    """A private ``redis-server`` on a free port, which a test may kill and restart."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary not found on PATH")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """``clock(seconds)`` moves ``time.time`` forward, for expiry without sleeping."""
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance
