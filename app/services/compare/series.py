"""Reading a run's metric series: summary statistics and downsampled curves, cached by the run's state."""

from __future__ import annotations

import gc
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.services.compare.columns import STAT_KEYS
from app.services.downsample import minmax_arrays
from tunedeck_state.models import Run
from tunedeck_state.rollups import Rollup, is_multiple, read_rollups

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


class Rollups:
    """The finished runs' rollups (tunedeck_state.rollups), read in one query the first time one is wanted."""

    LIVE = ("queued", "running")

    def __init__(self, session: Session, runs: Sequence[Run]) -> None:
        self._session = session
        self._wanted = [(run.id, run.attempt) for run in runs if run.status not in self.LIVE]
        self._found: dict[int, dict[str, Rollup]] | None = None

    def of(self, run_id: int) -> dict[str, Rollup]:
        if self._found is None:
            self._found = read_rollups(self._session, self._wanted)
        return self._found.get(run_id, {})

    def stats(self, run_id: int) -> dict[str, SeriesStats] | None:
        found = self.of(run_id)
        if not found:
            return None
        return {
            key: SeriesStats(r.count, r.first_x, r.last_x, r.minimum, r.maximum, r.mean, r.last)
            for key, r in found.items()
        }

    def series(self, run_id: int, key: str, width: float | None) -> tuple[list[float], list[float]] | None:
        """The series on the chart's buckets (None: every point), from the rollup when it holds enough."""
        rollup = self.of(run_id).get(key)
        if rollup is None:
            return None
        xs, ys = np.frombuffer(rollup.xs, "<f8"), np.frombuffer(rollup.ys, "<f8")
        if rollup.width == 0:
            return (xs.tolist(), ys.tolist()) if width is None else minmax_arrays(xs, ys, width)
        if width is not None and is_multiple(width, rollup.width):
            return minmax_arrays(xs, ys, width)
        return None  # finer than the rollup: every point is read


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
