"""Serve a Flask app with waitress, and stop it without dropping a request.

One runner serves ``flask tokenguard serve``, ``python -m sample_app`` and the Windows
service. Waitress has no supported graceful stop (Pylons/waitress#343, #372, #198; its
Ctrl+C path cancels queued tasks and truncates responses in flight), so :class:`Runner`
drains by hand, in this order:

a. inside the event-loop thread, flag the drain, close the listening sockets (new
   connections are refused) and close the idle keep-alive connections;
b. let every other connection finish: the last request it has received, or receives
   next, is answered with ``Connection: close`` and the connection closes once that
   response is sent, so a keep-alive client (IIS/ARR pools them) sends no further
   request on it; one that stays idle is closed after a short grace. Wait until
   every connection is closed and no worker is in the app, up to the drain timeout;
c. shut the worker threads down (``task_dispatcher.shutdown()``);
d. close every remaining channel, which ends the loop, and close the app's store.

Waiting for "no request in progress" is not enough: it is true between two requests of
a keep-alive connection, and the dispatcher would then cancel the next one.

This leans on waitress internals that have been stable across 2.x and 3.x (``_map``,
``channel.requests``/``request``/``requests_lock``, ``total_outbufs_len``,
``last_activity``, ``task_dispatcher.queue``, ``trigger.pull_trigger``); setup.cfg pins
``waitress<4`` and ``tests/test_serve.py`` covers the drain with a real SIGTERM and
with keep-alive and pipelined connections.

The pieces live by role: :mod:`.server` has the waitress subclasses the drain needs,
:mod:`.logs` the logging set-up and the request lines; this module runs them (the
:class:`Runner`, :func:`serve` and its signal handling).

Proxy trust goes through waitress's own ``trusted_proxy``/``trusted_proxy_headers``
(the peer address is checked, untrusted ``X-Forwarded-*`` headers are cleared) rather
than werkzeug's ProxyFix, which trusts by hop count whatever the peer.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
import typing as t

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher

from ..config import Settings
from ..errors import ConfigurationError
from ..errors import StoreError
from .logs import AccessLog
from .logs import configure_logging
from .logs import detach_flask_handler
from .logs import LOG_FORMAT
from .logs import log_format_of
from .server import DrainingChannel
from .server import DrainState

if t.TYPE_CHECKING:  # pragma: no cover
    from types import FrameType

    from _typeshed.wsgi import WSGIApplication
    from flask import Flask

logger = logging.getLogger("flask_tokenguard.serve")

__all__ = ["LOG_FORMAT", "Runner", "configure_logging", "serve"]

T = t.TypeVar("T")

#: Seconds a stop waits for the loop thread to run a scheduled call or to end.
_LOOP_TIMEOUT = 5.0

#: Seconds a drain keeps open a keep-alive connection that has just answered a
#: request. A client reusing it (IIS/ARR pools connections) sends its next request
#: within milliseconds: that one is then answered with "Connection: close" instead of
#: being lost when the connection closes under it. Closing a connection idle for
#: longer can still race with a client picking it; HTTP clients retry then.
_IDLE_GRACE = 0.25


class Runner:
    """Serve ``app`` with waitress in a background thread, and stop it gracefully.

    Every setting left as ``None`` comes from the app's ``TOKENGUARD_SERVE_*`` and
    ``TOKENGUARD_TRUSTED_PROXY*`` keys (their defaults when the app has none), so the
    runner works on any Flask app. ``trusted_proxy=""`` trusts no proxy whatever the
    config says. Extra keyword arguments go to waitress unchanged (``ident=...``).

    ``port=0`` picks a free port; read it from :attr:`effective_port` after
    :meth:`start`. ``access_log=True`` logs one line per request to
    ``flask_tokenguard.serve.access`` (method, path without query, status, duration).
    """

    def __init__(
        self,
        app: Flask,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        threads: int | None = None,
        connection_limit: int | None = None,
        channel_timeout: int | None = None,
        max_request_body_size: int | None = None,
        trusted_proxy: str | None = None,
        trusted_proxy_headers: t.Iterable[str] | None = None,
        drain_timeout: float | None = None,
        access_log: bool = False,
        **adjustments: t.Any,
    ) -> None:
        settings = Settings.from_app(app)
        configured_proxy = settings.trusted_proxy
        if trusted_proxy is None:
            trusted_proxy = configured_proxy
        trusted_proxy = trusted_proxy or None
        if trusted_proxy != configured_proxy and "tokenguard" in app.extensions:
            # The guard exempts loopback from the HTTPS rule only when no proxy is
            # trusted; a runner trusting a proxy the app does not know about would
            # let plain HTTP through a same-host proxy.
            logger.warning(
                "the runner trusts proxy %r but TOKENGUARD_TRUSTED_PROXY is %r; "
                "set the config key so that the HTTPS rule agrees",
                trusted_proxy,
                configured_proxy,
            )
        #: The Flask app being served.
        self.app = app
        #: Address to listen on; keep ``127.0.0.1`` unless the proxy is on another host.
        self.host = host
        #: Port asked for; ``0`` picks a free one (see :attr:`effective_port`).
        self.port = int(port)
        #: Seconds :meth:`stop` waits for requests in flight.
        self.drain_timeout = float(
            settings.serve_drain_timeout if drain_timeout is None else drain_timeout
        )
        #: The keyword arguments handed to ``waitress.create_server``.
        self.adjustments: dict[str, t.Any] = {
            "host": host,
            "port": self.port,
            "threads": settings.serve_threads if threads is None else threads,
            "connection_limit": (
                settings.serve_connection_limit if connection_limit is None else connection_limit
            ),
            "channel_timeout": (
                settings.serve_channel_timeout if channel_timeout is None else channel_timeout
            ),
            "max_request_body_size": (
                settings.serve_max_request_body
                if max_request_body_size is None
                else max_request_body_size
            ),
            "clear_untrusted_proxy_headers": True,
        }
        if trusted_proxy is not None:
            headers = {
                h.lower()
                for h in (
                    settings.trusted_proxy_headers
                    if trusted_proxy_headers is None
                    else trusted_proxy_headers
                )
            }
            if not headers:
                raise ConfigurationError(
                    "TOKENGUARD_TRUSTED_PROXY_HEADERS must name at least one header "
                    "when a trusted proxy is set"
                )
            # Always explicit: without it waitress trusts X-Forwarded-Proto implicitly
            # and emits a DeprecationWarning.
            self.adjustments["trusted_proxy"] = trusted_proxy
            self.adjustments["trusted_proxy_headers"] = headers
        self.adjustments.update(adjustments)
        self._wsgi: WSGIApplication = AccessLog(app) if access_log else app
        self._map: dict[int, t.Any] = {}
        self._server: t.Any = None
        self._listeners: list[t.Any] = []  # BaseWSGIServer, typed loosely by waitress
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._drain_state = DrainState()
        self._stop_lock = threading.Lock()
        self._stopped: bool | None = None

    # -- starting -------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket(s) and run the event loop in a daemon thread.

        Raises ``OSError`` when the address cannot be bound (port in use, unknown
        host) and ``ValueError`` for a setting waitress refuses.
        """
        if self._server is not None:
            raise RuntimeError("this runner has already been started")
        # Our own dispatcher, started only once the sockets are bound: create_server
        # starts its threads before binding and leaks them, with the half-made
        # sockets, when the bind fails.
        dispatcher = ThreadedTaskDispatcher()
        try:
            server = create_server(
                self._wsgi, map=self._map, _dispatcher=dispatcher, **self.adjustments
            )
        except BaseException:
            wasyncore.close_all(self._map, ignore_all=True)
            raise
        dispatcher.set_thread_count(server.adj.threads)
        self._server = server
        self._listeners = [obj for obj in self._map.values() if isinstance(obj, BaseWSGIServer)]
        for listener in self._listeners:
            listener.channel_class = DrainingChannel
            listener.tokenguard_drain = self._drain_state
        self._thread = threading.Thread(target=self._run, name="tokenguard-serve", daemon=True)
        self._thread.start()
        logger.info("Serving on %s", ", ".join(self.urls))
        threading.Thread(
            target=self._check_store, name="tokenguard-store-check", daemon=True
        ).start()

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # pragma: no cover - a crash in waitress's loop
            logger.exception("the waitress event loop stopped unexpectedly")

    @property
    def urls(self) -> list[str]:
        """``http://host:port`` of every listening socket."""
        if not self._listeners:
            raise RuntimeError("the runner has not been started")
        urls = []
        for listener in self._listeners:
            host = str(listener.effective_host)
            if ":" in host:
                host = f"[{host}]"
            urls.append(f"http://{host}:{listener.effective_port}")
        return urls

    @property
    def url(self) -> str:
        """The URL of the first listening socket, e.g. ``http://127.0.0.1:8080``."""
        return self.urls[0]

    @property
    def effective_port(self) -> int:
        """The port actually bound (the one picked by the system for ``port=0``)."""
        if not self._listeners:
            raise RuntimeError("the runner has not been started")
        return int(self._listeners[0].effective_port)

    @property
    def running(self) -> bool:
        """True while the event loop runs and :meth:`stop` has not been called."""
        return self._stopped is None and self._thread is not None and self._thread.is_alive()

    # -- stopping -------------------------------------------------------------------

    def abort_drain(self) -> None:
        """Make a :meth:`stop` in progress give up waiting for requests in flight."""
        self._abort.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting, drain requests in flight, then stop and close the store.

        ``timeout`` defaults to :attr:`drain_timeout`. Returns True when every request
        in flight was answered in full, False when the timeout (or
        :meth:`abort_drain`) cut the drain short. Calling it again returns the first
        result.
        """
        with self._stop_lock:
            if self._stopped is not None:
                return self._stopped
            drained = True
            if self._server is not None:
                limit = self.drain_timeout if timeout is None else float(timeout)
                drained = self._drain(time.monotonic() + max(limit, 0.0))
            self._stopped = drained
            self._close_store()
            return drained

    def _drain(self, deadline: float) -> bool:
        # (a) Everything that touches channels runs in the loop thread: asyncore is not
        # thread-safe, and there no accept() or read races with the close. The base
        # dispatcher close keeps the trigger, which we still need.
        self._call_in_loop(self._begin_drain)
        logger.info("Stopped accepting connections; draining requests in flight")
        # (b) Wait for every connection to close and every worker to leave the app.
        drained = self._wait_closed(deadline)
        if not drained:
            logger.warning("drain timed out with requests in flight; closing them")
        # (c) Idle workers exit at once. After a timeout the busy ones are stuck in the
        # app: waiting longer buys nothing, so leave them behind (they are daemons).
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5 if drained else 0)
        # (d) Close every channel and the trigger: the loop ends when its map is empty.
        self._call_in_loop(self._close_all)
        if self._thread is not None:
            self._thread.join(_LOOP_TIMEOUT)
        logger.info("Server stopped")
        return drained

    def _begin_drain(self) -> int:
        # Loop thread. The flag first: from now on a task answering the last request
        # of its connection closes it, and a channel accepted late closes at once.
        self._drain_state.started.set()
        for listener in self._listeners:
            wasyncore.dispatcher.close(listener)
        return self._close_idle()

    def _call_in_loop(self, thunk: t.Callable[[], T]) -> T:
        """Run ``thunk`` in the loop thread and return its result (or raise its error).

        If the loop is gone or does not answer within :data:`_LOOP_TIMEOUT`, run it in
        this thread: nothing else touches the channels then.
        """
        done = threading.Event()
        outcome: list[T] = []
        error: list[BaseException] = []

        def call() -> None:
            try:
                outcome.append(thunk())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                error.append(exc)
            finally:
                done.set()

        if self._thread is not None and self._thread.is_alive() and self._listeners:
            self._listeners[0].trigger.pull_trigger(call)
            if done.wait(_LOOP_TIMEOUT):
                if error:
                    raise error[0]
                return outcome[0]
            logger.warning("the event loop did not respond; closing from this thread")
        return thunk()

    def _close_all(self) -> None:
        for obj in list(self._map.values()):
            try:
                if isinstance(obj, HTTPChannel):
                    # handle_close, unlike close, also closes the output buffers,
                    # which spill into temporary files above 1 MB.
                    obj.handle_close()
                    for request in [*obj.requests, obj.request]:
                        if request is not None:
                            request.close()
                else:
                    obj.close()
            except OSError as exc:  # pragma: no cover - already closed by the peer
                logger.debug("closing %r: %s", obj, exc)

    def _close_idle(self) -> int:
        """Close the idle channels; return how many stay open. Loop thread only.

        A channel with a request queued, running or half received stays open: its
        last response closes it (see :class:`~.server.DrainingTask`). So does one still sending a
        response. One with nothing to do closes now, unless it was active within
        :data:`_IDLE_GRACE` or a request has just arrived on it: the loop reads that
        next, and answers it with ``Connection: close``.
        """
        remaining = 0
        recent = time.time() - _IDLE_GRACE  # waitress's last_activity is time.time()
        for channel in list(self._map.values()):
            if not isinstance(channel, HTTPChannel):
                continue
            # requests before total_outbufs_len: a worker writes the output of a
            # request before it removes the request (under requests_lock).
            if channel.requests or channel.request is not None:
                remaining += 1
            elif channel.total_outbufs_len:
                # A response begun before the drain, without "close". Closing once it
                # is flushed would race with the client's next request, sent as soon
                # as it has read this one: let that request come (grace, below).
                remaining += 1
            elif channel.will_close or channel.close_when_flushed:
                remaining += 1  # writable: handle_write closes it next
            elif channel.last_activity > recent or _input_waiting(channel.socket):
                remaining += 1
            else:
                channel.handle_close()
        return remaining

    def _workers_busy(self) -> bool:
        # A channel is queued, or a worker serves one, possibly already closed.
        return bool(self._server.task_dispatcher.queue) or self._drain_state.serving > 0

    def _wait_closed(self, deadline: float) -> bool:
        while self._call_in_loop(self._close_idle) or self._workers_busy():
            if time.monotonic() >= deadline or self._abort.wait(0.05):
                return False
        return True

    def _check_store(self) -> None:
        # Ask the store once at start-up, in the background so that a hung store delays
        # nothing: an unreachable store, or one that would lose data (a Redis that evicts
        # keys), is a warning in the log now rather than a surprise at the first request.
        ext = self.app.extensions.get("tokenguard")
        store_of = getattr(ext, "store", None)
        if not callable(store_of):
            return
        try:
            store_of(self.app).check()
        except StoreError as exc:
            logger.warning("the store does not answer (%s); requests get 503 until it does", exc)

    def _close_store(self) -> None:
        ext = self.app.extensions.get("tokenguard")
        close_store = getattr(ext, "close_store", None)
        if not callable(close_store):
            return
        try:
            close_store(self.app)
        except Exception as exc:  # noqa: BLE001 - the process is stopping anyway
            logger.warning("closing the store failed: %s", exc)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the event loop to end; True if it has.

        The loop ends only through :meth:`stop` (or a crash). Waits in short steps so
        that Ctrl+C reaches the main thread on Windows.
        """
        if self._thread is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            step = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if step <= 0:
                return False
            self._thread.join(step)
        return True


