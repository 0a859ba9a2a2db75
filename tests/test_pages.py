"""The pages and their htmx fragments, over HTTP against a real stack (server + Celery worker).

Order matters only for cost: a finished run is trained once for the module, and a long run keeps the worker
busy while the form tests post runs (so those stay queued and are cancelled before they train)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from app.web.formatting import human_count, human_duration, number
from harness.stack import FINAL_STATUSES, Stack
from runspec import METHODS, DatasetSpec, TrainingSpec
from runspec.spec import DEFAULT_DATASET, DEFAULT_MODEL
from tests.conftest import tiny_spec
from tests.html import (
    control_value,
    controls,
    facts,
    field_error,
    fragment_root,
    parse,
    wait_for_running,
    wait_until_idle,
)

HX = {"HX-Request": "true"}
FINISHED_STEPS = 10


@pytest.fixture(scope="module")
def finished_run(sqlite_stack: Stack, tiny_assets: Any) -> dict[str, Any]:
    spec = tiny_spec(
        tiny_assets,
        "pages-finished",
        method={"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["query_key_value"]},
        training={"max_steps": FINISHED_STEPS, "eval_steps": 5, "eval_generation_samples": 0},
    )
    return sqlite_stack.train(spec)


@pytest.fixture(scope="module")
def running_run(sqlite_stack: Stack, tiny_assets: Any, finished_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A run far too long to finish: it trains while the tests look at it, and is cancelled at the end."""
    spec = tiny_spec(tiny_assets, "pages-long", training={"max_steps": 100_000, "batch_size": 2, "eval_steps": 50})
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=spec)
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        try:
            yield wait_for_running(client, run_id, min_step=2)
        finally:
            client.post(f"/api/runs/{run_id}/cancel")  # 409 when a test has cancelled it already
            sqlite_stack.wait_for_run(run_id)


# -- one finished run ------------------------------------------------------------------------------------


def test_finished_run_page_shows_results(sqlite_stack: Stack, finished_run: dict[str, Any]) -> None:
    run_id = finished_run["id"]
    with sqlite_stack.client() as client:
        page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    doc = parse(page.text)
    assert doc.find("h1").get_text(" ", strip=True).startswith("pages-finished")

    live = doc.find(id="run-live")
    assert live["data-status"] == "succeeded"
    assert not live.has_attr("hx-trigger"), "a finished run must not poll"
    assert live.find(class_="badge").get_text(strip=True) == "succeeded"
    bar = live.find(attrs={"role": "progressbar"})
    assert (bar["aria-valuenow"], bar["aria-valuemax"]) == (str(FINISHED_STEPS), str(FINISHED_STEPS))
    assert "width: 100.0%" in bar.find(class_="progress-fill")["style"]
    assert "ETA" not in live.get_text()
    assert live.find(attrs={"hx-post": f"/runs/{run_id}/cancel"}) is None, "no cancel button on a finished run"

    shown = facts(live)
    assert shown["Trainable params"].startswith(human_count(finished_run["trainable_params"]))
    assert shown["Total params"] == human_count(finished_run["total_params"])
    assert shown["Train loss"] == number(finished_run["final_train_loss"])
    assert shown["Eval loss"] == number(finished_run["final_eval_loss"])
    assert shown["Wall time"] == human_duration(finished_run["wall_time_seconds"]) != "–"
    assert shown["Adapter saved at"] == finished_run["artifact_dir"]
    assert finished_run["artifact_dir"].endswith("adapter")
    assert shown["Batches"].startswith("grouped by length (each group of batches starts with its longest samples")
    assert shown["Batches"].endswith("· logits only where a token is learned")

    log = live.find(id="run-log").get_text()
    assert "trainable params" in log
    assert f"saved adapter to {finished_run['artifact_dir']}" in log

    charts = doc.find(id="charts")
    assert charts["data-run-id"] == str(run_id)
    assert charts["data-max-steps"] == str(FINISHED_STEPS)
    keys = [figure["data-keys"] for figure in charts.find_all("figure", class_="chart")]
    assert "loss,eval_loss" in keys and "learning_rate" in keys
    assert doc.find("script", src="/static/run_charts.js") is not None
    assert doc.find("a", href=f"/runs/new?clone={run_id}") is not None


