"""The token endpoint's grants, without Flask: a parsed request in, a token response out.

- ``client_credentials``: RFC 6749 section 4.4
- ``password``: RFC 6749 section 4.3
- ``refresh_token``: RFC 6749 section 6, with rotation and replay detection
- the response: RFC 6749 section 5.1; errors are raised as ``OAuthError`` (section 5.2)
"""

from __future__ import annotations

import contextlib
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
from . import audit as events
from .security import kdf_slot
from .sessions import refresh_session
from .sessions import seat_cap
from .sessions import start_session
from .sessions import take_back_refresh
from .throttle import Throttle
from .tokens import issue_access_token
from .users import authenticate_user

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..stores.base import Store
    from .audit import Audit
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
    #: Failed-attempt throttling for this request's remote address.
    throttle: Throttle | None = None
    #: The audit trail, bound to this request's remote address.
    audit: Audit | None = None
    #: Called with the id of each session this request ended to make room for its own
    #: (``TOKENGUARD_SEAT_POLICY = "replace_oldest"``), so that this process refuses
    #: that session's tokens at once; the store tells the other processes.
    session_ended: t.Callable[[str], None] | None = None

    def emit(self, event: str, **fields: str | None) -> None:
        """Report an audit event of this request, if it has a trail."""
        if self.audit is not None:
            self.audit.emit(event, **fields)


def resolve_scope(settings: Settings, client: Client, requested: str | None) -> str:
    """Return the scope to grant, as requested (or the default); never expanded.

    No scope requested gives ``TOKENGUARD_DEFAULT_SCOPE``, or every scope of the client
    when it may not have the default: a fallback, never an error.
    """
    if requested is not None and len(requested) > MAX_SCOPE_LENGTH:
        raise InvalidScopeError()
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


#: The longest ``scope`` parameter accepted, and the most scopes it may name.
MAX_SCOPE_LENGTH = 1000
MAX_SCOPES = 20
#: The longest user name or password accepted.
MAX_CREDENTIAL_LENGTH = 256


def split_scope(scope: str) -> list[str]:
    """Split a ``scope`` parameter on spaces only (RFC 6749 3.3), dropping repeats.

    Tabs and other white space stay inside a token, which then matches no scope. A
    parameter over 1,000 characters or naming more than 20 scopes is ``invalid_scope``.
    """
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidScopeError()
    scopes = list(dict.fromkeys(s for s in scope.split(" ") if s))
    if len(scopes) > MAX_SCOPES:
        raise InvalidScopeError()
    return scopes


def _still_valid(context: GrantContext, client: Client, session: TokenSession, now: float) -> None:
    """Undo the session if an administrator changed the client meanwhile.

    Disabling, deleting or re-identifying a client changes its record, then ends its
    sessions; a new secret alone does not.
    A request that authenticated just before the change may start its session just
    after that sweep; reading the record again after starting closes the gap: either the
    sweep saw this session, or this read sees the change.
    """
    current = context.store.get_client(client.client_id)
    if (
        current is None
        or _session_terms(current) != _session_terms(client)
        or _cap_lowered(context, client, current)
    ):
        _end_changed(context, session, now, "client_changed")
        raise InvalidGrantError("The client changed during the request.")


def _cap_lowered(context: GrantContext, before: Client, after: Client) -> bool:
    """Whether the client's seat cap went down (``update-client`` then trims its seats,
    and may have missed the session this request just started); a raised cap ends none."""
    old, new = seat_cap(context.settings, before), seat_cap(context.settings, after)
    return new is not None and (old is None or new < old)


def _end_changed(context: GrantContext, session: TokenSession, now: float, reason: str) -> None:
    ended = context.store.end_session(session.session_id, now)
    if ended is not None and context.audit is not None:
        context.audit.session_ended(session, reason)


def _session_terms(client: Client) -> tuple[t.Any, ...]:
    """What ends a client's sessions when it changes: not its secret, which
    ``rotate-secret --keep-sessions`` replaces while its sessions go on, nor its name or
    alias; nor its seat cap, of which only a lower one counts (``_cap_lowered``)."""
    return (client.enabled, client.grants, client.scopes)


