"""Render an ``OAuthError`` as an HTTP response: the one place errors meet HTTP.

The body is the RFC 6749 section 5.2 JSON, the response is never cached, and errors that
answer with a challenge get ``WWW-Authenticate`` with the realm (RFC 6750 section 3,
RFC 6749 section 5.2 for HTTP Basic). The Flask error handler and
``TokenGuardMiddleware`` both call :func:`render`.
"""

from __future__ import annotations

import json
import typing as t

from ..errors import OAuthError

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from flask import Response

_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def challenge(error: OAuthError, realm: str) -> str | None:
    """The ``WWW-Authenticate`` value for ``error``, or None when it has no challenge."""
    if error.challenge is None:
        return None
    params = [("realm", realm), *error.challenge_params()]
    return error.challenge + " " + ", ".join(f'{key}="{value}"' for key, value in params)


def render(error: OAuthError, realm: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Return ``(status, headers, body)`` for ``error``."""
    body = json.dumps(error.to_dict()).encode("utf-8")
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Pragma", "no-cache"),
    ]
    value = challenge(error, realm)
    if value is not None:
        headers.append(("WWW-Authenticate", value))
    headers.extend(error.headers.items())
    return error.status, headers, body


def flask_response(error: OAuthError, realm: str) -> Response:
    """``error`` as a Flask ``Response``."""
    from flask import Response

    status, headers, body = render(error, realm)
    headers = [(name, value) for name, value in headers if name != "Content-Length"]
    return Response(body, status=status, headers=headers)


def wsgi_response(error: OAuthError, realm: str, start_response: StartResponse) -> list[bytes]:
    """Answer a WSGI request with ``error``."""
    status, headers, body = render(error, realm)
    start_response(f"{status} {_STATUS_TEXT.get(status, 'Error')}", headers)
    return [body]
