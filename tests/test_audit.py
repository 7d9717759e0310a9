"""The audit trail: the ``flask_tokenguard.audit`` logger and the JSON-lines file."""

from __future__ import annotations

import ast
import datetime
import getpass
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
import typing as t
from pathlib import Path

import jwt
import pytest
from flask import Flask

from flask_tokenguard.core import audit
from flask_tokenguard.core.audit import Audit
from flask_tokenguard.core.security import hash_secret
from flask_tokenguard.core.throttle import Throttle
from flask_tokenguard.errors import LockedOutError
from tests.helpers import basic
from tests.helpers import cli
from tests.helpers import get_token
from tests.helpers import register

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"client_id", "subject", "session_id", "remote_addr", "admin", "reason"}


def read_lines(path: Path) -> list[dict[str, t.Any]]:
    """Every line of the audit file as JSON; fails on a torn or merged line."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").split("\n")[:-1]]


def test_lines_are_json_with_time_event_and_only_the_fields_given(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = Audit(str(path), clock=lambda: 1_767_225_600.25)
    trail.emit(audit.TOKEN_ISSUED, client_id="c1", subject="alice", session_id="s1",
               remote_addr="10.0.0.7")  # fmt: skip
    trail.emit(audit.SESSION_ENDED, session_id="s1", client_id="c1", reason="logoff")
    trail.emit(audit.KEY_ROTATED, admin="root", remote_addr="", subject=None)
    trail.close()

    lines = read_lines(path)
    assert lines == [
        {
            "time": "2026-01-01T00:00:00.250Z",
            "event": "token.issued",
            "client_id": "c1",
            "subject": "alice",
            "session_id": "s1",
            "remote_addr": "10.0.0.7",
        },
        {
            "time": "2026-01-01T00:00:00.250Z",
            "event": "session.ended",
            "client_id": "c1",
            "session_id": "s1",
            "reason": "logoff",
        },
        {"time": "2026-01-01T00:00:00.250Z", "event": "key.rotated", "admin": "root"},
    ]


def test_a_bound_trail_fills_the_address_and_admin(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = Audit(str(path))
    request = trail.bind(remote_addr="10.0.0.7")
    request.emit(audit.AUTH_FAILED, reason="invalid_client")
    request.bind(admin="root").emit(audit.KEY_ROTATED, remote_addr="::1")
    trail.emit(audit.KEY_ROTATED)
    first, second, third = read_lines(path)
    assert (first["remote_addr"], "admin" in first) == ("10.0.0.7", False)
    assert (second["remote_addr"], second["admin"]) == ("::1", "root")
    assert "remote_addr" not in third and "admin" not in third


def test_time_is_iso_8601_utc_from_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = time.time()
    Audit(str(path)).emit(audit.USER_CREATED, subject="bob")
    (line,) = read_lines(path)
    assert line["time"].endswith("Z")
    at = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert at.utcoffset() == datetime.timedelta(0)
    assert before - 0.001 <= at.timestamp() <= time.time() + 0.001


def test_the_file_is_created_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    previous = os.umask(0)
    try:
        Audit(str(path)).emit(audit.CLIENT_CREATED, client_id="c1")
    finally:
        os.umask(previous)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    Audit(str(path)).emit(audit.CLIENT_CREATED, client_id="c1")
    Audit(str(path)).emit(audit.CLIENT_DELETED, client_id="c1")
    assert [line["event"] for line in read_lines(path)] == ["client.created", "client.deleted"]


def test_a_rotated_file_is_reopened_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = Audit(str(path))
    trail.emit(audit.CLIENT_CREATED, client_id="before")
    path.rename(tmp_path / "audit.jsonl.1")  # as logrotate does
    trail.emit(audit.CLIENT_CREATED, client_id="after")
    assert [x["client_id"] for x in read_lines(tmp_path / "audit.jsonl.1")] == ["before"]
    assert [x["client_id"] for x in read_lines(path)] == ["after"]
    path.unlink()  # rotated and removed, nothing at the path until the next event
    trail.emit(audit.CLIENT_CREATED, client_id="again")
    assert [x["client_id"] for x in read_lines(path)] == ["again"]
    trail.close()


def test_values_are_cut_to_256_characters_and_escaped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    name = "x" * 1000
    Audit(str(path)).emit(audit.USER_UPDATED, subject=name, client_id='a"b\n{"event":"forged"}')
    (line,) = read_lines(path)
    assert line["subject"] == "x" * 256
    assert line["client_id"] == 'a"b\n{"event":"forged"}'


def test_a_line_stays_under_pipe_buf_however_odd_the_values(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    odd = "\x01" * 300  # each becomes the six bytes \u0001 in JSON
    Audit(str(path)).emit(
        audit.AUTH_FAILED,
        client_id=odd,
        subject=odd,
        session_id=odd,
        remote_addr=odd,
        admin=odd,
        reason=odd,
    )
    assert len(path.read_bytes()) < 4096
    (line,) = read_lines(path)
    assert set(line) == {"time", "event", *FIELDS}
    assert line["event"] == "auth.failed"


def test_unicode_names_stay_readable_and_line_separators_cannot_split_a_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    Audit(str(path)).emit(audit.USER_CREATED, subject="Jürgen\u2028次\ud800")
    raw = path.read_bytes()
    assert "Jürgen".encode() in raw
    assert len(raw.decode("utf-8").splitlines()) == 1
    (line,) = read_lines(path)
    assert line["subject"] == "Jürgen\u2028次\ud800"


def test_only_the_audit_fields_are_accepted() -> None:
    trail = Audit()
    with pytest.raises(TypeError):
        trail.emit(audit.AUTH_FAILED, password="hunter2")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        trail.emit(audit.TOKEN_ISSUED, "c1")  # type: ignore[call-arg]


def test_unknown_events_and_session_end_reasons_fail_an_assertion() -> None:
    trail = Audit()
    with pytest.raises(AssertionError, match="client.renamed"):
        trail.emit("client.renamed", client_id="c1")
    with pytest.raises(AssertionError):
        trail.emit(audit.SESSION_ENDED, session_id="s1", reason="tired")
    with pytest.raises(AssertionError):
        trail.emit(audit.SESSION_ENDED, session_id="s1")


def test_the_event_names_are_the_documented_ones() -> None:
    assert audit.EVENTS == {
        "client.created",
        "client.updated",
        "client.rotated",
        "client.disabled",
        "client.enabled",
        "client.deleted",
        "token.issued",
        "token.refreshed",
        "auth.failed",
        "auth.throttled",
        "license.refused",
        "session.ended",
        "user.created",
        "user.updated",
        "user.deleted",
        "key.rotated",
        "admin.signed_in",
        "admin.sign_in_failed",
        "admin.signed_out",
    }
    assert audit.SESSION_END_REASONS == {
        "logoff",
        "revoked",
        "replaced",
        "replay",
        "client_changed",
        "user_changed",
        "admin",
    }
    assert audit.STORED_EVENTS == audit.EVENTS - {"token.issued", "token.refreshed"}


def test_the_logger_receives_each_event_with_the_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flask_tokenguard.audit")
    trail = Audit(clock=lambda: 0.0)
    trail.emit(audit.AUTH_FAILED, client_id="c1", remote_addr="10.0.0.7", reason="invalid_client")
    trail.emit(audit.USER_DELETED, subject="two words\nforged.event client=x")

    first, second = caplog.records
    assert first.name == "flask_tokenguard.audit"
    assert first.levelno == logging.INFO
    assert first.getMessage() == "auth.failed client=c1 addr=10.0.0.7 reason=invalid_client"
    assert first.audit == {  # type: ignore[attr-defined]
        "time": "1970-01-01T00:00:00.000Z",
        "event": "auth.failed",
        "client_id": "c1",
        "remote_addr": "10.0.0.7",
        "reason": "invalid_client",
    }
    # A name with spaces or a line break is quoted: it cannot forge a second event.
    assert second.getMessage() == 'user.deleted subject="two words\\nforged.event client=x"'
    assert "\n" not in second.getMessage()


def test_nothing_is_built_when_nobody_listens(tmp_path: Path) -> None:
    def clock() -> float:
        raise AssertionError("the clock was read")

    audit.logger.setLevel(logging.WARNING)
    try:
        Audit(clock=clock).emit(audit.TOKEN_ISSUED, client_id="c1")
    finally:
        audit.logger.setLevel(logging.NOTSET)


def test_a_file_that_cannot_be_written_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trail = Audit(str(tmp_path / "missing" / "audit.jsonl"))
    trail.emit(audit.CLIENT_CREATED, client_id="c1")
    (warning,) = [r for r in caplog.records if r.name == "flask_tokenguard"]
    assert warning.levelno == logging.WARNING
    assert "audit log" in warning.getMessage()


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from flask_tokenguard.core import audit
    path, tag, go = sys.argv[1], sys.argv[2], sys.argv[3]
    trail = audit.Audit(path)
    open(go + "." + tag, "w").close()  # ready
    while not os.path.exists(go):
        pass
    for i in range(300):
        trail.emit(audit.AUTH_FAILED, client_id=tag, subject=str(i), session_id=tag * 200,
                   remote_addr="10.0.0.1", admin=tag * 200, reason=tag * 200)
    """
)


