"""Store backends, chosen by the scheme of ``TOKENGUARD_STORE_URL`` (as ``limits`` does).

Backend modules import their drivers lazily, so an install without the ``redis`` or ``sql``
extra can still use ``sqlite://`` and ``memory://``.
"""

from __future__ import annotations

import importlib
import typing as t
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import SCHEME_MODULES
from .base import SCHEMES
from .base import Store

__all__ = ["Store", "store_from_url"]


def store_from_url(url: str, **options: t.Any) -> Store:
    """Build the store that serves ``url``; raise ``ConfigurationError`` for unknown schemes."""
    scheme = urlsplit(url).scheme.lower()
    module = SCHEME_MODULES.get(scheme)
    if module is None:
        raise ConfigurationError(
            f"TOKENGUARD_STORE_URL has an unknown scheme {scheme!r}; "
            f"use one of {', '.join(sorted(SCHEME_MODULES))}"
        )
    importlib.import_module(f"{__name__}.{module}")
    return SCHEMES[scheme](url, **options)
