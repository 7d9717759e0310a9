"""``TokenGuardMiddleware`` in front of a plain WSGI application."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
import requests
from flask import Flask
from werkzeug.test import Client as WerkzeugClient

from flask_tokenguard import TokenGuardMiddleware
from flask_tokenguard.web.middleware import ENVIRON_KEY
from flask_tokenguard.web.middleware import Rules
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import get_token
from tests.helpers import register


class Client(WerkzeugClient):
    """A WSGI test client whose requests come from loopback, as Flask's test client's do."""

    def open(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        kwargs.setdefault("environ_base", {"REMOTE_ADDR": "127.0.0.1"})
        return super().open(*args, **kwargs)


RULES: Rules = {
    "/api/": "view",
    ("/api/orders", "POST"): "all",
    "/api/health": None,
}


def legacy_app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
    """A WSGI app that knows nothing of Flask; echoes who called it."""
    token = environ.get(ENVIRON_KEY)
    body = {"path": environ["PATH_INFO"], "client": token.client_id if token else None}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


@pytest.fixture
def server_app(app_factory: t.Callable[..., Flask], tmp_path: Path) -> Flask:
    return app_factory(f"sqlite:///{tmp_path / 'shared.sqlite3'}")


@pytest.fixture
def tokens(server_app: Flask) -> dict[str, str]:
    creds = register(server_app)
    client = server_app.test_client()
    return {
        "all": get_token(client, creds).get_json()["access_token"],
        "view": get_token(client, creds, scope="view").get_json()["access_token"],
        "client_id": creds["client_id"],
    }


@pytest.fixture(params=["shared-app", "config"])
def guarded(request: pytest.FixtureRequest, server_app: Flask, tmp_path: Path) -> Client:
    """The middleware sharing the Flask server's state, or built from config on its store."""
    if request.param == "shared-app":
        middleware = TokenGuardMiddleware(legacy_app, RULES, app=server_app)
    else:
        middleware = TokenGuardMiddleware(
            legacy_app,
            RULES,
            config={"TOKENGUARD_STORE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}"},
        )
    return Client(middleware)


def test_unmatched_and_open_paths_pass_through(guarded: Client) -> None:
    assert guarded.get("/").status_code == 200
    response = guarded.get("/api/health")
    assert response.status_code == 200 and response.get_json()["client"] is None


def test_guarded_path_needs_a_token(guarded: Client) -> None:
    response = guarded.get("/api/orders")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokenguard"'


def test_valid_token_reaches_the_app_in_the_environ(
    guarded: Client, tokens: dict[str, str]
) -> None:
    response = guarded.get("/api/orders", headers=bearer(tokens["view"]))
    assert response.status_code == 200 and response.get_json()["client"] == tokens["client_id"]


def test_method_rule_needs_its_scope(guarded: Client, tokens: dict[str, str]) -> None:
    refused = guarded.post("/api/orders", headers=bearer(tokens["view"]))
    assert refused.status_code == 403 and refused.get_json()["error"] == "insufficient_scope"
    assert 'scope="all"' in refused.headers["WWW-Authenticate"]
    assert guarded.post("/api/orders", headers=bearer(tokens["all"])).status_code == 200


@pytest.mark.parametrize("path", ["//api/orders", "/API/orders", "/api//orders"])
def test_path_tricks_do_not_slip_past_a_rule(guarded: Client, path: str) -> None:
    # PATH_INFO set directly: the test client would read "//api" as a host name.
    assert guarded.get("/", environ_overrides={"PATH_INFO": path}).status_code == 401


