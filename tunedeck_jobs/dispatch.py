"""Send tasks after the commit that stored what they work on. The one place tasks are sent (rpc.py aside).

Every sender here is called with a committed state and takes ids, not objects. A broker that cannot be reached
takes one path: the run (or merge) it was for fails with that reason, in a transaction of its own; nothing already
stored is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from sqlalchemy.orm import Session

from tunedeck_jobs import placement as placement_service
from tunedeck_jobs.names import MERGE_TASK, SERVICE_QUEUE, SWEEP_NEXT_TASK, TRAIN_TASK, TRAINING_QUEUE
from tunedeck_state import lifecycle
from tunedeck_state import runs as run_service
from tunedeck_state.db import session_scope
from tunedeck_state.models import Run
from tunedeck_state.search.trials import AskConflict, launch_trials
from tunedeck_state.settings import get_settings

log = logging.getLogger(__name__)


def broker_down_reason(what: str, exc: BaseException) -> str:
    return f"could not queue the {what}: the task broker is unreachable ({exc})"


def sent(send: Callable[[], None], what: str, on_broker_down: Callable[[str], None]) -> bool:
    """Call `send`; if the broker cannot be reached, hand the reason to `on_broker_down` and return False."""
    try:
        send()
    except Exception as exc:  # kombu raises its own and the transport's errors; any of them means "not sent"
        on_broker_down(broker_down_reason(what, exc))
        return False
    return True


def send_training(run_id: int, attempt: int, placement: placement_service.Placement) -> None:
    """Send one attempt's training task to the queue placement chose for it."""
    from tunedeck_jobs.celery_app import celery_app

    celery_app.send_task(
        TRAIN_TASK,
        args=[run_id, attempt],
        queue=placement.queue,
        priority=placement_service.celery_priority(placement.priority),
    )


def send_merge(run_id: int, merge_attempt: int) -> None:
    """Send a merge of the run's adapter into its base (long for big models: it runs on the training queue)."""
    from tunedeck_jobs.celery_app import celery_app

    celery_app.send_task(MERGE_TASK, args=[run_id, merge_attempt], queue=TRAINING_QUEUE)


def send_sweep_next(sweep_id: int) -> None:
    """Ask a service worker to store and queue a search sweep's next trials (a run of it just ended)."""
    from tunedeck_jobs.celery_app import celery_app

    celery_app.send_task(SWEEP_NEXT_TASK, args=[sweep_id], queue=SERVICE_QUEUE)


def continue_sweeps(sweep_ids: Sequence[int | None]) -> None:
    """After the commit that ended runs of these search sweeps: their next trials are asked for. A broker that
    cannot be reached leaves the slot free until the next run of the sweep ends (nothing to fail)."""
    for sweep_id in {s for s in sweep_ids if s is not None}:
        sent(partial(send_sweep_next, sweep_id), f"next trial of sweep {sweep_id}", log.warning)


def launch_next_trials(sweep_id: int, tries: int = 5) -> list[int]:
    """Store the sweep's next trials as runs, place them, commit, queue them (the sweep_next task's work). Another
    asker reserving trials at the same moment makes this one roll back and ask again with fresh counts."""
    for _ in range(tries):
        with session_scope() as session:
            try:
                runs = launch_trials(session, sweep_id)
            except AskConflict:
                session.rollback()
                continue
            commit_and_enqueue(session, runs)
            return [run.id for run in runs]
    log.warning("sweep %s: gave up asking for trials after %s conflicts", sweep_id, tries)
    return []


def commit_and_enqueue(session: Session, runs: Sequence[Run]) -> None:
    """Place each of `runs`, commit the transaction that stored them (and whatever else belongs with them), then
    queue each run. A run that cannot be queued fails with the reason; the others are queued regardless."""
    for run in runs:
        placement_service.place_run(session, run)
    commit_and_send(session, runs)


def commit_and_send(session: Session, runs: Sequence[Run]) -> None:
    """Commit, then send each run's training task to the queue already recorded on it (placement.record)."""
    session.commit()
    unsent: list[tuple[int, str]] = []
    for run in runs:
        placement = placement_service.Placement(run.queue or TRAINING_QUEUE, run.priority)
        sent(partial(send_training, run.id, run.attempt, placement), "run", partial(_note_unsent, unsent, run.id))
    if unsent:
        for run_id, reason in unsent:
            run_service.fail_queued(session, run_id, reason)
        session.commit()
        for run in runs:
            session.refresh(run)


def _note_unsent(unsent: list[tuple[int, str]], run_id: int, reason: str) -> None:
    unsent.append((run_id, reason))


def enqueue_attempts(attempts: Sequence[lifecycle.Attempt]) -> None:
    """Send the training task for each attempt. Call only after the commit that queued them.

    Each attempt is placed again: it goes wherever its estimate fits now, so the retry of a run whose worker was
    lost goes to another worker that fits."""
    for item in attempts:

        def place_and_send(item: lifecycle.Attempt = item) -> None:
            with session_scope() as session:
                run = session.get(Run, item.run_id, populate_existing=True)
                if run is None:
                    return
                placement = placement_service.place_run(session, run)
            send_training(item.run_id, item.attempt, placement)

        def fail(reason: str, run_id: int = item.run_id) -> None:
            with session_scope() as session:
                run_service.fail_queued(session, run_id, reason)

        sent(place_and_send, "run", fail)


def resume(session: Session, run_id: int) -> None:
    """Resume a failed, cancelled or pruned run: commit the new attempt, then queue it."""
    attempt = lifecycle.resume_run(session, run_id)
    session.commit()
    enqueue_attempts([attempt])
    session.expire_all()


_last_reap = 0.0
_reap_lock = threading.Lock()


def reap_lost_runs(min_interval: float = 1.0) -> None:
    """Fail runs whose worker stopped beating, in a transaction of its own, then queue their retries. At most once
    per `min_interval` per process; every worker calls it from a timer, the web server from a thread."""
    global _last_reap
    with _reap_lock:
        if time.monotonic() - _last_reap < min_interval:
            return
        _last_reap = time.monotonic()
    try:
        with session_scope() as session:
            retries = lifecycle.reap_lost_runs(session, get_settings().heartbeat_timeout_seconds)
        enqueue_attempts(retries)
    except Exception:  # a reaper that could not write tries again at its next tick
        log.exception("could not check for lost runs")
