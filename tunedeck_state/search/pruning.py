"""Early stopping: at each eval loss a sweep's run reports, ask the sweep's pruner whether to stop it.

Called by runs.record_progress in the transaction that stores the eval point (the worker's reporter thread), so the
decision sees every point stored so far. A pruned run gets `prune_reason` and `cancel_requested`: the worker stops
it at its next step with a checkpoint, as a cancel does, and finish_run ends it `pruned` instead of `cancelled`.
A run resumed after pruning is never pruned again (the user chose to continue it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunedeck_state.models import Run, RunEvent, RunLog, RunStatus, Sweep, SweepRun
from tunedeck_state.search.study import (
    EVAL_KEY,
    Member,
    SearchConfig,
    build_study,
    frozen_trial,
    load_members,
    read_config,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def check_after_eval(session: Session, run: Run, points: Sequence[tuple[int, str, float]]) -> bool:
    """True when `run` was pruned now (its reason, cancel request and a log line are set in the session)."""
    if run.sweep_id is None or run.cancel_requested or run.prune_reason:
        return False
    if not any(key == EVAL_KEY for _, key, _ in points):
        return False
    sweep = session.get(Sweep, run.sweep_id)
    if sweep is None or not (sweep.request or {}).get("pruner"):
        return False
    resumed_after_pruning = session.scalar(
        select(RunEvent.id).where(RunEvent.run_id == run.id, RunEvent.to_status == RunStatus.pruned.value).limit(1)
    )
    if resumed_after_pruning is not None:
        return False
    config = read_config(sweep.request)
    session.flush()  # the batch's points, read back with the others
    members = load_members(session, sweep)
    current = next((m for m in members if m.run.id == run.id), None)
    if current is None or not current.series:
        return False
    reason = prune_reason(sweep, config, members, current)
    if reason is None:
        return False
    run.prune_reason = reason
    run.cancel_requested = True
    session.add(RunLog(run_id=run.id, message=f"pruned: {reason}; stopping at the next step with a checkpoint"))
    return True


def prune_reason(sweep: Sweep, config: SearchConfig, members: Sequence[Member], current: Member) -> str | None:
    """The pruner's decision for `current` (a running trial), as the sentence shown on the run, or None."""
    others = [m for m in members if m.run.id != current.run.id]
    study = build_study(sweep, config, others)
    study.add_trial(frozen_trial(current, config, running=True))
    trial = study.trials[-1]
    if not study.pruner.prune(study, trial):
        _keep_system_attrs(sweep, current, study.trials[-1])
        return None
    _keep_system_attrs(sweep, current, study.get_trials(deepcopy=False)[-1])
    return _explain(config, study.get_trials(deepcopy=False), trial)


RUNG_PREFIX = "completed_rung_"


def rung_values(system_attrs: Mapping[str, Any] | None) -> list[float]:
    """The eval loss at each Hyperband rung the pruner judged a run at, in rung order: it was kept at each but a
    pruned run's last (kept on the sweep's link to the run, SweepRun.trial["system_attrs"])."""
    rungs = []
    for key, value in (system_attrs or {}).items():
        suffix = key.removeprefix(RUNG_PREFIX)
        if key.startswith(RUNG_PREFIX) and suffix.isdigit() and isinstance(value, int | float):
            rungs.append((int(suffix), float(value)))
    return [value for _, value in sorted(rungs)]


def _keep_system_attrs(sweep: Sweep, current: Member, trial: FrozenTrial) -> None:
    """Hyperband's rungs are noted in the trial's system attributes: kept on the sweep's link to the run."""
    attrs = {k: v for k, v in trial.system_attrs.items() if k.startswith(RUNG_PREFIX)}
    if not attrs or attrs == current.system_attrs:
        return
    current.system_attrs = attrs
    session = Session.object_session(sweep)
    if session is None:
        return
    link = session.get(SweepRun, (sweep.id, current.run.id))
    if link is not None:
        link.trial = {**(link.trial or {"number": current.number, "params": current.params}), "system_attrs": attrs}


def _best_so_far(trial: FrozenTrial, minimize: bool) -> float:
    values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    if not values:
        return math.nan
    return min(values) if minimize else max(values)


def _explain(config: SearchConfig, trials: Sequence[FrozenTrial], trial: FrozenTrial) -> str:
    from optuna.trial import TrialState

    step = trial.last_step
    assert step is not None
    minimize = config.objective.direction == "minimize"
    best = _best_so_far(trial, minimize)
    latest = trial.intermediate_values[step]
    value = f"eval loss {latest:.4g} at step {step}" if best == latest else f"best eval loss {best:.4g} by step {step}"
    completed = [t for t in trials if t.state == TrialState.COMPLETE and step in t.intermediate_values]
    if math.isnan(best):
        return f"eval loss at step {step} is not a number"
    pruner = config.pruner
    assert pruner is not None
    at_step = [t.intermediate_values[step] for t in completed]
    if pruner.type == "median" and at_step:
        median = float(np.nanmedian(at_step))
        side = "above" if minimize else "below"
        digits = _digits(best, median)
        value = value.replace(f"{(latest if best == latest else best):.4g}", f"{best:.{digits}g}")
        runs = "run" if len(at_step) == 1 else "runs"
        return f"{value} is {side} the median {median:.{digits}g} of {len(at_step)} {runs} at step {step}"
    return (
        f"{value} is not among the best 1/{pruner.reduction_factor} of the runs that reached this rung "
        f"(hyperband, {len(at_step)} finished runs have an eval loss at step {step})"
    )


def _digits(a: float, b: float) -> int:
    """Significant digits enough to tell a from b apart when printed (4 at least, 10 at most)."""
    for digits in range(4, 11):
        if f"{a:.{digits}g}" != f"{b:.{digits}g}":
            return digits
    return 10


def steps_saved(runs: Sequence[Run]) -> int:
    """GPU-steps pruning saved: for each run ended pruned, the steps it did not train × its GPUs."""
    return sum(
        max(0, run.max_steps - run.step) * _num_gpus(run.spec) for run in runs if run.status == RunStatus.pruned.value
    )


def _num_gpus(spec: Mapping[str, Any]) -> int:
    return int((spec.get("training") or {}).get("num_gpus") or 1)
