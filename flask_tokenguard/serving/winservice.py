"""Run a tokenguard app as a Windows service (pywin32, the ``windows`` extra).

``python -m flask_tokenguard.serving.winservice --app myapp:create_app install`` registers a
service that serves the app with the same :class:`~flask_tokenguard.serving.runner.Runner` as
``flask tokenguard serve``: the SCM's stop request drains requests in flight exactly as
SIGTERM does. Options are kept as service parameters in the registry
(``SetServiceCustomOption``), and ``install``/``update`` set the recovery policy:
restart after 5 s, 10 s and 60 s, reset after a day, also when the service stops with
an error (a start-up failure) rather than crashing.

pywin32 is imported only when a command needs it, so this module imports, and
``--help`` works, everywhere. Without pywin32, NSSM or WinSW can run
``flask --app myapp tokenguard serve`` instead: both send Ctrl+C, which the runner
turns into the same drain.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import logging.handlers
import os
import sys
import typing as t

from .runner import LOG_FORMAT
from .runner import Runner

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

logger = logging.getLogger("flask_tokenguard.winservice")

# The importable name, also when run as ``python -m`` (where __name__ is "__main__").
_MODULE = "flask_tokenguard.serving.winservice"

#: Service name unless ``--name`` says otherwise.
DEFAULT_NAME = "TokenGuard"
#: The pywin32 commands handed to ``win32serviceutil.HandleCommandLine``.
COMMANDS = ("install", "update", "remove", "start", "stop", "restart", "debug")
#: Options stored as service parameters: argparse dest -> registry value name.
OPTIONS = {
    "app": "app",
    "host": "host",
    "port": "port",
    "threads": "threads",
    "log_dir": "log_dir",
    "workdir": "workdir",
}
#: Recovery policy: restart delays in milliseconds, and seconds until the count resets.
RESTART_DELAYS_MS = (5000, 10000, 60000)
RESET_PERIOD_S = 86400
#: Size and number of the rotated log files in the log folder.
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5

_NO_PYWIN32 = """\
error: this command needs pywin32 (Windows only): pip install flask-tokenguard[windows]
Without pywin32, run the app as a service with NSSM or WinSW instead, e.g.
  nssm install {name} <venv>\\Scripts\\flask.exe --app {app} tokenguard serve
and raise NSSM's AppStopMethodConsole (WinSW: <stoptimeout>) above the drain timeout."""


class ServiceStartError(RuntimeError):
    """The service could not start; raised from ``SvcDoRun`` so the SCM sees an error.

    pythonservice.exe reports an exception from ``SvcRun`` as a stop with a non-zero
    exit code, which triggers the recovery policy (the failure-actions flag is set).
    """


