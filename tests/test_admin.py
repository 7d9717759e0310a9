"""The admin console through Flask's test client: sign-in, CSRF, cookies and every page."""

from __future__ import annotations

import html
import re
import typing as t

import jwt
import pytest
from flask import Flask

from flask_tokenguard import TokenGuard
from flask_tokenguard.core.security import hash_password
from flask_tokenguard.core.security import hash_secret
from flask_tokenguard.models import User
from flask_tokenguard.web.admin.views import SESSION_COOKIE
from tests.helpers import bearer
from tests.helpers import cli
from tests.helpers import Clock
from tests.helpers import get_token
from tests.helpers import register

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_user(app: Flask, username: str = "root", *, admin: bool = True) -> None:
    store = app.extensions["tokenguard"].store(app)
    store.create_user(User(username, hash_password(PASSWORD, 10), created_at=1.0, admin=admin))


@pytest.fixture
def admin_app(app_factory: t.Callable[..., Flask]) -> Flask:
    app = app_factory(ADMIN_ENABLED=True, LICENSES=2)
    add_user(app)
    return app


def csrf_of(page: str) -> str:
    match = CSRF.search(page)
    assert match, "no CSRF token on the page"
    return html.unescape(match.group(1))


def field(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*value="([^"]*)"', page)
    assert match, f"no field {element_id}"
    return html.unescape(match.group(1))


def sign_in(http: t.Any, username: str = "root", password: str = PASSWORD) -> t.Any:
    page = http.get("/admin/sign-in").get_data(as_text=True)
    return http.post(
        "/admin/sign-in",
        data={"username": username, "password": password, "csrf_token": csrf_of(page)},
    )


@pytest.fixture
def admin(admin_app: Flask) -> t.Any:
    """A test client signed in to the console."""
    http = admin_app.test_client()
    response = sign_in(http)
    assert response.status_code == 303
    return http


def post_form(http: t.Any, page_url: str, action: str, **data: t.Any) -> t.Any:
    """POST ``data`` to ``action`` with the CSRF token of ``page_url``, as a browser would."""
    token = csrf_of(http.get(page_url).get_data(as_text=True))
    return http.post(action, data={"csrf_token": token, **data})


def create(http: t.Any, name: str = "Reports", **data: t.Any) -> tuple[str, str | None, str]:
    form = {"name": name, "scope": ["view", "all"], "grant": ["client_credentials"], **data}
    response = post_form(http, "/admin/clients/new", "/admin/clients/new", **form)
    assert response.status_code == 200, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    secret = field(page, "client-secret") if 'id="client-secret"' in page else None
    return field(page, "client-id"), secret, page


def creds(client_id: str, secret: str | None) -> dict[str, t.Any]:
    return {"client_id": client_id, "client_secret": secret or ""}


def events_of(app: Flask) -> list[dict[str, str]]:
    events: list[dict[str, str]] = app.extensions["tokenguard"].store(app).recent_events()
    return events


# -- enabling, sign-in, sessions ---------------------------------------------------------


def test_console_is_off_by_default(app_factory: t.Callable[..., Flask]) -> None:
    http = app_factory().test_client()
    assert http.get("/admin/sign-in").status_code == 404
    assert http.get("/admin/clients").status_code == 404