def _input_waiting(sock: socket.socket | None) -> bool:
    """True if bytes have arrived on ``sock`` (non-blocking, as waitress keeps it).

    An end of stream or a reset counts as no input: the channel is closed anyway.
    """
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:  # BlockingIOError: nothing to read; or the peer reset it
        return False


def _stop_signals() -> list[signal.Signals]:
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGBREAK"):  # Windows: Ctrl+Break, and what NSSM may send
        signals.append(signal.SIGBREAK)
    return signals


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def serve(
    app: Flask,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int | None = None,
    log_level: int | str | None = logging.INFO,
    **overrides: t.Any,
) -> int:
    """Serve ``app`` until SIGTERM or Ctrl+C, drain, and return an exit code.

    ``overrides`` are :class:`Runner` arguments (``drain_timeout``, ``trusted_proxy``,
    ``access_log`` (on here), waitress adjustments). Logging gets a default stderr handler
    unless the root logger has one (``log_level=None`` leaves logging alone), in the
    app's ``TOKENGUARD_LOG_FORMAT``: ``"text"`` or ``"json"`` (one JSON object per line,
    for log shippers; then the app logger's own Flask handler is detached, so that its
    lines go through the same handler).

    Returns 0 after a requested stop, 1 when the server could not start (the port is
    in use, a bad setting: one line on stderr, no traceback) or its loop died. A
    second stop signal during the drain stops waiting for requests in flight. Signal
    handlers are installed only from the main thread, and the previous ones are put
    back before returning.
    """
    try:
        log_format = log_format_of(app)
    except ConfigurationError as exc:
        print(f"Error: cannot serve on {host}:{port}: {_describe(exc)}", file=sys.stderr)
        return 1
    if log_level is not None:
        configure_logging(log_level, log_format)
        if log_format == "json":
            detach_flask_handler(app)
    # A served app logs one line per request (never a query string or a header).
    overrides.setdefault("access_log", True)
    try:
        runner = Runner(app, host=host, port=port, threads=threads, **overrides)
        runner.start()
    except (OSError, ValueError, ConfigurationError) as exc:
        message = f"Error: cannot serve on {host}:{port}: {_describe(exc)}"
        if log_format == "json" and logging.getLogger().handlers:
            logger.error("%s", message)
        else:
            print(message, file=sys.stderr)
        return 1

    stop = threading.Event()
    received: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Keep this handler to plain flag setting: it runs between two bytecodes of
        # the main thread, which may be inside the logging module.
        received.append(signum)
        if stop.is_set():
            runner.abort_drain()
        stop.set()

    previous: dict[signal.Signals, t.Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _stop_signals():
            previous[signum] = signal.signal(signum, request_stop)
    code = 0
    try:
        # A timed wait in a loop: before Python 3.14 an untimed wait is not
        # interruptible by Ctrl+C on Windows.
        while not stop.wait(0.5):
            if not runner.running:
                logger.error("the server stopped unexpectedly")
                code = 1
                break
        if received:
            logger.info(
                "Received %s; stopping (up to %g s for requests in flight)",
                signal.Signals(received[0]).name,
                runner.drain_timeout,
            )
        runner.stop()
    finally:
        runner.stop()  # a no-op unless an exception got here first
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code
