"""The search sweeps' ask-and-tell: when a run of a random or TPE sweep ends, its next trials are asked for here."""

from __future__ import annotations

import logging

from tunedeck_jobs import dispatch
from tunedeck_jobs.celery_app import celery_app
from tunedeck_jobs.names import SWEEP_NEXT_TASK

log = logging.getLogger(__name__)


@celery_app.task(name=SWEEP_NEXT_TASK, acks_late=True)
def sweep_next(sweep_id: int) -> list[int]:
    """Store, place and queue the trials the sweep's free slots allow (none when its budget is spent)."""
    launched = dispatch.launch_next_trials(sweep_id)
    if launched:
        log.info("sweep %s: queued trials as runs %s", sweep_id, launched)
    return launched
