"""Comparisons of any set of runs: overlaid curves, a table, metric against a swept parameter, efficiency
(with Pareto fronts), the config diff and generations side by side. One JSON document that the page draws,
scripts read (`GET /api/compare`), and the CLI prints.

Curves come from the metrics table by its (run, key, step) index, downsampled so that no series sends more
than `max_points` points (min/max buckets shared by the whole chart: see app/services/downsample.py). A
run's downsampled series and summary statistics are cached in the process, keyed by the run's state (status,
step, attempt, heartbeat), so a finished run is read from the database once and a live one whenever it
wrote something new.
"""

from app.services.compare.charts import pareto_front
from app.services.compare.columns import DEFAULT_MAX_POINTS, MAX_RUNS, RunsNotFound
from app.services.compare.comparison import compare, load_runs
from app.services.compare.csv_export import table_csv
from app.services.compare.series import CACHE, SeriesCache
from app.services.compare.views import DEFAULT_OBJECTIVE, ViewInvalid

__all__ = [
    "CACHE",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_OBJECTIVE",
    "MAX_RUNS",
    "RunsNotFound",
    "SeriesCache",
    "ViewInvalid",
    "compare",
    "load_runs",
    "pareto_front",
    "table_csv",
]
