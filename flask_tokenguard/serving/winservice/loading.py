"""Load the service's app with Flask's own loader, from a folder only admins can write to.

Flask's ``ScriptInfo`` (what ``flask --app`` uses) puts the folder it imports the app
from on ``sys.path``: for ``module:attr`` that is the current folder (the service's
``--workdir``). A service running as LocalSystem would then import any module planted
there, so the service refuses a folder that other users can write to. On POSIX this
is read from the mode bits; on Windows the ACL decides, which the folder's owner must
keep admin-only (see the README).
"""

from __future__ import annotations

import os
import re
import stat
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask


def load_app(spec: str) -> Flask:
    """Load the app ``spec`` names as ``flask --app`` does, with Flask's ``ScriptInfo``.

    ``spec`` is ``module``, ``module:app``, ``module:create_app`` or
    ``module:create_app(args)``; without ``:attr``, Flask looks for ``app`` or
    ``application``, then a factory ``create_app`` or ``make_app``. Raises
    ``ValueError`` with Flask's message when no app is found, and the app's own
    ``ImportError`` when its module fails to import.
    """
    from flask.cli import NoAppException
    from flask.cli import ScriptInfo

    if not spec or spec.startswith(":"):
        raise ValueError(f"--app must look like module:create_app or module:app, got {spec!r}")
    try:
        return ScriptInfo(app_import_path=spec, set_debug_flag=False).load_app()
    except NoAppException as exc:
        raise ValueError(exc.format_message()) from exc


def import_folder(spec: str) -> str:
    """The folder Flask's loader puts on ``sys.path`` for ``spec`` (from the current one).

    Mirrors ``flask.cli.prepare_import`` without changing ``sys.path``: the folder above
    the outermost package of the module (or file) ``spec`` names.
    """
    path = re.split(r":(?![\\/])", spec, maxsplit=1)[0]
    path = os.path.realpath(path)
    name, ext = os.path.splitext(path)
    if ext == ".py":
        path = name
    if os.path.basename(path) == "__init__":
        path = os.path.dirname(path)
    while True:
        path = os.path.dirname(path)
        if not os.path.exists(os.path.join(path, "__init__.py")):
            return path


def unsafe_import_folder(folder: str) -> str | None:
    """Why other users could plant a module in ``folder``, or None when they cannot.

    POSIX: the folder must belong to root or to this user and be writable by neither
    its group nor others; each folder above it too, unless it has the sticky bit (as
    ``/tmp`` does: others cannot then rename what is not theirs). On Windows mode bits
    say nothing about the ACL: None (the README says how to lock the folder down).
    """
    if os.name == "nt":
        return None
    owners = {0, os.geteuid()}
    current = os.path.realpath(folder)
    first = True
    while True:
        try:
            info = os.stat(current)
        except OSError as exc:
            return f"{current} cannot be checked: {exc.strerror or exc}"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if info.st_uid not in owners:
            return f"{current} belongs to another user (uid {info.st_uid})"
        if writable and (first or not info.st_mode & stat.S_ISVTX):
            return f"{current} is writable by other users (mode {stat.filemode(info.st_mode)})"
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current, first = parent, False
