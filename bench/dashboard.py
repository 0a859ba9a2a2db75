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
    # The same depths reached as the runs page's Next link does: the previous page's next_cursor (a seek).
    "sort=name, cursor at 5000": "/api/runs?sort=name&cursor=",
    "sort=-eval_loss, cursor at 9900": "/api/runs?sort=-eval_loss&cursor=",
}
PAGE_QUERIES = {
    "/ (newest 50)": "/",
    "/?status=succeeded&sort=train_loss&page=20": "/?status=succeeded&sort=train_loss&page=20",
    "/?name=r16": "/?name=r16",
    "/?tag=best (no run has it: every tag read)": "/?tag=best",
    "/runs/table?method=lora&page=60 (htmx)": "/runs/table?method=lora&page=60",
    "/?sort=status&page=1999 (its Next link)": "/?sort=status&page=1999&cursor=",
}
LIST_TARGET_MS = 50.0
COMPARE_TARGET_MS = 300.0
PAGE_TARGET_MS = 1000.0
LIVE_TARGET_MS = 1000.0
COLD_TARGET_MS = 1000.0
BACKENDS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def time_lists(base_url: str, requests: int, runs: int = 10_000) -> dict[str, list[float]]:
    """Each query `requests` times (after 3 unmeasured), interleaved, in milliseconds. The deepest offsets
    scale with the fixture (at 100,000 runs: offset 99,900 and 50,000)."""
    queries = {**API_QUERIES, **PAGE_QUERIES}
    deep = {
        "sort=name, offset=5000": f"/api/runs?sort=name&offset={runs // 2}",
        "sort=status, offset=9900": f"/api/runs?sort=status&offset={runs - 100}",
    }
    queries.update({label: url for label, url in deep.items() if label in queries})
    with httpx.Client(base_url=base_url, timeout=60) as client:
        at = {
            "sort=name, cursor at 5000": ("name", runs // 2),
            "sort=-eval_loss, cursor at 9900": ("-eval_loss", runs - 100),
            "/?sort=status&page=1999 (its Next link)": ("status", runs - 100),
        }
        for label, (sort, depth) in at.items():
            before = client.get("/api/runs", params={"sort": sort, "offset": depth - 50}).raise_for_status().json()
            queries[label] = queries[label].replace("page=1999", f"page={depth // 50 + 1}") + before["next_cursor"]
    queries = {_depth_label(label, runs): url for label, url in queries.items()}
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


def _depth_label(label: str, runs: int) -> str:
    """A kind's label with the depths it was measured at (they scale with the fixture)."""
    depths = {"5000": f"{runs // 2}", "9900": f"{runs - 100}", "1999": f"{runs // 50 - 1}"}
    for written, measured in depths.items():
        label = label.replace(f"={written}", f"={measured}").replace(f"at {written}", f"at {measured}")
    return label


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


def figures(results: dict[str, Any], args: argparse.Namespace, db: str) -> list[Figure]:
    lists = results["lists"]
    api_kinds = [_depth_label(label, args.runs) for label in API_QUERIES]
    page_kinds = [_depth_label(label, args.runs) for label in PAGE_QUERIES]
    api = [t for label in api_kinds for t in lists[label]]
    pages = [t for label in page_kinds for t in lists[label]]
    worst_api = max(api_kinds, key=lambda label: percentile(lists[label], 95))
    worst_page = max(page_kinds, key=lambda label: percentile(lists[label], 95))
    n, c = f"{args.runs:,} runs", f"{args.compared} runs × {args.steps:,} steps"
    return [
        Figure(f"3. {db}: GET /api/runs at {n}, p95 (all kinds)", percentile(api, 95), LIST_TARGET_MS, "ms"),
        Figure(
            f"3. {db}: GET /api/runs, p95 of the slowest kind",
            percentile(lists[worst_api], 95),
            LIST_TARGET_MS,
            "ms",
            note=worst_api,
        ),
        Figure(f"3. {db}: runs list page at {n}, p95 (all kinds)", percentile(pages, 95), LIST_TARGET_MS, "ms"),
        Figure(
            f"3. {db}: runs list page, p95 of the slowest kind",
            percentile(lists[worst_page], 95),
            LIST_TARGET_MS,
            "ms",
            note=worst_page,
        ),
        Figure(f"3. {db}: GET /api/compare, {c}, first call (cold)", results["compare_cold"], COLD_TARGET_MS, "ms"),
        Figure(f"3. {db}: GET /api/compare, {c}, median", median(results["compare_warm"]), COMPARE_TARGET_MS, "ms"),
        Figure(f"3. {db}: comparison page drawn in chromium, median", median(results["page"]), PAGE_TARGET_MS, "ms"),
        Figure(f"3. {db}: new point visible on a running run's page, max", max(results["live"]), LIVE_TARGET_MS, "ms"),
    ]


def markdown(every: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    names = [BACKENDS[b] for b in every]
    head = "| request | " + " | ".join(f"{n}: median / **p95** / max" for n in names) + " |"
    rows = [head, "| --- |" + " --- |" * len(names)]
    any_lists = next(iter(every.values()))["lists"]
    for label in any_lists:
        cells = []
        for results in every.values():
            times = results["lists"][label]
            p95 = number(percentile(times, 95), "ms")
            cells.append(f"{number(median(times), 'ms')} / **{p95}** / {number(max(times), 'ms')}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    compare_rows = [
        "| what | " + " | ".join(names) + " | target |",
        "| --- |" + " --- |" * (len(names) + 1),
        "| `GET /api/compare`, first call after the server started (cold) | "
        + " | ".join(f"**{number(r['compare_cold'], 'ms')}**" for r in every.values())
        + " | < 1 s |",
        f"| same, median of {args.repeat} (warm) | "
        + " | ".join(
            f"{number(median(r['compare_warm']), 'ms')} (max {number(max(r['compare_warm']), 'ms')})"
            for r in every.values()
        )
        + " | < 300 ms |",
        "| answer size | " + " | ".join(f"{r['compare_mib']:.1f} MiB" for r in every.values()) + " | |",
        f"| comparison page in headless chromium, navigation → every chart drawn, median of {args.page_repeat} | "
        + " | ".join(f"{number(median(r['page']), 'ms')} (max {number(max(r['page']), 'ms')})" for r in every.values())
        + " | < 1 s |",
        "| a running run's page: log call → new point drawn, median / max | "
        + " | ".join(f"{number(median(r['live']), 'ms')} / {number(max(r['live']), 'ms')}" for r in every.values())
        + " | < 1 s |",
    ]
    seeded = next(iter(every.values()))["seeded"]
    fixture = " ".join(
        f"{BACKENDS[b]}: runs {r['seeded'].runs_seconds:.0f} s, metrics {r['seeded'].metrics_seconds:.0f} s, "
        f"rollups {r['seeded'].rollups_seconds:.0f} s, {'ANALYZE' if b == 'sqlite' else 'VACUUM ANALYZE'} "
        f"{r['seeded'].analyze_seconds:.0f} s."
        for b, r in every.items()
    )
    return f"""## The dashboard at scale: {args.runs:,} runs (`python -m bench.dashboard`)

A generated fixture (`bench/fixture.py`) in a scratch database ({", ".join(names)}): {seeded.runs:,} runs with full
specs, a few kilobytes of details each and their latest-value summary; the newest {len(seeded.compared_ids)} (a LoRA
sweep, ranks × seeds) with {args.steps:,} logged steps × 4 metrics (+ an eval loss every 500 steps):
{seeded.metric_rows:,} metric rows, written through the workers' own `upsert_metrics`, then rolled up as
`finish_run` does when a run ends (`tunedeck_state.rollups`). Written in: {fixture} `tunedeck serve --no-worker`
serves it; {args.requests} calls of each list request, interleaved.

{machine()}. PostgreSQL runs on the same machine.

**Runs list** (target: p95 under 50 ms), `GET /api/runs` (50 runs a page, with spec, details and latest values)
and the runs page (50 a page, rendered), filtered, searched and sorted, deep pages reached by offset and by
cursor:

{chr(10).join(rows)}

A list never reads the metrics table: its columns come from the runs' latest-value summary. Every list hides
archived runs, so the indexes it walks lead with `archived` and end with the tie-break, newest first (migration
0011; 0007's loss indexes cover the filters): a page's 50 ids, a deep offset and the count are read from one index
alone, then only those 50 rows. A nullable sort (the losses, disk) reads the runs with a value, then those without,
as two index-ordered queries (NULLS LAST cannot be read from an index in both directions). The runs page's Next
link, and `next_cursor` in `GET /api/runs`, seek to the page after the last row shown (a keyset cursor) instead of
counting an offset; `offset` still works. A name search scans the name index (SQLite: `name LIKE`, which ignores
ASCII case as SQLite's lower() does, 3x cheaper than lower(name) on each row; PostgreSQL: `name_folded`, the name
lower-cased when written, 2x cheaper than lower(name) on each row, with a pg_trgm index on it for rare
matches); a tag filter scans an index holding the tags, not the rows. The fixture ends as a deployment's
database would be: ANALYZEd (SQLite; `tunedeck serve` re-ANALYZEs runs when its statistics are 2x off) and VACUUM
ANALYZEd (PostgreSQL's autovacuum, off on the test server: without it a count reads the table instead of the
index, 3–10x slower).

**Comparison of the {len(seeded.compared_ids)} runs** ({seeded.metric_rows / 1e6:.0f} M points):

{chr(10).join(compare_rows)}

A cold comparison used to read every point (1.5 s for 50 runs, 2 M points; 200 runs × 10,000 steps × 4 metrics
took 4.0 s only to fetch the 8 M rows on SQLite, and SQL-side aggregates over them 2.8 s). Now each finished run's
series are rolled up once when it ends (migration 0010, `tunedeck_state.rollups`): the summary statistics and the
first min and max of every bucket at the finest width a default chart can ask for (25 steps for a 10,000-step run,
at most 800 points), with their true steps. A comparison reads those 800 rows in one query and re-buckets them
at the chart's width with numpy (`downsample.minmax_arrays`), which gives exactly what bucketing every point
does (tests/test_compare_views.py). Live runs, runs finished before migration 0010, `x=tokens` and curves finer
than the rollup (`max_points` above 1,000) still read their points.
"""


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--compared", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgres")
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
    from contextlib import ExitStack

    from bench.compare_api import time_api, time_page
    from bench.fixture import seed
    from bench.report import scratch_postgres
    from harness.stack import Stack, stack_env

    every: dict[str, dict[str, Any]] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in BACKENDS:
            raise SystemExit(f"unknown backend {backend!r}: sqlite or postgres")
        with ExitStack() as scratch:
            url = scratch.enter_context(scratch_postgres()) if backend == "postgres" else None
            every[backend] = measure(args, url, seed, time_api, time_page, Stack, stack_env)
    if args.write:
        write_section("dashboard", markdown(every, args))
    return [f for backend, results in every.items() for f in figures(results, args, BACKENDS[backend])]


def measure(
    args: argparse.Namespace,
    database_url: str | None,
    seed: Any,
    time_api: Any,
    time_page: Any,
    Stack: Any,
    stack_env: Any,
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="tunedeck-bench-dashboard-"))
    results: dict[str, Any] = {}
    stack = None
    try:
        use_database(data_dir, database_url)
        seeded = seed(args.runs, args.compared, args.steps)
        results["seeded"] = seeded
        print(
            f"seeded {seeded.runs:,} runs ({seeded.runs_seconds:.1f} s), {seeded.metric_rows:,} metric rows "
            f"({seeded.metrics_seconds:.1f} s), rollups ({seeded.rollups_seconds:.1f} s), "
            f"(VACUUM) ANALYZE ({seeded.analyze_seconds:.1f} s)",
            flush=True,
        )
        env = stack_env(data_dir, database_url)
        env.pop("TUNEDECK_METRIC_FLUSH_SECONDS", None)  # the default, as deployed
        stack = Stack(data_dir=data_dir, env=env)
        stack.start_server()

        query = "run_ids=" + ",".join(map(str, seeded.compared_ids))
        cold, warm, size, _ = time_api(stack.base_url, query, args.repeat)
        results["compare_cold"], results["compare_warm"] = cold * 1000, [w * 1000 for w in warm]
        results["compare_mib"] = size / 2**20
        print(
            f"GET /api/compare ({size / 2**20:.1f} MiB): cold {cold * 1000:.0f} ms, median of {args.repeat} "
            f"{median(results['compare_warm']):.0f} ms",
            flush=True,
        )
        in_page, _, _, _ = time_page(stack.base_url, query, args.page_repeat)
        results["page"] = [t * 1000 for t in in_page]
        print(f"comparison page, every chart drawn: median {median(results['page']):.0f} ms", flush=True)

        results["lists"] = lists = time_lists(stack.base_url, args.requests, args.runs)
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
    return results


if __name__ == "__main__":
    main()
