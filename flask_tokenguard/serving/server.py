"""waitress's channel and task, taught to drain: the parts of the runner that subclass waitress.

:class:`~flask_tokenguard.serving.runner.Runner` gives every listener a
:class:`DrainState`; the channels it accepts share it. Once the drain has begun, the
response to the last request a connection has sent says ``Connection: close`` and the
connection closes once it is sent, and the channel reads no further request while one is
queued. See the runner's module docstring for the whole drain, and for the waitress
internals it relies on (stable across 2.x and 3.x; setup.cfg pins ``waitress<4``).
"""

from __future__ import annotations

import socket
import threading
import typing as t

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import WSGITask


class DrainState:
    """What a runner shares with its channels: has the drain begun, who is busy.

    The drain waits for workers still serving a request whose client went away (its
    channel is closed, the app runs to the end): the store must outlive them.
    """

    def __init__(self) -> None:
        #: Set in the event-loop thread when the drain begins.
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._serving = 0

    @property
    def serving(self) -> int:
        """How many channels a worker thread is serving now."""
        return self._serving

    def enter(self) -> None:
        with self._lock:
            self._serving += 1

    def leave(self) -> None:
        with self._lock:
            self._serving -= 1


class DrainingTask(WSGITask):
    """waitress's task, closing its connection in a drain, with RFC 7235 spelling.

    During a drain, the response to the last request a connection has sent says
    ``Connection: close`` and the connection closes once it is sent (see
    :meth:`~flask_tokenguard.serving.runner.Runner.stop`). And ``WWW-Authenticate`` is
    spelled as RFC 7235 spells it: waitress capitalises every header name
    (``Www-Authenticate``). Names are case-insensitive, but some clients and scripts
    read headers into a plain dict.
    """

    channel: DrainingChannel

    def build_response_header(self) -> bytes:
        if self._last_before_drain():
            # Answer as if the client had asked for "Connection: close": waitress
            # then sends that header, for HTTP/1.0 and 1.1 alike, and closes the
            # connection once the response is flushed. The environ was built before
            # the app ran, so the app never sees this.
            t.cast("t.Any", self.request).headers["CONNECTION"] = "close"
        header: bytes = super().build_response_header()
        return header.replace(b"\r\nWww-Authenticate:", b"\r\nWWW-Authenticate:")

    def _last_before_drain(self) -> bool:
        """True during a drain when no request is queued behind this one.

        Pipelined requests already received are answered; the last one closes.
        Runs in a worker thread: the event-loop thread appends to ``requests`` under
        ``requests_lock``, and during a drain it reads no more while one is queued.
        """
        channel = self.channel
        if not channel.drain.started.is_set():
            return False
        with channel.requests_lock:
            return len(channel.requests) <= 1


class DrainingChannel(HTTPChannel):
    """waitress's channel, aware of the runner's drain.

    ``Runner.start`` gives every listener its :class:`DrainState`
    (``tokenguard_drain``); the channels it accepts share it.
    """

    task_class = DrainingTask
    #: waitress's lock around ``requests`` (set by ``HTTPChannel.__init__``).
    requests_lock: threading.Lock

    def __init__(
        self,
        server: BaseWSGIServer,
        sock: socket.socket,
        addr: t.Any,
        adj: t.Any,
        map: dict[int, t.Any] | None = None,  # noqa: A002 - waitress's name
    ) -> None:
        self.drain: DrainState = server.tokenguard_drain  # type: ignore[attr-defined]
        super().__init__(server, sock, addr, adj, map)
        if self.drain.started.is_set():
            # Accepted as the listener closed: refuse it rather than start a request
            # the drain did not count on.
            self.handle_close()

    def readable(self) -> bool:
        # During a drain, read nothing while a request is queued (even with
        # channel_request_lookahead), so that DrainingTask._last_before_drain stays true
        # once it is: its response closes the connection.
        if self.drain.started.is_set() and self.requests:
            return False
        return bool(super().readable())

    def service(self) -> None:
        # Runs in a worker thread, for one request.
        self.drain.enter()
        try:
            super().service()
        finally:
            self.drain.leave()
