"""The audit trail: security events to the ``flask_tokenguard.audit`` logger and a JSON-lines file.

Each event is one object: ``time`` (ISO 8601 UTC, ``Z``), ``event`` and, where they apply,
``client_id``, ``subject``, ``session_id``, ``remote_addr``, ``admin`` and ``reason``. The
logger gets it at INFO, with the object in ``extra={"audit": ...}``; with
``TOKENGUARD_AUDIT_LOG`` set, it is also appended to that file as one line, and several
processes may append to the same file at once.

With a store, the events of ``STORED_EVENTS`` (all but the routine token answers) are
also kept there, bounded (``Store.add_event``), so that every process's admin console shows
the same recent events.

No secret, password, token or hash can reach an event: ``Audit.emit`` accepts only the
fields above, all of them ids and names, each cut to 256 characters.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
import typing as t
import weakref

from ..errors import StoreError

if t.TYPE_CHECKING:  # pragma: no cover
    from ..models import TokenSession
    from ..stores.base import Store

#: A client was registered (``create-client``).
CLIENT_CREATED = "client.created"
#: A client's name, scopes, grants or limits changed (``update-client``).
CLIENT_UPDATED = "client.updated"
#: A client got a new secret (``rotate-secret``).
CLIENT_ROTATED = "client.rotated"
#: A client was disabled; its sessions end.
CLIENT_DISABLED = "client.disabled"
#: A disabled client was enabled again.
CLIENT_ENABLED = "client.enabled"
#: A client was deleted with its sessions.
CLIENT_DELETED = "client.deleted"
#: ``/token`` started a session and issued its tokens (``client_credentials``, ``password``).
TOKEN_ISSUED = "token.issued"
#: ``/token`` answered a refresh grant.
TOKEN_REFRESHED = "token.refreshed"
#: A client secret or a password did not match (``reason``: ``invalid_client``, ``invalid_grant``).
AUTH_FAILED = "auth.failed"
#: Authentication refused without a check: too many failures (429 ``slow_down``).
AUTH_THROTTLED = "auth.throttled"
#: A session was refused because every license seat is taken.
LICENSE_REFUSED = "license.refused"
#: A session ended; ``reason`` is one of ``SESSION_END_REASONS``.
SESSION_ENDED = "session.ended"
#: A user was added (``create-user``).
USER_CREATED = "user.created"
#: A user's password or scopes changed.
USER_UPDATED = "user.updated"
#: A user was removed.
USER_DELETED = "user.deleted"
#: The signing keys were rotated (``rotate-keys``).
KEY_ROTATED = "key.rotated"
#: An administrator signed in to the admin console.
ADMIN_SIGNED_IN = "admin.signed_in"
#: A sign-in to the admin console failed.
ADMIN_SIGN_IN_FAILED = "admin.sign_in_failed"
#: An administrator signed out of the admin console (or the session timed out).
ADMIN_SIGNED_OUT = "admin.signed_out"

#: Every event name the trail knows.
EVENTS: t.Final[frozenset[str]] = frozenset(
    {
        CLIENT_CREATED,
        CLIENT_UPDATED,
        CLIENT_ROTATED,
        CLIENT_DISABLED,
        CLIENT_ENABLED,
        CLIENT_DELETED,
        TOKEN_ISSUED,
        TOKEN_REFRESHED,
        AUTH_FAILED,
        AUTH_THROTTLED,
        LICENSE_REFUSED,
        SESSION_ENDED,
        USER_CREATED,
        USER_UPDATED,
        USER_DELETED,
        KEY_ROTATED,
        ADMIN_SIGNED_IN,
        ADMIN_SIGN_IN_FAILED,
        ADMIN_SIGNED_OUT,
    }
)

#: Why a session ended (the ``reason`` of ``session.ended``).
SESSION_END_REASONS: t.Final[frozenset[str]] = frozenset(
    {"logoff", "revoked", "replaced", "replay", "client_changed", "user_changed", "admin"}
)

#: The events kept in the store for the admin console: all but the routine token answers.
STORED_EVENTS: t.Final[frozenset[str]] = EVENTS - {TOKEN_ISSUED, TOKEN_REFRESHED}

#: The longest value a field keeps, in characters.
MAX_VALUE_LENGTH: t.Final = 256

# Fields in the order they appear in a line and in the log message.
_FIELDS: t.Final = ("client_id", "subject", "session_id", "remote_addr", "admin", "reason")
_MESSAGE_NAMES: t.Final = {
    "client_id": "client",
    "subject": "subject",
    "session_id": "session",
    "remote_addr": "addr",
    "admin": "admin",
    "reason": "reason",
}
# A line this long or longer is rebuilt with shorter values, so that a line also stays
# atomic when the audit log is a pipe (POSIX guarantees that up to PIPE_BUF, 4096 on Linux).
_MAX_LINE_BYTES: t.Final = 4096
_SHORT_VALUE_LENGTH: t.Final = 64

logger = logging.getLogger("flask_tokenguard.audit")
_log = logging.getLogger("flask_tokenguard")


def format_time(at: float) -> str:
    """``at`` (epoch seconds) as ISO 8601 UTC with milliseconds: ``2026-01-31T12:00:00.123Z``."""
    instant = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


def _clip(value: object, length: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:length]


def _for_message(value: str) -> str:
    # A value with a space, a quote or a control character is quoted and escaped, so a
    # client name cannot forge a second event or line in a text log.
    if value.isprintable() and " " not in value and '"' not in value:
        return value
    return json.dumps(value)


class AuditFile:
    """A JSON-lines file that this and other processes append to; reopened after rotation.

    Appending is safe across processes because every line is handed to the kernel in a
    single ``os.write`` on a descriptor opened for appending:

    - Linux/POSIX: with ``O_APPEND`` the kernel moves to the end of the file and writes in
      one step, under the inode's lock (``i_rwsem``), so concurrent writers to a regular
      file never overwrite or interleave each other's lines, whatever their size.
    - Windows: the file is opened with ``FILE_APPEND_DATA`` and without ``FILE_WRITE_DATA``,
      so every write goes to the current end of file, ignoring any offset, and the file
      system serialises writes that extend a file. (The C runtime's ``O_APPEND`` seeks then
      writes, in two steps, which is not safe across processes; hence ``CreateFileW``.)

    A log rotator that renames the file is noticed before the next write (the path's inode
    is not the open one any more, or the path is gone), and the file is opened afresh.
    """

    def __init__(self, path: str) -> None:
        #: The file's path (``TOKENGUARD_AUDIT_LOG``).
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._closer: weakref.finalize[[int], AuditFile] | None = None

    def write(self, line: bytes) -> None:
        """Append one complete line (with its newline); ``OSError`` if it cannot be written."""
        with self._lock:
            fd = self._current_fd()
            written = os.write(fd, line)
        if written != len(line):  # a full disk; a second write could interleave
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")

    def close(self) -> None:
        """Close the file; the next ``write`` opens it again."""
        with self._lock:
            self._close()

    def _current_fd(self) -> int:
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    return self._fd
            except FileNotFoundError:
                pass
            self._close()  # rotated away: start a new file at the path
        fd = _open_append(self.path)
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        # An app that is dropped without close() (tests build many) still closes its file.
        self._closer = weakref.finalize(self, os.close, fd)
        return fd

    def _close(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the descriptor once, and never again at collection
        self._fd, self._identity, self._closer = None, None, None


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import ctypes
    import msvcrt
    from ctypes import wintypes

    _FILE_APPEND_DATA = 0x0004
    _SYNCHRONIZE = 0x00100000
    _FILE_SHARE_ALL = 0x1 | 0x2 | 0x4  # read, write, delete: a rotator may rename it
    _OPEN_ALWAYS = 4
    _FILE_ATTRIBUTE_NORMAL = 0x80
    _INVALID_HANDLE = wintypes.HANDLE(-1).value

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _create_file = _kernel32.CreateFileW
    _create_file.restype = wintypes.HANDLE
    _create_file.argtypes = (
        wintypes.LPCWSTR,
        wintypes.DWORD,
        wintypes.DWORD,
        wintypes.LPVOID,
        wintypes.DWORD,
        wintypes.DWORD,
        wintypes.HANDLE,
    )

    def _open_append(path: str) -> int:
        # Append-only access: writes land at the end of file atomically (see AuditFile).
        # Windows has no 0600; the file inherits the folder's ACL.
        handle = _create_file(
            path,
            _FILE_APPEND_DATA | _SYNCHRONIZE,
            _FILE_SHARE_ALL,
            None,
            _OPEN_ALWAYS,
            _FILE_ATTRIBUTE_NORMAL,
            None,
        )
        if handle == _INVALID_HANDLE:
            raise ctypes.WinError(ctypes.get_last_error())
        return msvcrt.open_osfhandle(handle, os.O_WRONLY | os.O_BINARY | os.O_NOINHERIT)

else:

    def _open_append(path: str) -> int:
        # O_APPEND: each write goes to the end of file in one step (see AuditFile).
        # 0600: the trail names clients, users and addresses; only its owner reads it.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        return os.open(path, flags, 0o600)


class Audit:
    """Where the product reports security events: the audit logger, the file if set, and
    the store (``STORED_EVENTS`` only) if given.

    ``emit`` of a routine event (``token.issued``, ``token.refreshed``) costs one
    ``isEnabledFor`` check when neither the logger listens at INFO nor
    ``TOKENGUARD_AUDIT_LOG`` is set, so it can sit on the token endpoint's success path.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        clock: t.Callable[[], float] = time.time,
        store: Store | None = None,
    ) -> None:
        #: The JSON-lines file, or None when ``TOKENGUARD_AUDIT_LOG`` is unset.
        self.file = AuditFile(path) if path else None
        #: The store that keeps the recent ``STORED_EVENTS``, or None.
        self.store = store
        self._clock = clock
        self._remote_addr: str | None = None
        self._admin: str | None = None

    def bind(self, *, remote_addr: str | None = None, admin: str | None = None) -> Audit:
        """The same trail, filling ``remote_addr`` and ``admin`` of every event it emits
        (a request's address, the administrator of a command) unless an event gives them."""
        bound = Audit.__new__(Audit)
        bound.file, bound.store, bound._clock = self.file, self.store, self._clock
        bound._remote_addr = remote_addr or self._remote_addr
        bound._admin = admin or self._admin
        return bound

    def session_ended(self, session: TokenSession, reason: str) -> None:
        """Report ``session.ended`` for ``session`` (its client, subject and id)."""
        event = SESSION_ENDED
        self.emit(
            event,
            client_id=session.client_id,
            subject=session.subject,
            session_id=session.session_id,
            reason=reason,
        )

    def emit(
        self,
        event: str,
        *,
        client_id: str | None = None,
        subject: str | None = None,
        session_id: str | None = None,
        remote_addr: str | None = None,
        admin: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Report ``event`` (one of ``EVENTS``) with the fields that apply to it.

        A field that is None or empty is left out. A failure to write the file or the
        store is logged as a warning on ``flask_tokenguard`` and does not fail the request
        that caused it.
        """
        assert event in EVENTS, f"unknown audit event {event!r}"
        assert event != SESSION_ENDED or reason in SESSION_END_REASONS, reason
        to_log = logger.isEnabledFor(logging.INFO)
        # Stored events are kept whoever listens: the admin console reads them back.
        to_store = self.store is not None and event in STORED_EVENTS
        if not to_log and self.file is None and not to_store:
            return
        values = {
            "client_id": client_id,
            "subject": subject,
            "session_id": session_id,
            "remote_addr": remote_addr or self._remote_addr,
            "admin": admin or self._admin,
            "reason": reason,
        }
        fields = {k: _clip(v, MAX_VALUE_LENGTH) for k in _FIELDS if (v := values[k])}
        record: dict[str, str] = {"time": format_time(self._clock()), "event": event, **fields}
        if to_log:
            message = " ".join(
                [event, *(f"{_MESSAGE_NAMES[k]}={_for_message(v)}" for k, v in fields.items())]
            )
            logger.info("%s", message, extra={"audit": record})
        if self.file is not None:
            self._append(record)
        if to_store:
            self._store(record)

    def _append(self, record: dict[str, str]) -> None:
        line = _encode(record)
        if len(line) >= _MAX_LINE_BYTES:
            short = {k: v[:_SHORT_VALUE_LENGTH] for k, v in record.items()}
            line = _encode({**short, "time": record["time"], "event": record["event"]})
        assert self.file is not None
        try:
            self.file.write(line)
        except OSError as exc:
            _log.warning("audit log %s could not be written: %s", self.file.path, exc)

    def _store(self, record: dict[str, str]) -> None:
        assert self.store is not None
        try:
            self.store.add_event(record)
        except StoreError as exc:
            # The event is in the log and the file; the console's list misses it.
            _log.warning("audit event %s could not be stored: %s", record["event"], exc)

    def close(self) -> None:
        """Close the audit file if one is open."""
        if self.file is not None:
            self.file.close()


def _encode(record: dict[str, str]) -> bytes:
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    # ensure_ascii=False keeps names readable; U+2028/U+2029 are escaped anyway so that no
    # reader that splits on Unicode line breaks sees half an event.
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    # A lone surrogate (which UTF-8 cannot hold) becomes its JSON escape, ``\\udXXX``.
    return (text + "\n").encode("utf-8", "backslashreplace")
