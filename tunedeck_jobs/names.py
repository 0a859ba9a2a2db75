"""Queue and task names: what the web sends and the workers consume, in one place.

Training workers consume TRAINING_QUEUE plus their own and memory-class queues (tunedeck_jobs/placement.py); service
workers consume SERVICE_QUEUE: quick requests the web process waits for (inspect a model, generate text), torch work
it must not do itself.
"""

from __future__ import annotations

TRAINING_QUEUE = "tunedeck.training"
SERVICE_QUEUE = "tunedeck.service"
#: The `--queues` names of `tunedeck worker`.
QUEUES = {"training": TRAINING_QUEUE, "service": SERVICE_QUEUE}

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
