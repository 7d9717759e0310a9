"""Operations endpoints: ``<prefix>/health``, ``<prefix>/metrics``, ``<prefix>/openapi.json``.

``init_ops(app)`` registers the blueprint under ``TOKENGUARD_URL_PREFIX`` and, with
``TOKENGUARD_METRICS_ENABLED``, the app's metrics and the request hooks that feed them.

- ``/health`` asks the store (``Store.check()``, a ping or ``SELECT 1``) in a worker thread
  and waits at most ``HEALTH_TIMEOUT`` seconds, so a store that hangs (a dropped network
  path rather than a refused connection) still gets a prompt 503. Probes that arrive
  while a check is running wait for that same check rather than starting another, so a
  hung store never piles up threads.
- ``/metrics`` answers only the addresses in ``TOKENGUARD_METRICS_ALLOW``; the HTTPS rule
  does not apply to it.
- ``/openapi.json`` is the document shipped in the package, with the URL prefix (and the
  issuer, when configured) applied to its server and token URLs.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import json
import threading
import time
import typing as t
from importlib import resources

from flask import Blueprint
from flask import current_app
from flask import Flask
from flask import jsonify
from flask import request
from flask import Response
from flask.globals import _cv_app

from ..errors import OAuthError
from ..errors import StoreError
from . import metrics as metrics_mod
from .state import current_state

#: Seconds ``/health`` waits for the store's answer.
HEALTH_TIMEOUT = 2.0
#: ``Retry-After`` of a 503 from ``/health``.
HEALTH_RETRY_AFTER = 5

ops_bp = Blueprint("tokenguard_ops", __name__)

_TOKEN_ENDPOINT = "tokenguard.token"
_STORE_DESCRIPTION = "The token store is unavailable"
#: Endpoints whose 503s are not store failures of a request (the token view counts its own).
_OWN_ENDPOINTS = frozenset({_TOKEN_ENDPOINT, "tokenguard_ops.health", "tokenguard_ops.metrics"})


def _state() -> t.Any:
    return current_state()


class HealthProbe:
    """One app's bounded store check, shared by concurrent probes."""

    def __init__(self, timeout: float = HEALTH_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def check(self, store: t.Any) -> bool:
        """True if the store answered within the timeout."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="tokenguard-health"
                )
            if self._pending is None or self._pending.done():
                self._pending = self._executor.submit(store.check)
            pending = self._pending
        try:
            pending.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            return False
        except StoreError:
            return False
        except Exception:  # noqa: BLE001 - any failure of the store's driver is "unavailable"
            current_app.logger.warning("health: store check failed", exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Stop the worker thread (it finishes a check in flight first)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None


def _probe() -> HealthProbe:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    probe: HealthProbe = app.extensions["tokenguard_ops"]
    return probe


@ops_bp.get("/health")
def health() -> Response:
    """200 when the store answers, else 503 with ``Retry-After``; open and plain-HTTP."""
    if _probe().check(_state().store):
        response = jsonify(status="ok", store="ok")
    else:
        response = jsonify(status="unavailable", store="unavailable")
        response.status_code = 503
        response.headers["Retry-After"] = str(HEALTH_RETRY_AFTER)
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, error: str, description: str) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def client_address(state: t.Any, environ: t.Mapping[str, t.Any]) -> str | None:
    """The requester's address: behind the trusted proxy, the last ``X-Forwarded-For``.

    Under the product's waitress runner ``REMOTE_ADDR`` is already the forwarded address;
    under another server the peer is the proxy itself and its header is read here.
    """
    remote = t.cast("str | None", environ.get("REMOTE_ADDR"))
    settings = state.settings
    proxy = settings.trusted_proxy
    if (
        proxy is not None
        and remote == proxy
        and "x-forwarded-for" in settings.trusted_proxy_headers
    ):
        forwarded = str(environ.get("HTTP_X_FORWARDED_FOR", "")).rsplit(",", 1)[-1].strip()
        if forwarded:
            return forwarded
    return remote


@ops_bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus text format, to the allowed addresses only."""
    state = _state()
    registry: metrics_mod.Metrics | None = getattr(state, "metrics", None)
    if registry is None:
        return _error(404, "not_found", "Metrics are off: set TOKENGUARD_METRICS_ENABLED.")
    if not registry.allowed(client_address(state, request.environ)):
        return _error(403, "access_denied", "This address may not read the metrics.")
    body, content_type = registry.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@functools.lru_cache(maxsize=1)
def _document() -> dict[str, t.Any]:
    text = resources.files(__package__).joinpath("openapi.json").read_text("utf-8")
    return t.cast("dict[str, t.Any]", json.loads(text))


def openapi_document(
    prefix: str, issuer: str | None, scopes: t.Mapping[str, str]
) -> dict[str, t.Any]:
    """The shipped document with this deployment's prefix, issuer and scopes applied.

    Without an issuer the URLs stay relative (``/connect``), resolved against wherever the
    document was fetched from; with one they are absolute, which Postman's and Insomnia's
    token helpers need.
    """
    doc = copy.deepcopy(_document())
    base = (issuer or "") + prefix
    doc["servers"] = [{"url": base or "/", "description": "This server"}]
    flows = doc["components"]["securitySchemes"]["oauth2"]["flows"]
    for flow in flows.values():
        flow["tokenUrl"] = flow["refreshUrl"] = f"{base}/token"
        flow["scopes"] = dict(scopes)
    return doc


@ops_bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of these endpoints."""
    settings = _state().settings
    response = jsonify(openapi_document(settings.url_prefix, settings.issuer, settings.scopes))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# -- feeding the metrics from the request cycle --------------------------------------------
#
# Token requests are timed by wrapping the token view, so no other request pays for it.
# Every request pays one ``after_request`` hook: a ``g`` lookup, and an increment when a
# guarded route ran.


def _error_of(response: Response) -> tuple[str | None, str]:
    if response.mimetype != "application/json":
        return None, ""
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return None, ""
    return body.get("error"), str(body.get("error_description", ""))


def _bearer_outcome(response: Response) -> str | None:
    challenge = response.headers.get("WWW-Authenticate", "")
    if not challenge.lower().startswith("bearer"):
        return None
    marker = 'error="'
    start = challenge.find(marker)
    if start < 0:
        return "missing_token"
    start += len(marker)
    return challenge[start : challenge.find('"', start)]


def _grant_type() -> str | None:
    if request.mimetype == "application/json":
        params = request.get_json(silent=True)
    else:
        params = request.form
    value = params.get("grant_type") if isinstance(params, t.Mapping) else None
    return value if isinstance(value, str) else None


def _timed_token_view(view: t.Callable[..., t.Any], state: t.Any) -> t.Callable[..., t.Any]:
    """Wrap the token view: time it, count what it issued or why it refused."""

    @functools.wraps(view)
    def token(*args: t.Any, **kwargs: t.Any) -> t.Any:
        started = time.perf_counter()
        try:
            response = view(*args, **kwargs)
        except StoreError:
            metrics_mod.observe_token_request(
                state, None, "temporarily_unavailable", time.perf_counter() - started
            )
            metrics_mod.count_store_error(state)
            raise
        except OAuthError as exc:
            seconds = time.perf_counter() - started
            error = exc.error
            metrics_mod.observe_token_request(state, None, error, seconds)
            if error == "temporarily_unavailable":
                if str(exc.description or "").startswith(_STORE_DESCRIPTION):
                    metrics_mod.count_store_error(state)
                else:
                    metrics_mod.count_throttled(state)
            elif error == "slow_down":
                metrics_mod.count_throttled(state)
            raise
        except Exception:
            metrics_mod.observe_token_request(
                state, None, "server_error", time.perf_counter() - started
            )
            raise
        metrics_mod.observe_token_request(state, _grant_type(), None, time.perf_counter() - started)
        return response

    return token


def _counting_hook(state: t.Any) -> t.Callable[[Response], Response]:
    """The ``after_request`` hook that counts bearer checks and guarded store failures."""
    ok = state.metrics.bearer_children["ok"]
    # The app context by its context variable, not through the ``g`` proxy: this runs on
    # every request, and the proxy's lookup costs more than the count.
    app_context = _cv_app.get

    def count(response: Response) -> Response:
        if app_context().g.__dict__.get("_tokenguard_token") is not None:
            ok.inc()
            return response
        status = response.status_code
        if status == 401 or status == 403:
            outcome = _bearer_outcome(response)
            if outcome is not None:
                metrics_mod.count_bearer_check(state, outcome)
        elif status == 503 and request.endpoint not in _OWN_ENDPOINTS:
            error, description = _error_of(response)
            if error == "temporarily_unavailable" and description.startswith(_STORE_DESCRIPTION):
                metrics_mod.count_store_error(state)
        return response

    return count


def init_ops(app: Flask, *, hooks: bool = True) -> None:
    """Register ``/health``, ``/metrics`` and ``/openapi.json`` under the URL prefix, and
    the metrics when ``TOKENGUARD_METRICS_ENABLED`` is on. Call after ``init_app``.

    With metrics on, the token view is wrapped to time and count every token request. With
    ``hooks`` an ``after_request`` hook also counts bearer checks from the responses; the
    extension passes ``hooks=False``, since its guard counts them where they happen."""
    state = app.extensions["tokenguard"].state(app)
    app.extensions["tokenguard_ops"] = HealthProbe()
    app.register_blueprint(ops_bp, url_prefix=state.settings.url_prefix or None)
    if metrics_mod.init_metrics(app, state) is not None:
        view = app.view_functions.get(_TOKEN_ENDPOINT)
        if view is not None:
            app.view_functions[_TOKEN_ENDPOINT] = _timed_token_view(view, state)
        if hooks:
            app.after_request(_counting_hook(state))