def test_console_follows_the_url_prefix(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(ADMIN_ENABLED=True, URL_PREFIX="/connect")
    response = app.test_client().get("/connect/admin/sign-in")
    assert response.status_code == 200
    assert not response.headers["Set-Cookie"].startswith(SESSION_COOKIE + "=")
    assert "Path=/connect/admin/" in response.headers["Set-Cookie"]


ADMIN_URLS = [
    ("GET", "/admin/"),
    ("GET", "/admin/clients"),
    ("GET", "/admin/clients/new"),
    ("GET", "/admin/clients/tg_x"),
    ("GET", "/admin/clients/tg_x/rotate"),
    ("GET", "/admin/clients/tg_x/delete"),
    ("GET", "/admin/licenses"),
    ("GET", "/admin/events"),
    ("POST", "/admin/clients/new"),
    ("POST", "/admin/clients/tg_x"),
    ("POST", "/admin/clients/tg_x/rotate"),
    ("POST", "/admin/clients/tg_x/enabled"),
    ("POST", "/admin/clients/tg_x/delete"),
    ("POST", "/admin/clients/tg_x/logoff"),
    ("POST", "/admin/sessions/abc/logoff"),
    ("POST", "/admin/sign-out"),
]


@pytest.mark.parametrize(("method", "url"), ADMIN_URLS)
def test_every_page_without_a_session_shows_only_sign_in(
    admin_app: Flask, method: str, url: str
) -> None:
    http = admin_app.test_client()
    response = http.open(url, method=method, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.request.path == "/admin/sign-in"
    assert "<h1>Sign in</h1>" in page
    assert "Sign out" not in page and ">Clients</a>" not in page


def test_a_forged_cookie_is_no_session(admin_app: Flask) -> None:
    http = admin_app.test_client()
    http.set_cookie(SESSION_COOKIE, "made-up", path="/admin/")
    response = http.get("/admin/clients")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/sign-in")


def test_sign_in_starts_a_server_side_session(admin_app: Flask) -> None:
    http = admin_app.test_client()
    response = sign_in(http)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/clients")
    cookie = http.get_cookie(SESSION_COOKIE, path="/admin/")
    assert cookie is not None and len(cookie.value) >= 43
    store = admin_app.extensions["tokenguard"].store(admin_app)
    # Only the hash of the cookie's value is kept.
    stored = store.touch_admin_session(hash_secret(cookie.value), 0.0, 4e9)
    assert stored is not None and stored.username == "root"
    page = http.get("/admin/clients").get_data(as_text=True)
    assert "<h1>Clients</h1>" in page and "Sign out" in page
    assert [e["event"] for e in events_of(admin_app)][:1] == ["admin.signed_in"]
    assert events_of(admin_app)[0]["admin"] == "root"


def test_session_cookie_flags(admin_app: Flask) -> None:
    http = admin_app.test_client()
    header = next(
        h for h in sign_in(http).headers.getlist("Set-Cookie") if h.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header
    assert "Path=/admin/" in header
    assert "Secure" not in header  # plain HTTP from loopback


def test_session_cookie_is_secure_over_https(admin_app: Flask) -> None:
    http = admin_app.test_client()
    page = http.get("/admin/sign-in", base_url="https://localhost")
    sign_in_header = page.headers["Set-Cookie"]
    assert "Secure" in sign_in_header and "HttpOnly" in sign_in_header
    response = http.post(
        "/admin/sign-in",
        base_url="https://localhost",
        data={
            "username": "root",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.get_data(as_text=True)),
        },
    )
    assert response.status_code == 303
    header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(SESSION_COOKIE))
    assert "; Secure" in header and "SameSite=Strict" in header and "HttpOnly" in header


def test_plain_http_from_elsewhere_is_refused(admin_app: Flask) -> None:
    response = admin_app.test_client().get(
        "/admin/sign-in", environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert response.status_code == 400
    assert "HTTPS required" in response.get_data(as_text=True)


def test_wrong_password_and_unknown_user_are_refused_alike(admin_app: Flask) -> None:
    http = admin_app.test_client()
    wrong = sign_in(http, password="nope")
    unknown = sign_in(http, username="nobody")
    for response in (wrong, unknown):
        page = response.get_data(as_text=True)
        assert response.status_code == 401
        assert "The user name or password is wrong." in page
        assert "Sign out" not in page
    assert http.get_cookie(SESSION_COOKIE, path="/admin/") is None
    failed = [e for e in events_of(admin_app) if e["event"] == "admin.sign_in_failed"]
    assert len(failed) == 2
    assert all(PASSWORD not in str(e) and "nope" not in str(e) for e in events_of(admin_app))


def test_a_user_who_is_not_an_administrator_is_refused(admin_app: Flask) -> None:
    add_user(admin_app, "clerk", admin=False)
    http = admin_app.test_client()
    response = sign_in(http, username="clerk")
    assert response.status_code == 401
    assert http.get("/admin/clients").status_code == 303


def test_failed_sign_ins_are_throttled(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(ADMIN_ENABLED=True, LOCKOUT_THRESHOLD=3)
    add_user(app)
    http = app.test_client()
    for _ in range(3):
        assert sign_in(http, password="wrong").status_code == 401
    response = sign_in(http)  # the right password, but over the threshold: not checked
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    page = response.get_data(as_text=True)
    assert "Too many failed sign-ins" in page and "<h1>Sign in</h1>" in page
    assert http.get_cookie(SESSION_COOKIE, path="/admin/") is None
    # Another address is not affected.
    other = app.test_client()
    token = csrf_of(
        other.get("/admin/sign-in", environ_base={"REMOTE_ADDR": "127.0.0.2"}).get_data(
            as_text=True
        )
    )
    ok = other.post(
        "/admin/sign-in",
        data={"username": "root", "password": PASSWORD, "csrf_token": token},
        environ_base={"REMOTE_ADDR": "127.0.0.2"},
    )
    assert ok.status_code == 303


def test_admin_verifier_replaces_the_user_table(tmp_path: t.Any) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, TOKENGUARD_STORE_URL="memory://", TOKENGUARD_ADMIN_ENABLED=True)
    guard = TokenGuard(app)
    seen: list[tuple[str, str]] = []

    @guard.admin_verifier
    def check(username: str, password: str) -> bool:
        seen.append((username, password))
        return username == "ops" and password == "s3cret"

    http = app.test_client()
    assert sign_in(http, "ops", "wrong").status_code == 401
    assert sign_in(http, "ops", "s3cret").status_code == 303
    assert seen == [("ops", "wrong"), ("ops", "s3cret")]
    assert "<h1>Clients</h1>" in http.get("/admin/clients").get_data(as_text=True)
    guard.close_store(app)


def test_sign_in_without_its_csrf_token_is_refused(admin_app: Flask) -> None:
    http = admin_app.test_client()
    http.get("/admin/sign-in")
    response = http.post("/admin/sign-in", data={"username": "root", "password": PASSWORD})
    assert response.status_code == 400
    assert http.get_cookie(SESSION_COOKIE, path="/admin/") is None
    # A token from another browser's pre-session cookie does not work either (login CSRF).
    other = admin_app.test_client()
    foreign = csrf_of(other.get("/admin/sign-in").get_data(as_text=True))
    response = http.post(
        "/admin/sign-in", data={"username": "root", "password": PASSWORD, "csrf_token": foreign}
    )
    assert response.status_code == 400
    assert http.get_cookie(SESSION_COOKIE, path="/admin/") is None


def test_sign_out_ends_the_session_in_the_store(admin: t.Any, admin_app: Flask) -> None:
    cookie = admin.get_cookie(SESSION_COOKIE, path="/admin/").value
    response = post_form(admin, "/admin/clients", "/admin/sign-out")
    assert response.status_code == 303
    store = admin_app.extensions["tokenguard"].store(admin_app)
    assert store.touch_admin_session(hash_secret(cookie), 0.0, 4e9) is None
    # The old cookie value, replayed, is no session any more.
    admin.set_cookie(SESSION_COOKIE, cookie, path="/admin/")
    assert admin.get("/admin/clients").status_code == 303
    assert events_of(admin_app)[0]["event"] == "admin.signed_out"


def test_idle_session_times_out_and_each_request_extends_it(
    app_factory: t.Callable[..., Flask], clock: Clock
) -> None:
    app = app_factory(ADMIN_ENABLED=True, ADMIN_SESSION_TTL=60)
    add_user(app)
    http = app.test_client()
    assert sign_in(http).status_code == 303
    for _ in range(3):
        clock(50)  # 150 s in all, but never 60 idle
        assert http.get("/admin/clients").status_code == 200
    clock(61)
    response = http.get("/admin/clients")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/sign-in")


@pytest.mark.parametrize("token", [None, "", "garbage", "eyJ.forged.token"])
def test_state_change_without_a_valid_csrf_token_is_400_and_changes_nothing(
    admin: t.Any, admin_app: Flask, token: str | None
) -> None:
    client_id, _, _ = create(admin)
    store = admin_app.extensions["tokenguard"].store(admin_app)
    data = {} if token is None else {"csrf_token": token}
    for url, form in [
        (f"/admin/clients/{client_id}/enabled", {"enabled": "0"}),
        (f"/admin/clients/{client_id}/delete", {}),
        (f"/admin/clients/{client_id}/rotate", {}),
        (f"/admin/clients/{client_id}", {"name": "Renamed", "scope": "view", "grant": "password"}),
        ("/admin/clients/new", {"name": "Sneaky", "scope": "view", "grant": "password"}),
        ("/admin/sign-out", {}),
    ]:
        response = admin.post(url, data={**form, **data})
        assert response.status_code == 400, url
        assert "Nothing was changed" in response.get_data(as_text=True)
    client = store.get_client(client_id)
    assert client is not None and client.enabled and client.name == "Reports"
    assert [c.name for c in store.list_clients()] == ["Reports"]
    assert admin.get("/admin/clients").status_code == 200  # still signed in


def test_csrf_token_of_another_admin_session_is_refused(admin: t.Any, admin_app: Flask) -> None:
    client_id, _, _ = create(admin)
    other = admin_app.test_client()
    sign_in(other)
    foreign = csrf_of(other.get("/admin/clients").get_data(as_text=True))
    response = admin.post(
        f"/admin/clients/{client_id}/enabled", data={"enabled": "0", "csrf_token": foreign}
    )
    assert response.status_code == 400
    client = admin_app.extensions["tokenguard"].store(admin_app).get_client(client_id)
    assert client is not None and client.enabled


def test_pages_are_not_cached_and_not_framed(admin: t.Any) -> None:
    response = admin.get("/admin/clients")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


# -- clients -----------------------------------------------------------------------------


def test_new_client_form_has_the_cli_defaults(admin: t.Any) -> None:
    page = admin.get("/admin/clients/new").get_data(as_text=True)
    for label in ("Display name", "Alias", "Max seats", "Public client", "view", "all"):
        assert f">{label}</label>" in page
    assert 'id="scope-view" name="scope" type="checkbox" value="view" checked' in page
    assert 'id="scope-all" name="scope" type="checkbox" value="all" checked' in page
    assert 'value="client_credentials" checked' in page
    assert 'value="refresh_token" checked' in page
    assert 'value="password">' in page
    assert 'id="public" name="public" type="checkbox" value="1" aria' in page
    assert ">Create client</button>" in page


def test_create_client_shows_the_secret_once_and_it_works(admin: t.Any, admin_app: Flask) -> None:
    response = post_form(
        admin,
        "/admin/clients/new",
        "/admin/clients/new",
        name="Reports",
        alias="reports",
        max_seats="1",
        scope=["view", "all"],
        grant=["client_credentials", "refresh_token"],
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    client_id, secret = field(page, "client-id"), field(page, "client-secret")
    assert "will not be shown again" in page and ">Copy</button>" in page
    assert 'id="client-secret" type="text" readonly' in page
    store = admin_app.extensions["tokenguard"].store(admin_app)
    client = store.get_client(client_id)
    assert client is not None
    assert client.secret_hash == hash_secret(secret)
    assert (client.alias, client.max_seats, client.scopes) == ("reports", 1, ("view", "all"))
    token = get_token(admin_app.test_client(), creds(client_id, secret), scope="view")
    assert token.status_code == 200
    # No later page shows it.
    for url in (
        "/admin/clients",
        f"/admin/clients/{client_id}",
        "/admin/events",
        "/admin/licenses",
    ):
        later = admin.get(url).get_data(as_text=True)
        assert secret not in later and client.secret_hash not in later
    event = events_of(admin_app)[0]
    assert (event["event"], event["client_id"], event["admin"]) == (
        "client.created",
        client_id,
        "root",
    )


def test_public_client_left_at_default_grants_gets_the_public_ones(
    admin: t.Any, admin_app: Flask
) -> None:
    client_id, secret, page = create(
        admin, "Desktop", public="1", grant=["client_credentials", "refresh_token"]
    )
    assert secret is None and "has no secret" in page
    client = admin_app.extensions["tokenguard"].store(admin_app).get_client(client_id)
    assert client is not None and client.is_public
    assert client.grants == ("password", "refresh_token")


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"name": ""}, 400, "display name"),
        ({"alias": "no spaces"}, 400, "alias"),
        ({"max_seats": "-1"}, 400, "Max seats"),
        ({"max_seats": "two"}, 400, "Max seats"),
        ({"scope": []}, 400, "at least one scope"),
        ({"scope": ["admin"]}, 400, "at least one scope"),
        ({"public": "1", "grant": ["client_credentials"]}, 400, "client_credentials"),
        ({"alias": "taken"}, 409, ""),
    ],
)
def test_bad_client_input_is_shown_on_the_form(
    admin: t.Any, admin_app: Flask, form: dict[str, t.Any], status: int, message: str
) -> None:
    create(admin, "First", alias="taken")
    data = {"name": "Second", "scope": ["view"], "grant": ["client_credentials"], **form}
    response = post_form(admin, "/admin/clients/new", "/admin/clients/new", **data)
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert 'class="error" role="alert"' in page and message in page
    assert "<h1>New client</h1>" in page
    assert len(admin_app.extensions["tokenguard"].store(admin_app).list_clients()) == 1


