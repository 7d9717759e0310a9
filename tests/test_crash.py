"""Crash safety: ``kill -9`` one of three server processes in the middle of a token load.

Three ``python -m sample_app`` processes share one store (a SQLite file, PostgreSQL, Redis)
and one ``TOKENGUARD_ISSUER``. Client threads request tokens (``client_credentials`` and
``refresh_token``) from all three; one process is killed with SIGKILL mid-load and started
again while the load goes on. Then:

- the store opens cleanly: the restarted process starts, answers ``/health`` (with the store
  ``ok`` where it reports one) and serves tokens, and a SQLite file passes
  ``PRAGMA integrity_check``;
- every access token a client received works at ``/whoami`` on every process, the restarted
  one included, until it expires; every refresh token a client holds refreshes once;
- once the session TTL has passed since the kill, the sessions and seats in the store are
  exactly those of the sessions the clients hold: a session whose token was lost with the
  killed process (or never reached its client) holds no seat for longer than the TTL.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import sqlite3
import time
import typing as t
from pathlib import Path

import pytest
import requests

from flask_tokenguard.stores import store_from_url
from tests.backends import isolated_store
from tests.crash_support import jwt_claims
from tests.crash_support import Load
from tests.crash_support import send_unread
from tests.helpers import bearer
from tests.helpers import flask_cli
from tests.helpers import SampleServer

SESSION_TTL = 6
LICENSES = 1000

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def shared_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
    with isolated_store(request.param, tmp_path) as url_and_options:
        yield url_and_options


def demo_client(servers: list[SampleServer]) -> tuple[str, str]:
    """The demo client's id and secret, printed once by whichever process created it."""
    for server in servers:
        found = re.search(r"client_id:\s+(\S+)\s+client_secret:\s+(\S+)", server.output)
        if found:
            return found.group(1), found.group(2)
    raise AssertionError("no process printed the demo client")


def session_ids(url: str, options: dict[str, t.Any]) -> set[str]:
    """The ids of the live sessions in the store, read directly."""
    store = store_from_url(url, **options)
    try:
        return {s.session_id for s in store.list_sessions(None, time.time())}
    finally:
        store.close()


def kill_hard(server: SampleServer) -> None:
    """SIGKILL the process: no signal handler, no drain, no store close."""
    server.process.kill()
    assert server.stop() == -9  # reaps it and closes its log


def working_tokens(load: Load, urls: list[str]) -> tuple[int, list[str]]:
    """Present every unexpired access token at ``/whoami`` on each URL; return failures."""

    def check(token: str) -> list[str]:
        failed: list[str] = []
        with requests.Session() as http:
            for url in urls:
                # Only a token with time left can be held to working (exp has 1 s steps).
                if jwt_claims(token)["exp"] < time.time() + 0.5:
                    return failed
                response = http.get(url + "/whoami", headers=bearer(token), timeout=10)
                if response.status_code != 200:
                    failed.append(f"{url}: {response.status_code} {response.text[:200]}")
        return failed

    live = [tok for tok in load.access_tokens if jwt_claims(tok)["exp"] > time.time() + 1]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        failures = [f for result in pool.map(check, live) for f in result]
    return len(live), failures


def test_kill_9_mid_load_loses_no_token_and_no_seat(
    sample_server: t.Callable[..., SampleServer],
    shared_store: tuple[str, dict[str, t.Any]],
) -> None:
    url, options = shared_store
    env = {
        "STORE_OPTIONS": json.dumps(options),
        "ISSUER": "http://127.0.0.1",
        "SESSION_TTL": str(SESSION_TTL),
        "LICENSES": str(LICENSES),
        "REVOCATION_LAG": "0",
    }
    servers = [sample_server(url, **env) for _ in range(3)]
    load = Load([s.url for s in servers], demo_client(servers), session_ttl=SESSION_TTL)

    load.start()
    time.sleep(1.0)
    warm_up_until = time.time() + 5  # a busy machine serves fewer requests a second
    while load.requests_sent < 30 and time.time() < warm_up_until:
        time.sleep(0.1)
    sent_before_kill = load.requests_sent
    load.down.add(0)
    unread = send_unread(servers[0].url, load.auth, 5)
    time.sleep(0.3)  # let the killed process start those sessions first
    before_kill = session_ids(url, options)
    unread += send_unread(servers[0].url, load.auth, 20)  # some of these die mid-request
    kill_hard(servers[0])
    killed_at = time.time()
    for sock in unread:
        sock.close()
    time.sleep(0.3)  # requests to the dead process fail meanwhile
    restarted = sample_server(url, **env)  # blocks until it answers /health
    load.urls[0] = restarted.url
    load.down.discard(0)
    time.sleep(1.0)
    load.stop()

    assert sent_before_kill > 20, load.requests_sent
    assert any(lost_url == servers[0].url for lost_url, _ in load.lost), load.lost
    assert load.problems == []

    # The store opened cleanly after the crash (and the restarted process serves tokens:
    # below, every held refresh token is refreshed on it).
    health = requests.get(restarted.url + "/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json().get("store", "ok") == "ok", health.text
    urls = [restarted.url, servers[1].url, servers[2].url]

    # Every refresh token the clients hold refreshes, on the restarted process too.
    held = len(load.chains)
    assert held > 0
    load.keep_alive(0)
    assert load.problems == [] and len(load.chains) == held

    # Keep the held sessions alive (in the background, so that a busy machine does not let
    # them expire while it checks), until the session TTL has run out since the kill.
    held_ids = {c.session_id for c in load.chains}
    with load.keeping_alive(len(urls)):
        checked, failures = working_tokens(load, urls)
        time.sleep(max(0.0, killed_at + SESSION_TTL + 1.0 - time.time()))
        listed = flask_cli(url, "sessions", **env)
        seats = flask_cli(url, "licenses", **env)
    assert failures == []
    assert checked > 5, checked
    assert load.problems == []
    assert {c.session_id for c in load.chains} == held_ids, load.dropped
    assert {s["session_id"] for s in listed} == held_ids
    assert seats == {"in_use": held, "total": LICENSES}
    # Sessions no client ever received existed at the kill, and are gone with their seats.
    assert len(before_kill - load.received_sessions) >= 5, (before_kill, load.received_sessions)

    for server in (restarted, servers[1], servers[2]):
        assert server.stop() == 0
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
