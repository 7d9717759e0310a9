"""The grants under attack: throttling, KDF bounds, user changes, issuer, seat leaks.

Each test drives the product from outside (HTTP through the test client, the CLI through
``app.test_cli_runner()``), on every store where the rule lives in the store.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import typing as t
from pathlib import Path

import jwt
import pytest
from flask import Flask

import sample_app
from flask_tokenguard.core import security
from flask_tokenguard.core.tokens import KeyRing
from flask_tokenguard.errors import StoreError
from tests.backends import BACKENDS
from tests.backends import isolated_store
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import Clock
from tests.helpers import get_token
from tests.helpers import register


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    with isolated_store(request.param, tmp_path) as url_and_options:
        yield url_and_options


@pytest.fixture
def verifier(monkeypatch: pytest.MonkeyPatch) -> t.Callable[..., list[str]]:
    """``verifier(delay=0, block=None)``: the sample app's password check, counting its calls.

    Accepts ``alice``/``wonderland`` (compared as given) after ``delay`` seconds, or once
    ``block`` is set.
    """

    def install(delay: float = 0.0, block: threading.Event | None = None) -> list[str]:
        calls: list[str] = []

        def check(username: str, password: str) -> str | None:
            calls.append(username)
            if block is not None:
                block.wait(10)
            time.sleep(delay)
            return "alice" if (username, password) == ("alice", "wonderland") else None

        monkeypatch.setattr(sample_app.guard, "_password_verifier", check)
        return calls

    return install


def _password(
    http: t.Any,
    client_id: str,
    username: str = "alice",
    password: str = "wonderland",
    **environ: t.Any,
) -> t.Any:
    return http.post(
        "/token",
        data={"grant_type": "password", "username": username, "password": password},
        headers=basic(client_id),
        **environ,
    )


def _from(address: str) -> dict[str, t.Any]:
    """Test-client arguments for a request from ``address`` (over HTTPS: not loopback)."""
    return {"base_url": "https://localhost", "environ_base": {"REMOTE_ADDR": address}}


# -- throttling (issue 11 #4, #9) ----------------------------------------------------------------


def test_parallel_guesses_are_reserved_before_the_check(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    verifier: t.Callable[..., list[str]],
) -> None:
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LOCKOUT_THRESHOLD=3, KDF_CONCURRENCY=12)
    public = register(app, "spa", "--public")
    calls = verifier(delay=0.3)

    def guess(i: int) -> int:
        # Case and space variants of one name share its counter.
        name = ["alice", "Alice", " ALICE", "alice "][i % 4]
        return int(_password(app.test_client(), public["client_id"], name, "guess").status_code)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(guess, range(12)))
    # Never more than the threshold checked (the client's own authentication reserves the
    # address too, so fewer may reach the password while the burst is in flight).
    assert 1 <= len(calls) <= 3
    assert sorted(statuses) == [400] * len(calls) + [429] * (12 - len(calls))


def test_throttled_answer_is_429_slow_down_and_checks_nothing(
    app_factory: t.Callable[..., Flask], verifier: t.Callable[..., list[str]]
) -> None:
    app = app_factory(LOCKOUT_THRESHOLD=2, LOCKOUT_SECONDS=60)
    public = register(app, "spa", "--public")
    calls = verifier()
    http: t.Any = app.test_client()
    for _ in range(2):
        assert _password(http, public["client_id"], password="guess").status_code == 400
    refused = _password(http, public["client_id"])  # even the right password
    assert refused.status_code == 429
    assert refused.json["error"] == "slow_down"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert len(calls) == 2
    # Unknown names count for the address too: random user names do not get around it.
    assert _password(http, public["client_id"], "random-1", "x").status_code == 429


def test_the_same_user_from_another_address_is_not_affected(
    app_factory: t.Callable[..., Flask], verifier: t.Callable[..., list[str]]
) -> None:
    app = app_factory(LOCKOUT_THRESHOLD=2)
    public = register(app, "spa", "--public")
    verifier()
    http: t.Any = app.test_client()
    for _ in range(2):
        _password(http, public["client_id"], password="guess", **_from("192.0.2.1"))
    assert _password(http, public["client_id"], **_from("192.0.2.1")).status_code == 429
    assert _password(http, public["client_id"], **_from("192.0.2.2")).status_code == 200


@pytest.mark.parametrize("endpoint", ["/token", "/revoke", "/introspect"])
def test_client_authentication_is_throttled(
    app_factory: t.Callable[..., Flask], endpoint: str
) -> None:
    app = app_factory(LOCKOUT_THRESHOLD=3)
    creds = register(app)
    http: t.Any = app.test_client()
    data = {"grant_type": "client_credentials", "token": "x"}
    for _ in range(3):
        wrong = http.post(endpoint, data=data, headers=basic(creds["client_id"], "wrong"))
        assert wrong.json["error"] == "invalid_client"
    right = http.post(
        endpoint, data=data, headers=basic(creds["client_id"], creds["client_secret"])
    )
    assert right.status_code == 429 and right.json["error"] == "slow_down"
    assert "Retry-After" in right.headers
    other = http.post(
        endpoint,
        data=data,
        headers=basic(creds["client_id"], creds["client_secret"]),
        **_from("192.0.2.9"),
    )
    assert other.status_code == 200


def test_successful_client_requests_one_after_another_are_never_throttled(
    app_factory: t.Callable[..., Flask],
) -> None:
    # Each success gives its reservation back (a parallel burst beyond the threshold:
    # tests/test_throttle.py).
    app = app_factory(LOCKOUT_THRESHOLD=2)
    creds = register(app)
    http: t.Any = app.test_client()
    for _ in range(12):
        assert get_token(http, creds, scope="view").status_code == 200


def test_password_checks_beyond_the_kdf_concurrency_get_503(
    app_factory: t.Callable[..., Flask],
    verifier: t.Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = app_factory(KDF_CONCURRENCY=1, LOCKOUT_THRESHOLD=0)
    public = register(app, "spa", "--public")
    release = threading.Event()
    calls = verifier(block=release)
    monkeypatch.setattr(security, "KDF_WAIT_SECONDS", 0.2)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(_password, app.test_client(), public["client_id"])
        while not calls:
            time.sleep(0.01)
        busy = _password(app.test_client(), public["client_id"])
        release.set()
        assert first.result().status_code == 200
    assert busy.status_code == 503
    assert busy.json["error"] == "temporarily_unavailable"
    assert int(busy.headers["Retry-After"]) >= 1
    assert calls == ["alice"]  # the refused request ran no check


# -- user changes and the absolute session lifetime (issue 11 #5) --------------------------------


def _user_app(
    app_factory: t.Callable[..., Flask], url: str = "memory://", **config: t.Any
) -> Flask:
    app = app_factory(url, **config)
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    return app


@pytest.mark.parametrize(
    "command", [("delete-user", "alice"), ("set-password", "alice", "--password-stdin")]
)
def test_deleting_a_user_or_changing_the_password_ends_their_sessions(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    command: tuple[str, ...],
) -> None:
    url, options = backend
    app = _user_app(app_factory, url, STORE_OPTIONS=options, LICENSES=1, REVOCATION_LAG=0)
    public = register(app, "spa", "--public")
    http: t.Any = app.test_client()
    body = _password(http, public["client_id"]).json
    assert http.get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    result = cli(app, *command, input="new password\n")
    assert result["sessions_ended"] == 1
    assert http.get("/whoami", headers=bearer(body["access_token"])).status_code == 401
    refreshed = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=basic(public["client_id"]),
    )
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"
    assert cli(app, "licenses")["in_use"] == 0


def test_sessions_and_logoff_by_user(app_factory: t.Callable[..., Flask]) -> None:
    app = _user_app(app_factory, REVOCATION_LAG=0)
    cli(app, "create-user", "bob", "--password-stdin", input="builder\n")
    public = register(app, "spa", "--public")
    machine = register(app, "machine")
    http: t.Any = app.test_client()
    alice = _password(http, public["client_id"]).json
    bob = _password(http, public["client_id"], "bob", "builder").json
    get_token(http, machine)
    listed = cli(app, "sessions", "--user", "alice")
    assert [s["subject"] for s in listed] == ["alice"]
    assert cli(app, "logoff", "--user", "alice") == {"ended": 1}
    assert http.get("/whoami", headers=bearer(alice["access_token"])).status_code == 401
    assert http.get("/whoami", headers=bearer(bob["access_token"])).status_code == 200
    assert len(cli(app, "sessions")) == 2


def test_session_max_ttl_caps_every_refresh(
    app_factory: t.Callable[..., Flask], clock: Clock
) -> None:
    app = app_factory(SESSION_TTL=100, SESSION_MAX_TTL=150, ACCESS_TOKEN_TTL=900)
    creds = register(app)
    http: t.Any = app.test_client()
    body = get_token(http, creds).json
    assert body["expires_in"] in (99, 100)
    clock(90)
    body = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=basic(creds["client_id"], creds["client_secret"]),
    ).json
    assert body["expires_in"] in (59, 60)  # 150 after the start, not 100 after this refresh
    listed = cli(app, "sessions")[0]
    assert listed["expires_at"] - listed["created_at"] in (149, 150)
    clock(61)
    late = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    assert late.status_code == 400 and late.json["error"] == "invalid_grant"


# -- the issuer when TOKENGUARD_ISSUER is unset (issue 11 #7) ------------------------------------


@pytest.mark.parametrize("path", ["/token", "/.well-known/oauth-authorization-server"])
def test_a_foreign_host_gets_no_issuer(app_factory: t.Callable[..., Flask], path: str) -> None:
    app = app_factory()
    creds = register(app)
    http: t.Any = app.test_client()
    data = {"grant_type": "client_credentials"}
    headers = basic(creds["client_id"], creds["client_secret"])
    if path == "/token":
        response = http.post(path, data=data, headers=headers, base_url="https://evil.example")
    else:
        response = http.get(path, base_url="https://evil.example")
    assert response.status_code == 400
    assert response.json == {
        "error": "invalid_request",
        "error_description": "TOKENGUARD_ISSUER is not configured",
    }


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:5000", "http://[::1]:8443"],
)
def test_loopback_hosts_name_the_issuer(app_factory: t.Callable[..., Flask], base_url: str) -> None:
    app = app_factory()
    response: t.Any = app.test_client().get(
        "/.well-known/oauth-authorization-server", base_url=base_url
    )
    assert response.status_code == 200
    assert response.json["issuer"] == base_url


@pytest.fixture
def named_app() -> t.Iterator[Flask]:
    """The sample app with Flask's ``SERVER_NAME`` set (not a ``TOKENGUARD_`` key)."""
    app = sample_app.create_app(
        {
            "TESTING": True,
            "TOKENGUARD_STORE_URL": "memory://",
            "TOKENGUARD_PASSWORD_HASH_COST": 10,
            "SERVER_NAME": "api.example.com",
        }
    )
    yield app
    app.extensions["tokenguard"].close_store(app)


