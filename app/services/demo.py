"""The demo sweeps `make run` launches on an empty database, on the tiny model that `demo prepare` built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.services.sweeps import SweepRequest, create_sweep
from runspec import METHODS
from tunedeck_state.db import session_scope
from tunedeck_state.models import Run
from tunedeck_state.settings import Settings

#: The tiny Bloom after `demo prepare` pre-trained it (tunedeck_demo/pretrain.py: pretrained_dir).
DEMO_MODEL_DIRNAME = "models/tiny-bloom-256x4-pretrained"
DEMO_DATASET = "data/demo_alpaca.jsonl"


#: Training shared by every demo run: a couple of minutes for all of them on two CPU cores.
DEMO_TRAINING: dict[str, Any] = {
    "max_steps": 80,
    "batch_size": 8,
    "max_length": 256,
    "eval_steps": 20,
    "learning_rate": 5e-3,
    "eval_generation_samples": 8,
    "eval_max_new_tokens": 32,
}
RANK_SWEEP_STEPS = 60
LORA_TARGETS = ["query_key_value", "dense_h_to_4h"]


def demo_base(demo_dir: Path) -> dict[str, Any]:
    return {
        "model": str(demo_dir / DEMO_MODEL_DIRNAME),
        "dataset": {"source": str(demo_dir / DEMO_DATASET), "eval_fraction": 0.05},
        "method": {"name": "lora", "r": 16, "lora_alpha": 32, "target_modules": LORA_TARGETS},
        "training": dict(DEMO_TRAINING),
    }


def demo_sweeps(demo_dir: Path) -> list[SweepRequest]:
    """A cross-method sweep (full, LoRA, prompt tuning, P-Tuning v2, each at a learning rate that suits it)
    and a LoRA rank sweep, so a new user lands on real comparisons."""
    methods: list[dict[str, Any]] = [
        {"name": "demo-full", "method": {"name": "full"}, "training.learning_rate": 1e-3},
        {
            "name": "demo-lora-r16",
            "method": {"name": "lora", "r": 16, "lora_alpha": 32, "target_modules": LORA_TARGETS},
        },
        {
            "name": "demo-prompt-tuning",
            "method": {"name": "prompt_tuning", "num_virtual_tokens": 16},
            "training.learning_rate": 3e-2,
        },
        {
            "name": "demo-p-tuning-v2",
            "method": {"name": "p_tuning_v2", "num_virtual_tokens": 16},
            "training.learning_rate": 1e-2,
        },
    ]
    methods = [m for m in methods if m["method"]["name"] in METHODS]
    base = demo_base(demo_dir)
    return [
        SweepRequest(name="demo methods", base=base, overrides=methods),
        SweepRequest(
            name="demo ranks",
            base={**base, "training": {**base["training"], "max_steps": RANK_SWEEP_STEPS}},
            grid={"method.r": [2, 8, 32]},
        ),
    ]


def launch_demo_runs(settings: Settings) -> int:
    """Queue the demo sweeps if the database has no runs at all. Returns how many runs were queued."""
    with session_scope() as session:
        if session.query(Run.id).first() is not None:
            return 0
        total = 0
        for request in demo_sweeps(settings.demo_dir):
            total += len(create_sweep(session, request).members)
        return total