@pytest.mark.parametrize(
    "path", ["/api/./orders", "/x/../api/orders", "/api/health/../orders", "/api/..", "/."]
)
def test_dot_segments_are_refused_not_resolved(guarded: Client, path: str) -> None:
    response = guarded.get("/", environ_overrides={"PATH_INFO": path})
    assert response.status_code == 400
    assert response.json == {
        "error": "invalid_request",
        "error_description": "The request path holds a dot segment.",
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_dots_inside_a_segment_are_plain_names(guarded: Client) -> None:
    response = guarded.get("/", environ_overrides={"PATH_INFO": "/api/health/...x"})
    assert response.status_code == 200 and response.get_json()["path"] == "/api/health/...x"


@pytest.mark.parametrize("path", ["/api/health-internal", "/api/healthz", "/api/health.json"])
def test_prefixes_match_whole_segments(guarded: Client, path: str) -> None:
    assert guarded.get(path).status_code == 401


def test_an_open_prefix_covers_its_subpaths(guarded: Client) -> None:
    assert guarded.get("/api/health/live").status_code == 200


def test_non_ascii_rules_match_their_utf8_paths(tmp_path: Path) -> None:
    middleware = TokenGuardMiddleware(
        legacy_app,
        {"/bestellungen/übersicht": "view", "/": None},
        config={"TOKENGUARD_STORE_URL": "memory://", "TESTING": True},
    )
    client = Client(middleware)
    # The test client hands PATH_INFO over as WSGI servers do: UTF-8 bytes as latin-1.
    assert client.get("/bestellungen/%C3%BCbersicht").status_code == 401
    assert client.get("/bestellungen/%C3%9Cbersicht/x").status_code == 401
    assert client.get("/bestellungen/uebersicht").status_code == 200


@pytest.mark.server
@pytest.mark.parametrize("raw", ["/admin/..", "/admin/%2e%2e", "/admin%2F..", "/admin/%2E/x"])
def test_dot_segments_are_refused_over_a_socket(live_server: t.Any, raw: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    mounted = DispatcherMiddleware(legacy_app, {"/admin": legacy_app})
    middleware = TokenGuardMiddleware(
        mounted,
        {"/admin": "all"},
        config={"TOKENGUARD_STORE_URL": "memory://", "TESTING": True},
    )
    url = urlsplit(live_server(middleware))
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", raw)  # sent as is, not normalised by a client library
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 400 and body["error"] == "invalid_request"


def test_remembered_decisions_keep_methods_apart(guarded: Client, tokens: dict[str, str]) -> None:
    view = bearer(tokens["view"])
    for _ in range(2):  # the second time from the remembered decisions
        assert guarded.get("/api/orders", headers=view).status_code == 200
        assert guarded.post("/api/orders", headers=view).status_code == 403
        lower = guarded.open("/api/orders", method="post", headers=view)
        assert lower.status_code == 403


def test_remembered_decisions_are_bounded(
    monkeypatch: pytest.MonkeyPatch, tokens: dict[str, str], server_app: Flask
) -> None:
    from flask_tokenguard.web import middleware as middleware_module

    monkeypatch.setattr(middleware_module, "DECISION_CACHE_SIZE", 8)
    middleware = TokenGuardMiddleware(legacy_app, RULES, app=server_app)
    client = Client(middleware)
    for i in range(30):
        assert client.get(f"/open/{i}").status_code == 200
        assert len(middleware._decided) <= 8
    assert client.post("/api/orders", headers=bearer(tokens["view"])).status_code == 403
    assert client.get("/api/orders").status_code == 401
    # A long path is decided each time, never kept: memory stays small whatever is sent.
    middleware._decided.clear()
    long_path = "/api/orders/" + "x" * 5000
    assert client.get(long_path).status_code == 401
    assert middleware._decided == {}


def test_head_is_guarded_like_get(tmp_path: Path) -> None:
    middleware = TokenGuardMiddleware(
        legacy_app,
        {("/reports", "GET"): "view"},
        config={"TOKENGUARD_STORE_URL": "memory://", "TESTING": True},
    )
    assert Client(middleware).head("/reports").status_code == 401


def test_bad_token_is_invalid_token(guarded: Client) -> None:
    response = guarded.get("/api/orders", headers=bearer("not-a-jwt"))
    assert (
        response.status_code == 401
        and 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    )


def test_plain_http_from_afar_is_refused(guarded: Client, tokens: dict[str, str]) -> None:
    response = guarded.get(
        "/api/orders", headers=bearer(tokens["view"]), environ_base={"REMOTE_ADDR": "192.0.2.1"}
    )
    assert (
        response.status_code == 400
        and response.get_json()["error_description"] == "HTTPS required."
    )


def test_logoff_on_the_server_reaches_the_middleware(
    server_app: Flask, tokens: dict[str, str]
) -> None:
    guarded = Client(TokenGuardMiddleware(legacy_app, RULES, app=server_app))
    assert guarded.get("/api/orders", headers=bearer(tokens["all"])).status_code == 200
    assert (
        server_app.test_client().post("/logoff", headers=bearer(tokens["all"])).status_code == 204
    )
    assert guarded.get("/api/orders", headers=bearer(tokens["all"])).status_code == 401


def test_serve_endpoints_gives_a_plain_wsgi_app_a_token_endpoint(tmp_path: Path) -> None:
    config = {
        "TOKENGUARD_STORE_URL": f"sqlite:///{tmp_path / 'mw.sqlite3'}",
        "TOKENGUARD_URL_PREFIX": "/oauth",
    }
    middleware = TokenGuardMiddleware(legacy_app, RULES, config=config, serve_endpoints=True)
    assert middleware._app is not None
    creds = register(middleware._app)
    client = Client(middleware)
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    assert response.status_code == 200
    assert (
        client.get("/api/orders", headers=bearer(response.get_json()["access_token"])).status_code
        == 200
    )


def test_rules_must_be_paths() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        TokenGuardMiddleware(
            legacy_app, {"api": "view"}, config={"TOKENGUARD_STORE_URL": "memory://"}
        )


@pytest.mark.server
def test_middleware_under_waitress(
    server_app: Flask, tokens: dict[str, str], live_server: t.Any
) -> None:
    url = live_server(TokenGuardMiddleware(legacy_app, RULES, app=server_app))
    assert requests.get(url + "/api/orders", timeout=10).status_code == 401
    response = requests.get(url + "/api/orders", headers=bearer(tokens["view"]), timeout=10)
    assert response.status_code == 200 and response.json()["client"] == tokens["client_id"]
