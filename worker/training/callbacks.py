"""A Trainer callback that streams metrics, progress and log lines to a Reporter, and honours cancellation."""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.distributed import any_process_says
from worker.training.reporter import Reporter
from worker.training.resources import memory_metrics

#: Trainer log keys worth keeping, under the names the dashboard uses.
KEPT_KEYS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "epoch": "epoch",
    "eval_loss": "eval_loss",
    "num_input_tokens_seen": "tokens_seen",
}


class ReporterCallback(TrainerCallback):
    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.cancelled = False
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self._last_log_time = time.perf_counter()
        self._last_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._last_log_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        self.reporter.progress(state.global_step, state.max_steps)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.reporter.progress(state.global_step, state.max_steps)
        if any_process_says(self.reporter.should_stop(), args.device):
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = True  # keep a checkpoint: Resume continues from here

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs:
            return
        is_eval = any(key.startswith("eval_") for key in logs)
        values = {
            name: float(logs[key])
            for key, name in KEPT_KEYS.items()
            if isinstance(logs.get(key), int | float)
            and math.isfinite(float(logs[key]))
            # An eval log repeats the step's epoch and token count: keep only its eval_* values.
            and (key.startswith("eval_") or not is_eval)
        }
        if "loss" in values:
            self.last_loss = values["loss"]
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen
            if now > self._last_log_time and tokens > self._last_tokens:
                values["tokens_per_second"] = (tokens - self._last_tokens) / (now - self._last_log_time)
            self._last_log_time, self._last_tokens = now, tokens
            values.update(memory_metrics())
        if "eval_loss" in values:
            self.last_eval_loss = values["eval_loss"]
            values["eval_perplexity"] = math.exp(min(values["eval_loss"], 50.0))
        if not values:
            return
        self.reporter.metrics(state.global_step, values)
        if values.keys() - {"epoch", "tokens_seen"}:  # the end-of-training log has nothing else worth a line
            self.reporter.log(_log_line(state, values))


def _log_line(state: TrainerState, values: dict[str, float]) -> str:
    parts = [f"step {state.global_step}/{state.max_steps}"]
    for key, fmt in (
        ("loss", "loss={:.4f}"),
        ("eval_loss", "eval_loss={:.4f}"),
        ("learning_rate", "lr={:.2e}"),
        ("grad_norm", "grad_norm={:.3f}"),
        ("tokens_per_second", "tok/s={:.0f}"),
    ):
        if key in values:
            parts.append(fmt.format(values[key]))
    return " ".join(parts)
