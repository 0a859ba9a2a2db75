"""200 run submissions at once from 50 concurrent clients: 200 runs stored, each executed exactly once, and the
API keeps answering meanwhile. Latency figures are bench/load_submit.py's (BENCHMARKS.md); this test times nothing.

Its own stack (it needs two training workers, and 200 runs must not queue on the shared stack's worker): SQLite
and the embedded broker, two training workers and a service worker (the submit-time memory estimate). Each run is
the least a real training can be: the tiny model, one optimizer step on 8 samples of 32 tokens. The submit-time
method check is off here (a round trip to the service worker per submission, tested with the methods): what is
exercised is storing, queueing and claiming.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.load_submit import (
    Prober,
    execution_report,
    stub_spec,
    submit_concurrently,
    wait_for_service_worker,
    wait_until_final,
)
from harness.stack import Stack, stack_env

pytestmark = [pytest.mark.load, pytest.mark.slow]

RUNS = 200
CLIENTS = 50
TRAINING_WORKERS = 2


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("load-stack")
    stack = Stack(data_dir=data_dir, env=stack_env(data_dir, TUNEDECK_METHOD_CHECK_TIMEOUT_SECONDS="0"))
    try:
        stack.start_server()
        for _ in range(TRAINING_WORKERS):
            stack.start_worker("training")
        stack.start_worker("service")  # as `tunedeck serve` starts one: it answers the submit-time memory estimate
        wait_for_service_worker(stack.base_url, tiny_assets.model_dir)
        yield stack
    finally:
        stack.stop()


@pytest.mark.timeout(2400)  # 200 trainings on two workers: 9-10 minutes on the loaded development machine
def test_200_concurrent_submissions_each_execute_exactly_once(load_stack: Stack, tiny_assets: Any) -> None:
    specs = [stub_spec(tiny_assets.model_dir, tiny_assets.dataset_path, f"load-{i}") for i in range(RUNS)]
    with Prober(load_stack.base_url) as while_submitting:
        submitted = submit_concurrently(load_stack.base_url, specs, CLIENTS)
    assert submitted.statuses.count(201) == RUNS, sorted(set(submitted.statuses))
    assert len(set(submitted.run_ids)) == RUNS
    with load_stack.client() as client:
        assert client.get("/api/runs", params={"limit": 1}).json()["total"] == RUNS

    with Prober(load_stack.base_url, interval=0.5) as while_training:
        wait_until_final(load_stack.base_url, RUNS, timeout=3600)

    # The API answered every request while 50 clients submitted and while the workers trained.
    assert while_submitting.latencies and not while_submitting.failures, while_submitting.failures[:3]
    assert while_training.latencies and not while_training.failures, while_training.failures[:3]

    report = execution_report(f"sqlite:///{load_stack.data_dir / 'tunedeck.sqlite'}", submitted.run_ids)
    assert report["stored"] == RUNS
    assert report["statuses"] == {"succeeded": RUNS}, list(report["errors"].items())[:3]
    assert set(report["claims"].values()) == {1}, {k: v for k, v in report["claims"].items() if v != 1}
    assert set(report["attempts"].values()) == {1}
    assert set(report["steps"].values()) == {1}
    trained = sorted(p.name for p in (load_stack.data_dir / "runs").iterdir() if (p / "adapter").is_dir())
    assert trained == sorted(f"run-{run_id}" for run_id in submitted.run_ids)
