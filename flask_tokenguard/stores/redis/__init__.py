"""``redis://``, ``rediss://``, ``redis+unix://``: one store shared by many hosts;
``redis+sentinel://`` and ``redis+cluster://``: the same store on a replicated Redis.

``store`` holds ``RedisStore``; the Lua scripts it runs are the ``*.lua`` files of this
package (``lib.lua`` is prepended to each).
"""

from __future__ import annotations

from .store import RedisStore

__all__ = ["RedisStore"]
