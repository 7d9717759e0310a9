"""``TOKENGUARD_*`` settings: defaults, string coercion, validation and README's table."""

from __future__ import annotations

import ast
import ipaddress
import math
import os
import pathlib
import typing as t

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from flask_tokenguard import ConfigurationError
from flask_tokenguard import TokenGuard
from flask_tokenguard.config import DEFAULTS
from flask_tokenguard.config import PARAMS
from flask_tokenguard.config import Settings
from flask_tokenguard.config import settings_table_markdown

ROOT = pathlib.Path(__file__).resolve().parent.parent


def settings(**config: t.Any) -> Settings:
    """``Settings`` from keys given without their ``TOKENGUARD_`` prefix."""
    return Settings.from_mapping({f"TOKENGUARD_{k}": v for k, v in config.items()}, "/srv/app")


# -- defaults -------------------------------------------------------------------------------


def test_defaults() -> None:
    s = Settings.from_mapping({}, instance_path="/srv/app")
    assert s.store_url == "sqlite:////srv/app/tokenguard.sqlite3"
    assert s.store_options == {}
    assert s.url_prefix == ""
    assert (s.access_token_ttl, s.session_ttl, s.licenses) == (900, 1200, None)
    assert s.scopes == {"view": "Read-only access", "all": "Full access"}
    assert s.scope_implies == {"all": frozenset({"view"})}
    assert s.licensed_scopes == frozenset({"all"})
    assert s.default_scope == "all"
    assert s.revocation_lag == 1.0
    assert s.require_https is True
    assert s.trusted_proxy is None
    assert s.trusted_proxy_headers == ("x-forwarded-proto", "x-forwarded-for")
    assert (s.issuer, s.audience) == (None, None)
    assert s.signing_alg == "RS256"
    assert (s.clock_skew, s.token_cache_size) == (0, 10000)
    assert (s.lockout_threshold, s.lockout_seconds, s.key_rotation) == (10, 300, None)
    assert s.password_hash_cost == 15
    assert (s.realm, s.max_body) == ("tokenguard", 65536)
    assert (s.serve_threads, s.serve_connection_limit, s.serve_channel_timeout) == (8, 200, 120)
    assert (s.serve_max_request_body, s.serve_drain_timeout) == (1048576, 15)


def test_defaults_of_the_newer_keys() -> None:
    s = Settings.from_mapping({})
    assert s.admin_enabled is False
    assert s.admin_session_ttl == 900
    assert s.session_max_ttl is None
    assert s.kdf_concurrency == (os.cpu_count() or 1)
    assert s.key_encryption_key is None
    assert s.max_seats_per_client is None
    assert s.seat_policy == "refuse"
    assert s.audit_log is None
    assert s.metrics_enabled is False
    assert s.metrics_allow == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert s.log_format == "text"


def test_every_setting_is_declared_once_with_a_default_and_a_doc() -> None:
    keys = [param.key for param in PARAMS]
    assert len(keys) == len(set(keys))
    assert list(DEFAULTS) == keys
    assert all(key.startswith("TOKENGUARD_") for key in keys)
    assert all(param.doc.strip() and "\n" not in param.doc for param in PARAMS)
    assert [param.attribute for param in PARAMS] == [
        name for name, field in Settings.__dataclass_fields__.items() if "param" in field.metadata
    ]
    # Every default passes its own converter.
    Settings.from_mapping(DEFAULTS)


def test_defaults_are_what_init_app_puts_into_the_config() -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, TOKENGUARD_STORE_URL="memory://")
    TokenGuard(app)
    for key, value in DEFAULTS.items():
        if key != "TOKENGUARD_STORE_URL":
            assert app.config[key] == value


