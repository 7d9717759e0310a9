"""Token traffic for the failover tests: several sample app processes under a start,
refresh and logoff load, and what a failover under it must keep (Redis and PostgreSQL
alike)."""

from __future__ import annotations

import random
import threading
import time
import typing as t

import requests

from tests.helpers import bearer

if t.TYPE_CHECKING:  # pragma: no cover
    from flask_tokenguard.stores.base import Store
    from tests.helpers import SampleServer


class Load:
    """Token traffic from worker threads over several sample app processes.

    Each worker holds at most one session: it starts one, refreshes it, and now and then
    logs it off, and it remembers what the servers answered. A session counts as held
    from its 200 until a 204 on its logoff (a logoff that got 503 may or may not have
    happened, so it counts as held by nobody until a retry settles it).
    """

    def __init__(self, servers: list[SampleServer], auth: tuple[str, str]) -> None:
        self.servers = servers
        self.auth = auth
        self.lock = threading.Lock()
        self.stop = threading.Event()
        #: (monotonic start, monotonic end, kind, status) of every answer.
        self.answers: list[tuple[float, float, str, int]] = []
        #: Answers no client may ever get: a 500, a 503 without Retry-After, a held
        #: session whose refresh or logoff is refused, a broken connection.
        self.bad: list[str] = []
        self.held: dict[int, dict[str, str]] = {}
        self.logged_off: list[dict[str, str]] = []
        self.most_held = 0
        self._ids = iter(range(1_000_000))

    def _call(self, kind: str, path: str, i: int, **kwargs: t.Any) -> requests.Response | None:
        server = self.servers[i % len(self.servers)]
        started = time.monotonic()
        try:
            response = requests.post(server.url + path, timeout=30, **kwargs)
        except requests.RequestException as exc:
            with self.lock:
                self.bad.append(f"{kind}: {exc!r}")
            return None
        status = response.status_code
        with self.lock:
            self.answers.append((started, time.monotonic(), kind, status))
            if status >= 500 and status != 503:
                self.bad.append(f"{kind}: {status} {response.text[:200]}")
            if status == 503 and not response.headers.get("Retry-After", "").isdigit():
                self.bad.append(f"{kind}: 503 without a delay-seconds Retry-After")
        return response

    def worker(self, number: int) -> None:
        rng = random.Random(number)
        session: dict[str, str] | None = None
        key = -1
        calls = number
        while not self.stop.is_set():
            calls += 1
            if session is None:
                r = self._call(
                    "start",
                    "/token",
                    calls,
                    data={"grant_type": "client_credentials"},
                    auth=self.auth,
                )
                if r is not None and r.status_code == 200:
                    body = r.json()
                    session = {"refresh": body["refresh_token"], "access": body["access_token"]}
                    with self.lock:
                        key = next(self._ids)
                        self.held[key] = session
                        self.most_held = max(self.most_held, len(self.held))
                elif r is not None and r.status_code == 400:
                    if r.json().get("error") != "license_unavailable":
                        self.bad.append(f"start: 400 {r.text[:200]}")
                    time.sleep(0.05)
            elif session.get("logoff") or rng.random() < 0.2:
                # Not held from the moment the logoff is sent: its seat may be free before
                # this thread reads the 204, and another thread may take it meanwhile.
                with self.lock:
                    self.held.pop(key, None)
                r = self._call("logoff", "/logoff", calls, headers=bearer(session["access"]))
                if r is None or r.status_code == 503:
                    session["logoff"] = "unsure"  # it may have ended; retried until settled
                    continue
                # A retry after a 503 may find the session ended already: 401.
                ended = r.status_code == 204 or (r.status_code == 401 and session.get("logoff"))
                with self.lock:
                    if ended:
                        self.logged_off.append(session)
                    else:
                        self.bad.append(f"logoff: {r.status_code} {r.text[:200]}")
                session = None
            else:
                r = self._call(
                    "refresh",
                    "/token",
                    calls,
                    data={"grant_type": "refresh_token", "refresh_token": session["refresh"]},
                    auth=self.auth,
                )
                if r is not None and r.status_code == 200:
                    body = r.json()
                    session["refresh"], session["access"] = (
                        body["refresh_token"],
                        body["access_token"],
                    )
                elif r is not None and r.status_code != 503:
                    with self.lock:
                        self.bad.append(
                            f"refresh of a held session: {r.status_code} {r.text[:200]}"
                        )
                        self.held.pop(key, None)
                    session = None
            time.sleep(rng.uniform(0, 0.02))

    def successes_after(self, moment: float) -> list[float]:
        """When each 200 to a request sent after ``moment`` arrived."""
        with self.lock:
            return sorted(
                end for start, end, _, status in self.answers if start >= moment and status == 200
            )

    def check_after_failover(
        self, promoted_at: float, seats_seen: list[int], licenses: int, watcher: Store
    ) -> float:
        """Assert what a failover under this load must keep; return the seconds from the
        promotion to the first 200 after it.

        No bad answer; a request succeeded within 10 s of the promotion; never more seats
        held than ``licenses``, by the clients' count or the store's (``seats_seen``);
        every session a client holds still refreshes, on any process; every session
        logged off stays ended, its refresh token and its access token.
        """
        assert self.bad == []
        back = self.successes_after(promoted_at)
        assert back and back[0] - promoted_at <= 10, "no request succeeded within 10 s"
        assert self.most_held <= licenses
        assert seats_seen and max(seats_seen) <= licenses
        servers = self.servers
        for n, session in enumerate(self.held.values()):
            r = refresh_until_answered(servers[n % len(servers)], self.auth, session["refresh"])
            assert r.status_code == 200, r.text
        time.sleep(1.1)  # TOKENGUARD_REVOCATION_LAG: no state to poll for it
        for n, session in enumerate(self.logged_off):
            server = servers[n % len(servers)]
            r = refresh_until_answered(server, self.auth, session["refresh"])
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
            whoami = requests.get(
                server.url + "/whoami", headers=bearer(session["access"]), timeout=10
            )
            assert whoami.status_code == 401
        assert watcher.seats_in_use(time.time()) <= licenses
        return back[0] - promoted_at


def refresh_until_answered(
    server: SampleServer, auth: tuple[str, str], token: str
) -> requests.Response:
    """POST a refresh, retrying a 503 (its Retry-After says when) for a few seconds."""
    deadline = time.monotonic() + 15
    while True:
        r = requests.post(
            server.url + "/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=auth,
            timeout=30,
        )
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def until(condition: t.Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
