"""``python -m sample_app [--host H] [--port P]``: serve the sample app with waitress.

On a first start with no clients it creates a demo client and prints its id and secret,
the only time the secret is shown, with ``curl`` lines to get a token that read the secret
at a hidden prompt rather than carrying it (shell history, process lists).
"""

from __future__ import annotations

import argparse
import sys
import time
import typing as t

from flask_tokenguard.core.clients import create_client
from flask_tokenguard.errors import StoreError
from flask_tokenguard.serving.runner import serve

from . import create_app
from . import guard

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask


def ensure_demo_client(app: Flask, base_url: str) -> None:
    """Create and announce the demo client once per store, even if several processes start."""
    state = guard.state(app)
    store = state.store
    if not store.claim_once("sample_app.demo_client") or store.list_clients():
        return
    client, secret = create_client(
        store,
        "Demo client",
        scopes=list(state.settings.scopes),
        known_scopes=list(state.settings.scopes),
        now=time.time(),
    )
    prefix = base_url + state.settings.url_prefix
    # The curl lines never carry the secret: pasted, it would stay in the shell's history
    # and show in process lists. It is read into a variable at a hidden prompt and handed
    # to curl on its standard input (printf is a shell builtin: no process sees it).
    print(
        "Created a demo client (its secret is shown only this once):\n"
        f"  client_id:     {client.client_id}\n"
        f"  client_secret: {secret}\n"
        "Get a token and call the API (paste the secret at the hidden prompt):\n"
        f"  TG_CLIENT_ID='{client.client_id}'; printf 'client secret: '; "
        "stty -echo 2>/dev/null; read -r TG_SECRET; stty echo 2>/dev/null; echo\n"
        '  printf \'user = "%s:%s"\\n\' "$TG_CLIENT_ID" "$TG_SECRET" | curl -s -K - '
        f"-d grant_type=client_credentials -d scope=view {prefix}/token\n"
        f"  curl -s -H 'Authorization: Bearer <access_token>' '{base_url}/orders?from=2026-04-01'",
        flush=True,
    )


def main(argv: t.Sequence[str] | None = None) -> int:
    """Serve the sample app; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m sample_app", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on [8080]")
    parser.add_argument("--threads", type=int, default=None, help="waitress worker threads")
    args = parser.parse_args(argv)
    app = create_app()
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal in a URL
    try:
        ensure_demo_client(app, f"http://{host}:{args.port}")
    except StoreError as exc:
        print(f"error: the token store is unavailable: {exc}", file=sys.stderr)
        return 1
    return serve(app, host=args.host, port=args.port, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