class _EventLogHandler(logging.Handler):
    """Write records to the Event Log through ``servicemanager``, under the service.

    Not ``logging.handlers.NTEventLogHandler(name)``: it registers the event source
    ``name`` again with win32service.pyd as its message file, overwriting the
    registration pythonservice.exe made with servicemanager.pyd, after which Event
    Viewer can no longer render the service's messages. ``servicemanager.Log*Msg``
    log under the service's own source with the messages registered for it.
    """

    def __init__(self, servicemanager: t.Any, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._servicemanager = servicemanager

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self._servicemanager.LogErrorMsg(message)
            elif record.levelno >= logging.WARNING:
                self._servicemanager.LogWarningMsg(message)
            else:
                self._servicemanager.LogInfoMsg(message)
        except Exception:
            self.handleError(record)


def load_app(spec: str) -> Flask:
    """Import ``"module:attr"`` and return the Flask app it names.

    ``attr`` may be a Flask app or a factory called with no arguments; without
    ``:attr``, ``create_app`` and then ``app`` are tried, as ``flask --app`` does.
    Raises ``ImportError`` or ``ValueError`` with a message naming ``spec``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"--app must look like module:create_app or module:app, got {spec!r}")
    module = importlib.import_module(module_name)
    names = [attr] if attr else ["create_app", "app"]
    for name in names:
        target = getattr(module, name, None)
        if target is None:
            continue
        app = target if _is_app(target) else target() if callable(target) else None
        if not _is_app(app):
            raise ValueError(f"{spec!r} did not give a Flask app (got {type(app).__name__})")
        return t.cast("Flask", app)
    raise ValueError(f"{module_name!r} has no {' or '.join(repr(n) for n in names)}")


def _is_app(obj: t.Any) -> bool:
    from flask import Flask

    return isinstance(obj, Flask)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_tokenguard.serving.winservice",
        description="Install and control a Windows service serving a tokenguard app "
        "with waitress. Needs pywin32: pip install flask-tokenguard[windows].",
        epilog="Options are stored with the service by install and update. Without "
        "pywin32, NSSM or WinSW can run 'flask --app APP tokenguard serve' instead.",
    )
    parser.add_argument("command", choices=COMMANDS, help="what to do with the service")
    ours = parser.add_argument_group("service options (stored by install/update)")
    ours.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the app: module:create_app (a factory) or module:app",
    )
    ours.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    ours.add_argument("--port", type=int, help="port to listen on (default 8080)")
    ours.add_argument(
        "--threads", type=int, help="worker threads (default TOKENGUARD_SERVE_THREADS)"
    )
    ours.add_argument("--name", default=DEFAULT_NAME, help=f"service name (default {DEFAULT_NAME})")
    ours.add_argument(
        "--log-dir",
        dest="log_dir",
        help="folder of the rotating log file (default: the app's instance folder)",
    )
    ours.add_argument(
        "--workdir",
        help="folder put on sys.path and made current before loading the "
        "app (default: the current folder at install)",
    )
    pywin = parser.add_argument_group("pywin32 options")
    pywin.add_argument("--username", help="account to run as (install/update)")
    pywin.add_argument("--password", help="its password (install/update)")
    pywin.add_argument(
        "--startup",
        choices=("manual", "auto", "delayed", "disabled"),
        help="start type (install/update; default manual)",
    )
    pywin.add_argument("--wait", type=int, metavar="SECONDS", help="wait for start/stop to finish")
    return parser


def _pywin32_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.argv[0] if sys.argv and sys.argv[0] else "winservice"]
    for option in ("username", "password", "startup", "wait"):
        value = getattr(args, option)
        if value is not None:
            argv.append(f"--{option}={value}")
    argv.append(args.command)
    return argv


def _stored_options(args: argparse.Namespace) -> dict[str, str]:
    options = {}
    for dest, key in OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            options[key] = str(os.path.abspath(value) if dest in ("log_dir", "workdir") else value)
    return options


def main(argv: list[str] | None = None) -> int:
    """Handle the command line; return an exit code (2 for bad usage or no pywin32)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "install":
        if not args.app:
            print("error: install needs --app module:create_app", file=sys.stderr)
            return 2
        if args.workdir is None:
            args.workdir = os.getcwd()
    try:
        import win32service  # noqa: F401
        import win32serviceutil
    except ImportError:
        print(_NO_PYWIN32.format(name=args.name, app=args.app or "myapp"), file=sys.stderr)
        return 2

    cls = _service_class(args.name)
    options = _stored_options(args)

    def persist(opts: t.Any) -> None:
        for key, value in options.items():
            win32serviceutil.SetServiceCustomOption(args.name, key, value)

    try:
        err = win32serviceutil.HandleCommandLine(
            cls,
            serviceClassString=_class_string(),
            argv=_pywin32_argv(args),
            customOptionHandler=persist,
        )
    except SystemExit as exc:  # pywin32's usage() exits
        return exc.code if isinstance(exc.code, int) else 1
    if err:
        return 1
    if args.command in ("install", "update"):
        try:
            set_failure_actions(args.name)
        except Exception as exc:
            print(
                f"warning: could not set the recovery policy ({exc}); run:\n"
                f"  sc.exe failure {args.name} reset= {RESET_PERIOD_S} actions= "
                + "/".join(f"restart/{d}" for d in RESTART_DELAYS_MS)
                + f"\n  sc.exe failureflag {args.name} 1",
                file=sys.stderr,
            )
            return 1
    return 0


def set_failure_actions(name: str) -> None:
    """Restart ``name`` after 5, 10 and 60 s, reset after a day, also on error stops."""
    import win32service

    scm = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        handle = win32service.OpenService(scm, name, win32service.SERVICE_ALL_ACCESS)
        try:
            win32service.ChangeServiceConfig2(
                handle,
                win32service.SERVICE_CONFIG_FAILURE_ACTIONS,
                {
                    "ResetPeriod": RESET_PERIOD_S,
                    "RebootMsg": "",
                    "Command": "",
                    "Actions": [(win32service.SC_ACTION_RESTART, d) for d in RESTART_DELAYS_MS],
                },
            )
            # Without this flag the actions apply only to crashes, not to a service
            # that stops itself with an error code, as ours does when it cannot start.
            win32service.ChangeServiceConfig2(
                handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True
            )
        finally:
            win32service.CloseServiceHandle(handle)
    finally:
        win32service.CloseServiceHandle(scm)


def _class_string() -> str:
    # "<folder>\\module.Class": pythonservice.exe puts the folder on sys.path before
    # importing, so the package is found even when the host's path misses it.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return f"{package_parent}\\{_MODULE}.TokenGuardService"


class _ServiceMixin:
    """Everything of the service except pywin32's base class, mixed in at run time."""

    _svc_name_: str = DEFAULT_NAME
    #: Seconds the drain may take; read from the app once it is loaded.
    drain_timeout: float = 15.0
    #: The runner while the service runs (for tests and debugging).
    runner: Runner | None = None

    def __init__(self, args: t.Sequence[str]) -> None:
        import win32event

        if args:
            # The SCM passes the installed name first: one class serves any --name.
            self._svc_name_ = args[0]
        super().__init__(args)  # type: ignore[call-arg]
        self._stop_event = win32event.CreateEvent(None, 0, 0, None)

    def SvcStop(self) -> None:  # noqa: N802 - pywin32's name
        """Report STOP_PENDING with room for the drain, then wake ``SvcDoRun``."""
        import win32event
        import win32service

        self.ReportServiceStatus(  # type: ignore[attr-defined]
            win32service.SERVICE_STOP_PENDING,
            waitHint=int((self.drain_timeout + 5) * 1000),
        )
        win32event.SetEvent(self._stop_event)

    def SvcShutdown(self) -> None:  # noqa: N802 - pywin32's name
        """Drain on system shutdown too."""
        self.SvcStop()

    def SvcDoRun(self) -> None:  # noqa: N802 - pywin32's name
        """Load the app, serve it until ``SvcStop``, drain; raise if it cannot start."""
        import servicemanager
        import win32event

        name = self._svc_name_
        servicemanager.LogMsg(
            servicemanager.EVENTLOG_INFORMATION_TYPE,
            servicemanager.PYS_SERVICE_STARTED,
            (name, ""),
        )
        root = logging.getLogger()
        previous_level = root.level
        handlers: list[logging.Handler] = []

        def add_handler(handler: logging.Handler, level: int) -> None:
            handler.setLevel(level)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(handler)
            handlers.append(handler)

        try:
            root.setLevel(min(previous_level or logging.INFO, logging.INFO))
            add_handler(_EventLogHandler(servicemanager), logging.WARNING)
            try:
                options = self._read_options()
                workdir = options.get("workdir")
                if workdir:
                    os.chdir(workdir)
                    if workdir not in sys.path:
                        sys.path.insert(0, workdir)
                if not options.get("app"):
                    raise ValueError(f"no app configured: reinstall with --app (service {name})")
                app = load_app(options["app"])
                log_dir = options.get("log_dir") or app.instance_path
                os.makedirs(log_dir, exist_ok=True)
                add_handler(
                    logging.handlers.RotatingFileHandler(
                        os.path.join(log_dir, f"{name}.log"),
                        maxBytes=LOG_FILE_BYTES,
                        backupCount=LOG_FILE_BACKUPS,
                        encoding="utf-8",
                    ),
                    logging.INFO,
                )
                runner = Runner(
                    app,
                    host=options.get("host") or "127.0.0.1",
                    port=int(options.get("port") or 8080),
                    threads=int(options["threads"]) if options.get("threads") else None,
                )
                self.drain_timeout = runner.drain_timeout
                runner.start()
            except Exception as exc:
                # To the Event Log (and the file, if it is open yet). pythonservice.exe
                # then logs the exception too and reports the stop as an error.
                logger.error("service %s could not start: %s", name, exc, exc_info=True)
                raise ServiceStartError(f"{name} could not start: {exc}") from exc
            self.runner = runner
            # Wake up every second to notice a dead event loop, and fail the service
            # then, so the recovery policy restarts it.
            while (
                win32event.WaitForSingleObject(self._stop_event, 1000) != win32event.WAIT_OBJECT_0
            ):
                if not runner.running:
                    runner.stop(timeout=0)
                    raise ServiceStartError(f"{name}: the server stopped unexpectedly")
            logger.info("service %s stopping", name)
            runner.stop()
            servicemanager.LogMsg(
                servicemanager.EVENTLOG_INFORMATION_TYPE,
                servicemanager.PYS_SERVICE_STOPPED,
                (name, ""),
            )
        finally:
            for handler in handlers:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(previous_level)

    def _read_options(self) -> dict[str, str]:
        import win32serviceutil

        options = {}
        for key in OPTIONS.values():
            value = win32serviceutil.GetServiceCustomOption(self._svc_name_, key, None)
            if value not in (None, ""):
                options[key] = str(value)
        return options


def _service_class(name: str = DEFAULT_NAME) -> type:
    """Build the pywin32 service class (pywin32 must be importable)."""
    import win32serviceutil

    return type(
        "TokenGuardService",
        (_ServiceMixin, win32serviceutil.ServiceFramework),
        {
            "__module__": _MODULE,
            "__qualname__": "TokenGuardService",
            "__doc__": "The Windows service serving a tokenguard app with waitress.",
            "_svc_name_": name,
            "_svc_display_name_": name if name == DEFAULT_NAME else f"TokenGuard ({name})",
            "_svc_description_": "OAuth 2.0 token server (flask_tokenguard, waitress)",
        },
    )


def __getattr__(attr: str) -> t.Any:
    # pythonservice.exe loads "flask_tokenguard.serving.winservice.TokenGuardService" from the
    # registry with getattr: build the class then, so importing needs no pywin32.
    if attr == "TokenGuardService":
        return _service_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


if __name__ == "__main__":  # pragma: no cover
    from flask_tokenguard.serving.winservice import main as _main

    sys.exit(_main())
