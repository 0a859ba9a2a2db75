"""Fuzz the REST API from its own OpenAPI schema with schemathesis: no generated request may get a 5xx, and every
answer must conform to the schema (a documented status code and content type, a body valid against the declared
model: timestamps with their zone, 4xx bodies in the declared `Problem` shape).

Bounded: the examples, fuzzing and stateful phases with a fixed seed and at most MAX_EXAMPLES cases per operation
(about a minute). The coverage phase is left out: it enumerates thousands of boundary cases (five minutes
here), and the boundaries that matter (huge ids, NaN, wrong types, traversal) are rows of test_bad_input.py.

The stack is this module's own, with a service worker and a training worker, on an empty hub cache with the hub
offline: the fuzzer's valid specs name hub models that cannot be fetched, so its runs fail at their start instead
of training for minutes (and the stateful phase meets failed runs to resume), while model checks, estimates and
previews are answered by the service worker.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.stack import Stack, stack_env

pytestmark = pytest.mark.security

MAX_EXAMPLES = 10
#: What every answer is checked for (issue 16: undocumented 404/409/503, naive timestamps, string 422 details).
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
SEED = 20260101


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("fuzz-stack")
    # A submit waits at most 2 s for the method check (then the run is queued and checked at its start).
    hub_cache = tmp_path_factory.mktemp("fuzz-empty-hub-cache")
    env = stack_env(data_dir, TUNEDECK_METHOD_CHECK_TIMEOUT_SECONDS="2", HF_HOME=str(hub_cache))
    stack = Stack(data_dir=data_dir, env=env)
    try:
        stack.start_server()
        stack.start_worker("service")
        stack.start_worker("training")
        yield stack
    finally:
        stack.stop()


def test_no_generated_request_gets_a_server_error_or_breaks_the_schema(fuzz_stack: Stack, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "st"),
        "--no-color",
        "run",
        f"{fuzz_stack.base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--generation-database",
        "none",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12_000:]
    assert "Server error" not in output
    assert "violates schema" not in output and "Undocumented" not in output, output[-12_000:]
    tested = [line for line in output.splitlines() if "generated" in line and "passed" in line]
    assert tested, output[-4000:]
