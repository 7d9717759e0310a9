"""Browser test support: Debian's Chromium driven by Playwright, the sample app, axe-core.

Playwright's own browser download is not used (it cannot be fetched everywhere): the
Chromium of the distribution is launched instead (``apt-get install chromium``). axe-core is
fetched once with npm into ``.cache/axe-core``. Without Chromium, the playwright package or
npm, the browser tests skip with the reason, or fail under ``CI=true``.
``TOKENGUARD_TEST_CHROMIUM`` names another Chromium binary.

``docs/screenshots.py`` starts the app and the browser with the same functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import typing as t
from pathlib import Path

import requests

from tests.helpers import flask_cli
from tests.helpers import free_port
from tests.helpers import ROOT
from tests.helpers import SampleServer
from tests.helpers import unavailable

if t.TYPE_CHECKING:  # pragma: no cover
    from playwright.sync_api import Browser
    from playwright.sync_api import Locator
    from playwright.sync_api import Page
    from playwright.sync_api import ViewportSize
    from playwright.sync_api._generated import LocatorAssertions

CHROMIUM = Path(os.environ.get("TOKENGUARD_TEST_CHROMIUM") or "/usr/bin/chromium")

#: Headless, and nothing that phones home or waits for a first-run dialog.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

AXE_DIR = ROOT / ".cache" / "axe-core"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"

#: axe-core impacts a page must not have.
BLOCKING_IMPACTS = ("serious", "critical")

ADMIN_USER = "admin"
ADMIN_PASSWORD = "browser-test-password-9"

#: A wide desktop window, the size of the screenshots.
VIEWPORT: ViewportSize = {"width": 1200, "height": 800}


@contextlib.contextmanager
def chromium() -> t.Iterator[Browser]:
    """The system Chromium, headless, driven by Playwright; closed after.

    Skips with the reason when the playwright package or Chromium is missing (fails under
    ``CI=true``).
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def expect(locator: Locator) -> LocatorAssertions:
    """Playwright's auto-waiting ``expect``, imported late so that a missing package skips."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


class AdminServer:
    """``python -m sample_app`` with the admin console on, and an administrator to sign in."""

    def __init__(self, directory: Path, **config: str) -> None:
        self.store_url = f"sqlite:///{directory / 'admin.sqlite3'}"
        self.config = {
            "ADMIN_ENABLED": "true",
            "LICENSES": "2",
            # The cheapest scrypt cost allowed: sign-in stays fast.
            "PASSWORD_HASH_COST": "10",
            **config,
        }
        # The administrator is created first, as a user would, from the command line.
        self.cli("create-user", ADMIN_USER, "--admin", "--password-stdin", stdin=ADMIN_PASSWORD)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
        env["FLASK_TOKENGUARD_STORE_URL"] = self.store_url
        env.update({f"FLASK_TOKENGUARD_{k}": v for k, v in self.config.items()})
        self.server = SampleServer(env, free_port(), directory / "admin-server.log")
        self.url = self.server.url
        #: The console's start page: any admin URL shows the sign-in page when signed out.
        self.admin_url = self.url + "/admin/"

    def cli(self, *args: str, stdin: str | None = None) -> t.Any:
        """``flask --app sample_app tokenguard ARGS --json`` on this server's store."""
        return flask_cli(
            self.store_url, *args, stdin=None if stdin is None else stdin + "\n", **self.config
        )

    def token(self, client_id: str, secret: str, scope: str = "all") -> requests.Response:
        """POST /token with client_credentials and HTTP Basic."""
        return requests.post(
            self.url + "/token",
            data={"grant_type": "client_credentials", "scope": scope},
            auth=(client_id, secret),
            timeout=10,
        )

    def whoami(self, access_token: str) -> requests.Response:
        return requests.get(
            self.url + "/whoami", headers={"Authorization": f"Bearer {access_token}"}, timeout=10
        )

    @property
    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.server.output

    def stop(self) -> None:
        if self.server.process.poll() is None:
            self.server.stop()


def ensure_axe() -> Path:
    """The path of ``axe.min.js``, installed with npm into ``.cache/axe-core`` when missing."""
    if AXE_JS.exists():
        return AXE_JS
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm not found on PATH: it fetches axe-core for the accessibility checks")
    result = subprocess.run(
        [npm, "install", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund", "axe-core@4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not AXE_JS.exists():
        unavailable(f"npm install axe-core@4 failed: {result.stderr[-1500:]}")
    return AXE_JS


def axe_violations(page: Page, axe: Path) -> list[dict[str, t.Any]]:
    """Run axe-core on the page; return its serious and critical violations."""
    # Evaluated rather than added as a <script>: the console's CSP (script-src 'self')
    # refuses inline scripts, and page.evaluate is not subject to it.
    page.evaluate(axe.read_text(encoding="utf-8"))
    result: dict[str, t.Any] = page.evaluate("async () => await axe.run()")
    return [v for v in result["violations"] if v.get("impact") in BLOCKING_IMPACTS]


def describe_violations(violations: list[dict[str, t.Any]]) -> str:
    """One line per violation and the elements it names (selectors only: no page text,
    which on the secret page would hold the secret)."""
    lines = []
    for violation in violations:
        targets = ", ".join(str(node["target"]) for node in violation["nodes"][:5])
        lines.append(f"{violation['impact']} {violation['id']}: {violation['help']} [{targets}]")
    return "\n".join(lines)
