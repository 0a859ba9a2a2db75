"""Sweeps: many runs from one base spec and a grid of dotted spec paths (or an explicit list of overrides).

Expansion order: for each override (or once, with none), every point of the grid's cartesian product, the
grid's keys varying last-fastest. A change of `method.name` replaces the method block, so one sweep can hold
LoRA r=8, prompt tuning and full fine-tuning side by side.

Every expanded spec is validated before anything is stored. A run identical to one already succeeded, queued
or running (same normalised-spec hash) is reused instead of trained again, unless the request says rerun.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from app.services.method_check import check_method_fits_model
from app.services.submit import store_and_enqueue
from runspec import RunSpec
from runspec.base import StrictModel
from runspec.spec_paths import METHOD_NAME, apply_changes, flat_changes, format_value, short_label
from tunedeck_state import runs as run_service
from tunedeck_state.labels import has_tag
from tunedeck_state.models import Run, RunStatus, Sweep, SweepRun
from tunedeck_state.search.pruning import steps_saved
from tunedeck_state.search.space import OBJECTIVE_METRICS, Budget, Objective, PrunerSpec, parse_pruner
from tunedeck_state.search.study import read_config
from tunedeck_state.search.trials import device_hours, is_search, stop_asking
from tunedeck_state.source_checks import SpecRefused, check_sources

MAX_RUNS = 256
MAX_ID = 2**31 - 1
MAX_VALUES = 100
NAME_MAX = 100
#: A run in one of these states is not trained again when an identical spec is submitted (unless rerun).
REUSABLE = (RunStatus.succeeded, RunStatus.queued, RunStatus.running)
ACTIVE = (RunStatus.queued, RunStatus.running)
#: A run spec nests four levels at most (dataset.columns.x); a base, grid or override nested deeper is refused as
#: such, before anything walks it recursively (copying a base 900 levels deep exhausted the stack: a 500).
MAX_SPEC_DEPTH = 32
TOO_DEEP = f"nested too deeply: a run spec is a few levels deep; give one nested at most {MAX_SPEC_DEPTH} levels"


def json_depth(value: Any, limit: int = MAX_SPEC_DEPTH) -> int:
    """How deeply a JSON value nests, counted iteratively (so any depth is safe) and up to just past `limit`."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= limit:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class SweepRequest(StrictModel):
    """`POST /api/sweeps`: a base spec plus a grid and/or a list of overrides."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=80,
        pattern=r"^[^/\\\x00-\x1f]+$",
        description="The sweep's label; each run is named after it and its own values.",
        examples=["rank sweep"],
    )
    base: dict[str, Any] = Field(
        ..., description="A run spec (its name may be left out) that every run starts from.", examples=[{}]
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description='Dotted spec paths to lists of values, e.g. {"method.r": [4, 8, 16]}; runs = the product.',
    )
    overrides: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Changes per run (dotted paths or nested), e.g. [{"method": {"name": "full"}}, '
        '{"method.name": "lora", "method.r": 8}]; combined with every point of the grid.',
    )
    rerun: bool = Field(False, description="Train again even when an identical run already succeeded.")
    strategy: Literal["grid", "random", "tpe"] = Field(
        "grid",
        description="grid: every point of `grid` × `overrides`, at once. random or tpe: trials sampled from `space` "
        "by Optuna (TPE: Bayesian), asked as runs finish so that budget.max_concurrent stay in flight.",
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description='Dotted spec paths to a range {"type": "int"|"float", "low", "high", "log": true}, a list of '
        'choices (method.name entries may be {"name": ..., "space": {...}}, that method\'s own sub-space) or a '
        "fixed value. With strategy grid, lists only (they join the grid).",
        examples=[
            {
                "method.r": {"type": "int", "low": 2, "high": 16},
                "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            }
        ],
    )
    objective: Objective = Field(
        default_factory=lambda: Objective(),
        description=f"What the search optimises: metric ({', '.join(OBJECTIVE_METRICS)}) and direction.",
    )
    budget: Budget | None = Field(
        None, description="random / tpe: max_runs in all, max_concurrent at once, optionally gpu_hours in all."
    )
    pruner: Literal["median", "hyperband"] | PrunerSpec | None = Field(
        None,
        description="Early stopping on the eval loss runs report: median (stop a run whose best eval loss is worse "
        "than the median of finished runs at that step) or hyperband; an object tunes it "
        '({"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0}).',
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random / tpe: the sampler's seed.")

    def pruner_spec(self) -> PrunerSpec | None:
        return parse_pruner(self.pruner.model_dump() if isinstance(self.pruner, PrunerSpec) else self.pruner)

    @field_validator("base", "grid", "overrides", mode="before")
    @classmethod
    def _not_too_deep(cls, value: Any) -> Any:
        if json_depth(value) > MAX_SPEC_DEPTH:
            raise ValueError(TOO_DEEP)
        return value

    @field_validator("grid")
    @classmethod
    def _grid_lists(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in grid.items():
            if not path or path.strip(".") != path or " " in path:
                raise ValueError(f"{path!r} is not a dotted spec path such as method.r")
            if path == "name":
                raise ValueError("name cannot be swept: runs are named after the sweep and their values")
            if not values:
                raise ValueError(f"{path}: give at least one value")
            if len(values) > MAX_VALUES:
                raise ValueError(f"{path}: at most {MAX_VALUES} values")
            seen: list[Any] = []
            for value in values:
                if value in seen:
                    raise ValueError(f"{path}: lists {value!r} twice")
                seen.append(value)
        return grid

    @field_validator("overrides")
    @classmethod
    def _overrides_size(cls, overrides: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(overrides) > MAX_RUNS:
            raise ValueError(f"at most {MAX_RUNS} overrides")
        return overrides


class SweepInvalid(ValueError):
    """Some expanded specs are invalid. `problems`: one dict per error with run_index, run_name, field, msg."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        super().__init__("; ".join(_problem_text(p) for p in problems[:10]))


