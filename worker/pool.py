"""Replace a finished training's pool process at once, not up to 5 s later.

A training worker runs each training in a fresh pool process (`--max-tasks-per-child=1`). With the Redis broker
Celery drives its prefork pool from an event loop (AsynPool), which starts the replacement when it sees the old
process exit (its sentinel pipe closing); but the pipe closes a moment before the process can be reaped, so that
check often finds nothing to replace, and only the pool's 5 s maintenance timer starts the new process. Meanwhile
the next run's task sits received but unstarted: the launch benchmark (bench/launch.py) saw claims 3 to 4 s after
the POST on an idle worker. Here the timer runs every MAINTAIN_SECONDS; a pass only polls the pool's few processes.
The embedded broker's worker does not use AsynPool and is not affected.
"""

from __future__ import annotations

from typing import Any

MAINTAIN_SECONDS = 0.2


def install() -> None:
    """Call in the worker's main process before its pool starts (the `worker_init` signal). Idempotent."""
    from celery.concurrency import asynpool

    def timers(pool: Any) -> dict[Any, float]:
        return {pool.maintain_pool: MAINTAIN_SECONDS}

    asynpool.AsynPool.timers = property(timers)
