"""``flask tokenguard ...``: clients, users, sessions, licences, keys, and serving.

Every command takes ``--json`` for scripts. A secret is printed only by
``create-client`` and ``rotate-secret``: the only times it exists outside its hash.
Failures raise ``click.ClickException`` (exit 1, message on stderr). Every change is
reported to the audit trail, with the operating-system user who ran it as ``admin``: by
the ``core`` function that makes it (the admin console calls the same ones), given the
trail bound to that user.
"""

from __future__ import annotations

import functools
import getpass
import json
import sys
import time
import typing as t

import click
from flask import current_app
from flask.cli import AppGroup

from ..core import audit as events
from ..core import clients
from ..core import sessions as session_rules
from ..core import users
from ..core.audit import Audit
from ..errors import AdminInputError
from ..errors import ConfigurationError
from ..errors import ConflictError
from ..errors import NotFoundError
from ..errors import StoreError
from .doctor import doctor_command
from .state import current_state as _state

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

tokenguard = AppGroup("tokenguard", help="Manage OAuth clients, users, sessions and licences.")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
yes_option = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")


@functools.cache
def _os_user() -> str | None:
    """Who runs the command, for the audit trail's ``admin`` field (None if unknown)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name in the environment or the user database
        return None


def _audit() -> Audit:
    return _state().audit.bind(admin=_os_user())


def _emit(as_json: bool, data: t.Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


def _handled(fn: F) -> F:
    """Turn domain errors into one clear line and exit code 1; sync revocations."""

    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            result = fn(*args, **kwargs)
            # A command that ended sessions must be felt at once by this process too.
            _state().sync_revocations()
            return result
        except (AdminInputError, ConfigurationError, ConflictError, NotFoundError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise click.ClickException(str(message)) from None
        except StoreError as exc:
            raise click.ClickException(f"the token store failed: {exc}") from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__dict__.update(fn.__dict__)
    return t.cast(F, wrapper)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)


# -- clients -----------------------------------------------------------------------------


@tokenguard.command("create-client")
@click.argument("name")
@click.option(
    "--scope", "scopes", multiple=True, help="Allowed scope (repeat); default: all configured."
)
@click.option("--grant", "grants", multiple=True, help="Allowed grant type (repeat).")
@click.option("--public", is_flag=True, help="A public client: no secret, id only.")
@click.option("--alias", help="A second name accepted in place of the client id.")
@click.option(
    "--max-seats",
    type=int,
    help="Licensed sessions this client may hold at once [TOKENGUARD_MAX_SEATS_PER_CLIENT].",
)
@json_option
@_handled
def create_client(
    name: str,
    scopes: tuple[str, ...],
    grants: tuple[str, ...],
    public: bool,
    alias: str | None,
    max_seats: int | None,
    as_json: bool,
) -> None:
    """Register a client and print its id and secret (shown only this once)."""
    state = _state()
    client, secret = clients.create_client(
        state.store,
        name,
        scopes=scopes,
        known_scopes=list(state.settings.scopes),
        grants=grants or None,
        public=public,
        alias=alias,
        max_seats=max_seats,
        now=time.time(),
        audit=_audit(),
    )
    data = {**clients.describe(client), "client_secret": secret}
    lines = [f"Client id:     {client.client_id}"]
    if secret is not None:
        lines.append(f"Client secret: {secret}")
        lines.append("Store the secret now: it is shown only once.")
    _emit(as_json, data, "\n".join(lines))


@tokenguard.command("rotate-secret")
@click.argument("client_id", metavar="CLIENT")
@yes_option
@click.option("--keep-sessions", is_flag=True, help="Let the client's sessions go on.")
@json_option
@_handled
def rotate_secret(client_id: str, yes: bool, keep_sessions: bool, as_json: bool) -> None:
    """Give a client a new secret (a public client a new id); the old one stops working."""
    state = _state()
    client = clients.find_client(state.store, client_id)
    if not yes:
        what = "id" if client.is_public else "secret"
        click.confirm(
            f"Regenerate the {what} of {client.name!r} ({client.client_id})? "
            f"The old {what} stops working at once.",
            abort=True,
            err=True,
        )
    updated, secret, ended = clients.rotate_secret(
        state.store,
        client.client_id,
        keep_sessions=keep_sessions,
        now=time.time(),
        audit=_audit(),
    )
    data = {"client_id": updated.client_id, "client_secret": secret, "sessions_ended": len(ended)}
    if client.is_public:
        data["previous_client_id"] = client.client_id
        text = f"New client id: {updated.client_id} (the old id no longer works)"
    else:
        text = (
            f"Client id:     {updated.client_id}\nClient secret: {secret}\n"
            "Store the secret now: it is shown only once."
        )
    _emit(as_json, data, text)


@tokenguard.command("list-clients")
@json_option
@_handled
def list_clients(as_json: bool) -> None:
    """List the registered clients (never their secrets)."""
    listed = [clients.describe(c) for c in _state().store.list_clients()]
    text = "\n".join(
        f"{c['client_id']}  {c['name']!r}  alias={c['alias'] or '-'}  "
        f"{'public' if c['public'] else 'confidential'}  "
        f"{'enabled' if c['enabled'] else 'DISABLED'}  scopes={' '.join(c['scopes'])}  "
        f"grants={' '.join(c['grants'])}  "
        f"max_seats={'-' if c['max_seats'] is None else c['max_seats']}"
        for c in listed
    )
    _emit(as_json, listed, text or "No clients.")


@tokenguard.command("update-client")
@click.argument("client_id", metavar="CLIENT")
@click.option("--name", help="A new display name.")
@click.option("--alias", help="A new alias (a second name accepted in place of the id).")
@click.option("--no-alias", is_flag=True, help="Remove the alias.")
@click.option(
    "--scope", "scopes", multiple=True, help="Allowed scope (repeat): replaces the scopes."
)
@click.option(
    "--grant", "grants", multiple=True, help="Allowed grant type (repeat): replaces the grants."
)
@click.option("--max-seats", type=int, help="Licensed sessions this client may hold at once.")
@click.option(
    "--no-max-seats", is_flag=True, help="Remove the client's own cap (the default applies)."
)
@json_option
@_handled
def update_client(
    client_id: str,
    name: str | None,
    alias: str | None,
    no_alias: bool,
    scopes: tuple[str, ...],
    grants: tuple[str, ...],
    max_seats: int | None,
    no_max_seats: bool,
    as_json: bool,
) -> None:
    """Change what is given and keep the rest; end the sessions that no longer fit."""
    if alias is not None and no_alias:
        raise click.UsageError("give --alias A or --no-alias, not both")
    if max_seats is not None and no_max_seats:
        raise click.UsageError("give --max-seats N or --no-max-seats, not both")
    changes: dict[str, t.Any] = {}
    if name is not None:
        changes["name"] = name
    if alias is not None or no_alias:
        changes["alias"] = alias
    if scopes:
        changes["scopes"] = scopes
    if grants:
        changes["grants"] = grants
    if max_seats is not None or no_max_seats:
        changes["max_seats"] = max_seats
    if not changes:
        raise click.UsageError(
            "nothing to change: give --name, --alias, --no-alias, --scope, --grant, "
            "--max-seats or --no-max-seats"
        )
    state = _state()
    client, ended = clients.update_client(
        state.store,
        client_id,
        known_scopes=list(state.settings.scopes),
        now=time.time(),
        default_cap=state.settings.max_seats_per_client,
        is_licensed=functools.partial(session_rules.is_licensed, state.settings),
        audit=_audit(),
        **changes,
    )
    data = {**clients.describe(client), "sessions_ended": len(ended)}
    _emit(as_json, data, f"{client.client_id} updated; {len(ended)} session(s) ended")


def _set_enabled(client_id: str, enabled: bool, as_json: bool) -> None:
    client, ended = clients.set_enabled(
        _state().store, client_id, enabled, now=time.time(), audit=_audit()
    )
    data = {**clients.describe(client), "sessions_ended": len(ended)}
    _emit(as_json, data, f"{client.client_id} {'enabled' if enabled else 'disabled'}")


@tokenguard.command("disable-client")
@click.argument("client_id", metavar="CLIENT")
@json_option
@_handled
def disable_client(client_id: str, as_json: bool) -> None:
    """Disable a client and end its sessions."""
    _set_enabled(client_id, False, as_json)


@tokenguard.command("enable-client")
@click.argument("client_id", metavar="CLIENT")
@json_option
@_handled
def enable_client(client_id: str, as_json: bool) -> None:
    """Enable a disabled client."""
    _set_enabled(client_id, True, as_json)


@tokenguard.command("delete-client")
@click.argument("client_id", metavar="CLIENT")
@yes_option
@json_option
@_handled
def delete_client(client_id: str, yes: bool, as_json: bool) -> None:
    """Delete a client and end its sessions."""
    state = _state()
    client = clients.find_client(state.store, client_id)
    if not yes:
        click.confirm(f"Delete client {client.name!r} ({client.client_id})?", abort=True, err=True)
    deleted, ended = clients.delete_client(
        state.store, client.client_id, now=time.time(), audit=_audit()
    )
    data = {"client_id": deleted.client_id, "deleted": True, "sessions_ended": len(ended)}
    _emit(as_json, data, f"{deleted.client_id} deleted")


# -- users -------------------------------------------------------------------------------


@tokenguard.command("create-user")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@click.option("--admin", is_flag=True, help="An administrator of the admin console.")
@json_option
@_handled
def create_user(username: str, password_stdin: bool, admin: bool, as_json: bool) -> None:
    """Add a user to the built-in table for the password grant."""
    state = _state()
    user = users.create_user(
        state.store,
        username,
        _read_password(password_stdin),
        cost=state.settings.password_hash_cost,
        now=time.time(),
        admin=admin,
        audit=_audit(),
    )
    what = "administrator" if user.admin else "user"
    _emit(
        as_json,
        {"username": user.username, "admin": user.admin, "created": True},
        f"{what} {user.username} created",
    )


@tokenguard.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@json_option
@_handled
def set_password(username: str, password_stdin: bool, as_json: bool) -> None:
    """Change a user's password."""
    state = _state()
    if state.store.get_user(username) is None:  # before asking for a password
        raise NotFoundError(f"no user {username!r}")
    user, ended = users.set_password(
        state.store,
        username,
        _read_password(password_stdin),
        cost=state.settings.password_hash_cost,
        now=time.time(),
        audit=_audit(),
    )
    _emit(
        as_json,
        {"username": user.username, "updated": True, "sessions_ended": len(ended)},
        f"password of {user.username} changed; {len(ended)} session(s) ended",
    )


