"""The admin console in a real browser: Chromium through Playwright, against ``python -m
sample_app`` as a user serves it. Controls are found by their accessible names, exactly as
CONTRACT.md gives them, and every page is checked with axe-core.
"""

from __future__ import annotations

import contextlib
import re
import time
import typing as t
from pathlib import Path

import pytest

from tests.browser import ADMIN_PASSWORD
from tests.browser import ADMIN_USER
from tests.browser import AdminServer
from tests.browser import axe_violations
from tests.browser import chromium
from tests.browser import describe_violations
from tests.browser import ensure_axe
from tests.browser import expect
from tests.browser import VIEWPORT

try:
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # the browser fixture skips with the reason (fails under CI)
    PlaywrightError = Exception  # type: ignore[assignment,misc]

if t.TYPE_CHECKING:  # pragma: no cover
    from playwright.sync_api import Browser
    from playwright.sync_api import BrowserContext
    from playwright.sync_api import Locator
    from playwright.sync_api import Page
    from playwright.sync_api import Response

pytestmark = [pytest.mark.browser, pytest.mark.server]

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> t.Iterator[Browser]:
    """One Chromium for the whole module; each test gets its own context."""
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="session")
def axe() -> Path:
    """``axe.min.js`` (fetched once with npm)."""
    return ensure_axe()


