"""Issue 2's bad input: an invalid spec is refused with 422 naming the field and what is allowed; a model or
dataset that cannot be used fails the run fast with a readable reason, in the API and on the run page.

(The wider table of hostile and malformed input is tests/test_bad_input.py.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.stack import Stack
from tests.conftest import tiny_spec
from tests.html import control_value, controls, field_error, fragment_root, parse, wait_for_running

HX = {"HX-Request": "true"}


def _post(stack: Stack, spec: dict[str, Any]) -> Any:
    with stack.client() as client:
        return client.post("/api/runs", json=spec)


def _error_for(response: Any, field: str) -> str:
    """The message of the 422 entry for `field` (fails, listing the fields named, when there is none)."""
    body = response.json()
    named = {entry["field"]: entry["msg"] for entry in body["detail"]}
    assert field in named, f"422 does not name {field!r}; it names {sorted(named)}"
    assert field in body["message"], "the one-line summary names the field too"
    return named[field]


# -- refused at once: 422 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"method": {"name": "lora", "r": 0}}, "method.r", ["greater than or equal to 1"]),
        ({"method": {"name": "no-such-method"}}, "method", ["'lora'", "'full'"]),
        ({"training": {"learning_rate": 0}}, "training.learning_rate", ["greater than 0"]),
        ({"training": {"lr_scheduler_type": "zigzag"}}, "training.lr_scheduler_type", ["'linear'", "'cosine'"]),
        ({"training": {"learnig_rate": 0.1}}, "training.learnig_rate", ["Extra inputs are not permitted"]),
        ({"dataset": {"eval_fraction": 1.5}}, "dataset.eval_fraction", ["less than 1"]),
        ({"name": None}, "name", ["Field required"]),
    ],
    ids=["lora-r", "method-name", "learning-rate", "scheduler", "typo", "eval-fraction", "no-name"],
)
def test_invalid_spec_is_422_naming_the_field_and_what_is_allowed(
    sqlite_stack: Stack, tiny_assets: Any, change: dict[str, Any], field: str, says: list[str]
) -> None:
    spec = tiny_spec(tiny_assets, "invalid")
    for key, value in change.items():
        if value is None:
            spec.pop(key)
        elif key == "method":
            spec[key] = value
        else:
            spec[key] = {**spec[key], **value}
    response = _post(sqlite_stack, spec)
    assert response.status_code == 422, response.text
    message = _error_for(response, field)
    for words in says:
        assert words in message, f"{field}: {message!r} lacks {words!r}"


def test_missing_paths_are_refused_on_submit(sqlite_stack: Stack, tiny_assets: Any) -> None:
    """A path that does not exist is caught before anything is stored: 422 naming the field."""
    missing_model = str(sqlite_stack.data_dir / "no-such-model")
    missing_data = str(sqlite_stack.data_dir / "no-such-data.jsonl")
    with sqlite_stack.client() as client:
        before = client.get("/api/runs", params={"limit": 1}).json()["total"]
        response = client.post("/api/runs", json=tiny_spec(tiny_assets, "missing", model=missing_model))
        data_response = client.post(
            "/api/runs", json=tiny_spec(tiny_assets, "missing", dataset={"source": missing_data})
        )
        assert client.get("/api/runs", params={"limit": 1}).json()["total"] == before
    assert response.status_code == data_response.status_code == 422
    assert "does not exist" in _error_for(response, "model") and missing_model in response.text
    assert "does not exist" in _error_for(data_response, "dataset.source")


def test_missing_model_on_the_form_is_shown_next_to_the_field(sqlite_stack: Stack, tiny_assets: Any) -> None:
    missing_model = str(sqlite_stack.data_dir / "no-such-model")
    form = {
        "name": "form-missing-model",
        "model": missing_model,
        "dataset.source": str(tiny_assets.dataset_path),
        "method.name": "lora",
        "training.max_steps": "5",
    }
    with sqlite_stack.client() as client:
        response = client.post("/runs", data=form, headers=HX)
    assert response.status_code == 422
    root = fragment_root(response.text)
    assert "does not exist" in (field_error(root, "model") or "")
    assert field_error(root, "dataset.source") is None
    assert control_value(controls(root)["model"]) == missing_model


# -- accepted, then failed by the worker with a readable reason ------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bad_runs(sqlite_stack: Stack, tiny_assets: Any) -> Iterator[dict[str, dict[str, Any]]]:
    """Runs the worker must fail, submitted while it is busy with a long run; files that existed when a run
    was submitted are deleted before the worker reaches it. Yields {case: finished run}."""
    folder = sqlite_stack.data_dir / "bad-input"
    folder.mkdir(exist_ok=True)
    no_columns = _write_jsonl(folder / "qa.jsonl", [{"question": "1+1=?", "answer": "2"}] * 20)
    empty = folder / "empty.jsonl"
    empty.write_text("")
    header_only = folder / "header-only.csv"
    header_only.write_text("instruction,input,output\n")
    vanishing_model = folder / "model-soon-gone"
    shutil.copytree(tiny_assets.model_dir, vanishing_model)
    vanishing_data = shutil.copy(tiny_assets.dataset_path, folder / "data-soon-gone.jsonl")

    cases = {
        "no-columns": tiny_spec(tiny_assets, "bad-no-columns", dataset={"source": str(no_columns)}),
        "empty": tiny_spec(tiny_assets, "bad-empty", dataset={"source": str(empty)}),
        "header-only": tiny_spec(tiny_assets, "bad-header-only", dataset={"source": str(header_only)}),
        "model-gone": tiny_spec(tiny_assets, "bad-model-gone", model=str(vanishing_model)),
        "data-gone": tiny_spec(tiny_assets, "bad-data-gone", dataset={"source": str(vanishing_data)}),
        # The stack runs offline (HF_HUB_OFFLINE=1): a hub id is accepted, and cannot be reached.
        "hub-unreachable": tiny_spec(
            tiny_assets, "bad-hub", model="tunedeck-test/no-such-model", method={"name": "full"}
        ),
    }
    blocker_spec = tiny_spec(tiny_assets, "bad-input-blocker", training={"max_steps": 100_000, "batch_size": 2})
    with sqlite_stack.client() as client:
        blocker = client.post("/api/runs", json=blocker_spec)
        assert blocker.status_code == 201, blocker.text
        blocker_id = blocker.json()["id"]
        try:
            wait_for_running(client, blocker_id)
            ids = {}
            for case, spec in cases.items():
                response = client.post("/api/runs", json=spec)
                assert response.status_code == 201, f"{case}: {response.text}"
                ids[case] = response.json()["id"]
            shutil.rmtree(vanishing_model)
            Path(vanishing_data).unlink()
        finally:
            client.post(f"/api/runs/{blocker_id}/cancel")
        yield {case: sqlite_stack.wait_for_run(run_id) for case, run_id in ids.items()}


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("no-columns", ["'instruction'", "'output'", "question, answer"]),
        ("empty", ["empty.jsonl", "is empty", "no rows"]),
        ("header-only", ["header-only.csv", "is empty", "no rows"]),
        ("model-gone", ["model-soon-gone", "does not exist"]),
        ("data-gone", ["data-soon-gone.jsonl", "does not exist"]),
        ("hub-unreachable", ["tunedeck-test/no-such-model", "Hugging Face hub", "network"]),
    ],
)
def test_unusable_input_fails_the_run_with_a_readable_reason(
    sqlite_stack: Stack, bad_runs: dict[str, dict[str, Any]], case: str, says: list[str]
) -> None:
    run = bad_runs[case]
    assert run["status"] == "failed"
    error = run["error"]
    for words in says:
        assert words in error, f"{case}: {error!r} lacks {words!r}"
    assert "Traceback" not in error and "\n  File " not in error
    assert len(error) < 1000
    assert run["step"] == 0, "it fails before training"
    with sqlite_stack.client() as client:
        page = client.get(f"/runs/{run['id']}")
        live = client.get(f"/runs/{run['id']}/live", headers=HX)
        metrics = client.get(f"/api/runs/{run['id']}/metrics").json()["series"]
        logs = client.get(f"/api/runs/{run['id']}/logs").json()
    assert metrics.get("loss", []) == []
    for root in (parse(page.text).find(id="run-live"), fragment_root(live.text)):
        assert root["data-status"] == "failed"
        alert = root.find(class_="run-error", attrs={"role": "alert"})
        assert alert is not None, "the reason is shown on the run page"
        assert error in alert.get_text(" ", strip=True)
    assert any(line["message"] == f"error: {error}" for line in logs), "the log says it too"
