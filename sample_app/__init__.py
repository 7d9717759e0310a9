"""An orders API guarded by flask_tokenguard, to demonstrate and to test against.

``flask --app sample_app`` finds ``create_app``; ``python -m sample_app`` serves it.
"""

from __future__ import annotations

import datetime
import re
import threading
import typing as t

from flask import Flask
from flask import jsonify
from flask import request

from flask_tokenguard import current_token
from flask_tokenguard import require_token
from flask_tokenguard import TokenGuard
from flask_tokenguard.web import ops

guard = TokenGuard()

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

_orders_lock = threading.Lock()
_ORDERS: list[dict[str, t.Any]] = [
    {"id": 1, "date": "2026-03-28", "item": "Widget", "quantity": 4},
    {"id": 2, "date": "2026-04-02", "item": "Gadget", "quantity": 1},
    {"id": 3, "date": "2026-04-15", "item": "Sprocket", "quantity": 12},
]


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Build the sample app; ``FLASK_*`` environment variables override its config."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)
    guard.init_app(app)

    if guard.state(app).settings.url_prefix:
        # The extension answers <prefix>/health; load balancers probe the root too.
        app.add_url_rule("/health", endpoint="health", view_func=ops.health)

    @app.get("/orders")
    @require_token("view")
    def list_orders() -> t.Any:
        since = request.args.get("from")
        orders = list(_ORDERS)
        if since is not None:
            try:
                if not _DATE.fullmatch(since):
                    raise ValueError(since)
                start = datetime.date.fromisoformat(since)
            except ValueError:
                return jsonify(
                    error="invalid_request", error_description="from must be YYYY-MM-DD"
                ), 400
            orders = [o for o in orders if datetime.date.fromisoformat(o["date"]) >= start]
        return {"orders": orders}

    @app.post("/orders")
    @require_token("all")
    def create_order() -> t.Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("item"), str):
            return jsonify(error="invalid_request", error_description="send JSON with an item"), 400
        quantity = body.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
            return jsonify(
                error="invalid_request", error_description="quantity must be a positive integer"
            ), 400
        with _orders_lock:
            order = {
                "id": max((o["id"] for o in _ORDERS), default=0) + 1,
                "date": datetime.date.today().isoformat(),
                "item": body["item"],
                "quantity": quantity,
                "created_by": current_token.subject,
            }
            _ORDERS.append(order)
        return order, 201

    @app.get("/whoami")
    @require_token()
    def whoami() -> t.Any:
        return {
            "client_id": current_token.client_id,
            "subject": current_token.subject,
            "scopes": sorted(current_token.scopes),
            "session_id": current_token.session_id,
            "expires_at": int(current_token.expires_at),
        }

    return app


__all__ = ["create_app", "guard"]
