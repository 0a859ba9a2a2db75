"""Hand runs to Celery workers. Call only after the transaction that stored the run has committed.

Each run goes to the queue placement chooses (app/services/placement.py): a memory class its estimate fits, a pinned
worker or GPU type, or the plain training queue; a run no live worker fits waits with the reason recorded."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.models import Run
from app.services import placement as placement_service
from app.services import runs as run_service
from app.services.estimates import estimate_at_submit
from app.services.method_check import check_method_fits_model
from app.services.sources import SpecRefused, check_sources
from runspec import RunSpec


def enqueue_training(run: Run) -> None:
    """Send the run's task to the queue recorded on it (run.queue, run.priority: placement.record)."""
    placement_service.send(
        run.id,
        run.attempt,
        placement_service.Placement(run.queue or placement_service.TRAINING_QUEUE, run.priority),
    )


def submit_run(session: Session, spec: RunSpec) -> Run:
    """Store a run, commit, then queue it. If the broker cannot be reached the run fails with that reason.

    Raises SpecRefused (nothing stored) when the model or dataset is a URL, outside the data roots, or asks
    to run custom code, or when a worker finds the method does not fit the model (a target module it lacks), or
    when it is pinned to a live worker (or GPU type) whose GPU is too small for its estimate."""
    check_sources(spec)
    check_method_fits_model(spec)
    estimate = estimate_at_submit(spec, session)  # None when no worker answers soon: the worker makes it at start
    try:
        placement = placement_service.place_spec(session, spec, estimate)
    except placement_service.PlacementRefused as exc:
        raise SpecRefused([(exc.field, exc.message)]) from None
    run = run_service.create_run(session, spec)
    if estimate is not None:
        run.details = {**(run.details or {}), "memory_estimate": estimate}
    placement_service.record(run, placement)
    session.commit()
    try:
        enqueue_training(run)
    except Exception as exc:
        run_service.fail_queued(session, run.id, f"could not queue the run: the task broker is unreachable ({exc})")
        session.commit()
        session.refresh(run)
    return run


def submit_runs(session: Session, specs: Sequence[RunSpec]) -> list[Run]:
    """Batch variant of submit_run: every spec's sources are checked before anything is stored (SpecRefused
    otherwise), all runs are stored in one transaction, committed, then queued."""
    for spec in specs:
        check_sources(spec)
    checked: set[str] = set()
    for spec in specs:
        key = spec.model + spec.method.model_dump_json() + str(spec.training.max_steps)
        if key not in checked:
            check_method_fits_model(spec)
            checked.add(key)
    runs = [run_service.create_run(session, spec) for spec in specs]
    commit_and_enqueue(session, runs)
    return runs


def commit_and_enqueue(session: Session, runs: Sequence[Run]) -> None:
    """Place each of `runs`, commit the transaction that stored them (and whatever else belongs with them), then
    queue each run. A run that cannot be queued fails with the reason; the others are queued regardless.

    When a live worker declares GPU memory, runs without an estimate get one first (placement needs it)."""
    live = placement_service.offers(session)
    for run in runs:
        if any(o.capacity_bytes for o in live) and not (run.details or {}).get("memory_estimate"):
            estimate = estimate_at_submit(RunSpec.model_validate(run.spec), session)
            if estimate is not None:
                run.details = {**(run.details or {}), "memory_estimate": estimate}
        placement_service.place_run(session, run)
    session.commit()
    failed = []
    for run in runs:
        try:
            enqueue_training(run)
        except Exception as exc:
            run_service.fail_queued(session, run.id, f"could not queue the run: the task broker is unreachable ({exc})")
            failed.append(run)
    if failed:
        session.commit()
        for run in failed:
            session.refresh(run)
