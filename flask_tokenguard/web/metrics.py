"""Prometheus metrics: per-process counters and histograms, licence gauges read at scrape time.

``prometheus_client`` (the extra ``metrics``) is imported only when
``TOKENGUARD_METRICS_ENABLED`` is true. Each app gets its own ``CollectorRegistry`` (never
the library's global one), so several apps in one process do not collide. The counters
live in the process that served the requests; the licence gauges ask the store on every
scrape, so every process sharing a store reports the same seats.

The hot paths call the ``observe_*``/``count_*`` functions with the app's state; when metrics
are off each returns after one attribute read.
"""

from __future__ import annotations

import ipaddress
import time
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from ..stores.base import Store

#: Buckets of ``tokenguard_token_request_seconds``: a token request is a store round trip,
#: a signature and, for the password grant, a slow password hash.
TOKEN_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: Addresses allowed to scrape when ``TOKENGUARD_METRICS_ALLOW`` is not set: loopback.
DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Metrics:
    """One app's registry and instruments."""

    def __init__(self, store: Store, licenses: int | None, allow: t.Sequence[str]) -> None:
        import prometheus_client as prom

        self.allow: tuple[Network, ...] = parse_allow(allow)
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.tokens_issued = prom.Counter(
            "tokenguard_tokens_issued",
            "Access tokens issued, by grant type.",
            ["grant"],
            registry=self.registry,
        )
        self.token_errors = prom.Counter(
            "tokenguard_token_errors",
            "Token requests refused, by RFC 6749 error code.",
            ["error"],
            registry=self.registry,
        )
        self.token_seconds = prom.Histogram(
            "tokenguard_token_request_seconds",
            "Time spent answering token requests, successful or not.",
            buckets=TOKEN_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.throttled = prom.Counter(
            "tokenguard_auth_throttled",
            "Authentication attempts refused by lockout or password-check throttling.",
            registry=self.registry,
        )
        self.bearer_checks = prom.Counter(
            "tokenguard_bearer_checks",
            "Bearer token checks on guarded routes, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.store_errors = prom.Counter(
            "tokenguard_store_errors",
            "Requests that failed because the store could not be reached.",
            registry=None,
        )
        # Registered before the counter so that a scrape whose seat count failed reports
        # that failure in the same scrape.
        self.registry.register(LicenseCollector(store, licenses, self.store_errors))
        self.registry.register(self.store_errors)
        # The two label sets every dashboard shows, present at 0 from the start.
        for grant in ("client_credentials", "password", "refresh_token"):
            self.tokens_issued.labels(grant)
        #: Children resolved once: ``labels()`` costs more than the increment itself.
        self.bearer_children: dict[str, t.Any] = {
            outcome: self.bearer_checks.labels(outcome)
            for outcome in ("ok", "invalid_token", "insufficient_scope")
        }

    def allowed(self, address: str | None) -> bool:
        """True if ``address`` may scrape."""
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        candidates = (ip, mapped) if mapped is not None else (ip,)
        return any(c in net for c in candidates for net in self.allow if c.version == net.version)

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric, and its content type."""
        import prometheus_client as prom

        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class LicenseCollector:
    """``tokenguard_licenses_in_use`` and ``tokenguard_licenses_total``, asked of the store.

    A store that cannot be reached drops ``in_use`` from the scrape (rather than reporting
    a wrong 0) and counts a store error.
    """

    def __init__(self, store: Store, licenses: int | None, store_errors: t.Any) -> None:
        self._store = store
        self._licenses = licenses
        self._store_errors = store_errors

    def describe(self) -> list[t.Any]:
        """Describe without asking the store (the registry calls this on register)."""
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily("tokenguard_licenses_in_use", "Seats held by live sessions."),
            GaugeMetricFamily("tokenguard_licenses_total", "Seats configured (absent: no limit)."),
        ]

    def collect(self) -> t.Iterator[t.Any]:
        """Read the seats in use now."""
        from prometheus_client.core import GaugeMetricFamily

        from ..errors import StoreError

        try:
            in_use = self._store.seats_in_use(time.time())
        except StoreError:
            self._store_errors.inc()
        else:
            yield GaugeMetricFamily(
                "tokenguard_licenses_in_use", "Seats held by live sessions.", value=in_use
            )
        if self._licenses is not None:
            yield GaugeMetricFamily(
                "tokenguard_licenses_total",
                "Seats configured (absent: no limit).",
                value=self._licenses,
            )


def parse_allow(allow: t.Sequence[str] | str | None) -> tuple[Network, ...]:
    """``TOKENGUARD_METRICS_ALLOW`` as networks: a JSON list (or one string) of addresses
    or CIDR networks; ``None`` means loopback."""
    import json

    if allow is None:
        allow = DEFAULT_ALLOW
    if isinstance(allow, str):
        text = allow.strip()
        allow = json.loads(text) if text.startswith("[") else text.replace(",", " ").split()
    networks = []
    for entry in t.cast("t.Sequence[str]", allow):
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"TOKENGUARD_METRICS_ALLOW must list addresses or CIDR networks, got {entry!r}"
            ) from None
    return tuple(networks)


def metrics_enabled(app: Flask) -> bool:
    """``TOKENGUARD_METRICS_ENABLED`` of ``app`` (a bool or a string from the environment)."""
    value = app.config.get("TOKENGUARD_METRICS_ENABLED", False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def init_metrics(app: Flask, state: t.Any) -> Metrics | None:
    """Build the app's metrics when enabled and hang them on ``state.metrics``."""
    metrics: Metrics | None = None
    if metrics_enabled(app):
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                "TOKENGUARD_METRICS_ENABLED needs prometheus_client: "
                "pip install 'flask-tokenguard[metrics]'"
            ) from None
        metrics = Metrics(
            state.store,
            state.settings.licenses,
            app.config.get("TOKENGUARD_METRICS_ALLOW") or DEFAULT_ALLOW,
        )
    state.metrics = metrics
    return metrics


# -- what the hot paths call: each a no-op when metrics are off ----------------------------


def observe_token_request(
    state: t.Any, grant: str | None, error: str | None, seconds: float
) -> None:
    """One token request: issued (``error`` None) for ``grant``, or refused with ``error``."""
    metrics: Metrics | None = getattr(state, "metrics", None)
    if metrics is None:
        return
    if error is None:
        metrics.tokens_issued.labels(grant or "unknown").inc()
    else:
        metrics.token_errors.labels(error).inc()
    metrics.token_seconds.observe(seconds)


def count_bearer_check(state: t.Any, outcome: str) -> None:
    """A guarded route checked a Bearer token: ``ok``, ``invalid_token``, ``insufficient_scope``
    (or another RFC 6750 code)."""
    metrics: Metrics | None = getattr(state, "metrics", None)
    if metrics is not None:
        child = metrics.bearer_children.get(outcome)
        if child is None:
            child = metrics.bearer_children[outcome] = metrics.bearer_checks.labels(outcome)
        child.inc()


def count_store_error(state: t.Any) -> None:
    """A request failed because the store could not be reached."""
    metrics: Metrics | None = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.store_errors.inc()


def count_throttled(state: t.Any) -> None:
    """An authentication attempt was refused by lockout or throttling."""
    metrics: Metrics | None = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.throttled.inc()
