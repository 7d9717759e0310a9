"""The route guard: RFC 6750 challenges, scopes, token tampering, HTTPS, current_token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import typing as t

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask import jsonify

from flask_tokenguard import current_token
from flask_tokenguard import require_token
from flask_tokenguard import TokenGuard
from flask_tokenguard.core.tokens import generate_signing_key
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import get_token
from tests.helpers import register


@pytest.fixture
def creds(app: Flask) -> dict[str, t.Any]:
    return register(app)


def basic_header(creds: dict[str, t.Any]) -> str:
    return basic(creds["client_id"], creds["client_secret"])["Authorization"]


def _token(client: t.Any, creds: dict[str, t.Any], **params: str) -> str:
    response = get_token(client, creds, **params)
    assert response.status_code == 200, response.json
    token: str = response.get_json()["access_token"]
    return token


def test_missing_token_gets_bare_bearer_challenge(client: t.Any) -> None:
    response = client.get("/orders")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokenguard"'
    assert response.get_json()["error"] == "invalid_token"


def test_other_scheme_gets_bare_challenge(client: t.Any) -> None:
    response = client.get("/orders", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert response.status_code == 401
    assert "error=" not in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer abc", "Bearer a.b.c", "Bearer a b", "Bearer " + "x" * 5000],
)
def test_malformed_token_is_invalid_token(client: t.Any, header: str) -> None:
    response = client.get("/orders", headers={"Authorization": header})
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tokenguard", error="invalid_token"')


def test_valid_token_reaches_view_and_current_token(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    body = response.json
    assert body["client_id"] == creds["client_id"]
    assert body["subject"] == creds["client_id"]
    assert body["scopes"] == ["all"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert body["session_id"] == claims["sid"]
    assert body["expires_at"] == claims["exp"]


def test_bearer_scheme_is_case_insensitive(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    assert client.get("/whoami", headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_token_in_query_string_is_not_accepted(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    assert client.get(f"/whoami?access_token={token}").status_code == 401


def test_all_implies_view(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds, scope="all")
    assert client.get("/orders", headers=bearer(token)).status_code == 200


def test_view_token_lacks_all(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds, scope="view")
    response = client.post("/orders", json={"item": "x"}, headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="all"' in response.headers["WWW-Authenticate"]


def test_all_token_may_write(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    response = client.post("/orders", json={"item": "Bolt", "quantity": 2}, headers=bearer(token))
    assert response.status_code == 201
    assert response.get_json()["created_by"] == creds["client_id"]


def _tamper(token: str, **changes: t.Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_tampered_scope_is_refused(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds, scope="view")
    response = client.post(
        "/orders", json={"item": "x"}, headers=bearer(_tamper(token, scope="all"))
    )
    assert response.status_code == 401


def test_tampered_token_is_refused_even_after_the_original_was_cached(
    client: t.Any, creds: dict[str, t.Any]
) -> None:
    token = _token(client, creds)
    assert client.get("/whoami", headers=bearer(token)).status_code == 200
    forged = _tamper(token, sub="someone-else")
    assert client.get("/whoami", headers=bearer(forged)).status_code == 401


def test_token_signed_by_another_key_is_refused(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    stranger = generate_signing_key("RS256", time.time())
    forged = jwt.encode(claims, stranger.private_pem, algorithm="RS256", headers=header)
    assert client.get("/whoami", headers=bearer(forged)).status_code == 401


def test_alg_none_and_hs256_with_public_key_are_refused(
    client: t.Any, creds: dict[str, t.Any]
) -> None:
    token = _token(client, creds)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    # PyJWT takes "" as the absent key of alg=none (its type hints leave out None).
    unsigned = jwt.encode(
        claims, "", algorithm="none", headers={"kid": header["kid"], "typ": "at+jwt"}
    )
    assert client.get("/whoami", headers=bearer(unsigned)).status_code == 401
    # The classic confusion attack: HMAC keyed with the published public key.
    state = client.application.extensions["tokenguard"].state(client.application)
    public_pem = state.keys.signer(time.time()).public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        b64(json.dumps({"alg": "HS256", "kid": header["kid"], "typ": "at+jwt"}).encode())
        + "."
        + b64(json.dumps(claims).encode())
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert client.get("/whoami", headers=bearer(signing_input + "." + b64(mac))).status_code == 401


def test_unknown_kid_is_refused(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    key = client.application.extensions["tokenguard"].state(client.application).keys
    signer = key.signer(time.time())
    forged = jwt.encode(
        claims, signer.private, algorithm="RS256", headers={**header, "kid": "nope"}
    )
    assert client.get("/whoami", headers=bearer(forged)).status_code == 401


def test_token_without_at_jwt_type_is_refused(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    state = client.application.extensions["tokenguard"].state(client.application)
    signer = state.keys.signer(time.time())
    id_token_like = jwt.encode(
        claims, signer.private, algorithm="RS256", headers={"kid": header["kid"], "typ": "JWT"}
    )
    assert client.get("/whoami", headers=bearer(id_token_like)).status_code == 401


def test_expired_token_is_refused(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_factory(ACCESS_TOKEN_TTL=60)
    client = app.test_client()
    token = _token(client, register(app))
    assert client.get("/whoami", headers=bearer(token)).status_code == 200
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 61)
    response = client.get("/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_access_token_from_another_issuer_config_is_refused(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory(ISSUER="https://auth.example.com")
    client = app.test_client()
    token = _token(client, register(app))
    assert (
        jwt.decode(token, options={"verify_signature": False})["iss"] == "https://auth.example.com"
    )
    assert client.get("/whoami", headers=bearer(token)).status_code == 200
    state = app.extensions["tokenguard"].state(app)
    claims = jwt.decode(token, options={"verify_signature": False})
    signer = state.keys.signer(time.time())
    header = jwt.get_unverified_header(token)
    other = jwt.encode(
        {**claims, "iss": "https://evil.example"}, signer.private, algorithm="RS256", headers=header
    )
    assert client.get("/whoami", headers=bearer(other)).status_code == 401


def test_es256_tokens_verify(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(SIGNING_ALG="ES256")
    client = app.test_client()
    token = _token(client, register(app))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert client.get("/whoami", headers=bearer(token)).status_code == 200


def test_current_token_outside_guarded_view_raises_clearly(app: Flask) -> None:
    with app.test_request_context("/"):
        with pytest.raises(RuntimeError, match="require_token"):
            current_token.client_id  # noqa: B018


def test_blueprint_guard_via_before_request(app_factory: t.Callable[..., Flask]) -> None:
    from flask import Blueprint

    app = app_factory()
    admin = Blueprint("admin", __name__)
    admin.before_request(require_token("all"))

    @admin.get("/admin/ping")
    def ping() -> t.Any:
        return {"subject": current_token.subject}

    app.register_blueprint(admin)
    client = app.test_client()
    creds = register(app)
    assert client.get("/admin/ping").status_code == 401
    assert (
        client.get("/admin/ping", headers=bearer(_token(client, creds, scope="view"))).status_code
        == 403
    )
    response = client.get("/admin/ping", headers=bearer(_token(client, creds)))
    assert response.status_code == 200 and response.get_json()["subject"] == creds["client_id"]


def test_several_scopes_are_all_required(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(
        SCOPES={"view": "r", "all": "w", "audit": "a"}, SCOPE_IMPLIES={"all": ["view"]}
    )

    @app.get("/audit")
    @require_token("view", "audit")
    def audit() -> t.Any:
        return jsonify(ok=True)

    client = app.test_client()
    creds = register(app)
    assert (
        client.get("/audit", headers=bearer(_token(client, creds, scope="all"))).status_code == 403
    )
    assert (
        client.get("/audit", headers=bearer(_token(client, creds, scope="all audit"))).status_code
        == 200
    )


def test_async_view_is_supported(app_factory: t.Callable[..., Flask]) -> None:
    pytest.importorskip("asgiref")
    app = app_factory()

    @app.get("/async")
    @require_token("view")
    async def async_view() -> t.Any:
        return {"client": current_token.client_id}

    client = app.test_client()
    creds = register(app)
    assert (
        client.get("/async", headers=bearer(_token(client, creds))).get_json()["client"]
        == creds["client_id"]
    )


def test_one_guard_serves_two_apps(tmp_path: t.Any) -> None:
    guard = TokenGuard()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config.update(TESTING=True, TOKENGUARD_STORE_URL="memory://", TOKENGUARD_LICENSES=1)

        @app.get("/me")
        @require_token()
        def me() -> t.Any:
            return {"client": current_token.client_id}

        guard.init_app(app)
        apps.append(app)
    one, two = apps
    creds = register(one)
    token = _token(one.test_client(), creds)
    assert one.test_client().get("/me", headers=bearer(token)).status_code == 200
    # The other app has its own store and keys: the token means nothing there.
    assert two.test_client().get("/me", headers=bearer(token)).status_code == 401
    assert one.extensions["tokenguard"] is two.extensions["tokenguard"] is guard


def test_plain_http_from_remote_address_is_refused(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    response = client.get("/whoami", headers=bearer(token), environ_base=remote)
    assert response.status_code == 400
    assert response.json == {"error": "invalid_request", "error_description": "HTTPS required."}
    response = client.post("/token", data={"grant_type": "client_credentials"}, environ_base=remote)
    assert (
        response.status_code == 400
        and response.get_json()["error_description"] == "HTTPS required."
    )
    # The app's open routes are not touched.
    assert client.get("/health", environ_base=remote).status_code == 200


def test_https_from_remote_address_is_accepted(client: t.Any, creds: dict[str, t.Any]) -> None:
    token = _token(client, creds)
    response = client.get(
        "/whoami",
        headers=bearer(token),
        base_url="https://api.example.com",
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert response.status_code == 200


def test_https_not_required_when_disabled(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(REQUIRE_HTTPS=False)
    client = app.test_client()
    token = _token(client, register(app))
    response = client.get(
        "/whoami", headers=bearer(token), environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert response.status_code == 200


def test_loopback_exemption_is_off_behind_a_trusted_proxy(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory(TRUSTED_PROXY="127.0.0.1")
    response = app.test_client().post("/token", data={"grant_type": "client_credentials"})
    assert (
        response.status_code == 400
        and response.get_json()["error_description"] == "HTTPS required."
    )


def test_trusted_proxy_header_is_believed_only_from_the_proxy(
    app_factory: t.Callable[..., Flask],
) -> None:
    """Under a server other than our runner, the peer is the proxy itself."""
    app = app_factory(TRUSTED_PROXY="10.0.0.1")
    client = app.test_client()
    creds = register(app)
    https = {"X-Forwarded-Proto": "https"}
    data = {"grant_type": "client_credentials"}
    auth = {"Authorization": basic_header(creds)}
    from_proxy = client.post(
        "/token", data=data, headers={**auth, **https}, environ_base={"REMOTE_ADDR": "10.0.0.1"}
    )
    assert from_proxy.status_code == 200
    spoofed = client.post(
        "/token", data=data, headers={**auth, **https}, environ_base={"REMOTE_ADDR": "10.0.0.2"}
    )
    assert (
        spoofed.status_code == 400 and spoofed.get_json()["error_description"] == "HTTPS required."
    )
    client_says = client.post(
        "/token",
        data=data,
        headers={**auth, "X-Forwarded-Proto": "https, http"},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert client_says.status_code == 400


@pytest.mark.server
def test_https_rule_over_a_real_socket(
    app_factory: t.Callable[..., Flask], live_server: t.Any
) -> None:
    """Loopback plain HTTP works; a proxy's X-Forwarded-Proto counts only from the proxy."""
    from flask_tokenguard.serving.runner import Runner

    app = app_factory(TRUSTED_PROXY="127.0.0.1")
    creds = register(app)
    runner = Runner(app, host="127.0.0.1", port=0)
    runner.start()
    try:
        url = runner.url
        auth = (creds["client_id"], creds["client_secret"])
        plain = requests.post(
            url + "/token", data={"grant_type": "client_credentials"}, auth=auth, timeout=10
        )
        assert plain.status_code == 400 and plain.json()["error_description"] == "HTTPS required."
        proxied = requests.post(
            url + "/token",
            data={"grant_type": "client_credentials"},
            auth=auth,
            timeout=10,
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"},
        )
        assert proxied.status_code == 200
    finally:
        runner.stop()

    # Without a trusted proxy, loopback plain HTTP is accepted and the header is ignored.
    app = app_factory()
    creds = register(app)
    url = live_server(app)
    response = requests.post(
        url + "/token",
        data={"grant_type": "client_credentials"},
        auth=(creds["client_id"], creds["client_secret"]),
        timeout=10,
    )
    assert response.status_code == 200
    assert (
        requests.get(
            url + "/whoami", headers=bearer(response.json()["access_token"]), timeout=10
        ).status_code
        == 200
    )


