"""Submit runs: check the spec, estimate its memory, store it, then queue it after the commit.

Each run goes to the queue placement chooses (tunedeck_jobs/placement.py): a memory class its estimate fits, a pinned
worker or GPU type, or the plain training queue; a run no live worker fits waits with the reason recorded."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.services.estimates import estimate_at_submit
from app.services.method_check import check_method_fits_model
from runspec import RunSpec
from tunedeck_jobs import dispatch
from tunedeck_jobs import placement as placement_service
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run
from tunedeck_state.source_checks import SpecRefused, check_sources


def submit_run(session: Session, spec: RunSpec) -> Run:
    """Store a run, commit, then queue it. If the broker cannot be reached the run fails with that reason.

    Raises SpecRefused (nothing stored) when the model or dataset is a URL, outside the data roots, or asks
    to run custom code, or when a worker finds the method does not fit the model (a target module it lacks), or
    when it is pinned to a live worker (or GPU type) whose GPU is too small for its estimate."""
    check_sources(spec)
    check_method_fits_model(spec)
    estimate = estimate_at_submit(spec, session)  # None when no worker answers soon: the worker makes it at start
    try:
        placement = placement_service.place_spec(session, spec, estimate, strict=True)
    except placement_service.PlacementRefused as exc:
        raise SpecRefused([(exc.field, exc.message)]) from None
    run = run_service.create_run(session, spec)
    if estimate is not None:
        run.details = {**(run.details or {}), "memory_estimate": estimate}
    placement_service.record(run, placement)
    dispatch.commit_and_send(session, [run])
    return run


def submit_runs(session: Session, specs: Sequence[RunSpec]) -> list[Run]:
    """Batch variant of submit_run: every spec's sources are checked before anything is stored (SpecRefused
    otherwise), all runs are stored in one transaction, committed, then queued."""
    for spec in specs:
        check_sources(spec)
    checked: set[str] = set()
    unanswered: set[str] = set()  # no worker answered for this model: ask no more for it (each would wait in turn)
    for spec in specs:
        key = spec.model + spec.method.model_dump_json() + str(spec.training.max_steps)
        if key not in checked and spec.model not in unanswered:
            if not check_method_fits_model(spec):
                unanswered.add(spec.model)
            checked.add(key)
    runs = [run_service.create_run(session, spec) for spec in specs]
    store_and_enqueue(session, runs)
    return runs


def store_and_enqueue(session: Session, runs: Sequence[Run]) -> None:
    """Commit `runs` (and whatever else the transaction holds), then queue each (tunedeck_jobs.dispatch).

    When a live worker declares GPU memory, runs without an estimate get one first (placement needs it)."""
    if any(o.capacity_bytes for o in placement_service.offers(session)):
        for run in runs:
            if not (run.details or {}).get("memory_estimate"):
                estimate = estimate_at_submit(RunSpec.model_validate(run.spec), session)
                if estimate is not None:
                    run.details = {**(run.details or {}), "memory_estimate": estimate}
    dispatch.commit_and_enqueue(session, runs)