def _problem_text(problem: Mapping[str, Any]) -> str:
    where = f"run {problem['run_index']}" if problem.get("run_index") is not None else "sweep"
    name = f" ({problem['run_name']})" if problem.get("run_name") else ""
    return f"{where}{name}: {problem['field']}: {problem['msg']}"


class SweepNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Planned:
    """One expanded run: its position, the changes that made it, and the validated spec."""

    index: int
    changes: dict[str, Any]
    spec: RunSpec


@dataclass
class Plan:
    runs: list[Planned] = field(default_factory=list)
    varied: list[str] = field(default_factory=list)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def count_runs(request: SweepRequest) -> int:
    points = 1
    for values in request.grid.values():
        points *= len(values)
    return max(1, len(request.overrides)) * points


def run_name(sweep_name: str, changes: Mapping[str, Any]) -> str:
    """ "rank sweep r=8", "methods full", "methods prompt_tuning num_virtual_tokens=20": stable, so that
    re-submitting a sweep names (and so hashes) its runs the same way."""
    parts = []
    if METHOD_NAME in changes:
        parts.append(format_value(changes[METHOD_NAME]))
    parts += [f"{short_label(p)}={format_value(v)}" for p, v in changes.items() if p not in (METHOD_NAME, "name")]
    name = " ".join([sweep_name, *parts]) if parts else sweep_name
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in name)
    return name[:NAME_MAX].strip()


def plan_sweep(request: SweepRequest) -> Plan:
    """Expand and validate every run; raise SweepInvalid naming each bad run and field, storing nothing."""
    total = count_runs(request)
    if total > MAX_RUNS:
        raise SweepInvalid(
            [{"run_index": None, "run_name": None, "field": "grid", "msg": f"makes {total} runs; at most {MAX_RUNS}"}]
        )
    base = normalised_base(request.base)
    varied: dict[str, None] = {}
    problems: list[dict[str, Any]] = []
    planned: list[Planned] = []
    index = 0
    for override in request.overrides or [{}]:
        override_flat = flat_changes(override)
        for point in grid_points(request.grid):
            changes = {**override_flat, **point}
            explicit_name = changes.pop("name", None)
            for path in changes:
                varied.setdefault(path, None)
            values = apply_changes(base, changes)
            values["name"] = str(explicit_name) if explicit_name else run_name(request.name, changes)
            try:
                spec = RunSpec.model_validate(values)
                check_sources(spec)
            except ValidationError as exc:
                problems += [sweep_problem(index, values["name"], error) for error in exc.errors()]
            except SpecRefused as refused:
                problems += [
                    {"run_index": index, "run_name": values["name"], "field": f, "msg": m} for f, m in refused.problems
                ]
            else:
                planned.append(Planned(index=index, changes=changes, spec=spec))
            index += 1
    if problems:
        raise SweepInvalid(problems)
    duplicates = [h for h, n in Counter(p.spec.spec_hash() for p in planned).items() if n > 1]
    if duplicates:
        same = [p.index for p in planned if p.spec.spec_hash() == duplicates[0]]
        raise SweepInvalid(
            [
                {
                    "run_index": same[1],
                    "run_name": planned[same[1]].spec.name,
                    "field": "overrides",
                    "msg": f"runs {', '.join(map(str, same))} are identical; remove the repeated override or value",
                }
            ]
        )
    return Plan(runs=planned, varied=list(varied))


