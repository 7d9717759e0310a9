"""The one fork-safety mechanism of the stores.

A connection inherited through ``fork()`` is shared with the parent: both processes
would talk over one socket (or one SQLite handle) and corrupt each other's session. A
store that pools connections registers itself with ``forget_after_fork``; in the child,
each registered store's ``_forget_connections()`` drops what it inherited without
closing it (closing would end the parent's session too), and opens fresh connections
on next use. One ``os.register_at_fork`` hook serves every store of the process.
"""

from __future__ import annotations

import os
import threading
import typing as t
import weakref


class ForkAware(t.Protocol):
    """A store that holds connections a forked child must not use."""

    def _forget_connections(self) -> None: ...


_STORES: weakref.WeakSet[t.Any] = weakref.WeakSet()
_LOCK = threading.Lock()
_HOOKED = False


def forget_after_fork(store: ForkAware) -> None:
    """Have ``store`` forget its connections in every child forked from now on."""
    global _HOOKED
    with _LOCK:
        _STORES.add(store)
        if not _HOOKED and hasattr(os, "register_at_fork"):  # not on Windows
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _HOOKED = True


def _after_fork_in_child() -> None:
    """In the child: every registered store forgets what it inherited."""
    global _LOCK
    # The parent may have forked while another thread held the lock.
    _LOCK = threading.Lock()
    for store in list(_STORES):
        store._forget_connections()
