"""The error tree: configuration, store and OAuth 2.0 protocol errors.

OAuth errors are werkzeug ``HTTPException`` subclasses that render themselves as the RFC
requires, so no error handler needs registering:

- token endpoint errors as JSON, RFC 6749 section 5.2;
- resource errors with ``WWW-Authenticate: Bearer``, RFC 6750 section 3;
- revocation errors, RFC 7009 section 2.2.1.

Every ``error_description`` is a fixed string from this package; user input is never echoed.
"""

from __future__ import annotations

import json
import math
import typing as t

from werkzeug.exceptions import HTTPException

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import WSGIEnvironment


class TokenGuardError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(TokenGuardError, ValueError):
    """A ``TOKENGUARD_*`` setting or store URL that cannot work."""


class StoreError(TokenGuardError):
    """The store's engine failed or could not be reached.

    ``original`` holds the driver's exception, as ``limits.errors.StorageError`` does.
    """

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        #: The driver exception that caused this one, if any.
        self.original = original


class ConflictError(TokenGuardError):
    """A record with that name or id exists already."""


class OAuthError(TokenGuardError, HTTPException):
    """An OAuth 2.0 error that renders itself as a JSON response.

    Subclasses set ``error`` (the RFC code), ``code`` (the HTTP status) and a fixed
    ``description``; ``extra_headers`` adds per-instance headers such as ``Retry-After``.
    """

    error: str = "invalid_request"
    code: int = 400
    description: str = "The request is invalid."

    def __init__(
        self,
        description: str | None = None,
        *,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        HTTPException.__init__(self, description or type(self).description)
        #: Headers this instance adds (``Retry-After``, ``WWW-Authenticate``).
        self.extra_headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.code} {self.error}: {self.description}"

    def to_dict(self) -> dict[str, t.Any]:
        """Return the RFC 6749 5.2 body."""
        return {"error": self.error, "error_description": self.description}

    def get_body(self, environ: WSGIEnvironment | None = None, scope: dict | None = None) -> str:
        return json.dumps(self.to_dict())

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict | None = None
    ) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Pragma", "no-cache"),
        ]
        headers.extend(self.extra_headers.items())
        return headers


class InvalidRequestError(OAuthError):
    """Malformed body, wrong content type, repeated or missing parameter."""

    error = "invalid_request"
    description = "The request is missing a parameter or is malformed."


class HTTPSRequiredError(InvalidRequestError):
    """Plain HTTP reached an endpoint that needs TLS."""

    description = "HTTPS required."


class InvalidClientError(OAuthError):
    """Client authentication failed (RFC 6749 5.2).

    With HTTP Basic the status is 401 and ``WWW-Authenticate: Basic`` is sent.
    """

    error = "invalid_client"
    description = "Client authentication failed."

    def __init__(
        self,
        description: str | None = None,
        *,
        used_basic: bool = False,
        realm: str = "tokenguard",
    ) -> None:
        headers = {"WWW-Authenticate": f'Basic realm="{realm}"'} if used_basic else None
        super().__init__(description, headers=headers)
        self.code = 401 if used_basic else 400


class InvalidGrantError(OAuthError):
    """Bad password; expired, used, ended or revoked refresh token."""

    error = "invalid_grant"
    description = "The grant is invalid, expired or revoked."


class LockedOutError(InvalidGrantError):
    """Too many failed password attempts for this user name; ``Retry-After`` says how long."""

    description = "Too many failed sign-ins for this user. Try again later."

    def __init__(self, retry_after: float) -> None:
        super().__init__(headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class UnauthorizedClientError(OAuthError):
    """The client may not use this grant type."""

    error = "unauthorized_client"
    description = "This client is not allowed to use this grant type."


class UnsupportedGrantTypeError(OAuthError):
    """The grant type is unknown to this server."""

    error = "unsupported_grant_type"
    description = "The grant type is not supported."


class InvalidScopeError(OAuthError):
    """An unknown scope, or one the client may not have."""

    error = "invalid_scope"
    description = "The requested scope is invalid, unknown, or not allowed for this client."


class LicenseUnavailableError(OAuthError):
    """Every licence seat is held; ``Retry-After`` says when the next one frees."""

    error = "license_unavailable"
    description = (
        "No licence is free for this scope. Log off another session, wait for one to "
        "expire, or request scope view, which needs no licence."
    )

    def __init__(self, retry_after: int) -> None:
        super().__init__(headers={"Retry-After": str(max(1, int(retry_after)))})
        #: Seconds until the earliest held seat expires.
        self.retry_after = max(1, int(retry_after))


class UnsupportedTokenTypeError(OAuthError):
    """RFC 7009 2.2.1: the server cannot revoke this token type."""

    error = "unsupported_token_type"
    description = "This token type cannot be revoked."


class TemporarilyUnavailableError(OAuthError):
    """The store could not be reached: 503 with ``Retry-After``, never a 500."""

    error = "temporarily_unavailable"
    code = 503
    description = "The token store is unavailable. Try again shortly."

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})


class BearerError(OAuthError):
    """An RFC 6750 resource error: ``WWW-Authenticate: Bearer`` with the error code."""

    realm: str = "tokenguard"

    def __init__(self, description: str | None = None, *, realm: str = "tokenguard") -> None:
        super().__init__(description)
        self.realm = realm
        self.extra_headers["WWW-Authenticate"] = self.challenge()

    def challenge(self) -> str:
        """Return the ``WWW-Authenticate`` value (RFC 6750 3)."""
        return (
            f'Bearer realm="{self.realm}", error="{self.error}", '
            f'error_description="{self.description}"'
        )


class MissingTokenError(BearerError):
    """No credentials at all: 401 with a bare challenge (RFC 6750 3.1)."""

    error = "invalid_token"
    code = 401
    description = "An access token is required."

    def challenge(self) -> str:
        # RFC 6750 3.1: no error code in the challenge when no credentials were sent;
        # the JSON body keeps the uniform shape.
        return f'Bearer realm="{self.realm}"'


class InvalidTokenError(BearerError):
    """Malformed, tampered, expired, revoked or wrongly signed access token."""

    error = "invalid_token"
    code = 401
    description = "The access token is invalid, expired or revoked."


class InsufficientScopeError(BearerError):
    """A valid token that lacks a scope the route needs (403)."""

    error = "insufficient_scope"
    code = 403
    description = "The access token lacks a scope this resource requires."

    def __init__(self, scopes: t.Iterable[str], *, realm: str = "tokenguard") -> None:
        #: The scopes the route requires.
        self.scopes = tuple(scopes)
        super().__init__(realm=realm)

    def challenge(self) -> str:
        return super().challenge() + f', scope="{" ".join(self.scopes)}"'

    def to_dict(self) -> dict[str, t.Any]:
        return {**super().to_dict(), "scope": " ".join(self.scopes)}