def test_live_fragment_is_the_live_block_only(sqlite_stack: Stack, finished_run: dict[str, Any]) -> None:
    run_id = finished_run["id"]
    with sqlite_stack.client() as client:
        response = client.get(f"/runs/{run_id}/live", headers=HX)
    assert response.status_code == 200
    root = fragment_root(response.text)
    assert (root.name, root["id"], root["data-status"]) == ("section", "run-live", "succeeded")
    assert facts(root)["Adapter saved at"] == finished_run["artifact_dir"]


def test_missing_run_is_404(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:
        for url in ("/runs/999999", "/runs/999999/live", "/runs/new?clone=999999"):
            assert client.get(url).status_code == 404, url


def test_cancel_a_finished_run_is_refused(sqlite_stack: Stack, finished_run: dict[str, Any]) -> None:
    with sqlite_stack.client() as client:
        response = client.post(f"/runs/{finished_run['id']}/cancel", headers=HX)
    assert response.status_code == 409
    assert "succeeded" in response.text


def test_runs_list_and_its_fragment(sqlite_stack: Stack, finished_run: dict[str, Any]) -> None:
    with sqlite_stack.client() as client:
        page = client.get("/")
        fragment = client.get("/runs/table", headers=HX)
    assert page.status_code == fragment.status_code == 200
    assert parse(page.text).find("a", href="/runs/new") is not None

    table = fragment_root(fragment.text)
    assert table["id"] == "runs-table"
    link = table.find("a", href=f"/runs/{finished_run['id']}")
    assert link is not None and link.get_text(strip=True) == "pages-finished"
    row = link.find_parent("tr")
    assert row.find(class_="badge").get_text(strip=True) == "succeeded"
    cells = _cells_by_header(row)
    assert f"{FINISHED_STEPS}/{FINISHED_STEPS}" in cells["Progress"]
    assert cells["Trainable"].startswith(human_count(finished_run["trainable_params"]))
    assert cells["Eval loss"] == number(finished_run["final_eval_loss"])
    assert cells["Model"].endswith(finished_run["model"].rsplit("/", 1)[-1])


def _cells_by_header(row: Any) -> dict[str, str]:
    headers = [th.get_text(" ", strip=True) for th in row.find_parent("table").find("thead")("th")]
    return dict(zip(headers, (td.get_text(" ", strip=True) for td in row("td")), strict=True))


# -- the new-run form ------------------------------------------------------------------------------------


def _expected_paths(model: Any, prefix: str, skip: set[str]) -> set[str]:
    return {f"{prefix}.{name}" for name in model.model_fields if name not in skip}


def test_new_run_form_has_every_spec_field(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:
        page = client.get("/runs/new")
    assert page.status_code == 200
    form = parse(page.text).find("form", id="run-form")
    assert (form["method"], form["action"], form["hx-post"]) == ("post", "/runs", "/runs")
    found = controls(form)
    expected = {"name", "model", "dataset.source", "method.name"}
    expected |= _expected_paths(DatasetSpec, "dataset", set())
    expected |= _expected_paths(TrainingSpec, "training", set())
    expected |= _expected_paths(METHODS["lora"], "method", {"name"})
    assert expected <= found.keys(), f"missing from the form: {sorted(expected - found.keys())}"

    assert control_value(found["model"]) == DEFAULT_MODEL
    assert control_value(found["dataset.source"]) == DEFAULT_DATASET
    assert control_value(found["method.name"]) == "lora"
    assert control_value(found["training.max_steps"]) == str(TrainingSpec().max_steps)
    assert found["method.use_dora"]["type"] == "checkbox"
    assert found["training.lr_scheduler_type"].name == "select"
    methods = [option["value"] for option in found["method.name"]("option")]
    assert methods == list(METHODS)
    switch = found["method.name"]
    assert (switch["hx-get"], switch["hx-target"]) == ("/runs/new/method", "#method-fields")


@pytest.mark.parametrize("method", list(METHODS))
def test_method_switch_returns_only_that_methods_fields(sqlite_stack: Stack, method: str) -> None:
    with sqlite_stack.client() as client:
        response = client.get("/runs/new/method", params={"method.name": method}, headers=HX)
    assert response.status_code == 200
    block = fragment_root(response.text)
    assert (block.name, block["id"]) == ("div", "method-fields")
    assert block.find("form") is None
    assert set(controls(block)) == _expected_paths(METHODS[method], "method", {"name"})


def test_method_switch_to_an_unknown_method_is_422(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:
        response = client.get("/runs/new/method", params={"method.name": "no-such-method"}, headers=HX)
    assert response.status_code == 422
    assert "no-such-method" in response.text


def test_clone_prefills_the_form(sqlite_stack: Stack, finished_run: dict[str, Any]) -> None:
    spec = finished_run["spec"]
    with sqlite_stack.client() as client:
        page = client.get("/runs/new", params={"clone": finished_run["id"]})
    assert page.status_code == 200
    found = controls(parse(page.text).find("form", id="run-form"))
    assert control_value(found["name"]) == "pages-finished-copy"
    assert control_value(found["model"]) == spec["model"]
    assert control_value(found["dataset.source"]) == spec["dataset"]["source"]
    assert float(control_value(found["dataset.eval_fraction"])) == spec["dataset"]["eval_fraction"]
    assert control_value(found["method.name"]) == "lora"
    assert control_value(found["method.r"]) == "8"
    assert control_value(found["method.target_modules"]) == "query_key_value"
    assert control_value(found["training.max_steps"]) == str(FINISHED_STEPS)
    assert float(control_value(found["training.learning_rate"])) == spec["training"]["learning_rate"]


def _form(assets: Any, **fields: str) -> dict[str, str]:
    values = {
        "name": "form-run",
        "model": str(assets.model_dir),
        "dataset.source": str(assets.dataset_path),
        "dataset.eval_fraction": "0.1",
        "dataset.max_samples": "",
        "method.name": "lora",
        "method.r": "4",
        "method.lora_alpha": "8",
        "method.target_modules": "query_key_value",
        "method.use_rslora": "on",
        "training.max_steps": "7",
        "training.learning_rate": "0.001",
        "training.batch_size": "2",
        "training.eval_steps": "",
    }
    values.update(fields)
    return values


def _run_count(client: Any) -> int:
    return int(client.get("/api/runs", params={"limit": 1}).json()["total"])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"method.r": "0", "training.learning_rate": "-1"},
            {"method.r": "greater than or equal to 1", "training.learning_rate": "greater than 0"},
        ),
        ({"name": "", "training.max_steps": "many"}, {"name": "Field required", "training.max_steps": "integer"}),
        (
            {"name": "a/b", "training.lr_scheduler_type": "zigzag"},
            {"name": "pattern", "training.lr_scheduler_type": "'cosine'"},
        ),
    ],
)
def test_invalid_form_is_shown_again_with_the_bad_fields(
    sqlite_stack: Stack, tiny_assets: Any, fields: dict[str, str], expected: dict[str, str]
) -> None:
    form_data = _form(tiny_assets, **fields)
    with sqlite_stack.client() as client:
        before = _run_count(client)
        page = client.post("/runs", data=form_data)
        fragment = client.post("/runs", data=form_data, headers=HX)
        assert _run_count(client) == before, "an invalid form must not create a run"

    assert page.status_code == fragment.status_code == 422
    assert "<html" in page.text
    form = fragment_root(fragment.text)
    assert (form.name, form["id"]) == ("form", "run-form")
    for root in (parse(page.text).find("form", id="run-form"), form):
        summary = root.find(class_="form-errors")
        assert summary is not None and summary.get("role") == "alert"
        for field, words in expected.items():
            assert field in summary.get_text(), f"{field} not named in the summary"
            assert words in (field_error(root, field) or ""), f"{field}: {field_error(root, field)!r}"
        # What the user typed is kept, so only the bad fields need fixing.
        kept = controls(root)
        assert control_value(kept["model"]) == form_data["model"]
        assert control_value(kept["method.target_modules"]) == "query_key_value"
        assert control_value(kept["method.use_rslora"]) == "on"
        assert field_error(root, "dataset.source") is None


