"""Queue and task names: what the web sends and the workers consume, in one place.

Training workers consume TRAINING_QUEUE plus their own and memory-class queues (tunedeck_jobs/placement.py); service
workers consume SERVICE_QUEUE and QUICK_QUEUE: requests the web process waits for, torch work it must not do itself.
Generation (minutes at worst) goes to SERVICE_QUEUE; the quick calls (inspect a model, the estimate, the method check,
dataset checks and previews) go to QUICK_QUEUE, which a `--queues quick` worker consumes alone, so a long
generation never holds them up (`tunedeck serve` starts one).
"""

from __future__ import annotations

TRAINING_QUEUE = "tunedeck.training"
SERVICE_QUEUE = "tunedeck.service"
QUICK_QUEUE = "tunedeck.quick"
#: The `--queues` names of `tunedeck worker`. A `service` worker consumes the quick queue too.
QUEUES = {"training": TRAINING_QUEUE, "service": SERVICE_QUEUE, "quick": QUICK_QUEUE}

#: Long trainings. A worker consuming them runs one training per process, a fresh process each time.
TRAIN_TASK = "tunedeck.train_run"
#: Merging an adapter into its base can take as long as loading a big model: it runs on the training queue.
MERGE_TASK = "tunedeck.merge_adapter"

SERVICE_TASK_PREFIX = "tunedeck.service."
INSPECT_MODEL_TASK = f"{SERVICE_TASK_PREFIX}inspect_model"
CHECK_METHOD_TASK = f"{SERVICE_TASK_PREFIX}check_method"
GENERATE_TASK = f"{SERVICE_TASK_PREFIX}generate"
INSPECT_DATASET_TASK = f"{SERVICE_TASK_PREFIX}inspect_dataset"
PREVIEW_DATASET_TASK = f"{SERVICE_TASK_PREFIX}preview_dataset"
#: Ask a search sweep's study for its next trials when one of its runs ended (tunedeck_state.search.trials).
SWEEP_NEXT_TASK = f"{SERVICE_TASK_PREFIX}sweep_next"

#: Requests answered in seconds: never queued behind a generation.
QUICK_TASKS = frozenset({INSPECT_MODEL_TASK, CHECK_METHOD_TASK, INSPECT_DATASET_TASK, PREVIEW_DATASET_TASK})


def service_queue_for(task: str) -> str:
    """The queue a service task is sent to."""
    return QUICK_QUEUE if task in QUICK_TASKS else SERVICE_QUEUE


def consumed_queues(name: str) -> list[str]:
    """The queues a `--queues` name stands for (a service worker also answers quick calls when it is free)."""
    return [SERVICE_QUEUE, QUICK_QUEUE] if name == "service" else [QUEUES[name]]
