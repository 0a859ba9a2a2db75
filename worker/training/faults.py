"""Test-only fault injection, switched on by TUNEDECK_TEST_* settings: slow steps and a memory cap.

Tests of worker loss, cancel and restarts need a run that is still training when they act; tests of
out-of-memory on a CPU need a process that runs out. Production settings leave both off.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import psutil
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class StepDelayCallback(TrainerCallback):
    """Sleeps after every optimizer step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        time.sleep(self.seconds)


class MemoryLimitCallback(TrainerCallback):
    """Caps the process's address space (RLIMIT_AS) at its size when training starts plus `headroom_mb`.

    `release()` lifts the cap again (the task calls it whatever happened), so the worker can report the
    failure and go on."""

    def __init__(self, headroom_mb: int) -> None:
        self.headroom = headroom_mb * 2**20
        self._previous: tuple[int, int] | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._previous = resource.getrlimit(resource.RLIMIT_AS)
        limit = psutil.Process().memory_info().vms + self.headroom
        hard = self._previous[1]
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._previous is not None:
            resource.setrlimit(resource.RLIMIT_AS, self._previous)
            self._previous = None
