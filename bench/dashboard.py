"""Benchmark (issue 8, section 3): the dashboard at scale.

A scratch SQLite database gets the generated fixture (bench/fixture.py: 10,000 runs, the newest 50 with 10,000
steps × 4 metrics), `tunedeck serve --no-worker` serves it, and this measures

* the runs list: `GET /api/runs` and the runs page (`/`, `/runs/table`), paginated, filtered and sorted in
  several ways, --requests calls of each interleaved: p95 per kind (target: under 50 ms);
* the comparison of the 50 runs: `GET /api/compare` cold (the first call after the server started) and the
  median of --repeat calls (target: under 300 ms); the comparison page in headless chromium until every chart
  is drawn (target: under 1 s);
* a running run's page: points logged through the worker's DatabaseReporter (flush every
  TUNEDECK_METRIC_FLUSH_SECONDS), the time until the page has drawn each one (target: under 1 s).

    .venv/bin/python -m bench.dashboard [--runs 10000] [--steps 10000] [--requests 30] [--write]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import Figure, machine, median, number, percentile, use_database, write_section

API_QUERIES = {
    "newest 50": "/api/runs",
    "status=failed": "/api/runs?status=failed",
    "method=qlora, sort=train_loss": "/api/runs?method=qlora&sort=train_loss",
    "sort=name, offset=5000": "/api/runs?sort=name&offset=5000",
    "name~alpaca, sort=-eval_loss, offset=500": "/api/runs?name=alpaca&sort=-eval_loss&offset=500",
    "sort=status, offset=9900": "/api/runs?sort=status&offset=9900",
}
PAGE_QUERIES = {
    "/ (newest 50)": "/",
    "/?status=succeeded&sort=train_loss&page=20": "/?status=succeeded&sort=train_loss&page=20",
    "/?name=r16": "/?name=r16",
    "/runs/table?method=lora&page=60 (htmx)": "/runs/table?method=lora&page=60",
}
LIST_TARGET_MS = 50.0
COMPARE_TARGET_MS = 300.0
PAGE_TARGET_MS = 1000.0
LIVE_TARGET_MS = 1000.0


def time_lists(base_url: str, requests: int) -> dict[str, list[float]]:
    """Each query `requests` times (after 3 unmeasured), interleaved, in milliseconds."""
    queries = {**API_QUERIES, **PAGE_QUERIES}
    times: dict[str, list[float]] = {label: [] for label in queries}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for _ in range(3):
            for url in queries.values():
                client.get(url).raise_for_status()
        for _ in range(requests):
            for label, url in queries.items():
                started = time.perf_counter()
                answer = client.get(url)
                times[label].append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
    return times


def live_latency(base_url: str, samples: int) -> tuple[list[float], float]:
    """A running run's page open in chromium; points logged one at a time through the worker's reporter.
    Milliseconds from each log call until the page has drawn that step; and the flush interval used."""
    import shutil as _shutil

    from playwright.sync_api import sync_playwright

    from bench.ingest import new_running_run
    from tunedeck_state.settings import get_settings
    from tunedeck_state.settings_checks import heartbeat_interval
    from worker.reporting import DatabaseReporter

    flush = heartbeat_interval(get_settings())
    run_id = new_running_run()
    rng = random.Random(1)
    latencies: list[float] = []

    def values(step: int) -> dict[str, float]:
        return {"loss": 2.0 / step, "learning_rate": 2e-4, "tokens_per_second": 3000.0, "memory_bytes": 2.0**30}

    executable = _shutil.which("chromium")
    if executable is None:
        raise RuntimeError("chromium is not installed (make browser)")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with DatabaseReporter(run_id, flush, attempt=1) as reporter, sync_playwright() as playwright:
        reporter.progress(0, 1000)
        reporter.metrics(1, values(1))
        reporter.progress(1, 1000)
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base_url}/runs/{run_id}")
            drawn = "s => Number(document.getElementById('charts').dataset.lastStep || -1) >= s"
            page.wait_for_function(drawn, arg=1, polling=10, timeout=30_000)
            for step in range(2, samples + 2):
                time.sleep(rng.uniform(0.2, 1.2))  # any phase of the page's poll and the reporter's flush
                logged = time.perf_counter()
                reporter.metrics(step, values(step))
                reporter.progress(step, 1000)
                page.wait_for_function(drawn, arg=step, polling=10, timeout=30_000)
                latencies.append((time.perf_counter() - logged) * 1000)
        finally:
            browser.close()
    return latencies, flush


def figures(results: dict[str, Any]) -> list[Figure]:
    lists = results["lists"]
    api = [t for label in API_QUERIES for t in lists[label]]
    pages = [t for label in PAGE_QUERIES for t in lists[label]]
    worst_api = max(API_QUERIES, key=lambda label: percentile(lists[label], 95))
    worst_page = max(PAGE_QUERIES, key=lambda label: percentile(lists[label], 95))
    return [
        Figure("3. GET /api/runs at 10,000 runs, p95 (all kinds)", percentile(api, 95), LIST_TARGET_MS, "ms"),
        Figure(
            "3. GET /api/runs, p95 of the slowest kind",
            percentile(lists[worst_api], 95),
            LIST_TARGET_MS,
            "ms",
            note=worst_api,
        ),
        Figure("3. runs list page at 10,000 runs, p95 (all kinds)", percentile(pages, 95), LIST_TARGET_MS, "ms"),
        Figure(
            "3. runs list page, p95 of the slowest kind",
            percentile(lists[worst_page], 95),
            LIST_TARGET_MS,
            "ms",
            note=worst_page,
        ),
        Figure("3. GET /api/compare, 50 runs, median", median(results["compare_warm"]), COMPARE_TARGET_MS, "ms"),
        Figure("3. GET /api/compare, 50 runs, first call (cold)", results["compare_cold"], None, "ms"),
        Figure("3. comparison page drawn in chromium, median", median(results["page"]), PAGE_TARGET_MS, "ms"),
        Figure("3. new point visible on a running run's page, median", median(results["live"]), LIVE_TARGET_MS, "ms"),
        Figure("3. new point visible on a running run's page, max", max(results["live"]), LIVE_TARGET_MS, "ms"),
    ]


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    seeded = results["seeded"]
    lists = results["lists"]
    rows = ["| request | median | p95 | max |", "| --- | --- | --- | --- |"]
    for label in (*API_QUERIES, *PAGE_QUERIES):
        url = {**API_QUERIES, **PAGE_QUERIES}[label]
        times = lists[label]
        rows.append(
            f"| `{url}` | {number(median(times), 'ms')} | **{number(percentile(times, 95), 'ms')}** | "
            f"{number(max(times), 'ms')} |"
        )
    live = results["live"]
    warm = results["compare_warm"]
    page = results["page"]
    warm_cell = f"**{number(median(warm), 'ms')}** (min {number(min(warm), 'ms')}, max {number(max(warm), 'ms')})"
    page_cell = f"**{number(median(page), 'ms')}** (max {number(max(page), 'ms')})"
    return f"""## The dashboard at scale: 10,000 runs (`python -m bench.dashboard`)

