"""Throttling of failed passwords, counted in the store, over HTTP."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from tests.helpers import basic
from tests.helpers import cli
from tests.helpers import Clock
from tests.helpers import register


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


def _ok(response: t.Any) -> dict[str, t.Any]:
    assert response.status_code == 200, response.get_json()
    body: dict[str, t.Any] = response.get_json()
    return body


def test_password_lockout_after_threshold(
    app_factory: t.Callable[..., Flask], clock: Clock
) -> None:
    app = app_factory(LOCKOUT_THRESHOLD=3, LOCKOUT_SECONDS=120)
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    public = register(app, "spa", "--public")
    client = app.test_client()
    for _ in range(3):
        assert (
            _password(client, public["client_id"], password="guess").get_json()["error"]
            == "invalid_grant"
        )
    locked = _password(client, public["client_id"])  # even the right password
    assert locked.status_code == 429 and locked.get_json()["error"] == "slow_down"
    assert "Too many" in locked.get_json()["error_description"]
    assert 1 <= int(locked.headers["Retry-After"]) <= 120
    clock(121)
    _ok(_password(client, public["client_id"]))


def test_lockout_counts_unknown_users_alike(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(LOCKOUT_THRESHOLD=2)
    public = register(app, "spa", "--public")
    client = app.test_client()
    for _ in range(2):
        _password(client, public["client_id"], username="nobody", password="x")
    refused = _password(client, public["client_id"], username="nobody", password="x")
    assert refused.status_code == 429 and "Retry-After" in refused.headers


def test_success_clears_failures(app_factory: t.Callable[..., Flask]) -> None:
    # Every attempt is counted before its check; a success clears the user's own count, so
    # signing in again and again never throttles. Failures still count for the address.
    app = app_factory(LOCKOUT_THRESHOLD=3)
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    public = register(app, "spa", "--public")
    client = app.test_client()
    _password(client, public["client_id"], password="guess")
    _password(client, public["client_id"], password="guess")
    for _ in range(4):
        _ok(_password(client, public["client_id"]))
    assert _password(client, public["client_id"], password="guess").status_code == 400
    assert _password(client, public["client_id"]).status_code == 429  # the address's 3 failures


def test_lockout_zero_never_locks(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(LOCKOUT_THRESHOLD=0)
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    public = register(app, "spa", "--public")
    client = app.test_client()
    for _ in range(12):
        _password(client, public["client_id"], password="guess")
    _ok(_password(client, public["client_id"]))
