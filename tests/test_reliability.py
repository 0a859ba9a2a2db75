"""Runs survive faults: killed workers, resume, cancel, Redis and web server restarts, out of memory.

Real processes throughout: a `tunedeck serve --no-worker` and `tunedeck worker` on PostgreSQL and a Redis this
module starts itself on a free port (so restarting it disturbs nobody). Steps are slowed down with the
test-only TUNEDECK_TEST_STEP_DELAY_SECONDS so that a test can act while a run is training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from harness.stack import ROOT, Stack, free_port, stack_env
from tests.conftest import POSTGRES_ADMIN_URL, _services_unavailable, tiny_spec

pytestmark = [pytest.mark.reliability, pytest.mark.services]

HEARTBEAT_TIMEOUT = 8.0
#: Slow enough to act mid-run, fast enough to keep the module short.
STEP_DELAY = "0.4"
MEMORY_HEADROOM_MB = "256"
T = TypeVar("T")


# -- fixtures: an own Redis, an own database, an own stack -------------------------------------------------


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), 20, "redis-server to answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except FileNotFoundError:
        _services_unavailable("redis-server is not installed")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    import sqlalchemy as sa

    name = f"tunedeck_faults_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _services_unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any, own_database: str, own_redis: RedisServer
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("fault-stack")
    env = stack_env(
        data_dir,
        database_url=own_database,
        broker_url=own_redis.url,
        TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_TIMEOUT),
        TUNEDECK_TEST_STEP_DELAY_SECONDS=STEP_DELAY,
        # Every training process may grow by this much once training starts: plenty for the tiny runs, far too
        # little for the out-of-memory test's batch.
        TUNEDECK_TEST_MEMORY_HEADROOM_MB=MEMORY_HEADROOM_MB,
        TUNEDECK_METHOD_CHECK_TIMEOUT_SECONDS="0",  # no service worker here: submits do not wait for one
    )
    fault_stack = Stack(data_dir=data_dir, env=env)
    try:
        fault_stack.start_server()
        fault_stack.start_worker("training")
        yield fault_stack
    finally:
        fault_stack.stop()


# -- helpers -----------------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def training_worker(stack: Stack) -> subprocess.Popen[bytes]:
    """The stack's live training worker, started again if a test killed it."""
    alive = [w for w in stack.workers if w.poll() is None]
    return alive[-1] if alive else stack.start_worker("training")


def spec(assets: Any, name: str, *, steps: int = 12, **training: Any) -> dict[str, Any]:
    return tiny_spec(
        assets,
        name,
        dataset={"max_samples": 200},
        method={"name": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1},
        training={
            "max_steps": steps,
            "save_steps": 4,
            "batch_size": 4,
            "max_length": 64,
            "eval_steps": 5,
            "seed": 7,
            "warmup_steps": 2,
            "eval_generation_samples": 0,
            **training,
        },
    )


def submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/runs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def get_run(client: httpx.Client, run_id: int) -> dict[str, Any]:
    response = client.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_step(client: httpx.Client, run_id: int, step: int, timeout: float = 180) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = get_run(client, run_id)
        assert run["status"] in ("queued", "running"), f"run {run_id} ended early: {run['status']} {run['error']}"
        return run if run["step"] >= step and run["details"].get("worker_pid") else None

    return wait_until(reached, timeout, f"run {run_id} to reach step {step}")


