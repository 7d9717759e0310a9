"""Errors are plain data in the product's logic and rendered once, at the Flask edge.

Also the request limits and alphabets checked before any store lookup, on every store.
"""

from __future__ import annotations

import base64
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask import jsonify

import flask_tokenguard
from flask_tokenguard import OAuthError
from flask_tokenguard import TokenGuard
from flask_tokenguard.errors import InsufficientScopeError
from flask_tokenguard.errors import InvalidClientError
from flask_tokenguard.errors import LicenseUnavailableError
from flask_tokenguard.errors import MissingTokenError
from flask_tokenguard.web.rendering import render
from tests.backends import BACKENDS
from tests.backends import isolated_store
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import get_token
from tests.helpers import register


def test_errors_are_plain_data_not_http_responses() -> None:
    from werkzeug.exceptions import HTTPException

    error = LicenseUnavailableError(retry_after=42)
    assert HTTPException not in type(error).__mro__
    assert (error.error, error.status, error.headers) == (
        "license_unavailable",
        400,
        {"Retry-After": "42"},
    )
    assert error.to_dict()["error"] == "license_unavailable"


@pytest.mark.parametrize(
    ("error", "challenge"),
    [
        (MissingTokenError(), 'Bearer realm="shop"'),
        (
            InsufficientScopeError(["all"]),
            'Bearer realm="shop", error="insufficient_scope", error_description='
            '"The access token lacks a scope this resource requires.", scope="all"',
        ),
        (InvalidClientError(used_basic=True), 'Basic realm="shop"'),
        (InvalidClientError(), None),
    ],
)
def test_the_renderer_builds_the_challenge_from_the_data(
    error: OAuthError, challenge: str | None
) -> None:
    status, headers, body = render(error, "shop")
    assert dict(headers).get("WWW-Authenticate") == challenge
    assert dict(headers)["Cache-Control"] == "no-store"
    assert dict(headers)["Pragma"] == "no-cache"
    assert status == error.status and body.startswith(b'{"error": ')


def test_realm_reaches_a_basic_challenge_through_http(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory(REALM="warehouse")
    response = app.test_client().post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic("tg_nobody", "x")
    )
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="warehouse"'


def _own_handler(error: OAuthError) -> t.Any:
    return jsonify(mine=error.error), error.status


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_apps_own_oauth_error_handler_wins(when: str) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, TOKENGUARD_STORE_URL="memory://")
    if when == "before":
        app.register_error_handler(flask_tokenguard.OAuthError, _own_handler)
    TokenGuard(app)
    if when == "after":
        app.register_error_handler(flask_tokenguard.OAuthError, _own_handler)

    @app.get("/guarded")
    @flask_tokenguard.require_token("view")
    def guarded() -> str:
        return "ok"

    client = app.test_client()
    guarded_response = client.get("/guarded")
    assert (guarded_response.status_code, guarded_response.json) == (401, {"mine": "invalid_token"})
    endpoint_response = client.post("/token", data={})
    assert (endpoint_response.status_code, endpoint_response.json) == (
        400,
        {"mine": "invalid_request"},
    )


@pytest.fixture(params=BACKENDS)
def any_store_app(
    request: pytest.FixtureRequest, tmp_path: Path, app_factory: t.Callable[..., Flask]
) -> t.Iterator[Flask]:
    with isolated_store(request.param, tmp_path) as (url, options):
        yield app_factory(url, STORE_OPTIONS=options)


def _raw_basic(raw_id: str, secret: str = "x") -> dict[str, str]:
    encoded = base64.b64encode(f"{raw_id}:{secret}".encode()).decode()
    return {"Authorization": "Basic " + encoded}


@pytest.mark.parametrize(
    "raw_id", ["tg_a%00b", "tg_\u00e9", "a b", "x" * 257, "tg_a%27--", "tg_\U0001f600"]
)
def test_client_ids_outside_their_alphabet_are_invalid_client(
    any_store_app: Flask, raw_id: str
) -> None:
    client = any_store_app.test_client()
    response = client.post(
        "/token", data={"grant_type": "client_credentials"}, headers=_raw_basic(raw_id)
    )
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    body_response = client.post(
        "/token",
        data={"grant_type": "client_credentials", "client_id": raw_id.replace("%00", "")},
    )
    assert (
        body_response.status_code == 400 and body_response.get_json()["error"] == "invalid_client"
    )


def test_request_limits_are_the_same_on_every_store(any_store_app: Flask) -> None:
    creds = register(
        any_store_app, "limits", "--grant", "password", "--grant", "client_credentials"
    )
    client = any_store_app.test_client()
    long_scope = get_token(client, creds, scope="view " * 200 + "view")
    assert long_scope.status_code == 400 and long_scope.get_json()["error"] == "invalid_scope"
    many = get_token(client, creds, scope=" ".join(f"s{i}" for i in range(21)))
    assert many.status_code == 400 and many.get_json()["error"] == "invalid_scope"
    for field in ("username", "password"):
        params = {"grant_type": "password", "username": "alice", "password": "pw"}
        params[field] = "u" * 257
        response = client.post(
            "/token", data=params, headers=basic(creds["client_id"], creds["client_secret"])
        )
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    assert get_token(client, creds, scope="view").status_code == 200


def test_bearer_errors_are_rendered_for_guarded_views(client: t.Any) -> None:
    response = client.get("/orders", headers=bearer("nope"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith(
        'Bearer realm="tokenguard", error="invalid_token"'
    )
    assert response.headers["Cache-Control"] == "no-store"
