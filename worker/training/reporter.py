"""The interface training code reports through. The worker task supplies one that writes to the database."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from worker.training.errors import TrainingError


class Reporter(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Record metric values logged at `step`. Must be cheap: called from the training loop."""

    def progress(self, step: int, max_steps: int) -> None:
        """The optimizer step just finished."""

    def log(self, line: str) -> None:
        """A human-readable line for the run's log."""

    def details(self, values: dict[str, object]) -> None:
        """Facts learned while setting up (parameter counts, resolved peft config, dataset sizes)."""

    def should_stop(self) -> bool:
        """True once the user asked to cancel. Must be cheap: called after every step."""


@contextmanager
def failures_logged(reporter: Reporter) -> Iterator[None]:
    """End the run's log with why training failed: a TrainingError's readable reason, or the traceback of anything
    unexpected. The exception goes on to the caller, which records the outcome."""
    try:
        yield
    except TrainingError as exc:
        reporter.log(f"error: {exc}")
        raise
    except Exception:
        reporter.log(traceback.format_exc())
        raise
