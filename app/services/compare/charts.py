"""Metric against a swept parameter, and efficiency with Pareto fronts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from app.services.compare.columns import LABELS, QUALITY_METRICS, SEED_PATH
from app.services.compare.table import _label, _mean_spread, _number, _significant
from runspec.spec_paths import differing_paths
from tunedeck_state.models import Run


def _param_charts(
    runs: Sequence[Run], flats: Mapping[int, Mapping[str, Any]], rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each numeric swept parameter against each quality metric: one line per combination of the other swept
    values (among the runs that have the parameter), seeds averaged into mean and spread."""
    row_of = {row["id"]: row for row in rows}
    varied = [p for p in differing_paths(flats.values()) if p != SEED_PATH]
    charts = []
    for param in varied:
        having = [run.id for run in runs if param in flats[run.id]]
        values = [flats[i][param] for i in having]
        if any(_number(v) is None for v in values) or len({float(v) for v in values}) < 2:
            continue
        others = [p for p in differing_paths([flats[i] for i in having]) if p not in (param, SEED_PATH)]
        named = _significant(others, [flats[i] for i in having])
        metrics: dict[str, Any] = {}
        for metric in QUALITY_METRICS:
            # One line per combination of the other values (exactly), labelled by the ones worth naming.
            lines: dict[str, dict[float, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
            labels: dict[str, str] = {}
            for run_id in having:
                y = row_of[run_id][metric]
                if y is None:
                    continue
                key = repr([flats[run_id].get(p) for p in others])
                labels.setdefault(key, _label(flats[run_id], named))
                lines[key][float(flats[run_id][param])].append((run_id, y))
            drawn = [
                {
                    "label": labels[key],
                    "points": [
                        {"x": xv, "run_ids": [i for i, _ in pts], **_mean_spread([y for _, y in pts])}
                        for xv, pts in sorted(points.items())
                    ],
                }
                for key, points in lines.items()
                if len(points) > 1  # a line needs two values of the parameter
            ]
            if drawn:
                metrics[metric] = {"label": LABELS[metric], "lower_is_better": QUALITY_METRICS[metric], "lines": drawn}
        if not metrics:
            continue
        positive = [float(v) for v in values if float(v) > 0]
        charts.append(
            {
                "param": param,
                "label": param.rsplit(".", 1)[-1],
                "log2": len(positive) == len(values) and max(positive) / min(positive) >= 4,
                "metrics": metrics,
            }
        )
    return charts


def pareto_front(points: Sequence[tuple[int, float, float]], lower_is_better: bool) -> list[int]:
    """Ids of the points no other point beats: cost (x) no higher and metric (y) no worse, one strictly."""
    front = []
    for pid, cost, value in points:
        dominated = False
        for other_id, other_cost, other_value in points:
            if other_id == pid:
                continue
            better_or_equal = other_value <= value if lower_is_better else other_value >= value
            strictly = other_cost < cost or (other_value < value if lower_is_better else other_value > value)
            if other_cost <= cost and better_or_equal and strictly:
                dominated = True
                break
        if not dominated:
            front.append(pid)
    return sorted(front, key=lambda i: next(c for p, c, _ in points if p == i))


def _efficiency(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Cost (trainable parameters, peak memory) against each quality metric, with the Pareto front."""
    points = []
    for row in rows:
        memory = row["peak_memory_measured"] if row["peak_memory_measured"] is not None else row["peak_memory_estimate"]
        points.append(
            {
                "run_id": row["id"],
                "name": row["name"],
                "method": row["method"],
                "trainable_params": row["trainable_params"],
                "peak_memory": memory,
                **{metric: row[metric] for metric in QUALITY_METRICS},
            }
        )
    pareto: dict[str, dict[str, list[int]]] = {}
    for cost in ("trainable_params", "peak_memory"):
        pareto[cost] = {}
        for metric, lower in QUALITY_METRICS.items():
            candidates = [
                (p["run_id"], float(p[cost]), float(p[metric]))
                for p in points
                if p[cost] is not None and p[metric] is not None
            ]
            if candidates:
                pareto[cost][metric] = pareto_front(candidates, lower)
    return {
        "metrics": [{"key": m, "label": LABELS[m], "lower_is_better": lower} for m, lower in QUALITY_METRICS.items()],
        "points": points,
        "pareto": pareto,
    }
