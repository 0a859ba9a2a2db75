"""tunedeck's side of a training benchmark: `worker.training.loop.train` with the real `DatabaseReporter` into a
scratch SQLite database (the dashboard's path)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.train.setup import LEARNING_RATES, Measured, Setup
from bench.train.timing import Turns, make_probe, measurement


def run_tunedeck(
    setup: Setup,
    method: str,
    variant: str,
    seed: int,
    work: Path,
    evals: list[dict[str, Any]] | None,
    database: ScratchDatabase,
    turns: Turns | None = None,
    *,
    method_fields: dict[str, Any] | None = None,
    training_fields: dict[str, Any] | None = None,
    reset_peak: bool = True,
) -> Measured:
    """tunedeck's worker: worker.training.loop.train with the real DatabaseReporter (the dashboard's path).
    `method_fields`, `training_fields`: more of the spec (the GPU bench's LoRA targets, save_steps, ...)."""
    from runspec import RunSpec
    from worker.reporting import DatabaseReporter
    from worker.training.loop import train

    if turns is not None:
        turns.start(variant)
    began = time.perf_counter()
    training: dict[str, Any] = {
        "max_steps": setup.steps,
        "learning_rate": LEARNING_RATES[method],
        "batch_size": setup.batch_size,
        "max_length": setup.max_length,
        "seed": seed,
        "eval_generation_samples": 0,
    }
    if variant == "same":
        training.update(group_by_length=False, packing="off", supervised_logits_only=False)
    training.update(training_fields or {})
    spec = RunSpec.model_validate(
        {
            "name": f"bench {method} {variant}",
            "model": str(setup.model_dir),
            "dataset": {"source": str(setup.train_path), "eval_fraction": 0},
            "method": {"name": method, **(method_fields or {})},
            "training": training,
        }
    )
    run_id = database.new_run(spec)
    probe = make_probe(evals, setup.device, turns, variant, reset_peak=reset_peak)
    flushes: list[float] = []
    WRITERS[run_id] = (turns, variant, flushes)
    try:
        with DatabaseReporter(run_id, database.flush_seconds, attempt=1) as reporter:
            result = train(spec, work / f"run-{run_id}", reporter, callbacks=[probe])
    finally:
        WRITERS.pop(run_id, None)
    details = database.details(run_id)
    if len(database.metrics(run_id, "loss")) != setup.steps:
        raise SystemExit(f"run {run_id}: the dashboard did not get a loss for every step")
    measured = measurement(method, variant, seed, probe, time.perf_counter() - began, result.trainable_params, None)
    measured.batching = details.get("batching")
    measured.details = details
    measured.flushes, measured.flush_cpu_seconds = len(flushes), sum(flushes)
    return measured


#: run id → (its repetition's turns, its variant, the CPU seconds of each of its writer's flushes)
WRITERS: dict[int, tuple[Turns | None, str, list[float]]] = {}


@contextlib.contextmanager
def accounted_writers() -> Iterator[None]:
    """Time the dashboard writer's flushes (CPU seconds of its thread), and with turns, let a run's writer write
    only during its own run's turn, so its cost lands on that run's steps and never on another variant's."""
    from worker.reporting import DatabaseReporter

    original = DatabaseReporter.flush

    def flush(self: DatabaseReporter) -> None:
        turns, variant, flushes = WRITERS.get(self.run_id, (None, "", []))
        if turns is not None:
            turns.wait_turn(variant)
        cpu = time.thread_time()
        try:
            original(self)
        finally:
            flushes.append(time.thread_time() - cpu)

    DatabaseReporter.flush = flush  # type: ignore[method-assign]
    try:
        yield
    finally:
        DatabaseReporter.flush = original  # type: ignore[method-assign]


class ScratchDatabase:
    """A scratch data directory with a migrated SQLite database, as `tunedeck serve` makes one."""

    def __init__(self, data_dir: Path) -> None:
        from bench.report import use_database
        from tunedeck_state.settings import get_settings
        from tunedeck_state.settings_checks import heartbeat_interval

        use_database(data_dir)
        self.flush_seconds = heartbeat_interval(get_settings())

    def new_run(self, spec: Any) -> int:
        from tunedeck_state.db import session_scope
        from tunedeck_state.models import Run, utcnow

        with session_scope() as session:
            run = Run(
                name=spec.name,
                status="running",
                method=spec.method.name,
                model=spec.model,
                spec=spec.model_dump(mode="json"),
                spec_hash=spec.spec_hash(),
                max_steps=spec.training.max_steps,
                started_at=utcnow(),
                details={},
            )
            session.add(run)
            session.flush()
            return int(run.id)

    def metrics(self, run_id: int, key: str) -> list[Any]:
        from sqlalchemy import select

        from tunedeck_state.db import session_scope
        from tunedeck_state.models import Metric

        with session_scope() as session:
            return list(session.scalars(select(Metric.step).where(Metric.run_id == run_id, Metric.key == key)))

    def details(self, run_id: int) -> dict[str, Any]:
        from tunedeck_state.db import session_scope
        from tunedeck_state.models import Run

        with session_scope() as session:
            run = session.get(Run, run_id)
            return dict(run.details or {}) if run is not None else {}
