"""Ask a service worker for something and wait for the answer (model inspection, generation, ...).

The web process never imports torch; whatever needs the ML stack runs as a task on the service queue.
Service tasks answer {"ok": true, ...} or {"ok": false, "error": "..."}; a user error is not an exception.
Every request carries the caller's patience: it expires unanswered soon after its caller stops waiting (a worker
that starts late does not work through a backlog nobody waits for), it has a soft time limit shortly after its
caller's timeout and a hard one after that, and a request the caller gave up on is revoked: Celery's revoke with
terminate (reaches prefork workers over Redis), and a REVOKED state in the result backend, which the worker looks
at before it starts the task and while it generates (works on every broker, the embedded one included).
"""

from __future__ import annotations

import logging
from typing import Any

from tunedeck_jobs.names import service_queue_for
from tunedeck_state.settings import get_settings

log = logging.getLogger(__name__)

#: How often a wait on the SQLite result backend (the embedded setup) looks for the answer; Celery's default, 0.5 s,
#: was most of a submit's method check there. Redis answers by pub/sub and ignores it.
RESULT_POLL_SECONDS = 0.05
#: A request stays deliverable this much longer than its caller waits (clocks differ; a worker may be mid-poll).
EXPIRY_MARGIN_SECONDS = 30.0
#: The soft time limit: this long past the caller's timeout (the revoke at the timeout normally stops it first).
SOFT_LIMIT_MARGIN_SECONDS = 10.0
#: A task past its soft time limit is killed this much later if it did not stop by itself.
HARD_LIMIT_MARGIN_SECONDS = 15.0


class WorkerUnavailable(RuntimeError):
    """No worker answered in time."""


class WorkerRefused(ValueError):
    """The worker answered with an error the user can act on."""


def ask(task: str, *args: Any, timeout: float) -> dict[str, Any] | None:
    """The service task's answer, or None when none came within `timeout` seconds (the task is then revoked)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tunedeck_jobs.celery_app import celery_app

    result = celery_app.send_task(
        task,
        args=list(args),
        # what the worker's log, events and Flower show of the arguments: prompts and paths stay out of them
        argsrepr=f"({len(args)} arguments)",
        kwargsrepr="{}",
        queue=service_queue_for(task),
        ignore_result=False,
        expires=timeout + EXPIRY_MARGIN_SECONDS,
        soft_time_limit=timeout + SOFT_LIMIT_MARGIN_SECONDS,
        time_limit=timeout + SOFT_LIMIT_MARGIN_SECONDS + HARD_LIMIT_MARGIN_SECONDS,
    )
    try:
        answer = dict(result.get(timeout=timeout, propagate=True, interval=RESULT_POLL_SECONDS))
    except CeleryTimeout:
        revoke(result.id)
        return None
    result.forget()
    return answer


def revoke(task_id: str) -> None:
    """Stop a service task nobody waits for: queued, it is dropped when a worker takes it; running, it is
    terminated (Redis) or stops at its next look (every broker: generation looks between tokens)."""
    from celery import states

    from tunedeck_jobs.celery_app import celery_app

    try:
        celery_app.backend.store_result(task_id, None, states.REVOKED)
    except Exception as exc:  # the answer would just go unread; nothing else depends on it
        log.warning("could not mark service task %s revoked: %s: %s", task_id, type(exc).__name__, exc)
    if get_settings().uses_embedded_broker:
        return  # kombu's SQLAlchemy transport has no fanout: a broadcast would reach no worker
    try:
        celery_app.control.revoke(task_id, terminate=True, signal="SIGTERM")
    except Exception as exc:
        log.warning("could not broadcast the revoke of service task %s: %s: %s", task_id, type(exc).__name__, exc)


def was_revoked(task_id: str | None) -> bool:
    """True when the caller gave up on this task (tunedeck_jobs.rpc.revoke). For workers, between steps."""
    if not task_id:
        return False
    from celery import states

    from tunedeck_jobs.celery_app import celery_app

    try:
        return bool(celery_app.backend.get_state(task_id) == states.REVOKED)
    except Exception:
        return False


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
