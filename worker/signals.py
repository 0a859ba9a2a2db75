"""The worker process's start-up hooks (Celery signals), connected when the worker imports its task modules."""

from __future__ import annotations

from celery.signals import worker_init, worker_process_init

from worker import log_privacy

log_privacy.install()  # task results are logged by size, never by content


@worker_init.connect
def _guard_forks(**_: object) -> None:
    """Before the pool starts: no pool process is forked while a thread is inside SQLite (fork_safety.py)."""
    from worker.fork_safety import install

    install()


@worker_init.connect
def _prompt_pool_refill(**_: object) -> None:
    """A finished training's pool process is replaced within 0.2 s, not up to 5 s later (worker/pool.py)."""
    from worker.pool import install

    install()


@worker_process_init.connect
def _fresh_database_connections(**_: object) -> None:
    """A forked pool process must not share the parent's database connections. On a GPU worker it also takes
    its own GPU (CUDA_VISIBLE_DEVICES) before anything initialises CUDA."""
    from tunedeck_state.db import get_engine, get_sessionmaker
    from worker.capacity import pin_process

    get_engine().dispose(close=False)
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    pin_process()
