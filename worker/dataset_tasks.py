"""Service-queue tasks for datasets: check a file against its format, and preview it as training sees it.

Quick requests the web process waits for (it never imports the ML stack itself). They answer
{"ok": true, ...} or {"ok": false, "error": "..."}: a dataset that does not fit is the user's to fix."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_postrun

from tunedeck_jobs.celery_app import celery_app
from tunedeck_jobs.names import INSPECT_DATASET_TASK, PREVIEW_DATASET_TASK, TRAIN_TASK
from worker.service_base import ServiceTask
from worker.training.errors import TrainingError

log = logging.getLogger(__name__)


@celery_app.task(name=INSPECT_DATASET_TASK, ignore_result=False, base=ServiceTask)
def inspect_dataset_task(dataset: dict[str, Any]) -> dict[str, Any]:
    """Row count and columns of a dataset, every row checked against `dataset.format`."""
    from runspec import DatasetSpec
    from worker.training.preview import inspect_dataset

    try:
        return {"ok": True, **inspect_dataset(DatasetSpec.model_validate(dataset))}
    except TrainingError as exc:
        return {"ok": False, "error": str(exc)}


@celery_app.task(name=PREVIEW_DATASET_TASK, ignore_result=False, base=ServiceTask)
def preview_dataset_task(dataset: dict[str, Any], model: str, max_length: int, rows: int = 5) -> dict[str, Any]:
    """The first rows rendered and tokenized as training would, and a histogram of token lengths."""
    from runspec import DatasetSpec
    from worker.training.preview import preview_dataset

    try:
        return {"ok": True, **preview_dataset(DatasetSpec.model_validate(dataset), model, max_length, rows)}
    except TrainingError as exc:
        return {"ok": False, "error": str(exc)}


@task_postrun.connect
def _register_trained_dataset(task: Any = None, args: Any = None, **_: Any) -> None:
    """A run that trained on a local file or a hub dataset registers it on the Datasets page (once)."""
    if getattr(task, "name", None) != TRAIN_TASK or not args:
        return
    try:
        from tunedeck_state import dataset_registry
        from tunedeck_state import runs as run_service
        from tunedeck_state.db import session_scope
        from tunedeck_state.models import RunStatus

        with session_scope() as session:
            run = run_service.get_run(session, int(args[0]))
            if run.status == RunStatus.succeeded:
                dataset_registry.register_from_run(session, run)
    except Exception:  # registering is a convenience: never let it disturb the worker
        log.exception("could not register the dataset of run %s", args[0])
