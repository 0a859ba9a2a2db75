"""Benchmark (issue 8, section 2): metric ingestion from one worker, into SQLite and into PostgreSQL.

The real path: a `DatabaseReporter` (what the training callback reports to) in this process; its background
flusher writes everything logged since its last pass every `metric_flush_seconds` through
`runs.record_progress`: one transaction per batch (the batch's one upsert statement, progress, heartbeat).
`tunedeck serve --no-worker` serves the same scratch database.

1. paced: 50,000 points/s logged (4 metrics a step) for --seconds, while a reader thread GETs
   /api/runs/{id}/metrics?key=loss&after_step=… every 50 ms (a page polls every 500 ms): the latency of each step's
   loss from the log call to the API answer that first holds it (so it includes the HTTP round trip and up to
   50 ms of the reader's pause), median and p95;
2. burst: --burst points logged as fast as the loop goes, then drained: points per second from the first log
   call to the last commit (the figure against the 50,000 points/s target);
3. the database is read back: every point there exactly once, with the value logged.

    .venv/bin/python -m bench.ingest [--seconds 8] [--burst 1000000] [--backends sqlite,postgres] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import Figure, machine, median, number, percentile, scratch_postgres, use_database, write_section

KEYS = ("loss", "learning_rate", "tokens_per_second", "memory_bytes")
TARGET_POINTS_PER_SECOND = 50_000


def value_of(step: int, key_index: int) -> float:
    return step + key_index / 4  # exact in binary: sums can be compared exactly


class Reader(threading.Thread):
    """GET the run's loss points after the last one seen every `interval`; note when each step first arrived."""

    def __init__(self, base_url: str, run_id: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.base_url, self.run_id, self.interval = base_url, run_id, interval
        self.seen: dict[int, float] = {}
        self.requests = 0
        self.last = -1
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop.wait(self.interval):
                answer = client.get(f"/api/runs/{self.run_id}/metrics", params={"key": "loss", "after_step": self.last})
                arrived = time.perf_counter()
                self.requests += 1
                points = answer.json()["series"].get("loss", [])
                for step, _ in points:
                    self.seen.setdefault(int(step), arrived)
                if points:
                    self.last = int(points[-1][0])


@dataclass
class Result:
    backend: str
    flush_seconds: float
    paced_points: int = 0
    paced_seconds: float = 0.0
    paced_tail: float = 0.0
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    burst_points: int = 0
    burst_log_seconds: float = 0.0
    burst_seconds: float = 0.0
    stored: int = 0
    expected: int = 0
    value_sum_ok: bool = False
    latest_ok: bool = False

    @property
    def burst_rate(self) -> float:
        return self.burst_points / self.burst_seconds if self.burst_seconds else float("nan")


def new_running_run() -> int:
    from runspec import RunSpec
    from tunedeck_state.db import session_scope
    from tunedeck_state.models import Run, RunStatus, utcnow

    spec = RunSpec.model_validate({"name": "live", "model": "bench/model", "training": {"max_steps": 1000}})
    with session_scope() as session:
        run = Run(
            name="live",
            status=RunStatus.running,
            method="lora",
            model="bench/model",
            max_steps=1000,
            spec=spec.model_dump(mode="json"),
            spec_hash="ingest-bench",
            started_at=utcnow(),
            heartbeat_at=utcnow(),
            details={},
            latest_metrics={},
        )
        session.add(run)
        session.flush()
        return run.id


def log_steps(reporter: Any, first: int, count: int, steps_per_second: float | None) -> list[float]:
    """Log `count` steps of the 4 metrics; paced at `steps_per_second` when given. Returns each log call's time."""
    times = []
    started = time.perf_counter()
    for i in range(count):
        if steps_per_second and i % 25 == 0:
            ahead = started + i / steps_per_second - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        step = first + i
        times.append(time.perf_counter())
        reporter.metrics(step, {key: value_of(step, k) for k, key in enumerate(KEYS)})
    return times


def check_stored(run_id: int, last_step: int) -> tuple[int, bool, bool]:
    """(rows stored for the run, every key's value sum as logged, latest_metrics at the last step)."""
    from sqlalchemy import func, select

    from tunedeck_state.db import session_scope
    from tunedeck_state.models import Metric, Run

    with session_scope() as session:
        rows = session.execute(
            select(Metric.key, func.count(), func.sum(Metric.value)).where(Metric.run_id == run_id).group_by(Metric.key)
        ).all()
        latest = session.get(Run, run_id).latest_metrics  # type: ignore[union-attr]
    steps = last_step + 1  # steps 0..last_step
    sums_ok = all(
        count == steps and total == sum(value_of(s, KEYS.index(key)) for s in range(steps))
        for key, count, total in rows
    ) and {key for key, _, _ in rows} == set(KEYS)
    latest_ok = all(latest.get(key, {}).get("step") == last_step for key in KEYS)
    return sum(count for _, count, _ in rows), sums_ok, latest_ok


def run_backend(backend: str, database_url: str | None, seconds: float, burst: int) -> Result:
    import sys

    from bench.report import ROOT

    sys.path.insert(0, str(ROOT))
    from harness.stack import Stack, stack_env
    from tunedeck_state.settings import get_settings
    from tunedeck_state.settings_checks import heartbeat_interval
    from worker.reporting import DatabaseReporter

    with tempfile.TemporaryDirectory(prefix="tunedeck-bench-ingest-") as scratch:
        data_dir = Path(scratch)
        use_database(data_dir, database_url)
        flush = heartbeat_interval(get_settings())  # what worker/tasks.py gives the reporter
        result = Result(backend=backend, flush_seconds=flush)
        run_id = new_running_run()
        env = stack_env(data_dir, database_url)
        env.pop("TUNEDECK_METRIC_FLUSH_SECONDS", None)
        stack = Stack(data_dir=data_dir, env=env)
        try:
            stack.start_server()
            steps_per_second = TARGET_POINTS_PER_SECOND / len(KEYS)
            paced_steps = int(steps_per_second * seconds)
            reader = Reader(stack.base_url, run_id)
            reader.start()
            started = time.perf_counter()
            with DatabaseReporter(run_id, flush, attempt=1) as reporter:
                logged = log_steps(reporter, 0, paced_steps, steps_per_second)
                ended = time.perf_counter()
            done = time.perf_counter()
            deadline = time.monotonic() + 30
            while reader.last < paced_steps - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            reader.stop.set()
            reader.join()
            result.paced_points = paced_steps * len(KEYS)
            result.paced_seconds = done - started
            result.paced_tail = done - ended
            result.latencies = [reader.seen[s] - t for s, t in enumerate(logged) if s in reader.seen]
            result.requests = reader.requests

            burst_steps = burst // len(KEYS)
            started = time.perf_counter()
            with DatabaseReporter(run_id, flush, attempt=1) as reporter:
                log_steps(reporter, paced_steps, burst_steps, None)
                result.burst_log_seconds = time.perf_counter() - started
            result.burst_seconds = time.perf_counter() - started
            result.burst_points = burst_steps * len(KEYS)

            last_step = paced_steps + burst_steps - 1
            result.expected = (last_step + 1) * len(KEYS)
            result.stored, result.value_sum_ok, result.latest_ok = check_stored(run_id, last_step)
        finally:
            stack.stop()
            from tunedeck_state.db import get_engine

            get_engine().dispose()
    return result


def describe(result: Result) -> list[str]:
    ms = [x * 1000 for x in result.latencies]
    return [
        f"{result.backend}: flush every {result.flush_seconds:g} s",
        f"  paced: {result.paced_points:,} points logged at {TARGET_POINTS_PER_SECOND:,}/s, all committed "
        f"{result.paced_seconds:.2f} s after the first log call ({result.paced_points / result.paced_seconds:,.0f} "
        f"points/s; last flush {result.paced_tail * 1000:.0f} ms after the last log call)",
        f"  log call → readable by the API (loss, {len(ms):,} steps, {result.requests} GETs): median "
        f"{median(ms):.0f} ms, p95 {percentile(ms, 95):.0f} ms, max {max(ms, default=float('nan')):.0f} ms",
        f"  burst: {result.burst_points:,} points logged in {result.burst_log_seconds:.2f} s, committed after "
        f"{result.burst_seconds:.2f} s: {result.burst_rate:,.0f} points/s",
        f"  read back: {result.stored:,} rows for {result.expected:,} points logged; values as logged: "
        f"{'yes' if result.value_sum_ok else 'NO'}; latest-value summary at the last step: "
        f"{'yes' if result.latest_ok else 'NO'}",
    ]


def figures(results: list[Result]) -> list[Figure]:
    out = []
    for r in results:
        intact = r.stored == r.expected and r.value_sum_ok
        out.append(
            Figure(
                f"2. ingestion into {r.backend}, one worker",
                r.burst_rate if intact else float("nan"),
                TARGET_POINTS_PER_SECOND,
                "points/s",
                higher_is_better=True,
                note="" if intact else f"{r.stored:,} of {r.expected:,} points stored",
            )
        )
        ms = [x * 1000 for x in r.latencies]
        out.append(Figure(f"2. {r.backend}: log call → readable by the API, median", median(ms), None, "ms"))
        out.append(Figure(f"2. {r.backend}: log call → readable by the API, p95", percentile(ms, 95), None, "ms"))
    return out


def markdown(results: list[Result], seconds: float) -> str:
    rows = [
        "| | " + " | ".join(r.backend for r in results) + " |",
        "| --- | " + " | ".join("---" for _ in results) + " |",
    ]

    def row(label: str, cells: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    row("**burst: points/s, first log call → last commit**", [f"**{r.burst_rate:,.0f}**" for r in results])
    row("burst size, logging time", [f"{r.burst_points:,} points, {r.burst_log_seconds:.2f} s" for r in results])
    row(
        f"paced at {TARGET_POINTS_PER_SECOND:,} points/s for {seconds:g} s: all committed after",
        [f"{r.paced_seconds:.2f} s ({r.paced_points / r.paced_seconds:,.0f} points/s)" for r in results],
    )
    for label, q in (("**log call → readable by the API, median**", 50), ("log call → readable by the API, p95", 95)):
        row(label, [number(percentile([x * 1000 for x in r.latencies], q), "ms") for r in results])
    row(
        "read back: rows / points logged, values intact",
        [f"{r.stored:,} / {r.expected:,}, {'yes' if r.value_sum_ok and r.latest_ok else 'NO'}" for r in results],
    )
    flush = results[0].flush_seconds if results else 0.25
    return f"""## Metric ingestion, one worker (`python -m bench.ingest`)

What a training worker does, in one process: a `DatabaseReporter` (the reporter the training callback logs to)
buffers the points; its background thread writes whatever arrived every `TUNEDECK_METRIC_FLUSH_SECONDS`
({flush:g} s) through `runs.record_progress`, one transaction per batch: one statement for all the batch's points
(SQLite: the driver's `executemany` of `INSERT … ON CONFLICT (run_id, key, step) DO UPDATE`; PostgreSQL: a
binary `COPY` in a savepoint, rolled back and written again as one `INSERT … SELECT FROM unnest(keys, steps,
values) ON CONFLICT … DO UPDATE` only when the batch re-logs a stored point), the latest-value summary, progress
and heartbeat. `tunedeck serve --no-worker`
serves the same scratch database, and a reader thread GETs `/api/runs/{{id}}/metrics?key=loss&after_step=…` every
50 ms while points are logged at 50,000 a second (4 metrics a step): the latency is from the log call to the
answer that first holds the point (the HTTP round trip and up to 50 ms of the reader's pause included). Then a
burst is logged as fast as the loop goes and drained; the database is read back: every point once, with its
value (the metrics table's primary key is (run_id, key, step), so a point logged twice, e.g. by a resumed
attempt, overwrites the first).

{machine()}. PostgreSQL runs on the same machine.

{chr(10).join(rows)}

Before, the same path went through SQLAlchemy's per-row parameter handling, and the table had a surrogate id (a
second index to maintain; migration 0005 made (run_id, key, step) the primary key): 36,000 rows/s into SQLite
measured by the comparison benchmark on the loaded machine, 36,000–40,000 into PostgreSQL on an idle one. On
PostgreSQL `ON CONFLICT` costs about 40% of an insert and a plain INSERT about twice a COPY, hence the COPY
first; the metrics table's foreign key to runs cost a trigger per point, more than half of an insert (migration
0006 dropped it: points are written only by `record_progress`, in the transaction that reads their run, and runs
are never deleted): 39,000 points/s into PostgreSQL before those two changes. The reporter used to flush
every second (now every {flush:g} s by default), which was most of the latency. PostgreSQL shares the 2 cores
with the web server, the reader and the writer here; at 50,000 points/s its batches take most of the quarter
second, hence its higher latency."""


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="paced phase length")
    parser.add_argument("--burst", type=int, default=1_000_000, help="points in the burst")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args(argv)

    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            results.append(run_backend("SQLite", None, args.seconds, args.burst))
        elif backend == "postgres":
            with scratch_postgres() as url:
                results.append(run_backend("PostgreSQL", url, args.seconds, args.burst))
        else:
            raise SystemExit(f"unknown backend {backend!r}: sqlite or postgres")
        print("\n".join(describe(results[-1])), flush=True)
    if args.write:
        write_section("ingest", markdown(results, args.seconds))
    return figures(results)


if __name__ == "__main__":
    main()
