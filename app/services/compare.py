"""Comparisons of any set of runs: overlaid curves, a table, metric against a swept parameter, efficiency
(with Pareto fronts), the config diff and generations side by side. One JSON document that the page draws,
scripts read (`GET /api/compare`), and the CLI prints.

Curves come from the metrics table by its (run, key, step) index, downsampled so that no series sends more
than `max_points` points (min/max buckets shared by the whole chart: see app/services/downsample.py). A
run's downsampled series and summary statistics are cached in the process, keyed by the run's state (status,
step, attempt, heartbeat), so a finished run is read from the database once and a live one whenever it
wrote something new.
"""

from __future__ import annotations

import csv
import gc
import io
import math
import threading
from bisect import bisect_left
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import fsum
from statistics import fmean
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services.downsample import minmax_buckets, nice_width
from app.services.spec_paths import differing_paths, flatten, format_value
from runspec import RunSpec
from tunedeck_state.models import Run

MAX_RUNS = 200
MAX_ID = 2**31 - 1
DEFAULT_MAX_POINTS = 1000
#: Curves overlaid per metric, in the order the page shows them.
CURVE_KEYS = ("loss", "eval_loss", "learning_rate", "memory_bytes", "tokens_per_second")
TOKENS_KEY = "tokens_seen"
#: Series read for the table's statistics (besides the curves).
STAT_KEYS = (*CURVE_KEYS, "eval_perplexity", TOKENS_KEY)
X_MODES = ("step", "tokens")
SEED_PATH = "training.seed"

#: (key, label, kind): the table's columns, also the CSV's header. kind: int, float, str.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "#", "int"),
    ("name", "Name", "str"),
    ("status", "Status", "str"),
    ("method", "Method", "str"),
    ("params", "Key params", "str"),
    ("trainable_params", "Trainable", "int"),
    ("trainable_percent", "Trainable %", "float"),
    ("final_train_loss", "Train loss", "float"),
    ("best_eval_loss", "Best eval loss", "float"),
    ("eval_perplexity", "Perplexity", "float"),
    ("gen_exact_match", "Exact match", "float"),
    ("gen_bleu", "BLEU", "float"),
    ("gen_rouge_l", "ROUGE-L", "float"),
    ("peak_memory_estimate", "Peak mem. est.", "int"),
    ("peak_memory_measured", "Peak mem.", "int"),
    ("tokens_per_second", "Tokens/s", "float"),
    ("wall_time_seconds", "Wall time (s)", "float"),
    ("seed", "Seed", "int"),
    ("sweep_id", "Sweep", "int"),
)
NUMERIC_COLUMNS = tuple(key for key, _, kind in COLUMNS if kind in ("int", "float") and key not in ("id", "sweep_id"))
#: Metrics plotted against swept parameters and efficiency; True when lower is better.
QUALITY_METRICS: dict[str, bool] = {
    "best_eval_loss": True,
    "eval_perplexity": True,
    "gen_bleu": False,
    "gen_rouge_l": False,
    "gen_exact_match": False,
    "final_train_loss": True,
}
LABELS = {key: label for key, label, _ in COLUMNS}


class RunsNotFound(LookupError):
    def __init__(self, missing: Sequence[int]) -> None:
        super().__init__(f"no run with id {', '.join(map(str, missing))}")
        self.missing = list(missing)


# -- reading series ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesStats:
    count: int
    first_x: float
    last_x: float
    minimum: float
    maximum: float
    mean: float
    last: float


Raw = dict[str, tuple[list[float], list[float]]]