def _require(params: t.Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise InvalidRequestError(f"The {name} parameter is required.")
    return value


def _require_credential(params: t.Mapping[str, str], name: str) -> str:
    value = _require(params, name)
    if len(value) > MAX_CREDENTIAL_LENGTH:
        raise InvalidRequestError(f"The {name} parameter is longer than 256 characters.")
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
    return _new_session(context, client, client.client_id, scope, now)


def _password(
    context: GrantContext, client: Client, params: t.Mapping[str, str], now: float
) -> dict[str, t.Any]:
    username = _require_credential(params, "username")
    password = _require_credential(params, "password")
    scope = resolve_scope(context.settings, client, params.get("scope"))
    settings, store = context.settings, context.store
    # Counted per user name (known or not, so a refusal says nothing about who exists) and
    # remote address, reserved before the KDF: parallel guesses cannot slip past the
    # threshold, and a throttled guess costs the server no hash.
    reserved = None
    if context.throttle is not None:
        try:
            reserved = context.throttle.reserve("user", username, now)
        except LockedOutError:
            context.emit(
                events.AUTH_THROTTLED,
                client_id=client.client_id,
                subject=username,
                reason="slow_down",
            )
            raise
    password_hash = None
    with kdf_slot(settings.kdf_concurrency):
        if context.password_verifier is not None:
            subject = context.password_verifier(username, password)
        else:
            user = authenticate_user(store, username, password, cost=settings.password_hash_cost)
            subject = None if user is None else user.username
            password_hash = None if user is None else user.password_hash
    if not subject:
        # The reservation already counted this failure.
        context.emit(
            events.AUTH_FAILED, client_id=client.client_id, subject=username, reason="invalid_grant"
        )
        raise InvalidGrantError("The user name or password is wrong.")
    if context.throttle is not None:
        context.throttle.succeeded(reserved)

    def user_unchanged(session: TokenSession) -> None:
        # A password change or deletion ends the user's sessions; one that lands while
        # this request starts its session is seen here, as for clients.
        if password_hash is None:
            return
        current = store.get_user(str(subject))
        if current is None or current.password_hash != password_hash:
            _end_changed(context, session, now, "user_changed")
            raise InvalidGrantError("The user changed during the request.")

    return _new_session(context, client, str(subject), scope, now, also_check=user_unchanged)


def _new_session(
    context: GrantContext,
    client: Client,
    subject: str,
    scope: str,
    now: float,
    also_check: t.Callable[[TokenSession], None] | None = None,
) -> dict[str, t.Any]:
    """Start a session and answer with its tokens; a failure after the start ends it."""
    # What can fail without the store's session (the signing key's load) is done first,
    # so that a failure there takes no seat.
    context.keys.signer(now)
    # The client record as authenticated carries its own seat cap: no second lookup.
    session, refresh_token, replaced = start_session(
        context.store,
        context.settings,
        client=client,
        subject=subject,
        scope=scope,
        now=now,
        audit=context.audit,
    )
    if context.session_ended is not None:
        for old in replaced:
            context.session_ended(old.session_id)
    with _ending_on_failure(context, session, now):
        _still_valid(context, client, session, now)
        if also_check is not None:
            also_check(session)
        response = _token_response(context, session, scope, refresh_token, now)
    context.emit(
        events.TOKEN_ISSUED,
        client_id=client.client_id,
        subject=subject,
        session_id=session.session_id,
    )
    return response


@contextlib.contextmanager
def _ending_on_failure(
    context: GrantContext, session: TokenSession, now: float
) -> t.Iterator[None]:
    """End ``session`` if the request fails before its tokens are sent: its seat frees."""
    try:
        yield
    except BaseException:
        try:
            context.store.end_session(session.session_id, now)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise


@contextlib.contextmanager
def _taking_back_on_failure(
    context: GrantContext, session: TokenSession, sent: str, rotated: str, now: float
) -> t.Iterator[None]:
    """Take the rotation to ``rotated`` back if the request fails before its tokens are
    sent, so that the client's retry with ``sent`` refreshes: a failover or a lost read
    does not cost the client its session."""
    try:
        yield
    except BaseException:
        try:
            take_back_refresh(context.store, session, sent, rotated, now)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise


def _refresh_token(
    context: GrantContext, client: Client, params: t.Mapping[str, str], now: float
) -> dict[str, t.Any]:
    token = _require(params, "refresh_token")
    requested = params.get("scope")
    wanted = split_scope(requested) if requested is not None else None
    wanted = wanted or None

    def check_scope(session: TokenSession) -> None:
        # RFC 6749 section 6: a narrower scope for this access token, never a wider one.
        # Checked before the rotation, so a refused request leaves the token usable.
        if wanted and not set(wanted) <= context.settings.expand_scopes(session.scope.split()):
            raise InvalidScopeError()

    context.keys.signer(now)  # before the rotation, as for a new session
    session, refresh_token = refresh_session(
        context.store,
        context.settings,
        client_id=client.client_id,
        refresh_token=token,
        now=now,
        check=check_scope,
        audit=context.audit,
    )
    scope = " ".join(wanted) if wanted else session.scope
    # The client never receives the rotated refresh token if this fails: it keeps the one
    # it sent, which is made current again (a client change has ended the session).
    with _taking_back_on_failure(context, session, token, refresh_token, now):
        _still_valid(context, client, session, now)
        response = _token_response(context, session, scope, refresh_token, now)
    context.emit(
        events.TOKEN_REFRESHED,
        client_id=client.client_id,
        subject=session.subject,
        session_id=session.session_id,
    )
    return response


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
