"""Logging of the served app: the runner's default set-up, and the request lines.

Two formats, chosen by ``TOKENGUARD_LOG_FORMAT``: ``"text"`` (:data:`LOG_FORMAT`, for
people) and ``"json"`` (one JSON object per line with ``time``, ``level``, ``logger``
and ``message``, for log shippers). The request lines carry their fields
(``remote_addr``, ``method``, ``path``, ``status``, ``duration_ms``) on the record, so
the JSON format writes them as keys of their own.

Logger names are stable, so that a host can configure them: ``flask_tokenguard.serve``
(start, drain, stop) and ``flask_tokenguard.serve.access`` (one line per request).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import time
import types
import typing as t
import warnings
from urllib.parse import quote

from ..errors import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask

logger = logging.getLogger("flask_tokenguard.serve")
access_logger = logging.getLogger("flask_tokenguard.serve.access")

#: Format of the text handler :func:`configure_logging` installs.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The values ``TOKENGUARD_LOG_FORMAT`` accepts.
LOG_FORMATS = ("text", "json")
#: Fields of a request line, written as keys of their own by :class:`JsonFormatter`.
REQUEST_FIELDS = ("remote_addr", "method", "path", "status", "duration_ms")

# Characters left as they are when a path is written to the access log; anything else
# (control characters, spaces, newlines that could forge log lines) is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
    the request fields when the record has them, and ``exception`` (the traceback as
    one string) when it carries one. Newlines inside values are escaped by JSON, so a
    record never spans two lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        entry: dict[str, t.Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in REQUEST_FIELDS:
            if field in record.__dict__:
                entry[field] = record.__dict__[field]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format_of(app: Flask) -> str:
    """Return the app's ``TOKENGUARD_LOG_FORMAT``: ``"text"`` or ``"json"``.

    Raises :class:`~flask_tokenguard.errors.ConfigurationError` for any other value.
    """
    from ..config import Settings

    try:
        # Quietly: logging is not set up yet, and the runner reads the settings again
        # once it is, so that their warnings come out in the format asked for.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = getattr(Settings.from_app(app), "log_format", None)
    except ConfigurationError:
        value = None  # the runner reports the bad setting, in the format asked for
    if value is None:
        value = app.config.get("TOKENGUARD_LOG_FORMAT", "text")
    value = str(value).strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigurationError(
            f"TOKENGUARD_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {value!r}"
        )
    return value


def make_formatter(log_format: str = "text") -> logging.Formatter:
    """Return the formatter of ``log_format`` (``"text"`` or ``"json"``)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT)


def configure_logging(level: int | str = logging.INFO, log_format: str = "text") -> None:
    """Give the root logger a stderr handler in ``log_format`` if it has none.

    An app or a host that has set up logging keeps its own; waitress's ``waitress``
    loggers and ours propagate to the root, so they end up in the same place. With
    ``"json"``, warnings (:func:`warnings.warn`) and uncaught exceptions, which Python
    would print as plain text, are logged too, so that every line on stderr is JSON.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def detach_flask_handler(app: Flask) -> None:
    """Let ``app.logger`` propagate to the root instead of Flask's own text handler.

    Flask gives its app logger a handler of its own when none was configured by the time
    the logger was first used; its lines would bypass the JSON format.
    """
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
) -> None:
    logger.critical("uncaught exception: %s", value, exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger.critical(
        "uncaught exception in thread %s: %s",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


class AccessLog:
    """WSGI middleware writing ``addr METHOD path status duration`` per request.

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

        def recording_start_response(code: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
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
        fields = {
            "remote_addr": environ.get("REMOTE_ADDR", "-"),
            "method": quote(environ.get("REQUEST_METHOD", "-"), safe=""),
            "path": quote(path, safe=_PATH_SAFE, encoding="latin-1") or "/",
            "status": int(status) if status.isdigit() else status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        access_logger.info(
            "%s %s %s %s %.1fms",
            fields["remote_addr"],
            fields["method"],
            fields["path"],
            status,
            fields["duration_ms"],
            extra=fields,
        )
