"""Hand runs to Celery workers. Call only after the transaction that stored the run has committed."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import Run
from app.services import runs as run_service
from runspec import RunSpec


def enqueue_training(run: Run) -> None:
    # Imported here so that importing app.services does not build a Celery app (and its broker connection).
    from worker.celery_app import TRAIN_TASK, celery_app

    celery_app.send_task(TRAIN_TASK, args=[run.id, run.attempt])


def submit_run(session: Session, spec: RunSpec) -> Run:
    """Store a run, commit, then queue it. If the broker cannot be reached the run fails with that reason."""
    run = run_service.create_run(session, spec)
    session.commit()
    try:
        enqueue_training(run)
    except Exception as exc:
        run_service.fail_queued(session, run.id, f"could not queue the run: the task broker is unreachable ({exc})")
        session.commit()
        session.refresh(run)
    return run
