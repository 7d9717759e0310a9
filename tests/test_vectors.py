"""``POST /token`` driven by ``tests/vectors/token_endpoint.json`` (pyca-style vectors).

Each vector is one request and what a client must see: the status, the RFC 6749 5.2
``error`` (or, for a 200, the granted ``scope``) and headers. The same vectors run
through Flask's test client and, marked ``server``, over a real socket under waitress.

Vector format:

- ``request.headers``: literal strings, except ``{"basic": "ID:SECRET"}``, which becomes
  ``Basic base64(ID:SECRET)`` (so vectors can name generated credentials); an optional
  ``"scheme"`` spells the scheme differently.
- the body is one of ``form`` (an object, or a list of pairs to repeat a name: sent
  ``application/x-www-form-urlencoded``), ``json`` (any JSON value, sent
  ``application/json``) or ``body`` + ``content_type`` (``body``'s code points 0-255 are
  the bytes sent, so ``\\u00ff`` is the byte 0xFF; a null ``content_type`` sends none).
- placeholders in strings, filled in after the clients are created through the CLI:
  ``{client_id}``/``{client_secret}`` (confidential, grants client_credentials and
  refresh_token, alias ``{alias}``), ``{client_id_pct}``/``{client_secret_pct}`` (the same,
  every byte percent-encoded), ``{view_id}``/``{view_secret}`` (scope view only),
  ``{pw_id}``/``{pw_secret}`` (confidential, grants password and refresh_token),
  ``{public_id}`` (public), ``{disabled_id}``/``{disabled_secret}`` (disabled), and
  ``{big}`` (70,000 bytes of padding). User ``alice`` has password ``wonderland``.
- ``expect.headers``: a value is compared exactly, except ``Content-Type`` (by media
  type) and ``WWW-Authenticate`` (by auth scheme, since the realm is configurable);
  ``null`` means the header must be absent.
"""

from __future__ import annotations

import base64
import json
import typing as t
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from flask import Flask
from werkzeug.datastructures import Headers

from tests.helpers import cli
from tests.helpers import register

VECTORS: list[dict[str, t.Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "token_endpoint.json").read_text()
)
ALIAS = "billing-service"


def _pct(value: str) -> str:
    return "".join(f"%{byte:02X}" for byte in value.encode())


@pytest.fixture
def vector_app(app_factory: t.Callable[..., Flask]) -> tuple[Flask, dict[str, str]]:
    """The sample app with five seats, the vectors' clients and user ``alice``."""
    app = app_factory(LICENSES=5)
    main = register(app, "vectors", "--alias", ALIAS)
    view = register(app, "view only", "--scope", "view")
    pw = register(app, "password app", "--grant", "password", "--grant", "refresh_token")
    public = register(app, "public app", "--public")
    disabled = register(app, "disabled app")
    cli(app, "disable-client", disabled["client_id"])
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    values = {
        "client_id": main["client_id"],
        "client_secret": main["client_secret"],
        "client_id_pct": _pct(main["client_id"]),
        "client_secret_pct": _pct(main["client_secret"]),
        "alias": ALIAS,
        "view_id": view["client_id"],
        "view_secret": view["client_secret"],
        "pw_id": pw["client_id"],
        "pw_secret": pw["client_secret"],
        "public_id": public["client_id"],
        "disabled_id": disabled["client_id"],
        "disabled_secret": disabled["client_secret"],
        "big": "x" * 70_000,
    }
    return app, values


def _fill(value: t.Any, values: dict[str, str]) -> t.Any:
    if isinstance(value, str):
        for name, replacement in values.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def build_request(
    vector: dict[str, t.Any], values: dict[str, str]
) -> tuple[str, str, dict[str, str], bytes | None]:
    """Return (method, path, headers, body bytes) for a vector."""
    request = _fill(vector["request"], values)
    headers: dict[str, str] = {}
    for name, value in request.get("headers", {}).items():
        if isinstance(value, dict):
            scheme = value.get("scheme", "Basic")
            value = f"{scheme} " + base64.b64encode(value["basic"].encode()).decode()
        headers[name] = value
    body: bytes | None = None
    if "form" in request:
        form = request["form"]
        pairs = list(form.items()) if isinstance(form, dict) else [tuple(p) for p in form]
        body = urlencode(pairs).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif "json" in request:
        body = json.dumps(request["json"]).encode()
        headers["Content-Type"] = "application/json"
    elif "body" in request:
        body = request["body"].encode("latin-1")
        if request.get("content_type"):
            headers["Content-Type"] = request["content_type"]
    return request["method"], request["path"], headers, body


def check_response(
    app: Flask,
    vector: dict[str, t.Any],
    status: int,
    headers: t.Mapping[str, str] | Headers,
    body: bytes,
) -> None:
    """Assert what the vector promises; after an error, assert nothing was stored."""
    expect = vector["expect"]
    assert status != 500
    assert status == expect["status"], body[:300]
    for name, wanted in expect["headers"].items():
        got = headers.get(name)
        if wanted is None:
            assert got is None, f"{name}: {got}"
        elif name.lower() == "content-type":
            assert got is not None and got.split(";")[0].strip() == wanted
        elif name.lower() == "www-authenticate":
            assert got is not None and got.split()[0].lower() == wanted.lower()
        else:
            assert got == wanted, f"{name}: {got!r}"
    data = json.loads(body)
    if expect["error"] is None:
        assert data["token_type"] == "Bearer"
        assert type(data["expires_in"]) is int and data["expires_in"] > 0
        assert data["scope"] == expect["scope"]
        assert isinstance(data["refresh_token"], str) and data["refresh_token"]
        assert isinstance(data["access_token"], str) and data["access_token"]
    else:
        assert data["error"] == expect["error"]
        assert "access_token" not in data
        # A refused request stores nothing: no session, no seat.
        assert cli(app, "sessions") == []
        assert cli(app, "licenses")["in_use"] == 0


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_token_endpoint(vector: dict[str, t.Any], vector_app: tuple[Flask, dict[str, str]]) -> None:
    app, values = vector_app
    method, path, headers, body = build_request(vector, values)
    response = app.test_client().open(path, method=method, headers=headers, data=body)
    check_response(app, vector, response.status_code, response.headers, response.get_data())


@pytest.mark.server
@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_token_endpoint_over_socket(
    vector: dict[str, t.Any],
    vector_app: tuple[Flask, dict[str, str]],
    live_server: t.Callable[[Flask], str],
) -> None:
    app, values = vector_app
    base_url = live_server(app)
    method, path, headers, body = build_request(vector, values)
    with requests.Session() as http:
        http.trust_env = False  # never route loopback requests through an HTTP_PROXY
        response = http.request(
            method, base_url + path, headers=headers, data=body, timeout=30, allow_redirects=False
        )
    check_response(app, vector, response.status_code, response.headers, response.content)