@tokenguard.command("delete-user")
@click.argument("username")
@json_option
@_handled
def delete_user(username: str, as_json: bool) -> None:
    """Remove a user from the built-in table and end their sessions."""
    ended = users.delete_user(_state().store, username, now=time.time(), audit=_audit())
    _emit(
        as_json,
        {"username": username, "deleted": True, "sessions_ended": len(ended)},
        f"user {username} deleted; {len(ended)} session(s) ended",
    )


@tokenguard.command("list-users")
@json_option
@_handled
def list_users(as_json: bool) -> None:
    """List the built-in users (never their password hashes)."""
    users_ = _state().store.list_users()
    listed = [users.describe(u) for u in users_]
    text = "\n".join(f"{u.username}  (admin)" if u.admin else u.username for u in users_)
    _emit(as_json, listed, text or "No users.")


# -- sessions and licences ---------------------------------------------------------------


@tokenguard.command("sessions")
@click.option("--client", "client_id", help="Only this client's sessions.")
@click.option("--user", "username", help="Only the sessions of this user (their subject).")
@json_option
@_handled
def list_sessions(client_id: str | None, username: str | None, as_json: bool) -> None:
    """List live sessions: id, client, subject, scopes, seat, expiry."""
    store = _state().store
    if client_id is not None:
        client_id = clients.find_client(store, client_id).client_id
    live = store.list_sessions(client_id, time.time())
    if username is not None:
        live = [s for s in live if s.subject == username and s.subject != s.client_id]
    listed = [session_rules.describe(s) for s in live]
    text = "\n".join(
        f"{s['session_id']}  client={s['client_id']}  subject={s['subject']}  "
        f"scopes={' '.join(s['scopes'])}  seat={'yes' if s['holds_seat'] else 'no'}  "
        f"expires={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(s['expires_at']))}"
        for s in listed
    )
    _emit(as_json, listed, text or "No live sessions.")


