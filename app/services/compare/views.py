"""The views that explain a sweep (or any set of runs): parallel coordinates over the swept parameters and the
objective, each parameter's importance (Optuna's PED-ANOVA, on a study built in memory from the runs), and the
runs grouped by any config field with mean ± std curves.

The parameters are a sweep's varied spec paths when a sweep is compared, else the config fields that differ
between the runs; the seed is never one (runs that differ only in it are repeats, averaged by the groups).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna  # imported with the web process (about 0.3 s), not by a first comparison; it imports no torch
import orjson
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

from app.services.compare.columns import LABELS, QUALITY_METRICS, SEED_PATH
from app.services.compare.table import _number
from app.services.spec_paths import IGNORED_PATHS, differing_paths, format_value
from tunedeck_state.models import Run

DEFAULT_OBJECTIVE = "best_eval_loss"
#: Above this ratio of largest to smallest (all positive) a numeric axis is drawn on a log scale.
LOG_RATIO = 4.0


class ViewInvalid(ValueError):
    """A view's parameter names no known metric or field: `field` is the query parameter, the message the fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_objective(objective: str) -> str:
    if objective not in QUALITY_METRICS:
        raise ViewInvalid("objective", f"unknown metric {objective!r}; one of {', '.join(QUALITY_METRICS)}")
    return objective


def swept_params(flats: Mapping[int, Mapping[str, Any]], varied: Sequence[str] | None) -> list[str]:
    """The paths drawn as axes: the sweep's varied ones (and any other that differs), else those that differ."""
    differing = differing_paths(flats.values()) if len(flats) > 1 else []
    paths = [*(varied or []), *differing]
    return [p for p in dict.fromkeys(paths) if p != SEED_PATH and p not in IGNORED_PATHS]


def _axis(path: str, values: Sequence[Any]) -> dict[str, Any] | None:
    present = [v for v in values if v is not None]
    if len({repr(v) for v in present}) < 2:  # one value: nothing to explain
        return None
    if all(_number(v) is not None for v in present):
        numbers = [float(v) for v in present]
        lo, hi = min(numbers), max(numbers)
        integer = all(isinstance(v, int) for v in present)
        return {
            "key": path,
            "label": path.rsplit(".", 1)[-1],
            "kind": "param",
            "type": "int" if integer else "float",
            "min": lo,
            "max": hi,
            "log": lo > 0 and hi / lo >= LOG_RATIO,
        }
    categories = sorted({format_value(v) for v in present})
    return {
        "key": path,
        "label": path.rsplit(".", 1)[-1],
        "kind": "param",
        "type": "category",
        "categories": categories,
    }


def _value(axis: Mapping[str, Any], value: Any) -> Any:
    if value is None:
        return None
    return format_value(value) if axis["type"] == "category" else float(value)


