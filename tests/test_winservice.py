"""The Windows service glue, driven on any OS through fake pywin32 modules."""

from __future__ import annotations

import concurrent.futures
import getpass
import importlib
import io
import json
import logging
import logging.handlers
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import typing as t
from pathlib import Path

import pytest
import requests

import flask_tokenguard
from flask_tokenguard.serving import winservice
from flask_tokenguard.serving.winservice import build_parser
from flask_tokenguard.serving.winservice import load_app
from flask_tokenguard.serving.winservice import main

PYWIN32_MODULES = (
    "win32serviceutil",
    "win32service",
    "win32event",
    "servicemanager",
    "win32evtlogutil",
    "win32evtlog",
)


class FakePywin32:
    """Records what the code under test asks of pywin32."""

    def __init__(self) -> None:
        self.options: dict[tuple[str, str], t.Any] = {}
        self.command_lines: list[dict[str, t.Any]] = []
        self.config2: list[tuple[t.Any, int, t.Any]] = []
        self.closed_handles: list[t.Any] = []
        self.service_log: list[tuple[t.Any, ...]] = []
        #: (level, message) of servicemanager.LogErrorMsg/LogWarningMsg/LogInfoMsg.
        self.messages: list[tuple[str, str]] = []
        #: What NTEventLogHandler would do: register a source and report events.
        self.registered_sources: list[tuple[str, str]] = []
        self.events: list[tuple[str, int, str]] = []
        self.fail_config2 = False

    def modules(self) -> dict[str, types.ModuleType]:
        fake = self

        serviceutil = types.ModuleType("win32serviceutil")

        class ServiceFramework:
            def __init__(self, args: t.Sequence[str]) -> None:
                self.args = list(args)
                self.statuses: list[tuple[int, int]] = []

            def ReportServiceStatus(  # noqa: N802
                self,
                status: int,
                waitHint: int = 5000,  # noqa: N803 - pywin32's names
                win32ExitCode: int = 0,  # noqa: N803
                svcExitCode: int = 0,  # noqa: N803
            ) -> None:
                self.statuses.append((status, waitHint))

        def handle_command_line(
            cls: t.Any,
            serviceClassString: str | None = None,  # noqa: N803
            argv: list[str] | None = None,
            customInstallOptions: str = "",  # noqa: N803
            customOptionHandler: t.Callable[..., None] | None = None,  # noqa: N803
        ) -> int:
            fake.command_lines.append(
                {
                    "name": cls._svc_name_,
                    "cls": cls,
                    "class_string": serviceClassString,
                    "argv": argv,
                }
            )
            assert argv is not None
            if argv[-1] in ("install", "update") and customOptionHandler:
                customOptionHandler([])
            return 0

        serviceutil.__dict__.update(
            ServiceFramework=ServiceFramework,
            HandleCommandLine=handle_command_line,
            SetServiceCustomOption=lambda name, key, value: fake.options.__setitem__(
                (name, key), value
            ),
            GetServiceCustomOption=lambda name, key, default=None: fake.options.get(
                (name, key), default
            ),
        )

        service = types.ModuleType("win32service")
        service.__dict__.update(
            SC_MANAGER_ALL_ACCESS=0xF003F,
            SERVICE_ALL_ACCESS=0xF01FF,
            SERVICE_CONFIG_FAILURE_ACTIONS=2,
            SERVICE_CONFIG_FAILURE_ACTIONS_FLAG=4,
            SC_ACTION_RESTART=1,
            SERVICE_STOP_PENDING=3,
            SERVICE_RUNNING=4,
        )

        def change_config2(handle: t.Any, level: int, info: t.Any) -> None:
            if fake.fail_config2:
                raise OSError("access denied")
            fake.config2.append((handle, level, info))

        service.__dict__.update(
            OpenSCManager=lambda machine, db, access: "scm",
            OpenService=lambda scm, name, access: ("service", name),
            ChangeServiceConfig2=change_config2,
            CloseServiceHandle=fake.closed_handles.append,
        )

        event = types.ModuleType("win32event")

        def wait(handle: threading.Event, ms: int) -> int:
            return 0 if handle.wait(ms / 1000) else 258

        event.__dict__.update(
            INFINITE=0xFFFFFFFF,
            WAIT_OBJECT_0=0,
            WAIT_TIMEOUT=258,
            CreateEvent=lambda sa, manual, initial, name: threading.Event(),
            SetEvent=lambda handle: handle.set(),
            WaitForSingleObject=wait,
        )

        manager = types.ModuleType("servicemanager")
        manager.__dict__.update(
            EVENTLOG_INFORMATION_TYPE=4,
            PYS_SERVICE_STARTED=0x40000002,
            PYS_SERVICE_STOPPED=0x40000006,
            LogMsg=lambda *args: fake.service_log.append(args),
            LogErrorMsg=lambda msg: fake.messages.append(("error", msg)),
            LogWarningMsg=lambda msg: fake.messages.append(("warning", msg)),
            LogInfoMsg=lambda msg: fake.messages.append(("info", msg)),
        )

        evtlogutil = types.ModuleType("win32evtlogutil")
        evtlogutil.__file__ = "/fake/win32/lib/win32evtlogutil.py"
        evtlogutil.__dict__.update(
            AddSourceToRegistry=lambda appname, dllname, logtype: fake.registered_sources.append(
                (appname, dllname)
            ),
            ReportEvent=lambda appname, event_id, cat, kind, strings: fake.events.append(
                (appname, kind, strings[0])
            ),
        )
        evtlog = types.ModuleType("win32evtlog")
        evtlog.__dict__.update(
            EVENTLOG_ERROR_TYPE=1, EVENTLOG_WARNING_TYPE=2, EVENTLOG_INFORMATION_TYPE=4
        )
        return {
            "win32serviceutil": serviceutil,
            "win32service": service,
            "win32event": event,
            "servicemanager": manager,
            "win32evtlogutil": evtlogutil,
            "win32evtlog": evtlog,
        }


