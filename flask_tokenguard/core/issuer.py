"""The issuer when ``TOKENGUARD_ISSUER`` is unset: loopback or ``SERVER_NAME`` only.

Without a configured issuer, the request's own host URL names the issuer (and the
audience) only when nobody else can choose it: a loopback host (``127.0.0.0/8``,
``localhost``, ``[::1]``, any port) or the app's ``SERVER_NAME``. Any other ``Host``
header would let a client mint tokens for another service's audience, so it gets no
issuer at all. Tokens are checked by the same rule: with no issuer configured, their
``iss`` and ``aud`` must be such a URL.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_issuer(url: str, server_name: str | None) -> bool:
    """True when ``url`` is ``http(s)://<loopback host>[:port]`` or the ``SERVER_NAME`` URL.

    The URL has no path (a trailing ``/`` is tolerated), query, fragment or user info.
    """
    if not isinstance(url, str) or not url.isascii() or not url.isprintable():
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return False
    if parts.query or parts.fragment or "@" in parts.netloc or not parts.hostname:
        return False
    if server_name and parts.netloc.lower() == server_name.strip().lower():
        return True
    del port
    return _is_loopback_host(parts.hostname.lower())


def request_issuer(host_url: str, server_name: str | None) -> str | None:
    """The issuer for a request whose host URL is ``host_url``, or None when it may not be one.

    ``host_url`` is the request's scheme and host (``http://127.0.0.1:8080/``); the
    result has no trailing slash.
    """
    issuer = host_url.rstrip("/")
    return issuer if is_local_issuer(issuer, server_name) else None
