"""Independent client libraries against the server under waitress, as users wire them up.

requests-oauthlib (backend and legacy application clients), Authlib's requests and httpx
clients; fetch, refresh, revoke; the access token verified by PyJWT from ``/jwks.json``.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import jwt
import pytest
import requests
from flask import Flask

from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import register

pytestmark = pytest.mark.server


@pytest.fixture
def server(
    app_factory: t.Callable[..., Flask], tmp_path: Path, live_server: t.Any
) -> tuple[Flask, str]:
    app = app_factory(f"sqlite:///{tmp_path / 'interop.sqlite3'}", LICENSES=5)
    return app, live_server(app)


@pytest.fixture(autouse=True)
def _plain_http_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # oauthlib refuses http:// unless told; our server accepts it from loopback only.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def _whoami(url: str, access_token: str) -> dict[str, t.Any]:
    response = requests.get(url + "/whoami", headers=bearer(access_token), timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, t.Any] = response.json()
    return body


def test_requests_oauthlib_backend_client_basic_auth(server: tuple[Flask, str]) -> None:
    from oauthlib.oauth2 import BackendApplicationClient
    from requests.auth import HTTPBasicAuth
    from requests_oauthlib import OAuth2Session

    app, url = server
    creds = register(app)
    session = OAuth2Session(client=BackendApplicationClient(client_id=creds["client_id"]))
    token = session.fetch_token(
        url + "/token", client_id=creds["client_id"], client_secret=creds["client_secret"]
    )
    assert token["token_type"] == "Bearer" and token["scope"] == ["all"]
    assert session.get(url + "/orders", timeout=10).status_code == 200
    refreshed = session.refresh_token(
        url + "/token", auth=HTTPBasicAuth(creds["client_id"], creds["client_secret"])
    )
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert _whoami(url, refreshed["access_token"])["client_id"] == creds["client_id"]
    assert cli(app, "licenses") == {"in_use": 1, "total": 5}


def test_requests_oauthlib_client_secret_post(server: tuple[Flask, str]) -> None:
    from oauthlib.oauth2 import BackendApplicationClient
    from requests_oauthlib import OAuth2Session

    app, url = server
    creds = register(app)
    session = OAuth2Session(
        client=BackendApplicationClient(client_id=creds["client_id"]), scope=["view"]
    )
    token = session.fetch_token(
        url + "/token",
        client_id=creds["client_id"],
        client_secret=creds["client_secret"],
        include_client_id=True,
        scope=["view"],  # the backend client sends only what it is given here
    )
    assert token["scope"] == ["view"]
    assert cli(app, "licenses")["in_use"] == 0


def test_requests_oauthlib_legacy_client_with_public_client(server: tuple[Flask, str]) -> None:
    from oauthlib.oauth2 import LegacyApplicationClient
    from requests_oauthlib import OAuth2Session

    app, url = server
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    public = register(app, "desktop app", "--public")
    session = OAuth2Session(client=LegacyApplicationClient(client_id=public["client_id"]))
    token = session.fetch_token(
        url + "/token",
        username="alice",
        password="wonderland",
        client_id=public["client_id"],
        include_client_id=True,
    )
    assert _whoami(url, token["access_token"])["subject"] == "alice"
    refreshed = session.refresh_token(url + "/token", client_id=public["client_id"])
    assert _whoami(url, refreshed["access_token"])["subject"] == "alice"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_requests_client(server: tuple[Flask, str], method: str) -> None:
    from authlib.integrations.requests_client import OAuth2Session

    app, url = server
    creds = register(app)
    session = OAuth2Session(
        creds["client_id"], creds["client_secret"], token_endpoint_auth_method=method
    )
    token = session.fetch_token(url + "/token", grant_type="client_credentials")
    assert session.get(url + "/orders", timeout=10).status_code == 200
    refreshed = session.refresh_token(url + "/token", refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"]
    assert (
        session.revoke_token(
            url + "/revoke", refreshed["refresh_token"], token_type_hint="refresh_token"
        ).status_code
        == 200
    )
    assert (
        requests.get(
            url + "/whoami", headers=bearer(refreshed["access_token"]), timeout=10
        ).status_code
        == 401
    )
    assert cli(app, "licenses")["in_use"] == 0


def test_authlib_requests_public_client(server: tuple[Flask, str]) -> None:
    from authlib.integrations.requests_client import OAuth2Session

    app, url = server
    cli(app, "create-user", "bob", "--password-stdin", input="builder\n")
    public = register(app, "spa", "--public")
    session = OAuth2Session(public["client_id"], token_endpoint_auth_method="none")
    token = session.fetch_token(
        url + "/token", grant_type="password", username="bob", password="builder"
    )
    assert _whoami(url, token["access_token"])["subject"] == "bob"


def test_authlib_httpx_client(server: tuple[Flask, str]) -> None:
    from authlib.integrations.httpx_client import OAuth2Client

    app, url = server
    creds = register(app)
    with OAuth2Client(creds["client_id"], creds["client_secret"], scope="view") as client:
        token = client.fetch_token(url + "/token", grant_type="client_credentials")
        assert token["scope"] == "view"
        assert client.get(url + "/orders").status_code == 200
        refreshed = client.refresh_token(url + "/token", refresh_token=token["refresh_token"])
        assert client.revoke_token(url + "/revoke", refreshed["access_token"]).status_code == 200
    assert (
        requests.get(
            url + "/whoami", headers=bearer(refreshed["access_token"]), timeout=10
        ).status_code
        == 401
    )


def test_pyjwt_verifies_with_published_jwks_as_another_service_would(
    server: tuple[Flask, str],
) -> None:
    app, url = server
    creds = register(app)
    token = requests.post(
        url + "/token",
        data={"grant_type": "client_credentials"},
        auth=(creds["client_id"], creds["client_secret"]),
        timeout=10,
    ).json()["access_token"]
    metadata = requests.get(url + "/.well-known/oauth-authorization-server", timeout=10).json()
    signing_key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience=metadata["issuer"],
        issuer=metadata["issuer"],
    )
    assert claims["client_id"] == creds["client_id"] and claims["scope"] == "all"
    assert {"iss", "sub", "aud", "exp", "iat", "jti", "client_id"} <= claims.keys()
