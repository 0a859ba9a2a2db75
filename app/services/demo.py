"""The demo runs `make run` launches on an empty database, on the tiny model that `demo prepare` built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db import session_scope
from app.models import Run
from app.services.dispatch import submit_run
from app.settings import Settings
from runspec import RunSpec

DEMO_MODEL_DIRNAME = "models/tiny-bloom-256x4"
DEMO_DATASET = "data/demo_alpaca.jsonl"


def demo_specs(demo_dir: Path) -> list[RunSpec]:
    training: dict[str, Any] = {"max_steps": 120, "batch_size": 8, "max_length": 256, "eval_steps": 20}
    common: dict[str, Any] = {
        "model": str(demo_dir / DEMO_MODEL_DIRNAME),
        "dataset": {"source": str(demo_dir / DEMO_DATASET), "eval_fraction": 0.05},
    }
    full = {"name": "full"}
    lora = {"name": "lora", "r": 16, "lora_alpha": 32, "target_modules": ["query_key_value", "dense_h_to_4h"]}
    return [
        RunSpec.model_validate(
            {**common, "name": "demo-full", "method": full, "training": {**training, "learning_rate": 1e-3}}
        ),
        RunSpec.model_validate(
            {**common, "name": "demo-lora-r16", "method": lora, "training": {**training, "learning_rate": 5e-3}}
        ),
    ]


def launch_demo_runs(settings: Settings) -> int:
    """Queue the demo runs if the database has no runs at all. Returns how many were queued."""
    with session_scope() as session:
        if session.query(Run.id).first() is not None:
            return 0
        specs = demo_specs(settings.demo_dir)
        for spec in specs:
            submit_run(session, spec)
        return len(specs)