def test_server_name_names_the_issuer(named_app: Flask) -> None:
    app = named_app
    creds = register(app)
    http: t.Any = app.test_client()
    response = http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers=basic(creds["client_id"], creds["client_secret"]),
        base_url="https://api.example.com",
    )
    assert response.status_code == 200
    meta = http.get("/.well-known/oauth-authorization-server", base_url="https://api.example.com")
    assert meta.json["issuer"] == "https://api.example.com"


def test_an_unset_issuer_is_warned_about_at_start_up(
    app_factory: t.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_tokenguard"):
        app_factory()
    assert any("TOKENGUARD_ISSUER is not configured" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flask_tokenguard"):
        app_factory(ISSUER="https://auth.example.com")
    assert not any("TOKENGUARD_ISSUER" in r.getMessage() for r in caplog.records)


# -- no seat leaks on a failure after the session started (issue 11 #8) --------------------------


def test_a_failing_key_load_takes_no_seat(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LICENSES=1)
    creds = register(app)
    http: t.Any = app.test_client()
    real_signer = KeyRing.signer

    def failing(self: KeyRing, now: float) -> t.Any:
        raise StoreError("injected: the signing keys cannot be read")

    monkeypatch.setattr(KeyRing, "signer", failing)
    assert get_token(http, creds).status_code == 503
    monkeypatch.setattr(KeyRing, "signer", real_signer)
    assert cli(app, "licenses")["in_use"] == 0
    assert get_token(http, creds).status_code == 200


def test_a_failure_after_the_session_started_ends_it(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LICENSES=1)
    creds = register(app)
    http: t.Any = app.test_client()

    def failing(*args: t.Any, **kwargs: t.Any) -> t.Any:
        raise StoreError("injected: the store failed after the session started")

    with monkeypatch.context() as patch:
        patch.setattr("flask_tokenguard.core.grants.issue_access_token", failing)
        assert get_token(http, creds).status_code == 503
    assert cli(app, "licenses")["in_use"] == 0
    assert cli(app, "sessions") == []
    assert get_token(http, creds).status_code == 200


def test_a_failure_after_a_rotation_leaves_the_sent_refresh_token_current(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh that fails after rotating (a lost read, a failover) answers 503 and
    takes the rotation back: the client's retry with the token it holds refreshes, and
    keeps its seat, instead of counting as a replay that ends the session."""
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LICENSES=1)
    creds = register(app)
    http: t.Any = app.test_client()
    first = get_token(http, creds)
    assert first.status_code == 200
    held = first.get_json()["refresh_token"]

    def refresh(token: str) -> t.Any:
        return http.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            headers=basic(creds["client_id"], creds["client_secret"]),
        )

    def failing(*args: t.Any, **kwargs: t.Any) -> t.Any:
        raise StoreError("injected: the store failed after the rotation")

    with monkeypatch.context() as patch:
        patch.setattr("flask_tokenguard.core.grants.issue_access_token", failing)
        failed = refresh(held)
        assert failed.status_code == 503
        assert failed.get_json()["error"] == "temporarily_unavailable"
    assert cli(app, "licenses")["in_use"] == 1
    retried = refresh(held)
    assert retried.status_code == 200, retried.get_json()
    same = jwt.decode(first.get_json()["access_token"], options={"verify_signature": False})
    assert [s["session_id"] for s in cli(app, "sessions")] == [same["sid"]]
    assert cli(app, "licenses")["in_use"] == 1
    # The token is used now: sending it again is a replay, which ends the session.
    assert refresh(held).get_json()["error"] == "invalid_grant"
    assert cli(app, "licenses")["in_use"] == 0


def test_a_seat_cap_set_during_a_token_request_gets_no_session(app: Flask) -> None:
    """``update-client --max-seats`` lands between authentication and the new session,
    which was started under the old record's cap: it is undone, as for other changes."""
    from flask_tokenguard.core import clients

    public = register(app, "spa", "--public")
    store = app.extensions["tokenguard"].store(app)
    original = sample_app.guard._password_verifier

    @sample_app.guard.password_verifier
    def cap_meanwhile(username: str, password: str) -> str:
        clients.update_client(
            store, public["client_id"], known_scopes=["view", "all"], now=time.time(), max_seats=0
        )
        return username

    data = {"grant_type": "password", "username": "carol", "password": "pw"}
    try:
        response = app.test_client().post("/token", data={**data, "client_id": public["client_id"]})
    finally:
        sample_app.guard._password_verifier = original
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    assert cli(app, "sessions") == []


def test_a_seat_cap_raised_during_a_token_request_keeps_the_session(app: Flask) -> None:
    """Only a lower cap undoes the new session; a raised one leaves room for it."""
    from flask_tokenguard.core import clients

    public = register(app, "spa", "--public", "--max-seats", "1")
    store = app.extensions["tokenguard"].store(app)
    original = sample_app.guard._password_verifier

    @sample_app.guard.password_verifier
    def raise_meanwhile(username: str, password: str) -> str:
        clients.update_client(
            store, public["client_id"], known_scopes=["view", "all"], now=time.time(), max_seats=5
        )
        return username

    data = {"grant_type": "password", "username": "carol", "password": "pw"}
    try:
        response = app.test_client().post("/token", data={**data, "client_id": public["client_id"]})
    finally:
        sample_app.guard._password_verifier = original
    assert response.status_code == 200, response.get_json()
    assert [s["subject"] for s in cli(app, "sessions")] == ["carol"]


def test_the_password_is_checked_before_the_seat_cap(
    app: Flask, verifier: t.Callable[..., list[str]]
) -> None:
    """A client at its cap answers a wrong password as ever: a guesser learns nothing."""
    calls = verifier()
    shut = register(app, "spa", "--public", "--max-seats", "0")
    http: t.Any = app.test_client()
    assert _password(http, shut["client_id"], password="guess").json["error"] == "invalid_grant"
    refused = _password(http, shut["client_id"])
    assert refused.status_code == 400 and refused.json["error"] == "license_unavailable"
    assert calls == ["alice", "alice"]
    view = {"grant_type": "password", "username": "alice", "password": "wonderland"}
    ok = http.post("/token", data={**view, "scope": "view"}, headers=basic(shut["client_id"]))
    assert ok.status_code == 200 and ok.json["scope"] == "view"


# -- rehash at the configured cost (issue 11 #16) ------------------------------------------------


def test_sign_in_rehashes_a_password_made_at_another_cost(
    app_factory: t.Callable[..., Flask], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'users.sqlite3'}"
    old = _user_app(app_factory, url)  # cost 10
    new = app_factory(url, PASSWORD_HASH_COST=11)
    public = register(new, "spa", "--public")
    store = new.extensions["tokenguard"].store(new)
    assert store.get_user("alice").password_hash.startswith("scrypt$10$")
    assert _password(new.test_client(), public["client_id"]).status_code == 200
    assert store.get_user("alice").password_hash.startswith("scrypt$11$")
    assert _password(old.test_client(), public["client_id"]).status_code == 200


def test_unknown_users_cost_the_configured_kdf(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_factory(PASSWORD_HASH_COST=11)
    public = register(app, "spa", "--public")
    costs: list[int] = []
    real = security._scrypt

    def spy(password: str, salt: bytes, n: int) -> bytes:
        costs.append(n)
        return real(password, salt, n)

    monkeypatch.setattr(security, "_scrypt", spy)
    assert _password(app.test_client(), public["client_id"], "nobody", "x").status_code == 400
    assert costs == [2**11]


# -- seats and clock skew (issue 11, read in the code) -------------------------------------------


def test_a_host_whose_clock_runs_ahead_does_not_take_a_held_seat(
    app_factory: t.Callable[..., Flask], tmp_path: Path, clock: Clock
) -> None:
    url = f"sqlite:///{tmp_path / 'skew.sqlite3'}"
    config = {"LICENSES": 1, "SESSION_TTL": 60, "CLOCK_SKEW": 30}
    one = app_factory(url, **config)
    ahead = app_factory(url, **config)
    creds = register(one)
    assert get_token(one.test_client(), creds).status_code == 200
    clock(75)  # the session expired 15 s ago on this host's clock, not yet on the others'
    refused = get_token(ahead.test_client(), creds)
    assert refused.status_code == 400 and refused.json["error"] == "license_unavailable"
    clock(16)
    assert get_token(ahead.test_client(), creds).status_code == 200


# -- Redis: a client's session set does not grow (issue 11, read in the code) -------------------


@pytest.mark.redis
def test_redis_client_session_set_forgets_sessions_expired_by_ttl(
    app_factory: t.Callable[..., Flask], tmp_path: Path, clock: Clock
) -> None:
    with isolated_store("redis", tmp_path) as (url, options):
        app = app_factory(url, STORE_OPTIONS=options, SESSION_TTL=60)
        creds = register(app)
        store: t.Any = app.extensions["tokenguard"].store(app)
        http: t.Any = app.test_client()
        for _ in range(5):
            assert get_token(http, creds, scope="view").status_code == 200
        members = store._client.smembers(store._key("client_sessions", creds["client_id"]))
        assert len(members) == 5
        # The hashes expire by their TTL (simulated: deleted) before any sweep saw them.
        for sid in members:
            store._client.delete(store._key("session", sid))
        clock(61)
        for _ in range(3):
            assert get_token(http, creds, scope="view").status_code == 200
        left = store._client.smembers(store._key("client_sessions", creds["client_id"]))
        assert len(left) == 3
        assert cli(app, "sessions", "--client", creds["client_id"]) != []
