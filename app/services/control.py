"""What a user does to a stored run, one transaction each: cancel it now, or resume it (tunedeck_jobs.dispatch)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from tunedeck_jobs import dispatch
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run, RunStatus
from tunedeck_state.search.trials import sweep_to_continue


def cancel(session: Session, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one stops at its next step (InvalidTransition otherwise).
    A queued trial of a search sweep cancelled frees its slot: the sweep's next trial is asked for."""
    run = run_service.request_cancel(session, run_id)
    search_sweep = sweep_to_continue(session, run_id) if run.status == RunStatus.cancelled.value else None
    session.commit()
    dispatch.continue_sweeps([search_sweep])
    return run


def resume(session: Session, run_id: int) -> None:
    """Queue a failed, cancelled or pruned run again as a new attempt, after the commit (InvalidTransition
    otherwise)."""
    dispatch.resume(session, run_id)