def parallel(
    runs: Sequence[Run],
    flats: Mapping[int, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    params: Sequence[str],
    objective: str,
) -> dict[str, Any]:
    """Axes (the parameters, then the objective) and one polyline per run: {axis key: value or None}."""
    axes = []
    for path in params:
        axis = _axis(path, [flats[run.id].get(path) for run in runs])
        if axis is not None:
            axes.append(axis)
    scores = [row[objective] for row in rows if row[objective] is not None]
    lower = QUALITY_METRICS[objective]
    axes.append(
        {
            "key": objective,
            "label": LABELS[objective],
            "kind": "metric",
            "type": "float",
            "min": min(scores) if scores else None,
            "max": max(scores) if scores else None,
            "log": False,
            "lower_is_better": lower,
        }
    )
    points: list[dict[str, Any]] = []
    for run, row in zip(runs, rows, strict=True):
        values = {axis["key"]: _value(axis, flats[run.id].get(axis["key"])) for axis in axes[:-1]}
        values[objective] = row[objective]
        points.append({"run_id": run.id, "name": run.name, "values": values})
    best = [p for p in points if p["values"][objective] is not None]
    best.sort(key=lambda p: p["values"][objective], reverse=not lower)
    return {
        "objective": {"key": objective, "label": LABELS[objective], "lower_is_better": lower},
        "axes": axes,
        "points": points,
        "best_run_id": best[0]["run_id"] if best else None,
    }


def target_quantile(trials: int) -> float:
    """PED-ANOVA's top quantile: Optuna's 10%, but holding at least 3 runs. With the 2 runs of 10% of a small grid
    (say 12 runs: 3 ranks x 2 learning rates x 2 seeds) the top is one configuration's seeds, and the Parzen
    estimate over a log-scaled rank spreads it so wide that a two-valued parameter looked more important."""
    return min(0.5, max(0.1, 3 / trials))


_IMPORTANCES: dict[bytes, dict[str, Any]] = {}


def importance(view: Mapping[str, Any]) -> dict[str, Any]:
    """importance_of(view), remembered for the same runs' values (an in-memory study of 200 runs takes 0.2 s)."""
    key = orjson.dumps({"axes": view["axes"], "points": view["points"]}, option=orjson.OPT_SORT_KEYS)
    found = _IMPORTANCES.get(key)
    if found is None:
        found = importance_of(view)
        if len(_IMPORTANCES) >= 64:
            _IMPORTANCES.pop(next(iter(_IMPORTANCES)))
        _IMPORTANCES[key] = found
    return copy.deepcopy(found)


def importance_of(view: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter's importance for the objective: Optuna's PED-ANOVA evaluator on an in-memory study with one
    completed trial per run that has the objective (grid sweeps and hand-picked runs alike). Parameters that
    some of those runs lack (a method's own field beside another method) are left out, and named."""
    objective = view["objective"]["key"]
    params = [axis for axis in view["axes"] if axis["kind"] == "param"]
    scored = [p for p in view["points"] if p["values"][objective] is not None]
    result: dict[str, Any] = {
        "objective": objective,
        "evaluator": "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)",
        "target_quantile": target_quantile(len(scored)) if scored else None,
        "trials": len(scored),
        "params": [],
        "left_out": [],
        "reason": None,
    }
    usable = []
    for axis in params:
        if any(p["values"][axis["key"]] is None for p in scored):
            result["left_out"].append(axis["key"])
        elif len({repr(p["values"][axis["key"]]) for p in scored}) > 1:
            usable.append(axis)
    if not usable:
        result["reason"] = "no parameter takes two values among the runs with this metric"
        return result
    if len(scored) < 3:
        result["reason"] = f"{len(scored)} run(s) with this metric; importance needs 3 or more"
        return result
    distributions: dict[str, BaseDistribution] = {}
    for axis in usable:
        values = [p["values"][axis["key"]] for p in scored]
        if axis["type"] == "category":
            distributions[axis["key"]] = CategoricalDistribution(sorted(set(values)))
        elif axis["type"] == "int":
            lo, hi = int(min(values)), int(max(values))
            distributions[axis["key"]] = IntDistribution(lo, hi, log=lo >= 1 and hi / lo >= LOG_RATIO)
        else:
            lo_f, hi_f = float(min(values)), float(max(values))
            distributions[axis["key"]] = FloatDistribution(lo_f, hi_f, log=lo_f > 0 and hi_f / lo_f >= LOG_RATIO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = optuna.study.StudyDirection.MINIMIZE
    if not view["objective"]["lower_is_better"]:
        direction = optuna.study.StudyDirection.MAXIMIZE
    study = optuna.create_study(direction=direction)  # in memory: nothing is stored
    for point in scored:
        trial_params = {
            axis["key"]: int(point["values"][axis["key"]]) if axis["type"] == "int" else point["values"][axis["key"]]
            for axis in usable
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=trial_params, distributions=distributions, value=point["values"][objective]
            )
        )
    try:
        evaluator = PedAnovaImportanceEvaluator(target_quantile=target_quantile(len(scored)))
        found = get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few distinct trials for the estimator
        result["reason"] = f"PED-ANOVA could not rank these runs: {exc}"
        return result
    result["params"] = [
        {"key": key, "label": key.rsplit(".", 1)[-1], "importance": float(value) if math.isfinite(value) else 0.0}
        for key, value in sorted(found.items(), key=lambda item: -item[1])
    ]
    return result


def check_group_by(group_by: Sequence[str], flats: Mapping[int, Mapping[str, Any]]) -> list[str]:
    known = set().union(*(flat.keys() for flat in flats.values())) if flats else set()
    for path in group_by:
        if path not in known:
            raise ViewInvalid(
                "group_by", f"no compared run has the config field {path!r}; give dotted spec paths such as method.r"
            )
    return list(dict.fromkeys(group_by))


def group_curves(curves: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Mean ± std of each curve over each group's runs (of two or more), at every x any of them has (downsampled
    series share their chart's bucket positions, so the runs line up)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key, curve in curves.items():
        by_run = {s["run_id"]: s for s in curve["series"]}
        drawn = []
        for group in groups:
            series = [by_run[i] for i in group["run_ids"] if i in by_run]
            if len(series) < 2:
                continue
            xs = np.unique(np.concatenate([np.asarray(s["x"], dtype=float) for s in series]))
            grid = np.full((len(series), len(xs)), np.nan)
            for row, s in enumerate(series):
                ys = np.asarray([np.nan if y is None else y for y in s["y"]], dtype=float)
                grid[row, np.searchsorted(xs, np.asarray(s["x"], dtype=float))] = ys
            counts = np.sum(~np.isnan(grid), axis=0)
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(grid, axis=0)
                std = np.nanstd(grid, axis=0)
            drawn.append(
                {
                    "label": group["label"],
                    "run_ids": group["run_ids"],
                    "x": xs.tolist(),
                    "mean": mean.tolist(),
                    "std": std.tolist(),
                    "n": counts.tolist(),
                }
            )
        if drawn:
            out[key] = drawn
    return out