# -- an active run (the worker is busy with it) ----------------------------------------------------------


def test_active_run_polls_and_shows_progress(sqlite_stack: Stack, running_run: dict[str, Any]) -> None:
    run_id = running_run["id"]
    with sqlite_stack.client() as client:
        table = fragment_root(client.get("/runs/table", headers=HX).text)
        live = fragment_root(client.get(f"/runs/{run_id}/live", headers=HX).text)
        page = parse(client.get(f"/runs/{run_id}").text)

    assert table["hx-get"] == "/runs/table" and "every" in table["hx-trigger"]
    row = table.find("a", href=f"/runs/{run_id}").find_parent("tr")
    assert row.find(class_="badge").get_text(strip=True) == "running"
    assert "ETA" in _cells_by_header(row)["Progress"]

    assert live["data-status"] == "running"
    assert live["hx-get"] == f"/runs/{run_id}/live" and "every" in live["hx-trigger"]
    assert page.find(id="run-live")["hx-trigger"] == live["hx-trigger"]
    bar = live.find(attrs={"role": "progressbar"})
    assert int(bar["aria-valuenow"]) >= 2 and bar["aria-valuemax"] == "100000"
    assert "ETA" in live.find(class_="summary-status").get_text()
    cancel = live.find(attrs={"hx-post": f"/runs/{run_id}/cancel"})
    assert cancel is not None and cancel.get_text(strip=True) == "Cancel" and not cancel.has_attr("disabled")
    assert cancel["hx-confirm"].startswith(f"Cancel run {run_id}?"), "a cancel asks for confirmation first"
    shown = facts(live)
    assert shown["Trainable params"] != "–", "parameter counts are known once the model is built"
    assert shown["Total params"] != "–"
    assert shown["Train loss"] != "–"
    assert shown["Adapter saved at"] == "–"
    # The tail scrolls (the first line may be gone by now), but it always ends with a recent step.
    assert re.search(r"step \d+/100000 loss=", live.find(id="run-log").get_text())


