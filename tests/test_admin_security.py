"""The admin console against an outsider: what the attack pass found, pinned so it stays fixed."""

from __future__ import annotations

import dataclasses
import typing as t

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from tests.helpers import cli
from tests.helpers import Clock
from tests.test_admin import add_user
from tests.test_admin import csrf_of
from tests.test_admin import sign_in

SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "Cache-Control")


@pytest.fixture
def admin_app(app_factory: t.Callable[..., Flask]) -> Flask:
    app = app_factory(ADMIN_ENABLED=True, LICENSES=2)
    add_user(app)
    return app


@pytest.fixture
def admin(admin_app: Flask) -> t.Any:
    http = admin_app.test_client()
    assert sign_in(http).status_code == 303
    return http


def signed_out(response: TestResponse) -> bool:
    location = response.headers.get("Location", "")
    return response.status_code == 303 and location.endswith("/admin/sign-in")


# -- an administrator who is no longer one -----------------------------------------------


def test_deleting_an_administrator_ends_their_console_session(
    admin: t.Any, admin_app: Flask
) -> None:
    assert admin.get("/admin/clients").status_code == 200
    cli(admin_app, "delete-user", "root")
    assert signed_out(admin.get("/admin/clients"))
    # The same name created again, even as an administrator, is not the old session's.
    add_user(admin_app)
    assert signed_out(admin.get("/admin/clients"))


def test_changing_an_administrators_password_ends_their_console_session(
    admin: t.Any, admin_app: Flask
) -> None:
    token = csrf_of(admin.get("/admin/clients/new").get_data(as_text=True))
    cli(admin_app, "set-password", "root", "--password-stdin", input="a new password\n")
    response = admin.post(
        "/admin/clients/new",
        data={"csrf_token": token, "name": "X", "scope": "view", "grant": "client_credentials"},
    )
    assert signed_out(response)
    assert admin_app.extensions["tokenguard"].store(admin_app).list_clients() == []
    # The new password signs in again.
    assert sign_in(admin, password="a new password").status_code == 303
    assert admin.get("/admin/clients").status_code == 200


def test_an_administrator_made_a_plain_user_is_signed_out(admin: t.Any, admin_app: Flask) -> None:
    store = admin_app.extensions["tokenguard"].store(admin_app)
    user = store.get_user("root")
    assert user is not None
    store.update_user(dataclasses.replace(user, admin=False))
    assert signed_out(admin.get("/admin/licenses"))


def test_a_form_older_than_the_idle_timeout_is_refused_in_a_live_session(
    app_factory: t.Callable[..., Flask], clock: Clock
) -> None:
    app = app_factory(ADMIN_ENABLED=True, ADMIN_SESSION_TTL=60)
    add_user(app)
    http = app.test_client()
    assert sign_in(http).status_code == 303
    token = csrf_of(http.get("/admin/clients/new").get_data(as_text=True))
    for _ in range(2):
        clock(40)  # the session stays alive, the form ages
        assert http.get("/admin/clients").status_code == 200
    form = {"csrf_token": token, "name": "Late", "scope": "view", "grant": "client_credentials"}
    response = http.post("/admin/clients/new", data=form)
    assert response.status_code == 400
    assert app.extensions["tokenguard"].store(app).list_clients() == []


# -- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize("max_seats", ["²", "١٢", "５", "٣"])
def test_max_seats_takes_ascii_digits_only(admin: t.Any, admin_app: Flask, max_seats: str) -> None:
    token = csrf_of(admin.get("/admin/clients/new").get_data(as_text=True))
    response = admin.post(
        "/admin/clients/new",
        data={
            "csrf_token": token,
            "name": "Seats",
            "scope": "all",
            "grant": "client_credentials",
            "max_seats": max_seats,
        },
    )
    assert response.status_code == 400
    assert "Max seats must be a whole number" in response.get_data(as_text=True)
    assert admin_app.extensions["tokenguard"].store(admin_app).list_clients() == []


# -- unknown paths and methods -----------------------------------------------------------

UNROUTED = [
    ("GET", "/admin/nope"),
    ("GET", "/admin/sign-out"),
    ("GET", "/admin/clients/tg_x/enabled"),
    ("GET", "/admin/sessions/abc/logoff"),
    ("PUT", "/admin/clients/tg_x"),
    ("DELETE", "/admin/clients/tg_x/delete"),
    ("GET", "/admin/../admin/clients"),
]


@pytest.mark.parametrize(("method", "url"), UNROUTED)
def test_unrouted_admin_urls_without_a_session_show_only_sign_in(
    admin_app: Flask, method: str, url: str
) -> None:
    response = admin_app.test_client().open(url, method=method)
    assert signed_out(response)
    for name in SECURITY_HEADERS:
        assert name in response.headers


@pytest.mark.parametrize(("method", "url"), UNROUTED)
def test_unrouted_admin_urls_are_console_error_pages(admin: t.Any, method: str, url: str) -> None:
    response = admin.open(url, method=method)
    assert response.status_code in (404, 405)
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    if response.status_code == 405:
        assert "Allow" in response.headers


def test_not_found_page_does_not_echo_the_url(admin: t.Any) -> None:
    bait = "Your-session-expired-call-555-0100-to-restore-access"
    for url in (f"/admin/clients/{bait}", f"/admin/clients/{bait}/rotate"):
        response = admin.get(url)
        assert response.status_code == 404
        assert bait not in response.get_data(as_text=True)


def test_the_apps_own_paths_keep_their_headers(admin: t.Any) -> None:
    for url in ("/health", "/no-such-page", "/administrator"):
        response = admin.get(url)
        assert "Content-Security-Policy" not in response.headers, url


def test_unrouted_urls_follow_the_url_prefix(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(ADMIN_ENABLED=True, URL_PREFIX="/connect")
    http = app.test_client()
    response = http.get("/connect/admin/nope")
    assert response.headers["Location"].endswith("/connect/admin/sign-in")
    assert "Content-Security-Policy" in response.headers
    assert "Content-Security-Policy" not in http.get("/admin/nope").headers
