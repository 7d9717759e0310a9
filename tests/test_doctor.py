"""``flask tokenguard doctor [--json]``: one finding per misconfiguration, each with its fix;
exit 1 on an error; a report even when the store cannot be reached."""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_tokenguard.models import SigningKey
from flask_tokenguard.web.doctor import doctor_command
from tests.helpers import basic
from tests.helpers import cli
from tests.helpers import free_port
from tests.helpers import RedisServer
from tests.ops_support import ops_app


class Report(t.NamedTuple):
    exit_code: int
    ok: bool
    findings: dict[str, list[dict[str, str]]]
    output: str


def doctor(app: Flask, *args: str) -> Report:
    result = app.test_cli_runner().invoke(doctor_command, ["--json", *args])
    body = json.loads(result.output)
    assert set(body) == {"ok", "findings"}
    by_check: dict[str, list[dict[str, str]]] = {}
    for item in body["findings"]:
        assert set(item) == {"level", "check", "message"}
        assert item["level"] in ("ok", "warning", "error")
        by_check.setdefault(item["check"], []).append(item)
    return Report(result.exit_code, body["ok"], by_check, result.output)


def level(report: Report, check: str) -> str:
    (item,) = report.findings[check]
    return item["level"]


def message(report: Report, check: str) -> str:
    (item,) = report.findings[check]
    return item["message"]


def good_app(
    app_factory: t.Callable[..., Flask], store_url: str | None = None, **config: t.Any
) -> Flask:
    config.setdefault("ISSUER", "https://auth.example.com")
    return ops_app(app_factory, store_url, **config)


def test_a_sound_deployment_is_ok(app_factory: t.Callable[..., Flask]) -> None:
    report = doctor(good_app(app_factory, LICENSES=5))
    assert report.exit_code == 0 and report.ok
    assert {f["level"] for fs in report.findings.values() for f in fs} == {"ok"}
    assert set(report.findings) >= {"store", "schema", "signing_key", "issuer", "https", "licenses"}


