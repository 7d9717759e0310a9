"""Serve a Flask app with waitress, and stop it without dropping a request.

One runner serves ``flask tokenguard serve``, ``python -m sample_app`` and the Windows
service. Waitress has no supported graceful stop (Pylons/waitress#343, #372, #198; its
Ctrl+C path cancels queued tasks and truncates responses in flight), so :class:`Runner`
drains by hand, in this order:

a. close the listening sockets inside the event-loop thread, so new connections are
   refused while the ones already accepted carry on;
b. wait until no channel holds a request or unsent output, up to the drain timeout;
c. shut the worker threads down (``task_dispatcher.shutdown()``);
d. close every remaining channel, which ends the loop, and close the app's store.

This leans on waitress internals that have been stable across 2.x and 3.x (``_map``,
``channel.requests``, ``total_outbufs_len``, ``trigger.pull_trigger``); setup.cfg pins
``waitress<4`` and ``tests/test_serve.py`` covers the drain with a real SIGTERM.

Proxy trust goes through waitress's own ``trusted_proxy``/``trusted_proxy_headers``
(the peer address is checked, untrusted ``X-Forwarded-*`` headers are cleared) rather
than werkzeug's ProxyFix, which trusts by hop count whatever the peer.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import typing as t
from urllib.parse import quote

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher
from waitress.task import WSGITask

from .config import Settings
from .errors import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from types import FrameType

    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask

logger = logging.getLogger("flask_tokenguard.serve")
access_logger = logging.getLogger("flask_tokenguard.serve.access")

#: Format of the handler :func:`configure_logging` installs.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Seconds a stop waits for the loop thread to run a scheduled call or to end.
_LOOP_TIMEOUT = 5.0

# Characters left as they are when a path is written to the access log; anything else
# (control characters, spaces, newlines that could forge log lines) is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def configure_logging(level: int | str = logging.INFO) -> None:
    """Give the root logger a stderr handler with :data:`LOG_FORMAT` if it has none.

    An app or a host that has set up logging keeps its own; waitress's ``waitress``
    loggers and ours propagate to the root, so they end up in the same place.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


