"""``<prefix>/openapi.json``: a valid OpenAPI 3.1 document of every endpoint, which the
running server conforms to (fuzzed with schemathesis, bounded by examples and time)."""

from __future__ import annotations

import json
import traceback
import typing as t
from importlib import resources

import pytest
import requests
from flask import Flask
from openapi_spec_validator import validate

from tests.helpers import cli
from tests.ops_support import ops_app

# Until config.py knows the metrics keys, other readers of the config warn about them.


def shipped() -> dict[str, t.Any]:
    text = resources.files("flask_tokenguard.web").joinpath("openapi.json").read_text("utf-8")
    return t.cast("dict[str, t.Any]", json.loads(text))


def test_the_shipped_document_is_valid_openapi_31() -> None:
    doc = shipped()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_the_served_document_is_valid_and_carries_the_deployment(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = ops_app(
        app_factory,
        ISSUER="https://auth.example.com",
        SCOPES={"read": "Read", "write": "Write"},
        SCOPE_IMPLIES={},
        LICENSED_SCOPES=["write"],
        DEFAULT_SCOPE="read",
    )
    doc = app.test_client().get("/connect/openapi.json").get_json()
    validate(doc)
    assert doc["servers"] == [
        {"url": "https://auth.example.com/connect", "description": "This server"}
    ]
    flows = doc["components"]["securitySchemes"]["oauth2"]["flows"]
    assert set(flows) == {"clientCredentials", "password"}
    for flow in flows.values():
        assert flow["tokenUrl"] == "https://auth.example.com/connect/token"
        assert flow["scopes"] == {"read": "Read", "write": "Write"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_endpoint_is_described(app_factory: t.Callable[..., Flask]) -> None:
    app = ops_app(app_factory, metrics=True)
    doc = shipped()
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        blueprint = (rule.endpoint or "").split(".")[0]
        if blueprint in ("tokenguard", "tokenguard_ops") and not rule.endpoint.endswith(
            "_post_only"
        ):
            path = rule.rule.removeprefix("/connect")
            methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
            served.update((path, m) for m in methods)
    described = {(path, m) for path, item in doc["paths"].items() for m in item}
    assert served == described
    token = doc["paths"]["/token"]["post"]
    assert set(token["requestBody"]["content"]) == {
        "application/x-www-form-urlencoded",
        "application/json",
    }
    assert {"200", "400", "401", "503"} <= set(token["responses"])


@pytest.mark.server
def test_the_running_server_conforms(
    app_factory: t.Callable[..., Flask], live_server: t.Any
) -> None:
    import hypothesis
    import schemathesis
    from schemathesis import checks

    app = ops_app(app_factory, metrics=True, LICENSES=2)
    cli(app, "create-client", "fuzzed")
    url = live_server(app)
    raw = requests.get(url + "/connect/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)
    base_url = url + "/connect"
    chosen = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
    ]
    session = requests.Session()
    operations = [t.cast(t.Any, result).ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    for operation in operations:

        @hypothesis.settings(
            max_examples=12,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case: t.Any) -> None:
            case.call_and_validate(base_url=base_url, session=session, checks=chosen, timeout=10)

        run()


@pytest.mark.server
def test_the_fuzzing_catches_a_wrong_document(
    app_factory: t.Callable[..., Flask], live_server: t.Any
) -> None:
    """The check above is not vacuous: a document that lies about /health is caught."""
    import hypothesis
    import schemathesis
    from schemathesis import checks

    url = live_server(ops_app(app_factory))
    raw = requests.get(url + "/connect/openapi.json", timeout=10).json()
    raw["components"]["schemas"]["Health"]["properties"]["status"]["enum"] = ["fine"]
    operation = schemathesis.openapi.from_dict(raw)["/health"]["GET"]

    @hypothesis.settings(max_examples=1, deadline=None, database=None)
    @hypothesis.given(case=operation.as_strategy())
    def run(case: t.Any) -> None:
        case.call_and_validate(
            base_url=url + "/connect", checks=[checks.response_schema_conformance], timeout=10
        )

    with pytest.raises(BaseException) as caught:  # noqa: PT011 - a FailureGroup
        run()
    assert '"ok" is not one of "fine"' in "".join(traceback.format_exception(caught.value))
