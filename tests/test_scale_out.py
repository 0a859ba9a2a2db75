"""Scaling out with real processes: two training workers of different (declared) GPU memory, a service worker,
the server, PostgreSQL and Redis. Runs are placed by their memory estimates, a run too big for every worker waits
with its reason, priorities reorder the queue, and killing one worker leaves the other working (its run is retried
there).

The workers run on the CPU and declare a fake GPU (TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB): 0.8 GiB and 1.2 GiB. The
server estimates runs for a CUDA device (a live worker declares a GPU): the tiny default run needs ≈0.59 GiB with
the 10% margin (class 0.75 GiB, both workers), a batch of 64 × 144 tokens ≈0.90 GiB (class 1 GiB: only the large
worker; 144 is below the data's longest sample, 151 tokens, so the estimate's length is max_length whether or not a run
has tokenized the data yet), a batch of 512 × 144 tokens ≈3.3 GiB (no worker).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness.stack import Stack, stack_env
from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL, _services_unavailable, tiny_spec

pytestmark = [pytest.mark.services, pytest.mark.timeout(420)]

SMALL_GIB, LARGE_GIB = "0.8", "1.2"
#: A Redis database of its own (flushed here): workers of another stack on the same database would take these runs.
SCALE_REDIS_URL = os.environ.get("TUNEDECK_TEST_SCALE_REDIS", REDIS_URL.rsplit("/", 1)[0] + "/11")


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    """A database and a Redis database of its own: other stacks' workers must not take these runs."""
    import redis
    import sqlalchemy as sa

    name = f"tunedeck_scale_{uuid.uuid4().hex[:10]}"
    broker = SCALE_REDIS_URL
    try:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        redis.Redis.from_url(broker).flushdb()
    except Exception as exc:
        _services_unavailable(f"PostgreSQL or Redis is unreachable: {exc}")
    data_dir = tmp_path_factory.mktemp("scale-stack")
    env = stack_env(
        data_dir,
        database_url=POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
        broker_url=broker,
        TUNEDECK_HEARTBEAT_SECONDS="1",
        TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS="4",
    )
    stack = Stack(data_dir=data_dir, env=env)
    try:
        stack.start_server()
        stack.start_worker("service")
        slow = {"TUNEDECK_TEST_STEP_DELAY_SECONDS": "1.0"}  # the large worker stays busy while runs are queued
        stack.start_worker(
            "training", TUNEDECK_WORKER_NAME="small", TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB=SMALL_GIB, **slow
        )
        stack.start_worker(
            "training", TUNEDECK_WORKER_NAME="large", TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB=LARGE_GIB, **slow
        )
        yield stack
    finally:
        stack.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        redis.Redis.from_url(broker).flushdb()


def _workers(client: httpx.Client) -> dict[str, dict[str, Any]]:
    answer = client.get("/api/workers")
    assert answer.status_code == 200, answer.text
    return {w["name"]: w for w in answer.json()}


def _wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _run(client: httpx.Client, run_id: int) -> dict[str, Any]:
    return client.get(f"/api/runs/{run_id}").json()