def test_three_processes_appending_at_once_leave_900_intact_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), tag, str(go)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for tag in "abc"
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"go.{tag}").exists() for tag in "abc"):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.01)
    go.touch()  # all three are spinning: their writes overlap
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()

    lines = read_lines(path)
    assert len(lines) == 900
    for tag in "abc":
        mine = [line for line in lines if line["client_id"] == tag]
        assert [int(line["subject"]) for line in mine] == list(range(300))
        assert all(line["admin"] == tag * 200 for line in mine)


# -- the events of a running app ---------------------------------------------------------


def _events(path: Path, event: str | None = None) -> list[dict[str, t.Any]]:
    lines = read_lines(path) if path.exists() else []
    return [line for line in lines if event is None or line["event"] == event]


def _password(http: t.Any, client_id: str, username: str, password: str) -> t.Any:
    return http.post(
        "/token",
        data={
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": password,
        },
    )


@pytest.fixture
def audited(app_factory: t.Callable[..., Flask], tmp_path: Path) -> tuple[Flask, Path]:
    """An app with one license seat, throttling after 5 failures and an audit file."""
    path = tmp_path / "audit.jsonl"
    return app_factory(AUDIT_LOG=str(path), LICENSES=1, LOCKOUT_THRESHOLD=5), path


@pytest.fixture
def unlicensed(app_factory: t.Callable[..., Flask], tmp_path: Path) -> tuple[Flask, Path]:
    """An app without a license limit and with an audit file."""
    path = tmp_path / "audit.jsonl"
    return app_factory(AUDIT_LOG=str(path)), path


