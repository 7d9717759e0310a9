"""Plain records that the stores keep and the domain modules pass around.

Frozen dataclasses with no behaviour beyond small predicates; hashes and private keys are
left out of ``repr`` so that a stray log line cannot leak them. Times are float seconds
since the epoch, always passed in as ``now`` so that every backend agrees.
"""

from __future__ import annotations

import dataclasses
import typing as t


@dataclasses.dataclass(frozen=True)
class Client:
    """An API client registered by an administrator."""

    #: The id sent in token requests; ``A-Z a-z 0-9 _ -`` only.
    client_id: str
    #: Display name, for people.
    name: str
    #: SHA-256 hex of the secret; ``None`` for a public client.
    secret_hash: str | None = dataclasses.field(default=None, repr=False)
    #: A second name accepted in place of the id.
    alias: str | None = None
    #: Grant types this client may use.
    grants: tuple[str, ...] = ("client_credentials", "refresh_token")
    #: Scopes this client may be granted.
    scopes: tuple[str, ...] = ("view", "all")
    #: Disabled clients cannot authenticate.
    enabled: bool = True
    created_at: float = 0.0
    #: This client's own cap on the seats it may hold at once; None = the configured
    #: default (``TOKENGUARD_MAX_SEATS_PER_CLIENT``).
    max_seats: int | None = None

    @property
    def is_public(self) -> bool:
        """A public client has no secret and authenticates by id alone."""
        return self.secret_hash is None


@dataclasses.dataclass(frozen=True)
class User:
    """A user of the built-in table for the password grant."""

    username: str
    #: Self-describing scrypt hash (see ``security.hash_password``).
    password_hash: str = dataclasses.field(repr=False)
    created_at: float = 0.0
    #: An administrator of the admin console (``create-user --admin``).
    admin: bool = False


@dataclasses.dataclass(frozen=True)
class TokenSession:
    """A session: started by a token request, continued by refresh, holding a seat if licensed."""

    session_id: str
    client_id: str
    #: The user name (password grant) or the client id (client credentials).
    subject: str
    #: The granted scope, space-separated as requested.
    scope: str
    #: Whether this session counts against ``TOKENGUARD_LICENSES``.
    holds_seat: bool
    #: SHA-256 hex of the current refresh token.
    refresh_hash: str = dataclasses.field(repr=False)
    created_at: float = 0.0
    #: End of the refresh token's idle lifetime; extended by each token request.
    expires_at: float = 0.0

    def is_live(self, now: float) -> bool:
        """True while the session has not expired."""
        return self.expires_at > now


@dataclasses.dataclass(frozen=True)
class SeatOutcome:
    """What ``Store.start_session`` did: started the session or not, and what it replaced.

    True in a boolean context when the session started.
    """

    started: bool
    #: Why no seat was given: ``"pool"`` (every seat of ``TOKENGUARD_LICENSES`` taken) or
    #: ``"client"`` (the client holds as many as its cap allows); None when started.
    refused: t.Literal["pool", "client"] | None = None
    #: The client's oldest seat-holding sessions that ended to make room (``replace_oldest``).
    replaced: tuple[TokenSession, ...] = ()

    def __bool__(self) -> bool:
        return self.started


@dataclasses.dataclass(frozen=True)
class AdminSession:
    """A signed-in administrator of the admin console, kept server-side in the store."""

    #: SHA-256 hex of the session id the browser holds in its cookie.
    session_hash: str = dataclasses.field(repr=False)
    username: str = ""
    created_at: float = 0.0
    #: End of its idle lifetime; extended by each request (``TOKENGUARD_ADMIN_SESSION_TTL``).
    expires_at: float = 0.0


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A signing key pair; the newest live one signs, all live ones verify."""

    kid: str
    alg: str
    #: PKCS#8 PEM of the private key, or ``fernet:<token>`` when keys are encrypted at rest.
    private_pem: str = dataclasses.field(repr=False)
    created_at: float = 0.0
    #: When set, the key is retired: it verifies until then and never signs again.
    retire_at: float | None = None


@dataclasses.dataclass(frozen=True)
class AccessToken:
    """A validated access token, as ``current_token`` shows it to views."""

    client_id: str
    #: User name or client id.
    subject: str
    scopes: frozenset[str]
    session_id: str
    expires_at: float
    #: Every claim of the JWT.
    claims: t.Mapping[str, t.Any] = dataclasses.field(repr=False, compare=False)

    @property
    def token_id(self) -> str:
        """The ``jti`` claim: revoking one access token revokes this id."""
        return str(self.claims.get("jti", ""))
