"""The one retry loop of the stores: repeat an action that lost a race.

Several processes opening a new store at once collide on its creation; two first
failures of one lockout key collide on its insert. The loser tries again after a short
sleep that doubles up to a cap, with jitter so that colliders do not collide again in
step, until it succeeds or its patience (seconds) or attempts run out.
"""

from __future__ import annotations

import random
import time
import typing as t

_T = t.TypeVar("_T")


def retry(
    action: t.Callable[[], _T],
    *,
    retry_if: t.Callable[[BaseException], bool],
    patience: float | None = None,
    attempts: int | None = None,
    delay: float = 0.002,
    max_delay: float = 0.05,
) -> _T:
    """Return ``action()``, calling it again while it raises what ``retry_if`` accepts.

    :param patience: seconds after the first call within which a retry may start.
    :param attempts: most calls in all.
    :param delay: the first sleep, doubled after each failure up to ``max_delay``;
        0 retries at once.
    :raises: the last exception once patience or attempts run out, or any exception
        that ``retry_if`` refuses, at once.
    """
    if patience is None and attempts is None:
        raise ValueError("retry needs patience or attempts")
    deadline = None if patience is None else time.monotonic() + patience
    tries = 0
    while True:
        tries += 1
        try:
            return action()
        except BaseException as exc:
            if not retry_if(exc):
                raise
            if attempts is not None and tries >= attempts:
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise
        if delay > 0:
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay)
