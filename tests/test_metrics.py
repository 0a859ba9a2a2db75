"""Prometheus metrics at /metrics: parseable, and consistent with the runs and workers the stack has."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from harness.stack import Stack


def _families(stack: Stack) -> dict:
    with stack.client() as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def test_metrics_parse_and_count_runs_and_workers(sqlite_stack: Stack) -> None:
    deadline = time.monotonic() + 180  # the two workers announce themselves once they are up
    families = _families(sqlite_stack)
    while families["tunedeck_workers_total"].samples[0].value < 2 and time.monotonic() < deadline:
        time.sleep(1)
        families = _families(sqlite_stack)
    assert families["tunedeck_workers_total"].samples[0].value == 2
    by_queues = {s.labels["queues"]: s.value for s in families["tunedeck_workers"].samples}
    assert by_queues == {"tunedeck.service": 1, "tunedeck.training": 1}

    states = {s.labels["state"]: s.value for s in families["tunedeck_runs"].samples}
    assert set(states) == {"queued", "running", "succeeded", "failed", "cancelled", "pruned"}
    with sqlite_stack.client() as client:
        total = client.get("/api/runs", params={"limit": 1}).json()["total"]
    assert sum(states.values()) == total
    assert families["tunedeck_queue_length"].samples[0].value == states["queued"]
    assert families["tunedeck_info"].samples[0].labels["version"]
    assert "tunedeck_gpu_memory_used_bytes" in families  # empty without GPUs, present for scrapers
