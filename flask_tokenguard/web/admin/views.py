"""The admin console's pages: HTTP and forms only; the rules are in ``core``.

An action on a client or a session calls the ``core`` function the command line calls,
with the audit trail bound to the signed-in administrator and the request's address, and
that function reports it; the console itself reports only sign-in and sign-out.

Every page but sign-in needs a live admin session (otherwise: a redirect to sign-in).
Every state-changing form carries a CSRF token signed with itsdangerous, keyed by the
admin session's cookie value, so a token is good for that session only; the sign-in form
is keyed by a pre-session cookie instead, against login CSRF. Flask's ``SECRET_KEY`` and
``flask.session`` are not used: the app may have no key, and "session" here means the
OAuth session.

A client secret is rendered once, in the response to the POST that made it (never a
redirect, never stored, ``Cache-Control: no-store`` on every page).
"""

from __future__ import annotations

import functools
import time
import typing as t

from flask import Blueprint
from flask import current_app
from flask import g
from flask import redirect
from flask import render_template
from flask import request
from flask import Response
from flask import url_for
from itsdangerous import BadSignature
from itsdangerous import URLSafeTimedSerializer
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound
from werkzeug.exceptions import RequestEntityTooLarge

from ...core import admin as admin_rules
from ...core import audit as events
from ...core import clients
from ...core import sessions as session_rules
from ...core.audit import Audit
from ...core.security import new_secret
from ...core.throttle import Throttle
from ...errors import AdminInputError
from ...errors import ConflictError
from ...errors import KdfBusyError
from ...errors import LockedOutError
from ...errors import NotFoundError
from ...errors import StoreError
from ...models import AdminSession
from ...models import Client
from ...models import TokenSession
from ..guard import check_https
from ..guard import is_https
from ..state import AppState
from ..state import current_state

bp = Blueprint(
    "tokenguard_admin",
    __name__,
    template_folder="templates",
    static_folder="static",
)

#: The cookie naming the admin session (its value is hashed before any store lookup).
SESSION_COOKIE = "tokenguard_admin"
#: The pre-session cookie the sign-in form's CSRF token is keyed by.
SIGN_IN_COOKIE = "tokenguard_admin_signin"
_CSRF_SALT = "flask_tokenguard.admin.csrf"
_SIGN_IN_SALT = "flask_tokenguard.admin.sign-in"
_OPEN_ENDPOINTS = frozenset({"tokenguard_admin.sign_in", "tokenguard_admin.static"})
#: Short messages shown after a redirect; the query names one, never free text.
_NOTICES = {
    "saved": "Changes saved.",
    "disabled": "Client disabled; its sessions ended.",
    "enabled": "Client enabled.",
    "deleted": "Client deleted; its sessions ended.",
    "logged_off": "Session logged off.",
    "logged_off_all": "All sessions of this client logged off.",
}
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class CsrfError(Exception):
    """A state-changing form without a valid CSRF token: 400, nothing changes."""


# -- request plumbing --------------------------------------------------------------------


def _state() -> AppState:
    return current_state()


def _cookie_path() -> str:
    return url_for("tokenguard_admin.index")


def _over_https() -> bool:
    # Also behind the trusted proxy under a server that does not apply its headers.
    return is_https(_state().settings, request.environ)


def _set_cookie(response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=_cookie_path(),
        secure=_over_https(),
        httponly=True,
        samesite="Strict",
    )


def _audit() -> Audit:
    # The address as waitress gives it, after the trusted proxy.
    admin: AdminSession | None = g.get("_tokenguard_admin")
    return _state().audit.bind(
        remote_addr=request.remote_addr, admin=None if admin is None else admin.username
    )


def _serializer(key: str, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=salt)


def csrf_token() -> str:
    """The CSRF token of this admin session, for the forms of this page."""
    return str(_serializer(g._tokenguard_admin_cookie, _CSRF_SALT).dumps("csrf"))


def _check_csrf(key: str | None, salt: str, expected: str) -> None:
    sent = request.form.get("csrf_token", "")
    if not key or not sent:
        raise CsrfError()
    try:
        # A token lives no longer than an idle admin session; the key dies with the session.
        max_age = _state().settings.admin_session_ttl
        if _serializer(key, salt).loads(sent, max_age=max_age) != expected:
            raise CsrfError()
    except BadSignature:
        raise CsrfError() from None


