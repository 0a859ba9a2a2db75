"""The dashboard benchmark's database: 10,000 runs, 50 of them with 10,000 logged steps × 4 metrics (a generated
fixture, written in a few seconds with bulk Core inserts and the workers' own metric upsert).

The runs look like real ones: a full spec (runspec's defaults filled in), details of a few kilobytes (device,
environment, dataset facts, the resolved peft config, a memory estimate), a latest-value summary, statuses,
methods and losses spread as a busy team's history would have them. The 50 measured runs are the newest: LoRA
runs of 7 ranks × 7 seeds (+1), as a sweep would leave them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

KEYS = ("loss", "learning_rate", "tokens_per_second", "memory_bytes")
METHOD_WEIGHTS = {"lora": 50, "qlora": 20, "full": 10, "prefix_tuning": 4, "ia3": 4, "adalora": 4, "loha": 4, "vera": 4}
STATUS_WEIGHTS = {"succeeded": 80, "failed": 12, "cancelled": 6, "queued": 2}
MODELS = ("bigscience/bloom-560m", "bigscience/bloom-1b1", "Langboat/bloom-389m-zh", "Langboat/bloom-800m-zh")
METRIC_BATCH = 40_000


@dataclass(frozen=True)
class Seeded:
    runs: int
    compared_ids: list[int]
    metric_rows: int
    runs_seconds: float
    metrics_seconds: float
    rollups_seconds: float
    analyze_seconds: float = 0.0


def _spec(rng: random.Random, name: str, method: str, steps: int, seed: int, r: int | None = None) -> dict[str, Any]:
    from runspec import RunSpec

    method_spec: dict[str, Any] = {"name": method}
    if r is not None:
        method_spec["r"] = r
    return RunSpec.model_validate(
        {
            "name": name,
            "model": rng.choice(MODELS),
            "dataset": {"source": "/data/alpaca_zh.jsonl"},
            "method": method_spec,
            "training": {"max_steps": steps, "seed": seed, "learning_rate": rng.choice((1e-4, 2e-4, 5e-4))},
        }
    ).model_dump(mode="json")


def _details(rng: random.Random, method: str, trainable: int, total: int) -> dict[str, Any]:
    """Roughly what a finished run's details hold (a few kilobytes)."""
    return {
        "worker_pid": rng.randrange(1000, 60000),
        "resumed_from_step": 0,
        "device": {"kind": "cuda", "name": "NVIDIA A100-SXM4-40GB", "memory_bytes": 42_314_694_656, "count": 1},
        "environment": {
            "python": "3.11.9",
            "torch": "2.13.0",
            "transformers": "4.57.1",
            "peft": "0.17.1",
            "cuda": "12.4",
            "hostname": f"gpu-{rng.randrange(1, 9)}",
        },
        "dataset": {
            "rows": 48_818,
            "train": 46_377,
            "eval": 2_441,
            "format": "alpaca",
            "template": "course",
            "truncated": rng.randrange(0, 300),
            "columns": {"instruction": "instruction", "input": "input", "output": "output"},
        },
        "train_samples": 46_377,
        "eval_samples": 2_441,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "peft_config": {
            "peft_type": method.upper(),
            "task_type": "CAUSAL_LM",
            "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
            "r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "init_lora_weights": "gaussian",
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": False,
            "use_dora": False,
            "base_model_name_or_path": "bigscience/bloom-560m",
            "revision": None,
            "inference_mode": False,
        },
        "memory_estimate": {
            "device": "cuda",
            "device_memory_bytes": 42_314_694_656,
            "total_bytes": rng.randrange(4, 30) * 2**30,
            "fits": True,
            "parts": {
                name: rng.randrange(2**20, 2**33)
                for name in ("weights", "gradients", "optimizer", "activations", "logits", "workspace", "overhead")
            },
            "peak_phase": "backward of the last layer",
            "made_by": "the web process at submit time",
        },
        "memory_measured": {"peak_allocated_bytes": rng.randrange(4, 30) * 2**30, "after_first_step_bytes": 2**32},
    }