def load_raw(session: Session, run_id: int, keys: Iterable[str] = STAT_KEYS) -> Raw:
    """{key: (steps, values)} ordered by step: one range of the metrics table's (run_id, key, step) primary key
    per key (on SQLite the table is clustered on it, so the values come with the index, in order).

    Read with the driver's own cursor as (step, value) pairs and split with zip: for millions of points the
    Python objects are the cost (SQLAlchemy rows, a key string per row and a groupby were 3x slower), and the
    cyclic garbage collector, which would otherwise walk the growing heap of row tuples again and again (2 M
    points: 1.3 s instead of 4.4 s), is paused meanwhile; the tuples hold no cycles."""
    raw: Raw = {}
    connection = session.connection()
    query = "SELECT step, value FROM metrics WHERE run_id = {0} AND key = {0} ORDER BY step".format(
        "%s" if connection.dialect.paramstyle in ("format", "pyformat") else "?"
    )
    cursor = connection.connection.cursor()
    with _gc_paused():
        try:
            for key in keys:
                cursor.execute(query, (run_id, key))
                rows = cursor.fetchall()
                if rows:
                    steps, values = zip(*rows, strict=True)
                    raw[key] = (list(steps), list(values))
        finally:
            cursor.close()
    return raw


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic collection meanwhile (process-wide; whoever paused it first turns it back on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def series_stats(raw: Raw) -> dict[str, SeriesStats]:
    stats = {}
    for key, (xs, ys) in raw.items():
        if ys:
            stats[key] = SeriesStats(
                count=len(ys),
                first_x=xs[0],
                last_x=xs[-1],
                minimum=min(ys),
                maximum=max(ys),
                mean=fmean(ys),
                last=ys[-1],
            )
    return stats


def tokens_at(steps: Sequence[float], token_steps: Sequence[float], tokens: Sequence[float]) -> list[float]:
    """Tokens seen at each step, interpolated linearly between logged points (0 tokens at step 0), and
    extrapolated at the last rate past the last logged point."""
    knots_x = list(token_steps)
    knots_y = list(tokens)
    if not knots_x or knots_x[0] > 0:
        knots_x.insert(0, 0.0)
        knots_y.insert(0, 0.0)
    out = []
    for step in steps:
        i = bisect_left(knots_x, step)
        if i < len(knots_x) and knots_x[i] == step:
            out.append(knots_y[i])
            continue
        if i == 0:
            out.append(knots_y[0])
            continue
        if i >= len(knots_x):
            i = len(knots_x) - 1
            if i == 0:
                out.append(knots_y[0])
                continue
        x0, x1, y0, y1 = knots_x[i - 1], knots_x[i], knots_y[i - 1], knots_y[i]
        out.append(y0 + (y1 - y0) * (step - x0) / (x1 - x0) if x1 > x0 else y1)
    return out


class SeriesCache:
    """Per-process LRU of runs' statistics and downsampled series, keyed by the run's version."""

    def __init__(self, max_points: int = 2_000_000, max_stats: int = 5000) -> None:
        self.max_points = max_points
        self.max_stats = max_stats
        self._lock = threading.Lock()
        self._stats: OrderedDict[tuple[Any, ...], dict[str, SeriesStats]] = OrderedDict()
        self._series: OrderedDict[tuple[Any, ...], tuple[list[float], list[float]]] = OrderedDict()
        self._points = 0

    def get_stats(self, key: tuple[Any, ...]) -> dict[str, SeriesStats] | None:
        with self._lock:
            found = self._stats.get(key)
            if found is not None:
                self._stats.move_to_end(key)
            return found

    def put_stats(self, key: tuple[Any, ...], stats: dict[str, SeriesStats]) -> None:
        with self._lock:
            self._stats[key] = stats
            while len(self._stats) > self.max_stats:
                self._stats.popitem(last=False)

    def get_series(self, key: tuple[Any, ...]) -> tuple[list[float], list[float]] | None:
        with self._lock:
            found = self._series.get(key)
            if found is not None:
                self._series.move_to_end(key)
            return found

    def put_series(self, key: tuple[Any, ...], series: tuple[list[float], list[float]]) -> None:
        with self._lock:
            old = self._series.pop(key, None)
            if old is not None:
                self._points -= len(old[0])
            self._series[key] = series
            self._points += len(series[0])
            while self._points > self.max_points and len(self._series) > 1:
                _, evicted = self._series.popitem(last=False)
                self._points -= len(evicted[0])

    def clear(self) -> None:
        with self._lock:
            self._stats.clear()
            self._series.clear()
            self._points = 0


CACHE = SeriesCache()


def run_version(run: Run) -> tuple[Any, ...]:
    """Changes whenever the run may have written metrics: each flush moves its heartbeat."""
    return (run.id, run.status, run.step, run.attempt, str(run.heartbeat_at), str(run.finished_at))


# -- the comparison ---------------------------------------------------------------------------------------


def load_runs(session: Session, run_ids: Sequence[int]) -> list[Run]:
    ids = list(dict.fromkeys(run_ids))
    valid = [run_id for run_id in ids if 0 < run_id <= MAX_ID]  # beyond the integer column: missing
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(valid))).all()}
    missing = [run_id for run_id in ids if run_id not in found]
    if missing:
        raise RunsNotFound(missing)
    return [found[run_id] for run_id in ids]


