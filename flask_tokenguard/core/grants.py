"""The token endpoint's grants, without Flask: a parsed request in, a token response out.

- ``client_credentials``: RFC 6749 section 4.4
- ``password``: RFC 6749 section 4.3
- ``refresh_token``: RFC 6749 section 6, with rotation and replay detection
- the response: RFC 6749 section 5.1; errors are raised as ``OAuthError`` (section 5.2)
"""

from __future__ import annotations

import dataclasses
import typing as t

from ..errors import InvalidGrantError
from ..errors import InvalidRequestError
from ..errors import InvalidScopeError
from ..errors import LockedOutError
from ..errors import UnauthorizedClientError
from ..errors import UnsupportedGrantTypeError
from ..models import Client
from ..models import TokenSession
from .sessions import refresh_session
from .sessions import start_session
from .tokens import issue_access_token
from .users import check_user_password

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store
    from .tokens import KeyRing

#: ``fn(username, password) -> subject or None``, the app's own user check.
PasswordVerifier = t.Callable[[str, str], str | None]


@dataclasses.dataclass(frozen=True)
class GrantContext:
    """What a grant needs from the app: settings, store, keys and the user check."""

    settings: Settings
    store: Store
    keys: KeyRing
    password_verifier: PasswordVerifier | None
    #: ``iss`` of the tokens issued for this request.
    issuer: str


def resolve_scope(settings: Settings, client: Client, requested: str | None) -> str:
    """Return the scope to grant, as requested (or the default); never expanded.

    No scope requested gives ``TOKENGUARD_DEFAULT_SCOPE``, or every scope of the client
    when it may not have the default: a fallback, never an error.
    """
    if requested is None or not requested.strip():
        default = settings.default_scope.split()
        if all(s in client.scopes for s in default):
            return " ".join(default)
        return " ".join(s for s in client.scopes if s in settings.scopes)
    wanted = split_scope(requested)
    allowed = settings.expand_scopes(s for s in client.scopes if s in settings.scopes)
    if any(s not in settings.scopes or s not in allowed for s in wanted):
        raise InvalidScopeError()
    return " ".join(wanted)


def split_scope(scope: str) -> list[str]:
    """Split a ``scope`` parameter on spaces only (RFC 6749 3.3), dropping repeats.

    Tabs and other white space stay inside a token, which then matches no scope.
    """
    return list(dict.fromkeys(s for s in scope.split(" ") if s))


def _still_valid(context: GrantContext, client: Client, session: TokenSession, now: float) -> None:
    """Undo the session if an administrator changed the client meanwhile.

    Disabling, rotating or deleting a client changes its record, then ends its sessions.
    A request that authenticated just before the change may start its session just
    after that sweep; reading the record again after starting closes the gap: either the
    sweep saw this session, or this read sees the change.
    """
    if context.store.get_client(client.client_id) != client:
        context.store.end_session(session.session_id, now)
        raise InvalidGrantError("The client changed during the request.")


def _require(params: t.Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise InvalidRequestError(f"The {name} parameter is required.")
    return value


def grant_token(
    context: GrantContext, client: Client, params: t.Mapping[str, str], now: float
) -> dict[str, t.Any]:
    """Run the grant named by ``params["grant_type"]`` for an authenticated client."""
    grant_type = _require(params, "grant_type")
    if grant_type not in _GRANTS:
        raise UnsupportedGrantTypeError()
    if grant_type not in client.grants:
        raise UnauthorizedClientError()
    return _GRANTS[grant_type](context, client, params, now)


def _client_credentials(
    context: GrantContext, client: Client, params: t.Mapping[str, str], now: float
) -> dict[str, t.Any]:
    if client.is_public:
        raise UnauthorizedClientError()
    scope = resolve_scope(context.settings, client, params.get("scope"))
    session, refresh_token = start_session(
        context.store,
        context.settings,
        client_id=client.client_id,
        subject=client.client_id,
        scope=scope,
        now=now,
    )
    _still_valid(context, client, session, now)
    return _token_response(context, session, scope, refresh_token, now)


def _password(
    context: GrantContext, client: Client, params: t.Mapping[str, str], now: float
) -> dict[str, t.Any]:
    username = _require(params, "username")
    password = _require(params, "password")
    scope = resolve_scope(context.settings, client, params.get("scope"))
    settings, store = context.settings, context.store
    # Counted per user name, known or not, so a lockout says nothing about who exists;
    # checked before the KDF, so guessing also stops costing the server CPU.
    lockout_key = f"user:{username}"
    failures = 0
    if settings.lockout_threshold:
        failures, until = store.failures(lockout_key, now)
        if failures >= settings.lockout_threshold:
            raise LockedOutError(retry_after=until - now)
    if context.password_verifier is not None:
        subject = context.password_verifier(username, password)
    else:
        ok = check_user_password(store, username, password, cost=settings.password_hash_cost)
        subject = username if ok else None
    if not subject:
        if settings.lockout_threshold:
            store.record_failure(lockout_key, settings.lockout_seconds, now)
        raise InvalidGrantError("The user name or password is wrong.")
    if failures:
        store.clear_failures(lockout_key)
    session, refresh_token = start_session(
        context.store,
        context.settings,
        client_id=client.client_id,
        subject=str(subject),
        scope=scope,
        now=now,
    )
    _still_valid(context, client, session, now)
    return _token_response(context, session, scope, refresh_token, now)


def _refresh_token(
    context: GrantContext, client: Client, params: t.Mapping[str, str], now: float
) -> dict[str, t.Any]:
    token = _require(params, "refresh_token")
    requested = params.get("scope")
    wanted = split_scope(requested) if requested and requested.strip() else None

    def check_scope(session: TokenSession) -> None:
        # RFC 6749 section 6: a narrower scope for this access token, never a wider one.
        # Checked before the rotation, so a refused request leaves the token usable.
        if wanted and not set(wanted) <= context.settings.expand_scopes(session.scope.split()):
            raise InvalidScopeError()

    session, refresh_token = refresh_session(
        context.store,
        context.settings,
        client_id=client.client_id,
        refresh_token=token,
        now=now,
        check=check_scope,
    )
    scope = " ".join(wanted) if wanted else session.scope
    _still_valid(context, client, session, now)
    return _token_response(context, session, scope, refresh_token, now)


_GRANTS: dict[
    str, t.Callable[[GrantContext, Client, t.Mapping[str, str], float], dict[str, t.Any]]
] = {
    "client_credentials": _client_credentials,
    "password": _password,
    "refresh_token": _refresh_token,
}


def _token_response(
    context: GrantContext, session: TokenSession, scope: str, refresh_token: str, now: float
) -> dict[str, t.Any]:
    settings = context.settings
    access_token, expires_in = issue_access_token(
        context.keys,
        session,
        scope,
        issuer=context.issuer,
        audience=settings.audience or context.issuer,
        ttl=settings.access_token_ttl,
        now=now,
        clock_skew=settings.clock_skew,
    )
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
        "refresh_token": refresh_token,
    }
