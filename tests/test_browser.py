"""The pages in a real browser (Debian's chromium through Playwright): charts drawn by uPlot, a loss curve
that grows while the run trains (no reload), htmx swapping the live block, the form's errors and redirect."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from harness.stack import Stack
from tests.conftest import tiny_spec
from tests.html import wait_for_running

# The browser first: without chromium the tests skip (or fail when required) before a stack is started.
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_browser")]

LOSS_CHART = 'figure.chart[data-keys="loss,eval_loss"]'
FINISHED_STEPS = 8

# How much of a chart's canvas is painted (non-transparent pixels): axes, grid and the series.
PAINTED_PIXELS = """(figure) => {
  const canvas = figure.querySelector("canvas");
  if (!canvas) return null;
  const box = canvas.getBoundingClientRect();
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
  return { width: box.width, height: box.height, painted };
}"""


@pytest.fixture(scope="module")
def finished_run(sqlite_stack: Stack, tiny_assets: Any) -> dict[str, Any]:
    spec = tiny_spec(
        tiny_assets,
        "browser-finished",
        training={"max_steps": FINISHED_STEPS, "eval_steps": 4, "eval_generation_samples": 0},
    )
    return sqlite_stack.train(spec)


@pytest.fixture(scope="module")
def long_run(sqlite_stack: Stack, tiny_assets: Any, finished_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A run that trains until it is cancelled (the last test cancels it from the page)."""
    spec = tiny_spec(tiny_assets, "browser-long", training={"max_steps": 100_000, "batch_size": 2, "eval_steps": 25})
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=spec)
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        try:
            yield wait_for_running(client, run_id)
        finally:
            client.post(f"/api/runs/{run_id}/cancel")
            sqlite_stack.wait_for_run(run_id)


@pytest.fixture
def page(browser_page: Any) -> Iterator[Any]:
    """The shared browser page, failing the test on any uncaught script error."""
    errors: list[str] = []
    browser_page.on("pageerror", lambda error: errors.append(str(error)))
    yield browser_page
    assert not errors, f"script errors on the page: {errors}"


def test_finished_run_chart_is_drawn(sqlite_stack: Stack, finished_run: dict[str, Any], page: Any) -> None:
    page.goto(f"{sqlite_stack.base_url}/runs/{finished_run['id']}")
    chart = page.locator(LOSS_CHART)
    chart.and_(page.locator('[data-drawn="true"]')).wait_for()
    assert chart.get_attribute("data-points") == str(FINISHED_STEPS)
    canvas = chart.evaluate(PAINTED_PIXELS)
    assert canvas is not None and canvas["width"] > 200 and canvas["height"] > 100, canvas
    assert canvas["painted"] > 1000, f"the canvas is (nearly) blank: {canvas}"
    legend = chart.locator(".u-legend").inner_text()
    assert "train loss" in legend and "eval loss" in legend
    # Every chart with data is drawn, each with a visible canvas.
    for figure in page.locator("figure.chart").all():
        figure.and_(page.locator('[data-drawn="true"]')).wait_for()
        assert figure.evaluate(PAINTED_PIXELS)["painted"] > 1000
    assert page.locator("#run-live").get_attribute("data-status") == "succeeded"


def test_failed_run_page_says_why(sqlite_stack: Stack, tiny_assets: Any, page: Any) -> None:
    empty = sqlite_stack.data_dir / "browser-empty.jsonl"
    empty.write_text("")
    spec = tiny_spec(tiny_assets, "browser-failed", dataset={"source": str(empty)})
    run = sqlite_stack.train(spec, status="failed")

    page.goto(f"{sqlite_stack.base_url}/runs/{run['id']}")
    alert = page.locator("#run-live .run-error[role=alert]")
    assert "is empty" in alert.inner_text() and alert.is_visible()
    # No metrics: each chart says so instead of staying an empty box.
    page.wait_for_function(
        "[...document.querySelectorAll('figure.chart .chart-empty')]"
        ".every((p) => p.textContent.includes('No metrics were recorded'))"
    )
    assert page.locator('figure.chart[data-drawn="true"]').count() == 0


def test_new_run_form_in_the_browser(
    sqlite_stack: Stack, tiny_assets: Any, long_run: dict[str, Any], page: Any
) -> None:
    page.goto(f"{sqlite_stack.base_url}/runs/new")
    method = page.locator('select[name="method.name"]')
    method.select_option("full")
    page.locator('input[name="method.freeze_embeddings"]').wait_for()
    assert page.locator('input[name="method.r"]').count() == 0
    method.select_option("lora")
    page.locator('input[name="method.r"]').wait_for()

    page.fill('input[name="name"]', "bad/name")
    page.fill('input[name="model"]', str(tiny_assets.model_dir))
    page.fill('input[name="dataset.source"]', str(tiny_assets.dataset_path))
    page.fill('input[name="training.max_steps"]', "5")
    page.locator('#run-form button[type="submit"]').click()
    # htmx swaps the 422 answer in: the errors show next to the field, what was typed stays.
    page.locator("#run-form .form-errors").wait_for()
    assert page.url.endswith("/runs/new")
    name_error = page.locator('label.has-error:has(input[name="name"]) .error').inner_text()
    assert "pattern" in name_error
    assert page.input_value('input[name="model"]') == str(tiny_assets.model_dir)

    page.fill('input[name="name"]', "browser-form-run")
    page.locator('#run-form button[type="submit"]').click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    assert "browser-form-run" in page.locator("h1").inner_text()
    with sqlite_stack.client() as client:  # queued behind the long run: cancelled before it trains
        run = client.get(f"/api/runs/{run_id}").json()
        assert (run["spec"]["training"]["max_steps"], run["spec"]["model"]) == (5, str(tiny_assets.model_dir))
        client.post(f"/api/runs/{run_id}/cancel")


