"""Benchmark: comparing 50 runs × 10,000 logged steps × 4 metrics.

Seeds a scratch SQLite database through the same batched metric upsert the workers use, starts
`tunedeck serve --no-worker` on it, then measures

* GET /api/compare for all 50 runs: the first (cold: every series read from the (run, key, step) index and
  downsampled) and the median of the following calls (warm: the finished runs' downsampled series cached);
* the comparison page in headless chromium: navigation until every chart is drawn (`#compare[data-ready]`).

    .venv/bin/python -m bench.compare_api [--runs 50] [--steps 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("loss", "learning_rate", "tokens_per_second", "memory_bytes")
BATCH_ROWS = 20_000


def seed(data_dir: Path, runs: int, steps: int) -> tuple[list[int], float, int]:
    """Create the runs and their metrics; returns (run ids, seconds spent writing metrics, rows)."""
    os.environ["TUNEDECK_DATA_DIR"] = str(data_dir)
    from tunedeck_state.db import get_engine, get_sessionmaker, session_scope
    from tunedeck_state.migrate import upgrade_database
    from tunedeck_state.models import Run
    from tunedeck_state.runs import upsert_metrics
    from tunedeck_state.settings import get_settings

    for cached in (get_settings, get_engine, get_sessionmaker):  # another benchmark may have run in this process
        cached.cache_clear()
    upgrade_database()
    rng = random.Random(0)
    ids = []
    with session_scope() as session:
        for i in range(runs):
            r = 2 ** (i % 7)
            spec = {
                "name": f"bench-{i}",
                "model": "bench/model",
                "dataset": {"source": "bench.jsonl"},
                "method": {"name": "lora", "r": r},
                "training": {"max_steps": steps, "seed": i // 7, "learning_rate": 2e-4},
            }
            run = Run(
                name=f"bench-{i} r={r}",
                status="succeeded",
                method="lora",
                model="bench/model",
                spec=spec,
                spec_hash=f"bench-{i}",
                step=steps,
                max_steps=steps,
                trainable_params=4096 * r,
                total_params=400_000_000,
                final_train_loss=1.0,
                wall_time_seconds=3600.0,
                details={},
                latest_metrics={"gen_bleu": {"step": steps, "value": rng.uniform(10, 40)}},
            )
            session.add(run)
            session.flush()
            ids.append(run.id)
    written = 0
    started = time.perf_counter()
    for run_id in ids:
        points: list[tuple[int, str, float]] = []
        base = rng.uniform(1.5, 3.0)
        for step in range(1, steps + 1):
            loss = base * math.exp(-step / steps) + rng.gauss(0, 0.05) + (5.0 if rng.random() < 0.001 else 0.0)
            points += [
                (step, "loss", loss),
                (step, "learning_rate", 2e-4 * (1 - step / steps)),
                (step, "tokens_per_second", rng.gauss(3000, 200)),
                (step, "memory_bytes", 2**30 + rng.randrange(2**20)),
            ]
            if step % 500 == 0:
                points.append((step, "eval_loss", base * math.exp(-step / steps) + 0.1))
            if len(points) >= BATCH_ROWS:
                with session_scope() as session:
                    upsert_metrics(session, run_id, points)
                written += len(points)
                points = []
        if points:
            with session_scope() as session:
                upsert_metrics(session, run_id, points)
            written += len(points)
    return ids, time.perf_counter() - started, written


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEDECK_")}
    env["TUNEDECK_DATA_DIR"] = str(data_dir)
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
    server = subprocess.Popen(
        [sys.executable, "-m", "tunedeck_cli.main", "serve", "--no-worker", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.3)
    server.terminate()
    raise RuntimeError(f"server did not start; see {data_dir / 'server.log'}")


def time_api(base_url: str, query: str, repeat: int) -> tuple[float, list[float], int, int]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        started = time.perf_counter()
        response = client.get(f"/api/compare?{query}")
        cold = time.perf_counter() - started
        response.raise_for_status()
        data = response.json()
        points = max(len({x for s in curve["series"] for x in s["x"]}) for curve in data["curves"].values())
        warm = []
        for _ in range(repeat):
            started = time.perf_counter()
            client.get(f"/api/compare?{query}").raise_for_status()
            warm.append(time.perf_counter() - started)
    return cold, warm, len(response.content), points


def time_page(base_url: str, query: str, repeat: int) -> tuple[list[float], list[float], list[float], dict[str, int]]:
    """Per load, on the page's own clock from navigation start: every chart drawn (compare.js records it as
    data-ready-at) and the next frame painted (data-frame-at); and the wall time Playwright saw."""
    import json

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("chromium is not installed (make browser)")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    in_page: list[float] = []
    framed: list[float] = []
    wall: list[float] = []
    render: dict[str, int] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=[*args, "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for _ in range(repeat):
                started = time.perf_counter()
                page.goto(f"{base_url}/compare?{query}")
                page.wait_for_selector("#compare[data-ready=true]", timeout=60_000)
                page.wait_for_selector("#compare[data-frame-at]", timeout=60_000)
                wall.append(time.perf_counter() - started)
                in_page.append(float(page.get_attribute("#compare", "data-ready-at") or "nan") / 1000)
                framed.append(float(page.get_attribute("#compare", "data-frame-at") or "nan") / 1000)
                render = json.loads(page.get_attribute("#compare", "data-render-ms") or "{}")
                drawn = page.locator("#cmp-curves figure[data-drawn=true]").count()
                if drawn != len(KEYS) + 1:  # and eval loss
                    raise RuntimeError(f"expected {len(KEYS) + 1} curve charts drawn, found {drawn}")
        finally:
            browser.close()
    return in_page, framed, wall, render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--page-repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="tunedeck-bench-compare-"))
    server = None
    try:
        ids, seed_seconds, rows = seed(data_dir, args.runs, args.steps)
        print(f"seeded {args.runs} runs × {args.steps} steps × {len(KEYS)} metrics: {rows:,} rows")
        print(f"  batched upsert_metrics ({BATCH_ROWS:,} rows a batch): {rows / seed_seconds:,.0f} rows/s")
        server = start_server(data_dir, args.port)
        base_url = f"http://127.0.0.1:{args.port}"
        query = "run_ids=" + ",".join(map(str, ids))
        cold, warm, size, points = time_api(base_url, query, args.repeat)
        print(f"GET /api/compare, {len(ids)} runs ({size / 2**20:.1f} MiB, at most {points} x positions a chart)")
        print(f"  cold (first call: read and downsample every series): {cold * 1000:.0f} ms")
        print(
            f"  warm median of {args.repeat}: {statistics.median(warm) * 1000:.0f} ms "
            f"(min {min(warm) * 1000:.0f}, max {max(warm) * 1000:.0f})"
        )
        in_page, framed, wall, render = time_page(base_url, query, args.page_repeat)
        print(f"comparison page in headless chromium, median of {args.page_repeat} loads from navigation start:")
        print(
            f"  every chart drawn: {statistics.median(in_page) * 1000:.0f} ms "
            f"(min {min(in_page) * 1000:.0f}, max {max(in_page) * 1000:.0f}); next frame painted: "
            f"{statistics.median(framed) * 1000:.0f} ms; as Playwright saw it: {statistics.median(wall) * 1000:.0f} ms"
        )
        print(f"  drawing, last load (ms): {render}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
