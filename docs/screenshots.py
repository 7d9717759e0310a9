"""Write the admin console's screenshots: ``.venv/bin/python docs/screenshots.py``.

Starts ``python -m sample_app`` with the console on a throwaway store (as the browser tests
do), seeds a few clients and sessions, signs in with Debian's Chromium and captures each
page at 1200x800 into ``docs/admin-*.png``. The secret on ``admin-secret.png`` belongs to
that throwaway store, deleted when the script ends.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import ADMIN_PASSWORD  # noqa: E402 - after the path is set
from tests.browser import ADMIN_USER  # noqa: E402
from tests.browser import AdminServer  # noqa: E402
from tests.browser import CHROMIUM  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.browser import VIEWPORT  # noqa: E402

DOCS = ROOT / "docs"


def _seed(server: AdminServer) -> None:
    """Clients of several kinds, and sessions holding seats."""
    warehouse = server.cli("create-client", "Warehouse sync", "--alias", "warehouse")
    payroll = server.cli("create-client", "Payroll export", "--max-seats", "1")
    reporting = server.cli("create-client", "Reporting", "--scope", "view")
    mobile = server.cli("create-client", "Mobile app", "--public")
    for creds, scope in ((warehouse, "all"), (warehouse, "all"), (payroll, "all")):
        response = server.token(creds["client_id"], creds["client_secret"], scope=scope)
        response.raise_for_status()
    server.token(
        reporting["client_id"], reporting["client_secret"], scope="view"
    ).raise_for_status()
    server.cli("disable-client", mobile["client_id"])


def main() -> int:
    try:
        import playwright  # noqa: F401 - only to say what is missing
    except ImportError:
        print("error: pip install playwright (the test extra)", file=sys.stderr)
        return 1
    if not CHROMIUM.exists():
        print(f"error: no Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as directory:
        server = AdminServer(Path(directory), LICENSES="5")
        try:
            _seed(server)
            with chromium() as browser:
                context = browser.new_context(viewport=VIEWPORT)
                context.set_default_timeout(10_000)
                page = context.new_page()

                def shot(name: str) -> None:
                    path = DOCS / f"admin-{name}.png"
                    page.screenshot(path=str(path))
                    print(f"wrote {path.relative_to(ROOT)}")

                def button(name: str) -> None:
                    page.get_by_role("button", name=name, exact=True).click()

                def link(name: str) -> None:
                    page.get_by_role("link", name=name, exact=True).click()

                page.goto(server.admin_url)
                page.get_by_label("Username", exact=True).fill(ADMIN_USER)
                shot("signin")
                page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
                button("Sign in")
                link("Clients")
                shot("clients")
                link("New client")
                page.get_by_label("Display name", exact=True).fill("Nightly backup")
                page.get_by_label("Alias", exact=True).fill("backup")
                page.get_by_label("Max seats", exact=True).fill("2")
                shot("new-client")
                button("Create client")
                page.get_by_label("Client secret", exact=True).wait_for()
                shot("secret")
                link("Clients")
                link("Warehouse sync")
                shot("client")
                button("Rotate secret")
                shot("rotate")
                button("Cancel")
                link("Licenses")
                shot("licenses")
                link("Events")
                shot("events")
                context.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
