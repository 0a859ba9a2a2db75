"""What one attempt of a run starts from: the checkpoint it resumes, and the test-only fault callbacks."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from tunedeck_state.settings import Settings
from worker.training.checkpoints import checkpoints_dir, discard_checkpoints_after, last_complete_checkpoint
from worker.training.faults import MemoryLimitCallback, StepDelayCallback


@dataclass
class AttemptSetup:
    resume_from: Path | None
    callbacks: list[TrainerCallback] = field(default_factory=list)

    @property
    def resume_step(self) -> int | None:
        return int(self.resume_from.name.rsplit("-", 1)[1]) if self.resume_from else None


def resume_point(run_dir: Path, attempt: int) -> Path | None:
    """The checkpoint a later attempt continues from: the newest complete one this worker wrote in the run's own
    folder (never a path from the spec). Newer, incomplete folders are removed; the first attempt starts clean."""
    if attempt <= 1:
        shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)  # left by an older database's run-N
        return None
    checkpoint = last_complete_checkpoint(run_dir)
    discard_checkpoints_after(run_dir, int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0)
    return checkpoint


@contextmanager
def prepare_attempt(run_dir: Path, attempt: int, settings: Settings) -> Iterator[AttemptSetup]:
    setup = AttemptSetup(resume_from=resume_point(run_dir, attempt))
    with fault_callbacks(settings) as callbacks:
        setup.callbacks.extend(callbacks)
        yield setup


@contextmanager
def fault_callbacks(settings: Settings) -> Iterator[list[TrainerCallback]]:
    """The test-only callbacks the settings ask for (a delay after every step, a memory cap); also used by each
    process of a multi-GPU run (worker/distributed_train.py)."""
    callbacks: list[TrainerCallback] = []
    memory_limit = None
    if settings.test_step_delay_seconds:
        callbacks.append(StepDelayCallback(settings.test_step_delay_seconds))
    if settings.test_memory_headroom_mb:
        memory_limit = MemoryLimitCallback(settings.test_memory_headroom_mb)
        callbacks.append(memory_limit)
    try:
        yield callbacks
    finally:
        if memory_limit is not None:
            memory_limit.release()  # whatever happened, the worker must be able to report it