def seed(runs: int = 10_000, compared: int = 50, steps: int = 10_000) -> Seeded:
    """Fill the database the process points at (bench.report.use_database). The compared runs come last."""
    from sqlalchemy import insert

    from tunedeck_state.db import session_scope
    from tunedeck_state.models import Run, RunEvent, utcnow
    from tunedeck_state.rollups import write_rollups
    from tunedeck_state.runs import upsert_metrics

    rng = random.Random(8)
    now = utcnow()
    first = now - timedelta(days=120)
    rows: list[dict[str, Any]] = []
    methods, method_weights = zip(*METHOD_WEIGHTS.items(), strict=True)
    statuses, status_weights = zip(*STATUS_WEIGHTS.items(), strict=True)
    started = time.perf_counter()
    for i in range(runs):
        created = first + (now - first) * (i / runs)
        if i >= runs - compared:
            j = i - (runs - compared)
            r = 2 ** (j % 7)
            method, status, name, max_steps = "lora", "succeeded", f"sweep-lr2e-4-r{r}-seed{j // 7}", steps
            spec = _spec(rng, name, method, steps, seed=j // 7, r=r)
        else:
            method = rng.choices(methods, method_weights)[0]
            status = rng.choices(statuses, status_weights)[0]
            max_steps = rng.choice((200, 500, 1000, 2000, 5000))
            name = f"{method}-{rng.choice(('alpaca', 'belle', 'firefly', 'medical'))}-{i}"
            spec = _spec(rng, name, method, max_steps, seed=rng.randrange(5))
        total = 559_214_592
        trainable = total if method == "full" else rng.randrange(100_000, 20_000_000)
        final = status in ("succeeded", "failed", "cancelled")
        step = max_steps if status == "succeeded" else (rng.randrange(max_steps) if final else 0)
        loss = rng.uniform(0.8, 2.5)
        latest = (
            {
                "loss": {"step": step, "value": loss},
                "learning_rate": {"step": step, "value": 2e-4 * (1 - step / max_steps)},
                "tokens_per_second": {"step": step, "value": rng.gauss(3000, 300)},
                "memory_bytes": {"step": step, "value": float(rng.randrange(4, 30) * 2**30)},
                "eval_loss": {"step": step, "value": loss + 0.1},
                "gen_bleu": {"step": step, "value": rng.uniform(10, 40)},
            }
            if step
            else {}
        )
        rows.append(
            {
                "name": name,
                "status": status,
                "method": method,
                "model": spec["model"],
                "spec": spec,
                "spec_hash": f"{i:064x}",
                "created_at": created,
                "started_at": created + timedelta(seconds=5) if status != "queued" else None,
                "finished_at": created + timedelta(hours=1) if final else None,
                "heartbeat_at": created + timedelta(hours=1) if final else None,
                "attempt": 1,
                "cancel_requested": False,
                "worker": "training@gpu-1" if status != "queued" else None,
                "error": "CUDA out of memory (bench fixture)" if status == "failed" else None,
                "step": step,
                "max_steps": max_steps,
                "eta_seconds": 0.0 if status == "succeeded" else None,
                "trainable_params": trainable if status != "queued" else None,
                "total_params": total if status != "queued" else None,
                "final_train_loss": loss if final and step else None,
                "final_eval_loss": loss + 0.1 if status == "succeeded" else None,
                "wall_time_seconds": 3600.0 if final else None,
                "artifact_dir": f"/data/runs/run-{i + 1}/adapter" if status == "succeeded" else None,
                "details": _details(rng, method, trainable, total) if status != "queued" else {},
                "latest_metrics": latest,
            }
        )
    with session_scope() as session:
        for chunk in range(0, len(rows), 2000):
            session.execute(insert(Run), rows[chunk : chunk + 2000])
        ids = list(session.scalars(Run.__table__.select().with_only_columns(Run.id).order_by(Run.id)))
        session.execute(
            insert(RunEvent),
            [
                {"run_id": run_id, "at": now, "from_status": None, "to_status": "queued", "reason": "submitted"}
                for run_id in ids
            ],
        )
    runs_seconds = time.perf_counter() - started

    compared_ids = ids[-compared:]
    written = 0
    started = time.perf_counter()
    for run_id in compared_ids:
        points: list[tuple[int, str, float]] = []
        base = rng.uniform(1.5, 3.0)
        gauss, uniform = rng.gauss, rng.random
        for s in range(1, steps + 1):
            decay = base * math.exp(-s / steps)
            points += (
                (s, "loss", decay + gauss(0, 0.05) + (5.0 if uniform() < 0.001 else 0.0)),
                (s, "learning_rate", 2e-4 * (1 - s / steps)),
                (s, "tokens_per_second", gauss(3000, 200)),
                (s, "memory_bytes", float(2**30 + (s * 7919) % 2**20)),
            )
            if s % 500 == 0:
                points.append((s, "eval_loss", decay + 0.1))
            if len(points) >= METRIC_BATCH:
                with session_scope() as session:
                    upsert_metrics(session, run_id, points)
                written += len(points)
                points = []
        if points:
            with session_scope() as session:
                upsert_metrics(session, run_id, points)
            written += len(points)
    metrics_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for run_id in compared_ids:  # what finish_run does as each run ends (tunedeck_state.rollups)
        with session_scope() as session:
            write_rollups(session, run_id, 1)
    rollups_seconds = time.perf_counter() - started
    started = time.perf_counter()
    analyze()
    return Seeded(
        runs=len(ids),
        compared_ids=compared_ids,
        metric_rows=written,
        runs_seconds=runs_seconds,
        metrics_seconds=metrics_seconds,
        rollups_seconds=rollups_seconds,
        analyze_seconds=time.perf_counter() - started,
    )


def analyze() -> None:
    """What a deployment's database has done by itself after a bulk load: PostgreSQL's autovacuum (VACUUM ANALYZE:
    planner statistics, and the visibility map that lets a count or a page of ids be read from an index alone;
    the test server runs with autovacuum off), SQLite's statistics (`tunedeck serve` refreshes them at start,
    tunedeck_state.migrate.refresh_run_statistics)."""
    from sqlalchemy import text

    from tunedeck_state.db import get_engine

    engine = get_engine()
    if engine.dialect.name == "sqlite":
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