SECTIONS = "#run-form details.form-section"


def _open_sections(page: Any) -> set[str]:
    return set(page.eval_on_selector_all(f"{SECTIONS}[open]", "els => els.map(e => e.dataset.section)"))


def test_new_run_form_essentials_first_sections_collapsed(
    sqlite_stack: Stack, tiny_assets: Any, finished_run: dict[str, Any], long_run: dict[str, Any], page: Any
) -> None:
    page.goto(f"{sqlite_stack.base_url}/runs/new")
    essentials = ["name", "model", "dataset.source", "method.name", "method.r", "method.lora_alpha"]
    essentials += ["training.max_steps", "training.learning_rate", "training.batch_size", "training.max_length"]
    for name in essentials:
        assert page.locator(f'[name="{name}"]').is_visible(), f"{name} is not visible"
    assert _open_sections(page) == set()
    keys = page.eval_on_selector_all(SECTIONS, "els => els.map(e => e.dataset.section)")
    assert keys == ["method", "dataset", "training", "placement"]
    for hidden in ("training.warmup_steps", "method.lora_dropout", "dataset.columns", "placement.priority"):
        assert not page.locator(f'[name="{hidden}"]').is_visible(), f"{hidden} shows in a closed section"

    # Open and close a section by hand.
    training = page.locator(f'{SECTIONS}[data-section="training"]')
    training.locator("summary").click()
    page.locator('[name="training.warmup_steps"]').wait_for(state="visible")
    training.locator("summary").click()
    page.locator('[name="training.warmup_steps"]').wait_for(state="hidden")

    # A bad value in a section closed again: the answer opens that section (only it) with the error beside the field.
    page.fill('input[name="name"]', "browser-sections")
    page.fill('input[name="model"]', str(tiny_assets.model_dir))
    page.fill('input[name="dataset.source"]', str(tiny_assets.dataset_path))
    page.fill('input[name="training.max_steps"]', "5")
    dataset = page.locator(f'{SECTIONS}[data-section="dataset"]')
    dataset.locator("summary").click()
    page.fill('input[name="dataset.columns"]', "no-equals-sign")
    dataset.locator("summary").click()
    assert _open_sections(page) == set()
    page.locator('#run-form button[type="submit"]').click()
    page.locator("#run-form .form-errors").wait_for()
    assert _open_sections(page) == {"dataset"}
    error = page.locator('label.has-error:has(input[name="dataset.columns"]) .error')
    assert error.is_visible() and error.inner_text()
    assert page.input_value('input[name="training.max_steps"]') == "5"

    # Fixed, it launches.
    page.fill('input[name="dataset.columns"]', "")
    page.locator('#run-form button[type="submit"]').click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    with sqlite_stack.client() as client:  # queued behind the long run: cancelled before it trains
        run = client.get(f"/api/runs/{run_id}").json()
        assert (run["name"], run["spec"]["training"]["max_steps"]) == ("browser-sections", 5)
        client.post(f"/api/runs/{run_id}/cancel")

    # A course preset, and "start from run #N".
    page.goto(f"{sqlite_stack.base_url}/runs/new")
    page.get_by_role("link", name="P-Tuning v2").click()
    page.wait_for_url(re.compile(r"preset=p-tuning-v2"))
    assert page.input_value('select[name="method.name"]') == "p_tuning_v2"
    assert float(page.input_value('input[name="training.learning_rate"]')) == 1e-2
    page.fill('input[name="clone"]', str(finished_run["id"]))
    page.get_by_role("button", name="Start from run").click()
    page.wait_for_url(re.compile(rf"clone={finished_run['id']}"))
    assert page.input_value('input[name="name"]') == f"{finished_run['name']}-copy"
    assert page.input_value('input[name="training.max_steps"]') == str(FINISHED_STEPS)
    # Its changed settings (max_samples; eval_steps, eval_generation_samples) open those sections, nothing else.
    assert _open_sections(page) == {"dataset", "training"}


def test_running_run_curve_grows_without_reload(sqlite_stack: Stack, long_run: dict[str, Any], page: Any) -> None:
    run_id = long_run["id"]
    page.goto(f"{sqlite_stack.base_url}/runs/{run_id}")
    chart = page.locator(LOSS_CHART)
    chart.and_(page.locator('[data-drawn="true"]')).wait_for()
    page.evaluate("window.__sameDocument = true")
    points = int(chart.get_attribute("data-points"))
    step = int(page.locator("#run-live [role=progressbar]").get_attribute("aria-valuenow"))

    page.wait_for_function(f"document.querySelector('{LOSS_CHART}').dataset.points > {points + 2}", timeout=120_000)
    page.wait_for_function(
        f"document.querySelector('#run-live [role=progressbar]').getAttribute('aria-valuenow') > {step}"
    )
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert chart.evaluate(PAINTED_PIXELS)["painted"] > 1000

    # Cancel from the page: htmx swaps the live block, which keeps polling until the run has stopped.
    dialogs: list[str] = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))  # hx-confirm asks first
    page.locator("#run-live button", has_text="Cancel").click()
    page.locator('#run-live[data-status="cancelled"]').wait_for(timeout=120_000)
    assert page.locator("#run-live .badge").inner_text() == "cancelled"
    assert dialogs and "Cancel run" in dialogs[0], dialogs
    assert page.locator("#run-live button", has_text="Cancel").count() == 0
    assert page.evaluate("window.__sameDocument") is True