A generated fixture (`bench/fixture.py`) in a scratch SQLite database: {seeded.runs:,} runs with full specs, a few
kilobytes of details each and their latest-value summary; the newest {len(seeded.compared_ids)} (a LoRA sweep) with
{args.steps:,} logged steps × 4 metrics (+ an eval loss every 500 steps): {seeded.metric_rows:,} metric rows. Written
in {seeded.runs_seconds:.1f} s (runs, bulk Core inserts) + {seeded.metrics_seconds:.1f} s (metrics, through the
workers' own `upsert_metrics`, {seeded.metric_rows / seeded.metrics_seconds:,.0f} rows/s, most of it generating
the values). `tunedeck serve --no-worker` serves it; {args.requests} calls of each request below, interleaved.

{machine()}.

**Runs list** (target: p95 under 50 ms), `GET /api/runs` (50 runs a page, with spec, details and latest values)
and the runs page (50 a page, rendered), filtered, searched and sorted:

{chr(10).join(rows)}

A list never reads the metrics table: its columns come from the runs' latest-value summary (`runs.latest_metrics`,
updated with each batch of points). Sorting by name, status, method, train or eval loss walks an index (migration
0005 adds those on name and the losses; 0007 makes each loss index (loss, status, method, name), so a filtered
loss sort is answered by it alone); the page's 50 ids are found first, from the indexes alone, and only those rows
are read (a sort of whole rows, JSON included, took 370 ms for page 100 sorted by name; reading each filtered row
for its loss took 16-21 ms for status=succeeded sorted by train loss, 0.8 ms from the covering index). A name
search scans the name index, not the table. The count for the pager is an index-only count.