def check_methods_fit_models(plan: Plan) -> None:
    """Ask a worker, once per distinct model, method and training block, whether the method fits the model (the
    check a single run gets at submit); raise SweepInvalid naming every run that does not fit. Once no worker
    answers for a model, its other runs are not asked about (each would wait in turn)."""
    problems: list[dict[str, Any]] = []
    refusals: dict[str, SpecRefused | None] = {}
    unanswered: set[str] = set()  # models no worker answered for: the runs train anyway and check at their start
    for planned in plan.runs:
        spec = planned.spec
        key = spec.model + spec.method.model_dump_json() + spec.training.model_dump_json()
        if key not in refusals:
            if spec.model in unanswered:
                refusals[key] = None
                continue
            try:
                if not check_method_fits_model(spec):
                    unanswered.add(spec.model)
            except SpecRefused as refused:
                refusals[key] = refused
            else:
                refusals[key] = None
        refusal = refusals[key]
        if refusal is not None:
            problems += [
                {"run_index": planned.index, "run_name": spec.name, "field": f, "msg": m} for f, m in refusal.problems
            ]
    if problems:
        raise SweepInvalid(problems)


def normalised_base(base: Mapping[str, Any]) -> dict[str, Any]:
    """The base with the spec's defaults filled in (so "method.r" has a method to go into), when it validates
    on its own; else as given (the grid may be what makes it valid)."""
    given = {k: v for k, v in base.items() if k != "name"}
    try:
        return RunSpec.model_validate({**given, "name": "base"}).model_dump(mode="json", exclude={"name"})
    except ValidationError:
        return given


def sweep_problem(index: int, name: str, error: Mapping[str, Any]) -> dict[str, Any]:
    loc = [str(part) for part in error.get("loc", ())]
    if len(loc) >= 2 and loc[0] == "method":  # the union's tag: method.lora.r → method.r
        loc = [loc[0], *loc[2:]]
    return {"run_index": index, "run_name": name, "field": ".".join(loc) or "spec", "msg": error.get("msg", "")}


def create_sweep(session: Session, request: SweepRequest) -> Sweep:
    """Plan, store the sweep and its new runs in one transaction, commit, then queue the new runs."""
    plan = plan_sweep(request)
    check_methods_fit_models(plan)
    sweep = Sweep(
        name=request.name,
        request=request.model_dump(mode="json", exclude={"rerun"}),
        varied=plan.varied,
    )
    session.add(sweep)
    session.flush()
    reusable = {} if request.rerun else _reusable_runs(session, [p.spec.spec_hash() for p in plan.runs])
    new_runs: list[Run] = []
    for planned in plan.runs:
        existing = reusable.get(planned.spec.spec_hash())
        if existing is not None:
            session.add(SweepRun(sweep_id=sweep.id, run_id=existing.id, position=planned.index, reused=True))
            continue
        run = run_service.create_run(session, planned.spec)
        run.sweep_id = sweep.id
        session.add(SweepRun(sweep_id=sweep.id, run_id=run.id, position=planned.index, reused=False))
        new_runs.append(run)
    store_and_enqueue(session, new_runs)
    return get_sweep(session, sweep.id)


