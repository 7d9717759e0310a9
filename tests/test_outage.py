"""A store that goes away: 503 with Retry-After, no half-taken seat, recovery when it is back.

Uses a private ``redis-server`` on a free port, which the test kills and restarts.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import requests
from flask import Flask

from helpers import RedisServer
from helpers import basic
from helpers import bearer
from helpers import cli

pytestmark = [pytest.mark.redis, pytest.mark.server]


def test_store_outage_is_503_and_recovers(
    app_factory: t.Callable[..., Flask], own_redis_server: RedisServer, live_server: t.Any
) -> None:
    app = app_factory(own_redis_server.url, LICENSES=1, REVOCATION_LAG=0,
                      STORE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1})
    creds = cli(app, "create-client", "outage")
    url = live_server(app)
    auth = basic(creds["client_id"], creds["client_secret"])
    first = requests.post(url + "/token", data={"grant_type": "client_credentials"}, headers=auth, timeout=10)
    assert first.status_code == 200
    token = first.json()["access_token"]

    own_redis_server.kill()
    refused = requests.post(url + "/token", data={"grant_type": "client_credentials"}, headers=auth, timeout=30)
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"
    assert int(refused.headers["Retry-After"]) > 0
    guarded = requests.get(url + "/whoami", headers=bearer(token), timeout=30)
    assert guarded.status_code == 503 and guarded.json()["error"] == "temporarily_unavailable"
    assert requests.get(url + "/health", timeout=10).status_code == 200

    # Back, but empty (this server keeps nothing on disk): the app serves again without a
    # restart. The wiped client is unknown now; a new one gets tokens and a seat.
    own_redis_server.start()
    gone = requests.post(url + "/token", data={"grant_type": "client_credentials"}, headers=auth, timeout=10)
    assert gone.status_code == 401 and gone.json()["error"] == "invalid_client"
    fresh = cli(app, "create-client", "after the outage")
    again = requests.post(url + "/token", data={"grant_type": "client_credentials"},
                          headers=basic(fresh["client_id"], fresh["client_secret"]), timeout=10)
    assert again.status_code == 200
    assert requests.get(url + "/whoami", headers=bearer(again.json()["access_token"]), timeout=10).status_code == 200
    assert cli(app, "licenses") == {"in_use": 1, "total": 1}


def test_outage_without_data_loss_keeps_the_session(
    app_factory: t.Callable[..., Flask], own_redis_server: RedisServer, live_server: t.Any
) -> None:
    """A dropped connection (the server paused, not wiped) leaves sessions and seats intact."""
    import os
    import signal

    app = app_factory(own_redis_server.url, LICENSES=1, REVOCATION_LAG=0,
                      STORE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1})
    creds = cli(app, "create-client", "outage")
    url = live_server(app)
    auth = basic(creds["client_id"], creds["client_secret"])
    first = requests.post(url + "/token", data={"grant_type": "client_credentials"}, headers=auth, timeout=10)
    assert first.status_code == 200
    assert own_redis_server.process is not None
    os.kill(own_redis_server.process.pid, signal.SIGSTOP)
    try:
        hung = requests.post(url + "/token", data={"grant_type": "client_credentials"}, headers=auth, timeout=60)
        assert hung.status_code == 503
    finally:
        os.kill(own_redis_server.process.pid, signal.SIGCONT)
    token = first.json()["access_token"]
    assert requests.get(url + "/whoami", headers=bearer(token), timeout=10).status_code == 200
    assert cli(app, "licenses") == {"in_use": 1, "total": 1}
    second = requests.post(url + "/token", data={"grant_type": "client_credentials"}, headers=auth, timeout=10)
    assert second.status_code == 400 and second.json()["error"] == "license_unavailable"
