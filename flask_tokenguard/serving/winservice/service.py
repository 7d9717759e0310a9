"""The Windows service: load the app, serve it with the runner, drain on stop.

The class derives from pywin32's ``win32serviceutil.ServiceFramework``, so it is
defined the first time :func:`service_class` is called (pythonservice.exe does that
through the package's ``TokenGuardService`` attribute); importing this module needs
no pywin32.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import typing as t

from ..logs import make_formatter
from ..runner import Runner
from .eventlog import EventLogHandler
from .loading import import_folder
from .loading import load_app
from .loading import unsafe_import_folder

logger = logging.getLogger("flask_tokenguard.winservice")

#: The importable name of the package, where pythonservice.exe looks the class up.
PACKAGE = "flask_tokenguard.serving.winservice"
#: Service name unless ``--name`` says otherwise.
DEFAULT_NAME = "TokenGuard"
#: Options stored as service parameters: argparse dest -> registry value name.
OPTIONS = {
    "app": "app",
    "host": "host",
    "port": "port",
    "threads": "threads",
    "log_dir": "log_dir",
    "workdir": "workdir",
}
#: Size and number of the rotated log files in the log folder.
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5

_classes: dict[tuple[type, str], type[t.Any]] = {}


class ServiceStartError(RuntimeError):
    """The service could not start; raised from ``SvcDoRun`` so the SCM sees an error.

    pythonservice.exe reports an exception from ``SvcRun`` as a stop with a non-zero
    exit code, which triggers the recovery policy (the failure-actions flag is set).
    """


def service_class(name: str = DEFAULT_NAME) -> type[t.Any]:
    """Return the service class, named ``name`` for pywin32's install (needs pywin32).

    One class per pywin32 base class and name: a name other than :data:`DEFAULT_NAME`
    gets a subclass with that ``_svc_name_`` and display name.
    """
    import win32serviceutil

    base = win32serviceutil.ServiceFramework
    key = (base, name)
    if key in _classes:
        return _classes[key]
    if name == DEFAULT_NAME:
        cls = _define(base)
    else:
        default = service_class(DEFAULT_NAME)

        class TokenGuardService(default):  # type: ignore[valid-type,misc]
            __module__ = PACKAGE
            __qualname__ = "TokenGuardService"
            _svc_name_ = name
            _svc_display_name_ = f"TokenGuard ({name})"

        cls = TokenGuardService
    _classes[key] = cls
    return cls


def _define(framework: type) -> type[t.Any]:
    """Define the service class on pywin32's ``ServiceFramework``."""

    class TokenGuardService(framework):  # type: ignore[misc]
        """The Windows service serving a tokenguard app with waitress."""

        __module__ = PACKAGE
        _svc_name_ = DEFAULT_NAME
        _svc_display_name_ = DEFAULT_NAME
        _svc_description_ = "OAuth 2.0 token server (flask_tokenguard, waitress)"
        #: Seconds the drain may take; read from the app once it is loaded.
        drain_timeout: float = 15.0
        #: The runner while the service runs (for tests and debugging).
        runner: Runner | None = None

        def __init__(self, args: t.Sequence[str]) -> None:
            import win32event

            if args:
                # The SCM passes the installed name first: one class serves any --name.
                self._svc_name_ = args[0]
            super().__init__(args)
            self._stop_event = win32event.CreateEvent(None, 0, 0, None)

        def SvcStop(self) -> None:  # noqa: N802 - pywin32's name
            """Report STOP_PENDING with room for the drain, then wake ``SvcDoRun``."""
            import win32event
            import win32service

            self.ReportServiceStatus(
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

            name = self._svc_name_
            servicemanager.LogMsg(
                servicemanager.EVENTLOG_INFORMATION_TYPE,
                servicemanager.PYS_SERVICE_STARTED,
                (name, ""),
            )
            root = logging.getLogger()
            previous_level = root.level
            handlers: list[logging.Handler] = []

            def add_handler(handler: logging.Handler, level: int, log_format: str) -> None:
                handler.setLevel(level)
                handler.setFormatter(make_formatter(log_format))
                root.addHandler(handler)
                handlers.append(handler)

            try:
                root.setLevel(min(previous_level or logging.INFO, logging.INFO))
                add_handler(EventLogHandler(servicemanager), logging.WARNING, "text")
                runner = self._start(add_handler)
                self._serve(runner)
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

        def _start(self, add_handler: t.Callable[[logging.Handler, int, str], None]) -> Runner:
            from ..logs import log_format_of

            name = self._svc_name_
            try:
                options = self._read_options()
                if not options.get("app"):
                    raise ValueError(f"no app configured: reinstall with --app (service {name})")
                if options.get("workdir"):
                    os.chdir(options["workdir"])
                # Flask's loader puts this folder on sys.path: a module planted there
                # would run with the service's rights.
                folder = import_folder(options["app"])
                reason = unsafe_import_folder(folder)
                if reason:
                    raise ValueError(
                        f"refusing to import the app from {folder}: {reason}; "
                        "make it writable by administrators only"
                    )
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
                    log_format_of(app),
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
            return runner

        def _serve(self, runner: Runner) -> None:
            import win32event

            name = self._svc_name_
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

        def _read_options(self) -> dict[str, str]:
            import win32serviceutil

            options = {}
            for key in OPTIONS.values():
                value = win32serviceutil.GetServiceCustomOption(self._svc_name_, key, None)
                if value not in (None, ""):
                    options[key] = str(value)
            return options

    TokenGuardService.__qualname__ = "TokenGuardService"
    return TokenGuardService