def compare(
    session: Session,
    run_ids: Sequence[int],
    *,
    x: str = "step",
    max_points: int = DEFAULT_MAX_POINTS,
    cache: SeriesCache = CACHE,
) -> dict[str, Any]:
    if x not in X_MODES:
        raise ValueError(f"x must be one of {', '.join(X_MODES)}")
    runs = load_runs(session, run_ids)
    raw: dict[int, Raw] = {}
    stats: dict[int, dict[str, SeriesStats]] = {}
    for run in runs:
        version = run_version(run)
        found = cache.get_stats(version)
        if found is None:
            raw[run.id] = load_raw(session, run.id)
            found = series_stats(raw[run.id])
            cache.put_stats(version, found)
        stats[run.id] = found

    specs = {run.id: _spec_of(run) for run in runs}
    flats = {run.id: {k: v for k, v in flatten(run.spec).items() if k != "name"} for run in runs}
    rows = [_table_row(run, specs[run.id], stats[run.id]) for run in runs]
    return {
        "run_ids": [run.id for run in runs],
        "x": x,
        "max_points": max_points,
        "columns": [{"key": key, "label": label, "kind": kind} for key, label, kind in COLUMNS],
        "table": rows,
        "curves": _curves(session, runs, stats, raw, x, max_points, cache),
        "groups": _seed_groups(runs, flats, rows),
        "params": _param_charts(runs, flats, rows),
        "efficiency": _efficiency(rows),
        "diff": _diff(runs, flats),
        "generations": _generations(runs),
    }


def _spec_of(run: Run) -> RunSpec | None:
    try:
        return RunSpec.model_validate(run.spec)
    except ValidationError:  # stored before the spec changed shape: the table falls back to the raw dict
        return None


