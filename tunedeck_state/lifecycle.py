"""Run faults and recovery: a lost worker, resume, automatic retries.

Every change is a conditional UPDATE through runs._transition (the row is the lock) and leaves a RunEvent
with its reason. Functions here never enqueue: callers commit, then hand what they got back to
tunedeck_jobs.dispatch.enqueue_attempts (one transaction per unit of work, tasks sent only after the commit).

A run is lost when its worker stops proving it is alive:
* a killed pool process is seen at once by the Celery worker's main process (task_failure with
  WorkerLostError, see worker/lost_runs.py), which calls `fail_lost_attempt`;
* a killed main worker process (its pool processes die with it) stops the heartbeats; `reap_lost_runs`
  fails every running run whose heartbeat is older than TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS. Every worker
  calls it from a timer and the web server from a thread (tunedeck_jobs.dispatch.reap_lost_runs), so a lost
  run is retried even when nobody is looking at the dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from runspec import RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run, RunEvent, RunStatus, as_utc, utcnow
from tunedeck_state.runs import InvalidTransition, _transition

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost"
AUTO_RETRY_REASON = "retrying automatically"
RESUMABLE = (RunStatus.failed, RunStatus.cancelled, RunStatus.pruned)


@dataclass(frozen=True)
class Attempt:
    """A run to (re)queue after the commit: the task is sent for exactly this attempt."""

    run_id: int
    attempt: int


def _requeue_values() -> dict[str, object]:
    return {
        "attempt": Run.attempt + 1,
        "cancel_requested": False,
        "error": None,
        "finished_at": None,
        "eta_seconds": None,
        "worker": None,
        "prune_reason": None,
    }


def _fresh(session: Session, run_id: int) -> Run:
    """The run as the database has it now (conditional UPDATEs do not refresh loaded objects)."""
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        raise run_service.RunNotFound(run_id)
    return run


def resume_run(session: Session, run_id: int) -> Attempt:
    """Queue a failed, cancelled or pruned run again as a new attempt; the worker continues from its last
    checkpoint (a run resumed after pruning is not pruned again: search.pruning)."""
    run = _fresh(session, run_id)
    current = run.attempt
    if run.status_enum not in RESUMABLE or not _transition(
        session,
        run_id,
        expected=RESUMABLE,
        to=RunStatus.queued,
        attempt=current,
        reason=f"resumed by the user (attempt {current + 1})",
        values=_requeue_values(),
    ):
        session.refresh(run)
        raise InvalidTransition(f"run {run_id} is {run.status}; only failed, cancelled or pruned runs can be resumed")
    session.refresh(run)
    return Attempt(run_id, run.attempt)


def retry_if_allowed(session: Session, run_id: int, cause: str) -> Attempt | None:
    """After an infrastructure failure: queue the next attempt if the spec's max_retries allows another."""
    run = _fresh(session, run_id)
    if run.status_enum is not RunStatus.failed:
        return None
    allowed = RunSpec.model_validate(run.spec).training.max_retries
    used = (
        session.scalar(
            select(func.count())
            .select_from(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.reason.like(f"{AUTO_RETRY_REASON}%"))
        )
        or 0
    )
    if used >= allowed:
        return None
    if not _transition(
        session,
        run_id,
        expected=[RunStatus.failed],
        to=RunStatus.queued,
        attempt=run.attempt,
        reason=f"{AUTO_RETRY_REASON} ({used + 1} of {allowed}, attempt {run.attempt + 1}) after: {cause}"[:2000],
        values=_requeue_values(),
    ):
        return None
    session.refresh(run)
    return Attempt(run_id, run.attempt)


def fail_lost_attempt(session: Session, run_id: int, attempt: int, reason: str) -> Attempt | None:
    """The process training `attempt` died. Fail the run (if it still is that attempt) and maybe retry it.

    A queued run is failed too: its pool process may have died before claiming it, and Celery does not
    deliver the task again."""
    if not _transition(
        session,
        run_id,
        expected=[RunStatus.running, RunStatus.queued],
        to=RunStatus.failed,
        attempt=attempt,
        reason=reason,
        values={"error": reason, "finished_at": utcnow(), "eta_seconds": None},
    ):
        return None
    return retry_if_allowed(session, run_id, reason)


def reap_lost_runs(session: Session, timeout_seconds: float) -> list[Attempt]:
    """Fail every running run whose heartbeat is older than the timeout; returns the retries to enqueue."""
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    last_sign = func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)
    stale = session.execute(
        select(Run.id, Run.attempt, Run.heartbeat_at).where(
            Run.status == RunStatus.running.value, or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff)
        )
    ).all()
    retries = []
    for run_id, attempt, heartbeat_at in stale:
        silent = f"{(now - as_utc(heartbeat_at)).total_seconds():.0f} s" if heartbeat_at else "ever"
        reason = (
            f"{WORKER_LOST}: no heartbeat for {silent} (TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS={timeout_seconds:g}); "
            "the worker process was killed, crashed or lost its connection to the database"
        )
        if _transition(
            session,
            run_id,
            expected=[RunStatus.running],
            to=RunStatus.failed,
            attempt=attempt,
            # Checked again in the UPDATE: a heartbeat that arrived meanwhile keeps the run alive.
            where=[last_sign < cutoff],
            reason=reason,
            values={"error": reason, "finished_at": now, "eta_seconds": None},
        ):
            log.warning("run %s attempt %s: %s", run_id, attempt, reason)
            retry = retry_if_allowed(session, run_id, reason)
            if retry:
                retries.append(retry)
    return retries