def test_text_output_names_the_fix(app_factory: t.Callable[..., Flask]) -> None:
    app = ops_app(app_factory)
    result = app.test_cli_runner().invoke(doctor_command, ["--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "ERROR   https:" in result.output
    assert "TOKENGUARD_TRUSTED_PROXY" in result.output
    assert "WARNING issuer:" in result.output


def test_issuer_unset_is_a_warning(app_factory: t.Callable[..., Flask]) -> None:
    report = doctor(ops_app(app_factory))
    assert level(report, "issuer") == "warning"
    assert "TOKENGUARD_ISSUER=https://" in message(report, "issuer")
    assert report.exit_code == 0 and report.ok


def test_https_required_no_proxy_public_bind_is_an_error(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = good_app(app_factory)
    assert level(doctor(app), "https") == "ok"  # 127.0.0.1 by default
    report = doctor(app, "--host", "0.0.0.0")
    assert level(report, "https") == "error"
    assert "TOKENGUARD_TRUSTED_PROXY" in message(report, "https")
    assert report.exit_code == 1 and not report.ok
    # The bind address may also come from the config.
    app.config["TOKENGUARD_SERVE_HOST"] = "192.0.2.4"
    assert level(doctor(app), "https") == "error"
    # With a TLS proxy in front, that bind is right.
    proxied = good_app(app_factory, TRUSTED_PROXY="127.0.0.1")
    assert level(doctor(proxied, "--host", "0.0.0.0"), "https") == "ok"


def test_proxy_without_https_is_a_warning(app_factory: t.Callable[..., Flask]) -> None:
    report = doctor(good_app(app_factory, TRUSTED_PROXY="192.0.2.1", REQUIRE_HTTPS=False))
    assert level(report, "https") == "warning"
    assert "TOKENGUARD_REQUIRE_HTTPS=true" in message(report, "https")


def test_unreachable_store_is_reported_not_raised(app_factory: t.Callable[..., Flask]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = good_app(
        app_factory,
        url,
        LICENSES=3,
        STORE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1},
    )
    started = time.monotonic()
    report = doctor(app)
    assert time.monotonic() - started < 10
    assert report.exit_code == 1 and not report.ok
    assert level(report, "store") == "error"
    assert "cannot be reached" in message(report, "store")
    # The checks that need no store still ran.
    assert level(report, "issuer") == "ok"
    assert level(report, "https") == "ok"
    assert "schema" not in report.findings


def test_a_hanging_store_is_bounded(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_tokenguard.web import doctor as doctor_mod

    app = good_app(app_factory)
    store = app.extensions["tokenguard"].store(app)
    monkeypatch.setattr(store, "check", lambda: time.sleep(2))
    monkeypatch.setattr(doctor_mod, "STORE_TIMEOUT", 0.2)
    report = doctor(app)
    assert level(report, "store") == "error"
    assert "no answer within 0.2 s" in message(report, "store")
    time.sleep(2)


@pytest.mark.postgresql
def test_schema_of_a_newer_release_is_an_error(
    app_factory: t.Callable[..., Flask], tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from tests.backends import isolated_store

    with isolated_store("postgresql", tmp_path) as (url, options):
        assert doctor(good_app(app_factory, url, STORE_OPTIONS=options)).ok
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.text(f'UPDATE "{options["schema"]}".tg_schema_version SET version = 99')  # noqa: S608
                )
        finally:
            engine.dispose()
        report = doctor(good_app(app_factory, url, STORE_OPTIONS=options))
        assert report.exit_code == 1
        assert level(report, "schema") == "error"
        assert "99" in message(report, "schema")
        assert "upgrade" in message(report, "schema")


def _old_key(store: t.Any, age: float) -> None:
    real = store.signing_keys

    def aged(now: float) -> list[SigningKey]:
        return [
            SigningKey(k.kid, k.alg, k.private_pem, created_at=now - age, retire_at=k.retire_at)
            for k in real(now)
        ]

    store.signing_keys = aged


def test_old_signing_key_is_a_warning(app_factory: t.Callable[..., Flask]) -> None:
    app = good_app(app_factory)
    creds = cli(app, "create-client", "signs")
    response = app.test_client().post(
        "/connect/token",
        data={"grant_type": "client_credentials"},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    assert response.status_code == 200
    assert level(doctor(app), "signing_key") == "ok"
    _old_key(app.extensions["tokenguard"].store(app), 400 * 86400)
    report = doctor(app)
    assert level(report, "signing_key") == "warning"
    assert "rotate-keys" in message(report, "signing_key")
    assert "TOKENGUARD_KEY_ROTATION" in message(report, "signing_key")


def test_signing_key_past_its_rotation_is_a_warning(app_factory: t.Callable[..., Flask]) -> None:
    app = good_app(app_factory, KEY_ROTATION=3600)
    creds = cli(app, "create-client", "signs")
    app.test_client().post(
        "/connect/token",
        data={"grant_type": "client_credentials"},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    assert level(doctor(app), "signing_key") == "ok"
    _old_key(app.extensions["tokenguard"].store(app), 3 * 3600)
    report = doctor(app)
    assert level(report, "signing_key") == "warning"
    assert "3600" in message(report, "signing_key")


def test_licenses_below_seats_in_use_is_a_warning(
    app_factory: t.Callable[..., Flask], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'seats.sqlite3'}"
    serving = good_app(app_factory, url, LICENSES=3)
    creds = cli(serving, "create-client", "seated")
    for _ in range(2):
        response = serving.test_client().post(
            "/connect/token",
            data={"grant_type": "client_credentials"},
            headers=basic(creds["client_id"], creds["client_secret"]),
        )
        assert response.status_code == 200
    assert message(doctor(serving), "licenses") == "2 of 3 seats in use."
    lowered = good_app(app_factory, url, LICENSES=1)
    report = doctor(lowered)
    assert level(report, "licenses") == "warning"
    assert "2 seats are in use but TOKENGUARD_LICENSES is 1" in message(report, "licenses")
    assert level(doctor(good_app(app_factory, LICENSES=0)), "licenses") == "warning"


@pytest.mark.redis
def test_redis_eviction_and_persistence(
    app_factory: t.Callable[..., Flask], own_redis_server: RedisServer
) -> None:
    import redis

    app = good_app(app_factory, own_redis_server.url)
    admin = redis.Redis.from_url(own_redis_server.url)
    try:
        # The private server keeps nothing on disk.
        report = doctor(app)
        assert level(report, "redis_eviction") == "ok"
        assert level(report, "redis_persistence") == "warning"
        assert "appendonly yes" in message(report, "redis_persistence")
        assert report.ok  # a warning, not an error

        admin.config_set("maxmemory-policy", "allkeys-lru")
        report = doctor(app)
        assert level(report, "redis_eviction") == "error"
        assert "noeviction" in message(report, "redis_eviction")
        assert report.exit_code == 1

        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("appendonly", "yes")
        report = doctor(app)
        assert level(report, "redis_eviction") == "ok"
        assert level(report, "redis_persistence") == "ok"
        assert report.ok and report.exit_code == 0
    finally:
        admin.close()
