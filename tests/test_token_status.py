"""Revocation (RFC 7009) and introspection (RFC 7662) over HTTP."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask

from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import Clock
from tests.helpers import get_token
from tests.helpers import register


@pytest.fixture
def licensed(app_factory: t.Callable[..., Flask]) -> Flask:
    return app_factory(LICENSES=2)


def _ok(response: t.Any) -> dict[str, t.Any]:
    assert response.status_code == 200, response.get_json()
    body: dict[str, t.Any] = response.get_json()
    return body


def _refresh(client: t.Any, creds: dict[str, t.Any], refresh_token: str, **params: str) -> t.Any:
    return client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, **params},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )


def _licenses(app: Flask) -> dict[str, t.Any]:
    counts: dict[str, t.Any] = cli(app, "licenses")
    return counts


# -- seats -----------------------------------------------------------------------------------


def _revoke(client: t.Any, creds: dict[str, t.Any], **params: str) -> t.Any:
    return client.post(
        "/revoke", data=params, headers=basic(creds["client_id"], creds["client_secret"])
    )


def test_revoking_a_refresh_token_ends_the_session(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    body = _ok(get_token(client, creds))
    response = _revoke(client, creds, token=body["refresh_token"], token_type_hint="refresh_token")
    assert response.status_code == 200 and response.data == b""
    assert _licenses(licensed)["in_use"] == 0
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 401


def test_revoking_an_access_token_kills_only_that_token(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    body = _ok(get_token(client, creds))
    # The seed's form: the token in an access_token parameter.
    assert _revoke(client, creds, access_token=body["access_token"]).status_code == 200
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 401
    # The session goes on: a refresh gives a working token, and the seat is still held.
    fresh = _ok(_refresh(client, creds, body["refresh_token"]))
    assert client.get("/whoami", headers=bearer(fresh["access_token"])).status_code == 200
    assert _licenses(licensed)["in_use"] == 1


def test_revoke_with_a_misleading_hint_still_finds_the_token(app: Flask) -> None:
    client = app.test_client()
    creds = register(app)
    body = _ok(get_token(client, creds))
    _revoke(client, creds, token=body["refresh_token"], token_type_hint="access_token")
    assert _refresh(client, creds, body["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_revoke_unknown_token_is_200(app: Flask) -> None:
    client = app.test_client()
    response = _revoke(client, register(app), token="never-issued")
    assert response.status_code == 200 and response.data == b""


def test_revoke_needs_client_authentication(app: Flask) -> None:
    response = app.test_client().post("/revoke", data={"token": "x"})
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_client"


def test_a_client_cannot_revoke_another_clients_tokens(app: Flask) -> None:
    client = app.test_client()
    alice, mallory = register(app, "alice"), register(app, "mallory")
    body = _ok(get_token(client, alice))
    assert _revoke(client, mallory, token=body["refresh_token"]).status_code == 200
    assert _revoke(client, mallory, token=body["access_token"]).status_code == 200
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    _ok(_refresh(client, alice, body["refresh_token"]))


# -- administrators end sessions -------------------------------------------------------------------


def test_introspect_live_and_dead_tokens(app: Flask) -> None:
    client = app.test_client()
    creds = register(app)
    body = _ok(get_token(client, creds, scope="view"))
    auth = basic(creds["client_id"], creds["client_secret"])
    live = client.post("/introspect", data={"token": body["access_token"]}, headers=auth).get_json()
    assert (
        live["active"] is True
        and live["scope"] == "view"
        and live["client_id"] == creds["client_id"]
    )
    refresh = client.post(
        "/introspect", data={"token": body["refresh_token"]}, headers=auth
    ).get_json()
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"
    client.post("/logoff", headers=bearer(body["access_token"]))
    for token in (body["access_token"], body["refresh_token"], "garbage"):
        assert client.post("/introspect", data={"token": token}, headers=auth).json == {
            "active": False
        }


# -- revocation across processes sharing a store -------------------------------------------------


def test_revocation_outlives_exp_by_the_clock_skew(
    app_factory: t.Callable[..., Flask], tmp_path: Path, clock: Clock
) -> None:
    url = f"sqlite:///{tmp_path / 'skew.sqlite3'}"
    one = app_factory(url, ACCESS_TOKEN_TTL=60, CLOCK_SKEW=30)
    two = app_factory(url, ACCESS_TOKEN_TTL=60, CLOCK_SKEW=30)
    creds = register(one)
    body = _ok(get_token(one.test_client(), creds))
    assert _revoke(one.test_client(), creds, token=body["access_token"]).status_code == 200
    clock(65)  # past exp, within exp + skew: still a token the guard would take
    _ok(get_token(one.test_client(), creds))  # any later write sweeps expired rows
    assert two.test_client().get("/whoami", headers=bearer(body["access_token"])).status_code == 401