@pytest.fixture
def new_context(browser: Browser) -> t.Iterator[t.Callable[..., BrowserContext]]:
    """``new_context(**options)``: a fresh browser context (cookies, storage), closed after."""
    contexts: list[BrowserContext] = []

    def make(**options: t.Any) -> BrowserContext:
        context = browser.new_context(**{"viewport": VIEWPORT, **options})
        # Fail in seconds, not Playwright's default 30, when a control is missing.
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def context(new_context: t.Callable[..., BrowserContext]) -> BrowserContext:
    return new_context()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def admin_server_factory(tmp_path: Path) -> t.Iterator[t.Callable[..., AdminServer]]:
    """``admin_server_factory(**config)``: a sample app with the console on its own store."""
    started: list[AdminServer] = []

    def start(**config: str) -> AdminServer:
        directory = tmp_path / f"server-{len(started)}"
        directory.mkdir()
        server = AdminServer(directory, **config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def admin_server(admin_server_factory: t.Callable[..., AdminServer]) -> AdminServer:
    """A fresh sample app with the admin console, 2 licenses and an administrator."""
    return admin_server_factory()


# -- helpers -------------------------------------------------------------------------------


def button(within: Page | Locator, name: str) -> Locator:
    return within.get_by_role("button", name=name, exact=True)


def field(page: Page, label: str) -> Locator:
    return page.get_by_label(label, exact=True)


def heading(page: Page, name: str) -> Locator:
    return page.get_by_role("heading", name=name, exact=True)


def sign_in(page: Page, server: AdminServer, password: str = ADMIN_PASSWORD) -> None:
    page.goto(server.admin_url)
    field(page, "Username").fill(ADMIN_USER)
    field(page, "Password").fill(password)
    button(page, "Sign in").click()
    if password == ADMIN_PASSWORD:
        expect(button(page, "Sign out")).to_be_visible()


def go_to(page: Page, link: str) -> None:
    """Follow a navigation link ("Clients", "Licenses", "Events") to its page."""
    page.get_by_role("link", name=link, exact=True).click()
    expect(heading(page, link)).to_be_visible()


def expect_sign_in_page(page: Page) -> None:
    """The sign-in form and nothing of the console."""
    expect(field(page, "Username")).to_be_visible()
    expect(field(page, "Password")).to_be_visible()
    expect(button(page, "Sign in")).to_be_visible()
    expect(button(page, "Sign out")).to_have_count(0)
    for link in ("Clients", "Licenses", "Events"):
        expect(page.get_by_role("link", name=link, exact=True)).to_have_count(0)
    expect(page.get_by_role("table")).to_have_count(0)


def create_client(page: Page, name: str) -> tuple[str, str]:
    """Create a client through the console with the form's defaults; return id and secret."""
    go_to(page, "Clients")
    page.get_by_role("link", name="New client", exact=True).click()
    field(page, "Display name").fill(name)
    button(page, "Create client").click()
    client_id = field(page, "Client id").input_value()
    secret = field(page, "Client secret").input_value()
    assert client_id and secret
    return client_id, secret


def open_client(page: Page, name: str) -> None:
    go_to(page, "Clients")
    page.get_by_role("link", name=name, exact=True).click()
    expect(heading(page, name)).to_be_visible()


def session_row(page: Page, *texts: str) -> Locator:
    """The table row of a session, found by its client's name or id."""
    pattern = re.compile("|".join(re.escape(text) for text in texts))
    return page.get_by_role("row").filter(has_text=pattern)


def column(page: Page, header: str) -> list[str]:
    """The texts of a table column, found by its header, top to bottom."""
    texts: list[str] = page.get_by_role("table").evaluate(
        """(table, header) => {
            const heads = [...table.querySelectorAll('thead th, tr:first-child th')];
            const index = heads.findIndex(th => th.textContent.trim() === header);
            if (index < 0) return null;
            return [...table.querySelectorAll('tbody tr')].map(
                row => (row.children[index] || {textContent: ''}).textContent.trim());
        }""",
        header,
    )
    assert texts is not None, f"no column {header!r}"
    return texts


def html(page: Page) -> str:
    """The page's HTML (with the values of its fields), once a navigation has settled."""
    for _ in range(50):
        with contextlib.suppress(PlaywrightError):  # "the page is navigating"
            page.wait_for_load_state()
            return page.content()
        page.wait_for_timeout(100)
    return page.content()


def csrf_field(page: Page, submit: str) -> Locator:
    """The CSRF field of the form holding button ``submit``."""
    form = page.locator("form").filter(has=button(page, submit))
    return form.locator("input[type=hidden][name*=csrf i]")


def submit_with_csrf(page: Page, submit: str, token: str | None) -> int:
    """Submit the form holding button ``submit`` with its CSRF field set to ``token``
    (removed when None), as a forged request would; return the response's status."""
    csrf_field(page, submit).evaluate(
        "(input, token) => token === null ? input.remove() : (input.value = token)", token
    )
    with page.expect_navigation() as navigation:
        button(page, submit).click()
    response = navigation.value
    assert response is not None
    return response.status


def new_client_form(page: Page, name: str) -> None:
    go_to(page, "Clients")
    page.get_by_role("link", name="New client", exact=True).click()
    field(page, "Display name").fill(name)


# -- sign-in -------------------------------------------------------------------------------


def test_wrong_password_shows_an_error_and_no_data(page: Page, admin_server: AdminServer) -> None:
    admin_server.cli("create-client", "Payroll export")
    sign_in(page, admin_server, password="not-the-password")
    # The error is announced (role "alert"), not only shown.
    expect(page.get_by_role("alert")).to_have_text(
        re.compile(r"invalid|incorrect|wrong|fail", re.I)
    )
    expect_sign_in_page(page)
    assert "Payroll export" not in html(page)
    assert "not-the-password" not in html(page)
    page.goto(admin_server.admin_url + "clients")
    expect_sign_in_page(page)


def test_keyboard_reaches_the_sign_in_fields_and_enter_submits(
    page: Page, admin_server: AdminServer
) -> None:
    page.goto(admin_server.admin_url)
    username = field(page, "Username")
    for _ in range(10):
        page.keyboard.press("Tab")
        if username.evaluate("el => el === document.activeElement"):
            break
    expect(username).to_be_focused()
    page.keyboard.type(ADMIN_USER)
    page.keyboard.press("Tab")
    expect(field(page, "Password")).to_be_focused()
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    expect(button(page, "Sign out")).to_be_visible()
    for link in ("Clients", "Licenses", "Events"):
        expect(page.get_by_role("link", name=link, exact=True)).to_be_visible()


def test_session_cookie_is_http_only_and_same_site_strict(
    page: Page, context: BrowserContext, admin_server: AdminServer
) -> None:
    sign_in(page, admin_server)
    cookies = context.cookies(admin_server.admin_url)
    assert cookies, "signing in set no cookie"
    for cookie in cookies:
        assert cookie["httpOnly"] is True, cookie["name"]
        assert cookie["sameSite"] == "Strict", cookie["name"]
        assert ADMIN_PASSWORD not in cookie["value"]


def test_sign_out_ends_the_session_on_the_server(
    page: Page,
    context: BrowserContext,
    new_context: t.Callable[..., BrowserContext],
    admin_server: AdminServer,
) -> None:
    admin_server.cli("create-client", "Payroll export")
    sign_in(page, admin_server)
    open_client(page, "Payroll export")
    client_page = page.url
    go_to(page, "Licenses")
    licenses_page = page.url
    stolen = context.cookies(admin_server.admin_url)
    button(page, "Sign out").click()
    expect_sign_in_page(page)
    for url in (admin_server.admin_url, client_page, licenses_page):
        page.goto(url)
        expect_sign_in_page(page)
        assert "Payroll export" not in html(page)
    # The old cookie names a session the server has ended: it opens nothing.
    replay = new_context()
    replay.add_cookies(stolen)  # type: ignore[arg-type]
    other = replay.new_page()
    other.goto(client_page)
    expect_sign_in_page(other)
    assert "Payroll export" not in html(other)


def test_idle_admin_session_ends(
    page: Page, admin_server_factory: t.Callable[..., AdminServer]
) -> None:
    server = admin_server_factory(ADMIN_SESSION_TTL="3")
    sign_in(page, server)
    go_to(page, "Licenses")
    # Activity keeps it alive past the TTL counted from signing in...
    for _ in range(3):
        time.sleep(1.2)
        page.reload()
        expect(heading(page, "Licenses")).to_be_visible()
    # ...and idleness ends it.
    time.sleep(4)
    page.reload()
    expect_sign_in_page(page)


# -- clients and secrets -------------------------------------------------------------------


def test_new_client_secret_is_shown_once_and_works(
    page: Page, context: BrowserContext, admin_server: AdminServer
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        # The sample app has no favicon; Chromium asks for one at the site's root.
        lambda msg: (
            errors.append(f"{msg.text} ({msg.location.get('url')})")
            if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=admin_server.url)
    sign_in(page, admin_server)
    go_to(page, "Clients")
    page.get_by_role("link", name="New client", exact=True).click()
    # Defaults as the CLI's: every configured scope, client_credentials and refresh_token.
    for checked in ("view", "all", "client_credentials", "refresh_token"):
        expect(page.get_by_role("checkbox", name=checked, exact=True)).to_be_checked()
    for unchecked in ("password", "Public client"):
        expect(page.get_by_role("checkbox", name=unchecked, exact=True)).not_to_be_checked()
    field(page, "Display name").fill("Warehouse sync")
    documents: list[Response] = []
    page.on(
        "response", lambda r: documents.append(r) if r.request.resource_type == "document" else None
    )
    button(page, "Create client").click()
    secret_field = field(page, "Client secret")
    client_id = field(page, "Client id").input_value()
    secret = secret_field.input_value()
    expect(secret_field).not_to_be_editable()
    assert secret in html(page)  # so that its absence below means something
    expect(page.get_by_text(re.compile(r"not be shown again", re.I))).not_to_have_count(0)
    # The page holding the secret is never kept by the browser's or a proxy's cache.
    assert "no-store" in (documents[-1].headers.get("cache-control") or ""), documents[-1].url

    button(page, "Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    token = admin_server.token(client_id, secret, scope="view")
    assert token.status_code == 200, token.text
    assert admin_server.whoami(token.json()["access_token"]).json()["client_id"] == client_id

    go_to(page, "Clients")
    # Back to the POST's response: the browser kept no copy and does not resubmit.
    with contextlib.suppress(PlaywrightError):  # net::ERR_CACHE_MISS
        page.go_back()
    page.wait_for_load_state()
    assert secret not in html(page)
    page.goto(admin_server.admin_url)
    open_client(page, "Warehouse sync")
    assert secret not in html(page)
    for link in ("Clients", "Licenses", "Events"):
        go_to(page, link)
        assert secret not in html(page)
    listed = admin_server.cli("list-clients")
    assert [c["name"] for c in listed].count("Warehouse sync") == 1
    assert secret not in admin_server.output
    assert not errors, errors


def test_rotate_secret_cancel_keeps_it_regenerate_replaces_it(
    page: Page, admin_server: AdminServer
) -> None:
    sign_in(page, admin_server)
    client_id, old_secret = create_client(page, "Billing")
    before = admin_server.token(client_id, old_secret)
    assert before.status_code == 200, before.text
    old_access = before.json()["access_token"]

    open_client(page, "Billing")
    button(page, "Rotate secret").click()
    expect(button(page, "Regenerate")).to_be_visible()
    button(page, "Cancel").click()
    expect(button(page, "Regenerate")).to_have_count(0)
    assert admin_server.token(client_id, old_secret, scope="view").status_code == 200
    assert admin_server.whoami(old_access).status_code == 200

    open_client(page, "Billing")
    button(page, "Rotate secret").click()
    button(page, "Regenerate").click()
    assert field(page, "Client id").input_value() == client_id
    new_secret = field(page, "Client secret").input_value()
    assert new_secret and new_secret != old_secret
    expect(button(page, "Copy")).to_be_visible()
    expect(page.get_by_text(re.compile(r"not be shown again", re.I))).not_to_have_count(0)

    refused = admin_server.token(client_id, old_secret, scope="view")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert admin_server.token(client_id, new_secret, scope="view").status_code == 200
    # Regenerating ended the client's sessions: the token from the old secret is dead.
    assert admin_server.whoami(old_access).status_code == 401
    open_client(page, "Billing")
    assert new_secret not in html(page)
    assert new_secret not in admin_server.output


def test_disable_enable_save_and_delete_a_client(page: Page, admin_server: AdminServer) -> None:
    kiosk = admin_server.cli("create-client", "Kiosk")
    auth = (kiosk["client_id"], kiosk["client_secret"])
    held = admin_server.token(*auth)
    assert held.status_code == 200, held.text
    sign_in(page, admin_server)
    open_client(page, "Kiosk")

    button(page, "Disable").click()
    expect(button(page, "Enable")).to_be_visible()
    refused = admin_server.token(*auth, scope="view")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert admin_server.whoami(held.json()["access_token"]).status_code == 401
    button(page, "Enable").click()
    expect(button(page, "Disable")).to_be_visible()
    assert admin_server.token(*auth, scope="view").status_code == 200

    field(page, "Display name").fill("Front desk kiosk")
    page.get_by_role("checkbox", name="all", exact=True).uncheck()
    button(page, "Save").click()
    expect(heading(page, "Front desk kiosk")).to_be_visible()
    (stored,) = [c for c in admin_server.cli("list-clients") if c["client_id"] == auth[0]]
    assert stored["name"] == "Front desk kiosk" and stored["scopes"] == ["view"]

    button(page, "Delete").click()
    button(page, "Delete client").click()
    expect(heading(page, "Clients")).to_be_visible()
    expect(page.get_by_role("link", name="Front desk kiosk", exact=True)).to_have_count(0)
    assert auth[0] not in [c["client_id"] for c in admin_server.cli("list-clients")]
    assert admin_server.token(*auth, scope="view").status_code == 401


def test_log_off_all_ends_every_session_of_a_client(page: Page, admin_server: AdminServer) -> None:
    kiosk = admin_server.cli("create-client", "Kiosk")
    tokens = [admin_server.token(kiosk["client_id"], kiosk["client_secret"]) for _ in range(2)]
    assert [r.status_code for r in tokens] == [200, 200]
    sign_in(page, admin_server)
    open_client(page, "Kiosk")
    expect(button(page, "Log off")).to_have_count(2)
    button(page, "Log off all").click()
    expect(button(page, "Log off")).to_have_count(0)
    for response in tokens:
        assert admin_server.whoami(response.json()["access_token"]).status_code == 401
    assert admin_server.cli("licenses") == {"in_use": 0, "total": 2}


def test_csrf_token_is_required_and_bound_to_the_admin_session(
    page: Page, new_context: t.Callable[..., BrowserContext], admin_server: AdminServer
) -> None:
    sign_in(page, admin_server)
    before = admin_server.cli("list-clients")

    new_client_form(page, "Forged")
    own_token = csrf_field(page, "Create client").input_value()
    assert own_token
    assert submit_with_csrf(page, "Create client", None) == 400
    new_client_form(page, "Forged")
    assert submit_with_csrf(page, "Create client", own_token[:-4] + "AAAA") == 400
    # Another administrator's session does not accept this session's token.
    other = new_context().new_page()
    sign_in(other, admin_server)
    new_client_form(other, "Forged")
    assert submit_with_csrf(other, "Create client", own_token) == 400
    assert admin_server.cli("list-clients") == before

    # The same form with its own token goes through: the 400s were the CSRF check.
    new_client_form(page, "Forged")
    button(page, "Create client").click()
    expect(field(page, "Client secret")).to_be_visible()
    assert "Forged" in [c["name"] for c in admin_server.cli("list-clients")]


# -- licenses ------------------------------------------------------------------------------


def test_licenses_page_counts_seats_and_log_off_frees_one(
    page: Page, admin_server: AdminServer
) -> None:
    alpha = admin_server.cli("create-client", "Alpha")
    beta = admin_server.cli("create-client", "Beta")
    tokens = {}
    for creds in (alpha, beta):
        response = admin_server.token(creds["client_id"], creds["client_secret"])
        assert response.status_code == 200, response.text
        tokens[creds["name"]] = response.json()["access_token"]
    full = admin_server.token(alpha["client_id"], alpha["client_secret"])
    assert full.status_code == 400 and full.json()["error"] == "license_unavailable"

    sign_in(page, admin_server)
    go_to(page, "Licenses")
    meter = page.get_by_role("meter", name="Licenses in use", exact=True)
    expect(page.locator("body")).to_contain_text("2 of 2 in use")
    expect(meter).to_have_attribute("value", "2")
    expect(meter).to_have_attribute("max", "2")
    expect(session_row(page, "Alpha", alpha["client_id"])).to_have_count(1)
    expect(session_row(page, "Beta", beta["client_id"])).to_have_count(1)

    button(session_row(page, "Alpha", alpha["client_id"]), "Log off").click()
    expect(page.locator("body")).to_contain_text("1 of 2 in use")
    expect(meter).to_have_attribute("value", "1")
    expect(session_row(page, "Alpha", alpha["client_id"])).to_have_count(0)
    # The process that logged it off refuses its token at once.
    refused = admin_server.whoami(tokens["Alpha"])
    assert refused.status_code == 401
    assert admin_server.whoami(tokens["Beta"]).status_code == 200
    assert admin_server.cli("licenses") == {"in_use": 1, "total": 2}
    assert admin_server.token(alpha["client_id"], alpha["client_secret"]).status_code == 200


# -- events --------------------------------------------------------------------------------


def test_events_page_lists_the_audit_names_newest_first(
    page: Page, admin_server: AdminServer
) -> None:
    sign_in(page, admin_server)
    create_client(page, "Reports")
    open_client(page, "Reports")
    button(page, "Rotate secret").click()
    button(page, "Regenerate").click()
    expect(field(page, "Client secret")).to_be_visible()
    go_to(page, "Events")
    names = column(page, "Event")
    assert "client.created" in names and "client.rotated" in names, names
    assert "admin.signed_in" in names, names
    # Newest first: the rotation came after the creation, which came after signing in.
    assert (
        names.index("client.rotated")
        < names.index("client.created")
        < names.index("admin.signed_in")
    )


# -- layout and accessibility --------------------------------------------------------------


def test_clients_page_fits_a_phone_without_horizontal_scroll(
    new_context: t.Callable[..., BrowserContext], admin_server: AdminServer
) -> None:
    admin_server.cli("create-client", "Nightly warehouse synchronisation", "--alias", "warehouse")
    admin_server.cli("create-client", "Payroll export")
    page = new_context(viewport={"width": 375, "height": 740}, is_mobile=True).new_page()
    sign_in(page, admin_server)
    go_to(page, "Clients")
    expect(page.get_by_role("link", name="Payroll export", exact=True)).to_be_visible()
    wide, viewport = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    # 375, not the 980 a phone lays out a page at that has no viewport meta tag.
    assert viewport == 375, f"laid out {viewport}px wide on a 375px phone"
    assert wide <= viewport, f"page is {wide}px wide in a {viewport}px viewport"


def test_every_page_has_no_serious_accessibility_violations(
    new_context: t.Callable[..., BrowserContext], admin_server: AdminServer, axe: Path
) -> None:
    creds = admin_server.cli("create-client", "Alpha")
    assert admin_server.token(creds["client_id"], creds["client_secret"]).status_code == 200
    # axe is injected as a script tag, which a strict Content-Security-Policy would block.
    page = new_context(bypass_csp=True).new_page()
    found: dict[str, str] = {}

    def check(name: str) -> None:
        violations = axe_violations(page, axe)
        if violations:
            found[name] = describe_violations(violations)

    page.goto(admin_server.admin_url)
    check("sign-in")
    sign_in(page, admin_server)
    go_to(page, "Clients")
    check("clients")
    page.get_by_role("link", name="New client", exact=True).click()
    check("new client")
    field(page, "Display name").fill("Beta")
    button(page, "Create client").click()
    expect(field(page, "Client secret")).to_be_visible()
    check("secret")
    open_client(page, "Alpha")
    check("client")
    button(page, "Rotate secret").click()
    expect(button(page, "Regenerate")).to_be_visible()
    check("rotate confirmation")
    go_to(page, "Licenses")
    check("licenses")
    go_to(page, "Events")
    check("events")
    assert not found, "\n".join(f"{name}:\n{text}" for name, text in found.items())
