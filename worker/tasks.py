"""Celery tasks: thin. They take ids, claim the run in the database, and hand over to training code."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task

from runspec import RunSpec
from tunedeck_jobs import dispatch
from tunedeck_jobs.celery_app import celery_app
from tunedeck_jobs.names import CHECK_METHOD_TASK, INSPECT_MODEL_TASK, TRAIN_TASK
from tunedeck_state import disk, lifecycle
from tunedeck_state import runs as run_service
from tunedeck_state.db import session_scope
from tunedeck_state.models import RunStatus
from tunedeck_state.search.trials import sweep_to_continue
from tunedeck_state.settings import get_settings
from tunedeck_state.settings_checks import heartbeat_interval
from worker import disk_usage, gpu_slots
from worker.attempts import prepare_attempt
from worker.distributed_launch import DistributedFailure, train_distributed
from worker.reporting import DatabaseReporter
from worker.training.errors import TrainingError
from worker.training.loading import set_policy as set_source_policy
from worker.training.loop import train
from worker.training.reporter import failures_logged

log = logging.getLogger(__name__)

# What this worker may read: local paths under its data roots, custom code only for allow-listed hub ids.
set_source_policy(get_settings().source_policy())


def worker_name() -> str:
    return f"{socket.gethostname()}"


@celery_app.task(name=TRAIN_TASK, bind=True, acks_late=True)
def train_run(self: Task, run_id: int, attempt: int) -> None:
    settings = get_settings()
    if not gpu_slots.claim(run_id, attempt, self.request.hostname or worker_name()):
        log.info("run %s attempt %s is not queued any more; nothing to do", run_id, attempt)
        return
    with session_scope() as session:
        claimed = run_service.get_run(session, run_id)
        spec = disk_usage.with_retention(RunSpec.model_validate(claimed.spec), settings)
        stored_estimate = (claimed.details or {}).get("memory_estimate")  # made at submit, if a worker answered

    run_dir = settings.runs_dir / f"run-{run_id}"
    retryable = False  # an infrastructure failure (not the spec's fault) may be retried automatically
    try:
        usage = disk.data_dir_usage(settings)
        if problem := disk_usage.room_problem(spec, stored_estimate, usage.free_bytes if usage else None):
            raise TrainingError(problem)
        with (
            DatabaseReporter(run_id, heartbeat_interval(settings), attempt=attempt) as reporter,
            prepare_attempt(run_dir, attempt, settings) as setup,
        ):
            setup.callbacks.append(disk_usage.DiskUsageCallback(settings, run_id))
            reporter.details({"worker_pid": os.getpid(), "resumed_from_step": setup.resume_step})
            if attempt > 1:
                reporter.log(
                    f"attempt {attempt}: continuing from checkpoint {setup.resume_step}"
                    if setup.resume_from
                    else f"attempt {attempt}: no complete checkpoint yet, starting from the beginning"
                )
            if spec.training.num_gpus > 1:  # torchrun on this worker's GPUs; its processes log their own errors
                result = train_distributed(spec, run_id, attempt, run_dir, reporter, setup)
            else:
                with failures_logged(reporter):
                    result = train(
                        spec,
                        run_dir,
                        reporter,
                        resume_from=setup.resume_from,
                        callbacks=setup.callbacks,
                        memory_estimate=stored_estimate,
                    )
    except TrainingError as exc:
        outcome = run_service.RunOutcome(status=RunStatus.failed, error=str(exc))
    except DistributedFailure as exc:  # the processes' own error text (with the rank), or their output's tail
        outcome = run_service.RunOutcome(status=RunStatus.failed, error=str(exc))
        retryable = True
    except Exception as exc:
        outcome = run_service.RunOutcome(status=RunStatus.failed, error=f"{type(exc).__name__}: {exc}")
        retryable = True
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
    if outcome.status is RunStatus.succeeded and spec.placement.keep_checkpoints == 0:
        disk_usage.drop_checkpoints(run_dir)
    with session_scope() as session:
        finished = run_service.finish_run(session, run_id, outcome, attempt=attempt)
        if finished:
            disk.record_disk_bytes(session, settings, run_id)
        retry = lifecycle.retry_if_allowed(session, run_id, outcome.error or "") if finished and retryable else None
        search_sweep = sweep_to_continue(session, run_id) if finished and retry is None else None
    dispatch.enqueue_attempts([retry] if retry else [])
    dispatch.continue_sweeps([search_sweep])


@celery_app.task(name=INSPECT_MODEL_TASK, ignore_result=False)
def inspect_model_task(model: str, method: dict[str, Any] | None = None) -> dict[str, Any]:
    """Config, module names and parameter counts of a model, without loading its weights."""
    from pydantic import TypeAdapter

    from runspec import AnyMethod
    from worker.training.model_inspect import inspect_model

    try:
        method_spec = TypeAdapter(AnyMethod).validate_python(method) if method else None
        return {"ok": True, **inspect_model(model, method_spec)}
    except TrainingError as exc:
        return {"ok": False, "error": str(exc)}


@celery_app.task(name=CHECK_METHOD_TASK, ignore_result=False)
def check_method_task(model: str, method: dict[str, Any], training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Whether a method fits a model (module names, architecture), read on the meta device: {"ok": true,
    "checked": bool, "problems": {field: message}}. Unreadable models are "not checked", never refused here."""
    from pydantic import TypeAdapter, ValidationError

    from runspec import AnyMethod, TrainingSpec
    from worker.training.method_fit import check_method

    try:
        method_spec = TypeAdapter(AnyMethod).validate_python(method)
        training_spec = TrainingSpec.model_validate(training) if training else None
    except ValidationError as exc:  # a web process of another version: leave it to the training
        return {"ok": True, "checked": False, "reason": str(exc), "problems": {}}
    return {"ok": True, **check_method(model, method_spec, training_spec)}
