"""``TOKENGUARD_*`` configuration: defaults, coercion and validation, read once per app.

Values may arrive as strings from ``app.config.from_prefixed_env()``, so each key has a
converter, as waitress's ``adjustments`` table does (``"5"`` -> 5, ``"true"`` -> True).
A bad value raises ``ConfigurationError`` naming the key; an unknown ``TOKENGUARD_`` key
warns, since it is most likely a typo.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing as t
import warnings

from .errors import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

DEFAULTS: dict[str, t.Any] = {
    #: Store URL; None means ``sqlite:///<instance_path>/tokenguard.sqlite3``.
    "TOKENGUARD_STORE_URL": None,
    #: Keyword arguments for the store's driver.
    "TOKENGUARD_STORE_OPTIONS": {},
    #: Prefix of the endpoints: ``"/connect"`` gives ``/connect/token``.
    "TOKENGUARD_URL_PREFIX": "",
    #: Access token lifetime in seconds.
    "TOKENGUARD_ACCESS_TOKEN_TTL": 900,
    #: Idle lifetime of a session's refresh token; each token request extends it.
    "TOKENGUARD_SESSION_TTL": 1200,
    #: Seats for licensed sessions; None means no limit.
    "TOKENGUARD_LICENSES": None,
    #: Known scopes and their descriptions.
    "TOKENGUARD_SCOPES": {"view": "Read-only access", "all": "Full access"},
    #: Scope -> scopes it implies.
    "TOKENGUARD_SCOPE_IMPLIES": {"all": ["view"]},
    #: A session holding any of these needs a seat.
    "TOKENGUARD_LICENSED_SCOPES": ["all"],
    #: Scope granted when a request names none.
    "TOKENGUARD_DEFAULT_SCOPE": "all",
    #: Seconds another process may still accept a revoked token; 0 reads the store each time.
    "TOKENGUARD_REVOCATION_LAG": 1,
    #: Refuse plain HTTP on tokenguard endpoints and guarded routes, except from loopback.
    "TOKENGUARD_REQUIRE_HTTPS": True,
    #: Address of the one reverse proxy whose X-Forwarded-Proto/-For are believed.
    "TOKENGUARD_TRUSTED_PROXY": None,
    #: Forwarded headers believed from the trusted proxy.
    "TOKENGUARD_TRUSTED_PROXY_HEADERS": ["x-forwarded-proto", "x-forwarded-for"],
    #: ``iss`` of access tokens; None means the request's host URL.
    "TOKENGUARD_ISSUER": None,
    #: ``aud`` of access tokens; None means the issuer.
    "TOKENGUARD_AUDIENCE": None,
    #: JWS algorithm for new signing keys: RS256 or ES256.
    "TOKENGUARD_SIGNING_ALG": "RS256",
    #: Seconds of clock skew tolerated when checking ``exp``/``iat`` from other hosts.
    "TOKENGUARD_CLOCK_SKEW": 0,
    #: How many verified tokens each process keeps to skip signature checks.
    "TOKENGUARD_TOKEN_CACHE_SIZE": 10000,
    #: Failed password-grant attempts per user name before it is locked out; 0 = never.
    "TOKENGUARD_LOCKOUT_THRESHOLD": 10,
    #: Seconds the failures are counted over, and a lockout lasts.
    "TOKENGUARD_LOCKOUT_SECONDS": 300,
    #: Seconds after which the signing key is replaced by itself; None = only by rotate-keys.
    "TOKENGUARD_KEY_ROTATION": None,
    #: scrypt cost (log2 of N) for user passwords.
    "TOKENGUARD_PASSWORD_HASH_COST": 15,
    #: ``realm`` in ``WWW-Authenticate`` challenges.
    "TOKENGUARD_REALM": "tokenguard",
    #: Largest request body the endpoints read, in bytes.
    "TOKENGUARD_MAX_BODY": 64 * 1024,
    #: waitress worker threads for the runner.
    "TOKENGUARD_SERVE_THREADS": 8,
    #: waitress connection limit.
    "TOKENGUARD_SERVE_CONNECTION_LIMIT": 200,
    #: Seconds an idle connection stays open.
    "TOKENGUARD_SERVE_CHANNEL_TIMEOUT": 120,
    #: Largest request body waitress accepts for the whole app, in bytes.
    "TOKENGUARD_SERVE_MAX_REQUEST_BODY": 1024 * 1024,
    #: Seconds a graceful stop waits for requests in flight.
    "TOKENGUARD_SERVE_DRAIN_TIMEOUT": 15,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _as_bool(value: t.Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("must be true or false")


def _as_int(minimum: int) -> t.Callable[[t.Any], int]:
    def convert(value: t.Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        number = int(value.strip()) if isinstance(value, str) else value
        if not isinstance(number, int) or number < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return number

    return convert


def _as_optional(convert: t.Callable[[t.Any], t.Any]) -> t.Callable[[t.Any], t.Any]:
    def optional(value: t.Any) -> t.Any:
        if value is None or (
            isinstance(value, str) and value.strip().lower() in ("", "none", "null")
        ):
            return None
        return convert(value)

    return optional


def _as_str(value: t.Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _as_json(kind: type) -> t.Callable[[t.Any], t.Any]:
    def convert(value: t.Any) -> t.Any:
        if isinstance(value, str) and kind is not str:
            try:
                value = json.loads(value)
            except ValueError:
                if kind is list:
                    value = value.replace(",", " ").split()
                else:
                    raise ValueError("must be JSON") from None
        if isinstance(value, (tuple, set, frozenset)):
            value = list(value)
        if not isinstance(value, kind):
            raise ValueError(f"must be a {kind.__name__}")
        return value

    return convert


def _as_prefix(value: t.Any) -> str:
    prefix = _as_str(value).rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError("must start with '/'")
    return prefix


def _as_alg(value: t.Any) -> str:
    alg = _as_str(value).upper()
    if alg not in ("RS256", "ES256"):
        raise ValueError("must be RS256 or ES256")
    return alg


_CONVERTERS: dict[str, t.Callable[[t.Any], t.Any]] = {
    "TOKENGUARD_STORE_URL": _as_optional(_as_str),
    "TOKENGUARD_STORE_OPTIONS": _as_json(dict),
    "TOKENGUARD_URL_PREFIX": _as_prefix,
    "TOKENGUARD_ACCESS_TOKEN_TTL": _as_int(1),
    "TOKENGUARD_SESSION_TTL": _as_int(1),
    "TOKENGUARD_LICENSES": _as_optional(_as_int(0)),
    "TOKENGUARD_SCOPES": _as_json(dict),
    "TOKENGUARD_SCOPE_IMPLIES": _as_json(dict),
    "TOKENGUARD_LICENSED_SCOPES": _as_json(list),
    "TOKENGUARD_DEFAULT_SCOPE": _as_str,
    "TOKENGUARD_REVOCATION_LAG": lambda v: (
        float(_as_str(v).strip()) if isinstance(v, str) else float(v)
    ),
    "TOKENGUARD_REQUIRE_HTTPS": _as_bool,
    "TOKENGUARD_TRUSTED_PROXY": _as_optional(_as_str),
    "TOKENGUARD_TRUSTED_PROXY_HEADERS": _as_json(list),
    "TOKENGUARD_ISSUER": _as_optional(lambda v: _as_str(v).rstrip("/")),
    "TOKENGUARD_AUDIENCE": _as_optional(_as_str),
    "TOKENGUARD_SIGNING_ALG": _as_alg,
    "TOKENGUARD_CLOCK_SKEW": _as_int(0),
    "TOKENGUARD_TOKEN_CACHE_SIZE": _as_int(0),
    "TOKENGUARD_LOCKOUT_THRESHOLD": _as_int(0),
    "TOKENGUARD_LOCKOUT_SECONDS": _as_int(1),
    "TOKENGUARD_KEY_ROTATION": _as_optional(_as_int(60)),
    "TOKENGUARD_PASSWORD_HASH_COST": _as_int(10),
    "TOKENGUARD_REALM": _as_str,
    "TOKENGUARD_MAX_BODY": _as_int(1024),
    "TOKENGUARD_SERVE_THREADS": _as_int(1),
    "TOKENGUARD_SERVE_CONNECTION_LIMIT": _as_int(1),
    "TOKENGUARD_SERVE_CHANNEL_TIMEOUT": _as_int(1),
    "TOKENGUARD_SERVE_MAX_REQUEST_BODY": _as_int(1024),
    "TOKENGUARD_SERVE_DRAIN_TIMEOUT": _as_int(0),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated ``TOKENGUARD_*`` values of one app; the hot path reads only these."""

    store_url: str
    store_options: t.Mapping[str, t.Any]
    url_prefix: str
    access_token_ttl: int
    session_ttl: int
    licenses: int | None
    scopes: t.Mapping[str, str]
    scope_implies: t.Mapping[str, frozenset[str]]
    licensed_scopes: frozenset[str]
    default_scope: str
    revocation_lag: float
    require_https: bool
    trusted_proxy: str | None
    trusted_proxy_headers: tuple[str, ...]
    issuer: str | None
    audience: str | None
    signing_alg: str
    clock_skew: int
    token_cache_size: int
    lockout_threshold: int
    lockout_seconds: int
    key_rotation: int | None
    password_hash_cost: int
    realm: str
    max_body: int
    serve_threads: int
    serve_connection_limit: int
    serve_channel_timeout: int
    serve_max_request_body: int
    serve_drain_timeout: int

    @classmethod
    def from_mapping(cls, config: t.Mapping[str, t.Any], instance_path: str = ".") -> Settings:
        """Coerce and check every key; raise ``ConfigurationError`` naming the first bad one."""
        for key in config:
            if key.startswith("TOKENGUARD_") and key not in DEFAULTS:
                warnings.warn(f"unknown setting {key} is ignored", stacklevel=3)
        values: dict[str, t.Any] = {}
        for key, convert in _CONVERTERS.items():
            raw = config.get(key, DEFAULTS[key])
            try:
                values[key[len("TOKENGUARD_") :].lower()] = convert(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"{key} {exc}, got {raw!r}") from None
        if values["store_url"] is None:
            path = os.path.join(instance_path, "tokenguard.sqlite3")
            values["store_url"] = f"sqlite:///{path}"
        values["scope_implies"] = {
            str(k): frozenset(map(str, v)) for k, v in values["scope_implies"].items()
        }
        values["licensed_scopes"] = frozenset(map(str, values["licensed_scopes"]))
        values["trusted_proxy_headers"] = tuple(h.lower() for h in values["trusted_proxy_headers"])
        settings = cls(**values)
        settings._validate()
        return settings

    @classmethod
    def from_app(cls, app: Flask) -> Settings:
        """Read the settings of ``app`` (defaults already set by ``init_app``)."""
        return cls.from_mapping(app.config, app.instance_path)

    def _validate(self) -> None:
        unknown = [s for s in self.default_scope.split() if s not in self.scopes]
        if not self.default_scope.split() or unknown:
            raise ConfigurationError(
                f"TOKENGUARD_DEFAULT_SCOPE must name configured scopes, got {self.default_scope!r}"
            )
        for scope, implied in self.scope_implies.items():
            if scope not in self.scopes or not implied <= self.scopes.keys():
                raise ConfigurationError(
                    f"TOKENGUARD_SCOPE_IMPLIES must map configured scopes, got {scope!r}"
                )
        if not self.licensed_scopes <= self.scopes.keys():
            raise ConfigurationError(
                "TOKENGUARD_LICENSED_SCOPES must name configured scopes, "
                f"got {sorted(self.licensed_scopes)!r}"
            )
        for scope in self.scopes:
            if not scope or any(c in scope for c in ' "\\') or not scope.isprintable():
                raise ConfigurationError(f"TOKENGUARD_SCOPES has an invalid scope name {scope!r}")

    def expand_scopes(self, scopes: t.Iterable[str]) -> frozenset[str]:
        """Return ``scopes`` with everything they imply (transitively)."""
        result = set(scopes)
        pending = list(result)
        while pending:
            for implied in self.scope_implies.get(pending.pop(), ()):
                if implied not in result:
                    result.add(implied)
                    pending.append(implied)
        return frozenset(result)
