"""No pool process is forked while another thread of the worker is inside SQLite.

Celery's prefork pool starts a fresh process per training (`--max-tasks-per-child=1`) by `fork()` from its
supervisor thread. With the embedded broker (kombu's SQLAlchemy transport on SQLite) the main thread polls the
broker meanwhile, and the heartbeat thread writes the `workers` table. A fork that lands while one of them is
inside SQLite copies SQLite's global mutexes locked into the child, whose first query then waits forever: the
run stays `queued` and the worker takes nothing else (seen under load: a pool process blocked in
`sqlite3Malloc` on a futex).

`GUARD` is held around every SQLite use of those threads, and `os.register_at_fork` makes the forking thread take
it first, so a child always starts with SQLite idle. `install()` runs in the worker's main process before its
pool starts (the `worker_init` signal, see tunedeck_jobs/celery_app.py).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

#: Held by a thread while it talks to SQLite; taken by whichever thread forks.
GUARD = threading.RLock()

#: The kombu SQLAlchemy channel's methods that query the broker database.
KOMBU_METHODS = ("_open", "_get_or_create", "_new_queue", "_put", "_get", "_query_all", "_purge", "_size")

_installed = False


def guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with GUARD:
            return function(*args, **kwargs)

    wrapper.__fork_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Guard kombu's SQLite broker calls and every fork of this process (idempotent)."""
    global _installed
    if _installed:
        return
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    for name in KOMBU_METHODS:
        method = getattr(kombu_sqlalchemy.Channel, name, None)
        if method is not None and not getattr(method, "__fork_guarded__", False):
            setattr(kombu_sqlalchemy.Channel, name, guarded(method))
    # The child is a copy of the forking thread, which holds GUARD there too: it lets go on both sides.
    os.register_at_fork(before=GUARD.acquire, after_in_parent=GUARD.release, after_in_child=GUARD.release)
    _installed = True
