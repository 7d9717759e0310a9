"""A token-request load that remembers what its clients received, for the crash tests.

Each worker thread keeps a few sessions of its own ("chains": the latest refresh token of
a session) and, until told to stop, either starts a session with ``client_credentials`` or
refreshes its stalest one, on a random server. A request whose answer never arrives (the
server was killed, or is not back yet) loses its chain: the client no longer knows which
refresh token is current, so that session is one "no client received" and must lose its
seat within the session TTL.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import json
import random
import socket
import threading
import time
import typing as t

import requests


def jwt_claims(token: str) -> dict[str, t.Any]:
    """The claims of a compact JWT, unverified (the servers verify; the test only reads)."""
    payload = token.split(".")[1]
    return t.cast(
        dict[str, t.Any], json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    )


@dataclasses.dataclass
class Chain:
    """A session as its client knows it: the latest refresh token it received."""

    session_id: str
    refresh_token: str
    #: When the request that returned ``refresh_token`` was sent: the session lives at
    #: least until ``sent_at + session_ttl``, and at most until ``received_at + session_ttl``.
    sent_at: float
    received_at: float


@dataclasses.dataclass
class Load:
    """Token requests from a few threads against whichever of ``urls`` are up."""

    urls: list[str]
    auth: tuple[str, str]
    session_ttl: float
    threads: int = 4
    sessions_per_thread: int = 4
    pause: float = 0.03
    #: Every access token a client received.
    access_tokens: list[str] = dataclasses.field(default_factory=list)
    #: Sessions whose refresh token a client holds and keeps using.
    chains: list[Chain] = dataclasses.field(default_factory=list)
    #: ``(url, what)`` of requests whose answer never arrived.
    lost: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: Anything a live server answered that it should not have: the test fails on these.
    problems: list[str] = dataclasses.field(default_factory=list)
    requests_sent: int = 0
    #: Refreshes refused because the session may have expired: ``(late_by, response text)``.
    dropped: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    #: The session ids of every access token a client received.
    received_sessions: set[str] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        #: ``urls`` indexes that must not fail: a request to another one may be lost.
        self.down: set[int] = set()

    # -- one request ------------------------------------------------------------------------

    def post_token(
        self, http: requests.Session, index: int, data: dict[str, str]
    ) -> tuple[float, float, requests.Response | None]:
        url = self.urls[index]
        sent_at = time.time()
        try:
            response = http.post(url + "/token", data=data, auth=self.auth, timeout=15)
        except requests.RequestException as exc:
            with self._lock:
                self.requests_sent += 1
                self.lost.append((url, data["grant_type"]))
                if index not in self.down:
                    self.problems.append(f"{url} did not answer: {exc!r}")
            return sent_at, time.time(), None
        with self._lock:
            self.requests_sent += 1
        return sent_at, time.time(), response

    def start_session(self, http: requests.Session, index: int) -> Chain | None:
        sent_at, received_at, response = self.post_token(
            http, index, {"grant_type": "client_credentials"}
        )
        if response is None:
            return None
        if response.status_code != 200:
            self.problem(f"{self.urls[index]} client_credentials: {response.status_code}", response)
            return None
        body = response.json()
        session_id = jwt_claims(body["access_token"])["sid"]
        with self._lock:
            self.access_tokens.append(body["access_token"])
            self.received_sessions.add(session_id)
        return Chain(session_id, body["refresh_token"], sent_at, received_at)

    def refresh(self, http: requests.Session, index: int, chain: Chain) -> Chain | None:
        """Refresh ``chain`` once; None if its session is gone or the answer was lost."""
        sent_at, received_at, response = self.post_token(
            http, index, {"grant_type": "refresh_token", "refresh_token": chain.refresh_token}
        )
        if response is None:
            return None
        if response.status_code != 200:
            # The session lives at least until chain.sent_at + TTL, and the server read its
            # clock before it answered: refused before then is a lost session.
            if received_at < chain.sent_at + self.session_ttl:
                self.problem(f"{self.urls[index]} refresh of a live session", response)
            else:
                late_by = received_at - chain.sent_at - self.session_ttl
                with self._lock:
                    self.dropped.append((late_by, response.text[:200]))
            return None
        body = response.json()
        with self._lock:
            self.access_tokens.append(body["access_token"])
        return Chain(chain.session_id, body["refresh_token"], sent_at, received_at)

    def problem(self, what: str, response: requests.Response) -> None:
        with self._lock:
            self.problems.append(f"{what}: {response.status_code} {response.text[:200]}")

    # -- the load -----------------------------------------------------------------------------

    def _work(self, seed: int) -> None:
        rng = random.Random(seed)
        mine: list[Chain] = []
        with requests.Session() as http:
            while not self._stop.is_set():
                index = rng.randrange(len(self.urls))
                if len(mine) < self.sessions_per_thread and rng.random() < 0.5:
                    chain = self.start_session(http, index)
                    if chain is not None:
                        mine.append(chain)
                elif mine:
                    stalest = min(mine, key=lambda c: c.received_at)
                    mine.remove(stalest)
                    chain = self.refresh(http, index, stalest)
                    if chain is not None:
                        mine.append(chain)
                self._stop.wait(self.pause)
        with self._lock:
            self.chains.extend(mine)

    def start(self) -> None:
        for i in range(self.threads):
            worker = threading.Thread(target=self._work, args=(i,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def keep_alive(self, index: int) -> None:
        """Refresh every chain once, on ``urls[index]``; drop those whose session is gone."""

        def one(chain: Chain) -> Chain | None:
            with requests.Session() as http:
                return self.refresh(http, index, chain)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            refreshed = list(pool.map(one, self.chains))
        self.chains = [c for c in refreshed if c is not None]

    @contextlib.contextmanager
    def keeping_alive(self, servers: int, every: float = 0.5) -> t.Iterator[None]:
        """Refresh every chain each ``every`` seconds, on the servers in turn, meanwhile."""
        stop = threading.Event()

        def run() -> None:
            turn = 0
            while not stop.wait(every):
                turn += 1
                self.keep_alive(turn % servers)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join(timeout=30)


def send_unread(url: str, auth: tuple[str, str], count: int) -> list[socket.socket]:
    """Send ``count`` token requests whose answers nobody reads: sessions no client receives."""
    host, port = url.removeprefix("http://").split(":")
    credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    body = b"grant_type=client_credentials"
    request = (
        f"POST /token HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Basic {credentials}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(request)
        sockets.append(sock)
    return sockets
