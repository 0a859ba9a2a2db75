"""What a user does to a stored run, one transaction each: cancel it now, or resume it (tunedeck_jobs.dispatch)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from tunedeck_jobs import dispatch
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run


def cancel(session: Session, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one stops at its next step (InvalidTransition otherwise)."""
    run = run_service.request_cancel(session, run_id)
    session.commit()
    return run


def resume(session: Session, run_id: int) -> None:
    """Queue a failed or cancelled run again as a new attempt, after the commit (InvalidTransition otherwise)."""
    dispatch.resume(session, run_id)
