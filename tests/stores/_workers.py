"""Worker functions for the multi-process store tests.

They live in a plain module (not the test module) because ``spawn`` children import
the target by module name; ``tests/stores/conftest.py`` puts this folder on
``sys.path``, and spawned children inherit it. Only ``flask_tokenguard`` is imported
here, never pytest.
"""

from __future__ import annotations

import multiprocessing
import typing as t

from flask_tokenguard.errors import StoreError
from flask_tokenguard.models import SigningKey
from flask_tokenguard.models import TokenSession
from flask_tokenguard.stores import store_from_url

if t.TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

#: How long a worker waits for the others at the starting line.
BARRIER_TIMEOUT = 60.0


def race_seats(
    url: str,
    options: dict[str, t.Any],
    worker: int,
    attempts: int,
    seat_limit: int,
    now: float,
    barrier: Barrier,
    results: Queue[tuple[int, str, t.Any]],
) -> None:
    """Try ``attempts`` times to start a session holding a seat; report the grants."""
    try:
        store = store_from_url(url, **options)
        try:
            store.check()
            barrier.wait(BARRIER_TIMEOUT)
            granted = 0
            for attempt in range(attempts):
                session = TokenSession(
                    session_id=f"p{worker}-{attempt}",
                    client_id="racer",
                    subject=f"worker{worker}",
                    scope="all",
                    holds_seat=True,
                    refresh_hash=f"refresh-p{worker}-{attempt}",
                    created_at=now,
                    expires_at=now + 600,
                )
                granted += store.start_session(session, seat_limit, now).started
            results.put((worker, "ok", granted))
        finally:
            store.close()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which asserts
        barrier.abort()
        results.put((worker, "error", f"{type(exc).__name__}: {exc}"))


def race_capped_seats(
    url: str,
    options: dict[str, t.Any],
    worker: int,
    attempts: int,
    client_cap: int,
    replace_oldest: bool,
    now: float,
    barrier: Barrier,
    results: Queue[tuple[int, str, t.Any]],
) -> None:
    """Start ``attempts`` seat-holding sessions of one capped client; report each outcome.

    Reports ``[(session_id, started, refused, [replaced ids])]``. Sessions get distinct
    ``created_at`` values so that "the oldest" is well defined across workers.
    """
    try:
        store = store_from_url(url, **options)
        try:
            store.check()
            barrier.wait(BARRIER_TIMEOUT)
            outcomes = []
            for attempt in range(attempts):
                session = TokenSession(
                    session_id=f"p{worker}-{attempt}",
                    client_id="capped",
                    subject=f"worker{worker}",
                    scope="all",
                    holds_seat=True,
                    refresh_hash=f"refresh-p{worker}-{attempt}",
                    created_at=now + attempt + worker / 10,
                    expires_at=now + 600,
                )
                outcome = store.start_session(
                    session, None, now, client_cap=client_cap, replace_oldest=replace_oldest
                )
                replaced = [s.session_id for s in outcome.replaced]
                outcomes.append((session.session_id, outcome.started, outcome.refused, replaced))
            results.put((worker, "ok", outcomes))
        finally:
            store.close()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which asserts
        barrier.abort()
        results.put((worker, "error", f"{type(exc).__name__}: {exc}"))


def open_and_ensure_key(
    url: str,
    options: dict[str, t.Any],
    worker: int,
    now: float,
    barrier: Barrier,
    results: Queue[tuple[int, str, t.Any]],
) -> None:
    """Open a store that may not exist yet, at the same moment as the other workers.

    Reports the key ids that ``ensure_signing_key`` returned, or ``"unreachable"`` when
    the server is down (the parent then skips).
    """
    try:
        barrier.wait(BARRIER_TIMEOUT)
        try:
            store = store_from_url(url, **options)
            store.check()
        except StoreError as exc:
            results.put((worker, "unreachable", str(exc)))
            return
        try:
            candidate = SigningKey(f"key-{worker}", "ES256", f"pem-{worker}", now)
            keys = store.ensure_signing_key(candidate)
            results.put((worker, "ok", [k.kid for k in keys]))
        finally:
            store.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which asserts
        barrier.abort()
        results.put((worker, "error", f"{type(exc).__name__}: {exc}"))


def open_fresh_stores(
    url: str,
    options: dict[str, t.Any],
    worker: int,
    rounds: int,
    now: float,
    barrier: Barrier,
    results: Queue[tuple[int, str, t.Any]],
) -> None:
    """Open a new store at the same moment as the other workers, ``rounds`` times.

    ``url`` holds ``{round}``, replaced by the round's number: each round opens a store
    that does not exist yet (a fresh SQLite file, say). Reports the key ids that
    ``ensure_signing_key`` returned in each round, or the first failure.
    """
    kids: list[list[str]] = []
    try:
        for round_ in range(rounds):
            barrier.wait(BARRIER_TIMEOUT)
            candidate = SigningKey(f"key-{worker}", "ES256", f"pem-{worker}", now)
            try:
                store = store_from_url(url.replace("{round}", str(round_)), **options)
                try:
                    store.check()
                    kids.append([k.kid for k in store.ensure_signing_key(candidate)])
                finally:
                    store.close()
            except Exception as exc:
                # StoreError names only the driver's exception class: add its message.
                cause = "" if exc.__cause__ is None else f" ({exc.__cause__})"
                name = type(exc).__name__
                raise RuntimeError(f"round {round_}: {name}: {exc}{cause}") from exc
        results.put((worker, "ok", kids))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which asserts
        barrier.abort()
        results.put((worker, "error", f"{type(exc).__name__}: {exc}"))


def read_epoch(
    url: str,
    options: dict[str, t.Any],
    worker: int,
    barrier: Barrier,
    results: Queue[tuple[int, str, t.Any]],
) -> None:
    """Open the store at the same moment as the other workers; report its epoch."""
    try:
        barrier.wait(BARRIER_TIMEOUT)
        store = store_from_url(url, **options)
        try:
            results.put((worker, "ok", store.revocation_epoch()))
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((worker, "error", repr(exc)))


def spawn(
    count: int,
    target: t.Callable[..., None],
    url: str,
    options: dict[str, t.Any],
    *args: t.Any,
) -> list[tuple[int, str, t.Any]]:
    """Run ``target(url, options, i, *args, barrier, queue)`` in ``count`` processes.

    Spawned, not forked: each worker builds its own store from scratch, as separate
    server processes do.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=target, args=(url, options, i, *args, barrier, results))
        for i in range(count)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    return sorted(reports)
