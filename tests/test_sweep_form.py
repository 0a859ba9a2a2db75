"""The new-sweep form's search fields (strategy random / tpe): the space rows, budget, objective and pruner become the
SweepRequest the API takes, the live line says what the search makes, bad values are 422 with the error next to
the field; and in chromium, a TPE search filled in and launched from the form shows its sweep page with the trials
chart."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from harness.stack import Stack
from tests.conftest import tiny_spec

STEPS = 4


def _base(tiny_assets: Any) -> str:
    training = {"max_steps": STEPS, "eval_steps": 2, "eval_generation_samples": 0}
    base = tiny_spec(tiny_assets, "unused", training=training)
    base.pop("name")
    return json.dumps(base)


def _form(tiny_assets: Any, **changes: str) -> dict[str, str]:
    form = {
        "name": "form search",
        "base": _base(tiny_assets),
        "strategy": "tpe",
        "vary-0-path": "method.r",  # the grid's rows are posted too (hidden): a search ignores them
        "vary-0-values": "4, 8",
        "space-0-path": "method.r",
        "space-0-type": "int",
        "space-0-low": "1",
        "space-0-high": "8",
        "space-0-choices": "",
        "space-1-path": "training.learning_rate",
        "space-1-type": "float",
        "space-1-low": "1e-4",
        "space-1-high": "3e-2",
        "space-1-log": "on",
        "space-1-choices": "",
        "space-2-path": "method.lora_dropout",
        "space-2-type": "choice",
        "space-2-low": "",
        "space-2-high": "",
        "space-2-choices": "0.0, 0.1",
        "space-3-path": "",
        "space-3-type": "float",
        "space-3-low": "",
        "space-3-high": "",
        "space-3-choices": "",
        "max_runs": "3",
        "max_concurrent": "1",
        "objective_metric": "best_eval_loss",
        "objective_direction": "minimize",
        "pruner": "hyperband",
        "seed": "5",
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v is not None}


def test_the_form_offers_the_search_fields(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:
        page = client.get("/sweeps/new").text
    for name in ("strategy", "space-0-path", "space-0-type", "space-0-log", "max_runs", "max_concurrent"):
        assert f'name="{name}"' in page, name
    for name in ("gpu_hours",):
        assert f'name="{name}"' in page, name
    for name in ("objective_metric", "objective_direction", "pruner"):
        assert f'name="{name}"' in page, name
    assert '<option value="tpe"' in page and '<option value="hyperband"' in page


def test_the_live_line_describes_the_search(sqlite_stack: Stack, tiny_assets: Any) -> None:
    with sqlite_stack.client() as client:
        answer = client.post("/sweeps/new/count", data=_form(tiny_assets))
    assert answer.status_code == 200, answer.text
    assert 'data-trial-count="3"' in answer.text and "hyperband pruner" in answer.text
    assert "<code>training.learning_rate</code> float 0.0001–0.03 (log)" in answer.text
    assert "<code>method.lora_dropout</code> categorical 0.0, 0.1" in answer.text


BAD = [
    ("low above high", {"space-0-low": "8", "space-0-high": "2"}, "space-0", "swap"),
    ("empty range", {"space-0-low": "4", "space-0-high": "4"}, "space-0", "empty range"),
    ("a bound that is no number", {"space-1-low": "tiny"}, "space-1", "low"),
    ("no choices", {"space-2-choices": " , "}, "space-2", "at least one"),
    ("a log range from zero", {"space-1-low": "0"}, "space-1", "low &gt; 0"),
    ("an unknown metric", {"objective_metric": "accuracy"}, "objective", "best_eval_loss"),
    ("more at once than in all", {"max_concurrent": "5"}, "budget", "above max_runs"),
    ("no device-hours", {"gpu_hours": "0"}, "budget", "greater than 0"),
    ("an unknown pruner", {"pruner": "asha"}, "pruner", "median"),
    ("a pruner on a maximised loss", {"objective_direction": "maximize"}, "pruner", "minimize"),
    ("a spec value out of bounds", {"space-0-low": "0"}, "space-0", ""),
    ("a field listed twice", {"space-1-path": "method.r"}, "space-1", "twice"),
    ("an unknown strategy", {"strategy": "bayes"}, "strategy", "tpe"),
]


@pytest.mark.parametrize(("changes", "anchor", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_search_fields_are_422_next_to_the_field(
    sqlite_stack: Stack, tiny_assets: Any, changes: dict[str, str], anchor: str, words: str
) -> None:
    with sqlite_stack.client() as client:
        before = len(client.get("/api/sweeps").json())
        answer = client.post("/sweeps", data=_form(tiny_assets, **changes), follow_redirects=False)
        assert answer.status_code == 422, answer.text
        marker = f'<span class="error" data-field="{anchor}">'
        assert marker in answer.text, answer.text[-3000:]
        next_to_it = answer.text.split(marker, 1)[1].split("</span>", 1)[0]
        assert words in next_to_it, next_to_it
        assert "This sweep cannot launch" in answer.text  # the summary above the button, as for a grid
        live = client.post("/sweeps/new/count", data=_form(tiny_assets, **changes))
        assert live.status_code == 200 and "This sweep cannot launch" in live.text
        assert len(client.get("/api/sweeps").json()) == before  # nothing stored


def test_a_grid_from_the_form_ignores_the_search_fields(sqlite_stack: Stack, tiny_assets: Any) -> None:
    form = _form(tiny_assets, strategy="grid", **{"space-0-low": "8", "space-0-high": "2"})
    with sqlite_stack.client() as client:
        answer = client.post("/sweeps/new/count", data=form)
    assert 'data-run-count="2"' in answer.text, answer.text


@pytest.mark.browser
def test_a_tpe_search_launched_from_the_form(
    sqlite_stack: Stack, tiny_assets: Any, chromium_browser: Any, browser_page: Any
) -> None:
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{sqlite_stack.base_url}/sweeps/new")
    assert page.locator("#sweep-search").is_hidden()
    page.fill("input[name=name]", "browser tpe")
    page.fill("textarea[name=base]", _base(tiny_assets))
    page.select_option("#sweep-strategy", "tpe")
    assert page.locator("#sweep-search").is_visible() and page.locator("fieldset[data-strategy=grid]").is_hidden()
    page.select_option("select[name=space-0-path]", "method.r")
    page.select_option("select[name=space-0-type]", "int")
    page.fill("input[name=space-0-low]", "2")
    page.fill("input[name=space-0-high]", "8")
    page.select_option("select[name=space-1-path]", "training.learning_rate")
    page.fill("input[name=space-1-low]", "1e-4")
    page.fill("input[name=space-1-high]", "3e-2")
    page.fill("input[name=max_runs]", "2")
    page.fill("input[name=max_concurrent]", "1")
    page.select_option("select[name=pruner]", "median")
    page.wait_for_selector("#sweep-count [data-trial-count='2']")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/sweeps/\d+$"))
    sweep_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    with sqlite_stack.client() as client:
        sweep = client.get(f"/api/sweeps/{sweep_id}").json()
        assert sweep["strategy"] == "tpe" and sweep["max_runs"] == 2
        assert set(sweep["request"]["space"]) == {"method.r", "training.learning_rate"}
        assert sweep["request"]["pruner"] == "median"
        deadline = time.monotonic() + 600
        while sweep["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
            sweep = client.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["total"] == 2 and sweep["state"] == "succeeded", sweep
    page.reload()
    page.wait_for_selector("#compare[data-views-drawn=true]")
    chart = page.locator("#cmp-trials-chart[data-drawn=true]")
    chart.wait_for()
    assert chart.get_attribute("data-points") == "2"
    assert chart.locator("canvas").count() == 1
    assert "Best so far" in page.inner_text("#cmp-trials-best")
    assert not errors, errors