def _reusable_runs(session: Session, hashes: Sequence[str]) -> dict[str, Run]:
    """For each hash, the run to reuse: the newest succeeded one, else the newest queued or running one."""
    rows = session.scalars(
        select(Run)
        .where(Run.spec_hash.in_(set(hashes)), Run.status.in_([s.value for s in REUSABLE]))
        .order_by(Run.id.desc())
    ).all()
    chosen: dict[str, Run] = {}
    for run in rows:
        current = chosen.get(run.spec_hash)
        if current is None or (current.status != RunStatus.succeeded and run.status == RunStatus.succeeded):
            chosen[run.spec_hash] = run
    return chosen


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    if not 0 < sweep_id <= MAX_ID:  # beyond the integer column: no such sweep (not a database error)
        raise SweepNotFound(sweep_id)
    sweep = session.scalar(
        select(Sweep)
        .where(Sweep.id == sweep_id)
        .options(selectinload(Sweep.members).selectinload(SweepRun.run))
        .execution_options(populate_existing=True)
    )
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def list_sweeps(
    session: Session, *, limit: int = 50, offset: int = 0, archived: bool | None = False, tag: str | None = None
) -> list[Sweep]:
    """Newest first; archived sweeps only when `archived` is True, both when None; with `tag`, the sweeps it is on."""
    where: list[ColumnElement[bool]] = [] if archived is None else [Sweep.archived.is_(archived)]
    if tag:
        where.append(has_tag(Sweep.tags, tag))
    return list(
        session.scalars(
            select(Sweep)
            .where(*where)
            .order_by(Sweep.id.desc())
            .limit(limit)
            .offset(offset)
            .options(selectinload(Sweep.members).selectinload(SweepRun.run))
        ).all()
    )


def sweep_runs(sweep: Sweep) -> list[Run]:
    return [member.run for member in sweep.members]


def cancel_sweep(session: Session, sweep_id: int) -> Sweep:
    """Cancel every queued or running run of the sweep (queued at once, running at their next step)."""
    sweep = get_sweep(session, sweep_id)
    stop_asking(session, sweep)
    for run in sweep_runs(sweep):
        if run.status in [s.value for s in ACTIVE]:
            with contextlib.suppress(run_service.InvalidTransition):  # it finished meanwhile
                run_service.request_cancel(session, run.id)
    session.commit()
    return get_sweep(session, sweep_id)


@dataclass(frozen=True)
class SweepSummary:
    total: int
    counts: dict[str, int]
    state: str
    progress: float
    #: random / tpe: trials the budget allows in all (total is the trials asked so far); grid: None.
    max_runs: int | None = None
    #: GPU-steps the pruned runs did not train.
    steps_saved: int = 0
    #: Hours the runs the sweep launched held their devices (tunedeck_state.search.trials.device_hours).
    device_hours: float = 0.0
    #: random / tpe: the budget's device-hours (no trial is asked once they are spent); None: no such limit.
    gpu_hours: float | None = None


def summarize(sweep: Sweep) -> SweepSummary:
    runs = sweep_runs(sweep)
    counts = Counter(run.status for run in runs)
    active = sum(counts.get(s.value, 0) for s in ACTIVE)
    budget = read_config(sweep.request).budget if is_search(sweep) else None
    to_ask = budget.max_runs - (sweep.trials_asked or 0) if budget else 0
    if active or to_ask > 0:
        state = "running" if counts.get(RunStatus.running.value) else "queued"
    elif counts.get(RunStatus.failed.value):
        state = "failed" if counts.get(RunStatus.failed.value) == len(runs) else "finished with failures"
    elif counts.get(RunStatus.cancelled.value):
        state = "cancelled"
    else:
        state = "succeeded"
    steps = sum(run.max_steps for run in runs)
    done = sum(run.max_steps if run.status_enum.is_final else min(run.step, run.max_steps) for run in runs)
    if to_ask > 0 and runs:  # trials not asked yet: as long as the average one so far
        steps += to_ask * steps // len(runs)
    return SweepSummary(
        total=len(runs),
        counts=dict(counts),
        state=state,
        progress=(done / steps) if steps else 0.0,
        max_runs=budget.max_runs if budget else None,
        steps_saved=steps_saved(runs),
        device_hours=device_hours(run for run in runs if run.sweep_id == sweep.id),  # not the runs it reused
        gpu_hours=budget.gpu_hours if budget else None,
    )
