"""The ``tokenguard`` blueprint: HTTP parsing and responses only; the rules live in ``core``.

- ``POST /token``: RFC 6749 sections 2.3.1 (client authentication), 4.3, 4.4, 5, 6
- ``POST /logoff``: ends a session
- ``POST /revoke``: RFC 7009
- ``POST /introspect``: RFC 7662
- ``GET /.well-known/oauth-authorization-server``: RFC 8414
- ``GET /jwks.json``: RFC 7517, the keys that verify RFC 9068 access tokens
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import typing as t
from urllib.parse import parse_qsl
from urllib.parse import unquote_plus

from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import request
from flask import Response
from flask import url_for
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.audit import Audit
from ..core.clients import authenticate_client
from ..core.clients import ClientCredentials
from ..core.clients import GRANT_TYPES
from ..core.grants import grant_token
from ..core.grants import GrantContext
from ..core.issuer import request_issuer
from ..core.sessions import end_session_by_refresh_token
from ..core.throttle import Throttle
from ..core.token_status import introspect_token
from ..core.token_status import revoke_token
from ..errors import BodyTooLargeError
from ..errors import InvalidClientError
from ..errors import InvalidGrantError
from ..errors import InvalidRequestError
from ..errors import InvalidTokenError
from ..errors import MethodNotAllowedError
from ..errors import MissingTokenError
from ..errors import StoreError
from ..errors import TemporarilyUnavailableError
from ..models import Client
from .guard import authorize
from .guard import check_https
from .state import current_state as _state

bp = Blueprint("tokenguard", __name__)
log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@bp.before_request
def _check_transport() -> None:
    state = _state()
    request.max_content_length = state.settings.max_body
    check_https(state.settings, request.environ)


def _see_own_revocations() -> None:
    # This request ended a session somewhere in the grant logic (a refresh replay, a
    # client or user changed under it) or revoked a token: this process must refuse the
    # tokens at once, not after the revocation lag. Requests that ended nothing, junk
    # included, never wait for the store here.
    try:
        _state().sync_revocations()
    except StoreError:
        pass  # the next poll catches up, within the lag


@bp.errorhandler(StoreError)
def _store_failed(error: StoreError) -> t.Any:
    log.warning("store unavailable: %s", error)
    # Through the app's OAuthError handler: the built-in renderer or the app's own.
    return current_app.handle_user_exception(TemporarilyUnavailableError())


def _reject_duplicates(pairs: list[tuple[str, t.Any]]) -> dict[str, t.Any]:
    result: dict[str, t.Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequestError("A parameter was sent more than once.")
        result[key] = value
    return result


def read_params() -> dict[str, str]:
    """Parse a form or JSON body into single string values (RFC 6749 section 3.2).

    Repeated parameters, other content types, broken JSON and non-string values are
    ``invalid_request``; query-string parameters are ignored.
    """
    mimetype = request.mimetype
    try:
        if mimetype == "application/x-www-form-urlencoded":
            # Parsed here, not by werkzeug, which keeps invalid UTF-8 as literal text.
            try:
                pairs = parse_qsl(
                    request.get_data(cache=True).decode("ascii"),
                    keep_blank_values=True,
                    encoding="utf-8",
                    errors="strict",
                )
            except (UnicodeDecodeError, ValueError):
                raise InvalidRequestError("The body is not valid UTF-8 form data.") from None
            params: dict[str, t.Any] = _reject_duplicates(pairs)
        elif mimetype == "application/json":
            try:
                parsed = json.loads(
                    request.get_data(cache=True), object_pairs_hook=_reject_duplicates
                )
            except (ValueError, RecursionError):
                raise InvalidRequestError("The JSON body is malformed.") from None
            if not isinstance(parsed, dict):
                raise InvalidRequestError("The JSON body must be an object.")
            params = parsed
        elif not request.content_length and not request.headers.get("Transfer-Encoding"):
            params = {}
        else:
            raise InvalidRequestError(
                "The body must be application/x-www-form-urlencoded or application/json."
            )
    except RequestEntityTooLarge:
        raise BodyTooLargeError() from None
    for key, value in params.items():
        if not isinstance(value, str):
            raise InvalidRequestError("Every parameter must be a string.")
        if "\x00" in value or "\x00" in key:
            raise InvalidRequestError("A parameter holds a NUL character.")
        try:
            value.encode("utf-8")  # JSON may carry lone surrogates, which no store can keep
        except UnicodeEncodeError:
            raise InvalidRequestError("A parameter is not valid Unicode.") from None
    return params


def read_client_credentials(params: dict[str, str]) -> ClientCredentials | None:
    """Client authentication by HTTP Basic or body parameters, one method only.

    Basic credentials are form-urlencoded before base64 (RFC 6749 section 2.3.1). A
    ``client_id`` in the body beside Basic is tolerated when it names the same client,
    as several client libraries send it; a body secret beside Basic is refused.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    body_id = params.pop("client_id", None)
    body_secret = params.pop("client_secret", None)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidClientError(
                "The Basic credentials are malformed.", used_basic=True
            ) from None
        raw_id, colon, raw_secret = decoded.partition(":")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if not colon or not client_id:
            raise InvalidClientError("The Basic credentials are malformed.", used_basic=True)
        if body_secret is not None or (body_id is not None and body_id != client_id):
            raise InvalidRequestError("Use one client authentication method only.")
        return ClientCredentials(client_id, secret, used_basic=True)
    if body_id:
        return ClientCredentials(body_id, body_secret)
    if body_secret is not None:
        raise InvalidRequestError("client_secret needs a client_id.")
    return None


