"""Celery tasks: thin. They take ids, claim the run in the database, and hand over to training code."""

from __future__ import annotations

import logging
import socket
import traceback
from typing import Any

from app.db import session_scope
from app.models import RunStatus
from app.services import runs as run_service
from app.settings import get_settings
from runspec import RunSpec
from worker.celery_app import SERVICE_TASK_PREFIX, TRAIN_TASK, celery_app
from worker.reporting import DatabaseReporter
from worker.training.errors import TrainingError
from worker.training.run import train

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}"


@celery_app.task(name=TRAIN_TASK, acks_late=True)
def train_run(run_id: int, attempt: int) -> None:
    settings = get_settings()
    with session_scope() as session:
        if not run_service.claim_run(session, run_id, attempt, worker_name()):
            log.info("run %s attempt %s is not queued any more; nothing to do", run_id, attempt)
            return
        spec = RunSpec.model_validate(run_service.get_run(session, run_id).spec)

    run_dir = settings.runs_dir / f"run-{run_id}"
    try:
        with DatabaseReporter(run_id, settings.metric_flush_seconds) as reporter:
            try:
                result = train(spec, run_dir, reporter)
            except TrainingError as exc:
                reporter.log(f"error: {exc}")
                raise
            except Exception:
                reporter.log(traceback.format_exc())
                raise
    except TrainingError as exc:
        outcome = run_service.RunOutcome(status=RunStatus.failed, error=str(exc))
    except Exception as exc:
        outcome = run_service.RunOutcome(status=RunStatus.failed, error=f"{type(exc).__name__}: {exc}")
    else:
        outcome = run_service.RunOutcome(
            status=RunStatus.cancelled if result.cancelled else RunStatus.succeeded,
            reason="cancelled by the user" if result.cancelled else "finished",
            trainable_params=result.trainable_params,
            total_params=result.total_params,
            final_train_loss=result.final_train_loss,
            final_eval_loss=result.final_eval_loss,
            wall_time_seconds=result.wall_time_seconds,
            artifact_dir=str(result.artifact_dir),
        )
    with session_scope() as session:
        run_service.finish_run(session, run_id, outcome)


@celery_app.task(name=f"{SERVICE_TASK_PREFIX}inspect_model", ignore_result=False)
def inspect_model_task(model: str, method: dict[str, Any] | None = None) -> dict[str, Any]:
    """Config, module names and parameter counts of a model, without loading its weights."""
    from pydantic import TypeAdapter

    from runspec import AnyMethod
    from worker.training.inspect import inspect_model

    try:
        method_spec = TypeAdapter(AnyMethod).validate_python(method) if method else None
        return {"ok": True, **inspect_model(model, method_spec)}
    except TrainingError as exc:
        return {"ok": False, "error": str(exc)}
