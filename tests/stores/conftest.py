"""Every store test runs once per backend of ``tests/backends.py`` (as limits' suites do).

A test that uses the ``store`` fixture (or ``store_id``) is parametrised over every
backend; one marked ``@pytest.mark.cross_process`` over those that separate processes
share. Besides the backends of the HTTP tests, these include a Redis Sentinel and a Redis
Cluster topology (``redis+sentinel``, ``redis+cluster``, marked ``replication``), started at
the first test that needs one and stopped when the session ends. Isolation, server URLs
and CI behaviour are described in ``tests/backends.py``.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from flask_tokenguard.stores.base import Store
from tests.backends import backend_url_and_options
from tests.backends import CROSS_PROCESS_STORE_BACKENDS as CROSS_PROCESS_STORES
from tests.backends import open_store
from tests.backends import STORE_BACKENDS as STORES
from tests.replicated_backends import replicated_topologies

__all__ = ["replicated_topologies"]  # the session fixture that stops the topologies


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses a store once per backend (a subset if marked).

    A test may also choose its own: ``@pytest.mark.parametrize("store_id", [...])``.
    """
    if "store_id" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "store_id" in names:
            return
    cross = metafunc.definition.get_closest_marker("cross_process") is not None
    metafunc.parametrize("store_id", CROSS_PROCESS_STORES if cross else STORES)


@pytest.fixture(name="store_url_and_options")
def store_url_and_options_fixture(store_id: str, tmp_path: Path) -> tuple[str, dict[str, t.Any]]:
    """``(url, options)`` of a fresh store, for tests that build their own stores."""
    return backend_url_and_options(store_id, tmp_path)


@pytest.fixture(name="open_store")
def open_store_fixture() -> t.Callable[..., t.ContextManager[Store]]:
    """The ``open_store`` helper, for tests that open a store themselves."""
    return open_store


@pytest.fixture
def store(store_url_and_options: tuple[str, dict[str, t.Any]]) -> t.Iterator[Store]:
    """An empty store of the backend under test, closed afterwards."""
    url, options = store_url_and_options
    with open_store(url, options) as store:
        yield store
