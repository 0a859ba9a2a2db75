"""The comparison's views and its read path at scale: a grid of LoRA rank × learning rate × 2 seeds whose runs are
written through the workers' own state calls (claim, record_progress, finish_run, which rolls their series up),
served by a real `tunedeck serve --no-worker` on SQLite: parallel coordinates, PED-ANOVA importances, grouping by a
config field, the rollups giving exactly the curves every point gives, 4xx for bad view parameters, and the views
drawn and brushed in chromium."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.stack import Stack, stack_env

RANKS = (2, 8, 32)
RATES = (1e-4, 1e-3)
SEEDS = (1, 2)
STEPS = 3000  # more than a rollup keeps whole (tunedeck_state.rollups.WHOLE_POINTS)


def _eval_loss(r: int, lr: float, seed: int) -> float:
    return 1.0 + 3.0 / r + (0.02 if lr > 5e-4 else 0.0) + 0.005 * seed  # the rank matters most


def _point_at(data_dir: Path) -> None:
    from tunedeck_state.db import get_engine, get_sessionmaker
    from tunedeck_state.settings import get_settings

    os.environ["TUNEDECK_DATA_DIR"] = str(data_dir)
    os.environ.pop("TUNEDECK_DATABASE_URL", None)
    for cached in (get_settings, get_engine, get_sessionmaker):
        cached.cache_clear()


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[int]]]:
    from runspec import RunSpec
    from tunedeck_state import runs as run_service
    from tunedeck_state.db import get_engine, session_scope
    from tunedeck_state.models import RunStatus

    data_dir = tmp_path_factory.mktemp("compare-views")
    saved = {k: os.environ.get(k) for k in ("TUNEDECK_DATA_DIR", "TUNEDECK_DATABASE_URL")}
    stack = Stack(data_dir=data_dir, env=stack_env(data_dir))
    stack.start_server()  # applies the migrations
    _point_at(data_dir)
    ids = []
    rng = random.Random(3)
    try:
        for r in RANKS:
            for lr in RATES:
                for seed in SEEDS:
                    spec = RunSpec.model_validate(
                        {
                            "name": f"r{r}-lr{lr:g}-s{seed}",
                            "model": str(data_dir / "model"),
                            "dataset": {"source": str(data_dir / "data.jsonl")},
                            "method": {"name": "lora", "r": r},
                            "training": {"max_steps": STEPS, "learning_rate": lr, "seed": seed},
                        }
                    )
                    final = _eval_loss(r, lr, seed)
                    points = [
                        (s, "loss", final + 2.0 * math.exp(-s / 500) + rng.gauss(0, 0.05)) for s in range(1, STEPS + 1)
                    ]
                    points += [(s, "eval_loss", final + 1.0 * (1 - s / STEPS)) for s in range(300, STEPS + 1, 300)]
                    with session_scope() as session:
                        run_id = run_service.create_run(session, spec).id
                    with session_scope() as session:
                        assert run_service.claim_run(session, run_id, 1, "test-worker")
                        update_ = run_service.ProgressUpdate(step=STEPS, max_steps=STEPS, metrics=points)
                        run_service.record_progress(session, run_id, update_, attempt=1)
                        outcome = run_service.RunOutcome(status=RunStatus.succeeded, final_eval_loss=final)
                        assert run_service.finish_run(session, run_id, outcome, attempt=1)
                    ids.append(run_id)
        yield stack, ids
    finally:
        stack.stop()
        get_engine().dispose()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _compare(stack: Stack, ids: list[int], **params: Any) -> Any:
    with stack.client() as client:
        return client.get("/api/compare", params={"run_ids": ",".join(map(str, ids)), **params})


def test_parallel_coordinates_importances_and_groups(grid: tuple[Stack, list[int]]) -> None:
    stack, ids = grid
    answer = _compare(stack, ids)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    par = data["parallel"]
    assert [a["key"] for a in par["axes"]] == ["method.r", "training.learning_rate", "best_eval_loss"]  # no seed
    assert par["axes"][0]["log"] is True and par["axes"][0]["type"] == "int"
    assert len(par["points"]) == len(ids)
    best = min(par["points"], key=lambda p: p["values"]["best_eval_loss"])
    assert par["best_run_id"] == best["run_id"] and best["values"]["method.r"] == 32

    importance = data["importance"]
    assert importance["trials"] == len(ids) and not importance["reason"]
    shares = {p["key"]: p["importance"] for p in importance["params"]}
    assert set(shares) == {"method.r", "training.learning_rate"}
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6)
    assert shares["method.r"] > shares["training.learning_rate"]

    grouped = _compare(stack, ids, group_by="method.r").json()
    assert grouped["group_by"] == ["method.r"]
    assert sorted((g["label"], g["n"]) for g in grouped["groups"]) == [("r=2", 4), ("r=32", 4), ("r=8", 4)]
    r8 = next(g for g in grouped["groups"] if g["label"] == "r=8")
    expected = [_eval_loss(8, lr, s) for lr in RATES for s in SEEDS]
    assert math.isclose(r8["stats"]["best_eval_loss"]["mean"], float(np.mean(expected)), rel_tol=1e-9)
    assert math.isclose(r8["stats"]["best_eval_loss"]["std"], float(np.std(expected)), rel_tol=1e-6)
    bands = grouped["group_curves"]["eval_loss"]
    assert len(bands) == 3 and all(max(b["n"]) == 4 for b in bands)


def test_trials_view_in_creation_order_with_the_best_so_far(grid: tuple[Stack, list[int]]) -> None:
    stack, ids = grid
    trials = _compare(stack, list(reversed(ids))).json()["trials"]  # the order asked for is not the trial order
    assert trials["order"] == "creation"
    assert [p["run_id"] for p in trials["points"]] == ids
    assert {p["state"] for p in trials["points"]} == {"succeeded"}
    values = [p["value"] for p in trials["points"]]
    assert [p["best_so_far"] for p in trials["points"]] == [min(values[: i + 1]) for i in range(len(values))]
    assert trials["best_run_id"] == min(trials["points"], key=lambda p: p["value"])["run_id"]
    by_loss = _compare(stack, ids, objective="final_train_loss").json()["trials"]
    assert by_loss["objective"]["key"] == "final_train_loss" and by_loss["objective"]["lower_is_better"]


def test_bad_view_parameters_are_422_naming_the_field(grid: tuple[Stack, list[int]]) -> None:
    stack, ids = grid
    answer = _compare(stack, ids, objective="accuracy")
    assert answer.status_code == 422 and "objective" in answer.text and "best_eval_loss" in answer.text
    answer = _compare(stack, ids, group_by="method.rank")
    assert answer.status_code == 422 and "group_by" in answer.text and "method.rank" in answer.text


def test_curves_from_rollups_are_the_curves_of_every_point(grid: tuple[Stack, list[int]]) -> None:
    """The server's first comparison reads the finished runs' rollups; bucketing every stored point gives the same."""
    from app.services.downsample import minmax_buckets, nice_width
    from tunedeck_state.db import session_scope
    from tunedeck_state.rollups import read_rollups
    from tunedeck_state.runs import metric_series

    stack, ids = grid
    data = _compare(stack, ids).json()
    curve = data["curves"]["loss"]
    assert curve["downsampled"] and curve["bucket_width"] == nice_width(STEPS, 499)
    with session_scope() as session:
        assert set(read_rollups(session, [(i, 1) for i in ids])) == set(ids)
        for series in curve["series"][:3]:
            points = metric_series(session, series["run_id"], key="loss")["loss"]
            steps = [float(step) for step, _ in points]
            values = [value for _, value in points]
            assert (series["x"], series["y"]) == minmax_buckets(steps, values, curve["bucket_width"])


def test_rollups_rebucket_exactly_at_every_chart_width() -> None:
    from app.services.downsample import minmax_arrays, minmax_buckets, nice_width
    from tunedeck_state.rollups import is_multiple, roll_up

    rng = random.Random(5)
    for trial in range(40):
        n = rng.choice((2500, 10_000, 12_345))
        steps = sorted(rng.sample(range(1, 3 * n), n)) if trial % 2 else list(range(1, n + 1))
        values = [float(rng.choice((1, 2))) if trial % 3 == 0 else rng.gauss(0, 1) for _ in steps]  # ties too
        rollup = roll_up(steps, values, 1)
        xs, ys = np.frombuffer(rollup.xs, "<f8"), np.frombuffer(rollup.ys, "<f8")
        assert len(xs) <= 4000  # twice at most 2,000 buckets: the chart's finest width or half of it
        for longer in (0, 700, 90_000):  # the chart's longest run may be another one
            for max_points in (1000, 400):
                width = nice_width(steps[-1] + longer, max_points // 2 - 1)
                assert is_multiple(width, rollup.width)
                assert minmax_arrays(xs, ys, width) == minmax_buckets([float(s) for s in steps], values, width)


@pytest.mark.browser
def test_views_render_and_brushing_filters_the_table(grid: tuple[Stack, list[int]], browser_page: Any) -> None:
    stack, ids = grid
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.base_url}/compare?run_ids={','.join(map(str, ids))}")
    page.wait_for_selector("#compare[data-ready=true]")
    assert not errors
    page.wait_for_selector("#compare[data-views-drawn=true]")
    assert page.locator("#cmp-parallel-svg polyline").count() == len(ids)
    outside = page.evaluate(
        """() => {
          const svg = document.getElementById("cmp-parallel-svg"), width = svg.width.baseVal.value;
          return [...svg.querySelectorAll("g.axis text")]
            .filter((t) => { const b = t.getBBox(); return b.x < 0 || b.x + b.width > width; })
            .map((t) => t.textContent);
        }"""
    )
    assert outside == []  # axis titles and ticks inside the drawing (the objective's title was cut at the right)
    assert page.locator("#cmp-importance-table tr").first.get_attribute("data-param") == "method.r"
    assert page.locator("#cmp-runs-table tbody tr:not([hidden])").count() == len(ids)
    trials = page.locator(f"#cmp-trials-chart[data-drawn=true][data-points='{len(ids)}']")
    assert trials.count() == 1 and "Best so far" in page.inner_text("#cmp-trials-best")
    page.check("#cmp-trials-succeeded")
    assert "trials=succeeded" in page.url

    # Brush the rank axis around r=32 (its top end, log scale): only the 4 rank-32 runs stay in the table.
    brush_area = page.locator("g.axis[data-axis='method.r'] rect.brush-area")
    brush_area.scroll_into_view_if_needed()
    area = brush_area.bounding_box()
    assert area is not None
    x = area["x"] + area["width"] / 2
    page.mouse.move(x, area["y"] + area["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(x, area["y"] - 20, steps=5)  # past the axis' top: clamped to it
    page.mouse.up()
    page.wait_for_function("document.getElementById('cmp-runs-table').dataset.shown === '4'")
    shown = page.locator("#cmp-runs-table tbody tr:not([hidden]) td[data-key=name]").all_inner_texts()
    assert sorted(shown) == sorted(f"r32-lr{lr:g}-s{s}" for lr in RATES for s in SEEDS)
    assert "brush=method.r" in page.url  # the view is in the URL

    # Sorting redraws the table: the brush still holds. Grouping by the rank draws mean ± std curves.
    page.locator("#cmp-runs-table th[data-key=best_eval_loss]").click()
    assert page.locator("#cmp-runs-table tbody tr:not([hidden])").count() == 4
    page.select_option("#cmp-group-by", "method.r")
    page.wait_for_selector("#cmp-group-curves figure[data-key=loss][data-groups='3'][data-drawn=true]")
    assert "group_by=method.r" in page.url
    page.reload()  # the URL brings the same view back
    page.wait_for_selector("#compare[data-views-drawn=true]")
    assert page.locator("#cmp-trials-succeeded").is_checked()
    page.wait_for_function("document.getElementById('cmp-runs-table').dataset.shown === '4'")
    assert page.locator("#cmp-group-by").input_value() == "method.r"


def _ended(data_dir: Path, name: str, status: Any, eval_losses: list[float]) -> int:
    """A run written through the workers' state calls, ended in `status` after reporting these eval losses."""
    from runspec import RunSpec
    from tunedeck_state import runs as run_service
    from tunedeck_state.db import session_scope

    spec = RunSpec.model_validate(
        {
            "name": name,
            "model": str(data_dir / "model"),
            "dataset": {"source": str(data_dir / "data.jsonl")},
            "method": {"name": "lora", "r": 4},
            "training": {"max_steps": 100},
        }
    )
    with session_scope() as session:
        run_id = run_service.create_run(session, spec).id
    with session_scope() as session:
        assert run_service.claim_run(session, run_id, 1, "test-worker")
        points = [(10 * (i + 1), "eval_loss", v) for i, v in enumerate(eval_losses)]
        update_ = run_service.ProgressUpdate(step=10 * len(points), max_steps=100, metrics=points)
        run_service.record_progress(session, run_id, update_, attempt=1)
        assert run_service.finish_run(session, run_id, run_service.RunOutcome(status=status), attempt=1)
    return run_id