@tokenguard.command("logoff")
@click.argument("session_id", metavar="SESSION", required=False)
@click.option("--client", "client_id", help="End every session of this client.")
@click.option("--user", "username", help="End every session of this user (their subject).")
@click.option("--all", "everything", is_flag=True, help="End every session.")
@json_option
@_handled
def logoff(
    session_id: str | None,
    client_id: str | None,
    username: str | None,
    everything: bool,
    as_json: bool,
) -> None:
    """End sessions at once and free their seats."""
    if sum(bool(x) for x in (session_id, client_id, username, everything)) != 1:
        raise click.UsageError("give exactly one of SESSION, --client C, --user NAME or --all")
    ended = session_rules.log_off(
        _state().store,
        now=time.time(),
        session_id=session_id or None,
        client=client_id or None,
        username=username or None,
        everything=everything,
        audit=_audit(),
    )
    _emit(as_json, {"ended": len(ended)}, f"{len(ended)} session(s) ended")


@tokenguard.command("licenses")
@json_option
@_handled
def licenses(as_json: bool) -> None:
    """Show licence seats in use and in total."""
    state = _state()
    in_use = state.store.seats_in_use(time.time())
    total = state.settings.licenses
    _emit(
        as_json,
        {"in_use": in_use, "total": total},
        f"{in_use} / {'unlimited' if total is None else total} licences in use",
    )


# -- keys and serving --------------------------------------------------------------------


@tokenguard.command("rotate-keys")
@click.option(
    "--retire-now",
    is_flag=True,
    help="After a leak: drop the older keys at once; their tokens are refused everywhere "
    "within TOKENGUARD_REVOCATION_LAG.",
)
@json_option
@_handled
def rotate_keys(retire_now: bool, as_json: bool) -> None:
    """Sign with a new key from now on; older keys verify until their tokens expire."""
    state = _state()
    key = state.keys.rotate(time.time(), retire_now=retire_now)
    _audit().emit(events.KEY_ROTATED)
    text = f"new signing key {key.kid} ({key.alg})"
    if retire_now:
        text += "; older keys dropped"
    _emit(as_json, {"kid": key.kid, "alg": key.alg}, text)


@tokenguard.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--threads", type=int, default=None, help="Worker threads [TOKENGUARD_SERVE_THREADS]."
)
def serve_command(host: str, port: int, threads: int | None) -> None:
    """Serve the app with waitress (graceful stop on SIGINT/SIGTERM)."""
    from ..serving.runner import serve

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    code = serve(app, host=host, port=port, threads=threads)
    if code:
        sys.exit(code)


tokenguard.add_command(doctor_command)