class _AccessLog:
    """WSGI middleware writing ``METHOD path status duration`` per request.

    The query string and the headers are never logged: they may carry tokens
    (``?access_token=``, ``Authorization``).
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        started = time.perf_counter()
        status: list[str] = []

        def recording_start_response(
            code: str, headers: t.Any, exc_info: t.Any = None
        ) -> t.Any:
            status[:] = [code.split(" ", 1)[0]]
            return start_response(code, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            self._log(environ, "500", started)
            raise
        return self._iterate(body, environ, status, started)

    def _iterate(
        self,
        body: t.Iterable[bytes],
        environ: WSGIEnvironment,
        status: list[str],
        started: float,
    ) -> t.Iterator[bytes]:
        try:
            yield from body
        finally:
            close = getattr(body, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self._log(environ, status[0] if status else "-", started)

    @staticmethod
    def _log(environ: WSGIEnvironment, status: str, started: float) -> None:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        access_logger.info(
            "%s %s %s %s %.1fms",
            environ.get("REMOTE_ADDR", "-"),
            quote(environ.get("REQUEST_METHOD", "-"), safe=""),
            quote(path, safe=_PATH_SAFE, encoding="latin-1") or "/",
            status,
            (time.perf_counter() - started) * 1000,
        )


class _Task(WSGITask):
    """waitress's task, sending ``WWW-Authenticate`` spelled as RFC 7235 spells it.

    waitress capitalises every header name (``Www-Authenticate``). Names are
    case-insensitive, but some clients and scripts read headers into a plain dict.
    """

    def build_response_header(self) -> bytes:
        header: bytes = super().build_response_header()
        return header.replace(b"\r\nWww-Authenticate:", b"\r\nWWW-Authenticate:")


class _Channel(HTTPChannel):
    task_class = _Task


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
                settings.serve_connection_limit
                if connection_limit is None
                else connection_limit
            ),
            "channel_timeout": (
                settings.serve_channel_timeout
                if channel_timeout is None
                else channel_timeout
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
        self._wsgi: WSGIApplication = _AccessLog(app) if access_log else app
        self._map: dict[int, t.Any] = {}
        self._server: t.Any = None
        self._listeners: list[BaseWSGIServer] = []
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
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
        self._listeners = [
            obj for obj in self._map.values() if isinstance(obj, BaseWSGIServer)
        ]
        for listener in self._listeners:
            listener.channel_class = _Channel
        self._thread = threading.Thread(
            target=self._run, name="tokenguard-serve", daemon=True
        )
        self._thread.start()
        logger.info("Serving on %s", ", ".join(self.urls))

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
        return (
            self._stopped is None
            and self._thread is not None
            and self._thread.is_alive()
        )

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
        # (a) Close the listening sockets in the loop thread: asyncore is not
        # thread-safe, and closing there means no accept() races with the close.
        # The base dispatcher close keeps the trigger, which we still need.
        self._call_in_loop(
            lambda: [wasyncore.dispatcher.close(s) for s in self._listeners]
        )
        logger.info("Stopped accepting connections; draining requests in flight")
        # (b) Wait for queued and running requests and for their output to be sent.
        drained = self._wait_idle(deadline)
        if not drained:
            logger.warning("drain timed out with requests in flight; closing them")
        # (c) Idle workers exit at once. After a timeout the busy ones are stuck in the
        # app: waiting longer buys nothing, so leave them behind (they are daemons).
        self._server.task_dispatcher.shutdown(
            cancel_pending=True, timeout=5 if drained else 0
        )
        # (d) Close every channel and the trigger: the loop ends when its map is empty.
        self._call_in_loop(self._close_all)
        if self._thread is not None:
            self._thread.join(_LOOP_TIMEOUT)
        logger.info("Server stopped")
        return drained

    def _call_in_loop(self, thunk: t.Callable[[], t.Any]) -> None:
        done = threading.Event()

        def call() -> None:
            try:
                thunk()
            finally:
                done.set()

        if self._thread is not None and self._thread.is_alive() and self._listeners:
            self._listeners[0].trigger.pull_trigger(call)
            if done.wait(_LOOP_TIMEOUT):
                return
            logger.warning("the event loop did not respond; closing from this thread")
        call()

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

    def _busy(self) -> bool:
        for _ in range(3):
            try:
                channels = [
                    c for c in list(self._map.values()) if isinstance(c, HTTPChannel)
                ]
                break
            except RuntimeError:  # the loop thread changed the map while we copied it
                continue
        else:  # pragma: no cover
            return True
        return any(
            c.requests or c.total_outbufs_len or c.request is not None for c in channels
        )

    def _wait_idle(self, deadline: float) -> bool:
        while self._busy():
            if time.monotonic() >= deadline or self._abort.wait(0.05):
                return False
        return True

    def _close_store(self) -> None:
        ext = self.app.extensions.get("tokenguard")
        close_store = getattr(ext, "close_store", None)
        if not callable(close_store):
            return
        try:
            close_store(self.app)
        except Exception as exc:
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
    ``access_log``, waitress adjustments). Logging gets a default stderr handler
    unless the root logger has one (``log_level=None`` leaves logging alone).

    Returns 0 after a requested stop, 1 when the server could not start (the port is
    in use, a bad setting: one line on stderr, no traceback) or its loop died. A
    second stop signal during the drain stops waiting for requests in flight. Signal
    handlers are installed only from the main thread, and the previous ones are put
    back before returning.
    """
    if log_level is not None:
        configure_logging(log_level)
    try:
        runner = Runner(app, host=host, port=port, threads=threads, **overrides)
        runner.start()
    except (OSError, ValueError, ConfigurationError) as exc:
        print(
            f"Error: cannot serve on {host}:{port}: {_describe(exc)}", file=sys.stderr
        )
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