def _throttle() -> Throttle:
    state = _state()
    # REMOTE_ADDR as the server gives it: waitress has already applied the trusted proxy.
    return Throttle(state.store, state.settings, request.remote_addr or "")


def _audit() -> Audit:
    # The address as for the throttle: waitress's, after the trusted proxy.
    return _state().audit.bind(remote_addr=request.remote_addr)


def _authenticated_client(
    params: dict[str, str], throttle: Throttle | None = None, audit: Audit | None = None
) -> Client:
    state = _state()
    credentials = read_client_credentials(params)
    if credentials is None:
        raise InvalidClientError("Client authentication is required.")
    return authenticate_client(
        state.store, credentials, throttle or _throttle(), now=time.time(), audit=audit or _audit()
    )


def _issuer() -> str:
    """``TOKENGUARD_ISSUER``, or the request's host URL when that is loopback or
    ``SERVER_NAME``; any other host may not name the issuer (400)."""
    settings = _state().settings
    if settings.issuer:
        return settings.issuer
    issuer = request_issuer(request.host_url, settings.server_name)
    if issuer is None:
        raise InvalidRequestError("TOKENGUARD_ISSUER is not configured")
    return issuer


@bp.route("/token", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/logoff", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/revoke", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/introspect", methods=["GET", "PUT", "PATCH", "DELETE"])
def _post_only() -> Response:
    # Routed here, rather than left to werkzeug's HTML 405, so the error is JSON.
    raise MethodNotAllowedError()


@bp.post("/token")
def token() -> Response:
    """Issue tokens (RFC 6749 section 5.1)."""
    state = _state()
    params = read_params()
    if "grant_type" not in params:
        raise InvalidRequestError("The grant_type parameter is required.")
    issuer = _issuer()
    throttle = _throttle()
    audit = _audit()
    client = _authenticated_client(params, throttle, audit)
    context = GrantContext(
        settings=state.settings,
        store=state.store,
        keys=state.keys,
        password_verifier=state.password_verifier,
        issuer=issuer,
        throttle=throttle,
        audit=audit,
        # Sessions replaced at the client's seat cap: their tokens stop here at once.
        session_ended=state.note_ended_session,
    )
    try:
        body = grant_token(context, client, params, time.time())
    except InvalidGrantError:
        # Every grant failure that ends a session is an invalid_grant.
        _see_own_revocations()
        raise
    log.info("token issued: client=%s grant=%s", client.client_id, params.get("grant_type"))
    response = jsonify(body)
    response.headers.update(_NO_STORE)
    return response


@bp.post("/logoff")
def logoff() -> Response:
    """End a session at once: its seat frees, its refresh and access tokens stop working."""
    state = _state()
    now = time.time()
    if request.headers.get("Authorization", "").lower().startswith("bearer"):
        access = authorize(state, request.environ, ())
        ended = state.store.end_session(access.session_id, now)
        session_id = access.session_id
    else:
        try:
            refresh_token = read_params().get("refresh_token")
        except InvalidRequestError:
            refresh_token = None  # an unreadable body carries no token: 401 below
        if not refresh_token:
            raise MissingTokenError()  # the bare 401 challenge
        ended = end_session_by_refresh_token(state.store, refresh_token, now)
        if ended is None:
            raise InvalidTokenError()
        session_id = ended.session_id
    state.note_ended_session(session_id)
    if ended is not None:  # None: the bearer's session had ended already
        _audit().session_ended(ended, "logoff")
    log.info("session ended by logoff: session=%s", session_id)
    return Response(status=204, headers=_NO_STORE)


@bp.post("/revoke")
def revoke() -> Response:
    """RFC 7009: revoke a refresh token (its session ends) or one access token.

    Unknown tokens, and tokens of another client, get the same empty 200 (section 2.2),
    so the endpoint tells nobody which tokens exist.
    """
    state = _state()
    params = read_params()
    audit = _audit()
    client = _authenticated_client(params, audit=audit)
    token = params.get("token") or params.get("refresh_token") or params.get("access_token")
    if not token:
        raise InvalidRequestError("The token parameter is required.")
    revoked = revoke_token(
        state.store,
        state.verifier,
        client,
        token,
        clock_skew=state.settings.clock_skew,
        now=time.time(),
        audit=audit,
    )
    if revoked is not None:
        _see_own_revocations()
    return Response(status=200, headers=_NO_STORE)


@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662: whether a token is live, and its claims for the client it was issued to."""
    state = _state()
    params = read_params()
    client = _authenticated_client(params)
    token = params.get("token")
    if not token:
        raise InvalidRequestError("The token parameter is required.")
    body = introspect_token(state.store, state.verifier, client, token, now=time.time())
    response = jsonify(body)
    response.headers.update(_NO_STORE)
    return response


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    """RFC 8414 metadata, derived from the live configuration and URL prefix."""
    settings = _state().settings
    base = _issuer()

    def endpoint(name: str) -> str:
        return base + url_for(f"tokenguard.{name}")

    auth_methods = ["client_secret_basic", "client_secret_post", "none"]
    return jsonify(
        {
            "issuer": base,
            "token_endpoint": endpoint("token"),
            "revocation_endpoint": endpoint("revoke"),
            "introspection_endpoint": endpoint("introspect"),
            "jwks_uri": endpoint("jwks"),
            "grant_types_supported": list(GRANT_TYPES),
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": list(settings.scopes),
            "response_types_supported": [],
        }
    )


@bp.get("/jwks.json")
def jwks() -> Response:
    """The public keys that verify access tokens (RFC 7517 section 5)."""
    response = jsonify(_state().keys.jwks(time.time()))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
