"""Throttling of failed passwords, counted in the store, over HTTP."""

from __future__ import annotations

import concurrent.futures
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

import sample_app
from tests.backends import BACKENDS
from tests.backends import isolated_store
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


# -- the per-address count, reserved before the check ------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    with isolated_store(request.param, tmp_path) as url_and_options:
        yield url_and_options


def _counting_verifier(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[str]:
    """Install a password check on the sample app that accepts alice/wonderland and
    records each name it checks (after ``delay`` seconds, so parallel checks overlap)."""
    calls: list[str] = []

    def check(username: str, password: str) -> str | None:
        calls.append(username)
        time.sleep(delay)
        return "alice" if (username, password) == ("alice", "wonderland") else None

    monkeypatch.setattr(sample_app.guard, "_password_verifier", check)
    return calls


def test_parallel_guesses_with_distinct_names_check_at_most_the_threshold(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One address, a different name per attempt: only the address's count can stop them,
    # so it must be reserved before the check like the name's.
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LOCKOUT_THRESHOLD=4, KDF_CONCURRENCY=16)
    public = register(app, "spa", "--public")
    calls = _counting_verifier(monkeypatch, delay=0.3)

    def guess(i: int) -> t.Any:
        return _password(app.test_client(), public["client_id"], f"user{i}", "guess")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(guess, range(16)))
    # The public client's own authentication reserves the address too, so fewer may get
    # to the password while the burst is in flight; never more than the threshold.
    assert 1 <= len(calls) <= 4
    checked = len(calls)
    assert sorted(r.status_code for r in responses) == [400] * checked + [429] * (16 - checked)
    throttled = [r for r in responses if r.status_code == 429]
    assert all(r.get_json()["error"] == "slow_down" for r in throttled)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in throttled)


def test_successes_from_one_address_are_never_throttled(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An office behind one address signs in all day: each success gives its reservation back.
    app = app_factory(LOCKOUT_THRESHOLD=3, LOCKOUT_SECONDS=600)
    public = register(app, "spa", "--public")
    calls = _counting_verifier(monkeypatch)
    client = app.test_client()
    for _ in range(9):
        _ok(_password(client, public["client_id"]))
    assert len(calls) == 9
    # The address's budget is intact: three wrong guesses are still checked, then it stops.
    for i in range(3):
        assert _password(client, public["client_id"], f"user{i}", "guess").status_code == 400
    assert _password(client, public["client_id"]).status_code == 429
    assert len(calls) == 12


def test_parallel_successes_from_one_address_are_never_throttled(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parallel successes overlap, each holding a reservation while it checks; only more
    # than the threshold in flight at once could be refused, so they run threshold wide.
    app = app_factory(LOCKOUT_THRESHOLD=3, KDF_CONCURRENCY=3)
    public = register(app, "spa", "--public")
    calls = _counting_verifier(monkeypatch, delay=0.05)

    def sign_in(_: int) -> int:
        return int(_password(app.test_client(), public["client_id"]).status_code)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(sign_in, range(9)))
    assert statuses == [200] * 9
    assert len(calls) == 9


def test_a_name_refusal_costs_the_address_nothing(
    app_factory: t.Callable[..., Flask], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refusal by the name's count checks nothing, so the address gets its count back:
    # one locked name does not use up the address's budget for the others.
    app = app_factory(LOCKOUT_THRESHOLD=3, LOCKOUT_SECONDS=120)
    public = register(app, "spa", "--public")
    calls = _counting_verifier(monkeypatch)
    client = app.test_client()
    client_id = public["client_id"]
    assert _password(client, client_id, "carol", "guess").status_code == 400  # address: 1
    clock(100)
    for _ in range(2):  # bob's window starts 100 s after the address's
        assert _password(client, client_id, "bob", "guess").status_code == 400
    clock(21)  # the address's window has ended, bob's (at 2) has not
    assert _password(client, client_id, "bob", "guess").status_code == 400  # address: 1
    for _ in range(5):
        refused = _password(client, client_id, "bob", "guess")
        assert refused.status_code == 429 and refused.get_json()["error"] == "slow_down"
    assert calls == ["carol", "bob", "bob", "bob"]
    # The address is still at 1: two more checks are allowed, then it stops.
    assert _password(client, client_id, "carol", "guess").status_code == 400
    _ok(_password(client, client_id))
    assert _password(client, client_id, "dave", "guess").status_code == 400
    assert _password(client, client_id, "erin", "guess").status_code == 429


def _slow_secret_checks(monkeypatch: pytest.MonkeyPatch, delay: float) -> list[bool]:
    """Make each client-secret check take ``delay`` seconds (so parallel ones overlap) and
    record each check's outcome."""
    from flask_tokenguard.core import clients
    from flask_tokenguard.core.security import verify_secret as real

    checked: list[bool] = []

    def slow(secret: str, secret_hash: str) -> bool:
        time.sleep(delay)
        result = real(secret, secret_hash)
        checked.append(result)
        return result

    monkeypatch.setattr(clients, "verify_secret", slow)
    return checked


def _client_credentials(app: Flask, client_id: str, secret: str) -> t.Any:
    return app.test_client().post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, secret)
    )


def test_parallel_wrong_client_secrets_check_at_most_the_threshold(
    app_factory: t.Callable[..., Flask],
    backend: tuple[str, dict[str, t.Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CONTRACT: the count is reserved before the check, for client secrets as for
    # passwords, so a parallel burst of guesses cannot slip past the threshold.
    url, options = backend
    app = app_factory(url, STORE_OPTIONS=options, LOCKOUT_THRESHOLD=5)
    creds = register(app)
    checked = _slow_secret_checks(monkeypatch, delay=0.3)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda i: _client_credentials(app, creds["client_id"], f"guess{i}"), range(16))
        )
    assert 1 <= len(checked) <= 5 and not any(checked)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * len(checked) + [429] * (16 - len(checked))
    assert all(r.get_json()["error"] == "slow_down" for r in responses if r.status_code == 429)


def test_a_burst_of_parallel_client_successes_leaves_no_lockout(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    # More successes in flight at once than the threshold: the later ones wait their turn
    # (429), and since a refusal gives its reservation back, nothing stays counted.
    app = app_factory(LOCKOUT_THRESHOLD=3)
    creds = register(app)
    checked = _slow_secret_checks(monkeypatch, delay=0.3)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(
                lambda i: _client_credentials(app, creds["client_id"], creds["client_secret"]),
                range(10),
            )
        )
    assert 1 <= len(checked) <= 3 and all(checked)
    assert sorted(r.status_code for r in responses) == [200] * len(checked) + [429] * (
        10 - len(checked)
    )
    store = app.extensions["tokenguard"].store(app)
    assert store.failures("addr:127.0.0.1", time.time())[0] == 0
    for _ in range(5):  # one after the other: never throttled
        _ok(_client_credentials(app, creds["client_id"], creds["client_secret"]))