def wait_for_status(client: httpx.Client, run_id: int, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
    return wait_until(
        lambda: (run := get_run(client, run_id))["status"] in statuses and run,
        timeout,
        f"run {run_id} to become {'/'.join(sorted(statuses))}",
        interval=0.3,
    )


def series(client: httpx.Client, run_id: int) -> dict[str, list[list[float]]]:
    return dict(client.get(f"/api/runs/{run_id}/metrics").json()["series"])


def points(metric_series: dict[str, list[list[float]]]) -> set[tuple[str, int, float]]:
    return {(key, int(step), value) for key, values in metric_series.items() for step, value in values}


def log_text(client: httpx.Client, run_id: int) -> str:
    return "\n".join(line["message"] for line in client.get(f"/api/runs/{run_id}/logs", params={"lines": 500}).json())


def transitions(run: dict[str, Any]) -> list[str]:
    return [event["to_status"] for event in run["events"]]


def adapter_weights(run: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(Path(run["artifact_dir"]) / "adapter_model.safetensors")


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"weights differ by up to {worst}"


def checkpoint_marker(stack: Stack, run_id: int, step: int) -> dict[str, Any]:
    folder = stack.data_dir / "runs" / f"run-{run_id}" / "checkpoints" / f"checkpoint-{step}"
    return dict(json.loads((folder / "tunedeck-complete.json").read_text()))


# -- tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (
            "worker",
            {
                "TUNEDECK_BROKER_URL": "redis://127.0.0.1:1/0",
                "TUNEDECK_BROKER_VISIBILITY_TIMEOUT_SECONDS": "600",
                "TUNEDECK_TRAINING_TIME_LIMIT_SECONDS": "3600",
            },
            ["TUNEDECK_BROKER_VISIBILITY_TIMEOUT_SECONDS=600", "TUNEDECK_TRAINING_TIME_LIMIT_SECONDS=3600"],
        ),
        (
            "worker",
            {"TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS": "2", "TUNEDECK_METRIC_FLUSH_SECONDS": "1"},
            ["TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS=2", "at least 3"],
        ),
        (
            "serve",
            {"TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS": "2", "TUNEDECK_METRIC_FLUSH_SECONDS": "1"},
            ["TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS=2"],
        ),
    ],
)
def test_bad_worker_settings_are_refused_at_start(
    tmp_path: Path, command: str, env: dict[str, str], named: list[str]
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunedeck_cli.main",
            command,
            *(["--port", str(free_port())] if command == "serve" else []),
        ],
        cwd=ROOT,
        env=stack_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing to start" in result.stderr
    for text in named:
        assert text in result.stderr


