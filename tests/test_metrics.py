"""``<prefix>/metrics``: prometheus_client's text format, parsed with its own parser, moving
with the requests made; the licence gauges read from the store; the allow list."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import requests
from flask import Flask

from flask_tokenguard.errors import StoreError
from flask_tokenguard.web import metrics as metrics_mod
from tests.helpers import basic
from tests.helpers import bearer
from tests.helpers import cli
from tests.ops_support import ops_app
from tests.ops_support import samples

# Until config.py knows the metrics keys, other readers of the config warn about them.

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: t.Any, **environ: str) -> Samples:
    response = client.get("/connect/metrics", environ_base=environ)
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def value(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


def token(client: t.Any, creds: dict[str, str], **params: str) -> t.Any:
    return client.post(
        "/connect/token",
        data={"grant_type": "client_credentials", **params},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )


def test_counters_move_with_requests(app_factory: t.Callable[..., Flask]) -> None:
    app = ops_app(app_factory, metrics=True, LICENSES=3)
    client = app.test_client()
    creds = cli(app, "create-client", "metered")
    before = scrape(client)
    assert value(before, "tokenguard_licenses_in_use") == 0
    assert value(before, "tokenguard_licenses_total") == 3

    issued = token(client, creds)
    assert issued.status_code == 200
    access = issued.get_json()["access_token"]
    refreshed = client.post(
        "/connect/token",
        data={"grant_type": "refresh_token", "refresh_token": issued.get_json()["refresh_token"]},
        headers=basic(creds["client_id"], creds["client_secret"]),
    )
    assert refreshed.status_code == 200
    assert token(client, creds, grant_type="bogus").status_code == 400
    wrong = client.post(
        "/connect/token",
        data={"grant_type": "client_credentials"},
        headers=basic(creds["client_id"], "wrong"),
    )
    assert wrong.status_code == 401
    assert (
        client.get("/orders", headers=bearer(refreshed.get_json()["access_token"])).status_code
        == 200
    )
    assert client.get("/orders", headers=bearer("not-a-token")).status_code == 401
    assert client.get("/orders").status_code == 401
    view = token(client, creds, scope="view").get_json()["access_token"]
    assert client.post("/orders", json={"item": "x"}, headers=bearer(view)).status_code == 403

    after = scrape(client)
    assert value(after, "tokenguard_tokens_issued_total", grant="client_credentials") == 2
    assert value(after, "tokenguard_tokens_issued_total", grant="refresh_token") == 1
    assert value(after, "tokenguard_token_errors_total", error="unsupported_grant_type") == 1
    assert value(after, "tokenguard_token_errors_total", error="invalid_client") == 1
    # Every token request is timed, successful or not.
    assert value(after, "tokenguard_token_request_seconds_count") == 5
    assert value(after, "tokenguard_token_request_seconds_bucket", le="+Inf") == 5
    assert value(after, "tokenguard_token_request_seconds_sum") > 0
    assert value(after, "tokenguard_bearer_checks_total", outcome="ok") == 1
    assert value(after, "tokenguard_bearer_checks_total", outcome="invalid_token") == 1
    assert value(after, "tokenguard_bearer_checks_total", outcome="missing_token") == 1
    assert value(after, "tokenguard_bearer_checks_total", outcome="insufficient_scope") == 1
    # One licensed session (refreshed, so still one seat); the view token holds none.
    assert value(after, "tokenguard_licenses_in_use") == 1
    assert access  # the first access token was issued


def test_license_gauges_come_from_the_shared_store(
    app_factory: t.Callable[..., Flask], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    issuing = ops_app(app_factory, url, LICENSES=2)
    scraped = ops_app(app_factory, url, metrics=True, LICENSES=2)
    creds = cli(issuing, "create-client", "elsewhere")
    assert token(issuing.test_client(), creds).status_code == 200
    s = scrape(scraped.test_client())
    assert value(s, "tokenguard_licenses_in_use") == 1
    assert value(s, "tokenguard_licenses_total") == 2
    # ... while the other process's counters are its own.
    assert value(s, "tokenguard_tokens_issued_total", grant="client_credentials") == 0


def test_unlimited_licenses_have_no_total(app_factory: t.Callable[..., Flask]) -> None:
    s = scrape(ops_app(app_factory, metrics=True).test_client())
    assert ("tokenguard_licenses_total", ()) not in s
    assert value(s, "tokenguard_licenses_in_use") == 0


def test_store_errors_are_counted(
    app_factory: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = ops_app(app_factory, metrics=True, LICENSES=2)
    client = app.test_client()
    creds = cli(app, "create-client", "outage")
    store = app.extensions["tokenguard"].store(app)

    def down(*args: t.Any) -> t.Any:
        raise StoreError("down")

    monkeypatch.setattr(store, "get_client", down)
    refused = token(client, creds)
    assert refused.status_code == 503
    monkeypatch.setattr(store, "seats_in_use", down)
    s = scrape(client)
    assert value(s, "tokenguard_token_errors_total", error="temporarily_unavailable") == 1
    # The refused token request and the scrape that could not read the seats.
    assert value(s, "tokenguard_store_errors_total") == 2
    # A seat count the store could not give is left out, never reported as 0.
    assert ("tokenguard_licenses_in_use", ()) not in s
    assert value(s, "tokenguard_licenses_total") == 2


def test_lockouts_are_counted_as_throttled(app_factory: t.Callable[..., Flask]) -> None:
    app = ops_app(app_factory, metrics=True, LOCKOUT_THRESHOLD=1)
    client = app.test_client()
    public = cli(app, "create-client", "app", "--public")
    cli(app, "create-user", "ann", "--password-stdin", input="right horse\n")
    statuses = []
    for _ in range(2):
        response = client.post(
            "/connect/token",
            data={
                "grant_type": "password",
                "username": "ann",
                "password": "wrong",
                "client_id": public["client_id"],
            },
        )
        statuses.append(response.status_code)
    assert statuses == [400, 429]
    assert "Retry-After" in response.headers
    s = scrape(client)
    assert value(s, "tokenguard_auth_throttled_total") == 1
    assert value(s, "tokenguard_token_errors_total", error="invalid_grant") == 1
    assert value(s, "tokenguard_token_errors_total", error="slow_down") == 1


def test_metrics_refused_to_other_addresses(app_factory: t.Callable[..., Flask]) -> None:
    client = ops_app(app_factory, metrics=True).test_client()
    refused = client.get("/connect/metrics", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "access_denied"
    assert "tokenguard_" not in refused.get_data(as_text=True)
    for loopback in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert scrape(client, REMOTE_ADDR=loopback)


def test_allow_list_replaces_loopback(app_factory: t.Callable[..., Flask]) -> None:
    client = ops_app(
        app_factory, metrics=True, metrics_allow='["10.0.0.0/8", "192.0.2.5"]'
    ).test_client()
    assert scrape(client, REMOTE_ADDR="10.20.30.40")
    assert scrape(client, REMOTE_ADDR="192.0.2.5")
    for refused in ("127.0.0.1", "192.0.2.6"):
        response = client.get("/connect/metrics", environ_base={"REMOTE_ADDR": refused})
        assert response.status_code == 403


def test_allow_list_is_not_the_https_rule(app_factory: t.Callable[..., Flask]) -> None:
    # Plain HTTP from an allowed non-loopback address is answered although HTTPS is required.
    client = ops_app(
        app_factory, metrics=True, metrics_allow=["10.0.0.0/8"], REQUIRE_HTTPS=True
    ).test_client()
    assert scrape(client, REMOTE_ADDR="10.1.2.3")


def test_behind_the_proxy_the_forwarded_address_counts(
    app_factory: t.Callable[..., Flask],
) -> None:
    client = ops_app(
        app_factory, metrics=True, metrics_allow=["10.9.9.9"], TRUSTED_PROXY="192.0.2.1"
    ).test_client()
    allowed = client.get(
        "/connect/metrics",
        environ_base={"REMOTE_ADDR": "192.0.2.1"},
        headers={"X-Forwarded-For": "203.0.113.1, 10.9.9.9"},
    )
    assert allowed.status_code == 200
    spoofed = client.get(
        "/connect/metrics",
        environ_base={"REMOTE_ADDR": "192.0.2.1"},
        headers={"X-Forwarded-For": "10.9.9.9, 203.0.113.1"},
    )
    assert spoofed.status_code == 403
    # Not from the proxy: the header is not believed.
    direct = client.get(
        "/connect/metrics",
        environ_base={"REMOTE_ADDR": "203.0.113.1"},
        headers={"X-Forwarded-For": "10.9.9.9"},
    )
    assert direct.status_code == 403


def test_bad_allow_list_is_a_configuration_error(app_factory: t.Callable[..., Flask]) -> None:
    from flask_tokenguard.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="TOKENGUARD_METRICS_ALLOW"):
        ops_app(app_factory, metrics=True, metrics_allow=["not an address"])


def test_apps_have_their_own_registries(app_factory: t.Callable[..., Flask]) -> None:
    first = ops_app(app_factory, metrics=True)
    second = ops_app(app_factory, metrics=True)
    creds = cli(first, "create-client", "one")
    assert token(first.test_client(), creds).status_code == 200
    grant = {"grant": "client_credentials"}
    assert value(scrape(first.test_client()), "tokenguard_tokens_issued_total", **grant) == 1
    assert value(scrape(second.test_client()), "tokenguard_tokens_issued_total", **grant) == 0


def test_off_costs_nothing_and_records_nothing(app_factory: t.Callable[..., Flask]) -> None:
    app = ops_app(app_factory)
    state = app.extensions["tokenguard"].state(app)
    assert state.metrics is None
    # The hot-path functions are no-ops without metrics.
    metrics_mod.observe_token_request(state, "password", None, 0.1)
    metrics_mod.count_bearer_check(state, "ok")
    metrics_mod.count_store_error(state)
    metrics_mod.count_throttled(state)
    assert app.test_client().get("/connect/metrics").status_code == 404


@pytest.mark.server
def test_scrape_over_a_socket_moves(
    app_factory: t.Callable[..., Flask], live_server: t.Any
) -> None:
    app = ops_app(app_factory, metrics=True)
    creds = cli(app, "create-client", "socket")
    url = live_server(app)
    for _ in range(3):
        response = requests.post(
            url + "/connect/token",
            data={"grant_type": "client_credentials"},
            headers=basic(creds["client_id"], creds["client_secret"]),
            timeout=10,
        )
        assert response.status_code == 200
    text = requests.get(url + "/connect/metrics", timeout=10).text
    s = samples(text)
    assert value(s, "tokenguard_tokens_issued_total", grant="client_credentials") == 3
    assert value(s, "tokenguard_token_request_seconds_count") == 3
