"""The objective trial by trial: each compared run in trial order (a sweep's trial number, else creation order) with
its objective value, its state and the best value so far under the objective's direction.

The best so far counts succeeded runs only, as Optuna's best trial counts only completed ones: a pruned run's value
is its eval loss when it was stopped, early in training, not a result to beat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from app.services.compare.columns import LABELS, QUALITY_METRICS
from tunedeck_state.models import Run

#: The states a trial's point can be drawn in; queued/running ones have no final value yet.
STATES = ("succeeded", "pruned", "failed", "cancelled", "running", "queued")


def _order_key(run: Run, numbers: Mapping[int, int]) -> tuple[int, float, float, int]:
    number = numbers.get(run.id)
    created = run.created_at.timestamp() if isinstance(run.created_at, datetime) else 0.0
    if number is not None:
        return (0, float(number), created, run.id)
    return (1, created, 0.0, run.id)  # runs outside the sweep: after its trials, in creation order


def trials_view(
    runs: Sequence[Run],
    rows: Sequence[Mapping[str, Any]],
    objective: str,
    numbers: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """`numbers`: run id → a sweep's trial number (search sweeps) or position (grid sweeps)."""
    numbers = numbers or {}
    lower = QUALITY_METRICS[objective]
    by_id = {row["id"]: row for row in rows}
    ordered = sorted(runs, key=lambda run: _order_key(run, numbers))
    best: float | None = None
    best_run_id: int | None = None
    points = []
    for index, run in enumerate(ordered):
        value = by_id[run.id][objective]
        state = run.status
        if state == "succeeded" and value is not None and (best is None or (value < best if lower else value > best)):
            best, best_run_id = value, run.id
        points.append(
            {
                "trial": index,
                "number": numbers.get(run.id),
                "run_id": run.id,
                "name": run.name,
                "state": state,
                "value": value,
                "best_so_far": best,
                "is_best": False,
            }
        )
    for point in points:
        point["is_best"] = point["run_id"] == best_run_id
    counts = {state: sum(1 for p in points if p["state"] == state) for state in STATES}
    return {
        "objective": {"key": objective, "label": LABELS[objective], "lower_is_better": lower},
        "order": "sweep trial" if numbers else "creation",
        "points": points,
        "best_run_id": best_run_id,
        "best_value": best,
        "counts": {k: v for k, v in counts.items() if v},
    }
