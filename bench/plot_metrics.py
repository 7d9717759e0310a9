"""Plot the metrics over a short load run: ``docs/metrics-load-run.png``.

    .venv/bin/python bench/plot_metrics.py [SECONDS]     # needs matplotlib

Serves a guarded app with metrics on (waitress, SQLite store, 5 licences), runs a load of
token requests (some with a wrong secret, some beyond the licences) and guarded requests
from a few threads, scrapes ``/metrics`` every half second, and plots rates and seats.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import threading
import time
import typing as t

import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_tokenguard import require_token
from flask_tokenguard import TokenGuard
from flask_tokenguard.serving.runner import Runner
from flask_tokenguard.web.ops import init_ops

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "metrics-load-run.png")


def make_app() -> Flask:
    app = Flask("plot_metrics")
    app.config.update(
        TOKENGUARD_STORE_URL=f"sqlite:///{tempfile.mkdtemp()}/plot.sqlite3",
        TOKENGUARD_LICENSES=5,
        TOKENGUARD_SESSION_TTL=4,
        TOKENGUARD_PASSWORD_HASH_COST=10,
    )
    TokenGuard(app)
    app.config["TOKENGUARD_METRICS_ENABLED"] = True
    init_ops(app)

    @app.get("/guarded")
    @require_token("view")
    def guarded() -> t.Any:
        return {"ok": True}

    return app


def scrape(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    text = requests.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def load(url: str, basic: str, wrong: str, stop: threading.Event, worker: int) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        i += 1
        auth = wrong if (i + worker) % 7 == 0 else basic
        scope = "all" if i % 3 == 0 else "view"
        response = session.post(
            url + "/token",
            data={"grant_type": "client_credentials", "scope": scope},
            headers={"Authorization": auth},
            timeout=10,
        )
        if response.status_code == 200:
            token = response.json()["access_token"]
            for _ in range(5):
                session.get(
                    url + "/guarded", headers={"Authorization": f"Bearer {token}"}, timeout=10
                )
        session.get(url + "/guarded", headers={"Authorization": "Bearer nope"}, timeout=10)


def main(seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    app = make_app()
    result = app.test_cli_runner().invoke(args=["tokenguard", "create-client", "load", "--json"])
    import json

    creds = json.loads(result.output)
    basic = (
        "Basic "
        + base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    )
    wrong = "Basic " + base64.b64encode(f"{creds['client_id']}:wrong".encode()).decode()
    runner = Runner(app, host="127.0.0.1", port=0, threads=4)
    runner.start()
    url = runner.url
    stop = threading.Event()
    workers = [
        threading.Thread(target=load, args=(url, basic, wrong, stop, n), daemon=True)
        for n in range(3)
    ]
    times: list[float] = []
    scrapes: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        for w in workers:
            w.start()
        while time.monotonic() - started < seconds:
            times.append(time.monotonic() - started)
            scrapes.append(scrape(url))
            time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
        runner.stop()

    def rate(name: str) -> list[float]:
        out = [0.0]
        for i in range(1, len(times)):
            delta = scrapes[i].get(name, 0) - scrapes[i - 1].get(name, 0)
            out.append(delta / (times[i] - times[i - 1]))
        return out

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    top.plot(times, rate("tokenguard_tokens_issued_total"), label="tokens issued /s")
    top.plot(times, rate("tokenguard_token_errors_total"), label="token errors /s")
    top.legend(loc="upper right")
    top.set_title("flask-tokenguard metrics over a short load run")
    middle.plot(times, rate("tokenguard_bearer_checks_total"), label="bearer checks /s")
    middle.legend(loc="upper right")
    bottom.plot(
        times, [s.get("tokenguard_licenses_in_use", 0) for s in scrapes], label="seats in use"
    )
    bottom.plot(
        times, [s.get("tokenguard_licenses_total", 0) for s in scrapes], "--", label="licenses"
    )
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="lower right")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fig.savefig(OUT, dpi=80)
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20)
