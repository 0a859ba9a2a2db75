"""The comparison of a set of runs: one JSON document that the page draws, scripts read and the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services.compare.charts import _efficiency, _param_charts
from app.services.compare.columns import (
    COLUMNS,
    CURVE_KEYS,
    DEFAULT_MAX_POINTS,
    MAX_ID,
    TOKENS_KEY,
    X_MODES,
    RunsNotFound,
)
from app.services.compare.sections import _diff, _generations
from app.services.compare.series import (
    CACHE,
    Raw,
    Rollups,
    SeriesCache,
    SeriesStats,
    load_raw,
    run_version,
    series_stats,
    tokens_at,
)
from app.services.compare.table import _seed_groups, _table_row
from app.services.compare.trials import trials_view
from app.services.compare.views import (
    DEFAULT_OBJECTIVE,
    check_group_by,
    check_objective,
    group_curves,
    importance,
    parallel,
    swept_params,
)
from app.services.downsample import minmax_buckets, nice_width
from runspec import RunSpec
from runspec.spec_paths import flatten
from tunedeck_state.models import Run

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
    params: Sequence[str] | None = None,
    group_by: Sequence[str] | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    trial_numbers: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """`params`: the swept spec paths (a sweep's varied ones; by default those that differ between the runs);
    `group_by`: config fields to group the runs by (by default runs differing only in seed); `objective`: the
    metric of the parallel coordinates, the importances and the trials view; `trial_numbers`: run id → its sweep
    trial number (the trials view's order; by default creation order). A bad view parameter raises ViewInvalid."""
    if x not in X_MODES:
        raise ValueError(f"x must be one of {', '.join(X_MODES)}")
    check_objective(objective)
    runs = load_runs(session, run_ids)
    raw: dict[int, Raw] = {}
    stats: dict[int, dict[str, SeriesStats]] = {}
    rollups = Rollups(session, runs)
    for run in runs:
        version = run_version(run)
        found = cache.get_stats(version)
        if found is None:
            found = rollups.stats(run.id)
        if found is None:
            raw[run.id] = load_raw(session, run.id)
            found = series_stats(raw[run.id])
        cache.put_stats(version, found)
        stats[run.id] = found

    specs = {run.id: _spec_of(run) for run in runs}
    flats = {run.id: {k: v for k, v in flatten(run.spec).items() if k != "name"} for run in runs}
    rows = [_table_row(run, specs[run.id], stats[run.id]) for run in runs]
    by = check_group_by(group_by, flats) if group_by else None
    curves = _curves(session, runs, stats, raw, rollups, x, max_points, cache)
    groups = _seed_groups(runs, flats, rows, by)
    view = parallel(runs, flats, rows, swept_params(flats, params), objective)
    return {
        "run_ids": [run.id for run in runs],
        "x": x,
        "max_points": max_points,
        "columns": [{"key": key, "label": label, "kind": kind} for key, label, kind in COLUMNS],
        "table": rows,
        "curves": curves,
        "group_by": by,
        "groups": groups,
        "group_curves": group_curves(curves, groups) if by else {},
        "parallel": view,
        "importance": importance(view),
        "trials": trials_view(runs, rows, objective, trial_numbers),
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
    rollups: Rollups,
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
            fresh = found is None
            if found is None and x == "step":
                found = rollups.series(run.id, key, width)
            if found is None:
                if run.id not in raw:
                    raw[run.id] = load_raw(session, run.id)
                xs, ys = raw[run.id].get(key, ([], []))
                if x == "tokens":
                    token_steps, tokens = raw[run.id][TOKENS_KEY]
                    xs = tokens_at(xs, token_steps, tokens)
                found = (list(xs), list(ys)) if width is None else minmax_buckets(xs, ys, width)
            if fresh:
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