def test_clients_table_and_search(admin: t.Any, admin_app: Flask) -> None:
    reports, secret, _ = create(admin, "Reports", alias="rep")
    create(admin, "Billing")
    assert (
        get_token(admin_app.test_client(), creds(reports, secret), scope="all").status_code == 200
    )
    page = admin.get("/admin/clients").get_data(as_text=True)
    assert "Reports" in page and "Billing" in page and ">New client</a>" in page
    assert '<label for="q">Search</label>' in page
    assert f'href="/admin/clients/{reports}">Reports</a>' in page
    row = page[page.index(reports) :].split("</tr>")[0]
    assert "enabled" in row and "<td>1</td>" in row  # one seat held
    for query in ("rep", "REPORTS", reports[:6]):
        found = admin.get("/admin/clients", query_string={"q": query}).get_data(as_text=True)
        assert ">Reports</a>" in found and ">Billing</a>" not in found, query
    none = admin.get("/admin/clients", query_string={"q": "zzz"}).get_data(as_text=True)
    assert "No client matches" in none


def test_client_page_and_unknown_client(admin: t.Any) -> None:
    client_id, _, _ = create(admin)
    page = admin.get(f"/admin/clients/{client_id}").get_data(as_text=True)
    assert "<h1>Reports</h1>" in page
    for text in ("Rotate secret", "Disable", "Delete", "Save"):
        assert f">{text}</button>" in page
    missing = admin.get("/admin/clients/tg_nothing")
    assert missing.status_code == 404
    assert "There is no such client." in missing.get_data(as_text=True)
    assert admin.get("/admin/clients/not%20safe").status_code == 404