def _password_hash(app: Flask, username: str) -> str:
    user = app.extensions["tokenguard"].state(app).store.get_user(username)
    assert user is not None
    return str(user.password_hash)


def test_token_requests_are_audited_with_the_remote_address(audited: tuple[Flask, Path]) -> None:
    app, path = audited
    creds = register(app)
    http = app.test_client()
    issued = get_token(http, creds).json
    refreshed = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]},
        headers=basic(creds["client_id"], creds["client_secret"]),
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
        base_url="https://localhost",
    )
    assert refreshed.status_code == 200
    session_id = jwt.decode(issued["access_token"], options={"verify_signature": False})["sid"]

    (token_issued,) = _events(path, "token.issued")
    assert {k: v for k, v in token_issued.items() if k != "time"} == {
        "event": "token.issued",
        "client_id": creds["client_id"],
        "subject": creds["client_id"],
        "session_id": session_id,
        "remote_addr": "127.0.0.1",
    }
    (token_refreshed,) = _events(path, "token.refreshed")
    assert token_refreshed["session_id"] == session_id
    assert token_refreshed["remote_addr"] == "10.1.2.3"


def test_refused_requests_are_audited(audited: tuple[Flask, Path]) -> None:
    app, path = audited
    creds = register(app)
    public = register(app, "spa", "--public", "--grant", "password")
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    http = app.test_client()
    assert get_token(http, creds).status_code == 200
    assert get_token(http, creds).json["error"] == "license_unavailable"
    wrong = {**creds, "client_secret": "not-the-secret"}
    assert get_token(http, wrong).json["error"] == "invalid_client"
    assert get_token(http, {**creds, "client_id": "nobody"}).status_code == 401
    for _ in range(3):
        assert _password(http, public["client_id"], "alice", "guess").status_code == 400
    assert _password(http, public["client_id"], "alice", "wonderland").status_code == 429

    (refused,) = _events(path, "license.refused")
    assert refused["client_id"] == creds["client_id"]
    failed = _events(path, "auth.failed")
    assert [(f.get("client_id"), f.get("subject"), f["reason"]) for f in failed] == [
        (creds["client_id"], None, "invalid_client"),
        (None, None, "invalid_client"),  # an unknown id is not repeated: it may be a secret
        *[(public["client_id"], "alice", "invalid_grant")] * 3,
    ]
    assert all(f["remote_addr"] == "127.0.0.1" for f in failed)
    # The address is over the threshold: refused at client authentication, before the
    # client is looked up (so no client id is named) and before any password is checked.
    (throttled,) = _events(path, "auth.throttled")
    assert {k: v for k, v in throttled.items() if k != "time"} == {
        "event": "auth.throttled",
        "remote_addr": "127.0.0.1",
        "reason": "slow_down",
    }


