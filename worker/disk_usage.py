"""A run's disk on the worker: the retention it trains with, the room it needs before it starts, the checkpoints it
drops when it succeeds, and runs.disk_bytes kept up to date after each save (tunedeck_state/disk.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from runspec import RunSpec
from tunedeck_state import disk
from tunedeck_state.db import session_scope
from tunedeck_state.settings import Settings
from worker.training.checkpoints import checkpoints_dir

log = logging.getLogger(__name__)
#: Adam's two moments per trainable parameter (fp32), besides the weights a checkpoint holds.
OPTIMIZER_BYTES_PER_PARAM = 8
WEIGHT_BYTES_PER_PARAM = 4


def with_retention(spec: RunSpec, settings: Settings) -> RunSpec:
    """The spec with placement.keep_checkpoints filled in from the server's default (TUNEDECK_KEEP_CHECKPOINTS)."""
    if spec.placement.keep_checkpoints is not None:
        return spec
    placement = spec.placement.model_copy(update={"keep_checkpoints": settings.keep_checkpoints})
    return spec.model_copy(update={"placement": placement})


def room_problem(spec: RunSpec, estimate: dict[str, Any] | None, free_bytes: int | None) -> str | None:
    """Why the data directory has no room for the run's checkpoints and result (None when it has, or when there is
    no estimate of its parameters to go by)."""
    if not estimate or free_bytes is None or not estimate.get("trainable_params"):
        return None
    trainable = int(estimate["trainable_params"])
    saved = int(estimate.get("total_params") or trainable) if spec.method.name == "full" else trainable
    weights = saved * WEIGHT_BYTES_PER_PARAM
    checkpoint = weights + trainable * OPTIMIZER_BYTES_PER_PARAM
    keep = max(1, spec.placement.keep_checkpoints or 1)
    held = keep + 1 if spec.training.max_steps > spec.training.save_steps else 1  # a new one is saved before rotating
    need = held * checkpoint + weights
    if need <= free_bytes:
        return None
    return (
        f"not enough disk for its checkpoints: about {need / 2**20:.0f} MiB needed ({held} checkpoint(s) of "
        f"{checkpoint / 2**20:.0f} MiB and the final {weights / 2**20:.0f} MiB), {free_bytes / 2**20:.0f} MiB free in "
        "the data directory; free some space (delete runs), or lower placement.keep_checkpoints"
    )


def drop_checkpoints(run_dir: Path) -> None:
    """Remove a succeeded run's checkpoints (keep_checkpoints 0): its final adapter or model stays."""
    shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)


def record(settings: Settings, run_id: int) -> None:
    """Measure the run's folder into runs.disk_bytes; a failure only logs (the size is a display)."""
    try:
        with session_scope() as session:
            disk.record_disk_bytes(session, settings, run_id)
    except Exception:
        log.warning("could not record the disk use of run %s", run_id, exc_info=True)


class DiskUsageCallback(TrainerCallback):
    """After each save (and the Trainer's rotation of old checkpoints), the run's bytes on disk."""

    def __init__(self, settings: Settings, run_id: int) -> None:
        self.settings = settings
        self.run_id = run_id

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.is_world_process_zero:
            record(self.settings, self.run_id)
        return control
