"""Revocation (RFC 7009) and introspection (RFC 7662): which token a client may end or see.

A client acts only on its own tokens. Unknown tokens and tokens of another client are
treated alike (nothing revoked, ``{"active": false}``), so neither endpoint tells anybody
which tokens exist.
"""

from __future__ import annotations

import typing as t

from ..errors import InvalidTokenError
from .security import hash_secret

if t.TYPE_CHECKING:  # pragma: no cover
    from ..models import AccessToken
    from ..models import Client
    from ..stores.base import Store
    from .audit import Audit
    from .tokens import TokenVerifier


def revoke_token(
    store: Store,
    verifier: TokenVerifier,
    client: Client,
    token: str,
    *,
    clock_skew: float,
    now: float,
    audit: Audit | None = None,
) -> str | None:
    """Revoke ``token`` for ``client``; return what was revoked.

    A refresh token ends its session (``"refresh_token"``); an access token is put on the
    revocation list until its expiry plus ``clock_skew``, while the guard would still
    accept it (``"access_token"``). None when nothing of this client's matched. With
    ``audit``, an ended session is reported as ``session.ended`` with reason ``revoked``.
    """
    found = store.find_refresh(hash_secret(token), now)
    if found is not None:
        session = found[0]
        if session.client_id != client.client_id:
            return None
        ended = store.end_session(session.session_id, now)
        if ended is not None and audit is not None:
            audit.session_ended(ended, "revoked")
        return "refresh_token"
    access = _decoded(verifier, token, now)
    if access is None or access.client_id != client.client_id:
        return None
    store.revoke(access.token_id, access.expires_at + clock_skew, now)
    return "access_token"


def introspect_token(
    store: Store, verifier: TokenVerifier, client: Client, token: str, *, now: float
) -> dict[str, t.Any]:
    """The RFC 7662 section 2.2 answer about ``token`` for ``client``."""
    found = store.find_refresh(hash_secret(token), now)
    if found is not None:
        session, is_current = found
        if not is_current or session.client_id != client.client_id:
            return {"active": False}
        return {
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
    try:
        access = verifier.verify(token, now)
    except InvalidTokenError:
        return {"active": False}
    if access.client_id != client.client_id:
        return {"active": False}
    claims = access.claims
    return {
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


def _decoded(verifier: TokenVerifier, token: str, now: float) -> AccessToken | None:
    try:
        return verifier.decode(token, now)
    except InvalidTokenError:
        return None
