"""The foundation flow end to end: a spec posted over HTTP is trained by a real Celery worker."""

from __future__ import annotations

from statistics import mean
from typing import Any

import pytest

from harness.stack import Stack
from tests.conftest import tiny_spec


def _bloom_lora_params(hidden: int, layers: int, r: int) -> int:
    # peft's default Bloom target is query_key_value: Linear(hidden → 3·hidden); LoRA adds A (r×h) and B (3h×r).
    return layers * r * (hidden + 3 * hidden)


def _check_trained_run(stack: Stack, run: dict[str, Any]) -> dict[str, list[list[float]]]:
    assert run["status"] == "succeeded", run["error"]
    with stack.client() as client:
        series = client.get(f"/api/runs/{run['id']}/metrics").json()["series"]
        logs = client.get(f"/api/runs/{run['id']}/logs", params={"lines": 200}).json()
    losses = [value for _, value in series["loss"]]
    assert len(losses) == run["max_steps"] == 30
    assert mean(losses[-5:]) < mean(losses[:5]), "training loss did not fall"
    assert series["eval_loss"], "no eval loss recorded"
    assert all(v > 0 for _, v in series["tokens_per_second"])
    assert all(v > 0 for _, v in series["memory_bytes"])
    assert [step for step, _ in series["learning_rate"]] == list(range(1, 31))
    assert run["final_train_loss"] == pytest.approx(losses[-1])
    assert run["final_eval_loss"] == pytest.approx(series["eval_loss"][-1][1])
    assert run["wall_time_seconds"] > 0
    assert run["step"] == 30 and run["progress"] == 1.0
    assert any("trainable params" in line["message"] for line in logs)
    return series


def _run_lora_and_full(stack: Stack, tiny_assets: Any) -> None:
    with stack.client() as client:
        lora = client.post("/api/runs", json=tiny_spec(tiny_assets, "lora-r8"))
        full = client.post(
            "/api/runs", json=tiny_spec(tiny_assets, "full", method={"name": "full"}, training={"learning_rate": 1e-3})
        )
    assert lora.status_code == 201, lora.text
    assert full.status_code == 201, full.text
    assert lora.json()["status"] == "queued"

    lora_run = stack.wait_for_run(lora.json()["id"])
    _check_trained_run(stack, lora_run)
    assert lora_run["trainable_params"] == _bloom_lora_params(64, 2, 8)
    assert lora_run["details"]["peft_config"]["r"] == 8
    assert lora_run["artifact_dir"].endswith("adapter")

    full_run = stack.wait_for_run(full.json()["id"])
    _check_trained_run(stack, full_run)
    assert full_run["trainable_params"] == full_run["total_params"]
    assert full_run["total_params"] == lora_run["total_params"] - lora_run["trainable_params"]
    assert full_run["artifact_dir"].endswith("model")


def test_lora_and_full_train_on_sqlite_and_embedded_broker(sqlite_stack: Stack, tiny_assets: Any) -> None:
    _run_lora_and_full(sqlite_stack, tiny_assets)


@pytest.mark.services
def test_lora_and_full_train_on_postgres_and_redis(services_stack: Stack, tiny_assets: Any) -> None:
    _run_lora_and_full(services_stack, tiny_assets)