def _submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/api/runs", json=spec)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_runs_are_placed_by_memory_wait_when_too_big_follow_priority_and_survive_a_lost_worker(
    scale_stack: Stack, tiny_assets: Any
) -> None:
    stack = scale_stack
    training = {"max_steps": 6, "eval_steps": 6, "eval_generation_samples": 0, "save_steps": 3}
    small_spec = tiny_spec(tiny_assets, "small", training=training)
    medium = {**training, "batch_size": 64, "max_length": 144}
    huge = {**training, "batch_size": 512, "max_length": 144}  # ≈3.3 GiB, whatever the data's lengths

    with stack.client() as client:
        # Both training workers register, with what they offer; and the service worker.
        def three_live() -> dict[str, dict[str, Any]] | None:
            found = _workers(client)
            return found if sum(w["state"] == "live" for w in found.values()) == 3 else None

        workers = _wait_for("three live workers", three_live)
        by_capacity = sorted((w for w in workers.values() if w["capacity_bytes"]), key=lambda w: w["capacity_bytes"])
        assert len(by_capacity) == 2
        small, large = by_capacity
        assert small["capacity_bytes"] == int(float(SMALL_GIB) * 2**30)
        assert large["capacity_bytes"] == int(float(LARGE_GIB) * 2**30)
        for w in (small, large):
            assert w["roles"] == ["training"] and w["gpu_count"] == 1 and w["fake_gpu"]
            assert w["versions"]["torch"] and w["versions"]["peft"] and w["cpu"]["cores"] >= 1
            assert w["shared_storage"] and w["host"]
        assert "tunedeck.training.mem-1g" in large["queues"] and "tunedeck.training.mem-1g" not in small["queues"]
        page = client.get("/workers")
        assert page.status_code == 200 and small["name"] in page.text and large["name"] in page.text
        assert 'href="/workers"' in page.text  # in the navigation
        fragment = client.get("/workers/table").text  # what the page polls: the table alone
        assert fragment.lstrip().startswith('<div id="workers-table"') and large["name"] in fragment

        # Too big for every worker: queued, with the reason, and nobody takes it.
        waiting = _submit(client, tiny_spec(tiny_assets, "huge", training=huge))
        assert waiting["status"] == "queued"
        assert waiting["wait_reason"] and "needs" in waiting["wait_reason"]
        assert "largest GPU has 1.2 GiB" in waiting["wait_reason"]
        assert waiting["queue"].startswith("tunedeck.training.mem-")
        assert _queued_messages(stack, waiting["queue"]) == 1  # in Redis, in a queue no live worker consumes
        assert waiting["wait_reason"] in client.get("/").text  # the runs list shows it
        assert "Waiting:" in client.get(f"/runs/{waiting['id']}").text

        # A run only the large worker fits goes there; while it trains, a small run goes to the small worker.
        first = _submit(client, tiny_spec(tiny_assets, "medium-1", training=medium))
        assert first["queue"] == "tunedeck.training.mem-1g" and first["wait_reason"] is None
        _wait_for("medium-1 running", lambda: _run(client, first["id"])["status"] == "running")
        second = _submit(client, small_spec)
        assert second["queue"] == "tunedeck.training.mem-0.75g"
        # Priorities: two more runs for the large worker while it is busy; the later, higher one starts first.
        low = _submit(client, tiny_spec(tiny_assets, "medium-low", training=medium, placement={"priority": 1}))
        high = _submit(client, tiny_spec(tiny_assets, "medium-high", training=medium, placement={"priority": 9}))
        assert (low["priority"], high["priority"]) == (1, 9)

        done = {r: stack.wait_for_run(r) for r in (first["id"], second["id"], low["id"], high["id"])}
        assert all(run["status"] == "succeeded" for run in done.values()), {r: v["error"] for r, v in done.items()}
        assert done[first["id"]]["worker"] == large["name"]
        assert done[second["id"]]["worker"] == small["name"]
        assert done[low["id"]]["worker"] == done[high["id"]]["worker"] == large["name"]
        assert done[high["id"]]["started_at"] < done[low["id"]]["started_at"], "priority 9 should start before 1"
        assert _run(client, waiting["id"])["status"] == "queued"

        # Kill the small worker mid-run: it shows as lost, its run is retried on the large worker.
        # The large worker is kept busy first, so the small run cannot go to it instead (both consume its class).
        busy = _submit(client, tiny_spec(tiny_assets, "medium-busy", training=medium))
        _wait_for("medium-busy running", lambda: _run(client, busy["id"])["status"] == "running")
        doomed = _submit(client, tiny_spec(tiny_assets, "retried", training={**training, "max_retries": 1}))
        running = _wait_for(
            "a run on the small worker",
            lambda: (r := _run(client, doomed["id"]))["status"] == "running" and r["worker"] == small["name"] and r,
        )
        assert running["details"].get("gpu_slot") == 0
        victim = next(p for p in stack.workers if _is_worker(p, small["pid"]))
        os.killpg(victim.pid, signal.SIGKILL)
        _wait_for("the small worker shown as lost", lambda: _workers(client)[small["name"]]["state"] == "lost", 60)
        finished = stack.wait_for_run(doomed["id"])
        assert finished["status"] == "succeeded", finished["error"]
        assert finished["attempt"] == 2 and finished["worker"] == large["name"]
        assert any("worker lost" in (e["reason"] or "") for e in finished["events"])
        assert _workers(client)[large["name"]]["state"] == "live"

        cancelled = client.post(f"/api/runs/{waiting['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"

        # A worker that does not see the server's data directory is flagged.
        _announce_foreign_worker(stack)
        assert _workers(client)["elsewhere@other"]["shared_storage"] is False
        assert "does not see the server's data directory" in client.get("/workers").text


def _queued_messages(stack: Stack, queue: str) -> int:
    """Messages waiting in a Redis queue, over kombu's per-priority lists."""
    import redis

    client = redis.Redis.from_url(stack.env["TUNEDECK_BROKER_URL"])
    return sum(int(client.llen(queue if step == 0 else f"{queue}\x06\x16{step}")) for step in range(10))


def _announce_foreign_worker(stack: Stack) -> None:
    """A heartbeat as a worker on another machine with its own data directory would write it."""
    import sqlalchemy as sa

    engine = sa.create_engine(stack.env["TUNEDECK_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workers (name, queues, pid, started_at, last_seen, details, host) "
                "VALUES ('elsewhere@other', 'tunedeck.service', 1, now(), now() + interval '1 hour', "
                "CAST(:details AS json), 'other')"
            ),
            {"details": '{"storage_id": "another-disk", "data_dir": "/somewhere/else"}'},
        )
    engine.dispose()


def _is_worker(process: Any, pid: int) -> bool:
    """The Popen whose process is (or runs) the Celery worker with this pid."""
    return process.poll() is None and process.pid == pid


def test_runs_share_a_gpu_only_when_their_estimates_fit_together(scale_stack: Stack, tiny_assets: Any) -> None:
    """A worker allowed two runs per GPU (TUNEDECK_WORKER_RUNS_PER_GPU=2) on a 1.25 GiB (fake) GPU: two small runs
    (≈0.59 GiB each with the margin) train at the same time; a medium one (≈0.90 GiB) and a small one do not."""
    stack = scale_stack
    stack.start_worker(
        "training",
        TUNEDECK_WORKER_NAME="shared",
        TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB="1.25",
        TUNEDECK_WORKER_RUNS_PER_GPU="2",
        TUNEDECK_TEST_STEP_DELAY_SECONDS="1.0",
    )
    training = {"max_steps": 5, "eval_steps": 5, "eval_generation_samples": 0}
    with stack.client() as client:
        shared = _wait_for(
            "the sharing worker",
            lambda: next(
                (w for w in _workers(client).values() if w["name"].startswith("shared@") and w["state"] == "live"), None
            ),
        )
        assert shared["concurrency"] == 2 and shared["runs_per_gpu"] == 2
        pin = {"worker": shared["name"]}
        pair = [
            _submit(client, tiny_spec(tiny_assets, f"together-{i}", training=training, placement=pin)) for i in (1, 2)
        ]
        together = [stack.wait_for_run(run["id"]) for run in pair]
        medium = {**training, "batch_size": 64, "max_length": 144}
        apart = [
            _submit(client, tiny_spec(tiny_assets, "apart-medium", training=medium, placement=pin)),
            _submit(client, tiny_spec(tiny_assets, "apart-small", training=training, placement=pin)),
        ]
        waited = _wait_for(
            "one of the two waiting for room",
            lambda: any("waiting for room on GPU 0" in (_run(client, r["id"])["wait_reason"] or "") for r in apart),
        )
        assert waited
        separate = [stack.wait_for_run(run["id"]) for run in apart]
    for run in together + separate:
        assert run["status"] == "succeeded", run["error"]
        assert run["worker"] == shared["name"] and run["details"]["gpu_slot"] == 0
    assert _overlap(*together), "two runs that fit together should train at the same time"
    assert not _overlap(*separate), "runs that do not fit together must not share the GPU"


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