@pytest.fixture
def pywin32(monkeypatch: pytest.MonkeyPatch) -> FakePywin32:
    fake = FakePywin32()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


@pytest.fixture
def no_pywin32(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PYWIN32_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # None makes the import fail


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[str]:
    """A module ``svc_app_<n>`` in tmp_path with a factory, an app and a slow route."""
    name = f"svc_app_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import time
            from flask import Flask

            INSTANCE = {str(tmp_path / "instance")!r}
            STARTED = {str(tmp_path / "started")!r}

            def create_app():
                app = Flask(__name__, instance_path=INSTANCE)

                @app.get("/slow")
                def slow():
                    with open(STARTED, "a") as f:
                        f.write("started\\n")
                    time.sleep(0.5)
                    return "x" * 100_000

                return app

            app = create_app()
            not_an_app = 42
            """
        )
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_imports_and_helps_without_pywin32() -> None:
    code = (
        "import sys, flask_tokenguard.serving.winservice as w\n"
        "loaded = [m for m in sys.modules if m.startswith(('win32', 'servicemanag'))]\n"
        "assert not loaded, loaded\n"
        "sys.exit(w.main(['--help']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "install" in result.stdout and "--app" in result.stdout


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in (
        "install",
        "update",
        "remove",
        "debug",
        "--app",
        "--log-dir",
        "--name",
        "NSSM",
    ):
        assert word in out


def test_parser_reads_our_options() -> None:
    args = build_parser().parse_args(
        [
            "--app",
            "orders:create_app",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--threads",
            "4",
            "--name",
            "Orders",
            "--log-dir",
            "C:/logs",
            "--startup",
            "delayed",
            "install",
        ]
    )
    assert (args.command, args.app, args.host, args.port, args.threads) == (
        "install",
        "orders:create_app",
        "0.0.0.0",
        9000,
        4,
    )
    assert (args.name, args.log_dir, args.startup) == ("Orders", "C:/logs", "delayed")
    defaults = build_parser().parse_args(["stop"])
    assert (defaults.name, defaults.app, defaults.port, defaults.workdir) == (
        "TokenGuard",
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["--port", "eighty", "install"],
        ["--startup", "soon", "start"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.usefixtures("no_pywin32")
@pytest.mark.parametrize("command", ["install", "start", "remove"])
def test_without_pywin32_points_to_the_extra(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--app", "orders:create_app", command]) == 2
    err = capsys.readouterr().err
    assert "pip install flask-tokenguard[windows]" in err
    assert "NSSM" in err and "WinSW" in err
    assert "Traceback" not in err


def test_install_needs_an_app(pywin32: FakePywin32, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install"]) == 2
    assert "--app" in capsys.readouterr().err
    assert pywin32.command_lines == []


def test_install_persists_options_and_sets_failure_actions(
    pywin32: FakePywin32, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [
        "--app",
        "orders:create_app",
        "--port",
        "9000",
        "--threads",
        "3",
        "--name",
        "Orders",
        "--log-dir",
        "logs",
        "--startup",
        "auto",
        "--username",
        r"DOM\svc",
        "--password-stdin",
        "install",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    assert main(argv) == 0
    [call] = pywin32.command_lines
    assert call["name"] == "Orders"
    assert call["argv"][1:] == [
        r"--username=DOM\svc",
        "--startup=auto",
        "--password=s3cret pass",
        "install",
    ]
    assert call["class_string"].endswith("\\flask_tokenguard.serving.winservice.TokenGuardService")
    assert call["cls"].__module__ == "flask_tokenguard.serving.winservice"
    assert pywin32.options == {
        ("Orders", "app"): "orders:create_app",
        ("Orders", "port"): "9000",
        ("Orders", "threads"): "3",
        ("Orders", "log_dir"): str(tmp_path / "logs"),
        ("Orders", "workdir"): str(tmp_path),
    }
    handle = ("service", "Orders")
    assert pywin32.config2 == [
        (
            handle,
            2,
            {
                "ResetPeriod": 86400,
                "RebootMsg": "",
                "Command": "",
                "Actions": [(1, 5000), (1, 10000), (1, 60000)],
            },
        ),
        (handle, 4, True),
    ]
    assert pywin32.closed_handles == [handle, "scm"]


def test_update_persists_only_the_options_given(pywin32: FakePywin32) -> None:
    pywin32.options[("TokenGuard", "app")] = "orders:create_app"
    pywin32.options[("TokenGuard", "port")] = "9000"
    assert main(["--port", "9001", "update"]) == 0
    assert pywin32.options == {
        ("TokenGuard", "app"): "orders:create_app",
        ("TokenGuard", "port"): "9001",
    }
    assert [level for _, level, _ in pywin32.config2] == [2, 4]


def test_control_commands_touch_neither_options_nor_recovery(
    pywin32: FakePywin32,
) -> None:
    assert main(["--wait", "30", "stop"]) == 0
    assert pywin32.command_lines[0]["argv"][1:] == ["--wait=30", "stop"]
    assert pywin32.options == {} and pywin32.config2 == []


def test_failure_actions_error_prints_the_sc_fallback(
    pywin32: FakePywin32, capsys: pytest.CaptureFixture[str]
) -> None:
    pywin32.fail_config2 = True
    assert main(["--app", "orders:app", "install"]) == 1
    err = capsys.readouterr().err
    assert (
        "sc.exe failure TokenGuard reset= 86400 "
        "actions= restart/5000/restart/10000/restart/60000" in err
    )
    assert "sc.exe failureflag TokenGuard 1" in err


def test_service_class_is_built_on_demand(pywin32: FakePywin32) -> None:
    cls = winservice.TokenGuardService
    framework = sys.modules["win32serviceutil"].__dict__["ServiceFramework"]
    assert issubclass(cls, framework)
    assert cls._svc_name_ == "TokenGuard"
    assert cls(["Orders"])._svc_name_ == "Orders"  # the SCM passes the installed name


def test_load_app_accepts_a_factory_or_an_app(app_module: str) -> None:
    from flask import Flask

    assert isinstance(load_app(f"{app_module}:create_app"), Flask)
    assert load_app(f"{app_module}:create_app") is not sys.modules[app_module].app
    assert load_app(f"{app_module}:app") is sys.modules[app_module].app
    assert load_app(app_module) is sys.modules[app_module].app  # as flask --app does
    with pytest.raises(ValueError, match="valid Flask application was not obtained"):
        load_app(f"{app_module}:not_an_app")
    with pytest.raises(ValueError, match="Failed to find attribute 'missing'"):
        load_app(f"{app_module}:missing")
    with pytest.raises(ValueError, match="Could not import 'no_such_module_for_tokenguard'"):
        load_app("no_such_module_for_tokenguard:app")
    with pytest.raises(ValueError, match="module:create_app"):
        load_app(":app")


def _wait_for(predicate: t.Callable[[], t.Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.server
def test_service_serves_and_drains_on_stop(
    pywin32: FakePywin32, app_module: str, tmp_path: Path
) -> None:
    name = "TG-Test"
    pywin32.options.update(
        {
            (name, "app"): f"{app_module}:create_app",
            (name, "port"): "0",
            (name, "workdir"): str(tmp_path),
        }
    )
    root_handlers = list(logging.getLogger().handlers)
    service = winservice.TokenGuardService([name])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.SvcDoRun()
        except BaseException as exc:  # noqa: BLE001  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    stopped = False
    try:
        _wait_for(lambda: service.runner is not None or errors)
        assert not errors, errors
        url = service.runner.url
        with (
            requests.Session() as session,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            session.trust_env = False
            future = pool.submit(session.get, url + "/slow", timeout=20)
            _wait_for((tmp_path / "started").exists)
            service.SvcStop()
            stopped = True
            response = future.result()
    finally:
        if not stopped:
            service.SvcStop()
        thread.join(10)
    assert not errors, errors
    assert response.status_code == 200 and response.text == "x" * 100_000
    assert service.statuses == [(3, 20_000)]  # STOP_PENDING, (drain 15 s + 5 s) in ms
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", service.runner.effective_port), timeout=2)
    assert [entry[1] for entry in pywin32.service_log] == [0x40000002, 0x40000006]
    log = (tmp_path / "instance" / f"{name}.log").read_text()
    assert "Serving on http://127.0.0.1:" in log
    assert "Server stopped" in log
    assert pywin32.messages == []  # nothing at WARNING or above
    assert pywin32.registered_sources == [] and pywin32.events == []
    assert logging.getLogger().handlers == root_handlers


def test_service_start_failure_goes_to_the_event_log(
    pywin32: FakePywin32, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pywin32.options[("TokenGuard", "app")] = "no_such_module_for_tokenguard:create_app"
    root_handlers = list(logging.getLogger().handlers)
    service = winservice.TokenGuardService(["TokenGuard"])
    with pytest.raises(winservice.ServiceStartError, match="could not start"):
        service.SvcDoRun()
    [(level, message)] = pywin32.messages
    assert level == "error"
    assert "no_such_module_for_tokenguard" in message
    # Not NTEventLogHandler: it would register the source again, with
    # win32service.pyd as message file, over pythonservice's servicemanager.pyd.
    assert pywin32.registered_sources == [] and pywin32.events == []
    assert logging.getLogger().handlers == root_handlers


@pytest.fixture
def no_nt_event_log_handler(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make NTEventLogHandler record its use instead of registering a source."""
    created: list[str] = []

    class Recording(logging.Handler):
        def __init__(self, appname: str, *args: t.Any, **kwargs: t.Any) -> None:
            super().__init__()
            created.append(appname)

        def emit(self, record: logging.LogRecord) -> None:
            pass

    monkeypatch.setattr(logging.handlers, "NTEventLogHandler", Recording)
    return created


def test_service_warnings_and_errors_go_through_servicemanager(
    pywin32: FakePywin32,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_nt_event_log_handler: list[str],
) -> None:
    # The app's factory logs, then fails: WARNING and above reach the Event Log
    # through servicemanager at their level; INFO does not.
    (tmp_path / "warn_app.py").write_text(
        textwrap.dedent(
            """
            import logging

            def create_app():
                log = logging.getLogger("warn_app")
                log.info("an info line")
                log.warning("a warning line")
                log.error("an error line")
                raise RuntimeError("no database")
            """
        )
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "warn_app", raising=False)
    pywin32.options[("TokenGuard", "app")] = "warn_app:create_app"
    service = winservice.TokenGuardService(["TokenGuard"])
    try:
        with pytest.raises(winservice.ServiceStartError, match="could not start"):
            service.SvcDoRun()
    finally:
        sys.modules.pop("warn_app", None)
    levels = [level for level, _ in pywin32.messages]
    assert levels == ["warning", "error", "error"]
    assert "a warning line" in pywin32.messages[0][1]
    assert "an error line" in pywin32.messages[1][1]
    assert "could not start: no database" in pywin32.messages[2][1]
    assert not any("an info line" in m for _, m in pywin32.messages)
    assert no_nt_event_log_handler == []
    assert pywin32.registered_sources == [] and pywin32.events == []


def test_service_without_an_app_fails_to_start(pywin32: FakePywin32) -> None:
    service = winservice.TokenGuardService(["TokenGuard"])
    with pytest.raises(winservice.ServiceStartError, match="reinstall with --app"):
        service.SvcDoRun()


def test_event_log_handler_maps_levels_to_servicemanager(
    pywin32: FakePywin32,
) -> None:
    handler = winservice.EventLogHandler(sys.modules["servicemanager"])
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.CRITICAL):
        record = logging.makeLogRecord(
            {"msg": "m", "levelno": level, "levelname": logging.getLevelName(level)}
        )
        handler.handle(record)
    assert pywin32.messages == [
        ("info", "DEBUG m"),
        ("info", "INFO m"),
        ("warning", "WARNING m"),
        ("error", "CRITICAL m"),
    ]


