"""What a search sweep asks for: the space of dotted spec paths, the objective, the budget and the pruner.

A space maps dotted spec paths to
* a range: {"type": "int" | "float", "low", "high", "log": true} (log needs low > 0),
* choices: a list of numbers, strings or booleans; for `method.name` an entry may also be
  {"name": "prompt_tuning", "space": {"method.num_virtual_tokens": {...}}}, that method's own sub-space,
* a fixed value: anything else (a number, a string, null).

Trials are sampled define-by-run: `method.name` first, then the chosen method's own sub-space, then the rest.
A parameter of a method's sub-space is named "<method>:<path>" in the study, so that each method's parameters
have their own distributions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from runspec.base import StrictModel
from runspec.spec_paths import METHOD_NAME

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.trial import Trial

STRATEGIES = ("grid", "random", "tpe")
#: What a trial's objective value can be read from.
OBJECTIVE_METRICS = {
    "best_eval_loss": "the lowest eval loss the run reported",
    "final_eval_loss": "the eval loss at the end of the run",
    "final_train_loss": "the training loss at the end of the run",
}
PRUNERS = ("median", "hyperband")
MAX_TRIALS = 256


class Range(StrictModel):
    type: Literal["int", "float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}: swap them")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int range needs whole-number low and high")
        if self.low == self.high:
            raise ValueError(f"empty range: low and high are both {self.low:g}; give a fixed value instead")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Objective(StrictModel):
    metric: str = Field("best_eval_loss", description=f"One of {', '.join(OBJECTIVE_METRICS)}.")
    direction: Literal["minimize", "maximize"] = "minimize"

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(OBJECTIVE_METRICS)}")
        return metric


class Budget(StrictModel):
    max_runs: int = Field(10, ge=1, le=MAX_TRIALS, description="Trials to run in all (pruned ones count).")
    max_concurrent: int = Field(1, ge=1, le=MAX_TRIALS, description="Trials queued or running at once.")
    gpu_hours: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Ask for no more trials once the trials' device time adds up to this many hours (each run "
        "holds one GPU, or a CPU worker, from each attempt's claim to its end); trials in flight finish.",
    )

    @model_validator(mode="after")
    def _fits(self) -> Budget:
        if self.max_concurrent > self.max_runs:
            raise ValueError(f"max_concurrent {self.max_concurrent} is above max_runs {self.max_runs}")
        return self


class PrunerSpec(StrictModel):
    """`pruner: "median"` is this with its defaults; the object form tunes it."""

    type: Literal["median", "hyperband"]
    n_startup_trials: int = Field(
        2, ge=0, le=MAX_TRIALS, description="median: finished trials needed before any is pruned."
    )
    n_warmup_steps: int = Field(0, ge=0, description="median: steps of each trial never pruned.")
    reduction_factor: int = Field(3, ge=2, le=10, description="hyperband: keep 1 of this many at each rung.")


def parse_pruner(value: str | Mapping[str, Any] | None) -> PrunerSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        return PrunerSpec.model_validate({"type": value})
    return PrunerSpec.model_validate(value)


def parse_entry(path: str, raw: Any) -> Range | list[Any] | Any:
    """A space entry as a Range, a list of choices, or a fixed value. ValueError naming the fix."""
    if isinstance(raw, Mapping):
        return Range.model_validate(raw)
    if isinstance(raw, list):
        if not raw:
            raise ValueError("no choices: give at least one value")
        names = []
        for choice in raw:
            if path == METHOD_NAME and isinstance(choice, Mapping):
                if (
                    set(choice) - {"name", "space"}
                    or not isinstance(choice.get("name"), str)
                    or not isinstance(choice.get("space", {}), Mapping)
                ):
                    raise ValueError('a method choice is a name or {"name": ..., "space": {...}}')
                names.append(choice["name"])
            elif choice is None or isinstance(choice, bool | int | float | str):
                names.append(choice)
            else:
                raise ValueError(f"choice {choice!r}: choices are numbers, strings, booleans or null")
        if len(set(map(repr, names))) != len(names):
            raise ValueError("lists a choice twice")
        return raw
    return raw


def method_subspaces(space: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{method name: its own sub-space} for the `method.name` choices ({} without one)."""
    choices = space.get(METHOD_NAME)
    if not isinstance(choices, list):
        return {}
    return {
        (c["name"] if isinstance(c, Mapping) else str(c)): dict(c.get("space") or {}) if isinstance(c, Mapping) else {}
        for c in choices
    }


