"""``<prefix>/health``, ``/metrics`` and ``/openapi.json``: through the test client and over
a real socket, and health against a Redis server that is killed and restarted."""

from __future__ import annotations

import time
import typing as t

import pytest
import requests
from flask import Flask

from flask_tokenguard import TokenGuard
from tests.helpers import RedisServer
from tests.ops_support import ops_app

# Until config.py knows the metrics keys, other readers of the config warn about them.


def test_health_ok_under_the_prefix(app_factory: t.Callable[..., Flask]) -> None:
    client = ops_app(app_factory).test_client()
    response = client.get("/connect/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "store": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_health_without_a_prefix(tmp_path: t.Any) -> None:
    app = Flask("plain")
    app.config.update(TESTING=True, TOKENGUARD_STORE_URL="memory://")
    TokenGuard(app)
    try:
        response = app.test_client().get("/health")
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok", "store": "ok"}
    finally:
        app.extensions["tokenguard"].close_store(app)


def test_health_is_exempt_from_https(app_factory: t.Callable[..., Flask]) -> None:
    client = ops_app(app_factory).test_client()
    remote = {"REMOTE_ADDR": "10.0.0.7"}
    # The same plain-HTTP, non-loopback request is refused at the token endpoint ...
    refused = client.post(
        "/connect/token", data={"grant_type": "client_credentials"}, environ_base=remote
    )
    assert refused.status_code == 400
    assert refused.get_json()["error_description"] == "HTTPS required."
    # ... but a load balancer's probe is answered.
    assert client.get("/connect/health", environ_base=remote).status_code == 200


def test_health_503_when_the_store_fails(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_tokenguard.errors import StoreError

    app = ops_app(app_factory)
    store = app.extensions["tokenguard"].store(app)

    def broken() -> None:
        raise StoreError("down")

    monkeypatch.setattr(store, "check", broken)
    response = app.test_client().get("/connect/health")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "store": "unavailable"}
    assert int(response.headers["Retry-After"]) >= 1


def test_health_is_bounded_when_the_store_hangs(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = ops_app(app_factory)
    app.extensions["tokenguard_ops"].timeout = 0.3
    store = app.extensions["tokenguard"].store(app)
    calls = []

    def hangs() -> None:
        calls.append(1)
        time.sleep(1.5)

    monkeypatch.setattr(store, "check", hangs)
    client = app.test_client()
    started = time.monotonic()
    first = client.get("/connect/health")
    second = client.get("/connect/health")
    elapsed = time.monotonic() - started
    assert first.status_code == second.status_code == 503
    assert elapsed < 1.2
    # The second probe waited on the check already in flight instead of starting another.
    assert len(calls) == 1
    time.sleep(1.4)  # let the hung check finish before the store is closed


def test_metrics_is_404_when_off(app_factory: t.Callable[..., Flask]) -> None:
    response = ops_app(app_factory).test_client().get("/connect/metrics")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_openapi_is_served_with_the_prefix(app_factory: t.Callable[..., Flask]) -> None:
    response = ops_app(app_factory).test_client().get("/connect/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"][0]["url"] == "/connect"
    flows = doc["components"]["securitySchemes"]["oauth2"]["flows"]
    assert flows["clientCredentials"]["tokenUrl"] == "/connect/token"


@pytest.mark.server
def test_each_endpoint_over_a_socket(
    app_factory: t.Callable[..., Flask], live_server: t.Any
) -> None:
    url = live_server(ops_app(app_factory, metrics=True))
    health = requests.get(url + "/connect/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "store": "ok"}
    metrics = requests.get(url + "/connect/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "tokenguard_tokens_issued_total" in metrics.text
    doc = requests.get(url + "/connect/openapi.json", timeout=10)
    assert doc.status_code == 200 and "/token" in doc.json()["paths"]


@pytest.mark.redis
@pytest.mark.server
def test_health_follows_a_redis_outage(
    app_factory: t.Callable[..., Flask], own_redis_server: RedisServer, live_server: t.Any
) -> None:
    app = ops_app(
        app_factory,
        own_redis_server.url,
        STORE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1},
    )
    url = live_server(app) + "/connect/health"
    assert requests.get(url, timeout=10).status_code == 200

    own_redis_server.kill()
    started = time.monotonic()
    down = requests.get(url, timeout=10)
    assert time.monotonic() - started < 5
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "store": "unavailable"}
    assert int(down.headers["Retry-After"]) >= 1

    own_redis_server.start()
    deadline = time.monotonic() + 10
    while (back := requests.get(url, timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, back.text
        time.sleep(0.1)
    assert back.json() == {"status": "ok", "store": "ok"}