@pytest.mark.browser
def test_trials_chart_marks_pruned_and_failed_runs(grid: tuple[Stack, list[int]], browser_page: Any) -> None:
    from tunedeck_state.models import RunStatus

    stack, ids = grid
    pruned = _ended(stack.data_dir, "stopped early", RunStatus.pruned, [0.5])  # lower than any: not the best
    failed = _ended(stack.data_dir, "broke", RunStatus.failed, [])
    chosen = [*ids[:3], pruned, failed]
    trials = _compare(stack, chosen).json()["trials"]
    assert [p["state"] for p in trials["points"]] == ["succeeded"] * 3 + ["pruned", "failed"]
    best = min(trials["points"][:3], key=lambda p: p["value"])
    assert trials["best_run_id"] == best["run_id"] and trials["points"][3]["best_so_far"] == best["value"]
    assert trials["points"][3]["value"] == 0.5 and trials["points"][4]["value"] is None

    page = browser_page
    page.goto(f"{stack.base_url}/compare?run_ids={','.join(map(str, chosen))}")
    chart = page.locator("#cmp-trials-chart[data-drawn=true]")
    chart.wait_for()
    assert chart.get_attribute("data-points") == "4" and chart.get_attribute("data-pruned") == "1"
    assert chart.get_attribute("data-best-run-id") == str(best["run_id"])
    legend = chart.locator(".u-legend").inner_text()
    assert "pruned" in legend and "best so far" in legend
    page.check("#cmp-trials-succeeded")  # only succeeded runs: the pruned point is gone
    page.locator("#cmp-trials-chart[data-drawn=true][data-points='3'][data-pruned='0']").wait_for()
