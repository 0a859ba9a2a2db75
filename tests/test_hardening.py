"""What probing a running tunedeck found (issue 16), each held by a test against real processes.

One stack for the module: a server, a training worker, a service worker started in a folder with files planted in it
(a `notes.json` and an extension-less key file: what `load_dataset("json")` would read from its current folder)
and a quick worker (estimates, inspections, checks and previews never wait behind a generation)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.stack import ROOT, Stack, stack_env
from tests.conftest import tiny_spec

pytestmark = pytest.mark.security

SECRET = "planted-secret-7d1f"
#: How long the stack's server waits for a generation (then 503, and the request is revoked).
GENERATE_TIMEOUT = 20
#: The stack's generation budget: room for a request that runs far past GENERATE_TIMEOUT even on a fast machine.
BUDGET = 12 * 2048
PACKAGED_NAMES = ["json", "text", "parquet", "csv", "JSON", "pandas", "arrow"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service worker's start folder: files a packaged loader name would pick up."""
    folder = tmp_path_factory.mktemp("worker-cwd")
    (folder / "notes.json").write_text(json.dumps({"instruction": SECRET, "output": SECRET}) + "\n")
    (folder / "notes.txt").write_text(f"{SECRET}\n")
    (folder / "id_key").write_text(f"{SECRET}\n")
    (folder / "org" / "name").mkdir(parents=True)
    (folder / "org" / "name" / "rows.json").write_text(json.dumps({"instruction": SECRET, "output": SECRET}) + "\n")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any, planted: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("hardening-stack")
    env = stack_env(
        data_dir,
        TUNEDECK_DATA_ROOTS=str(ROOT),
        TUNEDECK_GENERATE_TIMEOUT_SECONDS=str(GENERATE_TIMEOUT),
        TUNEDECK_GENERATION_BATCH_SIZE="1",  # one prompt at a time: a request long enough to hold the worker
        TUNEDECK_GENERATION_MAX_TOTAL_NEW_TOKENS=str(BUDGET),
    )
    stack = Stack(data_dir=data_dir, env=env)
    try:
        stack.start_server()
        stack.start_worker("training")
        stack.start_worker("service", cwd=planted)
        stack.start_worker("quick")
        yield stack
    finally:
        stack.stop()


def _warm(stack: Stack, tiny_assets: Any) -> None:
    with stack.client() as client:
        answer = client.post("/api/models/inspect", json={"model": str(tiny_assets.model_dir)}, timeout=180)
        assert answer.status_code == 200, answer.text


# -- 1. packaged loader names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PACKAGED_NAMES)
def test_packaged_builder_names_are_refused_on_submit(stack: Stack, tiny_assets: Any, name: str) -> None:
    spec = tiny_spec(tiny_assets, f"packaged-{name}", dataset={"source": name}, training={"max_steps": 1})
    with stack.client() as client:
        answer = client.post("/api/runs", json=spec)
        registered = client.post("/api/datasets/register", json={"source": name, "format": "alpaca"})
    assert answer.status_code == 422, answer.text
    assert any(error["field"] == "dataset.source" for error in answer.json()["detail"]), answer.text
    assert "loader built into the datasets library" in answer.text
    assert registered.status_code == 422, registered.text
    assert "loader built into" in registered.text


def test_preview_of_a_stored_builder_name_is_refused_by_the_worker(
    stack: Stack, tiny_assets: Any, planted: Path
) -> None:
    """A dataset row that says `json` (stored before the web refused it) reaches the worker: it refuses too, and
    the planted file in its start folder never comes back."""
    _warm(stack, tiny_assets)
    with stack.client() as client:
        registered = client.post(
            "/api/datasets/register", json={"source": str(tiny_assets.dataset_path), "format": "alpaca"}
        )
        assert registered.status_code in (200, 201), registered.text
        dataset_id = registered.json()["id"]
        with sqlite3.connect(stack.data_dir / "tunedeck.sqlite") as db:
            db.execute("UPDATE datasets SET source = 'json' WHERE id = ?", (dataset_id,))
        try:
            answer = client.get(
                f"/api/datasets/{dataset_id}/preview", params={"model": str(tiny_assets.model_dir)}, timeout=120
            )
        finally:
            with sqlite3.connect(stack.data_dir / "tunedeck.sqlite") as db:
                db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
    assert answer.status_code == 422, answer.text
    assert "loader built into the datasets library" in answer.text
    assert SECRET not in answer.text


