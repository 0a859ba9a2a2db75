"""Search sweeps (strategy random or tpe): check the space before anything is stored, store the sweep, ask its first
trials (tunedeck_state.search.trials) and queue them. Later trials are asked as runs end, by the worker's
`tunedeck.sweep_next` task.

Checks, each a 422 naming the field: every space entry (an empty range, low > high, a log range from 0, no choices),
the objective's metric, the budget, strategy grid with a range, grid/overrides with a search strategy, method
parameters outside a method's sub-space, and a few corner specs of the space (each bound and choice) validated as run
specs, so an unknown spec path or a value the spec refuses is refused here rather than as a failed trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.services.submit import store_and_enqueue
from app.services.sweeps import (
    Plan,
    Planned,
    SweepInvalid,
    SweepRequest,
    check_methods_fit_models,
    get_sweep,
    normalised_base,
    sweep_problem,
)
from runspec import RunSpec
from runspec.spec_paths import METHOD_NAME, apply_changes
from tunedeck_state.models import Sweep
from tunedeck_state.search.space import Budget, corner_changes, distributions, method_subspaces, parse_entry
from tunedeck_state.search.trials import launch_trials
from tunedeck_state.source_checks import SpecRefused, check_sources


def _problem(field: str, msg: str) -> dict[str, Any]:
    return {"run_index": None, "run_name": None, "field": field, "msg": msg}


def _entry_problems(prefix: str, space: Mapping[str, Any]) -> list[dict[str, Any]]:
    problems = []
    for path, raw in space.items():
        if not path or path.strip(".") != path or " " in path:
            problems.append(_problem(f"{prefix}{path}", "not a dotted spec path such as method.r"))
            continue
        if path == "name":
            problems.append(_problem(f"{prefix}name", "name cannot be searched: trials are named by the sweep"))
            continue
        try:
            parse_entry(path, raw)
        except ValidationError as exc:
            problems += [_problem(f"{prefix}{path}", _range_message(e)) for e in exc.errors()]
        except ValueError as exc:
            problems.append(_problem(f"{prefix}{path}", str(exc)))
    return problems


def _range_message(error: Mapping[str, Any]) -> str:
    """A range's error, naming its own field (low, high, type, log) when it is about one."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in error.get("loc") or ())
    return f"{loc}: {msg}" if loc else msg


def check_space(request: SweepRequest) -> list[dict[str, Any]]:
    """Problems of the space alone and of the strategy it is used with."""
    space = request.space
    problems = _entry_problems("space.", space)
    if problems:
        return problems
    for method, sub in method_subspaces(space).items():
        problems += _entry_problems(f"space.{METHOD_NAME}.{method}.space.", sub)
        problems += [
            _problem(f"space.{METHOD_NAME}.{method}.space.{path}", "only method.* paths go in a method's sub-space")
            for path in sub
            if not path.startswith("method.")
        ]
    if METHOD_NAME in space and isinstance(space[METHOD_NAME], list):
        problems += [
            _problem(
                f"space.{path}",
                "with method.name among the choices, put each method's parameters in its own sub-space: "
                f'{{"method.name": [{{"name": "lora", "space": {{"{path}": ...}}}}]}}',
            )
            for path in space
            if path.startswith("method.") and path != METHOD_NAME
        ]
    if request.strategy == "grid":
        problems += [
            _problem(f"space.{path}", "a range needs strategy random or tpe; a grid takes a list of values")
            for path, raw in space.items()
            if isinstance(raw, Mapping)
        ]
        return problems
    if request.grid or request.overrides:
        problems.append(_problem("grid", f"strategy {request.strategy} samples the space: put the values in space"))
    if not problems and not distributions(space):
        problems.append(_problem("space", "nothing to search: give at least one range or list of choices"))
    if request.pruner is not None and request.objective.direction == "maximize":
        problems.append(_problem("pruner", "the pruner judges eval loss (lower is better): use direction minimize"))
    return problems


