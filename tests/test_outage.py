"""A store that goes away: 503 with Retry-After, no half-taken seat, recovery when it is back.

Uses a private ``redis-server`` on a free port, which the test kills and restarts.
"""

from __future__ import annotations

import os
import signal
import typing as t

import pytest
import requests
from flask import Flask

from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.server]


class Served(t.NamedTuple):
    app: Flask
    url: str
    auth: dict[str, str]


@pytest.fixture
def served(
    app_factory: t.Callable[..., Flask], own_redis_server: RedisServer, live_server: t.Any
) -> Served:
    """The sample app on the private Redis, one licence, a client, served under waitress."""
    app = app_factory(
        own_redis_server.url,
        LICENSES=1,
        REVOCATION_LAG=0,
        STORE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1},
    )
    creds = cli(app, "create-client", "outage")
    return Served(app, live_server(app), basic(creds["client_id"], creds["client_secret"]))


def _token(
    served: Served, auth: dict[str, str] | None = None, timeout: float = 10
) -> requests.Response:
    return requests.post(
        served.url + "/token",
        data={"grant_type": "client_credentials"},
        headers=auth or served.auth,
        timeout=timeout,
    )


def test_store_outage_is_503_and_recovers(served: Served, own_redis_server: RedisServer) -> None:
    first = _token(served)
    assert first.status_code == 200
    token = first.json()["access_token"]

    own_redis_server.kill()
    refused = _token(served, timeout=30)
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"
    assert int(refused.headers["Retry-After"]) > 0
    guarded = requests.get(served.url + "/whoami", headers=bearer(token), timeout=30)
    assert guarded.status_code == 503 and guarded.json()["error"] == "temporarily_unavailable"
    # The process is up and says so: the health answer names the store as the problem.
    health = requests.get(served.url + "/health", timeout=10)
    assert health.status_code == 503 and health.json() == {
        "status": "unavailable",
        "store": "unavailable",
    }
    assert int(health.headers["Retry-After"]) > 0

    # Back, but empty (this server keeps nothing on disk): the app serves again without a
    # restart. The wiped client is unknown now; a new one gets tokens and a seat.
    own_redis_server.start()
    gone = _token(served)
    assert gone.status_code == 401 and gone.json()["error"] == "invalid_client"
    fresh = cli(served.app, "create-client", "after the outage")
    again = _token(served, basic(fresh["client_id"], fresh["client_secret"]))
    assert again.status_code == 200
    whoami = requests.get(
        served.url + "/whoami", headers=bearer(again.json()["access_token"]), timeout=10
    )
    assert whoami.status_code == 200
    assert cli(served.app, "licenses") == {"in_use": 1, "total": 1}


def test_outage_without_data_loss_keeps_the_session(
    served: Served, own_redis_server: RedisServer
) -> None:
    """A dropped connection (the server paused, not wiped) leaves sessions and seats intact."""
    first = _token(served)
    assert first.status_code == 200
    assert own_redis_server.process is not None
    os.kill(own_redis_server.process.pid, signal.SIGSTOP)
    try:
        assert _token(served, timeout=60).status_code == 503
    finally:
        os.kill(own_redis_server.process.pid, signal.SIGCONT)
    token = first.json()["access_token"]
    assert (
        requests.get(served.url + "/whoami", headers=bearer(token), timeout=10).status_code == 200
    )
    assert cli(served.app, "licenses") == {"in_use": 1, "total": 1}
    second = _token(served)
    assert second.status_code == 400 and second.json()["error"] == "license_unavailable"
