"""Ask a worker for something and wait for the answer (model inspection, generation, ...).

The web process never imports torch; whatever needs the ML stack runs as a task on the service queue.
Service tasks answer {"ok": true, ...} or {"ok": false, "error": "..."}; a user error is not an exception.
"""

from __future__ import annotations

from typing import Any

from app.settings import get_settings

#: How often a wait on the SQLite result backend (the embedded setup) looks for the answer; Celery's default, 0.5 s,
#: was most of a submit's method check there. Redis answers by pub/sub and ignores it.
RESULT_POLL_SECONDS = 0.05


class WorkerUnavailable(RuntimeError):
    """No worker answered in time."""


class WorkerRefused(ValueError):
    """The worker answered with an error the user can act on."""


def call_worker(task: str, *args: Any, timeout: float | None = None) -> dict[str, Any]:
    from celery.exceptions import TimeoutError as CeleryTimeout

    from worker.celery_app import SERVICE_QUEUE, celery_app

    timeout = timeout or get_settings().rpc_timeout_seconds
    result = celery_app.send_task(task, args=list(args), queue=SERVICE_QUEUE, ignore_result=False)
    try:
        answer = result.get(timeout=timeout, propagate=True, interval=RESULT_POLL_SECONDS)
    except CeleryTimeout:
        raise WorkerUnavailable(
            f"no worker answered within {timeout:.0f} s; is a `tunedeck worker` consuming the service queue running?"
        ) from None
    finally:
        result.forget()
    if not answer.get("ok"):
        raise WorkerRefused(answer.get("error") or "the worker refused the request")
    return dict(answer)