def grid_from_space(request: SweepRequest) -> SweepRequest:
    """Strategy grid with a space: its lists join the grid, its fixed values the base (ranges are refused)."""
    problems = check_space(request)
    if problems:
        raise SweepInvalid(problems)
    if not request.space:
        return request
    grid = dict(request.grid)
    base = dict(request.base)
    for path, raw in request.space.items():
        if isinstance(raw, list):
            grid[path] = [c["name"] if isinstance(c, Mapping) else c for c in raw]
        else:
            base = apply_changes(base, {path: raw})
    return request.model_copy(update={"grid": grid, "base": base, "space": {}})


def plan_corners(request: SweepRequest) -> Plan:
    """The corner specs of the space, validated like a grid's runs (problems name space.<path> where they can)."""
    problems = check_space(request)
    if problems:
        raise SweepInvalid(problems)
    base = normalised_base(request.base)
    planned: list[Planned] = []
    searched = set(request.space) | {p for sub in method_subspaces(request.space).values() for p in sub}
    for index, changes in enumerate(corner_changes(request.space)):
        values = apply_changes(base, changes)
        values["name"] = f"{request.name} corner {index}"
        try:
            spec = RunSpec.model_validate(values)
            check_sources(spec)
        except ValidationError as exc:
            for error in exc.errors():
                found = sweep_problem(index, values["name"], error)
                field = found["field"]
                if field in searched or any(p.startswith(f"{field}.") or field.startswith(f"{p}.") for p in searched):
                    found["field"] = f"space.{field}"
                found["run_index"] = None
                found["msg"] = f"{found['msg']} (at the space's point {changes})"
                problems.append(found)
        except SpecRefused as refused:
            problems += [_problem(f, m) for f, m in refused.problems]
        else:
            planned.append(Planned(index=index, changes=changes, spec=spec))
    if problems:
        raise SweepInvalid(problems)
    return Plan(runs=planned, varied=varied_paths(request.space))


def varied_paths(space: Mapping[str, Any]) -> list[str]:
    paths: dict[str, None] = {}
    for path, raw in space.items():
        if isinstance(raw, list | Mapping):
            paths.setdefault(path, None)
    for sub in method_subspaces(space).values():
        for path, raw in sub.items():
            if isinstance(raw, list | Mapping):
                paths.setdefault(path, None)
    return list(paths)


def create_search_sweep(session: Session, request: SweepRequest) -> Sweep:
    """Check, store the sweep, ask its first trials (budget.max_concurrent of them) in the same transaction, commit
    and queue them."""
    request = request.model_copy(update={"budget": request.budget or Budget()})
    plan = plan_corners(request)
    check_methods_fit_models(plan)
    sweep = Sweep(
        name=request.name,
        request=request.model_dump(mode="json", exclude={"rerun", "grid", "overrides"}),
        varied=plan.varied,
        strategy=request.strategy,
        trials_asked=0,
    )
    session.add(sweep)
    session.flush()
    store_and_enqueue(session, launch_trials(session, sweep.id))
    return get_sweep(session, sweep.id)


def describe(request: SweepRequest) -> dict[str, Any]:
    """POST /api/sweeps/preview of a search: the space as the study sees it, and the budget."""
    plan = plan_corners(request)
    budget = request.budget or Budget()
    space = {}
    for name, dist in distributions(request.space).items():
        space[name] = {"distribution": type(dist).__name__.removesuffix("Distribution").lower(), **_bounds(dist)}
    return {
        "count": budget.max_runs,
        "names": [],
        "varied": plan.varied,
        "strategy": request.strategy,
        "space": space,
        "budget": budget.model_dump(exclude_none=True),
        "objective": request.objective.model_dump(),
        "pruner": pruner.model_dump() if (pruner := request.pruner_spec()) else None,
    }


def _bounds(dist: Any) -> dict[str, Any]:
    if hasattr(dist, "choices"):
        return {"choices": list(dist.choices)}
    return {"low": dist.low, "high": dist.high, "log": bool(dist.log)}