def _resume(cookie: str | None, now: float) -> AdminSession | None:
    state = _state()
    return admin_rules.resume_admin_session(
        state.store,
        cookie,
        ttl=state.settings.admin_session_ttl,
        now=now,
        built_in=state.admin_verifier is None,
    )


def _is_console_path() -> bool:
    return request.path.startswith(f"{_state().settings.url_prefix}/admin/")


@bp.before_app_request
def _unrouted() -> Response | None:
    """A console URL no route takes (or not with this method): the sign-in page without a
    session, else the console's own 404 or 405 page, never the app's bare one."""
    routing = request.routing_exception
    if not isinstance(routing, (NotFound, MethodNotAllowed)) or not _is_console_path():
        return None
    check_https(_state().settings, request.environ)
    session = _resume(request.cookies.get(SESSION_COOKIE), time.time())
    if session is None:
        return _see_other(url_for("tokenguard_admin.sign_in"))
    g._tokenguard_admin = session
    g._tokenguard_admin_cookie = request.cookies.get(SESSION_COOKIE)
    if isinstance(routing, MethodNotAllowed):
        response = _page(
            "error.html", 405, title="Not allowed", message="This page does not take that request."
        )
        response.headers["Allow"] = ", ".join(sorted(routing.valid_methods or ()))
        return response
    return _page("error.html", 404, title="Not found", message="There is no such page.")


@bp.before_request
def _require_admin() -> Response | None:
    state = _state()
    request.max_content_length = state.settings.max_body
    check_https(state.settings, request.environ)
    if request.endpoint in _OPEN_ENDPOINTS:
        return None
    cookie = request.cookies.get(SESSION_COOKIE)
    now = time.time()
    session = _resume(cookie, now)
    if session is None:
        return _see_other(url_for("tokenguard_admin.sign_in"))
    g._tokenguard_admin = session
    g._tokenguard_admin_cookie = cookie
    if request.method == "POST":
        try:
            _check_csrf(cookie, _CSRF_SALT, "csrf")
        except RequestEntityTooLarge:
            return _page(
                "error.html", 413, title="Form too large", message="The form is too large."
            )
    return None


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    # App-wide, for the console's pages and for its unrouted paths (404, 405), which no
    # blueprint hook sees; the app's own routes are left alone at the cost of one check.
    routed_here = request.blueprint == bp.name
    if not routed_here and (request.url_rule is not None or not _is_console_path()):
        return response
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.app_template_filter("tg_time")
def _format_time(at: float | None) -> str:
    if at is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


@bp.app_template_global("tg_csrf_token")
def _template_csrf_token() -> str:
    return csrf_token()


def _page(template: str, status: int = 200, **context: t.Any) -> Response:
    admin: AdminSession | None = g.get("_tokenguard_admin")
    body = render_template(
        f"tokenguard_admin/{template}",
        admin=admin,
        notice=_NOTICES.get(request.args.get("notice", "")),
        **context,
    )
    return Response(body, status=status, mimetype="text/html")


@bp.errorhandler(CsrfError)
def _csrf_failed(error: CsrfError) -> Response:
    if request.endpoint == "tokenguard_admin.sign_in":
        return _sign_in_page(
            400, "The sign-in form expired or did not come from this page. Please try again."
        )
    return _page(
        "error.html",
        400,
        title="Form expired",
        message="The form expired or did not come from this console. Nothing was changed. "
        "Go back, reload the page and try again.",
    )


@bp.errorhandler(NotFoundError)
def _not_found(error: NotFoundError) -> Response:
    # A fixed text, not the error's: that one quotes the URL, which anyone can write.
    message = (
        _message(error)
        if request.endpoint == "tokenguard_admin.log_off"
        else "There is no such client. It may have been deleted or given a new id."
    )
    return _page("error.html", 404, title="Not found", message=message)


@bp.errorhandler(StoreError)
def _store_failed(error: StoreError) -> Response:
    current_app.logger.warning("admin console: store unavailable: %s", error)
    response = _page(
        "error.html",
        503,
        title="Store unavailable",
        message="The token store cannot be reached. Nothing was changed. Try again shortly.",
    )
    response.headers["Retry-After"] = "5"
    return response


