"""The command line of the Windows service: install, update, control and remove it.

The account password of ``--username`` is asked for (hidden) or read from standard input
with ``--password-stdin``, never taken from the command line, where process lists and
shell history would show it; it goes to pywin32 in this process only.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import typing as t

from .loading import unsafe_import_folder
from .service import DEFAULT_NAME
from .service import OPTIONS
from .service import PACKAGE
from .service import service_class

#: The pywin32 commands handed to ``win32serviceutil.HandleCommandLine``.
COMMANDS = ("install", "update", "remove", "start", "stop", "restart", "debug")
#: Recovery policy: restart delays in milliseconds, and seconds until the count resets.
RESTART_DELAYS_MS = (5000, 10000, 60000)
RESET_PERIOD_S = 86400

_NO_PYWIN32 = """\
error: this command needs pywin32 (Windows only): pip install flask-tokenguard[windows]
Without pywin32, run the app as a service with NSSM or WinSW instead, e.g.
  nssm install {name} <venv>\\Scripts\\flask.exe --app {app} tokenguard serve
and raise NSSM's AppStopMethodConsole (WinSW: <stoptimeout>) above the drain timeout."""

_PASSWORD_ON_ARGV = """\
error: --password is not accepted: the command line shows in process lists and shell history.
Answer the prompt, or pipe the password in with --password-stdin."""


class UsageError(Exception):
    """A command line that cannot run; its message is printed, the exit code is 2."""


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
        help="the app, as flask --app takes it: module:create_app (a factory) or module:app",
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
        help="folder made current before loading the app, which Flask's loader then "
        "imports it from; it must be writable by administrators only "
        "(default: the current folder at install)",
    )
    pywin = parser.add_argument_group("pywin32 options")
    pywin.add_argument("--username", help="account to run as (install/update)")
    pywin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the account's password as one line from standard input "
        "(otherwise it is asked for, hidden)",
    )
    # Refused with an explanation rather than "unrecognized argument".
    pywin.add_argument("--password", nargs="?", const="", help=argparse.SUPPRESS)
    pywin.add_argument(
        "--startup",
        choices=("manual", "auto", "delayed", "disabled"),
        help="start type (install/update; default manual)",
    )
    pywin.add_argument("--wait", type=int, metavar="SECONDS", help="wait for start/stop to finish")
    return parser


def needs_password(username: str) -> bool:
    """False for the accounts Windows runs services as without a password.

    LocalSystem, ``NT AUTHORITY\\...`` (LocalService, NetworkService), virtual accounts
    ``NT SERVICE\\...`` and group managed service accounts (``DOMAIN\\name$``).
    """
    name = username.strip().lower()
    if name in ("localsystem", ".\\localsystem"):
        return False
    if name.startswith(("nt authority\\", "nt service\\")):
        return False
    return not name.endswith("$")


def read_password(args: argparse.Namespace) -> str | None:
    """The password of ``--username``, from standard input or a hidden prompt."""
    if args.command not in ("install", "update") or not args.username:
        if args.password_stdin:
            raise UsageError("error: --password-stdin goes with --username on install/update")
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not needs_password(args.username):
        return None
    if not sys.stdin.isatty():
        raise UsageError(
            f"error: {args.username} needs its password: run from a console to be asked "
            "for it, or pipe it in with --password-stdin"
        )
    return getpass.getpass(f"Password for {args.username}: ")


def _pywin32_argv(args: argparse.Namespace, password: str | None) -> list[str]:
    # A list handed to pywin32 in this process: the password never reaches a command
    # line of its own.
    argv = [sys.argv[0] if sys.argv and sys.argv[0] else "winservice"]
    for option in ("username", "startup", "wait"):
        value = getattr(args, option)
        if value is not None:
            argv.append(f"--{option}={value}")
    if password is not None:
        argv.append(f"--password={password}")
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
    if args.password is not None:
        print(_PASSWORD_ON_ARGV, file=sys.stderr)
        return 2
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
    if args.workdir is not None:
        reason = unsafe_import_folder(args.workdir)
        if reason:
            print(
                f"error: --workdir: {reason}; the service would import modules from it, "
                "so it must be writable by administrators only",
                file=sys.stderr,
            )
            return 2
    try:
        password = read_password(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2

    cls = service_class(args.name)
    options = _stored_options(args)

    def persist(opts: t.Any) -> None:
        for key, value in options.items():
            win32serviceutil.SetServiceCustomOption(args.name, key, value)

    try:
        err = win32serviceutil.HandleCommandLine(
            cls,
            serviceClassString=class_string(),
            argv=_pywin32_argv(args, password),
            customOptionHandler=persist,
        )
    except SystemExit as exc:  # pywin32's usage() exits
        return exc.code if isinstance(exc.code, int) else 1
    if err:
        return 1
    if args.command in ("install", "update"):
        try:
            set_failure_actions(args.name)
        except Exception as exc:  # noqa: BLE001 - pywin32 raises pywintypes.error
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


def class_string() -> str:
    """``<folder>\\flask_tokenguard.serving.winservice.TokenGuardService`` for the registry.

    pythonservice.exe puts the folder (the one holding the ``flask_tokenguard`` package)
    on ``sys.path`` before importing, so the package is found even when the host's path
    misses it.
    """
    import flask_tokenguard

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(flask_tokenguard.__file__)))
    return f"{package_parent}\\{PACKAGE}.TokenGuardService"
