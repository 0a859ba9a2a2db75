"""Sweeps and comparisons end to end: a sweep of 4 LoRA ranks plus one prompt-tuning run, launched with the
`tunedeck sweep --wait` CLI through the REST API, trained by the real Celery worker of the SQLite stack, then
compared through GET /api/compare (JSON and CSV), and drawn by the comparison page in chromium."""

from __future__ import annotations

import csv
import io
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.stack import FINAL_STATUSES, ROOT, Stack
from tests.conftest import tiny_spec

RANKS = [1, 2, 4, 8]
HIDDEN, LAYERS = 64, 2  # the tiny Bloom of tests/conftest.py
VIRTUAL_TOKENS = 8
SAMPLES = 4


def _base(tiny_assets: Any, **training: Any) -> dict[str, Any]:
    spec = tiny_spec(
        tiny_assets,
        "unused",
        training={
            "max_steps": 12,
            "eval_steps": 4,
            "eval_generation_samples": SAMPLES,
            "eval_max_new_tokens": 12,
            **training,
        },
    )
    spec.pop("name")
    return spec


@pytest.fixture(scope="module")
def sweep_body(tiny_assets: Any) -> dict[str, Any]:
    return {
        "name": "ranks and prompts",
        "base": _base(tiny_assets),
        "overrides": [
            *({"method.r": r} for r in RANKS),
            {"method": {"name": "prompt_tuning", "num_virtual_tokens": VIRTUAL_TOKENS}},
        ],
    }