def _see_other(target: str) -> Response:
    # 303: the browser follows with a GET, so a reload never re-sends a form.
    return t.cast(Response, redirect(target, 303))


def _message(error: Exception) -> str:
    return str(error.args[0]) if error.args else str(error)


# -- sign-in and sign-out ----------------------------------------------------------------


def _sign_in_page(status: int = 200, error: str | None = None, username: str = "") -> Response:
    pre = request.cookies.get(SIGN_IN_COOKIE)
    fresh = not pre or len(pre) > admin_rules.MAX_CREDENTIAL_LENGTH or status == 400
    if fresh:
        pre = new_secret()
    assert pre is not None
    token = _serializer(pre, _SIGN_IN_SALT).dumps("sign-in")
    response = _page("sign_in.html", status, sign_in_token=token, error=error, username=username)
    if fresh:
        _set_cookie(response, SIGN_IN_COOKIE, pre)
    return response


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response:
    """Show the sign-in form; on POST, check the administrator and start a session."""
    state = _state()
    if request.method == "GET":
        now = time.time()
        if _resume(request.cookies.get(SESSION_COOKIE), now) is not None:
            return _see_other(url_for("tokenguard_admin.clients_page"))
        return _sign_in_page()
    _check_csrf(request.cookies.get(SIGN_IN_COOKIE), _SIGN_IN_SALT, "sign-in")
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    now = time.time()
    audit = state.audit.bind(remote_addr=request.remote_addr)
    try:
        accepted = admin_rules.check_administrator(
            state.store,
            state.settings,
            username,
            password,
            verifier=state.admin_verifier,
            throttle=Throttle(state.store, state.settings, request.remote_addr or ""),
            now=now,
            audit=audit,
        )
    except (LockedOutError, KdfBusyError) as exc:
        message = (
            "Too many failed sign-ins from this address. Try again later."
            if isinstance(exc, LockedOutError)
            else "The server is busy. Try again in a moment."
        )
        response = _sign_in_page(exc.status, message, username)
        response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response
    if not accepted:
        return _sign_in_page(401, "The user name or password is wrong.", username)
    # A new session id at every sign-in (no fixation); the one this browser held ends.
    admin_rules.end_admin_session(state.store, request.cookies.get(SESSION_COOKIE))
    # A built-in administrator's session is bound to the password hash it signed in with
    # (read after the check, which may have rehashed it).
    user = None if state.admin_verifier is not None else state.store.get_user(username)
    signed_in = admin_rules.start_admin_session(
        state.store,
        username,
        ttl=state.settings.admin_session_ttl,
        now=now,
        password_hash="" if user is None else user.password_hash,
    )
    audit.emit(events.ADMIN_SIGNED_IN, admin=username)
    response = _see_other(url_for("tokenguard_admin.clients_page"))
    _set_cookie(response, SESSION_COOKIE, signed_in.cookie_value)
    response.delete_cookie(SIGN_IN_COOKIE, path=_cookie_path())
    return response


@bp.post("/sign-out")
def sign_out() -> Response:
    """End the admin session in the store and drop its cookie."""
    state = _state()
    ended = admin_rules.end_admin_session(state.store, g._tokenguard_admin_cookie)
    if ended is not None:
        _audit().emit(events.ADMIN_SIGNED_OUT)
    response = _see_other(url_for("tokenguard_admin.sign_in"))
    response.delete_cookie(SESSION_COOKIE, path=_cookie_path())
    return response


# -- clients -----------------------------------------------------------------------------


@bp.get("/")
def index() -> Response:
    """The console's home is the client list."""
    return _see_other(url_for("tokenguard_admin.clients_page"))


def _seats_by_client(live: t.Iterable[TokenSession]) -> dict[str, int]:
    seats: dict[str, int] = {}
    for session in live:
        if session.holds_seat:
            seats[session.client_id] = seats.get(session.client_id, 0) + 1
    return seats


@bp.get("/clients")
def clients_page() -> Response:
    """The clients, filtered by the search field over name, id and alias."""
    store = _state().store
    query = request.args.get("q", "").strip()
    listed = store.list_clients()
    if query:
        needle = query.casefold()
        listed = [
            c
            for c in listed
            if needle in c.name.casefold()
            or needle in c.client_id.casefold()
            or needle in (c.alias or "").casefold()
        ]
    seats = _seats_by_client(store.list_sessions(None, time.time()))
    return _page("clients.html", clients=listed, seats=seats, query=query)


