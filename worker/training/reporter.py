"""The interface training code reports through. The worker task supplies one that writes to the database."""

from __future__ import annotations

from typing import Protocol


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
