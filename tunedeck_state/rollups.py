"""Each finished attempt's metric series, rolled up once for comparisons (the metric_rollups table).

A comparison chart downsamples every series into min/max buckets of one width shared by the chart,
`nice_width(longest run's last step, CHART_BUCKETS)` (app/services/downsample.py), a "nice" number (1, 2, 2.5 or 5
× 10^k). For a series whose last step is `last_x`, every width such a chart can ask for is a nice number at least
`nice_width(last_x, CHART_BUCKETS)`, and all of them are multiples of `rollup_width(last_x)` (the greatest common
divisor of the nice numbers from there up). So the rollup keeps, for each bucket of that width, the first minimum
and the first maximum with their true steps (a bucket of one point keeps it once; a bucket of several whose
minimum and maximum are one point keeps it twice), and bucketing the rollup at any of those widths gives exactly
what bucketing every point would (tests/test_compare_views.py checks it). With the summary statistics, a
comparison of 200 runs × 10,000 steps reads 800 rows of at most a few thousand points instead of 8 M points.

Written by finish_run in the transaction that ends the run; valid while the run stays final at that attempt.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from tunedeck_state.models import MetricRollup

NICE_STEPS = (1.0, 2.0, 2.5, 5.0)
#: The comparison's default of 1,000 points a curve is 499 buckets of two (app.services.compare.columns).
CHART_BUCKETS = 499
#: Series up to this many points are kept whole.
WHOLE_POINTS = 2000


def nice_width(span: float, buckets: int) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that cuts `span` into at most `buckets` buckets."""
    if span <= 0 or buckets <= 0:
        return 1.0
    raw = span / buckets
    power = 10.0 ** math.floor(math.log10(raw))
    for step in NICE_STEPS:
        if step * power >= raw:
            return step * power
    return 10.0 * power


def rollup_width(last_x: float) -> float:
    """The widest bucket dividing every chart width a series ending at `last_x` can be drawn with."""
    finest = nice_width(last_x, CHART_BUCKETS)
    power = 10.0 ** math.floor(math.log10(finest) + 1e-9)
    mantissa = round(finest / power, 6)
    # 2.5 and 5 × 10^k divide every nice number above them; 1 and 2 × 10^k do not divide 2.5 × 10^k: 0.5 × 10^k does
    return finest if mantissa in (2.5, 5.0) else 0.5 * power


def is_multiple(width: float, of: float) -> bool:
    ratio = width / of
    return ratio >= 1 - 1e-9 and abs(ratio - round(ratio)) < 1e-6


@dataclass(frozen=True)
class Rollup:
    attempt: int
    width: float  # 0: every point
    count: int
    first_x: float
    last_x: float
    minimum: float
    maximum: float
    mean: float
    last: float
    xs: bytes
    ys: bytes


def roll_up(steps: Sequence[float], values: Sequence[float], attempt: int) -> Rollup:
    """`steps` ascending. The points kept: all of them when few, else each bucket's first min and first max."""
    n = len(steps)
    width = 0.0 if n <= WHOLE_POINTS else rollup_width(steps[-1])
    if width == 0.0:
        kept_x, kept_y = array("d", steps), array("d", values)
    else:
        kept_x, kept_y = array("d"), array("d")
        i = 0
        while i < n:
            left = math.floor(steps[i] / width) * width
            j = bisect_left(steps, left + width, i)
            if j <= i:
                j = i + 1
            if j - i == 1:
                kept_x.append(steps[i])
                kept_y.append(values[i])
            else:
                getter = values.__getitem__
                lo = min(range(i, j), key=getter)
                hi = max(range(i, j), key=getter)
                first, second = (lo, hi) if lo <= hi else (hi, lo)
                kept_x.extend((steps[first], steps[second]))
                kept_y.extend((values[first], values[second]))
            i = j
    return Rollup(
        attempt=attempt,
        width=width,
        count=n,
        first_x=float(steps[0]),
        last_x=float(steps[-1]),
        minimum=min(values),
        maximum=max(values),
        mean=math.fsum(values) / n,
        last=float(values[-1]),
        xs=_little_endian(kept_x),
        ys=_little_endian(kept_y),
    )


def _little_endian(values: array[float]) -> bytes:
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def write_rollups(session: Session, run_id: int, attempt: int) -> int:
    """Replace the run's rollups with its series as they stand (one per key); the number written."""
    connection = session.connection()
    rows = connection.execute(
        text("SELECT key, step, value FROM metrics WHERE run_id = :run_id ORDER BY key, step"), {"run_id": run_id}
    ).all()
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key, step, value in rows:
        xs, ys = series.setdefault(key, ([], []))
        xs.append(float(step))
        ys.append(float(value))
    session.execute(delete(MetricRollup).where(MetricRollup.run_id == run_id))
    rollups = [{"run_id": run_id, "key": k, **roll_up(xs, ys, attempt).__dict__} for k, (xs, ys) in series.items()]
    if rollups:
        session.execute(insert(MetricRollup), rollups)
    return len(rollups)


def read_rollups(session: Session, runs: Iterable[tuple[int, int]]) -> dict[int, dict[str, Rollup]]:
    """{run id: {key: rollup}} for the (run id, attempt) pairs given: only rollups of that attempt."""
    wanted: Mapping[int, int] = dict(runs)
    if not wanted:
        return {}
    found: dict[int, dict[str, Rollup]] = {}
    table = MetricRollup.__table__
    columns = [c for c in table.columns if c.name != "run_id" and c.name != "key"]
    for row in session.execute(
        select(table.c.run_id, table.c.key, *columns).where(table.c.run_id.in_(list(wanted)))
    ).all():
        run_id, key, *rest = row
        rollup = Rollup(*rest)
        if rollup.attempt == wanted[run_id]:
            found.setdefault(run_id, {})[key] = rollup
    return found