def test_load_app_uses_flask_script_info(app_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same loader as flask --app, factory arguments included.
    from flask.cli import ScriptInfo

    calls: list[str | None] = []
    original = ScriptInfo.load_app

    def recording(self: ScriptInfo) -> t.Any:
        calls.append(self.app_import_path)
        return original(self)

    monkeypatch.setattr(ScriptInfo, "load_app", recording)
    assert load_app(f"{app_module}:create_app()").name == app_module
    assert calls == [f"{app_module}:create_app()"]


def test_service_class_is_a_plain_class_found_by_its_dotted_name(
    pywin32: FakePywin32,
) -> None:
    # What pythonservice.exe does with the registry's class string: put the folder on
    # sys.path, import the module, getattr the class.
    assert main(["--app", "orders:app", "install"]) == 0
    class_string = pywin32.command_lines[0]["class_string"]
    folder, dotted = class_string.rsplit("\\", 1)
    assert Path(folder) == Path(flask_tokenguard.__file__).resolve().parent.parent
    module_name, _, class_name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert cls is winservice.TokenGuardService is winservice.service_class()
    assert cls.__name__ == cls.__qualname__ == "TokenGuardService"
    assert cls.__module__ == "flask_tokenguard.serving.winservice"
    assert not hasattr(cls, "__orig_bases__") and type(cls) is type
    assert callable(cls.SvcDoRun) and callable(cls.SvcStop)
    named = winservice.service_class("Orders")
    assert issubclass(named, cls) and named._svc_name_ == "Orders"
    assert named._svc_display_name_ == "TokenGuard (Orders)"


def test_python_m_runs_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask_tokenguard.serving.winservice", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--password-stdin" in result.stdout and "--app" in result.stdout


# -- the account password is never taken from the command line -------------------------


def test_password_on_the_command_line_is_refused(
    pywin32: FakePywin32, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--app", "orders:app", "--username", r"DOM\svc", "--password", "hunter2", "install"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "process lists" in err and "--password-stdin" in err
    assert "hunter2" not in err
    assert pywin32.command_lines == []


def test_help_offers_no_password_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--password-stdin" in out
    assert "--password " not in out and "--password PASSWORD" not in out


def test_password_is_asked_for_hidden(
    pywin32: FakePywin32, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "typed secret"

    monkeypatch.setattr(sys, "stdin", _Tty())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert main(["--username", r"DOM\svc", "update"]) == 0
    assert prompts == [r"Password for DOM\svc: "]
    argv = pywin32.command_lines[0]["argv"]
    assert argv[1:] == [r"--username=DOM\svc", "--password=typed secret", "update"]
    assert "typed secret" not in " ".join(sys.argv)
    assert all("typed secret" not in str(v) for v in pywin32.options.values())


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_without_a_console_needs_password_stdin(
    pywin32: FakePywin32, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["--username", r"DOM\svc", "update"]) == 2
    assert "--password-stdin" in capsys.readouterr().err
    assert pywin32.command_lines == []


@pytest.mark.parametrize(
    "account", ["LocalSystem", r"NT AUTHORITY\LocalService", r"NT SERVICE\TokenGuard", r"DOM\gmsa$"]
)
def test_service_accounts_need_no_password(
    pywin32: FakePywin32, monkeypatch: pytest.MonkeyPatch, account: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["--username", account, "update"]) == 0
    assert pywin32.command_lines[0]["argv"][1:] == [f"--username={account}", "update"]


# -- the folder the app is imported from -------------------------------------------------

posix_only = pytest.mark.skipif(os.name == "nt", reason="mode bits; Windows uses ACLs")


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_install_refuses_a_workdir_others_can_write(
    pywin32: FakePywin32,
    tmp_path: Path,
    mode: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    assert main(["--app", "orders:app", "--workdir", str(shared), "install"]) == 2
    err = capsys.readouterr().err
    assert "writable by other users" in err and str(shared) in err
    assert pywin32.command_lines == [] and pywin32.options == {}


@posix_only
def test_install_refuses_a_workdir_under_a_folder_others_can_write(
    pywin32: FakePywin32, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Whoever can write to the parent can swap the folder for one of their own.
    parent = tmp_path / "open"
    (parent / "app").mkdir(parents=True)
    parent.chmod(0o777)
    assert main(["--app", "orders:app", "--workdir", str(parent / "app"), "install"]) == 2
    assert f"{parent} is writable by other users" in capsys.readouterr().err


@posix_only
def test_install_accepts_a_private_workdir(pywin32: FakePywin32, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    assert main(["--app", "orders:app", "--workdir", str(private), "install"]) == 0
    assert pywin32.options[("TokenGuard", "workdir")] == str(private)


@posix_only
def test_service_refuses_to_import_from_a_workdir_others_can_write(
    pywin32: FakePywin32, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module planted in the folder would run with the service's rights.
    shared = tmp_path / "shared"
    shared.mkdir()
    planted = tmp_path / "planted"
    (shared / "planted_app.py").write_text(
        f"open({str(planted)!r}, 'w').close()\nfrom flask import Flask\napp = Flask('x')\n"
    )
    shared.chmod(0o777)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    pywin32.options[("TokenGuard", "app")] = "planted_app:app"
    pywin32.options[("TokenGuard", "workdir")] = str(shared)
    service = winservice.TokenGuardService(["TokenGuard"])
    try:
        with pytest.raises(winservice.ServiceStartError, match="writable by other users"):
            service.SvcDoRun()
    finally:
        sys.modules.pop("planted_app", None)
    assert not planted.exists()
    assert str(shared) not in sys.path
    [(level, message)] = pywin32.messages
    assert level == "error" and "refusing to import the app" in message


# Until Settings knows TOKENGUARD_LOG_FORMAT, it warns that the key is unknown.
@pytest.mark.server
def test_service_log_file_follows_the_log_format(
    pywin32: FakePywin32, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "json_app.py").write_text(
        textwrap.dedent(
            f"""
            from flask import Flask

            app = Flask(__name__, instance_path={str(tmp_path / "instance")!r})
            app.config["TOKENGUARD_LOG_FORMAT"] = "json"
            """
        )
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "json_app", raising=False)
    pywin32.options.update(
        {
            ("TokenGuard", "app"): "json_app:app",
            ("TokenGuard", "port"): "0",
            ("TokenGuard", "workdir"): str(tmp_path),
        }
    )
    monkeypatch.chdir(tmp_path)
    service = winservice.TokenGuardService(["TokenGuard"])
    thread = threading.Thread(target=service.SvcDoRun)
    thread.start()
    try:
        _wait_for(lambda: service.runner is not None or not thread.is_alive())
    finally:
        service.SvcStop()
        thread.join(10)
        sys.modules.pop("json_app", None)
    lines = (tmp_path / "instance" / "TokenGuard.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries and all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert any(e["message"].startswith("Serving on http://127.0.0.1:") for e in entries)
