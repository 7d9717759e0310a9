"""The error tree: configuration, administration, store and OAuth 2.0 protocol errors.

Every error here is plain data; nothing in this module knows HTTP. An ``OAuthError``
carries its RFC code (``error``), its ``status``, a fixed ``description``, the extra
``headers`` it needs (``Retry-After``, ``Allow``) and, for errors that answer with a
challenge, the ``WWW-Authenticate`` scheme and parameters. The web layer renders them:

- token endpoint errors as JSON, RFC 6749 section 5.2;
- resource errors with ``WWW-Authenticate: Bearer``, RFC 6750 section 3;
- revocation errors, RFC 7009 section 2.2.1.

Every ``error_description`` is a fixed string from this package; user input is never echoed.
"""

from __future__ import annotations

import math
import typing as t


class TokenGuardError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(TokenGuardError, ValueError):
    """A ``TOKENGUARD_*`` setting or store URL that cannot work."""


class AdminInputError(TokenGuardError, ValueError):
    """An administrator's input that cannot be accepted (a bad name, scope or grant)."""


class NotFoundError(TokenGuardError, LookupError):
    """The client, user or session an administrator named does not exist."""


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


class OAuthError(TokenGuardError):
    """An OAuth 2.0 error, as data: the RFC code, the status, a description, headers.

    Subclasses set ``error`` (the RFC code), ``status`` (the HTTP status) and a fixed
    ``description``; ``headers`` holds per-instance headers such as ``Retry-After``.
    ``challenge`` names the ``WWW-Authenticate`` scheme (``"Basic"``, ``"Bearer"``) when
    the response carries one; the renderer adds the realm and ``challenge_params()``.
    """

    error: str = "invalid_request"
    status: int = 400
    description: str = "The request is invalid."
    challenge: str | None = None

    def __init__(
        self,
        description: str | None = None,
        *,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        #: The fixed, human-readable ``error_description``.
        self.description = description or type(self).description
        #: Headers this instance adds (``Retry-After``, ``Allow``).
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.description)

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.description}"

    def to_dict(self) -> dict[str, t.Any]:
        """Return the RFC 6749 5.2 body."""
        return {"error": self.error, "error_description": self.description}

    def challenge_params(self) -> list[tuple[str, str]]:
        """The ``WWW-Authenticate`` parameters after the realm, in order."""
        return []


class InvalidRequestError(OAuthError):
    """Malformed body, wrong content type, repeated or missing parameter."""

    error = "invalid_request"
    description = "The request is missing a parameter or is malformed."


class HTTPSRequiredError(InvalidRequestError):
    """Plain HTTP reached an endpoint that needs TLS."""

    description = "HTTPS required."


class BodyTooLargeError(InvalidRequestError):
    """The request body is larger than ``TOKENGUARD_MAX_BODY`` (413)."""

    status = 413
    description = "The request body is too large."


class MethodNotAllowedError(InvalidRequestError):
    """An endpoint that accepts POST only was called with another method (405)."""

    status = 405
    description = "This endpoint accepts POST only."

    def __init__(self) -> None:
        super().__init__(headers={"Allow": "POST, OPTIONS"})


class InvalidClientError(OAuthError):
    """Client authentication failed (RFC 6749 5.2).

    With HTTP Basic the status is 401 and a ``WWW-Authenticate: Basic`` challenge is sent.
    """

    error = "invalid_client"
    description = "Client authentication failed."

    def __init__(self, description: str | None = None, *, used_basic: bool = False) -> None:
        super().__init__(description)
        #: Whether the client authenticated with HTTP Basic.
        self.used_basic = used_basic
        self.status = 401 if used_basic else 400
        self.challenge = "Basic" if used_basic else None


class InvalidGrantError(OAuthError):
    """Bad password; expired, used, ended or revoked refresh token."""

    error = "invalid_grant"
    description = "The grant is invalid, expired or revoked."


class LockedOutError(OAuthError):
    """Too many failed attempts from this address: 429 ``slow_down`` with ``Retry-After``."""

    error = "slow_down"
    status = 429
    description = "Too many failed attempts. Try again later."

    def __init__(self, retry_after: float) -> None:
        super().__init__(headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class KdfBusyError(OAuthError):
    """Every password-check slot stayed busy: 503 ``temporarily_unavailable``, ``Retry-After``."""

    error = "temporarily_unavailable"
    status = 503
    description = "The server is busy checking passwords. Try again shortly."

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(headers={"Retry-After": str(max(1, retry_after))})


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
    """Every license seat is held; ``Retry-After`` says when the next one frees."""

    error = "license_unavailable"
    description = (
        "No license is free for this scope. Log off another session, wait for one to "
        "expire, or request scope view, which needs no license."
    )

    def __init__(self, retry_after: int) -> None:
        super().__init__(headers={"Retry-After": str(max(1, int(retry_after)))})
        #: Seconds until the earliest held seat expires.
        self.retry_after = max(1, int(retry_after))


class TemporarilyUnavailableError(OAuthError):
    """The store could not be reached: 503 with ``Retry-After``, never a 500."""

    error = "temporarily_unavailable"
    status = 503
    description = "The token store is unavailable. Try again shortly."

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})


class BearerError(OAuthError):
    """An RFC 6750 resource error: ``WWW-Authenticate: Bearer`` with the error code."""

    challenge = "Bearer"

    def challenge_params(self) -> list[tuple[str, str]]:
        return [("error", self.error), ("error_description", self.description)]


class MissingTokenError(BearerError):
    """No credentials at all: 401 with a bare challenge (RFC 6750 3.1)."""

    error = "invalid_token"
    status = 401
    description = "An access token is required."

    def challenge_params(self) -> list[tuple[str, str]]:
        # RFC 6750 3.1: no error code in the challenge when no credentials were sent;
        # the JSON body keeps the uniform shape.
        return []


class InvalidTokenError(BearerError):
    """Malformed, tampered, expired, revoked or wrongly signed access token."""

    error = "invalid_token"
    status = 401
    description = "The access token is invalid, expired or revoked."


class InsufficientScopeError(BearerError):
    """A valid token that lacks a scope the route needs (403)."""

    error = "insufficient_scope"
    status = 403
    description = "The access token lacks a scope this resource requires."

    def __init__(self, scopes: t.Iterable[str]) -> None:
        #: The scopes the route requires.
        self.scopes = tuple(scopes)
        super().__init__()

    def challenge_params(self) -> list[tuple[str, str]]:
        return [*super().challenge_params(), ("scope", " ".join(self.scopes))]

    def to_dict(self) -> dict[str, t.Any]:
        return {**super().to_dict(), "scope": " ".join(self.scopes)}
