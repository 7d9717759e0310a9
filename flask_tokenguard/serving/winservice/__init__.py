"""Run a tokenguard app as a Windows service (pywin32, the ``windows`` extra).

``python -m flask_tokenguard.serving.winservice --app myapp:create_app install`` registers a
service that serves the app with the same :class:`~flask_tokenguard.serving.runner.Runner` as
``flask tokenguard serve``: the SCM's stop request drains requests in flight exactly as
SIGTERM does. Options are kept as service parameters in the registry
(``SetServiceCustomOption``), and ``install``/``update`` set the recovery policy:
restart after 5 s, 10 s and 60 s, reset after a day, also when the service stops with
an error (a start-up failure) rather than crashing.

By role: :mod:`.cli` (the command line), :mod:`.loading` (the app, through Flask's own
``ScriptInfo``, and the check of the folder it is imported from), :mod:`.eventlog`
(warnings and errors to the Event Log) and :mod:`.service` (the service class).

pywin32 is imported only when a command needs it, so this package imports, and
``--help`` works, everywhere. pythonservice.exe loads the service class by its dotted
name, ``flask_tokenguard.serving.winservice.TokenGuardService``: the class is defined on
that first access, since its base class comes from pywin32. Without pywin32, NSSM or
WinSW can run ``flask --app myapp tokenguard serve`` instead: both send Ctrl+C, which
the runner turns into the same drain.
"""

from __future__ import annotations

import typing as t

from .cli import build_parser
from .cli import COMMANDS
from .cli import main
from .cli import set_failure_actions
from .eventlog import EventLogHandler
from .loading import load_app
from .loading import unsafe_import_folder
from .service import DEFAULT_NAME
from .service import OPTIONS
from .service import service_class
from .service import ServiceStartError

__all__ = [
    "COMMANDS",
    "DEFAULT_NAME",
    "OPTIONS",
    "EventLogHandler",
    "ServiceStartError",
    "TokenGuardService",
    "build_parser",
    "load_app",
    "main",
    "service_class",
    "set_failure_actions",
    "unsafe_import_folder",
]


def __getattr__(attr: str) -> t.Any:
    # pythonservice.exe resolves "flask_tokenguard.serving.winservice.TokenGuardService"
    # with getattr: define the class then, so that importing needs no pywin32.
    if attr == "TokenGuardService":
        return service_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
