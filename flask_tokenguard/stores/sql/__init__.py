"""SQL server engines through SQLAlchemy Core: PostgreSQL, MySQL/MariaDB, SQL Server.

``schema`` holds the tables and statements, ``migrations`` the creation and upgrade
steps, and ``store`` the behaviour (``SQLAlchemyStore``).
"""

from __future__ import annotations

from .store import SQLAlchemyStore

__all__ = ["SQLAlchemyStore"]
