"""Downsampling metric series for charts, keeping spikes: the minimum and maximum of every bucket survive.

Comparisons overlay dozens of runs in one uPlot chart, which wants every series on one shared x array. So
the buckets are fixed by the chart, not by each series: bucket `b` covers [b·width, (b+1)·width), and the
(at most two) points a series keeps in it move to the centres of the bucket's halves, the earlier one to
the left half. Every series of the chart then lands on the same ≤ 2·buckets x positions; no x moves by more
than width/2 and the order of points is kept. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

# the same nice widths as the rollups a finished run's series are stored as
from tunedeck_state.rollups import NICE_STEPS, nice_width

__all__ = ["NICE_STEPS", "align", "downsample", "minmax_arrays", "minmax_buckets", "nice_width"]


def minmax_buckets(
    xs: Sequence[float], ys: Sequence[float], width: float, origin: float = 0.0
) -> tuple[list[float], list[float]]:
    """Keep each bucket's minimum and maximum (in x order), placed on the bucket's two half-centres.

    `xs` must be ascending. Returns (xs, ys) with at most two points per non-empty bucket; the global minimum
    and maximum values are always kept."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    if width <= 0:
        raise ValueError("width must be positive")
    out_x: list[float] = []
    out_y: list[float] = []
    n = len(xs)
    i = 0
    half = width / 2
    while i < n:
        bucket = math.floor((xs[i] - origin) / width)
        left = origin + bucket * width
        j = bisect_left(xs, left + width, i)
        if j <= i:  # float rounding at the edge: always advance
            j = i + 1
        if j - i == 1:
            slot = 0 if xs[i] - left < half else 1
            out_x.append(left + half * slot + half / 2)
            out_y.append(ys[i])
        else:
            getter = ys.__getitem__
            lo = min(range(i, j), key=getter)
            hi = max(range(i, j), key=getter)
            if lo == hi:
                out_x.append(left + half / 2)
                out_y.append(ys[lo])
            else:
                first, second = (lo, hi) if lo < hi else (hi, lo)
                out_x += [left + half / 2, left + half + half / 2]
                out_y += [ys[first], ys[second]]
        i = j
    return out_x, out_y


def minmax_arrays(xs: np.ndarray, ys: np.ndarray, width: float) -> tuple[list[float], list[float]]:
    """minmax_buckets (origin 0) on arrays, vectorised: the same points, for the hundreds of thousands of a
    comparison read from rollups (tunedeck_state.rollups). NaN values take the element-wise path."""
    n = len(xs)
    if n == 0:
        return [], []
    if np.isnan(ys).any():
        return minmax_buckets(xs.tolist(), ys.tolist(), width)
    bucket = np.floor(xs / width)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    sizes = np.diff(np.r_[starts, n])
    segment = np.repeat(np.arange(len(starts)), sizes)
    index = np.arange(n)
    # the first index of each bucket's minimum and maximum (as min()/max() over range(i, j) pick)
    lo = np.minimum.reduceat(np.where(ys == np.minimum.reduceat(ys, starts)[segment], index, n), starts)
    hi = np.minimum.reduceat(np.where(ys == np.maximum.reduceat(ys, starts)[segment], index, n), starts)
    left = bucket[starts] * width
    half = width / 2
    single = sizes == 1
    pair = ~single & (lo != hi)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    x1 = np.where(single, left + np.where(xs[starts] - left < half, 0.0, half) + half / 2, left + half / 2)
    y1 = np.where(single, ys[starts], ys[first])
    counts = 1 + pair.astype(np.int64)
    at = np.cumsum(counts) - counts
    out_x = np.empty(int(counts.sum()))
    out_y = np.empty(len(out_x))
    out_x[at], out_y[at] = x1, y1
    out_x[at[pair] + 1] = left[pair] + half + half / 2
    out_y[at[pair] + 1] = ys[second[pair]]
    return out_x.tolist(), out_y.tolist()


def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """One series on its own: unchanged when it has at most `max_points` points, else min/max buckets over
    its x range (at most `max_points` points, global minimum and maximum kept)."""
    if len(xs) <= max_points:
        return list(xs), list(ys)
    span = xs[-1] - xs[0]
    buckets = max(1, max_points // 2)
    width = nice_width(span, buckets - 1) if span > 0 else 1.0
    origin = math.floor(xs[0] / width) * width
    return minmax_buckets(xs, ys, width, origin)


def align(series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[list[float], list[list[float | None]]]:
    """uPlot's aligned data: the union of every series' x, and each series' y on it (None where absent)."""
    points = [dict(zip(xs, ys, strict=True)) for xs, ys in series]
    union = sorted(set().union(*points))
    return union, [[p.get(x) for x in union] for p in points]