def _curves(
    session: Session,
    runs: Sequence[Run],
    stats: Mapping[int, Mapping[str, SeriesStats]],
    raw: dict[int, Raw],
    x: str,
    max_points: int,
    cache: SeriesCache,
) -> dict[str, Any]:
    curves: dict[str, Any] = {}
    for key in CURVE_KEYS:
        present = [run for run in runs if key in stats[run.id]]
        if x == "tokens":
            present = [run for run in present if TOKENS_KEY in stats[run.id]]
        if not present:
            continue
        if x == "tokens":
            hi = max(stats[run.id][TOKENS_KEY].maximum for run in present)
        else:
            hi = max(stats[run.id][key].last_x for run in present)
        total = sum(stats[run.id][key].count for run in present)
        exact = total <= max_points or (x == "step" and hi <= max_points)
        width = None if exact else nice_width(hi, max(1, max_points // 2 - 1))
        series = []
        for run in present:
            cache_key = (*run_version(run), key, x, width)
            found = cache.get_series(cache_key)
            if found is None:
                if run.id not in raw:
                    raw[run.id] = load_raw(session, run.id)
                xs, ys = raw[run.id].get(key, ([], []))
                if x == "tokens":
                    token_steps, tokens = raw[run.id][TOKENS_KEY]
                    xs = tokens_at(xs, token_steps, tokens)
                found = (list(xs), list(ys)) if width is None else minmax_buckets(xs, ys, width)
                cache.put_series(cache_key, found)
            series.append(found)
        # Each series with its own x: when downsampled they all sit on the chart's shared bucket positions, so
        # aligning them for uPlot (app.services.downsample.align, or the page's script) stays small.
        curves[key] = {
            "downsampled": width is not None,
            "bucket_width": width,
            "series": [
                {"run_id": run.id, "name": run.name, "x": xs, "y": ys}
                for run, (xs, ys) in zip(present, series, strict=True)
            ],
        }
    return curves


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _latest(run: Run, key: str) -> float | None:
    entry = (run.latest_metrics or {}).get(key)
    return _number(entry.get("value")) if isinstance(entry, dict) else None


def _int_at(details: Mapping[str, Any], section: str, *names: str) -> int | None:
    value = details.get(section)
    if not isinstance(value, Mapping):
        return None
    for name in names:
        found = value.get(name)
        if isinstance(found, int | float) and not isinstance(found, bool) and found > 0:
            return int(found)
    return None


def estimated_peak(details: Mapping[str, Any]) -> int | None:
    """The memory estimate's total: what the device must hold (details.memory_estimate, runspec/memory/)."""
    return _int_at(details, "memory_estimate", "total_peak_bytes", "allocated_peak_bytes")


def measured_peak(details: Mapping[str, Any]) -> int | None:
    """The measured peak (details.memory_measured): on CUDA what the caching allocator held at most, on a CPU
    the worker process's peak resident memory: the same basis as the estimate's total."""
    measured = details.get("memory_measured")
    if isinstance(measured, Mapping) and measured.get("device") == "cuda":
        return _int_at(details, "memory_measured", "cuda_max_reserved_bytes", "cuda_max_allocated_bytes")
    return _int_at(details, "memory_measured", "peak_rss_bytes")


def key_params(run: Run, spec: RunSpec | None) -> dict[str, Any]:
    if spec is not None:
        params = spec.method.key_params()
    else:
        params = {k: v for k, v in (run.spec.get("method") or {}).items() if k != "name"}
    return {k: v for k, v in params.items() if v not in (None, False, [], {})}


def _table_row(run: Run, spec: RunSpec | None, stats: Mapping[str, SeriesStats]) -> dict[str, Any]:
    details = run.details or {}
    params = key_params(run, spec)
    trainable = run.trainable_params if run.trainable_params is not None else details.get("trainable_params")
    total = run.total_params if run.total_params is not None else details.get("total_params")
    percent = 100.0 * trainable / total if trainable is not None and total else None
    measured = measured_peak(details)
    if measured is None and "memory_bytes" in stats:  # the memory curve's highest point
        measured = int(stats["memory_bytes"].maximum)
    train_loss = run.final_train_loss if run.final_train_loss is not None else _latest(run, "loss")
    seed = (run.spec.get("training") or {}).get("seed")
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "method": run.method,
        "params": " ".join(f"{k}={format_value(v)}" for k, v in params.items()),
        "trainable_params": trainable,
        "trainable_percent": percent,
        "final_train_loss": train_loss,
        "best_eval_loss": stats["eval_loss"].minimum if "eval_loss" in stats else None,
        "eval_perplexity": stats["eval_perplexity"].minimum if "eval_perplexity" in stats else None,
        "gen_exact_match": _latest(run, "gen_exact_match"),
        "gen_bleu": _latest(run, "gen_bleu"),
        "gen_rouge_l": _latest(run, "gen_rouge_l"),
        "peak_memory_estimate": estimated_peak(details),
        "peak_memory_measured": measured,
        "tokens_per_second": stats["tokens_per_second"].mean if "tokens_per_second" in stats else None,
        "wall_time_seconds": run.wall_time_seconds,
        "seed": seed if isinstance(seed, int) else None,
        "sweep_id": run.sweep_id,
        "key_params": params,
        "max_steps": run.max_steps,
        "step": run.step,
    }


def _mean_spread(values: Sequence[float]) -> dict[str, Any]:
    mean = fmean(values)
    return {
        "mean": mean,
        # the population standard deviation, in floats (statistics.pstdev is exact but slow)
        "std": math.sqrt(fsum((v - mean) ** 2 for v in values) / len(values)) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _significant(paths: Sequence[str], flats: Iterable[Mapping[str, Any]]) -> list[str]:
    """The paths worth naming in a label: method.name, and paths with two values or more. A field only one
    method has (lora_dropout beside prompt tuning) goes without saying once the method is named."""
    specs = list(flats)
    kept = []
    for path in paths:
        values = {repr(flat[path]) for flat in specs if flat.get(path) is not None}
        if path == "method.name" or len(values) > 1:
            kept.append(path)
    return kept


def _label(flat: Mapping[str, Any], paths: Sequence[str]) -> str:
    parts = []
    for path in paths:
        if path not in flat:
            continue
        value = format_value(flat[path])
        parts.append(value if path == "method.name" else f"{path.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts) or "all runs"


def _seed_groups(runs: Sequence[Run], flats: Mapping[int, Mapping[str, Any]], rows: Sequence[dict[str, Any]]) -> Any:
    """Runs that differ only in their seed, with the mean and spread of each number over the seeds."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for run in runs:
        rest = {k: v for k, v in flats[run.id].items() if k != SEED_PATH}
        by_key[repr(sorted(rest.items(), key=lambda item: item[0]))].append(run.id)
    if all(len(ids) == 1 for ids in by_key.values()):
        return []
    row_of = {row["id"]: row for row in rows}
    varied = _significant([p for p in differing_paths(flats.values()) if p != SEED_PATH], flats.values())
    groups = []
    for ids in by_key.values():
        stats = {}
        for column in NUMERIC_COLUMNS:
            values = [row_of[i][column] for i in ids if row_of[i][column] is not None]
            if values and column != "seed":
                stats[column] = _mean_spread(values)
        groups.append(
            {
                "label": _label(flats[ids[0]], varied),
                "run_ids": ids,
                "seeds": [row_of[i]["seed"] for i in ids],
                "n": len(ids),
                "stats": stats,
            }
        )
    return groups


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


def _diff(runs: Sequence[Run], flats: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Only the spec fields that are not the same in every selected run."""
    fields = differing_paths(flats.values()) if len(runs) > 1 else []
    return {
        "fields": fields,
        "rows": [
            {"run_id": run.id, "name": run.name, "values": {f: flats[run.id].get(f) for f in fields}} for run in runs
        ],
    }


def _generations(runs: Sequence[Run]) -> dict[str, Any]:
    """The end-of-training answers to the held-out prompts, one row per prompt, one column per run."""
    prompts: dict[str, dict[str, Any]] = {}
    for run in runs:
        for sample in (run.details or {}).get("generations") or []:
            if not isinstance(sample, Mapping) or "prompt" not in sample:
                continue
            row = prompts.setdefault(
                str(sample["prompt"]), {"prompt": sample["prompt"], "reference": sample.get("reference"), "outputs": {}}
            )
            row["outputs"][str(run.id)] = sample.get("output")
    return {"run_ids": [run.id for run in runs], "prompts": list(prompts.values())}


def table_csv(comparison: Mapping[str, Any]) -> str:
    """The table as CSV: the columns' keys as header, numbers written so that they parse back exactly."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [column["key"] for column in comparison["columns"]]
    writer.writerow(keys)
    for row in comparison["table"]:
        writer.writerow(
            ["" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k] for k in keys]
        )
    return out.getvalue()