def test_valid_form_redirects_to_the_new_run(
    sqlite_stack: Stack, tiny_assets: Any, running_run: dict[str, Any]
) -> None:
    with sqlite_stack.client() as client:
        response = client.post("/runs", data=_form(tiny_assets), follow_redirects=False)
        htmx = client.post("/runs", data=_form(tiny_assets, name="form-run-htmx"), headers=HX)
        assert response.status_code == 303
        run_id = int(response.headers["location"].removeprefix("/runs/"))
        assert response.headers["location"] == f"/runs/{run_id}"
        assert htmx.status_code in {200, 201}
        htmx_id = int(htmx.headers["HX-Redirect"].removeprefix("/runs/"))
        # The worker is busy with the long run: both wait in the queue and are cancelled before they train.
        for new_id in (run_id, htmx_id):
            assert client.post(f"/api/runs/{new_id}/cancel").json()["status"] == "cancelled"
        run = client.get(f"/api/runs/{run_id}").json()
        followed = client.get(response.headers["location"])

    assert run["name"] == "form-run" and run["method"] == "lora"
    method, training, dataset = run["spec"]["method"], run["spec"]["training"], run["spec"]["dataset"]
    assert (method["r"], method["lora_alpha"], method["target_modules"]) == (4, 8, ["query_key_value"])
    assert (method["use_rslora"], method["use_dora"]) == (True, False)
    assert (training["max_steps"], training["learning_rate"], training["batch_size"]) == (7, 0.001, 2)
    assert training["eval_steps"] is None  # an empty input means the spec's default
    assert (dataset["eval_fraction"], dataset["max_samples"]) == (0.1, None)
    assert followed.status_code == 200 and "form-run" in followed.text


def test_cancel_button_stops_the_run_and_the_polling(sqlite_stack: Stack, running_run: dict[str, Any]) -> None:
    run_id = running_run["id"]
    with sqlite_stack.client() as client:
        response = client.post(f"/runs/{run_id}/cancel", headers=HX)
        assert response.status_code == 200
        live = fragment_root(response.text)
        button = live.find(attrs={"hx-post": f"/runs/{run_id}/cancel"})
        assert button.has_attr("disabled") and button.get_text(strip=True) == "Cancelling…"

        run = sqlite_stack.wait_for_run(run_id)
        assert run["status"] == "cancelled"
        live = fragment_root(client.get(f"/runs/{run_id}/live", headers=HX).text)
        assert live["data-status"] == "cancelled" and not live.has_attr("hx-trigger")
        assert live.find(attrs={"hx-post": f"/runs/{run_id}/cancel"}) is None

        wait_until_idle(client)
        table = fragment_root(client.get("/runs/table", headers=HX).text)
        assert not table.has_attr("hx-trigger"), "the runs table must stop polling when no run is active"
        statuses = {badge.get_text(strip=True) for badge in table.find_all(class_="badge")}
        assert statuses <= FINAL_STATUSES
