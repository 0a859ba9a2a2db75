"""The demo's pre-training (tunedeck_demo/pretrain.py), on the tests' tiny model and a handful of steps: the
template is the course's, the result loads and is cached by content. The full `demo prepare` (150 steps on the
demo model, a couple of minutes) is not run here; its effect was measured by hand (docs/operations.md#the-demo)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunedeck_demo.pretrain import PretrainConfig, course_text, pretrain_demo_model
from worker.training.formats import course_segments

TINY = PretrainConfig(records=32, max_steps=2, batch_size=4, max_length=32)


def test_pretraining_rows_use_the_course_template() -> None:
    record = {"instruction": "Reverse the word.", "input": "abc", "output": "cba"}
    prompt, answer = course_segments([("user", "Reverse the word.\nabc"), ("assistant", "cba")])
    assert course_text(record) == prompt.text + answer.text


def test_pretraining_is_cached_by_content(tiny_assets: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_assets.model_dir, model_dir)
    logged: list[str] = []
    out = pretrain_demo_model(model_dir, TINY, log=logged.append)
    assert len(logged) == 1 and (out / ".complete").is_file()
    weights = (out / "model.safetensors").stat().st_mtime_ns
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0
    # Same model, rows and settings: nothing trains again.
    assert pretrain_demo_model(model_dir, TINY, log=logged.append) == out and len(logged) == 1
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    # Other settings: trained again.
    pretrain_demo_model(model_dir, PretrainConfig(records=32, max_steps=3, batch_size=4, max_length=32), logged.append)
    assert len(logged) == 2
