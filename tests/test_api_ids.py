"""Ids the database cannot even hold are refused or not found: never a 500."""

from __future__ import annotations

import pytest

from harness.stack import Stack

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "path", [f"/api/runs/{HUGE}", f"/api/runs/{HUGE}/metrics", f"/runs/{HUGE}", "/api/runs/9223372036854775807"]
)
def test_out_of_range_ids_are_404(sqlite_stack: Stack, path: str) -> None:
    with sqlite_stack.client() as client:
        assert client.get(path).status_code in {404, 422}
