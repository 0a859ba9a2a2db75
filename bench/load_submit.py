"""Benchmark: many run submissions at once, from concurrent clients; each run must execute exactly once.

Starts its own stack in a scratch folder (`tunedeck serve --no-worker` + N training workers, SQLite and the
embedded broker by default, PostgreSQL + Redis with --services), then

* fires --runs POST /api/runs from --clients threads released together, with a stub-fast spec (the tiny test
  model, 1 step, 8 samples of 32 tokens), and records each submission's latency;
* meanwhile polls GET /api/runs every 0.2 s (the dashboard's list) to see the API stays responsive;
* waits until every run is final, then reads the database: every run succeeded, and each has exactly one claim
  (one queued → running event) and attempt 1.

    .venv/bin/python -m bench.load_submit [--runs 200] [--clients 50] [--workers 2] [--services] [--method-check]

A service worker runs beside the training workers, as `tunedeck serve` starts one: a submission asks it for the
run's memory estimate (one round trip per model and method, then cached in the web process). --method-check also
keeps the submit-time method check, a round trip to that worker for every LoRA submission; without it the check
is off (TUNEDECK_METHOD_CHECK_TIMEOUT_SECONDS=0) and the figures are those of storing and queueing a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"succeeded", "failed", "cancelled"}


def stub_spec(model_dir: Path, dataset: Path, name: str) -> dict[str, Any]:
    """A run that trains one optimizer step on 8 short samples: the least a real training can be."""
    return {
        "name": name,
        "model": str(model_dir),
        "dataset": {"source": str(dataset), "eval_fraction": 0, "max_samples": 8},
        "method": {"name": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["query_key_value"]},
        "training": {
            "max_steps": 1,
            "batch_size": 2,
            "max_length": 32,
            "learning_rate": 1e-3,
            "eval_generation_samples": 0,
            "save_steps": 1000,
        },
    }


@dataclass
class SubmitResult:
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0


def submit_concurrently(base_url: str, specs: Sequence[dict[str, Any]], clients: int) -> SubmitResult:
    """POST every spec from `clients` threads that start together; latencies in seconds."""
    result = SubmitResult()
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    chunks = [list(specs[i::clients]) for i in range(clients)]

    def client_loop(chunk: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            barrier.wait()
            for spec in chunk:
                started = time.perf_counter()
                answer = client.post("/api/runs", json=spec)
                elapsed = time.perf_counter() - started
                with lock:
                    result.latencies.append(elapsed)
                    result.statuses.append(answer.status_code)
                    if answer.status_code == 201:
                        result.run_ids.append(int(answer.json()["id"]))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client_loop, chunks))
    result.wall_seconds = time.perf_counter() - started
    return result


class Prober:
    """GET /api/runs every `interval` seconds in a thread: latencies and failures while the load runs."""

    def __init__(self, base_url: str, interval: float = 0.2) -> None:
        self.base_url = base_url
        self.interval = interval
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self._stop.wait(self.interval):
                started = time.perf_counter()
                try:
                    answer = client.get("/api/runs", params={"limit": 20})
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - started)


def wait_for_service_worker(base_url: str, model_dir: Path, timeout: float = 300) -> None:
    """Until the service worker answers (it starts in tens of seconds on a busy machine)."""
    deadline = time.perf_counter() + timeout
    with httpx.Client(base_url=base_url, timeout=120) as client:
        while time.perf_counter() < deadline:
            if client.post("/api/models/inspect", json={"model": str(model_dir)}).status_code == 200:
                return
            time.sleep(1.0)
    raise TimeoutError("no service worker answered")


def wait_until_final(base_url: str, expected: int, timeout: float) -> float:
    """Seconds until no run is queued or running (and `expected` runs exist)."""
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while time.perf_counter() - started < timeout:
            active = sum(
                client.get("/api/runs", params={"status": s, "limit": 1}).json()["total"] for s in ("queued", "running")
            )
            total = client.get("/api/runs", params={"limit": 1}).json()["total"]
            if active == 0 and total >= expected:
                return time.perf_counter() - started
            time.sleep(1.0)
    raise TimeoutError(f"runs still active after {timeout:.0f} s")


def execution_report(database_url: str, run_ids: Sequence[int]) -> dict[str, Any]:
    """From the database: statuses, claims (queued → running events) and attempts of the given runs."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, status, attempt, step, error FROM runs")).all()
            claims = dict(
                conn.execute(
                    sa.text("SELECT run_id, COUNT(*) FROM run_events WHERE to_status = 'running' GROUP BY run_id")
                ).all()
            )
    finally:
        engine.dispose()
    wanted = set(run_ids)
    runs = {row.id: row for row in rows if row.id in wanted}
    return {
        "stored": len(runs),
        "statuses": {s: sum(1 for r in runs.values() if r.status == s) for s in {r.status for r in runs.values()}},
        "claims": {run_id: int(claims.get(run_id, 0)) for run_id in wanted},
        "attempts": {run_id: int(runs[run_id].attempt) for run_id in runs},
        "steps": {run_id: int(runs[run_id].step) for run_id in runs},
        "errors": {run_id: runs[run_id].error for run_id in runs if runs[run_id].error},
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def describe(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"n={len(ms)} p50={percentile(ms, 50):.0f} ms p95={percentile(ms, 95):.0f} ms "
        f"p99={percentile(ms, 99):.0f} ms max={max(ms):.0f} ms mean={statistics.fmean(ms):.0f} ms"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="training worker processes")
    parser.add_argument("--services", action="store_true", help="PostgreSQL + Redis instead of SQLite")
    parser.add_argument("--method-check", action="store_true", help="keep the submit-time method check")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    import sys

    sys.path.insert(0, str(ROOT))
    from harness.stack import Stack, stack_env
    from tunedeck_demo.demo_assets import prepare_demo_assets

    assets = prepare_demo_assets(
        ROOT / ".cache" / "test-assets", arch="bloom", hidden_size=64, num_layers=2, num_heads=4
    )
    with tempfile.TemporaryDirectory(prefix="tunedeck-load-") as scratch:
        data_dir = Path(scratch)
        database_url, broker_url, cleanup = _services(args.services)
        extra = {} if args.method_check else {"TUNEDECK_METHOD_CHECK_TIMEOUT_SECONDS": "0"}
        stack = Stack(data_dir=data_dir, env=stack_env(data_dir, database_url, broker_url, **extra))
        try:
            stack.start_server()
            for _ in range(args.workers):
                stack.start_worker("training")
            stack.start_worker("service")  # as `tunedeck serve` starts one: it answers the submit-time estimate
            wait_for_service_worker(stack.base_url, assets.model_dir)
            specs = [stub_spec(assets.model_dir, assets.dataset_path, f"load-{i}") for i in range(args.runs)]
            with Prober(stack.base_url) as during_submit:
                submitted = submit_concurrently(stack.base_url, specs, args.clients)
            with Prober(stack.base_url, interval=0.5) as during_training:
                drain = wait_until_final(stack.base_url, args.runs, args.timeout)
            report = execution_report(database_url or f"sqlite:///{data_dir / 'tunedeck.sqlite'}", submitted.run_ids)
        finally:
            stack.stop()
            cleanup()

    backend = "PostgreSQL + Redis" if args.services else "SQLite + embedded broker"
    check = "on (service worker)" if args.method_check else "off"
    accepted = sum(1 for s in submitted.statuses if s == 201)
    once = sum(1 for c in report["claims"].values() if c == 1)
    retried = sum(1 for a in report["attempts"].values() if a > 1)
    lines = [
        f"load_submit: {args.runs} runs from {args.clients} concurrent clients, {args.workers} training workers",
        f"  stack: {backend}; submit-time method check {check}",
        f"  submit: {accepted}/{args.runs} answered 201 in {submitted.wall_seconds:.1f} s "
        f"({args.runs / submitted.wall_seconds:.1f} submissions/s)",
        f"  submit latency: {describe(submitted.latencies)}",
        f"  GET /api/runs while submitting: {describe(during_submit.latencies)}, "
        f"failures {len(during_submit.failures)}",
        f"  GET /api/runs while training: {describe(during_training.latencies)}, "
        f"failures {len(during_training.failures)}",
        f"  executed: {report['stored']} stored, {report['statuses']}, "
        f"all final {drain:.0f} s after the last submission",
        f"  exactly once: {once}/{len(report['claims'])} runs claimed once; runs with attempt > 1: {retried}",
    ]
    if report["errors"]:
        lines.append(f"  errors: {list(report['errors'].items())[:3]}")
    print("\n".join(lines), flush=True)


def _services(enabled: bool) -> tuple[str | None, str | None, Any]:
    if not enabled:
        return None, None, lambda: None
    import os
    import uuid

    import redis
    import sqlalchemy as sa

    admin_url = os.environ.get("TUNEDECK_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("TUNEDECK_TEST_REDIS", "redis://127.0.0.1:6379/14")
    name = f"tunedeck_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    redis.Redis.from_url(redis_url).flushdb()

    def cleanup() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", redis_url, cleanup


if __name__ == "__main__":
    main()
