"""``flask tokenguard ...``: every command of the contract's Command line table.

Commands run through ``app.test_cli_runner()`` (the ``cli`` helper adds ``--json`` and
parses stdout); two checks run ``flask --app sample_app tokenguard ...`` in a subprocess
on an SQLite file, as a user types it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing as t
from pathlib import Path

import jwt
import pytest
from flask import Flask

from flask_tokenguard.errors import AdminInputError
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import flask_cli
from tests.helpers import get_token
from tests.helpers import register

SAFE = re.compile(r"[A-Za-z0-9_-]+")


def run(app: Flask, *args: str, input: str | None = None) -> t.Any:  # noqa: A002 - as click names it
    """Invoke ``flask tokenguard ARGS`` as typed (no ``--json`` added); return the result."""
    return app.test_cli_runner().invoke(args=["tokenguard", *args], input=input)


def assert_fails(result: t.Any) -> None:
    """Exit code 1, a message on stderr, nothing on stdout."""
    assert result.exit_code == 1, result.output
    assert result.stderr.strip()
    assert result.stdout == ""


def json_after_prompts(stdout: str) -> t.Any:
    """The JSON document that follows interactive prompts on stdout."""
    return json.loads(stdout[stdout.index("{") :])


def password_token(http: t.Any, client_id: str, username: str, password: str) -> t.Any:
    """POST /token with the password grant for a public client (id in the body)."""
    data = {
        "grant_type": "password",
        "username": username,
        "password": password,
        "client_id": client_id,
    }
    return http.post("/token", data=data)


def refresh(http: t.Any, creds: dict[str, t.Any], refresh_token: str) -> t.Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return http.post("/token", data=data, headers=basic(creds["client_id"], creds["client_secret"]))


@pytest.fixture
def instant_app(app_factory: t.Callable[..., Flask]) -> Flask:
    """An app that checks the store on every request (``TOKENGUARD_REVOCATION_LAG=0``)."""
    return app_factory(REVOCATION_LAG=0)


@pytest.fixture
def alice(app: Flask) -> dict[str, t.Any]:
    """User alice and a public client for the password grant."""
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    return register(app, "public app", "--public")


# -- create-client ------------------------------------------------------------------------


def test_create_client_defaults(app: Flask) -> None:
    data = register(app, "reporting")
    assert data["name"] == "reporting"
    assert SAFE.fullmatch(data["client_id"])
    assert set(data["scopes"]) == {"view", "all"}
    assert set(data["grants"]) == {"client_credentials", "refresh_token"}


def test_create_client_secret_is_generated_with_256_bits(app: Flask) -> None:
    secret = register(app)["client_secret"]
    assert SAFE.fullmatch(secret)
    assert len(secret) >= 43  # 43 base64url characters carry 258 bits


def test_create_client_secret_works_at_token(app: Flask, client: t.Any) -> None:
    assert get_token(client, register(app)).status_code == 200


def test_create_client_text_output_shows_id_and_secret(app: Flask) -> None:
    result = run(app, "create-client", "plain")
    assert result.exit_code == 0
    listed = cli(app, "list-clients")
    assert listed[0]["client_id"] in result.stdout
    assert re.search(r"[A-Za-z0-9_-]{43,}", result.stdout)


def test_create_client_public_defaults(app: Flask) -> None:
    data = register(app, "mobile", "--public")
    assert data.get("client_secret") is None
    assert set(data["grants"]) == {"password", "refresh_token"}
    assert set(data["scopes"]) == {"view", "all"}


def test_create_client_with_scope_grant_alias(app: Flask) -> None:
    data = register(
        app, "viewer", "--scope", "view", "--grant", "client_credentials", "--alias", "viewer-1"
    )
    assert data["scopes"] == ["view"]
    assert data["grants"] == ["client_credentials"]
    assert data["alias"] == "viewer-1"


def test_create_client_scope_limits_what_token_grants(app: Flask, client: t.Any) -> None:
    creds = register(app, "viewer", "--scope", "view")
    response = get_token(client, creds, scope="all")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_scope"


def test_create_client_alias_works_at_token(app: Flask, client: t.Any) -> None:
    creds = register(app, "viewer", "--alias", "viewer-1")
    assert get_token(client, {**creds, "client_id": "viewer-1"}).status_code == 200


def test_create_client_stores_only_the_secret_hash(app: Flask) -> None:
    data = register(app, "hashed", "--alias", "hashed-1")
    stored = app.extensions["tokenguard"].store(app).get_client(data["client_id"])
    secret = data["client_secret"]
    for field in dataclasses.fields(stored):
        assert secret not in str(getattr(stored, field.name)), field.name
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--scope", "admin"], id="unknown-scope"),
        pytest.param(["--public", "--grant", "client_credentials"], id="public-client_credentials"),
        pytest.param(["--grant", "implicit"], id="unknown-grant"),
    ],
)
def test_create_client_refuses_bad_options(app: Flask, args: list[str]) -> None:
    assert_fails(run(app, "create-client", "bad", *args, "--json"))
    assert cli(app, "list-clients") == []


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("n" * 256, id="too-long"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("two\nlines", id="newline"),
        pytest.param("evil\u202egnp.exe", id="right-to-left-override"),
    ],
)
def test_create_and_update_client_refuse_unfit_display_names(app: Flask, name: str) -> None:
    # On PostgreSQL such a name failed in the driver and was answered as an outage (503).
    result = run(app, "create-client", name, "--json")
    assert_fails(result)
    assert "display name" in result.stderr
    assert cli(app, "list-clients") == []
    client_id = register(app, "fine")["client_id"]
    assert_fails(run(app, "update-client", client_id, "--name", name, "--json"))
    assert [c["name"] for c in cli(app, "list-clients")] == ["fine"]


def test_create_client_keeps_a_long_unicode_display_name(app: Flask) -> None:
    name = "Zürich Lager 📦 " + "x" * 240
    assert len(name) == 255
    register(app, name)
    assert [c["name"] for c in cli(app, "list-clients")] == [name]


def test_create_client_refuses_duplicate_alias(app: Flask) -> None:
    register(app, "first", "--alias", "shared")
    assert_fails(run(app, "create-client", "second", "--alias", "shared", "--json"))
    assert [c["name"] for c in cli(app, "list-clients")] == ["first"]


# -- rotate-secret ------------------------------------------------------------------------


def test_rotate_secret_answer_no_changes_nothing(app: Flask, client: t.Any) -> None:
    creds = register(app)
    result = run(app, "rotate-secret", creds["client_id"], "--json", input="n\n")
    assert result.exit_code == 1
    assert creds["client_secret"] not in result.output
    assert get_token(client, creds).status_code == 200


def test_rotate_secret_answer_yes_rotates(app: Flask, client: t.Any) -> None:
    creds = register(app)
    result = run(app, "rotate-secret", creds["client_id"], "--json", input="y\n")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["client_id"] == creds["client_id"]
    assert data["client_secret"] != creds["client_secret"]
    assert get_token(client, data).status_code == 200


def test_rotate_secret_old_secret_stops_working(app: Flask, client: t.Any) -> None:
    creds = register(app)
    cli(app, "rotate-secret", creds["client_id"], "--yes")
    response = get_token(client, creds)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"


def test_rotate_secret_new_secret_is_only_stored_as_hash(app: Flask) -> None:
    creds = register(app)
    secret = cli(app, "rotate-secret", creds["client_id"], "--yes")["client_secret"]
    stored = app.extensions["tokenguard"].store(app).get_client(creds["client_id"])
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()


def test_rotate_secret_ends_sessions(instant_app: Flask) -> None:
    http = instant_app.test_client()
    creds = register(instant_app)
    issued = get_token(http, creds).json
    cli(instant_app, "rotate-secret", creds["client_id"], "--yes")
    assert cli(instant_app, "sessions") == []
    assert http.get("/whoami", headers=bearer(issued["access_token"])).status_code == 401


def test_rotate_secret_keep_sessions(app: Flask, client: t.Any) -> None:
    creds = register(app)
    issued = get_token(client, creds).json
    new = cli(app, "rotate-secret", creds["client_id"], "--yes", "--keep-sessions")
    assert len(cli(app, "sessions")) == 1
    assert refresh(client, new, issued["refresh_token"]).status_code == 200


def test_rotate_secret_public_client_gets_new_id(
    app: Flask, client: t.Any, alice: dict[str, t.Any]
) -> None:
    data = cli(app, "rotate-secret", alice["client_id"], "--yes")
    assert data["client_id"] != alice["client_id"]
    assert data.get("client_secret") is None
    assert password_token(client, data["client_id"], "alice", "wonderland").status_code == 200


def test_rotate_secret_public_client_old_id_stops_working(
    app: Flask, client: t.Any, alice: dict[str, t.Any]
) -> None:
    cli(app, "rotate-secret", alice["client_id"], "--yes")
    response = password_token(client, alice["client_id"], "alice", "wonderland")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_client"


# -- list-clients, disable-client, enable-client, delete-client --------------------------


def test_list_clients(app: Flask) -> None:
    first = register(app, "first", "--alias", "one")
    second = register(app, "second", "--public")
    listed = {c["client_id"]: c for c in cli(app, "list-clients")}
    assert set(listed) == {first["client_id"], second["client_id"]}
    assert listed[first["client_id"]]["name"] == "first"
    assert listed[first["client_id"]]["alias"] == "one"


def test_list_clients_json_fields(app: Flask) -> None:
    created = register(app, "capped", "--alias", "cap-1", "--max-seats", "3", "--scope", "view")
    (entry,) = cli(app, "list-clients")
    assert entry == {
        "client_id": created["client_id"],
        "name": "capped",
        "alias": "cap-1",
        "scopes": ["view"],
        "grants": ["client_credentials", "refresh_token"],
        "public": False,
        "enabled": True,
        "max_seats": 3,
        "created_at": created["created_at"],
    }
    assert isinstance(entry["created_at"], int) and entry["created_at"] > 0


def test_list_clients_text_shows_the_seat_cap(app: Flask) -> None:
    register(app, "capped", "--max-seats", "3")
    register(app, "default")
    lines = run(app, "list-clients").stdout.splitlines()
    assert [line.rsplit("max_seats=", 1)[1] for line in lines] == ["3", "-"]


@pytest.mark.parametrize("value", ["-1", "two"])
def test_create_client_refuses_a_bad_seat_cap(app: Flask, value: str) -> None:
    result = run(app, "create-client", "bad", "--max-seats", value, "--json")
    assert result.exit_code != 0 and result.stdout == ""
    assert cli(app, "list-clients") == []


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_list_clients_never_shows_secrets_or_hashes(app: Flask, as_json: bool) -> None:
    creds = register(app, "secretive")
    stored = app.extensions["tokenguard"].store(app).get_client(creds["client_id"])
    result = run(app, "list-clients", *(["--json"] if as_json else []))
    assert result.exit_code == 0
    assert creds["client_secret"] not in result.output
    assert stored.secret_hash not in result.output
    if as_json:
        for entry in json.loads(result.stdout):
            assert not [k for k in entry if "secret" in k or "hash" in k]


def test_disable_client_ends_sessions(app: Flask, client: t.Any) -> None:
    creds = register(app)
    get_token(client, creds)
    cli(app, "disable-client", creds["client_id"])
    assert cli(app, "sessions") == []


def test_disable_client_refuses_token(app: Flask, client: t.Any) -> None:
    creds = register(app)
    cli(app, "disable-client", creds["client_id"])
    response = get_token(client, creds)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"
    assert [c["enabled"] for c in cli(app, "list-clients")] == [False]


def test_disable_client_access_token_stops_working(instant_app: Flask) -> None:
    http = instant_app.test_client()
    creds = register(instant_app)
    access = get_token(http, creds).json["access_token"]
    cli(instant_app, "disable-client", creds["client_id"])
    assert http.get("/whoami", headers=bearer(access)).status_code == 401


def test_enable_client_restores(app: Flask, client: t.Any) -> None:
    creds = register(app)
    cli(app, "disable-client", creds["client_id"])
    data = cli(app, "enable-client", creds["client_id"])
    assert data["enabled"] is True
    assert get_token(client, creds).status_code == 200


def test_disable_client_by_alias(app: Flask, client: t.Any) -> None:
    creds = register(app, "aliased", "--alias", "nightly")
    cli(app, "disable-client", "nightly")
    assert get_token(client, creds).status_code == 401


def test_delete_client_yes(app: Flask, client: t.Any) -> None:
    creds = register(app)
    get_token(client, creds)
    cli(app, "delete-client", creds["client_id"], "--yes")
    assert cli(app, "list-clients") == []
    assert cli(app, "sessions") == []
    assert get_token(client, creds).status_code == 401


def test_delete_client_asks_confirmation(app: Flask, client: t.Any) -> None:
    creds = register(app)
    result = run(app, "delete-client", creds["client_id"], "--json", input="n\n")
    assert result.exit_code == 1
    assert len(cli(app, "list-clients")) == 1
    assert get_token(client, creds).status_code == 200


@pytest.mark.parametrize(
    "command",
    [
        ["rotate-secret", "--yes"],
        ["disable-client"],
        ["enable-client"],
        ["delete-client", "--yes"],
    ],
    ids=lambda c: c[0],
)
def test_unknown_client_fails(app: Flask, command: list[str]) -> None:
    register(app)
    assert_fails(run(app, command[0], "tg_nosuchclient", *command[1:], "--json"))


@pytest.mark.parametrize("command", ["sessions", "logoff"])
def test_unknown_client_option_fails(app: Flask, command: str) -> None:
    assert_fails(run(app, command, "--client", "tg_nosuchclient", "--json"))


# -- update-client ------------------------------------------------------------------------


def _sessions_of(app: Flask, client_id: str) -> list[str]:
    return [s["session_id"] for s in cli(app, "sessions", "--client", client_id)]


def _sid(body: dict[str, t.Any]) -> str:
    return str(jwt.decode(body["access_token"], options={"verify_signature": False})["sid"])


def test_update_client_name_keeps_the_rest_and_the_sessions(app: Flask, client: t.Any) -> None:
    creds = register(app, "old name", "--alias", "keep-me", "--max-seats", "2")
    body = get_token(client, creds).json
    updated = cli(app, "update-client", creds["client_id"], "--name", "new name")
    assert updated["name"] == "new name" and updated["sessions_ended"] == 0
    assert (updated["alias"], updated["max_seats"]) == ("keep-me", 2)
    assert set(updated["scopes"]) == {"view", "all"}
    assert updated["grants"] == ["client_credentials", "refresh_token"]
    assert [c["name"] for c in cli(app, "list-clients")] == ["new name"]
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    assert get_token(client, creds).status_code == 200  # the secret still works


def test_update_client_alias_and_no_alias(app: Flask, client: t.Any) -> None:
    creds = register(app, "aliased", "--alias", "first")
    body = get_token(client, creds).json
    assert cli(app, "update-client", "first", "--alias", "second")["alias"] == "second"
    assert get_token(client, {**creds, "client_id": "second"}).status_code == 200
    assert get_token(client, {**creds, "client_id": "first"}).status_code == 401
    removed = cli(app, "update-client", creds["client_id"], "--no-alias")
    assert removed["alias"] is None and removed["sessions_ended"] == 0
    assert get_token(client, {**creds, "client_id": "second"}).status_code == 401
    # An alias change ends nothing.
    assert _sid(body) in _sessions_of(app, creds["client_id"])
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 200


def test_update_client_removing_a_scope_ends_the_sessions_using_it(
    app: Flask, client: t.Any
) -> None:
    creds = register(app)
    full = get_token(client, creds).json
    view = get_token(client, creds, scope="view").json
    updated = cli(app, "update-client", creds["client_id"], "--scope", "view")
    assert updated["scopes"] == ["view"] and updated["sessions_ended"] == 1
    # This process refuses the ended session's token at once; the other goes on.
    assert client.get("/whoami", headers=bearer(full["access_token"])).status_code == 401
    assert refresh(client, creds, full["refresh_token"]).json["error"] == "invalid_grant"
    assert client.get("/whoami", headers=bearer(view["access_token"])).status_code == 200
    assert _sessions_of(app, creds["client_id"]) == [_sid(view)]
    assert get_token(client, creds, scope="all").json["error"] == "invalid_scope"
    # Widening again ends nothing and allows it again.
    assert (
        cli(app, "update-client", creds["client_id"], "--scope", "view", "--scope", "all")[
            "sessions_ended"
        ]
        == 0
    )
    assert get_token(client, creds, scope="all").status_code == 200


def test_update_client_removing_a_grant_ends_the_sessions_it_started(
    app: Flask, client: t.Any
) -> None:
    creds = register(app)
    body = get_token(client, creds).json
    updated = cli(app, "update-client", creds["client_id"], "--grant", "client_credentials")
    assert updated["grants"] == ["client_credentials"] and updated["sessions_ended"] == 1
    assert client.get("/whoami", headers=bearer(body["access_token"])).status_code == 401
    assert refresh(client, creds, body["refresh_token"]).status_code == 400
    assert _sessions_of(app, creds["client_id"]) == []
    assert get_token(client, creds).status_code == 200


def test_update_client_removing_password_ends_only_user_sessions(
    app: Flask, client: t.Any, alice: dict[str, t.Any]
) -> None:
    public = alice
    users_session = password_token(client, public["client_id"], "alice", "wonderland").json
    assert (
        cli(app, "update-client", public["client_id"], "--grant", "refresh_token")["sessions_ended"]
        == 1
    )
    assert client.get("/whoami", headers=bearer(users_session["access_token"])).status_code == 401
    assert password_token(client, public["client_id"], "alice", "wonderland").status_code == 400
    creds = register(app, "machine", "--grant", "client_credentials", "--grant", "password")
    own = get_token(client, creds).json
    assert (
        cli(app, "update-client", creds["client_id"], "--grant", "client_credentials")[
            "sessions_ended"
        ]
        == 0
    )
    assert client.get("/whoami", headers=bearer(own["access_token"])).status_code == 200


def test_update_client_lowering_max_seats_ends_the_oldest_seat_holders(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory(LICENSES=10)
    http = app.test_client()
    creds = register(app, "roomy", "--max-seats", "3")
    bodies = [get_token(http, creds).json for _ in range(3)]
    view = get_token(http, creds, scope="view").json
    updated = cli(app, "update-client", creds["client_id"], "--max-seats", "1")
    assert updated["max_seats"] == 1 and updated["sessions_ended"] == 2
    statuses = [http.get("/whoami", headers=bearer(b["access_token"])).status_code for b in bodies]
    assert statuses == [401, 401, 200]
    assert http.get("/whoami", headers=bearer(view["access_token"])).status_code == 200
    assert cli(app, "licenses") == {"in_use": 1, "total": 10}
    assert get_token(http, creds).json["error"] == "license_unavailable"
    raised = cli(app, "update-client", creds["client_id"], "--max-seats", "2")
    assert raised["sessions_ended"] == 0
    assert get_token(http, creds).status_code == 200


def test_update_client_rename_ends_nothing_even_above_the_default_cap(
    app_factory: t.Callable[..., Flask], tmp_path: Path
) -> None:
    # Three seats taken, then the default cap is 1: a rename that also sends the unchanged
    # "no cap of its own" (as the console's form does) must not trim them.
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    app = app_factory(url, LICENSES=10, REVOCATION_LAG=0)
    http = app.test_client()
    creds = register(app, "roomy")
    bodies = [get_token(http, creds).json for _ in range(3)]
    low = app_factory(url, LICENSES=10, MAX_SEATS_PER_CLIENT=1)
    renamed = cli(low, "update-client", creds["client_id"], "--name", "Roomy", "--no-max-seats")
    assert renamed["sessions_ended"] == 0
    statuses = [http.get("/whoami", headers=bearer(b["access_token"])).status_code for b in bodies]
    assert statuses == [200, 200, 200]


def test_update_client_setting_a_cap_without_a_pool_caps_the_running_sessions(
    app: Flask,
) -> None:
    # No TOKENGUARD_LICENSES: sessions started before the cap hold no seat, and cannot take
    # one afterwards; they end, so the cap holds from now on.
    http = app.test_client()
    creds = register(app, "free")
    bodies = [get_token(http, creds).json for _ in range(3)]
    view = get_token(http, creds, scope="view").json
    capped = cli(app, "update-client", creds["client_id"], "--max-seats", "1")
    assert capped["sessions_ended"] == 3
    statuses = [http.get("/whoami", headers=bearer(b["access_token"])).status_code for b in bodies]
    assert statuses == [401, 401, 401]
    assert http.get("/whoami", headers=bearer(view["access_token"])).status_code == 200
    assert get_token(http, creds).status_code == 200
    assert get_token(http, creds).json["error"] == "license_unavailable"


def test_update_client_no_max_seats(app: Flask) -> None:
    creds = register(app, "capped", "--max-seats", "1")
    updated = cli(app, "update-client", creds["client_id"], "--no-max-seats")
    assert updated["max_seats"] is None
    assert cli(app, "list-clients")[0]["max_seats"] is None


def test_update_client_text_output(app: Flask) -> None:
    creds = register(app)
    result = run(app, "update-client", creds["client_id"], "--name", "renamed")
    assert result.exit_code == 0
    assert result.stdout == f"{creds['client_id']} updated; 0 session(s) ended\n"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--scope", "admin"], id="unknown-scope"),
        pytest.param(["--grant", "implicit"], id="unknown-grant"),
        pytest.param(["--alias", "not valid!"], id="bad-alias"),
        pytest.param(["--alias", "taken"], id="taken-alias"),
        pytest.param(["--max-seats", "-1"], id="negative-max-seats"),
        pytest.param(["--name", "  "], id="blank-name"),
    ],
)
def test_update_client_refuses_bad_options_and_changes_nothing(app: Flask, args: list[str]) -> None:
    register(app, "other", "--alias", "taken")
    creds = register(app, "target", "--alias", "mine", "--max-seats", "2")
    before = cli(app, "list-clients")
    assert_fails(run(app, "update-client", creds["client_id"], *args, "--json"))
    assert cli(app, "list-clients") == before


def test_update_client_public_client_cannot_get_client_credentials(app: Flask) -> None:
    public = register(app, "spa", "--public")
    result = run(app, "update-client", public["client_id"], "--grant", "client_credentials")
    assert_fails(result)
    assert "client_credentials" in result.stderr
    assert cli(app, "list-clients")[0]["grants"] == ["password", "refresh_token"]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="nothing"),
        pytest.param(["--alias", "a", "--no-alias"], id="alias-and-no-alias"),
        pytest.param(["--max-seats", "1", "--no-max-seats"], id="max-seats-and-no-max-seats"),
    ],
)
def test_update_client_usage_errors(app: Flask, args: list[str]) -> None:
    creds = register(app)
    result = run(app, "update-client", creds["client_id"], *args)
    assert result.exit_code == 2 and result.stdout == ""


def test_update_client_unknown_client_fails(app: Flask) -> None:
    result = run(app, "update-client", "tg_nobody", "--name", "x")
    assert_fails(result)
    assert "no client 'tg_nobody'" in result.stderr


# -- users --------------------------------------------------------------------------------


def test_create_user_password_stdin(app: Flask, client: t.Any) -> None:
    public = register(app, "public app", "--public")
    data = cli(app, "create-user", "bob", "--password-stdin", input="builder\n")
    assert data["username"] == "bob"
    assert password_token(client, public["client_id"], "bob", "builder").status_code == 200


def test_create_user_prompts_twice_hidden(app: Flask, client: t.Any) -> None:
    public = register(app, "public app", "--public")
    result = run(app, "create-user", "carol", "--json", input="hidden-pw\nhidden-pw\n")
    assert result.exit_code == 0, result.output
    assert "hidden-pw" not in result.output
    assert json_after_prompts(result.stdout)["username"] == "carol"
    assert password_token(client, public["client_id"], "carol", "hidden-pw").status_code == 200


def test_create_user_prompt_mismatch_asks_again(app: Flask, client: t.Any) -> None:
    public = register(app, "public app", "--public")
    result = run(app, "create-user", "dave", "--json", input="one\ntwo\nthree\nthree\n")
    assert result.exit_code == 0, result.output
    assert password_token(client, public["client_id"], "dave", "three").status_code == 200


def test_create_user_duplicate_fails(app: Flask) -> None:
    cli(app, "create-user", "erin", "--password-stdin", input="pw1\n")
    assert_fails(run(app, "create-user", "erin", "--password-stdin", "--json", input="pw2\n"))


def test_create_user_admin_and_list_users_json(app: Flask) -> None:
    made = cli(app, "create-user", "root", "--admin", "--password-stdin", input="pw-root\n")
    assert made["admin"] is True
    cli(app, "create-user", "plain", "--password-stdin", input="pw-plain\n")
    listed = cli(app, "list-users")
    assert [set(u) for u in listed] == [{"username", "admin", "created_at"}] * 2
    assert [(u["username"], u["admin"]) for u in listed] == [("plain", False), ("root", True)]
    assert all(isinstance(u["created_at"], int) and u["created_at"] > 0 for u in listed)
    assert run(app, "list-users").stdout.splitlines() == ["plain", "root  (admin)"]


def test_set_password_keeps_admin(app: Flask) -> None:
    cli(app, "create-user", "root", "--admin", "--password-stdin", input="pw-root\n")
    cli(app, "set-password", "root", "--password-stdin", input="pw-new\n")
    assert cli(app, "list-users")[0]["admin"] is True
    assert app.extensions["tokenguard"].store(app).get_user("root").admin is True


def test_list_users_never_shows_hashes(app: Flask) -> None:
    cli(app, "create-user", "frank", "--password-stdin", input="pw-frank\n")
    cli(app, "create-user", "grace", "--password-stdin", input="pw-grace\n")
    stored = app.extensions["tokenguard"].store(app).get_user("frank")
    result = run(app, "list-users", "--json")
    assert [u["username"] for u in json.loads(result.stdout)] == ["frank", "grace"]
    assert stored.password_hash not in result.output
    assert "pw-frank" not in result.output


def test_set_password_stdin(app: Flask, client: t.Any, alice: dict[str, t.Any]) -> None:
    cli(app, "set-password", "alice", "--password-stdin", input="looking-glass\n")
    assert password_token(client, alice["client_id"], "alice", "looking-glass").status_code == 200
    old = password_token(client, alice["client_id"], "alice", "wonderland")
    assert old.status_code == 400
    assert old.json["error"] == "invalid_grant"


def test_set_password_prompts_twice_hidden(
    app: Flask, client: t.Any, alice: dict[str, t.Any]
) -> None:
    result = run(app, "set-password", "alice", "--json", input="queen-of-hearts\n" * 2)
    assert result.exit_code == 0, result.output
    assert "queen-of-hearts" not in result.output
    assert password_token(client, alice["client_id"], "alice", "queen-of-hearts").status_code == 200


def test_set_password_unknown_user_fails(app: Flask) -> None:
    assert_fails(run(app, "set-password", "nobody", "--password-stdin", "--json", input="pw\n"))


def test_delete_user(app: Flask, client: t.Any, alice: dict[str, t.Any]) -> None:
    cli(app, "delete-user", "alice")
    assert cli(app, "list-users") == []
    response = password_token(client, alice["client_id"], "alice", "wonderland")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"


def test_delete_user_unknown_fails(app: Flask) -> None:
    assert_fails(run(app, "delete-user", "nobody", "--json"))


# -- sessions and logoff ------------------------------------------------------------------


def test_sessions_lists_live_sessions(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(LICENSES=3)
    creds = register(app)
    get_token(app.test_client(), creds)
    [session] = cli(app, "sessions")
    assert session["client_id"] == creds["client_id"]
    assert session["subject"] == creds["client_id"]
    assert session["scopes"] == ["all"]
    assert session["holds_seat"] is True
    assert isinstance(session["session_id"], str) and session["session_id"]
    assert isinstance(session["expires_at"], int)


def test_sessions_subject_is_the_user(app: Flask, client: t.Any, alice: dict[str, t.Any]) -> None:
    password_token(client, alice["client_id"], "alice", "wonderland")
    assert [s["subject"] for s in cli(app, "sessions")] == ["alice"]


def test_sessions_client_filter(app: Flask, client: t.Any) -> None:
    first, second = register(app, "first", "--alias", "one"), register(app, "second")
    get_token(client, first)
    get_token(client, second)
    get_token(client, second)
    listed = cli(app, "sessions", "--client", first["client_id"])
    assert [s["client_id"] for s in listed] == [first["client_id"]]
    assert len(cli(app, "sessions", "--client", "one")) == 1
    assert len(cli(app, "sessions", "--client", second["client_id"])) == 2


def test_logoff_session(app: Flask, client: t.Any) -> None:
    creds = register(app)
    ended = get_token(client, creds).json
    kept = get_token(client, creds).json
    claims = jwt.decode(ended["access_token"], options={"verify_signature": False})
    assert claims["sid"] in [s["session_id"] for s in cli(app, "sessions")]
    cli(app, "logoff", claims["sid"])
    assert refresh(client, creds, ended["refresh_token"]).json["error"] == "invalid_grant"
    assert refresh(client, creds, kept["refresh_token"]).status_code == 200


def test_logoff_session_frees_its_seat(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(LICENSES=1)
    http = app.test_client()
    creds = register(app)
    get_token(http, creds)
    assert get_token(http, creds).json["error"] == "license_unavailable"
    [session] = cli(app, "sessions")
    cli(app, "logoff", session["session_id"])
    assert cli(app, "licenses")["in_use"] == 0
    assert get_token(http, creds).status_code == 200


def test_logoff_unknown_session_fails(app: Flask) -> None:
    assert_fails(run(app, "logoff", "no-such-session", "--json"))


def test_logoff_client(app: Flask, client: t.Any) -> None:
    first, second = register(app, "first"), register(app, "second")
    get_token(client, first)
    get_token(client, first)
    get_token(client, second)
    assert cli(app, "logoff", "--client", first["client_id"])["ended"] == 2
    assert [s["client_id"] for s in cli(app, "sessions")] == [second["client_id"]]


def test_logoff_all(app: Flask, client: t.Any) -> None:
    first, second = register(app, "first"), register(app, "second")
    get_token(client, first)
    get_token(client, second)
    assert cli(app, "logoff", "--all")["ended"] == 2
    assert cli(app, "sessions") == []


def test_logoff_access_token_stops_working(instant_app: Flask) -> None:
    http = instant_app.test_client()
    access = get_token(http, register(instant_app)).json["access_token"]
    cli(instant_app, "logoff", "--all")
    assert http.get("/whoami", headers=bearer(access)).status_code == 401


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="none"),
        pytest.param(["SESSION", "--all"], id="session-and-all"),
        pytest.param(["--client", "C", "--all"], id="client-and-all"),
        pytest.param(["SESSION", "--client", "C"], id="session-and-client"),
    ],
)
def test_logoff_needs_exactly_one_target(app: Flask, client: t.Any, args: list[str]) -> None:
    creds = register(app, "C")
    get_token(client, creds)
    [session] = cli(app, "sessions")
    names = {"SESSION": session["session_id"], "C": creds["client_id"]}
    result = run(app, "logoff", *[names.get(a, a) for a in args], "--json")
    assert result.exit_code == 2  # click's usage error
    assert "SESSION" in result.stderr
    assert len(cli(app, "sessions")) == 1


# -- licenses -----------------------------------------------------------------------------


def test_licenses_unlimited(app: Flask, client: t.Any) -> None:
    get_token(client, register(app))
    assert cli(app, "licenses") == {"in_use": 0, "total": None}


def test_licenses_counts_seats(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(LICENSES=2)
    http = app.test_client()
    creds = register(app)
    get_token(http, creds)
    get_token(http, creds, scope="view")  # view needs no seat
    assert cli(app, "licenses") == {"in_use": 1, "total": 2}


# -- rotate-keys --------------------------------------------------------------------------


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_rotate_keys_returns_new_kid(app: Flask, client: t.Any) -> None:
    old = get_token(client, register(app)).json["access_token"]
    kid = cli(app, "rotate-keys")["kid"]
    assert kid and kid != _kid(old)


def test_rotate_keys_new_tokens_carry_new_kid(app: Flask, client: t.Any) -> None:
    creds = register(app)
    get_token(client, creds)
    kid = cli(app, "rotate-keys")["kid"]
    new = get_token(client, creds).json["access_token"]
    assert _kid(new) == kid
    assert client.get("/whoami", headers=bearer(new)).status_code == 200


def test_rotate_keys_old_tokens_still_work(app: Flask, client: t.Any) -> None:
    old = get_token(client, register(app)).json["access_token"]
    cli(app, "rotate-keys")
    assert client.get("/whoami", headers=bearer(old)).status_code == 200


def test_rotate_keys_jwks_lists_both(app: Flask, client: t.Any) -> None:
    old = get_token(client, register(app)).json["access_token"]
    kid = cli(app, "rotate-keys")["kid"]
    kids = {k["kid"] for k in client.get("/jwks.json").json["keys"]}
    assert {_kid(old), kid} <= kids


# -- as a user types it: flask --app sample_app, FLASK_TOKENGUARD_* env -------------------


def test_flask_cli_create_client_on_sqlite_file(
    tmp_path: Path, app_factory: t.Callable[..., Flask]
) -> None:
    store_url = f"sqlite:///{tmp_path}/x.sqlite3"
    creds = flask_cli(store_url, "create-client", "from the shell")
    assert creds["name"] == "from the shell"
    app = app_factory(store_url=store_url)
    try:
        assert get_token(app.test_client(), creds).status_code == 200
    finally:
        app.extensions["tokenguard"].close_store(app)


def test_flask_cli_licenses_on_sqlite_file(
    tmp_path: Path, app_factory: t.Callable[..., Flask]
) -> None:
    store_url = f"sqlite:///{tmp_path}/x.sqlite3"
    creds = flask_cli(store_url, "create-client", "seat holder")
    app = app_factory(store_url=store_url, LICENSES=3)
    try:
        assert get_token(app.test_client(), creds).status_code == 200
    finally:
        app.extensions["tokenguard"].close_store(app)
    assert flask_cli(store_url, "licenses", LICENSES="3") == {"in_use": 1, "total": 3}


def test_admin_errors_have_their_own_types_and_become_click_errors(app: Flask) -> None:
    from flask_tokenguard import AdminInputError
    from flask_tokenguard import ConfigurationError
    from flask_tokenguard import NotFoundError
    from flask_tokenguard.core import clients

    store = app.extensions["tokenguard"].store(app)
    with pytest.raises(NotFoundError):
        clients.find_client(store, "tg_nobody")
    with pytest.raises(AdminInputError) as caught:
        clients.create_client(store, "x", scopes=["nope"], known_scopes=["view"], now=0)
    assert not isinstance(caught.value, ConfigurationError)
    runner = app.test_cli_runner()
    missing = runner.invoke(args=["tokenguard", "disable-client", "tg_nobody"])
    assert missing.exit_code == 1 and "no client 'tg_nobody'" in missing.output
    bad = runner.invoke(args=["tokenguard", "create-client", "x", "--scope", "nope"])
    assert bad.exit_code == 1 and "unknown scope 'nope'" in bad.output


def test_update_client_in_core_keeps_what_is_not_given(app: Flask) -> None:
    """The rule the CLI and the admin console share: ``KEEP`` leaves a field alone."""
    from flask_tokenguard.core import clients

    store = app.extensions["tokenguard"].store(app)
    created = register(app, "kept", "--alias", "kept-1", "--max-seats", "2")
    before = store.get_client(created["client_id"])
    unchanged, ended = clients.update_client(store, "kept-1", known_scopes=["view", "all"], now=0.0)
    assert (unchanged, ended) == (before, [])
    updated, _ = clients.update_client(
        store, "kept-1", known_scopes=["view", "all"], now=0.0, alias=None, max_seats=None
    )
    assert dataclasses.replace(before, alias=None, max_seats=None) == updated
    assert store.get_client(created["client_id"]) == updated
    with pytest.raises(AdminInputError):
        clients.update_client(store, updated.client_id, known_scopes=["view"], now=0.0, scopes=[])
    with pytest.raises(AdminInputError):
        clients.update_client(
            store, updated.client_id, known_scopes=["view"], now=0.0, max_seats=True
        )