def test_killed_pool_process_fails_the_run_and_resume_matches_an_uninterrupted_run(
    stack: Stack, tiny_assets: Any
) -> None:
    training_worker(stack)
    with stack.client() as client:
        reference = submit(client, spec(tiny_assets, "reference"))
        victim = submit(client, spec(tiny_assets, "victim"))
        reference = wait_for_status(client, reference["id"], {"succeeded", "failed", "cancelled"})
        assert reference["status"] == "succeeded", reference["error"]

        running = wait_for_step(client, victim["id"], 6)
        assert checkpoint_marker(stack, victim["id"], 4)["step"] == 4
        before = points(series(client, victim["id"]))
        pool_pid = running["details"]["worker_pid"]
        killed_at = time.monotonic()
        os.kill(pool_pid, signal.SIGKILL)

        failed = wait_for_status(client, victim["id"], {"failed", "succeeded", "cancelled"}, timeout=60)
        assert time.monotonic() - killed_at <= HEARTBEAT_TIMEOUT + 5
        assert failed["status"] == "failed"
        assert failed["error"].startswith("worker lost"), failed["error"]
        assert "signal 9" in failed["error"]
        assert before <= points(series(client, victim["id"])), "metrics logged before the kill were lost"

        resumed = client.post(f"/api/runs/{victim['id']}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["status"] == "queued" and resumed.json()["attempt"] == 2
        again = client.post(f"/api/runs/{victim['id']}/resume")
        assert again.status_code == 409, "a run was queued twice"
        assert client.post(f"/api/runs/{reference['id']}/resume").status_code == 409  # succeeded: nothing to resume

        victim = wait_for_status(client, victim["id"], {"succeeded", "failed", "cancelled"})
        assert victim["status"] == "succeeded", victim["error"]
        assert victim["attempt"] == 2
        resumed_from = victim["details"]["resumed_from_step"]
        assert resumed_from and resumed_from % 4 == 0, victim["details"]
        assert f"attempt 2: continuing from checkpoint {resumed_from}" in log_text(client, victim["id"])

        # Metric history continues: every step once, and the same values as the run that was never interrupted.
        victim_series, reference_series = series(client, victim["id"]), series(client, reference["id"])
        assert [step for step, _ in victim_series["loss"]] == list(range(1, 13))
        for key in ("loss", "learning_rate", "grad_norm"):
            assert [s for s, _ in victim_series[key]] == [s for s, _ in reference_series[key]]
            assert [v for _, v in victim_series[key]] == pytest.approx([v for _, v in reference_series[key]], 1e-5)
        assert_same_weights(adapter_weights(reference), adapter_weights(victim))

        assert transitions(victim) == ["queued", "running", "failed", "queued", "running", "succeeded"]
        assert "resumed by the user" in victim["events"][3]["reason"]

        # A duplicate delivery of the old attempt (as Redis does after its visibility timeout) trains nothing.
        from celery import Celery

        sender = Celery(broker=stack.env["TUNEDECK_BROKER_URL"])
        try:
            sender.send_task("tunedeck.train_run", args=[victim["id"], 1], queue="tunedeck.training")
            sender.send_task("tunedeck.train_run", args=[victim["id"], 2], queue="tunedeck.training")
        finally:
            sender.close()

        def turned_away() -> bool:
            logs = "".join(p.read_text(errors="replace") for p in stack.data_dir.glob("worker-*-training.log"))
            return all(f"run {victim['id']} attempt {n} is not queued any more" in logs for n in (1, 2))

        wait_until(turned_away, 60, "the duplicate deliveries to be turned away")
        after = get_run(client, victim["id"])
        assert after["events"] == victim["events"] and after["status"] == "succeeded"


def test_killed_main_worker_process_is_detected_by_heartbeat_and_retried_automatically(
    stack: Stack, tiny_assets: Any
) -> None:
    worker = training_worker(stack)
    with stack.client() as client:
        run = submit(client, spec(tiny_assets, "auto-retry", steps=14, max_retries=1))
        running = wait_for_step(client, run["id"], 6)
        before = points(series(client, run["id"]))
        pool_pid = running["details"]["worker_pid"]
        killed_at = time.monotonic()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        # Celery's pool processes die with their parent (PDEATHSIG): nothing trains the run any more.
        wait_until(lambda: not psutil.pid_exists(pool_pid), 30, "the pool process to die with the main process")

        requeued = wait_until(
            lambda: "failed" in transitions(r := get_run(client, run["id"])) and r,
            HEARTBEAT_TIMEOUT + 30,
            "the lost run to be noticed",
        )
        assert time.monotonic() - killed_at <= HEARTBEAT_TIMEOUT + 5
        lost = requeued["events"][2]
        assert lost["to_status"] == "failed" and lost["reason"].startswith("worker lost: no heartbeat"), lost
        assert requeued["status"] == "queued" and requeued["attempt"] == 2, requeued
        assert requeued["events"][3]["reason"].startswith("retrying automatically (1 of 1"), requeued["events"]
        assert before <= points(series(client, run["id"])), "metrics logged before the kill were lost"

        stack.start_worker("training")
        done = wait_for_status(client, run["id"], {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["error"]
        assert done["attempt"] == 2 and done["details"]["resumed_from_step"] >= 4
        assert [step for step, _ in series(client, run["id"])["loss"]] == list(range(1, 15))
        assert transitions(done) == ["queued", "running", "failed", "queued", "running", "succeeded"]


def test_cancel_keeps_metrics_and_a_checkpoint_and_a_queued_run_never_starts(stack: Stack, tiny_assets: Any) -> None:
    training_worker(stack)
    with stack.client() as client:
        running = submit(client, spec(tiny_assets, "cancel-running", steps=20))
        queued = submit(client, spec(tiny_assets, "cancel-queued"))

        cancelled_queued = client.post(f"/api/runs/{queued['id']}/cancel")
        assert cancelled_queued.status_code == 200 and cancelled_queued.json()["status"] == "cancelled"

        at = wait_for_step(client, running["id"], 3)
        asked_at = time.monotonic()
        response = client.post(f"/api/runs/{running['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "running"
        cancelled = wait_for_status(client, running["id"], {"cancelled", "succeeded", "failed"}, timeout=60)
        assert cancelled["status"] == "cancelled", cancelled["error"]
        assert time.monotonic() - asked_at < 15, "cancelling took more than a few seconds"
        stopped_at = cancelled["step"]
        assert at["step"] <= stopped_at < 20
        assert [step for step, _ in series(client, running["id"])["loss"]] == list(range(1, stopped_at + 1))
        assert checkpoint_marker(stack, running["id"], stopped_at)["step"] == stopped_at
        assert (
            transitions(cancelled)[-1] == "cancelled" and "cancelled by the user" in cancelled["events"][-1]["reason"]
        )

        # The worker takes the next run normally, in a fresh process (the cancelled run's memory is gone with it).
        following = submit(client, spec(tiny_assets, "after-cancel", steps=4))
        following = wait_for_status(client, following["id"], {"succeeded", "failed", "cancelled"})
        assert following["status"] == "succeeded", following["error"]
        assert following["details"]["worker_pid"] != cancelled["details"]["worker_pid"]
        assert not psutil.pid_exists(cancelled["details"]["worker_pid"])

        never = get_run(client, queued["id"])
        assert never["status"] == "cancelled" and never["started_at"] is None and never["worker"] is None
        assert transitions(never) == ["queued", "cancelled"]
        assert series(client, queued["id"]) == {}

        # Resume a cancelled run from its page: it continues from the checkpoint its cancel wrote.
        page = client.get(f"/runs/{running['id']}")
        assert 'id="resume-run"' in page.text and "cancelled by the user" in page.text  # button and history
        live = client.post(f"/runs/{running['id']}/resume", headers={"HX-Request": "true"})
        assert live.status_code == 200 and 'data-status="queued"' in live.text
        assert "resumed by the user (attempt 2)" in live.text
        done = wait_for_status(client, running["id"], {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["error"]
        assert done["details"]["resumed_from_step"] == stopped_at
        assert [step for step, _ in series(client, running["id"])["loss"]] == list(range(1, 21))


def test_redis_restart_mid_run_loses_nothing_and_runs_nothing_twice(
    stack: Stack, tiny_assets: Any, own_redis: RedisServer
) -> None:
    training_worker(stack)
    with stack.client() as client:
        run = submit(client, spec(tiny_assets, "redis-restart", steps=20))
        wait_for_step(client, run["id"], 3)
        own_redis.stop()
        assert get_run(client, run["id"])["status"] == "running"  # the API reads the database, not the broker
        own_redis.start()

        done = wait_for_status(client, run["id"], {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["error"]
        assert done["attempt"] == 1 and transitions(done) == ["queued", "running", "succeeded"]
        assert [step for step, _ in series(client, run["id"])["loss"]] == list(range(1, 21))

        # Web and worker reconnected: a new run is queued and trained.
        following = submit(client, spec(tiny_assets, "after-redis-restart", steps=4))
        following = wait_for_status(client, following["id"], {"succeeded", "failed", "cancelled"})
        assert following["status"] == "succeeded", following["error"]


def test_web_server_restart_mid_run(stack: Stack, tiny_assets: Any) -> None:
    training_worker(stack)
    with stack.client() as client:
        run = submit(client, spec(tiny_assets, "server-restart", steps=16))
        at = wait_for_step(client, run["id"], 3)
    assert stack.server is not None
    stack.server.send_signal(signal.SIGKILL)
    stack.server.wait(timeout=30)
    time.sleep(2)  # the run trains on without a web server
    stack.start_server()
    with stack.client() as client:
        picked_up = get_run(client, run["id"])
        assert picked_up["step"] > at["step"] or picked_up["status"] == "succeeded"
        done = wait_for_status(client, run["id"], {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["error"]
        assert [step for step, _ in series(client, run["id"])["loss"]] == list(range(1, 17))
        page = client.get(f"/runs/{run['id']}")
        assert page.status_code == 200 and 'data-status="succeeded"' in page.text
        assert "server-restart" in client.get("/").text


def test_out_of_memory_fails_the_run_with_remedies_and_the_worker_goes_on(stack: Stack, tiny_assets: Any) -> None:
    worker = training_worker(stack)
    with stack.client() as client:
        hungry = submit(
            client,
            tiny_spec(
                tiny_assets,
                "too-big",
                dataset={"max_samples": 400, "eval_fraction": 0},
                training={"max_steps": 2, "batch_size": 384, "max_length": 512, "eval_generation_samples": 0},
            ),
        )
        hungry = wait_for_status(client, hungry["id"], {"succeeded", "failed", "cancelled"})
        assert hungry["status"] == "failed"
        error = hungry["error"]
        assert error.startswith("out of memory"), error
        for expected in ("Estimated", "Available:", "limited to", "batch_size", "gradient_checkpointing", "QLoRA"):
            assert expected in error

        following = submit(client, spec(tiny_assets, "after-oom", steps=4))
        following = wait_for_status(client, following["id"], {"succeeded", "failed", "cancelled"})
        assert following["status"] == "succeeded", following["error"]
        assert worker.poll() is None, "the worker died"
