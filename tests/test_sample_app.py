"""The sample app as a user runs it: ``python -m sample_app`` under waitress, real sockets."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.helpers import flask_cli
from tests.helpers import SampleServer
from tests.helpers import unavailable

pytestmark = pytest.mark.server

DEMO = re.compile(r"client_id:\s+(\S+)\s+client_secret:\s+(\S+)")


def _demo_credentials(server: SampleServer) -> tuple[str, str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        match = DEMO.search(server.output)
        if match:
            return match.group(1), match.group(2)
        time.sleep(0.05)
    raise AssertionError(f"no demo client printed:\n{server.output}")


def test_first_start_prints_a_working_demo_client(
    sample_server: t.Callable[..., SampleServer],
) -> None:
    server = sample_server()
    client_id, secret = _demo_credentials(server)
    assert "curl" in server.output and f"{server.url}/token" in server.output
    response = requests.post(
        server.url + "/token",
        data={"grant_type": "client_credentials", "scope": "view"},
        auth=(client_id, secret),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()["access_token"]
    orders = requests.get(
        server.url + "/orders",
        params={"from": "2026-04-01"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert orders.status_code == 200
    assert all(o["date"] >= "2026-04-01" for o in orders.json()["orders"])
    assert (
        requests.get(
            server.url + "/orders",
            params={"from": "April"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).status_code
        == 400
    )
    assert server.stop() == 0


def test_second_start_creates_no_new_demo_client(
    sample_server: t.Callable[..., SampleServer], tmp_path: Path
) -> None:
    first = sample_server()
    _demo_credentials(first)
    assert first.stop() == 0
    second = sample_server()
    assert "client_secret" not in second.output
    url = f"sqlite:///{tmp_path / 'sample.sqlite3'}"
    assert len(flask_cli(url, "list-clients")) == 1


def test_licence_flow_with_environment_config(
    sample_server: t.Callable[..., SampleServer], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'sample.sqlite3'}"
    server = sample_server(url, LICENSES="1")
    creds = flask_cli(url, "create-client", "warehouse", LICENSES="1")
    auth = (creds["client_id"], creds["client_secret"])
    first = requests.post(
        server.url + "/token", data={"grant_type": "client_credentials"}, auth=auth, timeout=10
    )
    assert first.status_code == 200 and first.json()["scope"] == "all"
    second = requests.post(
        server.url + "/token", data={"grant_type": "client_credentials"}, auth=auth, timeout=10
    )
    assert second.status_code == 400 and second.json()["error"] == "license_unavailable"
    assert int(second.headers["Retry-After"]) > 0
    view = requests.post(
        server.url + "/token",
        data={"grant_type": "client_credentials", "scope": "view"},
        auth=auth,
        timeout=10,
    )
    assert view.status_code == 200
    assert flask_cli(url, "licenses", LICENSES="1") == {"in_use": 1, "total": 1}
    logoff = requests.post(
        server.url + "/logoff",
        headers={"Authorization": f"Bearer {first.json()['access_token']}"},
        timeout=10,
    )
    assert logoff.status_code == 204
    assert flask_cli(url, "licenses", LICENSES="1") == {"in_use": 0, "total": 1}
    again = requests.post(
        server.url + "/token",
        json={"grant_type": "client_credentials", **dict(client_id=auth[0], client_secret=auth[1])},
        timeout=10,
    )
    assert again.status_code == 200


def test_url_prefix_from_environment(sample_server: t.Callable[..., SampleServer]) -> None:
    server = sample_server(URL_PREFIX="/connect")
    client_id, secret = _demo_credentials(server)
    assert f"{server.url}/connect/token" in server.output
    response = requests.post(
        server.url + "/connect/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    )
    assert response.status_code == 200
    assert requests.post(server.url + "/token", timeout=10).status_code == 404
    metadata = requests.get(
        server.url + "/connect/.well-known/oauth-authorization-server", timeout=10
    ).json()
    assert metadata["token_endpoint"] == f"{server.url}/connect/token"


def test_jwks_verifies_tokens_with_a_stock_library(
    sample_server: t.Callable[..., SampleServer],
) -> None:
    jwt = pytest.importorskip("jwt")
    server = sample_server()
    client_id, secret = _demo_credentials(server)
    token = requests.post(
        server.url + "/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    ).json()["access_token"]
    jwks = jwt.PyJWKClient(server.url + "/jwks.json")
    key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=server.url)
    assert claims["client_id"] == client_id and claims["iss"] == server.url
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


def test_challenge_header_is_spelled_as_rfc_7235_on_the_wire(
    sample_server: t.Callable[..., SampleServer],
) -> None:
    """waitress capitalises header names; a plain dict of headers must still find it."""
    import urllib.error
    import urllib.request

    server = sample_server()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.url + "/orders", timeout=10)
    headers = dict(caught.value.headers)
    caught.value.close()
    assert caught.value.code == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="tokenguard"'


def test_request_lines_are_logged_without_tokens_or_secrets(
    sample_server: t.Callable[..., SampleServer],
) -> None:
    server = sample_server()
    client_id, secret = _demo_credentials(server)
    token = requests.post(
        server.url + "/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    ).json()["access_token"]
    requests.get(
        server.url + "/whoami",
        params={"access_token": token},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert server.stop() == 0
    log = server.output.split("Serving on", 1)[1]  # after the demo client's one-time print
    assert "GET /whoami 200" in log and "POST /token 200" in log
    assert token not in log and secret not in log and "access_token" not in log


def test_the_printed_curl_lines_read_the_secret_instead_of_carrying_it(
    sample_server: t.Callable[..., SampleServer],
) -> None:
    server = sample_server()
    _, secret = _demo_credentials(server)
    lines = server.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Get a token"))
    shell = [line.strip() for line in lines[start + 1 : start + 3]]
    assert all(secret not in line for line in lines if "curl" in line)
    assert server.output.count(secret) == 1  # shown once, on its own line
    if shutil.which("curl") is None:
        unavailable("curl is not installed")
    result = subprocess.run(
        ["sh", "-c", "\n".join(shell)],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert '"access_token"' in result.stdout, result.stderr
