"""Model inspection runs on a worker (the web process has no torch) and reads no weights."""

from __future__ import annotations

from typing import Any

from harness.stack import Stack


def test_inspect_counts_parameters_and_lists_modules(sqlite_stack: Stack, tiny_assets: Any) -> None:
    with sqlite_stack.client() as client:
        answer = client.post(
            "/api/models/inspect", json={"model": str(tiny_assets.model_dir), "method": {"name": "lora", "r": 4}}
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_type"] == "bloom"
    assert "query_key_value" in body["linear_modules"]
    assert body["trainable_params"] == 2 * 4 * (64 + 192)
    assert body["total_params_with_method"] == body["total_params"] + body["trainable_params"]


def test_inspect_missing_model_is_422_with_reason(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:  # a path inside the data roots (others are refused as outside them)
        answer = client.post("/api/models/inspect", json={"model": str(sqlite_stack.data_dir / "nope")})
    assert answer.status_code == 422
    assert "does not exist" in answer.json()["message"]
