"""The ``tokenguard`` blueprint: HTTP parsing and responses only; the rules live elsewhere.

- ``POST /token``: RFC 6749 sections 2.3.1 (client authentication), 4.3, 4.4, 5, 6
- ``POST /logoff``: ends a session (the seeds' logoff endpoint)
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

from ..core.clients import authenticate_client
from ..core.clients import ClientCredentials
from ..core.clients import GRANT_TYPES
from ..core.grants import grant_token
from ..core.grants import GrantContext
from ..core.security import hash_secret
from ..core.sessions import end_session_by_refresh_token
from ..errors import InvalidClientError
from ..errors import InvalidRequestError
from ..errors import InvalidTokenError
from ..errors import StoreError
from ..errors import TemporarilyUnavailableError
from ..models import Client
from .guard import authorize
from .guard import check_https
from .guard import parse_bearer

if t.TYPE_CHECKING:  # pragma: no cover
    from .extension import AppState

bp = Blueprint("tokenguard", __name__)
log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _BodyTooLargeError(InvalidRequestError):
    code = 413
    description = "The request body is too large."


def _state() -> AppState:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions["tokenguard"].state(app)


@bp.before_request
def _check_transport() -> None:
    state = _state()
    request.max_content_length = state.settings.max_body
    check_https(state.settings, request.environ)


@bp.after_request
def _see_own_revocations(response: Response) -> Response:
    # A token request may have ended a session (refresh replay), as logoff and revoke do:
    # this process must refuse its tokens at once, not after the revocation lag.
    if request.method == "POST":
        try:
            _state().sync_revocations()
        except StoreError:
            pass  # the next poll catches up, within the lag
    return response


@bp.errorhandler(StoreError)
def _store_failed(error: StoreError) -> Response:
    log.warning("store unavailable: %s", error)
    return TemporarilyUnavailableError().get_response()


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
        raise _BodyTooLargeError() from None
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


def read_client_credentials(params: dict[str, str], realm: str) -> ClientCredentials | None:
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
                "The Basic credentials are malformed.", used_basic=True, realm=realm
            ) from None
        raw_id, colon, raw_secret = decoded.partition(":")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if not colon or not client_id:
            raise InvalidClientError(
                "The Basic credentials are malformed.", used_basic=True, realm=realm
            )
        if body_secret is not None or (body_id is not None and body_id != client_id):
            raise InvalidRequestError("Use one client authentication method only.")
        return ClientCredentials(client_id, secret, used_basic=True)
    if body_id:
        return ClientCredentials(body_id, body_secret)
    if body_secret is not None:
        raise InvalidRequestError("client_secret needs a client_id.")
    return None


def _authenticated_client(params: dict[str, str]) -> Client:
    state = _state()
    credentials = read_client_credentials(params, state.settings.realm)
    if credentials is None:
        raise InvalidClientError("Client authentication is required.")
    return authenticate_client(state.store, credentials, state.settings.realm)


def _issuer() -> str:
    return _state().settings.issuer or request.host_url.rstrip("/")


class _MethodNotAllowedError(InvalidRequestError):
    code = 405
    description = "This endpoint accepts POST only."


@bp.route("/token", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/logoff", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/revoke", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/introspect", methods=["GET", "PUT", "PATCH", "DELETE"])
def _post_only() -> Response:
    # Routed here, rather than left to werkzeug's HTML 405, so the error is JSON.
    raise _MethodNotAllowedError(headers={"Allow": "POST, OPTIONS"})


@bp.post("/token")
def token() -> Response:
    """Issue tokens (RFC 6749 section 5.1)."""
    state = _state()
    params = read_params()
    if "grant_type" not in params:
        raise InvalidRequestError("The grant_type parameter is required.")
    client = _authenticated_client(params)
    context = GrantContext(
        settings=state.settings,
        store=state.store,
        keys=state.keys,
        password_verifier=state.password_verifier,
        issuer=_issuer(),
    )
    body = grant_token(context, client, params, time.time())
    log.info("token issued: client=%s grant=%s", client.client_id, params.get("grant_type"))
    response = jsonify(body)
    response.headers.update(_NO_STORE)
    return response


@bp.post("/logoff")
def logoff() -> Response:
    """End a session at once: its seat frees, its refresh and access tokens stop working."""
    state = _state()
    now = time.time()
    realm = state.settings.realm
    if request.headers.get("Authorization", "").lower().startswith("bearer"):
        access = authorize(state, request.environ, ())
        state.store.end_session(access.session_id, now)
        session_id = access.session_id
    else:
        try:
            refresh_token = read_params().get("refresh_token")
        except InvalidRequestError:
            refresh_token = None  # an unreadable body carries no token: 401 below
        if not refresh_token:
            parse_bearer(None, realm)  # raises the bare 401 challenge
        ended = end_session_by_refresh_token(state.store, refresh_token, now)
        if ended is None:
            raise InvalidTokenError(realm=realm)
        session_id = ended.session_id
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
    client = _authenticated_client(params)
    token = params.get("token") or params.get("refresh_token") or params.get("access_token")
    if not token:
        raise InvalidRequestError("The token parameter is required.")
    now = time.time()
    found = state.store.find_refresh(hash_secret(token), now)
    if found is not None:
        session = found[0]
        if session.client_id == client.client_id:
            state.store.end_session(session.session_id, now)
    else:
        try:
            access = state.verifier.decode(token, now)
        except InvalidTokenError:
            access = None
        if access is not None and access.client_id == client.client_id:
            # Kept while the guard still accepts the token: until exp + clock skew.
            state.store.revoke(access.token_id, access.expires_at + state.settings.clock_skew, now)
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
    now = time.time()
    body: dict[str, t.Any] = {"active": False}
    found = state.store.find_refresh(hash_secret(token), now)
    if found is not None:
        session, is_current = found
        if is_current and session.client_id == client.client_id:
            body = {
                "active": True,
                "token_type": "refresh_token",
                "scope": session.scope,
                "client_id": session.client_id,
                "sub": session.subject,
                "username": session.subject,
                "exp": int(session.expires_at),
                "iat": int(session.created_at),
                "sid": session.session_id,
            }
    else:
        try:
            access = state.verifier.verify(token, now)
        except InvalidTokenError:
            access = None
        if access is not None and access.client_id == client.client_id:
            claims = access.claims
            body = {
                "active": True,
                "token_type": "Bearer",
                "scope": claims.get("scope", ""),
                "client_id": access.client_id,
                "sub": access.subject,
                "username": access.subject,
                "exp": claims["exp"],
                "iat": claims["iat"],
                "iss": claims.get("iss"),
                "aud": claims.get("aud"),
                "jti": access.token_id,
                "sid": access.session_id,
            }
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
