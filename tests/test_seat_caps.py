"""Seats per client: ``TOKENGUARD_MAX_SEATS_PER_CLIENT``, ``--max-seats`` and the seat policy.

Each HTTP test runs on ``memory://`` and on an SQLite file, through Flask's test client;
the refusal and the replacement also run over a real socket under waitress.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import jwt
import pytest
import requests
from flask import Flask

from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import Clock
from tests.helpers import get_token
from tests.helpers import register


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'caps.sqlite3'}"


@pytest.fixture
def make_app(app_factory: t.Callable[..., Flask], store_url: str) -> t.Callable[..., Flask]:
    """``make_app(**config)`` on this test's store. A long revocation lag, so that only
    what this process notes itself makes a token stop working at once."""

    def build(**config: t.Any) -> Flask:
        config.setdefault("REVOCATION_LAG", 3600)
        return app_factory(store_url, **config)

    return build


def _ok(response: t.Any) -> dict[str, t.Any]:
    assert response.status_code == 200, response.get_json()
    body: dict[str, t.Any] = response.get_json()
    return body


def _refused(response: t.Any) -> int:
    """Assert the answer is 400 ``license_unavailable``; return its ``Retry-After``."""
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "license_unavailable"
    assert response.headers["Cache-Control"] == "no-store"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    return int(retry_after)


def _refresh(http: t.Any, creds: dict[str, t.Any], refresh_token: str) -> t.Any:
    return http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )


def _sid(body: dict[str, t.Any]) -> str:
    return str(jwt.decode(body["access_token"], options={"verify_signature": False})["sid"])


def _seat_holders(app: Flask, client_id: str) -> list[str]:
    return [s["session_id"] for s in cli(app, "sessions", "--client", client_id) if s["holds_seat"]]


def _events(app: Flask, name: str) -> list[dict[str, str]]:
    store = app.extensions["tokenguard"].store(app)
    return [e for e in store.recent_events(1000) if e["event"] == name]


# -- refuse --------------------------------------------------------------------------------------


def test_the_default_cap_refuses_the_next_licensed_session(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=2, SESSION_TTL=600)
    http = app.test_client()
    capped, other = register(app, "capped"), register(app, "other")
    _ok(get_token(http, capped))
    _ok(get_token(http, capped))
    assert 1 <= _refused(get_token(http, capped)) <= 600
    # The cap is per client: another client takes its own seats, and view needs none.
    _ok(get_token(http, other))
    assert _ok(get_token(http, capped, scope="view"))["scope"] == "view"
    # A cap without a pool still counts seats; the pool is unlimited.
    assert cli(app, "licenses") == {"in_use": 3, "total": None}
    assert len(_seat_holders(app, capped["client_id"])) == 2
    (refused,) = _events(app, "license.refused")
    assert refused["client_id"] == capped["client_id"] and refused["reason"] == "client"


def test_retry_after_counts_down_to_the_clients_own_earliest_seat(
    make_app: t.Callable[..., Flask], clock: Clock
) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1, SESSION_TTL=100)
    http = app.test_client()
    early, late = register(app, "early"), register(app, "late")
    _ok(get_token(http, early))  # the pool's earliest seat, but not the late client's
    clock(30)
    _ok(get_token(http, late))
    clock(10)
    assert _refused(get_token(http, late)) in (90, 91)
    assert _refused(get_token(http, early)) in (60, 61)


def test_a_refused_session_changes_nothing(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1)
    http = app.test_client()
    creds = register(app)
    first = _ok(get_token(http, creds))
    _refused(get_token(http, creds))
    assert _seat_holders(app, creds["client_id"]) == [_sid(first)]
    assert http.get("/whoami", headers=bearer(first["access_token"])).status_code == 200


def test_the_pool_still_refuses_under_the_cap(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(LICENSES=2, MAX_SEATS_PER_CLIENT=2)
    http = app.test_client()
    one, two = register(app, "one"), register(app, "two")
    _ok(get_token(http, one))
    _ok(get_token(http, two))
    _refused(get_token(http, one))
    assert [e["reason"] for e in _events(app, "license.refused")] == ["pool"]
    assert cli(app, "licenses") == {"in_use": 2, "total": 2}


def test_refresh_keeps_the_seat_and_is_not_refused_at_the_cap(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1)
    http = app.test_client()
    creds = register(app)
    body = _ok(get_token(http, creds))
    again = _ok(_refresh(http, creds, body["refresh_token"]))
    assert _sid(again) == _sid(body)
    assert _seat_holders(app, creds["client_id"]) == [_sid(body)]


# -- per-client caps -------------------------------------------------------------------------------


def test_a_clients_own_cap_overrides_the_default(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1)
    http = app.test_client()
    roomy = register(app, "roomy", "--max-seats", "3")
    shut = register(app, "shut", "--max-seats", "0")
    plain = register(app, "plain")
    assert (roomy["max_seats"], shut["max_seats"], plain["max_seats"]) == (3, 0, None)
    for _ in range(3):
        _ok(get_token(http, roomy))
    _refused(get_token(http, roomy))
    # A cap of 0: no licensed session at all, and Retry-After is still a positive integer.
    _refused(get_token(http, shut))
    _ok(get_token(http, shut, scope="view"))
    _ok(get_token(http, plain))
    _refused(get_token(http, plain))


def test_an_own_cap_applies_without_a_default_or_a_pool(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    http = app.test_client()
    capped = register(app, "capped", "--max-seats", "1")
    free = register(app, "free")
    _ok(get_token(http, capped))
    _refused(get_token(http, capped))
    for _ in range(3):
        _ok(get_token(http, free))
    # Without a pool or a cap, a session holds no seat and counts nowhere.
    assert _seat_holders(app, free["client_id"]) == []
    assert cli(app, "licenses") == {"in_use": 1, "total": None}


def test_removing_the_own_cap_returns_to_the_default(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1)
    http = app.test_client()
    creds = register(app, "roomy", "--max-seats", "2")
    _ok(get_token(http, creds))
    newest = _ok(get_token(http, creds))
    updated = cli(app, "update-client", creds["client_id"], "--no-max-seats")
    assert updated["max_seats"] is None and updated["sessions_ended"] == 1
    # The oldest seat holder beyond the default cap ended; the newest goes on.
    assert _seat_holders(app, creds["client_id"]) == [_sid(newest)]
    _refused(get_token(http, creds))


def test_view_is_never_capped(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1, SEAT_POLICY="replace_oldest")
    http = app.test_client()
    creds = register(app)
    views = [_ok(get_token(http, creds, scope="view")) for _ in range(4)]
    held = _ok(get_token(http, creds))
    assert _seat_holders(app, creds["client_id"]) == [_sid(held)]
    # A view session is never the one replaced: it holds no seat.
    _ok(get_token(http, creds))
    for body in views:
        assert http.get("/whoami", headers=bearer(body["access_token"])).status_code == 200


# -- replace_oldest ------------------------------------------------------------------------------


def test_replace_oldest_ends_the_oldest_session_at_once(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=2, SEAT_POLICY="replace_oldest", LICENSES=5)
    http = app.test_client()
    creds = register(app)
    oldest = _ok(get_token(http, creds))
    middle = _ok(get_token(http, creds))
    assert http.get("/whoami", headers=bearer(oldest["access_token"])).status_code == 200
    newest = _ok(get_token(http, creds))

    # The replaced session's access token is refused in this process at once (the
    # revocation lag is an hour), and its refresh token is dead.
    assert http.get("/whoami", headers=bearer(oldest["access_token"])).status_code == 401
    assert _refresh(http, creds, oldest["refresh_token"]).get_json()["error"] == "invalid_grant"
    for body in (middle, newest):
        assert http.get("/whoami", headers=bearer(body["access_token"])).status_code == 200
    assert sorted(_seat_holders(app, creds["client_id"])) == sorted([_sid(middle), _sid(newest)])
    assert cli(app, "licenses") == {"in_use": 2, "total": 5}
    (ended,) = _events(app, "session.ended")
    assert ended["session_id"] == _sid(oldest) and ended["reason"] == "replaced"
    assert ended["client_id"] == creds["client_id"]
    assert _events(app, "license.refused") == []


def test_replace_oldest_still_refuses_a_cap_of_zero(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SEAT_POLICY="replace_oldest")
    creds = register(app, "shut", "--max-seats", "0")
    _refused(get_token(app.test_client(), creds))


def test_replace_oldest_replaces_only_the_clients_own_sessions(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1, SEAT_POLICY="replace_oldest", LICENSES=2)
    http = app.test_client()
    one, two, three = register(app, "one"), register(app, "two"), register(app, "three")
    first = _ok(get_token(http, one))
    _ok(get_token(http, two))
    # The pool is full: a third client at no cap of its own is refused, nobody replaced.
    _refused(get_token(http, three))
    assert http.get("/whoami", headers=bearer(first["access_token"])).status_code == 200
    # The first client, at its cap, replaces its own session, not another's.
    _ok(get_token(http, one))
    assert http.get("/whoami", headers=bearer(first["access_token"])).status_code == 401
    assert len(_seat_holders(app, two["client_id"])) == 1


# -- over a real socket ------------------------------------------------------------------------


def _post_token(url: str, creds: dict[str, t.Any], **params: str) -> requests.Response:
    return requests.post(
        url + "/token",
        data={"grant_type": "client_credentials", **params},
        auth=(creds["client_id"], creds["client_secret"]),
        timeout=10,
    )


def test_cap_refusal_over_a_socket(
    make_app: t.Callable[..., Flask], live_server: t.Callable[[t.Any], str]
) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1)
    creds = register(app)
    url = live_server(app)
    assert _post_token(url, creds).status_code == 200
    refused = _post_token(url, creds)
    assert refused.status_code == 400
    assert refused.json()["error"] == "license_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _post_token(url, creds, scope="view").status_code == 200


def test_replace_oldest_over_a_socket(
    make_app: t.Callable[..., Flask], live_server: t.Callable[[t.Any], str]
) -> None:
    app = make_app(MAX_SEATS_PER_CLIENT=1, SEAT_POLICY="replace_oldest")
    creds = register(app)
    url = live_server(app)
    old = _post_token(url, creds).json()
    new = _post_token(url, creds).json()
    whoami = url + "/whoami"
    assert requests.get(whoami, headers=bearer(old["access_token"]), timeout=10).status_code == 401
    assert requests.get(whoami, headers=bearer(new["access_token"]), timeout=10).status_code == 200
    stale = requests.post(
        url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]},
        auth=(creds["client_id"], creds["client_secret"]),
        timeout=10,
    )
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"
    assert cli(app, "licenses") == {"in_use": 1, "total": None}