_DEFAULT_GRANTS = ("client_credentials", "refresh_token")


def _form_values(client: Client | None = None) -> dict[str, t.Any]:
    """The client form's values: from the request after a POST, else the client or defaults."""
    known = list(_state().settings.scopes)
    if request.method == "POST":
        form = request.form
        return {
            "name": form.get("name", ""),
            "alias": form.get("alias", ""),
            "max_seats": form.get("max_seats", ""),
            "scopes": [s for s in known if s in form.getlist("scope")],
            "grants": [g_ for g_ in clients.GRANT_TYPES if g_ in form.getlist("grant")],
            "public": bool(form.get("public")) if client is None else client.is_public,
        }
    if client is None:
        return {
            "name": "",
            "alias": "",
            "max_seats": "",
            "scopes": known,
            "grants": list(_DEFAULT_GRANTS),
            "public": False,
        }
    return {
        "name": client.name,
        "alias": client.alias or "",
        "max_seats": "" if client.max_seats is None else str(client.max_seats),
        "scopes": list(client.scopes),
        "grants": list(client.grants),
        "public": client.is_public,
    }


def _max_seats(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    # ASCII only: str.isdigit() also takes "²" (which int() refuses) and other scripts' digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise AdminInputError("Max seats must be a whole number of 0 or more, or empty")
    return int(text)


def _checked(values: dict[str, t.Any]) -> tuple[list[str], list[str]]:
    if not values["scopes"]:
        raise AdminInputError("choose at least one scope")
    if not values["grants"]:
        raise AdminInputError("choose at least one grant")
    return values["scopes"], values["grants"]


def _form_error(exc: Exception) -> int:
    return 409 if isinstance(exc, ConflictError) else 400


@bp.get("/clients/new")
def new_client() -> Response:
    """The new-client form, with the command line's defaults."""
    return _client_form_page()


def _client_form_page(status: int = 200, error: str | None = None) -> Response:
    return _page(
        "new_client.html",
        status,
        values=_form_values(),
        known_scopes=_state().settings.scopes,
        grant_types=clients.GRANT_TYPES,
        error=error,
    )


@bp.post("/clients/new")
def create_client() -> Response:
    """Register a client and show its secret, in this response only."""
    state = _state()
    values = _form_values()
    try:
        scopes, grants = _checked(values)
        public = values["public"]
        if public and tuple(grants) == _DEFAULT_GRANTS:
            # The form's defaults are the confidential ones; a public client left at them
            # gets the command line's public defaults instead.
            grants = []
        alias = values["alias"].strip() or None
        client, secret = clients.create_client(
            state.store,
            values["name"],
            scopes=scopes,
            known_scopes=list(state.settings.scopes),
            grants=grants or None,
            public=public,
            alias=alias,
            max_seats=_max_seats(values["max_seats"]),
            now=time.time(),
            audit=_audit(),
        )
    except (AdminInputError, ConflictError) as exc:
        return _client_form_page(_form_error(exc), _message(exc))
    return _page("secret.html", client=client, secret=secret, created=True)


def _client_page(
    client: Client, status: int = 200, error: str | None = None, values: t.Any = None
) -> Response:
    state = _state()
    live = state.store.list_sessions(client.client_id, time.time())
    return _page(
        "client.html",
        status,
        client=client,
        sessions=live,
        values=values or _form_values(client),
        known_scopes=state.settings.scopes,
        grant_types=clients.GRANT_TYPES,
        error=error,
    )


@bp.get("/clients/<client_id>")
def client_page(client_id: str) -> Response:
    """One client: its settings, its live sessions and the actions on it."""
    return _client_page(clients.find_client(_state().store, client_id))


@bp.post("/clients/<client_id>")
def save_client(client_id: str) -> Response:
    """Save the edit form through ``core.clients.update_client``."""
    state = _state()
    client = clients.find_client(state.store, client_id)
    values = _form_values(client)
    try:
        scopes, grants = _checked(values)
        updated, ended = clients.update_client(
            state.store,
            client.client_id,
            known_scopes=list(state.settings.scopes),
            now=time.time(),
            name=values["name"],
            alias=values["alias"].strip() or None,
            scopes=scopes,
            grants=grants,
            max_seats=_max_seats(values["max_seats"]),
            default_cap=state.settings.max_seats_per_client,
            is_licensed=functools.partial(session_rules.is_licensed, state.settings),
            audit=_audit(),
        )
    except (AdminInputError, ConflictError) as exc:
        return _client_page(client, _form_error(exc), _message(exc), values)
    _refuse_here(ended)
    return _to_client(updated.client_id, "saved")


def _refuse_here(session_ids: t.Iterable[str]) -> None:
    """Refuse the ended sessions' tokens in this process at once (the others within the
    revocation lag)."""
    state = _state()
    for session_id in session_ids:
        state.note_ended_session(session_id)


def _to_client(client_id: str, notice: str) -> Response:
    target = url_for("tokenguard_admin.client_page", client_id=client_id, notice=notice)
    return _see_other(target)


@bp.get("/clients/<client_id>/rotate")
def confirm_rotate(client_id: str) -> Response:
    """Ask before regenerating; nothing changes until "Regenerate" is pressed."""
    client = clients.find_client(_state().store, client_id)
    return _page("confirm_rotate.html", client=client)


@bp.post("/clients/<client_id>/rotate")
def rotate(client_id: str) -> Response:
    """Give the client a new secret (a public client a new id) and end its sessions."""
    state = _state()
    client = clients.find_client(state.store, client_id)
    updated, secret, ended = clients.rotate_secret(
        state.store, client.client_id, now=time.time(), audit=_audit()
    )
    _refuse_here(ended)
    return _page(
        "secret.html", client=updated, secret=secret, created=False, previous=client.client_id
    )


@bp.post("/clients/<client_id>/enabled")
def set_enabled(client_id: str) -> Response:
    """Disable (ending its sessions) or enable a client."""
    state = _state()
    enabled = request.form.get("enabled") == "1"
    client, ended = clients.set_enabled(
        state.store, client_id, enabled, now=time.time(), audit=_audit()
    )
    _refuse_here(ended)
    return _to_client(client.client_id, "enabled" if enabled else "disabled")


@bp.get("/clients/<client_id>/delete")
def confirm_delete(client_id: str) -> Response:
    """Ask before deleting."""
    client = clients.find_client(_state().store, client_id)
    return _page("confirm_delete.html", client=client)


@bp.post("/clients/<client_id>/delete")
def delete(client_id: str) -> Response:
    """Delete the client and end its sessions."""
    state = _state()
    _, ended = clients.delete_client(state.store, client_id, now=time.time(), audit=_audit())
    _refuse_here(ended)
    return _see_other(url_for("tokenguard_admin.clients_page", notice="deleted"))


@bp.post("/clients/<client_id>/logoff")
def log_off_client(client_id: str) -> Response:
    """End every live session of the client ("Log off all")."""
    ended = session_rules.log_off(_state().store, now=time.time(), client=client_id, audit=_audit())
    _refuse_here(s.session_id for s in ended)
    return _to_client(client_id, "logged_off_all")


@bp.post("/sessions/<session_id>/logoff")
def log_off(session_id: str) -> Response:
    """End one session at once: its seat frees and its tokens stop working here now."""
    try:
        (session,) = session_rules.log_off(
            _state().store, now=time.time(), session_id=session_id, audit=_audit()
        )
    except NotFoundError:
        raise NotFoundError("That session has already ended.") from None
    _refuse_here([session.session_id])
    back = request.form.get("back", "")
    if back == "client":
        return _to_client(session.client_id, "logged_off")
    target = url_for("tokenguard_admin.licenses", notice="logged_off")
    return _see_other(target)


# -- licences and events -----------------------------------------------------------------


@bp.get("/licenses")
def licenses() -> Response:
    """Seats in use out of the pool, and every live session."""
    state = _state()
    now = time.time()
    live = state.store.list_sessions(None, now)
    in_use = state.store.seats_in_use(now)
    names = {c.client_id: c.name for c in state.store.list_clients()}
    return _page(
        "licenses.html",
        in_use=in_use,
        total=state.settings.licenses,
        sessions=live,
        names=names,
    )


@bp.get("/events")
def events_page() -> Response:
    """The recent security events kept in the store, newest first."""
    recent = _state().store.recent_events()
    return _page("events.html", events=recent)
