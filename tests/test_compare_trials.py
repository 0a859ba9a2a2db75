"""The comparison's trials view on unsaved runs: trial order (a sweep's numbers, else creation order), each run's
state, and the best so far under the objective's direction, counting succeeded runs only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.services.compare.trials import trials_view
from tunedeck_state.models import Run

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _runs(*rows: tuple[int, str, float | None]) -> tuple[list[Run], list[dict[str, Any]]]:
    runs = [Run(id=i, name=f"r{i}", status=s, created_at=T0 + timedelta(seconds=i)) for i, s, _ in rows]
    table = [{"id": i, "best_eval_loss": v, "gen_bleu": v} for i, _, v in rows]
    return runs, table


def test_best_so_far_follows_succeeded_trials_in_trial_order() -> None:
    # ids in creation order; the sweep numbers them otherwise
    runs, table = _runs((1, "succeeded", 2.0), (2, "pruned", 0.5), (3, "succeeded", 1.5), (4, "failed", None))
    numbers = {1: 2, 2: 0, 3: 1, 4: 3}
    view = trials_view(runs, table, "best_eval_loss", numbers)
    assert view["order"] == "sweep trial"
    assert [(p["number"], p["run_id"], p["state"]) for p in view["points"]] == [
        (0, 2, "pruned"),
        (1, 3, "succeeded"),
        (2, 1, "succeeded"),
        (3, 4, "failed"),
    ]
    # the pruned run's 0.5 (its eval loss when stopped) is not a result to beat
    assert [p["best_so_far"] for p in view["points"]] == [None, 1.5, 1.5, 1.5]
    assert view["best_run_id"] == 3 and [p["is_best"] for p in view["points"]] == [False, True, False, False]
    assert view["counts"] == {"succeeded": 2, "pruned": 1, "failed": 1}
    assert view["objective"] == {"key": "best_eval_loss", "label": "Best eval loss", "lower_is_better": True}


def test_creation_order_and_a_higher_is_better_objective() -> None:
    runs, table = _runs((5, "succeeded", 10.0), (3, "succeeded", 30.0), (4, "succeeded", 20.0))
    view = trials_view(runs, table, "gen_bleu")
    assert view["order"] == "creation"
    assert [p["run_id"] for p in view["points"]] == [3, 4, 5]
    assert [p["trial"] for p in view["points"]] == [0, 1, 2]
    assert [p["best_so_far"] for p in view["points"]] == [30.0, 30.0, 30.0]
    assert view["best_run_id"] == 3 and view["best_value"] == 30.0


def test_runs_outside_the_sweep_come_after_its_trials() -> None:
    runs, table = _runs((1, "succeeded", 1.0), (9, "succeeded", 0.5), (2, "running", None))
    view = trials_view(runs, table, "best_eval_loss", {9: 0, 2: 1})
    assert [(p["run_id"], p["number"]) for p in view["points"]] == [(9, 0), (2, 1), (1, None)]
    assert [p["best_so_far"] for p in view["points"]] == [0.5, 0.5, 0.5]
