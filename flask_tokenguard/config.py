"""``TOKENGUARD_*`` configuration: one table of settings, validated when an app is set up.

Every setting is declared once, as a field of :class:`Settings` carrying its default, its
converter and a one-line description (as waitress's ``adjustments`` table does); ``DEFAULTS``,
the checks and README's configuration table are derived from those fields.

Values may arrive as strings from ``app.config.from_prefixed_env()``, so each converter takes
them too (``"5"`` -> 5, ``"true"`` -> True, JSON for lists and mappings). A bad value raises
``ConfigurationError`` naming the key; an unknown ``TOKENGUARD_`` key warns, since it is most
likely a typo. Nothing here needs Flask: :meth:`Settings.from_mapping` reads any mapping.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import typing as t
import warnings

from .errors import ConfigurationError

PREFIX = "TOKENGUARD_"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _AppLike(t.Protocol):
    """What :meth:`Settings.from_app` reads of an app: a Flask app has both."""

    @property
    def config(self) -> t.Mapping[str, t.Any]: ...

    @property
    def instance_path(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Param:
    """One setting: its key, its default, how a configured value is read, what it means."""

    key: str
    default: t.Any
    convert: t.Callable[[t.Any], t.Any]
    doc: str
    #: The default as README shows it, when ``repr``-like JSON of ``default`` says too little.
    shown: str | None = None
    #: The value is a secret: errors never repeat it.
    secret: bool = False

    @property
    def attribute(self) -> str:
        """The :class:`Settings` attribute holding the value."""
        return self.key[len(PREFIX) :].lower()

    def shown_default(self) -> str:
        """The default in README's table: ``None``, ``True``, ``900``, JSON, or ``shown``."""
        if self.shown is not None:
            return self.shown
        if self.default is None or isinstance(self.default, bool):
            return f"`{self.default}`"
        return f"`{json.dumps(self.default)}`"


# -- converters -----------------------------------------------------------------------------

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


