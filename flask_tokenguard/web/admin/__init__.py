"""The admin console: server-rendered pages at ``<prefix>/admin/`` (``TOKENGUARD_ADMIN_ENABLED``).

Clients, licences and recent security events, for administrators signed in with a
server-side session. Templates and the stylesheet ship as package data; no JavaScript is
needed but for the "Copy" button.
"""

from __future__ import annotations

from .views import bp

__all__ = ["bp"]