**Comparison of the 50 runs** (2 M points):

| what | figure | target |
| --- | --- | --- |
| `GET /api/compare`, median of {len(warm)} | {warm_cell} | < 300 ms |
| same, first call after the server started (reads all 2 M points) | {number(results["compare_cold"], "ms")} | |
| comparison page in headless chromium, navigation → every chart drawn, median of {len(page)} | {page_cell} | < 1 s |

The first comparison reads every point of the 50 runs (then the runs' downsampled series and statistics are
cached in the web process; a finished run never changes). It used to take 15–34 s: migration 0005 drops the
metrics table's surrogate id, so on SQLite the table is clustered on (run_id, key, step) and a series is one
range of it, values included; `compare.load_raw` reads (step, value) pairs per key with the driver's cursor, and
pauses Python's cyclic garbage collector while it builds the 2 M row tuples (which alone took it from 4.4 s to
1.3 s).

**A running run's page** receiving new points (target: visible within 1 s): {len(live)} points logged one at a time,
at random moments, through the worker's `DatabaseReporter` (flush every {results["flush"]:g} s); chromium has the
run's page open, which polls `GET /api/runs/{{id}}/metrics?after_step=…` every 0.5 s while the run is live:
log call → drawn, median **{number(median(live), "ms")}**, p95 {number(percentile(live, 95), "ms")}, max
**{number(max(live), "ms")}**. (The reporter flushed every second and the page polled every 1.5 s before: up to
2.5 s.)"""


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--compared", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30, help="calls of each list request")
    parser.add_argument("--repeat", type=int, default=20, help="calls of the comparison API")
    parser.add_argument("--page-repeat", type=int, default=5, help="loads of the comparison page")
    parser.add_argument("--live", type=int, default=12, help="points logged to the running run")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args(argv)

    import sys

    from bench.report import ROOT

    sys.path.insert(0, str(ROOT))
    from bench.compare_api import time_api, time_page
    from bench.fixture import seed
    from harness.stack import Stack, stack_env

    data_dir = Path(tempfile.mkdtemp(prefix="tunedeck-bench-dashboard-"))
    results: dict[str, Any] = {}
    stack = None
    try:
        use_database(data_dir)
        seeded = seed(args.runs, args.compared, args.steps)
        results["seeded"] = seeded
        print(
            f"seeded {seeded.runs:,} runs ({seeded.runs_seconds:.1f} s) and {seeded.metric_rows:,} metric rows "
            f"({seeded.metrics_seconds:.1f} s)",
            flush=True,
        )
        env = stack_env(data_dir)
        env.pop("TUNEDECK_METRIC_FLUSH_SECONDS", None)  # the default, as deployed
        stack = Stack(data_dir=data_dir, env=env)
        stack.start_server()

        query = "run_ids=" + ",".join(map(str, seeded.compared_ids))
        cold, warm, size, _ = time_api(stack.base_url, query, args.repeat)
        results["compare_cold"], results["compare_warm"] = cold * 1000, [w * 1000 for w in warm]
        print(
            f"GET /api/compare ({size / 2**20:.1f} MiB): cold {cold * 1000:.0f} ms, median of {args.repeat} "
            f"{median(results['compare_warm']):.0f} ms",
            flush=True,
        )
        in_page, _, _, _ = time_page(stack.base_url, query, args.page_repeat)
        results["page"] = [t * 1000 for t in in_page]
        print(f"comparison page, every chart drawn: median {median(results['page']):.0f} ms", flush=True)

        results["lists"] = lists = time_lists(stack.base_url, args.requests)
        for label, times in lists.items():
            print(f"  {label}: median {median(times):.1f} ms, p95 {percentile(times, 95):.1f} ms", flush=True)

        results["live"], results["flush"] = live_latency(stack.base_url, args.live)
        live = results["live"]
        print(f"running run's page, log call → drawn: median {median(live):.0f} ms, max {max(live):.0f} ms", flush=True)
    finally:
        if stack is not None:
            stack.stop()
        from tunedeck_state.db import get_engine

        get_engine().dispose()
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.write:
        write_section("dashboard", markdown(results, args))
    return figures(results)


if __name__ == "__main__":
    main()
