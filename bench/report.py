"""What every benchmark shares: figures against targets, BENCHMARKS.md sections, scratch databases, percentiles.

A benchmark module's `main(argv)` returns a list of `Figure`s (or None); `python -m bench` prints them all at the
end as one table of measured figures, targets, ratios and pass/miss.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import statistics
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
POSTGRES_ADMIN_URL = os.environ.get("TUNEDECK_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TUNEDECK_TEST_REDIS", "redis://127.0.0.1:6379/14")


@dataclass(frozen=True)
class Figure:
    """One measured figure and its target. `measured` None: not measured (say why in `note`)."""

    what: str
    measured: float | None
    #: None: a figure the issue asks to report, without a target.
    target: float | None
    unit: str
    #: True for throughputs (at least the target), False for latencies (at most the target).
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """measured / target: ≤ 1 passes a latency target, ≥ 1 passes a throughput target (None where that
        reading would not hold: no target, or a value at or below zero, such as a loss difference)."""
        if self.measured is None or not self.target or self.target < 0 or self.measured < 0:
            return None
        return self.measured / self.target

    @property
    def passed(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured) or self.target is None:
            return None
        return self.measured >= self.target if self.higher_is_better else self.measured <= self.target

    def verdict(self) -> str:
        if self.measured is None or math.isnan(self.measured):
            return "not measured"
        if self.target is None:
            return "reported"
        return "pass" if self.passed else "MISS"


def number(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "–"
    if unit == "ms":
        return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "points/s":
        return f"{value:,.0f} points/s"
    return f"{value:,.3g} {unit}".strip()


def summary_table(figures: Sequence[Figure]) -> str:
    rows = ["| target | measured | target value | ratio | verdict |", "| --- | --- | --- | --- | --- |"]
    for f in figures:
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "–"
        bound = "–" if f.target is None else ("≥ " if f.higher_is_better else "≤ ") + number(f.target, f.unit)
        note = f" ({f.note})" if f.note else ""
        rows.append(f"| {f.what} | {number(f.measured, f.unit)} | {bound} | {ratio} | {f.verdict()}{note} |")
    return "\n".join(rows)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    """One line: date, CPUs and load, Python, SQLite, PostgreSQL client, the packages that matter here."""
    import sqlite3

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "–"

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"engineers' work (load average {load} at the end), Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, "
        f"SQLAlchemy {version('sqlalchemy')}, psycopg {version('psycopg')}, Celery {version('celery')}, "
        f"FastAPI {version('fastapi')}, uvicorn {version('uvicorn')}"
    )


def write_section(marker: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace what lies between `<!-- marker:start -->` and `<!-- marker:end -->` (appended when absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


@contextlib.contextmanager
def scratch_postgres() -> Iterator[str]:
    """A fresh database on the local PostgreSQL (TUNEDECK_TEST_POSTGRES), dropped afterwards."""
    import sqlalchemy as sa

    name = f"tunedeck_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def use_database(data_dir: Path, database_url: str | None = None) -> None:
    """Point this process's Settings, engine and sessions at `data_dir` (and `database_url`), migrated to head."""
    from tunedeck_state.db import get_engine, get_sessionmaker
    from tunedeck_state.migrate import upgrade_database
    from tunedeck_state.settings import get_settings

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    os.environ["TUNEDECK_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["TUNEDECK_DATABASE_URL"] = database_url
    else:
        os.environ.pop("TUNEDECK_DATABASE_URL", None)
    for cached in (get_settings, get_engine, get_sessionmaker):  # another benchmark may have run in this process
        cached.cache_clear()
    upgrade_database()
