"""A Reporter that streams a training run into the database from a background thread.

The training loop only appends to in-memory buffers; every `metric_flush_seconds` the flusher writes one
batch (metrics, log lines, progress, heartbeat) in one transaction and learns whether the user cancelled.
At a high logging rate the batches simply grow (one statement per batch: see runs.upsert_metrics), so the
writer keeps up without the training loop ever waiting on the database.

It also notes when the first optimizer step of the attempt ended (details.first_step_at, UTC ISO 8601): with
the claim's event and the log lines' times this gives the launch latency (bench/launch.py).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from tunedeck_state.db import session_scope
from tunedeck_state.models import utcnow
from tunedeck_state.runs import ProgressUpdate, record_progress

log = logging.getLogger(__name__)


class DatabaseReporter:
    def __init__(self, run_id: int, flush_seconds: float, attempt: int | None = None) -> None:
        self.run_id = run_id
        #: Writes only while this is the run's running attempt; a superseded attempt is told to stop.
        self.attempt = attempt
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._metrics: list[tuple[int, str, float]] = []
        self._logs: list[tuple[datetime, str]] = []
        self._details: dict[str, Any] = {}
        self._step: int | None = None
        self._max_steps: int | None = None
        self._initial_step: int | None = None  # the step training began at (a resumed attempt: its checkpoint's)
        self._first_step_noted = False
        self._stop_requested = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reporter-run-{run_id}", daemon=True)

    # -- Reporter protocol (called from the training loop) --
    def metrics(self, step: int, values: dict[str, float]) -> None:
        with self._lock:
            self._metrics.extend((step, key, value) for key, value in values.items())

    def progress(self, step: int, max_steps: int) -> None:
        with self._lock:
            self._step, self._max_steps = step, max_steps
            if self._initial_step is None:
                self._initial_step = step
            elif not self._first_step_noted and step > self._initial_step:
                self._first_step_noted = True
                self._details["first_step_at"] = utcnow().isoformat()

    def log(self, line: str) -> None:
        with self._lock:
            self._logs.append((utcnow(), line))

    def details(self, values: dict[str, object]) -> None:
        with self._lock:
            self._details.update(values)

    def should_stop(self) -> bool:
        return self._stop_requested.is_set()

    # -- lifecycle --
    def __enter__(self) -> DatabaseReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        self._thread.join()
        self.flush()  # whatever arrived after the thread's last pass

    def flush(self) -> None:
        with self._lock:
            batch = ProgressUpdate(
                step=self._step,
                max_steps=self._max_steps,
                metrics=self._metrics,
                log_lines=self._logs,
                details=self._details or None,
            )
            self._metrics, self._logs, self._details = [], [], {}
        try:
            with session_scope() as session:
                if record_progress(session, self.run_id, batch, attempt=self.attempt):
                    self._stop_requested.set()
        except Exception:
            with self._lock:  # keep the batch for the next pass: no metric is dropped
                self._metrics[:0] = batch.metrics
                self._logs[:0] = batch.log_lines
                self._details = {**(batch.details or {}), **self._details}
            raise

    def _run(self) -> None:
        while not self._closing.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # the database may be briefly unavailable; the next pass retries
                log.exception("could not write progress of run %s", self.run_id)
