"""Licence-counted sessions: seats, refresh rotation, replay, logoff, revocation, expiry."""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

import jwt
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


def test_default_scope_takes_a_seat_and_view_takes_none(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    assert _ok(get_token(client, creds))["scope"] == "all"
    assert _licenses(licensed) == {"in_use": 1, "total": 2}
    assert _ok(get_token(client, creds, scope="view"))["scope"] == "view"
    assert _licenses(licensed) == {"in_use": 1, "total": 2}


def test_no_free_seat_is_license_unavailable_with_retry_after(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    _ok(get_token(client, creds))
    _ok(get_token(client, creds))
    response = get_token(client, creds)
    assert response.status_code == 400
    assert response.get_json()["error"] == "license_unavailable"
    assert "view" in response.get_json()["error_description"]
    assert 1 <= int(response.headers["Retry-After"]) <= 1200
    assert response.headers["Cache-Control"] == "no-store"
    # scope view still works when every seat is held.
    assert _ok(get_token(client, creds, scope="view"))["scope"] == "view"
    assert _licenses(licensed) == {"in_use": 2, "total": 2}


def test_unlimited_when_no_licences_configured(app: Flask) -> None:
    client = app.test_client()
    creds = register(app)
    for _ in range(5):
        _ok(get_token(client, creds))
    assert _licenses(app) == {"in_use": 0, "total": None}


def test_expired_session_frees_its_seat_without_a_sweep(
    app_factory: t.Callable[..., Flask], clock: Clock
) -> None:
    app = app_factory(LICENSES=1, SESSION_TTL=60)
    client = app.test_client()
    creds = register(app)
    _ok(get_token(client, creds))
    assert get_token(client, creds).get_json()["error"] == "license_unavailable"
    clock(61)
    assert _licenses(app)["in_use"] == 0
    _ok(get_token(client, creds))


def test_retry_after_counts_down_to_the_earliest_expiry(
    app_factory: t.Callable[..., Flask], clock: Clock
) -> None:
    app = app_factory(LICENSES=1, SESSION_TTL=100)
    client = app.test_client()
    creds = register(app)
    _ok(get_token(client, creds))
    clock(40)
    assert get_token(client, creds).headers["Retry-After"] in ("60", "61")


def test_bad_requests_never_take_a_seat(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    bad = [
        client.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers=basic(creds["client_id"], "wrong"),
        ),
        client.post(
            "/token",
            data={"grant_type": "client_credentials", "scope": "admin"},
            headers=basic(creds["client_id"], creds["client_secret"]),
        ),
        client.post(
            "/token",
            data={"grant_type": "password", "username": "x", "password": "y"},
            headers=basic(creds["client_id"], creds["client_secret"]),
        ),
        client.post(
            "/token",
            data="grant_type=client_credentials&grant_type=client_credentials",
            content_type="application/x-www-form-urlencoded",
            headers=basic(creds["client_id"], creds["client_secret"]),
        ),
    ]
    assert [r.status_code for r in bad] == [401, 400, 400, 400]
    assert _licenses(licensed)["in_use"] == 0
    assert cli(licensed, "sessions") == []


# -- expires_in -------------------------------------------------------------------------------


def test_expires_in_never_outlives_the_session(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(ACCESS_TOKEN_TTL=900, SESSION_TTL=300)
    body = _ok(get_token(app.test_client(), register(app)))
    assert body["expires_in"] == 300
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300


def test_expires_in_is_the_access_ttl_when_shorter(app: Flask) -> None:
    body = _ok(get_token(app.test_client(), register(app)))
    assert body["expires_in"] == 900 and isinstance(body["expires_in"], int)


# -- refresh -----------------------------------------------------------------------------------


def test_refresh_rotates_and_keeps_the_seat(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    first = _ok(get_token(client, creds))
    second = _ok(_refresh(client, creds, first["refresh_token"]))
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "all"
    assert _licenses(licensed)["in_use"] == 1

    def sid(body: dict[str, t.Any]) -> str:
        return str(jwt.decode(body["access_token"], options={"verify_signature": False})["sid"])

    assert sid(first) == sid(second)
    assert client.get("/whoami", headers=bearer(second["access_token"])).status_code == 200


def test_refresh_extends_the_session(app_factory: t.Callable[..., Flask], clock: Clock) -> None:
    app = app_factory(LICENSES=1, SESSION_TTL=100, ACCESS_TOKEN_TTL=50)
    client = app.test_client()
    creds = register(app)
    body = _ok(get_token(client, creds))
    for _ in range(3):
        clock(80)
        body = _ok(_refresh(client, creds, body["refresh_token"]))
    # 240 s after the start the session lives on, and still holds the only seat.
    assert get_token(client, creds).get_json()["error"] == "license_unavailable"
    clock(101)
    assert _refresh(client, creds, body["refresh_token"]).get_json()["error"] == "invalid_grant"
    _ok(get_token(client, creds))


def test_replayed_refresh_token_ends_the_session(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    first = _ok(get_token(client, creds))
    second = _ok(_refresh(client, creds, first["refresh_token"]))
    replay = _refresh(client, creds, first["refresh_token"])
    assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_grant"
    # The whole session ended: the new refresh token and access token stop working too.
    assert _refresh(client, creds, second["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert client.get("/whoami", headers=bearer(second["access_token"])).status_code == 401
    assert _licenses(licensed)["in_use"] == 0


def test_refresh_token_of_another_client_is_invalid_grant(app: Flask) -> None:
    client = app.test_client()
    alice, mallory = register(app, "alice"), register(app, "mallory")
    body = _ok(get_token(client, alice))
    assert _refresh(client, mallory, body["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_refresh_may_narrow_but_not_widen_the_scope(app: Flask) -> None:
    client = app.test_client()
    creds = register(app)
    view = _ok(get_token(client, creds, scope="view"))
    widened = _refresh(client, creds, view["refresh_token"], scope="all")
    assert widened.get_json()["error"] == "invalid_scope"
    # The refused request did not use the refresh token up.
    narrowed = _ok(_refresh(client, creds, view["refresh_token"], scope="view"))
    full = _ok(get_token(client, creds))
    assert _ok(_refresh(client, creds, full["refresh_token"], scope="view"))["scope"] == "view"
    assert narrowed["scope"] == "view"


# -- logoff ------------------------------------------------------------------------------------


def test_logoff_with_bearer_frees_the_seat_at_once(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    body = _ok(get_token(client, creds))
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    response = client.post("/logoff", headers=bearer(body["access_token"]))
    assert response.status_code == 204 and response.data == b""
    assert _licenses(licensed)["in_use"] == 0
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 401
    assert _refresh(client, creds, body["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_logoff_with_refresh_token_in_body(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    body = _ok(get_token(client, creds))
    assert client.post("/logoff", data={"refresh_token": body["refresh_token"]}).status_code == 204
    assert _licenses(licensed)["in_use"] == 0
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 401


def test_logoff_with_json_refresh_token(licensed: Flask) -> None:
    client = licensed.test_client()
    body = _ok(get_token(client, register(licensed)))
    assert client.post("/logoff", json={"refresh_token": body["refresh_token"]}).status_code == 204


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"headers": {"Authorization": "Bearer nonsense"}},
        {"data": {"refresh_token": "unknown"}},
        {"data": b"refresh_token=x", "content_type": "text/plain"},
        {"json": {"refresh_token": 42}},
    ],
    ids=["nothing", "bad-bearer", "unknown-refresh", "text-plain", "non-string"],
)
def test_logoff_without_a_valid_token_is_401(app: Flask, kwargs: dict[str, t.Any]) -> None:
    response = app.test_client().post("/logoff", **kwargs)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_logoff_twice_is_401_the_second_time(app: Flask) -> None:
    client = app.test_client()
    body = _ok(get_token(client, register(app)))
    assert client.post("/logoff", headers=bearer(body["access_token"])).status_code == 204
    assert client.post("/logoff", headers=bearer(body["access_token"])).status_code == 401


# -- revocation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["rotate-secret", "{id}", "--yes"],
        ["disable-client", "{id}"],
        ["delete-client", "{id}", "--yes"],
    ],
    ids=["rotate", "disable", "delete"],
)
def test_admin_actions_end_the_clients_sessions(licensed: Flask, command: list[str]) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    other = register(licensed, "other")
    body = _ok(get_token(client, creds))
    kept = _ok(get_token(client, other))
    cli(licensed, *[part.format(id=creds["client_id"]) for part in command])
    assert _licenses(licensed)["in_use"] == 1
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 401
    assert client.get("/whoami", headers=bearer(kept["access_token"])).status_code == 200


def test_rotate_keep_sessions_keeps_them(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    body = _ok(get_token(client, creds))
    cli(licensed, "rotate-secret", creds["client_id"], "--yes", "--keep-sessions")
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    assert _licenses(licensed)["in_use"] == 1


def test_rotate_keep_sessions_spares_a_session_mid_refresh(
    licensed: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An administrator rotates the secret with --keep-sessions while a refresh is running."""
    client = licensed.test_client()
    creds = register(licensed)
    body = _ok(get_token(client, creds))
    store = licensed.extensions["tokenguard"].store(licensed)
    rotate_refresh = store.rotate_refresh

    def rotate_then_admin(*args: t.Any, **kwargs: t.Any) -> t.Any:
        result = rotate_refresh(*args, **kwargs)
        cli(licensed, "rotate-secret", creds["client_id"], "--yes", "--keep-sessions")
        return result

    monkeypatch.setattr(store, "rotate_refresh", rotate_then_admin)
    refreshed = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    monkeypatch.undo()
    assert refreshed.status_code == 200, refreshed.json
    assert (
        client.get("/whoami", headers=bearer(refreshed.get_json()["access_token"])).status_code
        == 200
    )
    assert _licenses(licensed)["in_use"] == 1


def test_cli_logoff_frees_seats(licensed: Flask) -> None:
    client = licensed.test_client()
    creds = register(licensed)
    first = _ok(get_token(client, creds))
    _ok(get_token(client, creds))
    sessions = cli(licensed, "sessions")
    assert len(sessions) == 2 and all(s["holds_seat"] for s in sessions)
    sid = jwt.decode(first["access_token"], options={"verify_signature": False})["sid"]
    assert cli(licensed, "logoff", sid) == {"ended": 1}
    assert _licenses(licensed)["in_use"] == 1
    assert client.get("/whoami", headers=bearer(first["access_token"])).status_code == 401
    assert cli(licensed, "logoff", "--all") == {"ended": 1}
    assert _licenses(licensed)["in_use"] == 0


# -- password grant and public clients ------------------------------------------------------------


@pytest.fixture
def public(app: Flask) -> dict[str, t.Any]:
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    return register(app, "mobile app", "--public")


def _password(
    client: t.Any, client_id: str, username: str = "alice", password: str = "wonderland", **kw: str
) -> t.Any:
    return client.post(
        "/token",
        data={"grant_type": "password", "username": username, "password": password, **kw},
        headers=basic(client_id),
    )


def test_password_grant_with_public_client(app: Flask, public: dict[str, t.Any]) -> None:
    client = app.test_client()
    body = _ok(_password(client, public["client_id"]))
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["client_id"] == public["client_id"]
    assert (
        client.get("/whoami", headers=bearer(body["access_token"])).get_json()["subject"] == "alice"
    )
    refreshed = _ok(
        client.post(
            "/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": public["client_id"],
            },
        )
    )
    assert refreshed["refresh_token"] != body["refresh_token"]


def test_password_grant_wrong_password_or_user(app: Flask, public: dict[str, t.Any]) -> None:
    client = app.test_client()
    for username, password in [("alice", "nope"), ("bob", "wonderland")]:
        response = _password(client, public["client_id"], username, password)
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_public_client_cannot_use_client_credentials(app: Flask, public: dict[str, t.Any]) -> None:
    response = app.test_client().post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic(public["client_id"])
    )
    assert response.status_code == 400 and response.get_json()["error"] == "unauthorized_client"


def test_public_client_sending_a_secret_is_refused(app: Flask, public: dict[str, t.Any]) -> None:
    response = _password(app.test_client(), public["client_id"] + ":", "alice", "wonderland")
    assert response.get_json()["error"] == "invalid_client"


def test_app_password_verifier_replaces_the_user_table(app_factory: t.Callable[..., Flask]) -> None:
    import sample_app

    app = app_factory()
    calls = []
    original = sample_app.guard._password_verifier

    @sample_app.guard.password_verifier
    def check(username: str, password: str) -> str | None:
        calls.append(username)
        return "user-42" if (username, password) == ("carol", "s3cret") else None

    try:
        public = register(app, "spa", "--public")
        client = app.test_client()
        body = _ok(_password(client, public["client_id"], "carol", "s3cret"))
        assert (
            jwt.decode(body["access_token"], options={"verify_signature": False})["sub"]
            == "user-42"
        )
        assert (
            _password(client, public["client_id"], "carol", "x").get_json()["error"]
            == "invalid_grant"
        )
        assert calls == ["carol", "carol"]
    finally:
        sample_app.guard._password_verifier = original


def test_user_passwords_are_stored_with_scrypt(app: Flask, public: dict[str, t.Any]) -> None:
    user = app.extensions["tokenguard"].store(app).get_user("alice")
    assert user.password_hash.startswith("scrypt$") and "wonderland" not in user.password_hash


def test_refresh_tokens_are_stored_only_as_hashes(app: Flask) -> None:
    import hashlib

    body = _ok(get_token(app.test_client(), register(app)))
    store = app.extensions["tokenguard"].store(app)
    (session,) = store.list_sessions(None, time.time())
    assert session.refresh_hash == hashlib.sha256(body["refresh_token"].encode()).hexdigest()
    assert body["refresh_token"] not in repr(session)


# -- introspection -------------------------------------------------------------------------------


def test_logoff_in_one_process_reaches_another_within_the_lag(
    app_factory: t.Callable[..., Flask], tmp_path: Path, clock: Clock
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    one = app_factory(url, LICENSES=1, REVOCATION_LAG=1)
    two = app_factory(url, LICENSES=1, REVOCATION_LAG=1)
    creds = register(one)
    body = _ok(get_token(one.test_client(), creds))
    assert two.test_client().get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    assert (
        one.test_client().post("/logoff", headers=bearer(body["access_token"])).status_code == 204
    )
    clock(1.01)
    assert two.test_client().get("/whoami", headers=bearer(body["access_token"])).status_code == 401


def test_revocation_lag_zero_checks_every_request(
    app_factory: t.Callable[..., Flask], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    one = app_factory(url, REVOCATION_LAG=0)
    two = app_factory(url, REVOCATION_LAG=0)
    body = _ok(get_token(one.test_client(), register(one)))
    assert two.test_client().get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    cli(one, "logoff", "--all")
    assert two.test_client().get("/whoami", headers=bearer(body["access_token"])).status_code == 401


def test_retry_after_is_one_second_when_a_seat_just_freed(licensed: Flask) -> None:
    from flask_tokenguard.core.sessions import seconds_until_seat

    state = licensed.extensions["tokenguard"].state(licensed)
    assert seconds_until_seat(state.store, state.settings, time.time()) == 1


def test_client_disabled_during_a_token_request_gets_no_session(app: Flask) -> None:
    """The admin's change lands between authentication and the new session."""
    import sample_app
    from flask_tokenguard.core import clients

    public = register(app, "spa", "--public")
    store = app.extensions["tokenguard"].store(app)
    original = sample_app.guard._password_verifier

    @sample_app.guard.password_verifier
    def disable_meanwhile(username: str, password: str) -> str:
        clients.set_enabled(store, public["client_id"], False, now=time.time())
        return username

    try:
        response = _password(app.test_client(), public["client_id"], "carol", "pw")
    finally:
        sample_app.guard._password_verifier = original
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    assert cli(app, "sessions") == []


def test_licensed_scopes_must_be_configured(app_factory: t.Callable[..., Flask]) -> None:
    from flask_tokenguard import ConfigurationError

    with pytest.raises(ConfigurationError, match="TOKENGUARD_LICENSED_SCOPES"):
        app_factory(LICENSED_SCOPES=["ALL"])


# -- lockout -------------------------------------------------------------------------------------


def test_requests_that_end_nothing_do_not_wait_for_the_store(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a request that ended a session or revoked a token re-reads the revocations."""
    creds = register(app)
    store = app.extensions["tokenguard"].store(app)
    polls: list[int] = []
    real = store.revocations_since

    def counted(seq: int, now: float) -> tuple[dict[str, float], int]:
        polls.append(seq)
        result: tuple[dict[str, float], int] = real(seq, now)
        return result

    monkeypatch.setattr(store, "revocations_since", counted)
    client = app.test_client()
    auth = basic(creds["client_id"], creds["client_secret"])
    junk = client.post("/token", data={"grant_type": "nonsense"}, headers=auth)
    assert junk.status_code == 400 and junk.get_json()["error"] == "unsupported_grant_type"
    body = get_token(client, creds).get_json()
    assert client.post("/introspect", data={"token": "x"}, headers=auth).status_code == 200
    assert polls == []
    # A replayed refresh token ends the session: this process refuses its token at once.
    fresh = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=auth,
    )
    assert fresh.status_code == 200
    replay = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=auth,
    )
    assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_grant"
    whoami = client.get("/whoami", headers=bearer(fresh.get_json()["access_token"]))
    assert whoami.status_code == 401
