"""The comparison table: one row per run (parameters, losses, memory, speed), seed groups."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from math import fsum
from statistics import fmean
from typing import Any

from app.services.compare.columns import NUMERIC_COLUMNS, SEED_PATH
from app.services.compare.series import SeriesStats
from app.services.spec_paths import differing_paths, format_value
from runspec import RunSpec
from tunedeck_state.models import Run


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


def _seed_groups(
    runs: Sequence[Run],
    flats: Mapping[int, Mapping[str, Any]],
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str] | None = None,
) -> Any:
    """Runs grouped, with the mean and spread of each number over each group: by default the runs that differ only
    in their seed (none when no two do); with `group_by`, by their values of those config fields (e.g. method.r:
    every rank's runs, whatever else differs), every group kept."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for run in runs:
        if group_by:
            key = repr([flats[run.id].get(p) for p in group_by])
        else:
            rest = {k: v for k, v in flats[run.id].items() if k != SEED_PATH}
            key = repr(sorted(rest.items(), key=lambda item: item[0]))
        by_key[key].append(run.id)
    if not group_by and all(len(ids) == 1 for ids in by_key.values()):
        return []
    row_of = {row["id"]: row for row in rows}
    if group_by:
        varied = list(group_by)
    else:
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
