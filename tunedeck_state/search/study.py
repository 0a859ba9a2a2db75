"""An Optuna study rebuilt in memory from a sweep's stored runs, for one question: the next trial, or a prune.

Why not Optuna's RDBStorage on the same database: its schema is versioned by its own Alembic in the default
`alembic_version` table, which tunedeck's migrations own, and its tables (studies, trials, ...) would live
beside ours outside our migrations. Rebuilding instead keeps one source of truth, the runs themselves (status,
eval-loss series, objective), and every ask happens in the same transaction that stores its run. A study holds at
most MAX_TRIALS trials, so the rebuild is a few milliseconds.

Trial states: a queued or running run is RUNNING, a succeeded one COMPLETE (its objective value; FAIL if the run
has none), a pruned one PRUNED, a failed or cancelled one FAIL. Intermediate values are the run's eval_loss series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from runspec.base import StrictModel
from tunedeck_state.models import Metric, Run, RunStatus, Sweep, SweepRun
from tunedeck_state.search.space import Budget, Objective, PrunerSpec, distributions, parse_pruner

if TYPE_CHECKING:
    from optuna import Study
    from optuna.pruners import BasePruner
    from optuna.trial import FrozenTrial

EVAL_KEY = "eval_loss"


class SearchConfig(StrictModel):
    """The search part of a stored sweep request (Sweep.request)."""

    strategy: str = "grid"
    space: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    budget: Budget | None = None
    pruner: PrunerSpec | None = None
    seed: int = 0


def read_config(request: Mapping[str, Any]) -> SearchConfig:
    return SearchConfig(
        strategy=str(request.get("strategy") or "grid"),
        space=dict(request.get("space") or {}),
        objective=Objective.model_validate(request.get("objective") or {}),
        budget=Budget.model_validate(request["budget"]) if request.get("budget") else None,
        pruner=parse_pruner(request.get("pruner")),
        seed=int(request.get("seed") or 0),
    )


@dataclass
class Member:
    """One trial's facts: the run, its study number and params, its eval-loss series."""

    run: Run
    number: int
    params: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    series: dict[int, float] = field(default_factory=dict)


def load_members(session: Session, sweep: Sweep) -> list[Member]:
    rows = session.execute(
        select(SweepRun, Run).join(Run, Run.id == SweepRun.run_id).where(SweepRun.sweep_id == sweep.id)
    ).all()
    ids = [run.id for _, run in rows]
    series: dict[int, dict[int, float]] = {run_id: {} for run_id in ids}
    if ids:
        points = session.execute(
            select(Metric.run_id, Metric.step, Metric.value).where(Metric.run_id.in_(ids), Metric.key == EVAL_KEY)
        )
        for run_id, step, value in points:
            series[run_id][int(step)] = float(value)
    members = []
    for link, run in sorted(rows, key=lambda row: row[0].position):
        trial = link.trial or {}
        members.append(
            Member(
                run=run,
                number=int(trial.get("number", link.position)),
                params=dict(trial.get("params") or {}),
                system_attrs=dict(trial.get("system_attrs") or {}),
                series=series[run.id],
            )
        )
    return members


def objective_value(member: Member, metric: str) -> float | None:
    run = member.run
    value: float | None
    if metric == "best_eval_loss":
        finite = [v for v in member.series.values() if math.isfinite(v)]
        value = min(finite) if finite else run.final_eval_loss
    elif metric == "final_eval_loss":
        value = run.final_eval_loss
    else:
        value = run.final_train_loss
    return value if value is not None and math.isfinite(value) else None


def frozen_trial(member: Member, config: SearchConfig, *, running: bool = False) -> FrozenTrial:
    from optuna.trial import TrialState, create_trial

    known = distributions(config.space)
    params = {k: v for k, v in member.params.items() if k in known}
    status = member.run.status_enum
    values = {step: v for step, v in member.series.items() if math.isfinite(v)}
    value = None
    if running or status in (RunStatus.queued, RunStatus.running):
        state = TrialState.RUNNING
    elif status is RunStatus.succeeded:
        value = objective_value(member, config.objective.metric)
        state = TrialState.COMPLETE if value is not None else TrialState.FAIL
    elif status is RunStatus.pruned:
        state = TrialState.PRUNED
    else:
        state = TrialState.FAIL
    return create_trial(
        state=state,
        value=value,
        params=params,
        distributions={k: known[k] for k in params},
        intermediate_values=values,
        system_attrs=member.system_attrs,
    )


def make_pruner(config: SearchConfig, base: Mapping[str, Any]) -> BasePruner:
    from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner

    pruner = config.pruner
    if pruner is None:
        return NopPruner()
    if pruner.type == "median":
        return MedianPruner(n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps)
    training = base.get("training") or {}
    max_steps = int(training.get("max_steps") or 200)
    min_resource = int(training.get("eval_steps") or max(1, max_steps // 5))
    return HyperbandPruner(
        min_resource=min_resource, max_resource=max(max_steps, min_resource), reduction_factor=pruner.reduction_factor
    )


def tpe_startup_trials(max_runs: int) -> int:
    """Random trials before TPE models the results: Optuna's 10, fewer for a small budget (at least 2)."""
    return max(2, min(10, max_runs // 4))


def build_study(
    sweep: Sweep, config: SearchConfig, members: Sequence[Member], *, sampler_seed: int | None = None
) -> Study:
    import optuna
    from optuna.samplers import RandomSampler, TPESampler
    from optuna.storages import InMemoryStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = config.seed + (sampler_seed or 0)
    sampler: optuna.samplers.BaseSampler
    if config.strategy == "tpe":
        max_runs = config.budget.max_runs if config.budget else 10
        sampler = TPESampler(seed=seed, n_startup_trials=tpe_startup_trials(max_runs), constant_liar=True)
    else:
        sampler = RandomSampler(seed=seed)
    study = optuna.create_study(
        storage=InMemoryStorage(),
        study_name=f"sweep-{sweep.id}",
        direction=config.objective.direction,
        sampler=sampler,
        pruner=make_pruner(config, sweep.request.get("base") or {}),
    )
    for member in sorted(members, key=lambda m: m.number):
        study.add_trial(frozen_trial(member, config))
    return study
