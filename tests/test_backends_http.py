"""The whole product on every store: HTTP in, store, HTTP out.

The same flows run on memory, SQLite, Redis, PostgreSQL, MariaDB and the SQLAlchemy store
on SQLite; the multi-process race runs three waitress processes on each store that
crosses processes.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import typing as t
from pathlib import Path

import pytest
import requests
from flask import Flask

from tests.backends import BACKENDS
from tests.backends import CROSS_PROCESS_BACKENDS
from tests.backends import isolated_store
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import flask_cli
from tests.helpers import SampleServer


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    with isolated_store(request.param, tmp_path) as url_and_options:
        yield url_and_options


@pytest.fixture(params=CROSS_PROCESS_BACKENDS)
def shared_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    with isolated_store(request.param, tmp_path) as url_and_options:
        yield url_and_options


def test_session_lifecycle(
    app_factory: t.Callable[..., Flask], backend: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LICENSES=1, REVOCATION_LAG=0)
    client = app.test_client()
    creds = cli(app, "create-client", "lifecycle", "--alias", "lifecycle-alias")
    auth = basic("lifecycle-alias", creds["client_secret"])

    first = client.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
    assert first.status_code == 200, first.json
    assert (
        client.get("/whoami", headers=bearer(first.get_json()["access_token"])).get_json()[
            "client_id"
        ]
        == creds["client_id"]
    )
    full = client.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
    assert full.status_code == 400 and full.get_json()["error"] == "license_unavailable"
    assert int(full.headers["Retry-After"]) > 0
    assert (
        client.post(
            "/token", data={"grant_type": "client_credentials", "scope": "view"}, headers=auth
        ).status_code
        == 200
    )

    refreshed = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": first.get_json()["refresh_token"]},
        headers=auth,
    )
    assert refreshed.status_code == 200
    replay = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": first.get_json()["refresh_token"]},
        headers=auth,
    )
    assert replay.get_json()["error"] == "invalid_grant"
    assert (
        client.get("/whoami", headers=bearer(refreshed.get_json()["access_token"])).status_code
        == 401
    )
    assert cli(app, "licenses") == {"in_use": 0, "total": 1}

    again = client.post(
        "/token",
        json={
            "grant_type": "client_credentials",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        },
    )
    assert again.status_code == 200
    assert (
        client.post("/logoff", headers=bearer(again.get_json()["access_token"])).status_code == 204
    )
    assert cli(app, "licenses")["in_use"] == 0

    last = client.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
    assert (
        client.post(
            "/revoke", data={"token": last.get_json()["access_token"]}, headers=auth
        ).status_code
        == 200
    )
    assert client.get("/whoami", headers=bearer(last.get_json()["access_token"])).status_code == 401
    assert len(cli(app, "sessions")) == 2  # the view session and the last one
    cli(app, "rotate-secret", creds["client_id"], "--yes")
    assert cli(app, "sessions") == []


@pytest.mark.server
@pytest.mark.slow
def test_three_processes_share_seats_and_revocations(
    sample_server: t.Callable[..., SampleServer], shared_backend: tuple[str, dict[str, t.Any]]
) -> None:
    url, options = shared_backend
    # 16 requests at once from one address: above the lockout threshold, some would wait
    # their turn with 429 (each is reserved before its check); this test is about seats.
    env = {"LICENSES": "3", "STORE_OPTIONS": json.dumps(options), "LOCKOUT_THRESHOLD": "100"}
    servers = [sample_server(url, **env) for _ in range(3)]
    assert len(flask_cli(url, "list-clients", **env)) == 1  # one demo client, made once
    creds = flask_cli(url, "create-client", "racer", **env)
    auth = (creds["client_id"], creds["client_secret"])

    def request_seat(i: int) -> requests.Response:
        server = servers[i % len(servers)]
        return requests.post(
            server.url + "/token", data={"grant_type": "client_credentials"}, auth=auth, timeout=60
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(request_seat, range(45)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 3, statuses
    assert {r.json()["error"] for r in responses if r.status_code != 200} == {"license_unavailable"}
    assert flask_cli(url, "licenses", **env) == {"in_use": 3, "total": 3}

    token = next(r.json()["access_token"] for r in responses if r.status_code == 200)
    headers = bearer(token)
    assert [
        requests.get(s.url + "/whoami", headers=headers, timeout=10).status_code for s in servers
    ] == [200] * 3
    assert requests.post(servers[1].url + "/logoff", headers=headers, timeout=10).status_code == 204
    time.sleep(1.1)  # TOKENGUARD_REVOCATION_LAG
    assert [
        requests.get(s.url + "/whoami", headers=headers, timeout=10).status_code for s in servers
    ] == [401] * 3
    for server in servers:
        assert server.stop() == 0
