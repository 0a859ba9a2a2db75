"""The pruners' decisions on a study rebuilt from runs (tunedeck_state.search): median and Hyperband, with the
reasons a pruned run shows. Pure logic on unsaved rows; the end to end path is tests/test_search_sweeps.py."""

from __future__ import annotations

import random
from typing import Any

from tunedeck_state.models import Run, Sweep
from tunedeck_state.search.pruning import prune_reason
from tunedeck_state.search.study import Member, read_config


def _sweep(pruner: Any) -> Sweep:
    request = {
        "base": {"training": {"max_steps": 90, "eval_steps": 10}},
        "strategy": "tpe",
        "space": {"method.r": {"type": "int", "low": 1, "high": 8}},
        "budget": {"max_runs": 20, "max_concurrent": 2},
        "pruner": pruner,
    }
    return Sweep(id=1, name="s", request=request, strategy="tpe")


def _simulate(pruner: Any, trials: int = 12) -> list[str]:
    """Trials one after the other, each reporting an eval loss every 10 steps; the pruner asked at each."""
    sweep = _sweep(pruner)
    config = read_config(sweep.request)
    rng = random.Random(0)
    members: list[Member] = []
    reasons = []
    for i in range(trials):
        member = Member(
            run=Run(id=i, status="running", spec={}, max_steps=90, step=0), number=i, params={"method.r": 2}
        )
        members.append(member)
        offset = rng.random()
        for step in range(10, 91, 10):
            member.series[step] = 3.0 - step / 100 + offset
            reason = prune_reason(sweep, config, members, member)
            if reason:
                member.run.status = "pruned"
                reasons.append(reason)
                break
        else:
            member.run.status = "succeeded"
            member.run.final_eval_loss = member.series[90]
    return reasons


def test_median_prunes_runs_worse_than_the_median_and_says_so() -> None:
    reasons = _simulate({"type": "median", "n_startup_trials": 2})
    assert reasons
    assert all("is above the median" in r and "runs at step 10" in r for r in reasons), reasons


def test_median_waits_for_its_startup_trials() -> None:
    assert _simulate({"type": "median", "n_startup_trials": 20}) == []


def test_hyperband_prunes_at_its_rungs() -> None:
    reasons = _simulate("hyperband")
    assert reasons
    assert all("hyperband" in r for r in reasons)
    assert {r.split(" at step ")[1].split(" ")[0] for r in reasons} <= {"10", "30", "90"}  # eval_steps × 3^k
