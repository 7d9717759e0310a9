"""A small Flask app served by ``flask_tokenguard.serving.runner.serve`` for the drain tests.

Run as ``python tests/apps/slow_app.py [--port 0] [--started FILE]``: it logs
``Serving on http://127.0.0.1:PORT`` to stderr, and ``/slow`` appends a line to FILE
when a request starts, so a test knows which requests a worker has picked up. It reads
``FLASK_*`` environment variables into its config (``FLASK_TOKENGUARD_LOG_FORMAT=json``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings

from flask import Flask
from flask import request
from flask import Response

#: Size of the body of ``/slow``: big enough to stay in waitress's output buffers.
BODY_SIZE = 2 * 1024 * 1024
#: Seconds ``/slow`` sleeps before answering.
SLOW_SECONDS = 1.2


def body() -> bytes:
    """Return the deterministic body of ``/slow``."""
    block = hashlib.sha256(b"tokenguard").digest() * 32  # 1 KiB
    return (block * (BODY_SIZE // len(block) + 1))[:BODY_SIZE]


def create_app(started: str | None = None) -> Flask:
    """Build the app; ``started`` names a file that ``/slow`` appends to on entry."""
    app = Flask(__name__)
    app.config.from_prefixed_env()
    # Touching the logger now gives it Flask's own text handler, as many apps do.
    app.logger.debug("slow app created")
    payload = body()

    @app.get("/slow")
    def slow() -> Response:
        if started:
            with open(started, "a", encoding="ascii") as f:
                f.write("started\n")
        time.sleep(float(request.args.get("seconds", SLOW_SECONDS)))
        return Response(payload, mimetype="application/octet-stream")

    @app.get("/echo")
    def echo() -> dict[str, str | None]:
        return {
            "scheme": request.scheme,
            "remote_addr": request.remote_addr,
            "forwarded_proto": request.headers.get("X-Forwarded-Proto"),
        }

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom\nwith a second line")

    @app.get("/warn")
    def warn() -> str:
        warnings.warn("a deprecated call", DeprecationWarning, stacklevel=1)
        app.logger.warning("the app logs a warning")
        return "warned"

    return app


def main(argv: list[str] | None = None) -> int:
    from flask_tokenguard.serving.runner import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--started")
    args = parser.parse_args(argv)
    app = create_app(args.started)
    warnings.simplefilter("default")  # show the DeprecationWarning of /warn
    return serve(app, port=args.port, threads=args.threads, access_log=True)


if __name__ == "__main__":
    sys.exit(main())