def method_names(space: Mapping[str, Any]) -> list[str]:
    return list(method_subspaces(space))


def distribution(entry: Range | list[Any]) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(entry, Range):
        if entry.type == "int":
            return IntDistribution(int(entry.low), int(entry.high), log=entry.log)
        return FloatDistribution(entry.low, entry.high, log=entry.log)
    return CategoricalDistribution([c["name"] if isinstance(c, Mapping) else c for c in entry])


def distributions(space: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """Every parameter the study may hold, by its study name (sub-space ones as "<method>:<path>")."""
    found: dict[str, BaseDistribution] = {}
    for path, raw in space.items():
        entry = parse_entry(path, raw)
        if isinstance(entry, Range | list):
            found[path] = distribution(entry)
    for method, sub in method_subspaces(space).items():
        for path, raw in sub.items():
            entry = parse_entry(path, raw)
            if isinstance(entry, Range | list):
                found[f"{method}:{path}"] = distribution(entry)
    return found


def _suggest(trial: Trial, name: str, entry: Range | list[Any]) -> Any:
    if isinstance(entry, Range):
        if entry.type == "int":
            return trial.suggest_int(name, int(entry.low), int(entry.high), log=entry.log)
        return trial.suggest_float(name, entry.low, entry.high, log=entry.log)
    return trial.suggest_categorical(name, [c["name"] if isinstance(c, Mapping) else c for c in entry])


def sample(trial: Trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """The spec changes for one trial (dotted paths → values), asking `trial` for every free parameter."""
    changes: dict[str, Any] = {}
    if METHOD_NAME in space:
        entry = parse_entry(METHOD_NAME, space[METHOD_NAME])
        method = _suggest(trial, METHOD_NAME, entry) if isinstance(entry, list | Range) else entry
        changes[METHOD_NAME] = method
        for path, raw in method_subspaces(space).get(str(method), {}).items():
            sub = parse_entry(path, raw)
            changes[path] = _suggest(trial, f"{method}:{path}", sub) if isinstance(sub, Range | list) else sub
    for path, raw in space.items():
        if path == METHOD_NAME:
            continue
        entry = parse_entry(path, raw)
        changes[path] = _suggest(trial, path, entry) if isinstance(entry, Range | list) else entry
    return changes


def corner_changes(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A few points that between them touch every path, bound and choice: each is validated as a spec before the
    sweep is stored, so an unknown path or a value the spec refuses is a 422 at once, not a failed trial."""
    corners: list[dict[str, Any]] = []
    methods: dict[str | None, dict[str, Any]] = dict(method_subspaces(space).items()) or {None: {}}
    for method, sub in methods.items():
        for end in ("low", "high"):
            changes: dict[str, Any] = {} if method is None else {METHOD_NAME: method}
            for path, raw in [*sub.items(), *((p, r) for p, r in space.items() if p != METHOD_NAME)]:
                entry = parse_entry(path, raw)
                if isinstance(entry, Range):
                    value = getattr(entry, end)
                    changes[path] = int(value) if entry.type == "int" else value
                elif isinstance(entry, list):
                    changes[path] = entry[0] if end == "low" else entry[-1]
                else:
                    changes[path] = entry
            corners.append(changes)
    for path, raw in space.items():  # every other choice of plain lists
        entry = parse_entry(path, raw)
        if path != METHOD_NAME and isinstance(entry, list):
            for choice in entry[1:-1]:
                corners.append({**corners[0], path: choice})
    return corners
