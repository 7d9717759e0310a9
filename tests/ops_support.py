"""Building the sample app with the operations endpoints, for the ops, metrics, OpenAPI and
doctor tests."""

from __future__ import annotations

import typing as t

from flask import Flask
from prometheus_client.parser import text_string_to_metric_families


def ops_app(
    app_factory: t.Callable[..., Flask],
    store_url: str | None = None,
    *,
    metrics: bool = False,
    metrics_allow: t.Any = None,
    **config: t.Any,
) -> Flask:
    """The sample app (prefix ``/connect`` unless given), metrics on or off; ``init_app``
    registers ``/health``, ``/metrics`` and ``/openapi.json``."""
    config.setdefault("URL_PREFIX", "/connect")
    config["METRICS_ENABLED"] = metrics
    if metrics_allow is not None:
        config["METRICS_ALLOW"] = metrics_allow
    return app_factory(store_url, **config)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result
