"""Worker-side fault handling, in the Celery worker's main process.

* A pool process killed mid-run (SIGKILL, the kernel's OOM killer, a segfault) or stopped by the hard time
  limit: Celery's main process reports it through `task_failure` (WorkerLostError / TimeLimitExceeded). The
  run is failed at once with the reason and, if its spec allows retries, queued again as a new attempt.
  (The task message is acknowledged, not redelivered: task_reject_on_worker_lost stays off, so the same
  attempt never runs twice.)
* A killed main process takes its pool processes with it (Celery sets PDEATHSIG on them); its runs stop
  heartbeating and `LostRunReaper`, running on every worker's timer, fails them after the heartbeat timeout
  (the web does the same whenever runs are read).

Imported only by workers (the bootstep is named in tunedeck_jobs/celery_app.py), never by the web process.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import bootsteps
from celery.signals import task_failure

from tunedeck_jobs import dispatch
from tunedeck_jobs.names import TRAIN_TASK
from tunedeck_state import lifecycle
from worker import fork_safety

log = logging.getLogger(__name__)


def lost_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeLimitExceeded):
        return (
            f"time limit exceeded: the attempt ran longer than TUNEDECK_TRAINING_TIME_LIMIT_SECONDS "
            f"({exc.args[0] if exc.args else '?'} s) and was stopped"
        )
    return (
        f"{lifecycle.WORKER_LOST}: the training process died ({exc}); it was killed (by hand, or by the "
        "operating system when memory ran out) or crashed"
    )


@task_failure.connect
def _training_process_lost(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    if getattr(sender, "name", None) != TRAIN_TASK or not isinstance(exception, WorkerLostError | TimeLimitExceeded):
        return  # the training task handles its own exceptions; only the death of its process arrives here
    try:
        run_id, attempt = int(args[0]), int(args[1])
    except (TypeError, ValueError, IndexError):
        log.error("cannot tell which run a lost training task was for: args=%r", args)
        return
    from tunedeck_state.db import session_scope

    reason = lost_reason(exception)
    try:
        with session_scope() as session:
            retry = lifecycle.fail_lost_attempt(session, run_id, attempt, reason)
        dispatch.enqueue_attempts([retry] if retry else [])
    except Exception:  # the heartbeat reaper catches it later
        log.exception("could not record that run %s attempt %s was lost", run_id, attempt)
    else:
        log.warning("run %s attempt %s: %s", run_id, attempt, reason)


class LostRunReaper(bootsteps.StartStopStep):
    """Every few seconds, fail runs whose heartbeats stopped (and queue their retries)."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        from tunedeck_state.settings import get_settings

        interval = max(1.0, get_settings().heartbeat_timeout_seconds / 4)
        # Celery's own timer (the worker's event loop, or its timer thread): one short conditional UPDATE.
        # Guarded: a pool process must not be forked while this (timer) thread is inside SQLite (fork_safety.py).
        self.tref = parent.timer.call_repeatedly(
            interval, fork_safety.guarded(dispatch.reap_lost_runs), kwargs={"min_interval": 0}
        )

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