def test_rotate_cancel_keeps_the_old_secret(admin: t.Any, admin_app: Flask) -> None:
    client_id, secret, _ = create(admin)
    confirm = admin.get(f"/admin/clients/{client_id}/rotate").get_data(as_text=True)
    assert ">Regenerate</button>" in confirm and ">Cancel</button>" in confirm
    # Cancel is a plain GET back to the client's page.
    assert f'method="get" action="/admin/clients/{client_id}">' in confirm
    assert admin.get(f"/admin/clients/{client_id}").status_code == 200
    assert get_token(admin_app.test_client(), creds(client_id, secret)).status_code == 200


def test_regenerate_replaces_the_secret_and_ends_sessions(admin: t.Any, admin_app: Flask) -> None:
    client_id, old, _ = create(admin)
    http = admin_app.test_client()
    access = get_token(http, creds(client_id, old), scope="view").get_json()["access_token"]
    response = post_form(
        admin, f"/admin/clients/{client_id}/rotate", f"/admin/clients/{client_id}/rotate"
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    new = field(page, "client-secret")
    assert field(page, "client-id") == client_id and new != old
    refused = get_token(http, creds(client_id, old))
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"
    assert get_token(http, creds(client_id, new)).status_code == 200
    assert http.get("/whoami", headers=bearer(access)).status_code == 401  # at once
    names = [e["event"] for e in events_of(admin_app)]
    assert "client.rotated" in names and "session.ended" in names


def test_regenerate_gives_a_public_client_a_new_id(admin: t.Any, admin_app: Flask) -> None:
    client_id, _, _ = create(admin, "Desktop", public="1", grant=["password", "refresh_token"])
    response = post_form(
        admin, f"/admin/clients/{client_id}/rotate", f"/admin/clients/{client_id}/rotate"
    )
    page = response.get_data(as_text=True)
    new_id = field(page, "client-id")
    assert new_id != client_id and 'id="client-secret"' not in page
    store = admin_app.extensions["tokenguard"].store(admin_app)
    assert store.get_client(client_id) is None and store.get_client(new_id) is not None


def test_disable_and_enable(admin: t.Any, admin_app: Flask) -> None:
    client_id, secret, _ = create(admin)
    http = admin_app.test_client()
    access = get_token(http, creds(client_id, secret)).get_json()["access_token"]
    page_url = f"/admin/clients/{client_id}"
    response = post_form(admin, page_url, f"{page_url}/enabled", enabled="0")
    assert response.status_code == 303
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert ">Enable</button>" in page and "Client disabled" in page
    assert http.get("/whoami", headers=bearer(access)).status_code == 401
    assert get_token(http, creds(client_id, secret)).status_code == 401
    post_form(admin, page_url, f"{page_url}/enabled", enabled="1")
    assert get_token(http, creds(client_id, secret)).status_code == 200
    names = [e["event"] for e in events_of(admin_app)]
    assert names.index("client.enabled") < names.index("client.disabled")  # newest first


def test_delete_asks_then_deletes(admin: t.Any, admin_app: Flask) -> None:
    client_id, secret, _ = create(admin)
    confirm = admin.get(f"/admin/clients/{client_id}/delete").get_data(as_text=True)
    assert ">Delete client</button>" in confirm
    store = admin_app.extensions["tokenguard"].store(admin_app)
    assert store.get_client(client_id) is not None  # asking changes nothing
    response = post_form(
        admin, f"/admin/clients/{client_id}/delete", f"/admin/clients/{client_id}/delete"
    )
    assert response.status_code == 303
    assert store.get_client(client_id) is None
    assert get_token(admin_app.test_client(), creds(client_id, secret)).status_code == 401
    assert "Client deleted" in admin.get(response.headers["Location"]).get_data(as_text=True)
    deleted = [e for e in events_of(admin_app) if e["event"] == "client.deleted"]
    assert [(e["client_id"], e["admin"]) for e in deleted] == [(client_id, "root")]


def test_edit_saves_through_update_client(admin: t.Any, admin_app: Flask) -> None:
    client_id, secret, _ = create(admin)
    http = admin_app.test_client()
    access = get_token(http, creds(client_id, secret), scope="all").get_json()["access_token"]
    page_url = f"/admin/clients/{client_id}"
    response = post_form(
        admin,
        page_url,
        page_url,
        name="Reports v2",
        alias="rep2",
        max_seats="3",
        scope=["view"],
        grant=["client_credentials"],
    )
    assert response.status_code == 303
    client = admin_app.extensions["tokenguard"].store(admin_app).get_client(client_id)
    assert client is not None
    assert (client.name, client.alias, client.max_seats) == ("Reports v2", "rep2", 3)
    assert client.scopes == ("view",)
    # Narrowed: the session using "all" ended, and its token is refused at once.
    assert http.get("/whoami", headers=bearer(access)).status_code == 401
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "<h1>Reports v2</h1>" in page and "Changes saved." in page
    bad = post_form(admin, page_url, page_url, name="x", alias="bad alias", scope="view")
    assert bad.status_code == 400
    assert 'role="alert"' in bad.get_data(as_text=True)
    updated = [e for e in events_of(admin_app) if e["event"] == "client.updated"]
    assert len(updated) == 1 and updated[0]["admin"] == "root"


def test_log_off_one_and_all(admin: t.Any, admin_app: Flask) -> None:
    client_id, secret, _ = create(admin)
    http = admin_app.test_client()
    first = get_token(http, creds(client_id, secret), scope="all").get_json()["access_token"]
    second = get_token(http, creds(client_id, secret), scope="view").get_json()["access_token"]
    page_url = f"/admin/clients/{client_id}"
    page = admin.get(page_url).get_data(as_text=True)
    assert page.count(">Log off</button>") == 2 and ">Log off all</button>" in page
    store = admin_app.extensions["tokenguard"].store(admin_app)
    session_id = http.get("/whoami", headers=bearer(first)).get_json()["session_id"]
    response = post_form(admin, page_url, f"/admin/sessions/{session_id}/logoff", back="client")
    assert response.status_code == 303
    assert http.get("/whoami", headers=bearer(first)).status_code == 401
    assert http.get("/whoami", headers=bearer(second)).status_code == 200
    ended = events_of(admin_app)[0]
    assert (ended["event"], ended["reason"], ended["session_id"], ended["admin"]) == (
        "session.ended",
        "admin",
        session_id,
        "root",
    )
    again = post_form(admin, page_url, f"/admin/sessions/{session_id}/logoff")
    assert again.status_code == 404
    post_form(admin, page_url, f"{page_url}/logoff")
    assert http.get("/whoami", headers=bearer(second)).status_code == 401
    assert store.list_sessions(client_id, 0.0) == []


def test_saving_unchanged_values_ends_nothing_and_is_no_event(
    admin: t.Any, admin_app: Flask
) -> None:
    client_id, secret, _ = create(admin)
    http = admin_app.test_client()
    access = get_token(http, creds(client_id, secret), scope="all").get_json()["access_token"]
    page_url = f"/admin/clients/{client_id}"
    same = {"name": "Reports", "scope": ["view", "all"], "grant": ["client_credentials"]}
    assert post_form(admin, page_url, page_url, **same).status_code == 303
    assert http.get("/whoami", headers=bearer(access)).status_code == 200
    names = [e["event"] for e in events_of(admin_app)]
    assert "client.updated" not in names and "session.ended" not in names


def test_removing_the_own_cap_returns_to_the_default(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(ADMIN_ENABLED=True, MAX_SEATS_PER_CLIENT=1)
    add_user(app)
    http = app.test_client()
    sign_in(http)
    client_id, secret, _ = create(http, max_seats="2")
    tokens = [
        get_token(app.test_client(), creds(client_id, secret)).get_json()["access_token"]
        for _ in range(2)
    ]
    page_url = f"/admin/clients/{client_id}"
    form = {"name": "Reports", "scope": ["view", "all"], "grant": ["client_credentials"]}
    assert post_form(http, page_url, page_url, max_seats="", **form).status_code == 303
    # As ``update-client --no-max-seats``: the oldest seat holder beyond the default ended.
    api = app.test_client()
    assert api.get("/whoami", headers=bearer(tokens[0])).status_code == 401
    assert api.get("/whoami", headers=bearer(tokens[1])).status_code == 200
    ended = events_of(app)[0]
    assert (ended["event"], ended["reason"]) == ("session.ended", "client_changed")


def _sid(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["sid"])


def _alike(events: list[dict[str, str]]) -> list[dict[str, str]]:
    """The events oldest first without sign-in and sign-out, ``time``, ``admin`` and
    ``remote_addr``, each id replaced by the order it first appeared in."""
    names: dict[str, str] = {}
    out = []
    for event in reversed(events):
        if event["event"].startswith("admin."):
            continue
        kept = {k: v for k, v in event.items() if k not in ("time", "admin", "remote_addr")}
        for key in ("client_id", "session_id"):
            if key in kept:
                kept[key] = names.setdefault(kept[key], f"{key}-{len(names)}")
        if kept.get("subject") in names:
            kept["subject"] = names[kept["subject"]]
        out.append(kept)
    return out


def test_the_console_and_the_command_line_report_actions_alike(
    admin: t.Any, admin_app: Flask, app_factory: t.Callable[..., Flask]
) -> None:
    """Both call the same core functions, which report what each action did."""
    # Through the console.
    client_id, secret, _ = create(admin)
    api = admin_app.test_client()
    page_url = f"/admin/clients/{client_id}"

    def token(scope: str = "all") -> str:
        body = get_token(api, creds(client_id, secret), scope=scope).get_json()
        return _sid(body["access_token"])

    token()
    view = token("view")
    narrowed = {"name": "Reports", "scope": ["view"], "grant": ["client_credentials"]}
    post_form(admin, page_url, page_url, **narrowed)
    post_form(admin, page_url, f"/admin/sessions/{view}/logoff")
    token("view")
    post_form(admin, page_url, f"{page_url}/enabled", enabled="0")
    post_form(admin, page_url, f"{page_url}/enabled", enabled="1")
    token("view")
    rotated = post_form(admin, f"{page_url}/rotate", f"{page_url}/rotate")
    secret = field(rotated.get_data(as_text=True), "client-secret")
    token("view")
    token("view")
    post_form(admin, page_url, f"{page_url}/logoff")
    post_form(admin, f"{page_url}/delete", f"{page_url}/delete")
    console = events_of(admin_app)

    # The same through the command line.
    app = app_factory(LICENSES=2)
    made = register(app, "Reports", "--scope", "view", "--scope", "all")
    cli_api = app.test_client()

    def cli_token(scope: str = "all") -> str:
        return _sid(get_token(cli_api, made, scope=scope).get_json()["access_token"])

    cli_token()
    cli_view = cli_token("view")
    cli(app, "update-client", made["client_id"], "--scope", "view")
    cli(app, "logoff", cli_view)
    cli_token("view")
    cli(app, "disable-client", made["client_id"])
    cli(app, "enable-client", made["client_id"])
    cli_token("view")
    made["client_secret"] = cli(app, "rotate-secret", made["client_id"], "--yes")["client_secret"]
    cli_token("view")
    cli_token("view")
    cli(app, "logoff", "--client", made["client_id"])
    cli(app, "delete-client", made["client_id"], "--yes")
    command_line = events_of(app)

    assert _alike(console) == _alike(command_line)
    assert [e["event"] for e in _alike(console)] == [
        "client.created",
        "client.updated",
        "session.ended",
        "session.ended",
        "client.disabled",
        "session.ended",
        "client.enabled",
        "client.rotated",
        "session.ended",
        "session.ended",
        "session.ended",
        "client.deleted",
    ]
    assert all(e["admin"] == "root" and e["remote_addr"] == "127.0.0.1" for e in console)
    assert all("remote_addr" not in e for e in command_line)


# -- licences and events -----------------------------------------------------------------


def test_licenses_page_counts_seats(admin: t.Any, admin_app: Flask) -> None:
    client_id, secret, _ = create(admin)
    http = admin_app.test_client()
    page = admin.get("/admin/licenses").get_data(as_text=True)
    assert "<h1>Licenses</h1>" in page and "0 of 2 in use" in page
    tokens = [
        get_token(http, creds(client_id, secret), scope="all").get_json()["access_token"]
        for _ in range(2)
    ]
    get_token(http, creds(client_id, secret), scope="view")  # holds no seat
    page = admin.get("/admin/licenses").get_data(as_text=True)
    assert "2 of 2 in use" in page
    assert '<label for="licenses-meter">Licenses in use</label>' in page
    assert '<meter id="licenses-meter" min="0" max="2" value="2">' in page
    assert page.count(">Log off</button>") == 3
    session_id = http.get("/whoami", headers=bearer(tokens[0])).get_json()["session_id"]
    response = post_form(admin, "/admin/licenses", f"/admin/sessions/{session_id}/logoff")
    assert response.headers["Location"].startswith("/admin/licenses")
    page = admin.get("/admin/licenses").get_data(as_text=True)
    assert "1 of 2 in use" in page and 'value="1">' in page
    assert http.get("/whoami", headers=bearer(tokens[0])).status_code == 401


def test_licenses_without_a_limit(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(ADMIN_ENABLED=True)
    add_user(app)
    http = app.test_client()
    sign_in(http)
    page = http.get("/admin/licenses").get_data(as_text=True)
    assert "0 in use" in page and " of " not in page.split("<h1>Licenses</h1>")[1][:40]
    # The meter is there all the same (screen readers and tests find it by its label).
    assert '<label for="licenses-meter">Licenses in use</label>' in page
    assert '<meter id="licenses-meter" min="0" max="1" value="0">' in page


def test_events_page_lists_names_newest_first(admin: t.Any, admin_app: Flask) -> None:
    client_id, _, _ = create(admin)
    post_form(admin, f"/admin/clients/{client_id}/rotate", f"/admin/clients/{client_id}/rotate")
    page = admin.get("/admin/events").get_data(as_text=True)
    assert "<h1>Events</h1>" in page
    rotated = page.index("<code>client.rotated</code>")
    created = page.index("<code>client.created</code>")
    signed_in = page.index("<code>admin.signed_in</code>")
    assert rotated < created < signed_in
    assert ">Administrator</th>" in page and ">root</td>" in page


def test_store_failure_is_a_503_page(
    admin: t.Any, admin_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_tokenguard.errors import StoreError

    store = admin_app.extensions["tokenguard"].store(admin_app)

    def broken(*args: t.Any) -> t.Any:
        raise StoreError("connection refused")

    monkeypatch.setattr(store, "list_clients", broken)
    response = admin.get("/admin/clients")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    page = response.get_data(as_text=True)
    assert "cannot be reached" in page and "connection refused" not in page


def test_a_busy_kdf_is_a_503_sign_in_page(
    admin_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    from flask_tokenguard.core import admin as admin_rules
    from flask_tokenguard.errors import KdfBusyError

    @contextlib.contextmanager
    def busy(concurrency: int, wait: float | None = None) -> t.Iterator[None]:
        if concurrency:  # every slot taken, whatever their number
            raise KdfBusyError(retry_after=5)
        yield

    monkeypatch.setattr(admin_rules, "kdf_slot", busy)
    http = admin_app.test_client()
    response = sign_in(http)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "The server is busy" in response.get_data(as_text=True)
    assert http.get_cookie(SESSION_COOKIE, path="/admin/") is None


@pytest.mark.parametrize("username", ["x" * 257, "tab\tname", "nul\x00name"])
def test_impossible_user_names_are_refused_without_a_lookup(
    admin_app: Flask, username: str
) -> None:
    response = sign_in(admin_app.test_client(), username=username)
    assert response.status_code == 401


def test_the_console_works_on_sqlite(app_factory: t.Callable[..., Flask], tmp_path: t.Any) -> None:
    app = app_factory(
        store_url=f"sqlite:///{tmp_path / 'admin.sqlite3'}", ADMIN_ENABLED=True, LICENSES=1
    )
    add_user(app)
    http = app.test_client()
    assert sign_in(http).status_code == 303
    client_id, secret, _ = create(http)
    token = get_token(app.test_client(), creds(client_id, secret), scope="all").get_json()
    assert "1 of 1 in use" in http.get("/admin/licenses").get_data(as_text=True)
    session_id = app.test_client().get("/whoami", headers=bearer(token["access_token"]))
    sid = session_id.get_json()["session_id"]
    assert post_form(http, "/admin/licenses", f"/admin/sessions/{sid}/logoff").status_code == 303
    assert "0 of 1 in use" in http.get("/admin/licenses").get_data(as_text=True)
    names = [e["event"] for e in events_of(app)]
    assert names[:2] == ["session.ended", "client.created"]
    assert post_form(http, "/admin/clients", "/admin/sign-out").status_code == 303
    assert http.get("/admin/clients").status_code == 303


def test_an_oversized_form_is_413_not_500(admin: t.Any, admin_app: Flask) -> None:
    limit = admin_app.extensions["tokenguard"].state(admin_app).settings.max_body
    response = post_form(admin, "/admin/clients/new", "/admin/clients/new", name="x" * limit)
    assert response.status_code == 413
    assert admin_app.extensions["tokenguard"].store(admin_app).list_clients() == []


def test_a_stale_sign_in_form_is_refused(app_factory: t.Callable[..., Flask], clock: Clock) -> None:
    app = app_factory(ADMIN_ENABLED=True, ADMIN_SESSION_TTL=60)
    add_user(app)
    http = app.test_client()
    token = csrf_of(http.get("/admin/sign-in").get_data(as_text=True))
    clock(61)
    form = {"username": "root", "password": PASSWORD, "csrf_token": token}
    response = http.post("/admin/sign-in", data=form)
    assert response.status_code == 400
    assert "Please try again" in response.get_data(as_text=True)
    assert http.get_cookie(SESSION_COOKIE, path="/admin/") is None


def test_cookie_is_secure_behind_a_trusted_proxy_under_any_server(
    app_factory: t.Callable[..., Flask],
) -> None:
    # Flask's test client, like a server other than waitress, leaves X-Forwarded-Proto to us.
    app = app_factory(ADMIN_ENABLED=True, TRUSTED_PROXY="10.0.0.1")
    add_user(app)
    http = app.test_client()
    proxied = {
        "environ_base": {"REMOTE_ADDR": "10.0.0.1"},
        "headers": {"X-Forwarded-Proto": "https"},
    }
    page = http.get("/admin/sign-in", **proxied)
    assert page.status_code == 200 and "; Secure" in page.headers["Set-Cookie"]
    form = {
        "username": "root",
        "password": PASSWORD,
        "csrf_token": csrf_of(page.get_data(as_text=True)),
    }
    response = http.post("/admin/sign-in", data=form, **proxied)
    header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(SESSION_COOKIE))
    assert "; Secure" in header
    plain = http.get("/admin/sign-in", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert plain.status_code == 400  # the proxy said http: refused, no cookie
    assert "Set-Cookie" not in plain.headers


def test_cookie_is_secure_behind_the_proxy_even_without_the_https_rule(
    app_factory: t.Callable[..., Flask],
) -> None:
    # TOKENGUARD_REQUIRE_HTTPS off does not make an HTTPS browser's cookie a plain one.
    app = app_factory(ADMIN_ENABLED=True, TRUSTED_PROXY="10.0.0.1", REQUIRE_HTTPS=False)
    http = app.test_client()
    proxied = {
        "environ_base": {"REMOTE_ADDR": "10.0.0.1"},
        "headers": {"X-Forwarded-Proto": "https"},
    }
    page = http.get("/admin/sign-in", **proxied)
    assert page.status_code == 200 and "; Secure" in page.headers["Set-Cookie"]
    plain = app.test_client().get("/admin/sign-in", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert plain.status_code == 200 and "; Secure" not in plain.headers["Set-Cookie"]