def test_verified_token_cache_stays_bounded(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(TOKEN_CACHE_SIZE=2)
    client = app.test_client()
    creds = register(app)
    tokens = [_token(client, creds, scope="view") for _ in range(5)]
    for token in tokens * 2:
        assert client.get("/whoami", headers=bearer(token)).status_code == 200
    verifier = app.extensions["tokenguard"].state(app).verifier
    assert len(verifier._cache) <= 2


def test_retired_key_stops_verifying_once_its_tokens_expired(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_tokenguard.core.tokens import KEY_REFRESH_SECONDS
    from tests.helpers import cli

    app = app_factory(ACCESS_TOKEN_TTL=60)
    client = app.test_client()
    creds = register(app)
    old_token = _token(client, creds)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    new_kid = cli(app, "rotate-keys")["kid"]
    new_token = _token(client, creds)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert {k["kid"] for k in client.get("/jwks.json").get_json()["keys"]} == {old_kid, new_kid}
    assert client.get("/whoami", headers=bearer(old_token)).status_code == 200
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60 + KEY_REFRESH_SECONDS + 1)
    assert [k["kid"] for k in client.get("/jwks.json").get_json()["keys"]] == [new_kid]
    # A token signed by the retired key is refused even if its own exp were later.
    state = app.extensions["tokenguard"].state(app)
    assert state.keys.verifier(old_kid, time.time()) is None


def test_signing_key_rotates_itself_after_key_rotation_seconds(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_factory(KEY_ROTATION=60)
    client = app.test_client()
    creds = register(app)
    first = _token(client, creds)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 61)
    second = _token(client, creds)
    third = _token(client, creds)
    kids = [jwt.get_unverified_header(token)["kid"] for token in (first, second, third)]
    assert kids[0] != kids[1] == kids[2]
    assert client.get("/whoami", headers=bearer(first)).status_code == 200
    assert len(client.get("/jwks.json").get_json()["keys"]) == 2