@pytest.fixture(scope="module")
def finished_sweep(sqlite_stack: Stack, sweep_body: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The sweep launched by the CLI, which waits for it and prints the comparison table."""
    path = tmp_path_factory.mktemp("sweep") / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_body, allow_unicode=True))
    env = {k: v for k, v in sqlite_stack.env.items() if not k.startswith("TUNEDECK_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunedeck_cli.main",
            "sweep",
            str(path),
            "--wait",
            "--poll",
            "1",
            "--url",
            sqlite_stack.base_url,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = int(re.search(r"sweep #(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    with sqlite_stack.client() as client:
        sweep = client.get(f"/api/sweeps/{sweep_id}").json()
    return {"sweep": sweep, "cli_output": result.stdout}


def _compare(stack: Stack, **params: Any) -> Any:
    with stack.client() as client:
        response = client.get("/api/compare", params=params)
    assert response.status_code == 200, response.text
    return response


def test_sweep_runs_all_finish_and_cli_prints_the_comparison(finished_sweep: Any) -> None:
    sweep = finished_sweep["sweep"]
    assert sweep["state"] == "succeeded", sweep
    assert [run["status"] for run in sweep["runs"]] == ["succeeded"] * 5
    assert sweep["varied"] == ["method.r", "method.name", "method.num_virtual_tokens"]
    names = [run["name"] for run in sweep["runs"]]
    assert names == [
        *(f"ranks and prompts r={r}" for r in RANKS),
        "ranks and prompts prompt_tuning num_virtual_tokens=8",
    ]
    output = finished_sweep["cli_output"]
    assert "comparison" in output and "BLEU" in output and "ROUGE-L" in output
    for name in names:
        assert name[:30] in output
    assert output.count("succeeded") >= 5


def test_comparison_table_counts_and_generation_metrics(sqlite_stack: Stack, finished_sweep: Any) -> None:
    data = _compare(sqlite_stack, sweep_id=finished_sweep["sweep"]["id"]).json()
    rows = data["table"]
    assert len(rows) == 5
    lora = rows[:4]
    assert [row["method"] for row in rows] == ["lora"] * 4 + ["prompt_tuning"]
    # peft's default Bloom target is query_key_value (hidden → 3·hidden): A is r×h, B is 3h×r per layer.
    assert [row["trainable_params"] for row in lora] == [LAYERS * r * 4 * HIDDEN for r in RANKS]
    assert rows[4]["trainable_params"] == VIRTUAL_TOKENS * HIDDEN
    assert [row["key_params"]["r"] for row in lora] == RANKS
    assert rows[4]["key_params"]["num_virtual_tokens"] == VIRTUAL_TOKENS
    for row in rows:
        assert row["final_train_loss"] > 0 and row["best_eval_loss"] > 0
        assert row["eval_perplexity"] == pytest.approx(math.exp(row["best_eval_loss"]), rel=1e-9)
        assert 0 <= row["gen_exact_match"] <= 1 and 0 <= row["gen_bleu"] <= 100 and 0 <= row["gen_rouge_l"] <= 1
        assert row["peak_memory_measured"] > 0 and row["tokens_per_second"] > 0 and row["wall_time_seconds"] > 0
        assert 0 < row["trainable_percent"] < 100
    # The stored held-out answers: the same prompts for every run, side by side.
    prompts = data["generations"]["prompts"]
    assert len(prompts) == SAMPLES
    for prompt in prompts:
        assert prompt["prompt"] and prompt["reference"] is not None
        assert set(prompt["outputs"]) == {str(row["id"]) for row in rows}
    # Curves for every run, the efficiency view with a Pareto front among the runs.
    for key in ("loss", "eval_loss", "learning_rate", "memory_bytes", "tokens_per_second"):
        curve = data["curves"][key]
        assert [s["run_id"] for s in curve["series"]] == [row["id"] for row in rows]
        assert all(len(s["y"]) == len(s["x"]) for s in curve["series"])
    assert [s["x"] for s in data["curves"]["loss"]["series"]] == [list(range(1, 13))] * 5
    assert not data["curves"]["loss"]["downsampled"]
    front = data["efficiency"]["pareto"]["trainable_params"]["best_eval_loss"]
    assert front and set(front) <= {row["id"] for row in rows}
    tokens = _compare(sqlite_stack, sweep_id=finished_sweep["sweep"]["id"], x="tokens").json()
    assert tokens["x"] == "tokens"
    for series in tokens["curves"]["loss"]["series"]:  # tokens, not steps: batch 8 × many tokens per sample
        assert series["x"] == sorted(series["x"]) and series["x"][-1] > 12 * 8


def test_csv_export_matches_the_json(sqlite_stack: Stack, finished_sweep: Any) -> None:
    sweep_id = finished_sweep["sweep"]["id"]
    data = _compare(sqlite_stack, sweep_id=sweep_id).json()
    response = _compare(sqlite_stack, sweep_id=sweep_id, format="csv")
    assert response.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(response.text)))
    kinds = {column["key"]: column["kind"] for column in data["columns"]}
    assert list(parsed[0]) == list(kinds)
    assert len(parsed) == len(data["table"]) == 5
    for csv_row, json_row in zip(parsed, data["table"], strict=True):
        for key, kind in kinds.items():
            value = json_row[key]
            if value is None:
                assert csv_row[key] == "", key
            elif kind == "int":
                assert int(csv_row[key]) == value, key
            elif kind == "float":
                assert float(csv_row[key]) == value, key
            else:
                assert csv_row[key] == str(value), key


def test_rank_chart_and_config_diff(sqlite_stack: Stack, finished_sweep: Any) -> None:
    data = _compare(sqlite_stack, sweep_id=finished_sweep["sweep"]["id"]).json()
    rank = next(chart for chart in data["params"] if chart["param"] == "method.r")
    assert rank["log2"] is True
    for metric in ("best_eval_loss", "gen_bleu", "gen_rouge_l"):
        (line,) = rank["metrics"][metric]["lines"]  # nothing else varies among the LoRA runs: one line
        assert [point["x"] for point in line["points"]] == RANKS
        assert all(point["n"] == 1 for point in line["points"])
    assert len(rank["metrics"]["best_eval_loss"]["lines"][0]["points"]) == 4

    fields = data["diff"]["fields"]
    assert "method.r" in fields and "method.name" in fields and "method.num_virtual_tokens" in fields
    assert all(field.startswith("method.") for field in fields), fields
    lora_ids = [row["id"] for row in data["table"][:4]]
    lora_only = _compare(sqlite_stack, run_ids=",".join(map(str, lora_ids))).json()
    assert lora_only["diff"]["fields"] == ["method.r"]
    assert [row["values"]["method.r"] for row in lora_only["diff"]["rows"]] == RANKS


def test_resubmitting_reuses_finished_runs(sqlite_stack: Stack, finished_sweep: Any, sweep_body: dict) -> None:
    with sqlite_stack.client() as client:
        again = client.post("/api/sweeps", json=sweep_body)
        # Names are labels: the same grid under another sweep name is the same set of runs.
        renamed = client.post("/api/sweeps", json={**sweep_body, "name": "renamed rank sweep"})
    assert again.status_code == 201, again.text
    runs = again.json()["runs"]
    assert [run["reused"] for run in runs] == [True] * 5
    assert [run["id"] for run in runs] == finished_sweep["sweep"]["run_ids"]
    assert again.json()["state"] == "succeeded"
    assert renamed.status_code == 201, renamed.text
    assert [run["id"] for run in renamed.json()["runs"]] == finished_sweep["sweep"]["run_ids"]


def test_invalid_sweep_names_run_and_field_and_stores_nothing(sqlite_stack: Stack, tiny_assets: Any) -> None:
    body = {"name": "broken", "base": _base(tiny_assets), "grid": {"method.r": [4, 0], "training.seed": [1, 2]}}
    with sqlite_stack.client() as client:
        before = client.get("/api/runs", params={"limit": 1}).json()["total"]
        response = client.post("/api/sweeps", json=body)
        after = client.get("/api/runs", params={"limit": 1}).json()["total"]
        bad_method = client.post(
            "/api/sweeps", json={**body, "grid": {"method.name": ["lora", "full"], "method.r": [4]}}
        )
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert [(p["run_index"], p["field"]) for p in problems] == [(2, "method.r"), (3, "method.r")]
    assert "greater than or equal to 1" in problems[0]["msg"]
    assert "run 2" in response.json()["message"]
    assert after == before
    # Full fine-tuning has no rank: the run that would combine them is named, with its field.
    assert bad_method.status_code == 422
    assert [(p["run_index"], p["field"]) for p in bad_method.json()["detail"]] == [(1, "method.r")]


def test_sweep_runs_get_the_method_check_a_single_run_gets(sqlite_stack: Stack, tiny_assets: Any) -> None:
    body = {
        "name": "bad modules",
        "base": _base(tiny_assets),
        "overrides": [{"method.target_modules": ["query_key_value"]}, {"method.target_modules": ["no_such_layer"]}],
    }
    with sqlite_stack.client() as client:
        before = client.get("/api/runs", params={"limit": 1}).json()["total"]
        response = client.post("/api/sweeps", json=body)
        after = client.get("/api/runs", params={"limit": 1}).json()["total"]
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert [(p["run_index"], p["field"]) for p in problems] == [(1, "method.target_modules")]
    assert "query_key_value" in problems[0]["msg"], "the message lists the module names the model has"
    assert after == before


def test_rerun_and_cancel_a_whole_sweep(sqlite_stack: Stack, tiny_assets: Any) -> None:
    body = {
        "name": "long",
        "base": _base(tiny_assets, max_steps=100_000, eval_steps=1000),
        "grid": {"training.seed": [7]},
    }
    with sqlite_stack.client() as client:
        first = client.post("/api/sweeps", json=body).json()
        same = client.post("/api/sweeps", json=body).json()  # queued or running: reused, not queued twice
        rerun = client.post("/api/sweeps", json={**body, "rerun": True}).json()
        assert same["runs"][0]["reused"] and same["run_ids"] == first["run_ids"]
        assert not rerun["runs"][0]["reused"] and rerun["run_ids"] != first["run_ids"]
        cancelled = [client.post(f"/api/sweeps/{s['id']}/cancel") for s in (first, rerun)]
        assert all(response.status_code == 200 for response in cancelled)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [client.get(f"/api/sweeps/{s['id']}").json() for s in (first, rerun)]
            if all(run["status"] in FINAL_STATUSES for s in states for run in s["runs"]):
                break
            time.sleep(0.5)
        assert [s["state"] for s in states] == ["cancelled", "cancelled"]
        assert client.get("/api/sweeps").json()[0]["id"] == rerun["id"]
        assert client.get("/api/sweeps/999999").status_code == 404


@pytest.mark.browser
def test_comparison_page_draws_charts_and_sorts(sqlite_stack: Stack, finished_sweep: Any, browser_page: Any) -> None:
    page = browser_page
    sweep_id = finished_sweep["sweep"]["id"]
    page.goto(f"{sqlite_stack.base_url}/compare?sweep_id={sweep_id}")
    page.wait_for_selector("#compare[data-ready=true]")
    curves = page.locator("#cmp-curves figure.chart[data-drawn=true]")
    assert curves.count() == 5
    assert page.locator("#cmp-curves canvas").count() == 5
    assert page.locator("#cmp-params figure[data-param='method.r'][data-drawn=true]").count() >= 3
    assert page.locator("#cmp-efficiency figure[data-drawn=true]").count() == 2
    assert page.locator("#cmp-runs-table tbody tr").count() == 5
    assert page.locator("#cmp-diff-table tr[data-field='method.r']").count() == 1
    assert page.locator("#cmp-generations-table tbody tr").count() == SAMPLES

    def column(key: str) -> list[float]:
        cells = page.locator(f"#cmp-runs-table tbody td[data-key={key}]")
        return [float(cells.nth(i).get_attribute("data-value")) for i in range(cells.count())]

    header = page.locator("#cmp-runs-table th[data-key=trainable_params]")
    header.click()
    ascending = column("trainable_params")
    assert ascending == sorted(ascending) and ascending[0] == VIRTUAL_TOKENS * HIDDEN
    page.locator("#cmp-runs-table th[data-key=trainable_params]").click()
    assert column("trainable_params") == sorted(ascending, reverse=True)
    page.locator("#cmp-runs-table th[data-key=best_eval_loss]").click()
    losses = column("best_eval_loss")
    assert losses == sorted(losses)  # numbers, not strings

    # Log scale and smoothing redraw the curves; the x axis can switch to tokens seen.
    page.check("#cmp-logy")
    page.locator("#cmp-smooth").fill("0.6")
    page.wait_for_selector("#cmp-curves figure.chart[data-drawn=true]")
    page.select_option("#cmp-x", "tokens")
    page.wait_for_function("document.querySelector('#cmp-curves .u-axis') !== null")

    # The runs list: tick two runs, press Compare.
    ids = finished_sweep["sweep"]["run_ids"][:2]
    page.goto(f"{sqlite_stack.base_url}/")
    for run_id in ids:
        page.check(f"#pick-{run_id}")
    page.click("#compare-selected")
    page.wait_for_selector("#compare[data-ready=true]")
    assert page.locator("#cmp-runs-table tbody tr").count() == 2
    assert page.locator("#cmp-diff-table tr[data-field='method.r']").count() == 1
    # A typed prompt goes through both runs: its row comes first, "…" until each run has answered.
    page.fill("#cmp-try-prompt", "Name a colour.")
    page.press("#cmp-try-prompt", "Enter")
    typed = page.locator("#cmp-generations-table tbody tr.typed")
    typed.wait_for()
    assert typed.locator("td.prompt").inner_text() == "Name a colour."
    page.wait_for_function(
        "[...document.querySelectorAll('#cmp-generations-table tr.typed td')].slice(2)"
        ".every((td) => td.textContent !== '…')",
        timeout=120_000,
    )
    answers = typed.locator("td").all_inner_texts()[2:]
    errors = [a for a in answers if a.startswith("(") and a.endswith(")") and a != "(empty answer)"]
    assert len(answers) == 2 and not errors, answers
    assert page.locator("#cmp-generations-table tbody tr").count() == SAMPLES + 1

    # The new-sweep form counts the runs it makes as the values are typed.
    page.goto(f"{sqlite_stack.base_url}/sweeps/new?base_run={ids[0]}")
    page.fill("input[name='vary-1-values']", "")
    page.select_option("select[name='vary-1-path']", "training.seed")
    page.fill("input[name='vary-1-values']", "1, 2")
    page.wait_for_selector("#sweep-count [data-run-count='6']")


def test_sweep_pages_render(sqlite_stack: Stack, finished_sweep: Any) -> None:
    sweep_id = finished_sweep["sweep"]["id"]
    with sqlite_stack.client() as client:
        listing = client.get("/sweeps")
        page = client.get(f"/sweeps/{sweep_id}")
        fragment = client.get(f"/sweeps/{sweep_id}", headers={"HX-Request": "true"})
        form = client.get("/sweeps/new")
    assert listing.status_code == 200 and "ranks and prompts" in listing.text
    assert page.status_code == 200 and 'id="compare"' in page.text and "ranks and prompts r=8" in page.text
    assert fragment.status_code == 200 and fragment.text.lstrip().startswith('<section id="sweep-live"')
    assert form.status_code == 200 and "method.r" in form.text


def test_cli_and_client_import_no_ml_stack() -> None:
    code = (
        "import sys\nimport tunedeck_cli.main, tunedeck_cli.client, tunedeck_cli.sweep\n"
        "import app.services.compare, app.services.sweeps\n"
        "print([m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_bad_sweep_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("- just\n- a list\n")
    result = subprocess.run(
        [sys.executable, "-m", "tunedeck_cli.main", "sweep", str(path), "--url", "http://127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "must hold a mapping" in result.stdout