def test_config_module_needs_no_flask() -> None:
    tree = ast.parse((ROOT / "flask_tokenguard" / "config.py").read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.append(node.module)
    assert not [name for name in imported if name.split(".")[0] in ("flask", "werkzeug")]


def test_from_app_reads_config_and_instance_path() -> None:
    app = Flask(__name__, instance_path="/srv/instance")
    app.config["TOKENGUARD_LICENSES"] = 3
    s = Settings.from_app(app)
    assert (s.licenses, s.store_url) == (3, "sqlite:////srv/instance/tokenguard.sqlite3")


# -- strings, as from the environment --------------------------------------------------------

COERCED = [
    ("LICENSES", "5", 5),
    ("LICENSES", "none", None),
    ("LICENSES", "", None),
    ("ACCESS_TOKEN_TTL", " 60 ", 60),
    ("REQUIRE_HTTPS", "false", False),
    ("REQUIRE_HTTPS", "On", True),
    ("REQUIRE_HTTPS", "0", False),
    ("ADMIN_ENABLED", "true", True),
    ("METRICS_ENABLED", "yes", True),
    ("REVOCATION_LAG", "0.25", 0.25),
    ("REVOCATION_LAG", 0, 0.0),
    ("STORE_OPTIONS", '{"schema": "tg"}', {"schema": "tg"}),
    ("LICENSED_SCOPES", '["all", "view"]', frozenset({"all", "view"})),
    ("LICENSED_SCOPES", "all,view", frozenset({"all", "view"})),
    ("TRUSTED_PROXY_HEADERS", "X-Forwarded-Proto", ("x-forwarded-proto",)),
    ("URL_PREFIX", "/connect/", "/connect"),
    ("ISSUER", "https://auth.example/", "https://auth.example"),
    ("SIGNING_ALG", "es256", "ES256"),
    ("PASSWORD_HASH_COST", "10", 10),
    ("PASSWORD_HASH_COST", 20, 20),
    ("KEY_ROTATION", "86400", 86400),
    ("SESSION_MAX_TTL", "28800", 28800),
    ("KDF_CONCURRENCY", "4", 4),
    ("MAX_SEATS_PER_CLIENT", "2", 2),
    ("SEAT_POLICY", "replace_oldest", "replace_oldest"),
    ("AUDIT_LOG", "/var/log/tokenguard/audit.jsonl", "/var/log/tokenguard/audit.jsonl"),
    ("AUDIT_LOG", pathlib.Path("/tmp/audit.jsonl"), "/tmp/audit.jsonl"),
    ("ADMIN_SESSION_TTL", "600", 600),
    ("LOG_FORMAT", "JSON", "json"),
    ("TRUSTED_PROXY", "10.0.0.7", "10.0.0.7"),
    ("TRUSTED_PROXY", " 2001:DB8:0:0::1 ", "2001:db8::1"),
    ("TRUSTED_PROXY", "::FFFF:10.0.0.7", "::ffff:10.0.0.7"),
    (
        "METRICS_ALLOW",
        '["10.0.5.20", "192.168.0.0/16"]',
        (
            ipaddress.ip_network("10.0.5.20/32"),
            ipaddress.ip_network("192.168.0.0/16"),
        ),
    ),
    ("METRICS_ALLOW", ["::1"], (ipaddress.ip_network("::1/128"),)),
    ("METRICS_ALLOW", "[]", ()),
]


@pytest.mark.parametrize(("key", "raw", "expected"), COERCED)
def test_strings_are_coerced(key: str, raw: t.Any, expected: t.Any) -> None:
    assert getattr(settings(**{key: raw}), key.lower()) == expected


def test_values_from_prefixed_env_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "FLASK_TOKENGUARD_LICENSES": "2",
        "FLASK_TOKENGUARD_REQUIRE_HTTPS": "false",
        "FLASK_TOKENGUARD_SCOPES": '{"read": "Read", "write": "Write"}',
        "FLASK_TOKENGUARD_DEFAULT_SCOPE": "read",
        "FLASK_TOKENGUARD_SCOPE_IMPLIES": '{"write": ["read"]}',
        "FLASK_TOKENGUARD_LICENSED_SCOPES": '["write"]',
        "FLASK_TOKENGUARD_TRUSTED_PROXY": "10.1.2.3",
        "FLASK_TOKENGUARD_REVOCATION_LAG": "0.5",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    app = Flask(__name__)
    app.config.from_prefixed_env()
    s = Settings.from_app(app)
    assert (s.licenses, s.require_https, s.default_scope) == (2, False, "read")
    assert s.scopes == {"read": "Read", "write": "Write"}
    assert s.scope_implies == {"write": frozenset({"read"})}
    assert s.licensed_scopes == frozenset({"write"})
    assert (s.trusted_proxy, s.revocation_lag) == ("10.1.2.3", 0.5)


def test_env_strings_are_coerced_in_an_app(app_factory: t.Callable[..., Flask]) -> None:
    app = app_factory(LICENSES="2", REQUIRE_HTTPS="false", ACCESS_TOKEN_TTL="60")
    s = app.extensions["tokenguard"].state(app).settings
    assert (s.licenses, s.require_https, s.access_token_ttl) == (2, False, 60)


# -- bad values -----------------------------------------------------------------------------

BAD = [
    ("STORE_URL", 5),
    ("STORE_OPTIONS", "not json"),
    ("STORE_OPTIONS", "[1]"),
    ("URL_PREFIX", "connect"),
    ("ACCESS_TOKEN_TTL", "0"),
    ("ACCESS_TOKEN_TTL", "soon"),
    ("ACCESS_TOKEN_TTL", True),
    ("ACCESS_TOKEN_TTL", 1.5),
    ("SESSION_TTL", -1),
    ("LICENSES", "many"),
    ("LICENSES", -1),
    ("SCOPES", "view"),
    ("SCOPES", {"has space": "x", "all": "y", "view": "z"}),
    ("SCOPE_IMPLIES", '{"all": "view"}'),
    ("SCOPE_IMPLIES", {"all": ["admin"]}),
    ("LICENSED_SCOPES", ["admin"]),
    ("LICENSED_SCOPES", "{}"),
    ("DEFAULT_SCOPE", "admin"),
    ("DEFAULT_SCOPE", ""),
    ("REVOCATION_LAG", "nan"),
    ("REVOCATION_LAG", "inf"),
    ("REVOCATION_LAG", math.inf),
    ("REVOCATION_LAG", math.nan),
    ("REVOCATION_LAG", -1),
    ("REVOCATION_LAG", "-0.5"),
    ("REVOCATION_LAG", "a while"),
    ("REVOCATION_LAG", True),
    ("REQUIRE_HTTPS", "maybe"),
    ("REQUIRE_HTTPS", 2),
    ("TRUSTED_PROXY", "*"),
    ("TRUSTED_PROXY", "proxy.internal"),
    ("TRUSTED_PROXY", "localhost"),
    ("TRUSTED_PROXY", "10.0.0.1,10.0.0.2"),
    ("TRUSTED_PROXY", "10.0.0.1 10.0.0.2"),
    ("TRUSTED_PROXY", '["10.0.0.1"]'),
    ("TRUSTED_PROXY", ["10.0.0.1"]),
    ("TRUSTED_PROXY", "10.0.0.0/8"),
    ("TRUSTED_PROXY_HEADERS", "{}"),
    ("ISSUER", 1),
    ("AUDIENCE", ["a", "b"]),
    ("SIGNING_ALG", "HS256"),
    ("CLOCK_SKEW", -1),
    ("TOKEN_CACHE_SIZE", "lots"),
    ("PASSWORD_HASH_COST", 9),
    ("PASSWORD_HASH_COST", "21"),
    ("KDF_CONCURRENCY", 0),
    ("KDF_CONCURRENCY", "all"),
    ("LOCKOUT_THRESHOLD", -1),
    ("LOCKOUT_SECONDS", 0),
    ("KEY_ROTATION", 59),
    ("KEY_ENCRYPTION_KEY", "not-a-fernet-key"),
    ("KEY_ENCRYPTION_KEY", "[]"),
    ("KEY_ENCRYPTION_KEY", 5),
    ("SESSION_MAX_TTL", 0),
    ("MAX_SEATS_PER_CLIENT", 0),
    ("MAX_SEATS_PER_CLIENT", "two"),
    ("SEAT_POLICY", "evict"),
    ("AUDIT_LOG", 5),
    ("AUDIT_LOG", ["audit.jsonl"]),
    ("ADMIN_ENABLED", "sometimes"),
    ("ADMIN_SESSION_TTL", 0),
    ("METRICS_ENABLED", "perhaps"),
    ("METRICS_ALLOW", '["10.0.0.1", "prometheus.internal"]'),
    ("METRICS_ALLOW", "*"),
    ("METRICS_ALLOW", '{"10.0.0.1": true}'),
    ("METRICS_ALLOW", [5]),
    ("LOG_FORMAT", "xml"),
    ("REALM", None),
    ("MAX_BODY", 100),
    ("SERVE_THREADS", 0),
    ("SERVE_CONNECTION_LIMIT", "0"),
    ("SERVE_CHANNEL_TIMEOUT", 0),
    ("SERVE_MAX_REQUEST_BODY", 10),
    ("SERVE_DRAIN_TIMEOUT", -1),
]


@pytest.mark.parametrize(("key", "raw"), BAD)
def test_bad_value_raises_naming_the_key(key: str, raw: t.Any) -> None:
    with pytest.raises(ConfigurationError, match=f"TOKENGUARD_{key}\\b"):
        settings(**{key: raw})


def test_every_key_has_a_bad_value_tested() -> None:
    assert {f"TOKENGUARD_{key}" for key, _ in BAD} == set(DEFAULTS)


def test_bad_config_names_the_key_when_the_app_starts(
    app_factory: t.Callable[..., Flask],
) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_LICENSES"):
        app_factory(LICENSES="many")
    with pytest.raises(ConfigurationError, match="TOKENGUARD_DEFAULT_SCOPE"):
        app_factory(DEFAULT_SCOPE="admin")


@pytest.mark.parametrize("proxy", ["*", "proxy.internal", "10.0.0.1,10.0.0.2"])
def test_app_refuses_a_trusted_proxy_that_is_not_one_address(
    app_factory: t.Callable[..., Flask], proxy: str
) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_TRUSTED_PROXY"):
        app_factory(TRUSTED_PROXY=proxy)


@pytest.mark.parametrize("lag", ["nan", "inf", "-1"])
def test_app_refuses_a_revocation_lag_that_is_not_finite_and_positive(
    app_factory: t.Callable[..., Flask], lag: str
) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_REVOCATION_LAG"):
        app_factory(REVOCATION_LAG=lag)


# -- the key encryption key -----------------------------------------------------------------


def test_key_encryption_key_takes_one_key_or_a_list() -> None:
    one, two = Fernet.generate_key(), Fernet.generate_key()
    assert settings(KEY_ENCRYPTION_KEY=one.decode()).key_encryption_key == (one.decode(),)
    assert settings(KEY_ENCRYPTION_KEY=one).key_encryption_key == (one.decode(),)
    both = (one.decode(), two.decode())
    assert settings(KEY_ENCRYPTION_KEY=list(both)).key_encryption_key == both
    as_json = f'["{both[0]}", "{both[1]}"]'
    assert settings(KEY_ENCRYPTION_KEY=as_json).key_encryption_key == both
    assert settings(KEY_ENCRYPTION_KEY=",".join(both)).key_encryption_key == both


def test_a_bad_key_encryption_key_is_not_repeated_in_the_error() -> None:
    good = Fernet.generate_key().decode()
    for bad in ("s3cr3t-passphrase-not-base64", good[:-4], [good, "s3cr3t-passphrase"]):
        with pytest.raises(ConfigurationError, match="TOKENGUARD_KEY_ENCRYPTION_KEY") as caught:
            settings(KEY_ENCRYPTION_KEY=bad)
        message = str(caught.value)
        assert "s3cr3t" not in message and good[:-4] not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- unknown keys ---------------------------------------------------------------------------


def test_unknown_key_warns() -> None:
    with pytest.warns(UserWarning, match="TOKENGUARD_LICENCES"):
        Settings.from_mapping({"TOKENGUARD_LICENCES": 3})


def test_unknown_setting_warns_in_an_app(app_factory: t.Callable[..., Flask]) -> None:
    with pytest.warns(UserWarning, match="TOKENGUARD_LICENCES"):
        app_factory(LICENCES=3)


def test_other_keys_do_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    Settings.from_mapping({"SECRET_KEY": "x", "TOKENGUARD_LICENSES": 2, "OTHER_TOKENGUARD": 1})
    assert not [w for w in recwarn if "unknown setting" in str(w.message)]


# -- README -----------------------------------------------------------------------------------


def test_readme_lists_every_key_as_the_table_says() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings_table_markdown() in readme
    for key, param in zip(DEFAULTS, PARAMS, strict=True):
        assert f"| `{key}` | {param.shown_default()} |" in readme
