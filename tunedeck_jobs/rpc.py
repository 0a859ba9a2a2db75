"""Ask a service worker for something and wait for the answer (model inspection, generation, ...).

The web process never imports torch; whatever needs the ML stack runs as a task on the service queue.
Service tasks answer {"ok": true, ...} or {"ok": false, "error": "..."}; a user error is not an exception.
A request expires unanswered soon after its caller stops waiting, so a worker that starts late does not work
through a backlog of requests nobody waits for any more.
"""

from __future__ import annotations

from typing import Any

from tunedeck_jobs.names import SERVICE_QUEUE
from tunedeck_state.settings import get_settings

#: How often a wait on the SQLite result backend (the embedded setup) looks for the answer; Celery's default, 0.5 s,
#: was most of a submit's method check there. Redis answers by pub/sub and ignores it.
RESULT_POLL_SECONDS = 0.05
#: A request stays deliverable this much longer than its caller waits (clocks differ; a worker may be mid-poll).
EXPIRY_MARGIN_SECONDS = 30.0


class WorkerUnavailable(RuntimeError):
    """No worker answered in time."""


class WorkerRefused(ValueError):
    """The worker answered with an error the user can act on."""


def ask(task: str, *args: Any, timeout: float) -> dict[str, Any] | None:
    """The service task's answer, or None when none came within `timeout` seconds."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tunedeck_jobs.celery_app import celery_app

    result = celery_app.send_task(
        task, args=list(args), queue=SERVICE_QUEUE, ignore_result=False, expires=timeout + EXPIRY_MARGIN_SECONDS
    )
    try:
        return dict(result.get(timeout=timeout, propagate=True, interval=RESULT_POLL_SECONDS))
    except CeleryTimeout:
        return None
    finally:
        result.forget()


def call_worker(task: str, *args: Any, timeout: float | None = None) -> dict[str, Any]:
    """The answer of a service task that succeeded; WorkerUnavailable when none came in time, WorkerRefused
    (with the worker's reason) when it answered with an error."""
    timeout = timeout or get_settings().rpc_timeout_seconds
    answer = ask(task, *args, timeout=timeout)
    if answer is None:
        raise WorkerUnavailable(
            f"no worker answered within {timeout:.0f} s; is a `tunedeck worker` consuming the service queue running?"
        )
    if not answer.get("ok"):
        raise WorkerRefused(answer.get("error") or "the worker refused the request")
    return answer