def test_a_throttled_password_names_the_client_and_user(
    unlicensed: tuple[Flask, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user's own count is over while the address is not (parallel guesses in flight).
    reserve = Throttle.reserve

    def over(self: Throttle, kind: str, name: str, now: float) -> t.Any:
        if kind == "user":
            raise LockedOutError(retry_after=60)
        return reserve(self, kind, name, now)

    app, path = unlicensed
    public = register(app, "spa", "--public", "--grant", "password")
    monkeypatch.setattr(Throttle, "reserve", over)
    http = app.test_client()
    assert _password(http, public["client_id"], "alice", "wonderland").status_code == 429
    (throttled,) = _events(path, "auth.throttled")
    assert {k: v for k, v in throttled.items() if k != "time"} == {
        "event": "auth.throttled",
        "client_id": public["client_id"],
        "subject": "alice",
        "remote_addr": "127.0.0.1",
        "reason": "slow_down",
    }


def test_ended_sessions_are_audited_with_their_reason(unlicensed: tuple[Flask, Path]) -> None:
    app, path = unlicensed
    creds = register(app)
    http = app.test_client()
    auth = basic(creds["client_id"], creds["client_secret"])

    def session() -> tuple[str, dict[str, t.Any]]:
        body = get_token(http, creds, scope="view").json
        return jwt.decode(body["access_token"], options={"verify_signature": False})["sid"], body

    logged_off, body = session()
    assert http.post("/logoff", data={"refresh_token": body["refresh_token"]}).status_code == 204
    revoked, body = session()
    assert http.post("/revoke", data={"token": body["refresh_token"]}, headers=auth).status_code
    replayed, body = session()
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    assert http.post("/token", data=refresh, headers=auth).status_code == 200
    assert http.post("/token", data=refresh, headers=auth).status_code == 400
    by_admin, _ = session()
    cli(app, "logoff", by_admin)
    public = register(app, "spa", "--public", "--grant", "password")
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    signed_in = _password(http, public["client_id"], "alice", "wonderland").json
    user_changed = jwt.decode(signed_in["access_token"], options={"verify_signature": False})
    cli(app, "set-password", "alice", "--password-stdin", input="looking-glass\n")
    changed, _ = session()
    cli(app, "disable-client", creds["client_id"])

    ended = {e["session_id"]: e for e in _events(path, "session.ended")}
    assert {sid: e["reason"] for sid, e in ended.items()} == {
        logged_off: "logoff",
        revoked: "revoked",
        replayed: "replay",
        by_admin: "admin",
        user_changed["sid"]: "user_changed",
        changed: "client_changed",
    }
    assert ended[user_changed["sid"]]["subject"] == "alice"
    assert all(
        ended[sid]["client_id"] == creds["client_id"] for sid in ended if sid != user_changed["sid"]
    )
    assert ended[by_admin]["admin"] == ended[changed]["admin"] == _os_user()
    assert "admin" not in ended[logged_off]


def _os_user() -> str:
    return getpass.getuser()


def test_admin_commands_are_audited_with_the_os_user(audited: tuple[Flask, Path]) -> None:
    app, path = audited
    creds = register(app, "billing")
    cli(app, "rotate-secret", creds["client_id"], "--yes")
    cli(app, "disable-client", creds["client_id"])
    cli(app, "enable-client", creds["client_id"])
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    cli(app, "set-password", "alice", "--password-stdin", input="looking-glass\n")
    cli(app, "delete-user", "alice")
    cli(app, "rotate-keys")
    cli(app, "update-client", creds["client_id"], "--name", "invoicing")
    cli(app, "delete-client", creds["client_id"], "--yes")
    cli(app, "list-clients")  # reading is not an event

    events = [(e["event"], e.get("client_id"), e.get("subject")) for e in _events(path)]
    cid = creds["client_id"]
    assert events == [
        ("client.created", cid, None),
        ("client.rotated", cid, None),
        ("client.disabled", cid, None),
        ("client.enabled", cid, None),
        ("user.created", None, "alice"),
        ("user.updated", None, "alice"),
        ("user.deleted", None, "alice"),
        ("key.rotated", None, None),
        ("client.updated", cid, None),
        ("client.deleted", cid, None),
    ]
    assert all(e["admin"] == _os_user() and "remote_addr" not in e for e in _events(path))


def test_update_client_audits_the_change_and_each_ended_session(
    unlicensed: tuple[Flask, Path],
) -> None:
    app, path = unlicensed
    creds = register(app)
    http = app.test_client()
    body = get_token(http, creds).json
    sid = jwt.decode(body["access_token"], options={"verify_signature": False})["sid"]
    cli(app, "update-client", creds["client_id"], "--scope", "view")
    (updated,) = _events(path, "client.updated")
    assert updated["client_id"] == creds["client_id"] and updated["admin"] == _os_user()
    (ended,) = _events(path, "session.ended")
    assert (ended["session_id"], ended["reason"]) == (sid, "client_changed")
    # A change to nothing new is no event.
    cli(app, "update-client", creds["client_id"], "--scope", "view")
    assert len(_events(path, "client.updated")) == 1


# -- the events kept in the store -------------------------------------------------------------


def test_stored_events_are_the_records_of_the_file(tmp_path: Path) -> None:
    from flask_tokenguard.stores.memory import MemoryStore

    store = MemoryStore("memory://")
    path = tmp_path / "audit.jsonl"
    trail = Audit(str(path), clock=lambda: 1_767_225_600.0, store=store)
    trail.emit(audit.TOKEN_ISSUED, client_id="c1", session_id="s1")
    trail.bind(admin="root").emit(audit.CLIENT_CREATED, client_id="c1")
    trail.emit(audit.TOKEN_REFRESHED, client_id="c1", session_id="s1")
    trail.emit(audit.SESSION_ENDED, client_id="c1", session_id="s1", reason="replaced")
    kept = store.recent_events()
    # Newest first, without the routine token answers, exactly as the file has them.
    lines = read_lines(path)
    assert kept == [line for line in reversed(lines) if line["event"] in audit.STORED_EVENTS]
    assert [e["event"] for e in kept] == ["session.ended", "client.created"]
    assert kept[1] == {
        "time": "2026-01-01T00:00:00.000Z",
        "event": "client.created",
        "client_id": "c1",
        "admin": "root",
    }


def test_events_are_stored_when_nobody_listens() -> None:
    from flask_tokenguard.stores.memory import MemoryStore

    store = MemoryStore("memory://")
    audit.logger.setLevel(logging.WARNING)
    try:
        Audit(store=store).emit(audit.AUTH_FAILED, client_id="c1", reason="invalid_client")
        Audit(store=store).emit(audit.TOKEN_ISSUED, client_id="c1")
    finally:
        audit.logger.setLevel(logging.NOTSET)
    assert [e["event"] for e in store.recent_events()] == ["auth.failed"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_cli_and_http_events_reach_the_store_but_token_answers_do_not(
    app_factory: t.Callable[..., Flask], tmp_path: Path, kind: str
) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'events.sqlite3'}"
    app = app_factory(url, LICENSES=1)  # no audit file, no log handler: stored anyway
    creds = register(app)
    http = app.test_client()
    body = get_token(http, creds).json
    refreshed = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    assert refreshed.status_code == 200
    assert get_token(http, creds).json["error"] == "license_unavailable"
    cli(app, "update-client", creds["client_id"], "--name", "renamed")
    cli(app, "create-user", "alice", "--password-stdin", input="wonderland\n")
    cli(app, "disable-client", creds["client_id"])

    store = app.extensions["tokenguard"].store(app)
    kept = store.recent_events()
    assert [(e["event"], e.get("reason")) for e in kept] == [
        ("session.ended", "client_changed"),
        ("client.disabled", None),
        ("user.created", None),
        ("client.updated", None),
        ("license.refused", "pool"),
        ("client.created", None),
    ]
    assert all(e.get("admin") == _os_user() for e in kept if e["event"] != "license.refused")
    assert kept[4]["remote_addr"] == "127.0.0.1"
    assert store.recent_events(2) == kept[:2]


def test_a_store_that_cannot_keep_an_event_is_a_warning_not_a_failure(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_tokenguard.errors import StoreError

    store = app.extensions["tokenguard"].store(app)
    creds = register(app)

    def down(event: t.Mapping[str, str], keep: int = 1000) -> None:
        raise StoreError("MemoryStore failed: ConnectionError")

    monkeypatch.setattr(store, "add_event", down)
    http = app.test_client()
    wrong = get_token(http, {**creds, "client_secret": "not-the-secret"})
    assert wrong.status_code == 401 and wrong.json["error"] == "invalid_client"
    assert cli(app, "update-client", creds["client_id"], "--name", "renamed")["name"] == "renamed"
    warnings = [r for r in caplog.records if r.name == "flask_tokenguard"]
    assert [r.levelno for r in warnings] == [logging.WARNING] * 2
    assert ["auth.failed" in r.getMessage() for r in warnings] == [True, False]
    assert "client.updated" in warnings[1].getMessage()
    assert "not-the-secret" not in caplog.text


def test_no_secret_token_password_or_hash_reaches_the_audit_file(
    unlicensed: tuple[Flask, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_tokenguard.audit")
    app, path = unlicensed
    secrets: list[str] = []
    creds = register(app, "billing")
    public = register(app, "spa", "--public", "--grant", "password", "--grant", "refresh_token")
    secrets.append(creds["client_secret"])
    passwords = ["wonderland", "looking-glass", "a wrong guess"]
    secrets += passwords
    cli(app, "create-user", "alice", "--password-stdin", input=f"{passwords[0]}\n")
    secrets.append(_password_hash(app, "alice"))
    http: t.Any = app.test_client()
    auth = basic(creds["client_id"], creds["client_secret"])
    for _ in range(2):
        body = get_token(http, creds, scope="view").json
        secrets += [body["access_token"], body["refresh_token"]]
        again = http.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
            headers=auth,
        ).json
        secrets += [again["access_token"], again["refresh_token"]]
    _password(http, public["client_id"], "alice", passwords[2])
    body = _password(http, public["client_id"], "alice", passwords[0]).json
    secrets += [body["access_token"], body["refresh_token"]]
    http.post("/logoff", data={"refresh_token": body["refresh_token"]})
    http.post("/revoke", data={"token": again["access_token"]}, headers=auth)
    get_token(http, {**creds, "client_secret": "wrong-" + creds["client_secret"]})
    secrets.append("wrong-" + creds["client_secret"])
    cli(app, "set-password", "alice", "--password-stdin", input=f"{passwords[1]}\n")
    secrets.append(_password_hash(app, "alice"))
    rotated = cli(app, "rotate-secret", creds["client_id"], "--yes")
    secrets.append(rotated["client_secret"])
    cli(app, "rotate-keys")
    secrets += [hash_secret(s) for s in list(secrets)]
    store = app.extensions["tokenguard"].state(app).store
    secrets += [c.secret_hash for c in store.list_clients() if c.secret_hash]

    text = path.read_text(encoding="utf-8")
    logged = "\n".join(f"{r.getMessage()} {r.__dict__.get('audit')}" for r in caplog.records)
    assert len(_events(path)) >= 15
    for secret in secrets:
        assert secret not in text
        assert secret not in logged
        for part in (secret[:12], secret[-12:]):  # not even a piece of one
            assert part not in text, part


def test_the_product_emits_only_known_events() -> None:
    """Every ``emit`` in the package names its event by a constant of ``core.audit``."""
    package = ROOT / "flask_tokenguard"
    seen = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "emit"
                and node.args
            ):
                continue
            first = node.args[0]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name):
                assert first.value.id == "events", where
                assert getattr(audit, first.attr) in audit.EVENTS, where
                seen.add(getattr(audit, first.attr))
            else:  # a variable holding one of the constants, chosen just before
                assert isinstance(first, ast.Name) and first.id in ("event",), where
    # Only the admin console's events may not be emitted yet.
    assert audit.EVENTS - seen - {audit.CLIENT_ENABLED, audit.CLIENT_DISABLED} <= {
        audit.ADMIN_SIGNED_IN,
        audit.ADMIN_SIGN_IN_FAILED,
        audit.ADMIN_SIGNED_OUT,
    }


# -- the administrator's actions report themselves, in core ---------------------------------


def _kept(store: t.Any) -> list[dict[str, str]]:
    """The stored events oldest first, without their time."""
    return [{k: v for k, v in e.items() if k != "time"} for e in reversed(store.recent_events())]


def test_core_admin_actions_report_their_own_events(app: Flask) -> None:
    """The rule the CLI and the console share: each core action emits what it did."""
    from flask_tokenguard.core import clients
    from flask_tokenguard.core import sessions
    from flask_tokenguard.core import users

    state = app.extensions["tokenguard"].state(app)
    store, settings, now = state.store, state.settings, time.time()
    who = {"admin": "ops", "remote_addr": "10.0.0.9"}
    trail = state.audit.bind(**who)
    client, _ = clients.create_client(
        store, "billing", scopes=[], known_scopes=list(settings.scopes), now=now, audit=trail
    )
    cid = client.client_id

    def start(subject: str) -> str:
        started = sessions.start_session(
            store, settings, client=client, subject=subject, scope="view", now=now
        )
        return started.session.session_id

    users.create_user(store, "alice", "wonderland", cost=10, now=now, audit=trail)
    alices = start("alice")
    _, ended = users.set_password(store, "alice", "looking-glass", cost=10, now=now, audit=trail)
    assert ended == [alices]
    own = start(cid)
    clients.set_enabled(store, cid, False, now=now, audit=trail)
    clients.set_enabled(store, cid, True, now=now, audit=trail)
    before_rotation = start(cid)
    clients.rotate_secret(store, cid, now=now, audit=trail)
    by_admin = start(cid)
    (logged_off,) = sessions.log_off(store, now=now, session_id=by_admin, audit=trail)
    assert logged_off.session_id == by_admin
    bobs = start("bob")
    (bobs_ended,) = sessions.log_off(store, now=now, username="bob", audit=trail)
    assert bobs_ended.session_id == bobs
    clients.update_client(store, cid, known_scopes=["view", "all"], now=now, audit=trail)
    clients.update_client(store, cid, known_scopes=["view", "all"], now=now, name="x", audit=trail)
    clients.delete_client(store, cid, now=now, audit=trail)

    assert _kept(store) == [
        {"event": "client.created", "client_id": cid, **who},
        {"event": "user.created", "subject": "alice", **who},
        {"event": "user.updated", "subject": "alice", **who},
        {"event": "session.ended", "client_id": cid, "subject": "alice", "session_id": alices,
         "reason": "user_changed", **who},
        {"event": "client.disabled", "client_id": cid, **who},
        {"event": "session.ended", "client_id": cid, "session_id": own,
         "reason": "client_changed", **who},
        {"event": "client.enabled", "client_id": cid, **who},
        {"event": "client.rotated", "client_id": cid, **who},
        {"event": "session.ended", "client_id": cid, "session_id": before_rotation,
         "reason": "client_changed", **who},
        {"event": "session.ended", "client_id": cid, "subject": cid, "session_id": by_admin,
         "reason": "admin", **who},
        {"event": "session.ended", "client_id": cid, "subject": "bob", "session_id": bobs,
         "reason": "admin", **who},
        # The update that changed nothing is no event; the rename is one.
        {"event": "client.updated", "client_id": cid, **who},
        {"event": "client.deleted", "client_id": cid, **who},
    ]  # fmt: skip


def test_a_public_client_s_rotation_names_its_new_id_and_its_old_sessions(app: Flask) -> None:
    from flask_tokenguard.core import clients
    from flask_tokenguard.core import sessions

    state = app.extensions["tokenguard"].state(app)
    store, now = state.store, time.time()
    public, _ = clients.create_client(
        store, "spa", scopes=["view"], known_scopes=["view"], public=True, now=now
    )
    started = sessions.start_session(
        store, state.settings, client=public, subject="alice", scope="view", now=now
    )
    renamed, secret, ended = clients.rotate_secret(
        store, public.client_id, now=now, audit=state.audit
    )
    assert secret is None and renamed.client_id != public.client_id
    assert ended == [started.session.session_id]
    assert _kept(store) == [
        {"event": "client.rotated", "client_id": renamed.client_id},
        {
            "event": "session.ended",
            "client_id": public.client_id,
            "session_id": started.session.session_id,
            "reason": "client_changed",
        },
    ]


def test_core_admin_actions_without_a_trail_report_nothing(app: Flask) -> None:
    from flask_tokenguard.core import clients
    from flask_tokenguard.core import sessions
    from flask_tokenguard.core import users

    state = app.extensions["tokenguard"].state(app)
    store, now = state.store, time.time()
    client, _ = clients.create_client(
        store, "quiet", scopes=["view"], known_scopes=["view"], now=now
    )
    clients.rotate_secret(store, client.client_id, now=now)
    users.create_user(store, "carol", "pw", cost=10, now=now)
    users.delete_user(store, "carol", now=now)
    sessions.log_off(store, now=now, everything=True)
    assert store.recent_events() == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param({}, id="none"),
        pytest.param({"session_id": "s", "everything": True}, id="session-and-all"),
        pytest.param({"client": "c", "username": "u"}, id="client-and-user"),
    ],
)
def test_log_off_needs_exactly_one_target(app: Flask, target: dict[str, t.Any]) -> None:
    from flask_tokenguard.core import sessions
    from flask_tokenguard.errors import AdminInputError

    store = app.extensions["tokenguard"].store(app)
    creds = register(app)
    assert get_token(app.test_client(), creds).status_code == 200
    with pytest.raises(AdminInputError, match="exactly one"):
        sessions.log_off(store, now=time.time(), **target)
    assert len(store.list_sessions(None, time.time())) == 1


@pytest.mark.parametrize(
    "target",
    [
        pytest.param({"session_id": "no-such-session"}, id="session"),
        pytest.param({"session_id": "not a session id"}, id="impossible-session"),
        pytest.param({"client": "tg_nobody"}, id="client"),
    ],
)
def test_log_off_of_nothing_live_is_not_found_and_no_event(
    app: Flask, target: dict[str, t.Any]
) -> None:
    from flask_tokenguard.core import sessions
    from flask_tokenguard.errors import NotFoundError

    state = app.extensions["tokenguard"].state(app)
    with pytest.raises(NotFoundError):
        sessions.log_off(state.store, now=time.time(), audit=state.audit, **target)
    assert state.store.recent_events() == []