def test_the_loader_refuses_builder_names_and_reads_hub_ids_only_from_the_hub(
    tmp_path: Path, planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth, in the worker's own loader: a packaged name is refused even when the policy would let it
    through, and a hub id never reads the folder of that name in the current directory."""
    import datasets

    from runspec import DatasetSpec
    from runspec.sources import SourcePolicy
    from worker.training import loading
    from worker.training.data import load_rows
    from worker.training.errors import TrainingError

    previous = loading.current_policy()  # restored as it was: SourcePolicy.default() would read the planted cwd
    monkeypatch.chdir(planted)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    # The policy's base folder is elsewhere, so it takes `org/name` for a hub id (as a web process would).
    loading.set_policy(SourcePolicy(data_roots=(planted,), base_dir=tmp_path))
    try:
        for name in ("json", "text", "parquet"):
            with pytest.raises(TrainingError, match="loader built into the datasets library"):
                load_rows(DatasetSpec(source=name))
        with pytest.raises(TrainingError, match="Hugging Face hub") as refused:
            load_rows(DatasetSpec(source="org/name"))
        assert SECRET not in str(refused.value)
    finally:
        loading.set_policy(previous)


def test_the_policy_knows_every_packaged_builder_of_the_installed_datasets() -> None:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    from runspec.sources import PACKAGED_DATASET_BUILDERS

    assert set(_PACKAGED_DATASETS_MODULES) <= PACKAGED_DATASET_BUILDERS


def test_datasets_floor_never_unpickles() -> None:
    """pyproject's lower bound for `datasets` is a release whose pandas loader refuses pickles."""
    import re

    import datasets
    from datasets.packaged_modules.pandas import pandas as pandas_loader
    from packaging.version import Version

    floor = re.search(r'"datasets>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert floor is not None
    assert Version(floor.group(1)) >= Version("5.2")  # 5.1.0 and older: the pandas builder calls pd.read_pickle
    assert Version(datasets.__version__) >= Version(floor.group(1))
    source = Path(pandas_loader.__file__).read_text()
    assert "read_pickle" not in source and "pickle.load" not in source


# -- 2. one request holding the service worker ------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(stack: Stack, tiny_assets: Any) -> dict[str, Any]:
    return stack.train(
        tiny_spec(
            tiny_assets,
            "hardening-generate",
            dataset={"eval_fraction": 0},
            training={"max_steps": 2, "eval_steps": None},
        )
    )


def _service_log(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace") for p in stack.data_dir.glob("worker-*-service.log"))


def test_generation_is_budgeted_by_total_new_tokens(stack: Stack, finished_run: dict[str, Any]) -> None:
    with stack.client() as client:
        over = client.post(
            f"/api/runs/{finished_run['id']}/generate", json={"prompts": ["a"] * 16, "max_new_tokens": 2048}
        )
        at_budget_edge = client.post(
            f"/api/runs/{finished_run['id']}/generate", json={"prompts": ["a"] * 13, "max_new_tokens": 2048}
        )
    for answer in (over, at_budget_edge):
        assert answer.status_code == 422, answer.text
        assert any(error["field"] == "prompts" for error in answer.json()["detail"]), answer.text
        assert "max_new_tokens" in answer.text and "TUNEDECK_GENERATION_MAX_TOTAL_NEW_TOKENS" in answer.text
        assert str(BUDGET) in answer.text


def test_the_default_generation_budget() -> None:
    from runspec.inference import token_budget_problem
    from tunedeck_state.settings import Settings

    assert Settings().generation_max_total_new_tokens == 8192
    assert token_budget_problem(8, 1024, 8192) is None
    problem = token_budget_problem(9, 1024, 8192)
    assert problem and "9 × 1024 = 9216" in problem and "at most 910" in problem


def test_quick_calls_answer_during_a_long_generation_and_a_given_up_one_is_revoked(
    stack: Stack, tiny_assets: Any, finished_run: dict[str, Any]
) -> None:
    run_id = finished_run["id"]
    _warm(stack, tiny_assets)
    long_answer: dict[str, Any] = {}

    def long_generation() -> None:
        body = {"prompts": [f"Count to {i}" for i in range(12)], "max_new_tokens": 2048, "base": True}
        with stack.client() as client:
            long_answer["response"] = client.post(f"/api/runs/{run_id}/generate", json=body)

    thread = threading.Thread(target=long_generation)
    started = time.monotonic()
    thread.start()
    time.sleep(3)
    with stack.client() as client:
        inspected = client.post("/api/models/inspect", json={"model": str(tiny_assets.model_dir)})
        inspect_seconds = time.monotonic() - started
        assert inspected.status_code == 200, inspected.text
        assert thread.is_alive(), "the long generation ended before the quick call was made"
        assert inspect_seconds < GENERATE_TIMEOUT, f"the quick call waited {inspect_seconds:.1f} s"

        thread.join(timeout=GENERATE_TIMEOUT + 60)
        assert long_answer["response"].status_code == 503, long_answer["response"].text
        # The service worker gave the abandoned request up: a small one answers at once, not minutes later.
        short = client.post(f"/api/runs/{run_id}/generate", json={"prompts": ["Hi"], "max_new_tokens": 4, "base": True})
    assert short.status_code == 200, short.text
    assert time.monotonic() - started < 2 * GENERATE_TIMEOUT
    deadline = time.monotonic() + 10
    while "its caller gave up" not in _service_log(stack) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "its caller gave up" in _service_log(stack)


def test_a_sweep_without_workers_checks_each_model_once(tmp_path: Path, tiny_assets: Any) -> None:
    """No worker answers: the method check waits once for the model, not once per run in turn."""
    timeout = 2.0
    stack = Stack(
        data_dir=tmp_path,
        env=stack_env(tmp_path, TUNEDECK_DATA_ROOTS=str(ROOT), TUNEDECK_METHOD_CHECK_TIMEOUT_SECONDS=str(timeout)),
    )
    runs = 6
    base = tiny_spec(tiny_assets, "unused", training={"max_steps": 1})
    base.pop("name")
    body = {
        "name": "no workers",
        "base": base,
        "grid": {"training.learning_rate": [1e-3 * (i + 1) for i in range(runs)]},
    }
    try:
        stack.start_server()
        with stack.client() as client:
            started = time.monotonic()
            answer = client.post("/api/sweeps", json=body)
            seconds = time.monotonic() - started
    finally:
        stack.stop()
    assert answer.status_code == 201, answer.text
    assert len(answer.json()["runs"]) == runs
    # one wait for the model (2 s), not six (one full and five quick looks: 12 s)
    assert seconds < timeout * 3, f"the sweep took {seconds:.1f} s to submit"


# -- 9. the workers' log holds ids and sizes, not user data ------------------------------------------------


def test_worker_logs_carry_no_prompts_completions_or_rows(
    stack: Stack, tiny_assets: Any, finished_run: dict[str, Any]
) -> None:
    private = "private-text-4b9e"
    rows = stack.data_dir / "private.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"{private} {i}", "output": private}) + "\n" for i in range(3)))
    with stack.client() as client:
        answer = client.post(
            f"/api/runs/{finished_run['id']}/generate", json={"prompts": [private], "max_new_tokens": 8}
        )
        assert answer.status_code == 200, answer.text
        registered = client.post("/api/datasets/register", json={"source": str(rows), "format": "alpaca"})
        assert registered.status_code in (200, 201), registered.text
        preview = client.get(
            f"/api/datasets/{registered.json()['id']}/preview", params={"model": str(tiny_assets.model_dir)}
        )
        assert preview.status_code == 200, preview.text
    assert private in answer.text and private in preview.text  # the answers carry it; the log must not
    time.sleep(1)  # the log line is written just after the answer is stored
    worker_log = "".join(p.read_text(errors="replace") for p in stack.data_dir.glob("worker-*.log"))
    assert private not in worker_log
    assert "succeeded in" in worker_log and "ok=True;" in worker_log and "characters>" in worker_log


# -- 4. SIGTERM to `tunedeck serve` -----------------------------------------------------------------------


def test_sigterm_to_serve_stops_its_workers(tmp_path: Path) -> None:
    """docker stop and systemd send SIGTERM: the local workers (and their pool processes) stop with the server."""
    import signal
    import subprocess
    import sys

    import httpx
    import psutil

    from harness.stack import free_port

    port = free_port()
    with open(tmp_path / "serve.log", "ab") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "tunedeck_cli.main", "serve", "--port", str(port)],
            cwd=ROOT,
            env=stack_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        workers: list[Any] = []
        while time.monotonic() < deadline and len(workers) < 3:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                workers = httpx.get(f"http://127.0.0.1:{port}/api/workers", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                workers = []
            time.sleep(1)
        assert len(workers) == 3, workers
        descendants = psutil.Process(serve.pid).children(recursive=True)
        assert len(descendants) >= 6, descendants  # three workers, each with its pool process
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        _, alive = psutil.wait_procs(descendants, timeout=20)
        assert alive == [], f"still running after the server stopped: {alive}"
    finally:
        if serve.poll() is None:
            serve.kill()
        for proc in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


# -- 8. offline hubs ----------------------------------------------------------------------------------------


def test_hub_lookups_fail_fast_when_the_hub_is_unreachable(tmp_path: Path) -> None:
    """A hub that takes connections and never answers (what a filtering firewall looks like): the first lookup
    gives up after one short try, the next ones at once, and the message says what happened and what to do."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
    hub = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
    stack = Stack(data_dir=tmp_path, env=stack_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub))
    try:
        stack.start_server()
        stack.start_worker("quick", TUNEDECK_WORKER_NAME="offline-quick")
        with stack.client() as client:
            answers = []
            for _ in range(3):
                started = time.monotonic()
                answer = client.post("/api/models/inspect", json={"model": "some-org/not-cached-model"})
                answers.append((answer, time.monotonic() - started))
                if answer.status_code == 503:  # the worker was still starting
                    time.sleep(2)
                    answers.pop()
    finally:
        stack.stop()
        blackhole.close()
    assert len(answers) >= 2, answers
    (first, first_seconds), (second, second_seconds) = answers[0], answers[1]
    for answer in (first, second):
        assert answer.status_code == 422, answer.text
        assert "the Hugging Face hub" in answer.text and "unreachable from worker offline-quick" in answer.text
        assert "HF_HUB_OFFLINE" in answer.text
    # The first lookup also pays the fresh worker's first task (its imports: 5-12 s on two loaded cores); without
    # the short try the web would give up on it with "no worker answered" instead of the 422 asserted above.
    assert first_seconds < 25, f"the first lookup took {first_seconds:.1f} s"
    assert second_seconds < 3, f"the remembered lookup took {second_seconds:.1f} s"


def test_the_new_run_form_starts_on_the_demo_when_serving_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the service the form's defaults come from (app/web/pages.py is to call it: see the report)."""
    from app.services.demo import DEMO_DATASET, DEMO_MODEL_DIRNAME, new_run_defaults
    from runspec.spec import DEFAULT_MODEL
    from tunedeck_state.settings import Settings

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert new_run_defaults(settings)["model"] == DEFAULT_MODEL
    assert new_run_defaults(settings.model_copy(update={"demo": True}))["model"] == DEFAULT_MODEL  # not built yet
    (settings.demo_dir / DEMO_MODEL_DIRNAME).mkdir(parents=True)
    (settings.demo_dir / DEMO_MODEL_DIRNAME / "config.json").write_text("{}")
    (settings.demo_dir / DEMO_DATASET).parent.mkdir(parents=True)
    (settings.demo_dir / DEMO_DATASET).write_text("{}\n")
    demo = new_run_defaults(settings.model_copy(update={"demo": True}))
    assert demo == {
        "model": str(settings.demo_dir / DEMO_MODEL_DIRNAME),
        "dataset": {"source": str(settings.demo_dir / DEMO_DATASET)},
    }
    assert new_run_defaults(settings.model_copy(update={"hub_offline": True})) == demo
    assert new_run_defaults(settings)["model"] == DEFAULT_MODEL
