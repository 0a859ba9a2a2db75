"""Search sweeps end to end: a TPE sweep with a median pruner over LoRA rank × learning rate on the tiny Bloom, trained
by real Celery workers (training + service, which asks for the next trial as each run ends) on SQLite; pruned trials
are shown with their reason and resume to the end. And the 4xx for bad search fields."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from harness.stack import ROOT, Stack, running_stack, stack_env
from tests.conftest import tiny_spec

TRIALS = 4
STEPS = 8


def _started(data_dir: Any, **env: Any) -> Iterator[Stack]:
    """A stack whose steps take a little while, so a pruning decision reaches the run before it ends."""
    yield from running_stack(data_dir, stack_env(data_dir, TUNEDECK_TEST_STEP_DELAY_SECONDS="0.4", **env))


@pytest.fixture(scope="module")
def search_stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    yield from _started(tmp_path_factory.mktemp("search-stack"))


@pytest.fixture(scope="module")
def search_stack_postgres(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    """PostgreSQL (a database of its own) and Redis (a database number of its own: no other stack's worker)."""
    import redis
    import sqlalchemy as sa

    from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL, _services_unavailable

    name = f"tunedeck_search_{uuid.uuid4().hex[:10]}"
    broker = REDIS_URL.rsplit("/", 1)[0] + "/14"
    try:
        redis.Redis.from_url(broker).flushdb()
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _services_unavailable(f"PostgreSQL or Redis unreachable: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield from _started(tmp_path_factory.mktemp("search-pg"), database_url=url, broker_url=broker)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _body(tiny_assets: Any, **changes: Any) -> dict[str, Any]:
    training = {"max_steps": STEPS, "eval_steps": 2, "learning_rate": 1e-3, "eval_generation_samples": 0}
    base = tiny_spec(tiny_assets, "unused", training=training)
    base.pop("name")
    body: dict[str, Any] = {
        "name": "tpe search",
        "base": base,
        "strategy": "tpe",
        "space": {
            "method.r": {"type": "int", "low": 1, "high": 8},
            "training.learning_rate": {"type": "float", "low": 1e-6, "high": 3e-2, "log": True},
        },
        "objective": {"metric": "best_eval_loss", "direction": "minimize"},
        "budget": {"max_runs": TRIALS, "max_concurrent": 1},
        "pruner": {"type": "median", "n_startup_trials": 1},
        "seed": 3,
    }
    body.update(changes)
    return body


BAD = [
    ("empty range", {"space": {"method.r": {"type": "int", "low": 4, "high": 4}}}, "space.method.r", "empty range"),
    ("low above high", {"space": {"method.r": {"type": "int", "low": 8, "high": 2}}}, "space.method.r", "swap"),
    (
        "log from zero",
        {"space": {"training.learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}},
        "space.training.learning_rate",
        "low > 0",
    ),
    ("no choices", {"space": {"method.r": []}}, "space.method.r", "at least one"),
    ("unknown metric", {"objective": {"metric": "accuracy"}}, "objective.metric", "best_eval_loss"),
    ("unknown path", {"space": {"method.rank": [2, 4]}}, "space.method.rank", ""),
    ("grid with a range", {"strategy": "grid"}, "space.method.r", "random or tpe"),
    ("concurrency above budget", {"budget": {"max_runs": 2, "max_concurrent": 3}}, "budget", "max_runs"),
    ("unknown pruner", {"pruner": "asha"}, "pruner", ""),
    ("no device-hours", {"budget": {"max_runs": 2, "gpu_hours": 0}}, "budget.gpu_hours", "greater than 0"),
    ("grid and tpe", {"grid": {"method.r": [2, 4]}}, "grid", "put the values in space"),
    (
        "method parameters outside the sub-space",
        {"space": {"method.name": ["lora", "prompt_tuning"], "method.r": [2, 4]}},
        "space.method.r",
        "sub-space",
    ),
    ("out of the spec's bounds", {"space": {"method.r": {"type": "int", "low": 0, "high": 4}}}, "space.method.r", ""),
]


@pytest.mark.parametrize(("changes", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_search_fields_are_422_naming_the_field(
    search_stack: Stack, tiny_assets: Any, changes: dict[str, Any], field: str, words: str
) -> None:
    body = _body(tiny_assets, **changes)
    with search_stack.client() as client:
        for url in ("/api/sweeps/preview", "/api/sweeps"):
            response = client.post(url, json=body)
            assert response.status_code == 422, response.text
            detail = response.json()["detail"]
            located = [".".join(str(p) for p in d["loc"][1:]) for d in detail]
            assert any(loc.startswith(field) for loc in located), (located, detail)
            assert words in response.text
        assert client.get("/api/sweeps").json() == [] or all(
            s["name"] != body["name"] for s in client.get("/api/sweeps").json()
        )


def test_preview_shows_the_space_and_the_budget(search_stack: Stack, tiny_assets: Any) -> None:
    with search_stack.client() as client:
        response = client.post("/api/sweeps/preview", json=_body(tiny_assets))
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["count"] == TRIALS and preview["strategy"] == "tpe"
    assert preview["space"]["method.r"] == {"distribution": "int", "low": 1, "high": 8, "log": False}
    assert preview["space"]["training.learning_rate"]["log"] is True
    assert preview["budget"] == {"max_runs": TRIALS, "max_concurrent": 1}


def _wait_sweep(client: Any, sweep_id: int, timeout: float = 900, concurrent: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = client.get(f"/api/sweeps/{sweep_id}").json()
        in_flight = sweep["counts"].get("queued", 0) + sweep["counts"].get("running", 0)
        assert in_flight <= concurrent, sweep["counts"]
        if sweep["state"] not in ("queued", "running"):
            return sweep
        time.sleep(1)
    raise TimeoutError(f"sweep {sweep_id}: {sweep['state']} {sweep['counts']}")


def test_tpe_sweep_with_median_pruner_end_to_end(
    search_stack: Stack, tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SQLite: launched by `tunedeck sweep FILE`, followed through the API."""
    _tpe_sweep_end_to_end(search_stack, tiny_assets, tmp_path_factory)


@pytest.mark.services
def test_tpe_sweep_with_median_pruner_on_postgres(
    search_stack_postgres: Stack, tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _tpe_sweep_end_to_end(search_stack_postgres, tiny_assets, tmp_path_factory)


def _tpe_sweep_end_to_end(search_stack: Stack, tiny_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("search") / "search.yaml"
    path.write_text(yaml.safe_dump(_body(tiny_assets)))
    env = {k: v for k, v in search_stack.env.items() if not k.startswith("TUNEDECK_")}
    command = [sys.executable, "-m", "tunedeck_cli.main", "sweep", str(path), "--url", search_stack.base_url]
    launched = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert f"tpe search of {TRIALS} trials, 1 queued" in launched.stdout, launched.stdout
    sweep_id = int(re.search(r"sweep #(\d+)", launched.stdout).group(1))  # type: ignore[union-attr]
    with search_stack.client() as client:
        created = client.get(f"/api/sweeps/{sweep_id}").json()
        assert created["strategy"] == "tpe" and created["max_runs"] == TRIALS
        assert created["total"] < TRIALS  # max_concurrent 1: one trial asked at first, the next as each run ends
        sweep = _wait_sweep(client, created["id"])
        assert sweep["total"] == TRIALS, sweep
        statuses = {run["status"] for run in sweep["runs"]}
        assert statuses <= {"succeeded", "pruned"}, sweep["runs"]
        assert sweep["state"] == "succeeded"
        params = [run["params"] for run in sweep["runs"]]
        assert all(set(p) == {"method.r", "training.learning_rate"} for p in params)
        assert len({(p["method.r"], p["training.learning_rate"]) for p in params}) == TRIALS
        for run in sweep["runs"]:  # each trial's spec holds its own values
            spec = client.get(f"/api/runs/{run['id']}").json()["spec"]
            assert spec["method"]["r"] == run["params"]["method.r"]
            assert spec["training"]["learning_rate"] == pytest.approx(run["params"]["training.learning_rate"])
        pruned = [run for run in sweep["runs"] if run["status"] == "pruned"]
        assert pruned, f"no trial was pruned: {[(r['params'], r['final_eval_loss']) for r in sweep['runs']]}"
        run = pruned[0]
        assert "is above the median" in run["prune_reason"] and "at step" in run["prune_reason"]
        assert run["step"] < STEPS
        assert sweep["steps_saved"] == sum(STEPS - r["step"] for r in pruned)

        # the objective trial by trial: the sweep's trial order, each run's state, the best of the succeeded ones
        trials = client.get("/api/compare", params={"sweep_id": sweep["id"]}).json()["trials"]
        assert trials["order"] == "sweep trial" and [p["number"] for p in trials["points"]] == list(range(TRIALS))
        assert {p["run_id"]: p["state"] for p in trials["points"]} == {r["id"]: r["status"] for r in sweep["runs"]}
        succeeded = [p["value"] for p in trials["points"] if p["state"] == "succeeded"]
        assert trials["best_value"] == min(succeeded) and trials["points"][-1]["best_so_far"] == min(succeeded)

        page = client.get(f"/sweeps/{sweep['id']}").text
        assert "pruned" in page and run["prune_reason"] in page and "GPU-steps" in page
        run_page = client.get(f"/runs/{run['id']}").text
        assert 'id="prune-reason"' in run_page and 'id="resume-run"' in run_page

        resumed = client.post(f"/api/runs/{run['id']}/resume")
        assert resumed.status_code == 200, resumed.text
        finished = search_stack.wait_for_run(run["id"], timeout=300)
        assert finished["status"] == "succeeded" and finished["step"] == STEPS
        assert finished["prune_reason"] is None
        assert finished["attempt"] == 2
        after = client.get(f"/api/sweeps/{sweep['id']}").json()
        assert after["total"] == TRIALS  # the budget was spent: resuming asks for no new trial


def test_random_sweep_with_hyperband_pruner_end_to_end(search_stack: Stack, tiny_assets: Any) -> None:
    """Hyperband on the real stack (SQLite), small: 4 trials of 8 steps, an eval every 2 (rungs at steps 2, 4 and 8
    with reduction factor 2). Every trial's eval losses reach the pruner: each is judged at its bracket's rungs,
    and the rungs it was judged at are kept on the sweep (and shown on its page); a pruned one says why."""
    body = _body(
        tiny_assets,
        name="hyperband search",
        strategy="random",
        pruner={"type": "hyperband", "reduction_factor": 2},
        budget={"max_runs": TRIALS, "max_concurrent": 2},
        seed=11,
    )
    with search_stack.client() as client:
        created = client.post("/api/sweeps", json=body)
        assert created.status_code == 201, created.text
        sweep = _wait_sweep(client, created.json()["id"], concurrent=2)
        assert sweep["total"] == TRIALS and sweep["state"] == "succeeded", sweep
        runs = sweep["runs"]
        assert {run["status"] for run in runs} <= {"succeeded", "pruned"}, runs
        assert all(run["rungs"] for run in runs), [(r["name"], r["status"], r["rungs"]) for r in runs]
        for run in runs:
            if run["status"] == "pruned":  # judged at its last rung and stopped there
                assert "hyperband" in run["prune_reason"] and "not among the best 1/2" in run["prune_reason"]
                assert run["step"] < STEPS
            else:
                assert run["prune_reason"] is None and run["step"] == STEPS
        page = client.get(f"/sweeps/{sweep['id']}").text
        assert page.count('class="pruner-rungs"') == TRIALS
        assert "hyperband rung" in page or "stopped at the last" in page


def test_a_spent_device_hours_budget_asks_for_no_more_trials(search_stack: Stack, tiny_assets: Any) -> None:
    """budget.gpu_hours 0.0001 (0.36 s) is spent by the first trial (8 steps of at least 0.4 s): no second trial is
    asked, and the sweep ends with one of its four, saying why."""
    budget = {"max_runs": TRIALS, "max_concurrent": 1, "gpu_hours": 0.0001}
    body = _body(tiny_assets, name="device-hours budget", strategy="random", pruner=None, budget=budget, seed=5)
    with search_stack.client() as client:
        preview = client.post("/api/sweeps/preview", json=body).json()
        assert preview["budget"] == budget
        created = client.post("/api/sweeps", json=body)
        assert created.status_code == 201, created.text
        sweep = _wait_sweep(client, created.json()["id"])
        assert (sweep["total"], sweep["state"], sweep["max_runs"]) == (1, "succeeded", TRIALS), sweep
        assert sweep["gpu_hours"] == 0.0001 and sweep["device_hours"] >= 8 * 0.4 / 3600
        page = client.get(f"/sweeps/{sweep['id']}").text
        assert 'id="device-hours"' in page and "spent, no more trials" in page
