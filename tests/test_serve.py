"""The waitress runner: serving, graceful drain, proxy trust, logging, exit codes."""

from __future__ import annotations

import concurrent.futures
import http.client
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask import Response

from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.serving import runner as serve_module
from flask_tokenguard.serving.logs import JsonFormatter
from flask_tokenguard.serving.runner import configure_logging
from flask_tokenguard.serving.runner import Runner
from flask_tokenguard.serving.runner import serve

APP_FILE = Path(__file__).parent / "apps" / "slow_app.py"
TOKEN = "secret123"


def _load_slow_app() -> t.Any:
    spec = importlib.util.spec_from_file_location("_tokenguard_slow_app", APP_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slow_app = _load_slow_app()


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never route loopback requests through an HTTP_PROXY
    return session


def _get(url: str, **kwargs: t.Any) -> requests.Response:
    with _session() as session:
        return session.get(url, timeout=20, **kwargs)


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued by the kernel as the listener closed
        return False


def _wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{count} requests did not start within {timeout} s")


class _FakeGuard:
    def __init__(self) -> None:
        self.closed: list[Flask] = []

    def close_store(self, app: Flask) -> None:
        self.closed.append(app)


@pytest.fixture
def runner_factory() -> t.Iterator[t.Callable[..., Runner]]:
    runners: list[Runner] = []

    def make(app: Flask | None = None, **kwargs: t.Any) -> Runner:
        kwargs.setdefault("port", 0)
        runner = Runner(app or slow_app.create_app(), **kwargs)
        runner.start()
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop(timeout=0)


def test_runner_takes_defaults_from_the_app_config() -> None:
    app = Flask(__name__)
    app.config["TOKENGUARD_SERVE_THREADS"] = "3"
    app.config["TOKENGUARD_SERVE_DRAIN_TIMEOUT"] = 7
    runner = Runner(app)
    assert runner.adjustments["threads"] == 3
    assert runner.adjustments["connection_limit"] == 200
    assert runner.adjustments["max_request_body_size"] == 1024 * 1024
    assert runner.adjustments["clear_untrusted_proxy_headers"] is True
    assert "trusted_proxy" not in runner.adjustments
    assert runner.drain_timeout == 7
    assert (runner.host, runner.port) == ("127.0.0.1", 8080)


def test_runner_passes_proxy_headers_explicitly() -> None:
    app = Flask(__name__)
    app.config["TOKENGUARD_TRUSTED_PROXY"] = "10.0.0.5"
    runner = Runner(app)
    assert runner.adjustments["trusted_proxy"] == "10.0.0.5"
    assert runner.adjustments["trusted_proxy_headers"] == {
        "x-forwarded-proto",
        "x-forwarded-for",
    }
    assert "trusted_proxy" not in Runner(app, trusted_proxy="").adjustments
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXY_HEADERS"):
        Runner(app, trusted_proxy_headers=[])


@pytest.mark.server
def test_runner_serves_on_a_free_port(runner_factory: t.Callable[..., Runner]) -> None:
    runner = runner_factory()
    assert runner.effective_port > 0
    assert runner.url == f"http://127.0.0.1:{runner.effective_port}"
    response = _get(runner.url + "/echo")
    assert response.status_code == 200
    assert response.json()["scheme"] == "http"
    assert runner.running


@pytest.mark.server
def test_stop_refuses_new_connections(runner_factory: t.Callable[..., Runner]) -> None:
    runner = runner_factory()
    assert _get(runner.url + "/echo").status_code == 200
    assert runner.stop() is True
    assert not runner.running
    assert runner.wait(timeout=1)
    assert _refused(runner.effective_port)
    assert runner.stop() is True  # idempotent


@pytest.mark.server
def test_stop_drains_a_request_in_flight_then_closes_the_store(
    runner_factory: t.Callable[..., Runner], tmp_path: Path
) -> None:
    started = tmp_path / "started"
    app = slow_app.create_app(str(started))
    guard = _FakeGuard()
    app.extensions["tokenguard"] = guard
    runner = runner_factory(app)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(_get, runner.url + "/slow", params={"seconds": "0.5"})
        _wait_for_lines(started, 1)
        assert runner.stop() is True
        response = future.result()
    assert response.status_code == 200
    assert response.content == slow_app.body()
    assert guard.closed == [app]


@pytest.mark.server
def test_stop_reports_a_drain_cut_short(
    runner_factory: t.Callable[..., Runner], tmp_path: Path
) -> None:
    started = tmp_path / "started"
    runner = runner_factory(slow_app.create_app(str(started)), drain_timeout=0.1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(_get, runner.url + "/slow", params={"seconds": "2"})
        _wait_for_lines(started, 1)
        began = time.monotonic()
        assert runner.stop() is False
        assert time.monotonic() - began < 1
        with pytest.raises(requests.ConnectionError):
            future.result()


def _gated_app(held: int) -> tuple[Flask, list[int], threading.Event]:
    """An app whose ``held``-th ``/page`` waits for the gate: (app, calls, gate)."""
    app = Flask(__name__)
    calls: list[int] = []
    gate = threading.Event()
    payload = slow_app.body()

    @app.get("/page")
    def page() -> Response:
        calls.append(len(calls))
        if len(calls) == held:
            gate.wait(5)
        return Response(payload, mimetype="application/octet-stream")

    return app, calls, gate


def _stop_in_thread(
    runner: Runner, pool: concurrent.futures.ThreadPoolExecutor
) -> concurrent.futures.Future[bool]:
    """Start ``runner.stop()``; return once the listener is closed (the drain began)."""
    future = pool.submit(runner.stop)
    deadline = time.monotonic() + 5
    while not _refused(runner.effective_port):
        assert time.monotonic() < deadline, "the drain did not start"
        assert not future.done(), future.result()
        time.sleep(0.01)
    return future


@pytest.mark.server
def test_stop_closes_a_keep_alive_connection_after_its_response(
    runner_factory: t.Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    # IIS/ARR pools keep-alive connections: the client sends its next request as soon
    # as a response is read. The drain must answer the request in flight with
    # "Connection: close", close the connection, and not cancel anything.
    caplog.set_level(logging.INFO, logger="waitress")
    app, calls, gate = _gated_app(held=3)
    runner = runner_factory(app, drain_timeout=2)
    port = runner.effective_port
    results: list[tuple[int, bool, str | None]] = []
    outcome: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while len(results) < 50:
                try:
                    conn.request("GET", "/page")
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    outcome.append(exc)
                    return
                results.append(
                    (
                        response.status,
                        body == slow_app.body(),
                        response.getheader("Connection"),
                    )
                )
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        client_done = pool.submit(client)
        deadline = time.monotonic() + 5
        while len(calls) < 3:  # the third request is in the app, held by the gate
            assert time.monotonic() < deadline and not client_done.done()
            time.sleep(0.01)
        stopped = _stop_in_thread(runner, pool)
        gate.set()
        assert stopped.result(timeout=10) is True
        client_done.result(timeout=10)
    assert results == [(200, True, None)] * 2 + [(200, True, "close")]
    # The next request needed a new connection, and the listener was closed.
    assert [type(exc) for exc in outcome] == [ConnectionRefusedError]
    assert len(calls) == 3
    assert "Canceling" not in caplog.text


@pytest.mark.server
def test_stop_answers_pipelined_requests_before_closing(
    runner_factory: t.Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    # Both requests arrive in one packet; the first is in the app when the drain
    # begins. The second must still be answered, and only its response says "close".
    caplog.set_level(logging.INFO, logger="waitress")
    app, calls, gate = _gated_app(held=1)
    runner = runner_factory(app, drain_timeout=2)
    with (
        socket.create_connection(("127.0.0.1", runner.effective_port)) as sock,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sock.settimeout(10)
        request = b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n"
        sock.sendall(request * 2)
        deadline = time.monotonic() + 5
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopped = _stop_in_thread(runner, pool)
        gate.set()
        received = bytearray()
        while chunk := sock.recv(1 << 16):
            received += chunk
        assert stopped.result(timeout=10) is True
    heads = re.findall(rb"HTTP/1\.1 [^\r]*\r\n(?:[^\r]+\r\n)*\r\n", received)
    assert [h.split(b"\r\n", 1)[0] for h in heads] == [b"HTTP/1.1 200 OK"] * 2
    assert [b"Connection: close" in h for h in heads] == [False, True]
    assert len(received) == sum(map(len, heads)) + 2 * len(slow_app.body())
    assert len(calls) == 2
    assert "Canceling" not in caplog.text


@pytest.mark.server
def test_stop_answers_a_request_sent_just_after_the_drain_began(
    runner_factory: t.Callable[..., Runner], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client reuses its keep-alive connection as the drain begins: the request
    # is answered with "Connection: close" rather than lost with the connection.
    monkeypatch.setattr(serve_module, "_IDLE_GRACE", 5.0)  # whatever the machine load
    runner = runner_factory(drain_timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", runner.effective_port, timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            conn.request("GET", "/echo")
            first = conn.getresponse()
            first.read()
            began = time.monotonic()
            stopped = _stop_in_thread(runner, pool)
            conn.request("GET", "/echo")
            second = conn.getresponse()
            second.read()
            assert stopped.result(timeout=10) is True
            assert time.monotonic() - began < 2  # closed with the response, no grace
            with pytest.raises(ConnectionRefusedError):
                conn.request("GET", "/echo")
        finally:
            conn.close()
    assert (first.status, first.getheader("Connection")) == (200, None)
    assert (second.status, second.getheader("Connection")) == (200, "close")


@pytest.mark.server
def test_stop_closes_idle_keep_alive_connections_promptly(
    runner_factory: t.Callable[..., Runner],
) -> None:
    runner = runner_factory(drain_timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", runner.effective_port, timeout=10)
    try:
        conn.request("GET", "/echo")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Connection") is None
        response.read()
        assert conn.sock is not None
        began = time.monotonic()
        assert runner.stop() is True
        assert time.monotonic() - began < 1  # not held until the drain timeout
        assert conn.sock.recv(1) == b""  # closed in order (FIN), not reset
    finally:
        conn.close()


@pytest.mark.server
def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(APP_FILE),
            "--port",
            "0",
            "--threads",
            "4",
            "--started",
            str(started),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            match = re.search(r"Serving on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port.append(int(match.group(1)))
                ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert ready.wait(15), "".join(stderr)
        url = f"http://127.0.0.1:{port[0]}/slow"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(_get, url, params={"access_token": TOKEN}, headers=headers)
                for _ in range(6)
            ]
            # 4 workers busy, 2 requests queued in waitress when the signal arrives.
            _wait_for_lines(started, 4)
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            refused_while_draining = None
            while time.monotonic() - signalled < 3:
                if _refused(port[0]):
                    refused_while_draining = proc.poll() is None
                    break
                time.sleep(0.02)
            responses = [f.result() for f in futures]
        assert proc.wait(timeout=10) == 0
        exited_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
    log = "".join(stderr)
    assert refused_while_draining is True, log
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.content == slow_app.body() for r in responses)
    assert exited_after < 8
    assert len(started.read_text().splitlines()) == 6
    assert "Received SIGTERM" in log
    assert "Traceback" not in log
    assert "Canceling" not in log
    assert log.count("GET /slow 200") == 6
    assert TOKEN not in log
    assert _refused(port[0])


@pytest.mark.server
def test_trusted_proxy_headers_set_the_scheme(
    runner_factory: t.Callable[..., Runner],
) -> None:
    runner = runner_factory(trusted_proxy="127.0.0.1")
    response = _get(
        runner.url + "/echo",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"},
    )
    assert response.json()["scheme"] == "https"
    assert response.json()["remote_addr"] == "203.0.113.7"


@pytest.mark.server
def test_trusted_proxy_comes_from_the_config(
    runner_factory: t.Callable[..., Runner],
) -> None:
    app = slow_app.create_app()
    app.config["TOKENGUARD_TRUSTED_PROXY"] = "127.0.0.1"
    app.config["TOKENGUARD_TRUSTED_PROXY_HEADERS"] = ["x-forwarded-proto"]
    runner = runner_factory(app)
    response = _get(
        runner.url + "/echo",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"},
    )
    assert response.json()["scheme"] == "https"
    assert response.json()["remote_addr"] == "127.0.0.1"  # X-Forwarded-For not trusted


@pytest.mark.server
def test_forwarded_headers_are_cleared_without_a_trusted_proxy(
    runner_factory: t.Callable[..., Runner],
) -> None:
    runner = runner_factory()
    response = _get(
        runner.url + "/echo",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"},
    )
    assert response.json() == {
        "scheme": "http",
        "remote_addr": "127.0.0.1",
        "forwarded_proto": None,
    }


@pytest.mark.server
def test_serve_reports_a_busy_port_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve(Flask(__name__), port=port, log_level=None) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"Error: cannot serve on 127.0.0.1:{port}: ")
    assert "in use" in err
    assert "Traceback" not in err


def test_serve_reports_a_bad_setting_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = Flask(__name__)
    app.config["TOKENGUARD_SERVE_THREADS"] = "many"
    assert serve(app, port=0, log_level=None) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "TOKENGUARD_SERVE_THREADS" in err


@pytest.mark.server
def test_serve_stops_on_sigterm_and_restores_handlers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flask_tokenguard")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    guard = _FakeGuard()
    app = slow_app.create_app()
    app.extensions["tokenguard"] = guard
    statuses: list[int] = []

    def client() -> None:
        deadline = time.monotonic() + 10
        try:
            while signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]:
                if time.monotonic() > deadline:
                    return  # serve() never got going; it has returned by itself
                time.sleep(0.01)
            lines = [r.getMessage() for r in caplog.records if "Serving on" in r.getMessage()]
            url = lines[0].split("Serving on ", 1)[1]
            statuses.append(_get(url + "/echo").status_code)
        finally:
            if signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]:
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client)
    thread.start()
    code = serve(app, port=0, drain_timeout=2, log_level=None)
    thread.join(10)
    assert code == 0
    assert statuses == [200]
    assert guard.closed == [app]
    assert {s: signal.getsignal(s) for s in before} == before
    assert "Received SIGTERM" in caplog.text


@pytest.mark.server
def test_logs_never_contain_tokens(
    runner_factory: t.Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_tokenguard")
    caplog.set_level(logging.DEBUG, logger="waitress")
    app: Flask = slow_app.create_app()  # its /boom raises
    runner = runner_factory(app, access_log=True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    params = {"access_token": TOKEN}
    assert _get(runner.url + "/echo", headers=headers, params=params).status_code == 200
    assert _get(runner.url + "/missing", headers=headers, params=params).status_code == 404
    assert _get(runner.url + "/boom", headers=headers, params=params).status_code == 500
    assert _get(runner.url + "/a%0Ab", headers=headers, params=params).status_code == 404
    runner.stop()
    text = caplog.text
    assert re.search(r"127\.0\.0\.1 GET /echo 200 [\d.]+ms", text)
    assert "GET /missing 404" in text
    assert "GET /boom 500" in text
    assert "GET /a%0Ab 404" in text  # a newline in the path cannot forge a log line
    assert TOKEN not in text
    assert "access_token" not in text


def test_configure_logging_adds_a_handler_only_to_a_bare_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure_logging(logging.INFO)
    assert len(root.handlers) == 1
    handler = root.handlers[0]
    assert handler.formatter is not None
    assert handler.formatter._fmt == serve_module.LOG_FORMAT
    assert root.level == logging.INFO
    configure_logging(logging.DEBUG)
    assert root.handlers == [handler]
    assert root.level == logging.INFO


# -- TOKENGUARD_LOG_FORMAT = "json" ------------------------------------------------------


def test_json_formatter_writes_one_object_per_line() -> None:
    record = logging.makeLogRecord(
        {
            "name": "flask_tokenguard.serve.access",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "%s\nforged line",
            "args": ("GET",),
            "created": 1_800_000_000.25,
            "method": "GET",
            "status": 200,
        }
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250Z",
        "level": "INFO",
        "logger": "flask_tokenguard.serve.access",
        "message": "GET\nforged line",
        "method": "GET",
        "status": 200,
    }
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback") and "ValueError: bad" in entry["exception"]


def test_configure_logging_json_installs_the_json_formatter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(logging, "_warnings_showwarning", None)
    try:
        configure_logging(logging.INFO, "json")
        [handler] = root.handlers
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        logging.captureWarnings(False)


# Until Settings knows TOKENGUARD_LOG_FORMAT, it warns that the key is unknown.
def test_a_bad_log_format_is_reported_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    app = Flask(__name__)
    app.config["TOKENGUARD_LOG_FORMAT"] = "xml"
    assert serve(app, port=0, log_level=None) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TOKENGUARD_LOG_FORMAT" in err


def _json_lines(text: str) -> list[dict[str, t.Any]]:
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{text}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), line
        entries.append(entry)
    return entries


@pytest.mark.server
@pytest.mark.slow
def test_json_log_format_writes_only_json_lines(tmp_path: Path) -> None:
    # A real server process: everything on its stdout and stderr must parse.
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "FLASK_TOKENGUARD_LOG_FORMAT": "json", "PYTHONWARNINGS": ""}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(APP_FILE), "--port", "0", "--threads", "1"],
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
    try:
        deadline = time.monotonic() + 15
        port = None
        while port is None:
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            match = re.search(r"Serving on http://127\.0\.0\.1:(\d+)", err.read_text())
            port = int(match.group(1)) if match else None
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        params = {"access_token": TOKEN}
        assert _get(url + "/echo", headers=headers, params=params).status_code == 200
        assert _get(url + "/missing", headers=headers, params=params).status_code == 404
        assert _get(url + "/boom", headers=headers, params=params).status_code == 500
        assert _get(url + "/warn", headers=headers, params=params).status_code == 200
        assert _get(url + "/a%0Ab", headers=headers, params=params).status_code == 404
        # One worker, two requests: waitress warns about its queue.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = [
                pool.submit(_get, url + "/slow", params={"seconds": "0.3", **params})
                for _ in range(2)
            ]
            assert [f.result().status_code for f in slow] == [200, 200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text() + err.read_text()
    entries = _json_lines(text)
    assert TOKEN not in text and "access_token" not in text
    by_logger: dict[str, list[dict[str, t.Any]]] = {}
    for entry in entries:
        by_logger.setdefault(entry["logger"], []).append(entry)
    assert by_logger["flask_tokenguard.serve"][0]["message"].startswith("Serving on http://")
    assert any("Received SIGTERM" in e["message"] for e in by_logger["flask_tokenguard.serve"])
    requests_logged = {
        (e["method"], e["path"], e["status"]) for e in by_logger["flask_tokenguard.serve.access"]
    }
    assert {
        ("GET", "/echo", 200),
        ("GET", "/missing", 404),
        ("GET", "/boom", 500),
        ("GET", "/warn", 200),
        ("GET", "/a%0Ab", 404),
        ("GET", "/slow", 200),
    } <= requests_logged
    access = by_logger["flask_tokenguard.serve.access"][0]
    assert access["remote_addr"] == "127.0.0.1" and isinstance(access["duration_ms"], float)
    assert access["level"] == "INFO"
    # The app's error, with its traceback inside one JSON string.
    [failure] = [e for e in entries if "exception" in e]
    assert failure["level"] == "ERROR" and "boom\nwith a second line" in failure["exception"]
    assert any(e["message"] == "the app logs a warning" for e in entries)
    [warning] = [e for e in by_logger["py.warnings"] if "a deprecated call" in e["message"]]
    assert warning["level"] == "WARNING"
    assert any(e["message"].startswith("Task queue depth") for e in by_logger["waitress.queue"])


@pytest.mark.server
def test_json_log_format_reports_a_busy_port_as_json(tmp_path: Path) -> None:
    env = {**os.environ, "FLASK_TOKENGUARD_LOG_FORMAT": "json"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(APP_FILE), "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert result.returncode == 1
    entries = _json_lines(result.stdout + result.stderr)
    [entry] = [e for e in entries if e["level"] == "ERROR"]
    assert "Traceback" not in result.stderr
    assert entry["message"].startswith(f"Error: cannot serve on 127.0.0.1:{port}: ")


def test_text_stays_the_default_format(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure_logging()
    [handler] = root.handlers
    assert not isinstance(handler.formatter, JsonFormatter)
    assert handler.formatter is not None and handler.formatter._fmt == serve_module.LOG_FORMAT


def test_start_up_asks_the_store_and_warns_when_it_does_not_answer(
    app_factory: t.Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flask_tokenguard.errors import StoreError

    app = app_factory()
    store = app.extensions["tokenguard"].store(app)
    asked = threading.Event()

    def down() -> None:
        asked.set()
        raise StoreError("connection refused")

    monkeypatch.setattr(store, "check", down)
    caplog.set_level(logging.WARNING, logger="flask_tokenguard.serve")
    runner = Runner(app, host="127.0.0.1", port=0, threads=2, drain_timeout=1)
    runner.start()
    try:
        assert asked.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "store does not answer" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("store does not answer (connection refused)" in w for w in warnings)
        # The server serves all the same: the health answer says what is wrong.
        health = requests.get(runner.url + "/health", timeout=5)
        assert health.status_code == 503
    finally:
        runner.stop()