def _as_int(minimum: int, maximum: int | None = None) -> t.Callable[[t.Any], int]:
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def convert(value: t.Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be an integer {bounds}")
        number = int(value.strip()) if isinstance(value, str) else value
        if not isinstance(number, int) or number < minimum:
            raise ValueError(f"must be an integer {bounds}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be an integer {bounds}")
        return number

    return convert


def _as_seconds(value: t.Any) -> float:
    """A finite number of seconds, 0 or more (``nan`` and ``inf`` are refused)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds >= 0")
    number = float(value.strip()) if isinstance(value, str) else value
    if not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
        raise ValueError("must be a finite number of seconds >= 0")
    return float(number)


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


def _as_choice(*choices: str) -> t.Callable[[t.Any], str]:
    def convert(value: t.Any) -> str:
        choice = _as_str(value).strip().lower()
        if choice not in choices:
            raise ValueError("must be " + " or ".join(repr(c) for c in choices))
        return choice

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


def _as_ip(value: t.Any) -> str:
    """One IP address, v4 or v6, in its normal form; ``*``, host names and lists are refused."""
    text = _as_str(value).strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("must be one IP address (not '*', a host name or a list)") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Written as a dual-stack socket reports the peer, whatever the Python version.
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _as_networks(value: t.Any) -> tuple[Network, ...]:
    entries = _as_json(list)(value)
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(_as_str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(f"must list IP addresses or CIDR networks, not {entry!r}") from None
    return tuple(networks)


def _as_path(value: t.Any) -> str:
    path = os.fspath(value) if isinstance(value, os.PathLike) else _as_str(value)
    if not isinstance(path, str) or not path.strip():
        raise ValueError("must be a file path")
    return path


def _as_fernet_keys(value: t.Any) -> tuple[str, ...]:
    """A Fernet key or a list of them (JSON, or separated by commas), each one checked.

    Error messages say which entry is wrong, never what it holds: these are secrets.
    """
    from cryptography.fernet import Fernet

    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if text.strip().startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError("must be a Fernet key or a JSON list of them") from None
        else:
            value = text.replace(",", " ").split()
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a Fernet key or a list of them")
    keys: list[str] = []
    for number, key in enumerate(value, start=1):
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        try:
            Fernet(_as_str(key).strip())
        except (ValueError, TypeError):
            raise ValueError(
                f"entry {number} is not a Fernet key (32 url-safe base64-encoded bytes, "
                "as Fernet.generate_key() makes)"
            ) from None
        keys.append(key.strip())
    return tuple(keys)


def _as_scopes(value: t.Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _as_json(dict)(value).items()}


def _as_implies(value: t.Any) -> dict[str, frozenset[str]]:
    implies = _as_json(dict)(value)
    for implied in implies.values():
        if not isinstance(implied, (list, tuple, set, frozenset)):
            raise ValueError("must map each scope to a list of scopes")
    return {str(k): frozenset(map(str, v)) for k, v in implies.items()}


def _as_scope_set(value: t.Any) -> frozenset[str]:
    return frozenset(map(str, _as_json(list)(value)))


def _as_headers(value: t.Any) -> tuple[str, ...]:
    return tuple(_as_str(h).lower() for h in _as_json(list)(value))


def _setting(
    default: t.Any,
    convert: t.Callable[[t.Any], t.Any],
    doc: str,
    *,
    shown: str | None = None,
    secret: bool = False,
) -> t.Any:
    """Declare one setting as a field of :class:`Settings`; its key is derived from the name."""
    param = Param("", default, convert, doc, shown, secret)
    return dataclasses.field(metadata={"param": param})


# -- the table ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated ``TOKENGUARD_*`` values of one app; the hot path reads only these.

    Each field is one setting, ``TOKENGUARD_`` + its name in capitals, declared with its
    default, its converter and what it means.
    """

    store_url: str = _setting(
        None,
        _as_optional(_as_str),
        "`sqlite:///path`, `redis://host:port/db`, `postgresql://user@host/db` (several "
        "hosts: `postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write`), "
        "`mysql+pymysql://...`, `mssql+pyodbc://...`, with failover "
        "`redis+sentinel://h1:26379[,h2:26379...]/SERVICE[/DB]` and "
        "`redis+cluster://h1:7000[,h2:7001...]`, `memory://` (one process, tests)",
        shown="`sqlite:///<instance_path>/tokenguard.sqlite3`",
    )
    store_options: t.Mapping[str, t.Any] = _setting(
        {},
        _as_json(dict),
        "the store's options: `key_prefix` (Redis, with a `{hash tag}`), `schema` (SQL), "
        "`replicas` (Redis), `replicas_timeout` (Redis and PostgreSQL), `failover_timeout` "
        "(Redis and SQL; see Running replicated); others go to the driver",
    )
    url_prefix: str = _setting("", _as_prefix, "prefix of the endpoints")
    access_token_ttl: int = _setting(900, _as_int(1), "access token lifetime, seconds")
    session_ttl: int = _setting(
        1200, _as_int(1), "a session's idle lifetime; each token request extends it"
    )
    licenses: int | None = _setting(
        None, _as_optional(_as_int(0)), "seats for licensed sessions; `None` = no limit"
    )
    scopes: t.Mapping[str, str] = _setting(
        {"view": "Read-only access", "all": "Full access"}, _as_scopes, "known scopes"
    )
    scope_implies: t.Mapping[str, frozenset[str]] = _setting(
        {"all": ["view"]}, _as_implies, "scope implication"
    )
    licensed_scopes: frozenset[str] = _setting(
        ["all"], _as_scope_set, "a session holding any of these needs a seat"
    )
    default_scope: str = _setting(
        "all",
        _as_str,
        "granted when a request names none; a client that may not have it gets all of its "
        "own scopes instead",
    )
    revocation_lag: float = _setting(
        1,
        _as_seconds,
        "seconds (finite, 0 or more) another process may still accept a revoked token; `0` "
        "reads the store on every request",
    )
    require_https: bool = _setting(
        True,
        _as_bool,
        "refuse plain HTTP on the endpoints and guarded routes, except from loopback when no "
        "proxy is trusted",
    )
    trusted_proxy: str | None = _setting(
        None,
        _as_optional(_as_ip),
        "the one proxy IP address whose `X-Forwarded-Proto`/`-For` are believed (by waitress "
        "under our runner; under another server the guard reads the proxy's "
        "`X-Forwarded-Proto` itself); `*`, host names and lists are refused",
    )
    trusted_proxy_headers: tuple[str, ...] = _setting(
        ["x-forwarded-proto", "x-forwarded-for"], _as_headers, "forwarded headers believed from it"
    )
    issuer: str | None = _setting(
        None,
        _as_optional(lambda v: _as_str(v).rstrip("/")),
        "`iss` of access tokens; set it in production. Unset: the request's host URL when it "
        "is loopback or `SERVER_NAME`, 400 for any other host; `iss` and `aud` are checked "
        "on every token",
        shown="loopback or `SERVER_NAME` host URL",
    )
    audience: str | None = _setting(
        None, _as_optional(_as_str), "`aud` of access tokens", shown="the issuer"
    )
    signing_alg: str = _setting(
        "RS256",
        _as_alg,
        "`RS256` or `ES256` (signs about ten times faster, verifies a little slower)",
    )
    clock_skew: int = _setting(
        0,
        _as_int(0),
        "seconds of leeway on `exp` for hosts whose clocks differ; access tokens then end that "
        "much before their session, and revocations are kept that much longer",
    )
    token_cache_size: int = _setting(
        10000,
        _as_int(0),
        "verified tokens each process remembers (by their exact bytes) to skip the signature "
        "check; `0` turns it off",
    )
    password_hash_cost: int = _setting(
        15, _as_int(10, 20), "scrypt cost (log2 N) for user passwords, 10 to 20"
    )
    kdf_concurrency: int = _setting(
        None,
        _as_optional(_as_int(1)),
        "password checks that may run at once (a request waits up to 5 s for a slot, then "
        "gets 503 with `Retry-After`); `None` = the CPU count",
    )
    lockout_threshold: int = _setting(
        10,
        _as_int(0),
        "failed client authentications or passwords, per name and address and per address, "
        "after which that address gets 429 `slow_down` with `Retry-After` without a check; "
        "`0` turns throttling off",
    )
    lockout_seconds: int = _setting(
        300, _as_int(1), "the window the failures are counted in, and how long a lockout lasts"
    )
    key_rotation: int | None = _setting(
        None,
        _as_optional(_as_int(60)),
        "seconds after which a signing key replaces itself (one process of those sharing the "
        "store does it); `None`: only `flask tokenguard rotate-keys`",
    )
    key_encryption_key: tuple[str, ...] | None = _setting(
        None,
        _as_optional(_as_fernet_keys),
        "a Fernet key (`Fernet.generate_key()`) or a list of them, the first encrypting, to "
        "keep signing keys encrypted at rest on every store; missing or wrong for the stored "
        "keys: `ConfigurationError` when they are first loaded",
        secret=True,
    )
    session_max_ttl: int | None = _setting(
        None,
        _as_optional(_as_int(1)),
        "absolute lifetime of a session in seconds, however often it is refreshed; `None` = none",
    )
    max_seats_per_client: int | None = _setting(
        None,
        _as_optional(_as_int(1)),
        "licensed sessions one client may hold at once, for clients without their own "
        "`--max-seats`; `None` = no cap. A cap applies with or without `TOKENGUARD_LICENSES`",
    )
    seat_policy: str = _setting(
        "refuse",
        _as_choice("refuse", "replace_oldest"),
        "at a client's seat cap: `refuse` (400 `license_unavailable` with `Retry-After`) or "
        "`replace_oldest` (the client's oldest seat-holding session ends, as by logoff)",
    )
    audit_log: str | None = _setting(
        None,
        _as_optional(_as_path),
        "a file the audit trail is appended to as JSON lines (mode 0600; processes may share it)",
    )
    admin_enabled: bool = _setting(False, _as_bool, "mount the admin console at `<prefix>/admin/`")
    admin_session_ttl: int = _setting(
        900,
        _as_int(1),
        "idle seconds after which an admin console session ends",
    )
    metrics_enabled: bool = _setting(
        False, _as_bool, "serve Prometheus metrics at `<prefix>/metrics` (extra `metrics`)"
    )
    metrics_allow: tuple[Network, ...] = _setting(
        ["127.0.0.0/8", "::1/128"],
        _as_networks,
        "JSON list of addresses or CIDR networks `/metrics` answers; others get 403",
    )
    log_format: str = _setting(
        "text", _as_choice("text", "json"), "the runner's log lines: `text` or `json`"
    )
    realm: str = _setting("tokenguard", _as_str, "`realm` of `WWW-Authenticate` challenges")
    max_body: int = _setting(
        64 * 1024, _as_int(1024), "largest request body the endpoints read (413 above)"
    )
    serve_threads: int = _setting(8, _as_int(1), "waitress worker threads")
    serve_connection_limit: int = _setting(200, _as_int(1), "waitress connection limit")
    serve_channel_timeout: int = _setting(120, _as_int(1), "seconds an idle connection stays open")
    serve_max_request_body: int = _setting(
        1024 * 1024, _as_int(1024), "largest request body waitress accepts, whole app"
    )
    serve_drain_timeout: int = _setting(
        15, _as_int(0), "seconds a graceful stop waits for requests in flight"
    )
    #: Flask's ``SERVER_NAME``: with no issuer configured, the one non-loopback host that
    #: may name the issuer. Read from the app's config, not a ``TOKENGUARD_`` key.
    server_name: str | None = dataclasses.field(default=None, metadata={"flask_key": "SERVER_NAME"})

    @classmethod
    def from_mapping(cls, config: t.Mapping[str, t.Any], instance_path: str = ".") -> Settings:
        """Coerce and check every key; raise ``ConfigurationError`` naming the first bad one.

        Keys missing from ``config`` take their defaults; ``instance_path`` is where the
        default SQLite store lives.
        """
        for key in config:
            if key.startswith(PREFIX) and key not in DEFAULTS:
                warnings.warn(f"unknown setting {key} is ignored", stacklevel=3)
        values: dict[str, t.Any] = {}
        for param in PARAMS:
            raw = config.get(param.key, param.default)
            try:
                values[param.attribute] = param.convert(raw)
            except (ValueError, TypeError) as exc:
                got = "" if param.secret else f", got {raw!r}"
                raise ConfigurationError(f"{param.key} {exc}{got}") from None
        if values["store_url"] is None:
            path = os.path.join(instance_path, "tokenguard.sqlite3")
            values["store_url"] = f"sqlite:///{path}"
        if values["kdf_concurrency"] is None:
            values["kdf_concurrency"] = os.cpu_count() or 1
        server_name = config.get("SERVER_NAME")
        values["server_name"] = str(server_name) if server_name else None
        settings = cls(**values)
        settings._validate()
        return settings

    @classmethod
    def from_app(cls, app: _AppLike) -> Settings:
        """Read the settings of a Flask ``app`` (its config and instance folder)."""
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


def _params() -> tuple[Param, ...]:
    params = []
    for field in dataclasses.fields(Settings):
        if "param" not in field.metadata:
            continue  # read from Flask's own config, not a TOKENGUARD_ key
        param: Param = field.metadata["param"]
        params.append(dataclasses.replace(param, key=PREFIX + field.name.upper()))
    return tuple(params)


#: Every setting, in the order README lists them.
PARAMS: tuple[Param, ...] = _params()

#: ``TOKENGUARD_*`` key -> default, as ``init_app`` puts them into ``app.config``.
DEFAULTS: dict[str, t.Any] = {param.key: param.default for param in PARAMS}


def settings_table_markdown() -> str:
    """README's configuration table: every key with its default and what it means."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for param in PARAMS:
        lines.append(f"| `{param.key}` | {param.shown_default()} | {param.doc} |")
    return "\n".join(lines) + "\n"
