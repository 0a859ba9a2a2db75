"""Living with many runs, through the API of a real server and worker: tags, notes, archive, filters, compare by tag,
disk bytes and retention, deleting runs and sweeps (rows and files), and a running run's delete refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from harness.stack import Stack
from tests.conftest import tiny_spec
from tests.html import wait_for_running

STEPS = 6


def _rows(stack: Stack, run_id: int) -> dict[str, int]:
    """The run's rows in every table that refers to it, counted in the stack's own SQLite file."""
    engine = sa.create_engine(f"sqlite:///{stack.data_dir / 'tunedeck.sqlite'}")
    try:
        with engine.connect() as connection:
            return {
                table: connection.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE {column} = :id"), {"id": run_id}
                ).scalar_one()
                for table, column in (
                    ("runs", "id"),
                    ("metrics", "run_id"),
                    ("run_logs", "run_id"),
                    ("run_events", "run_id"),
                    ("sweep_runs", "run_id"),
                )
            }
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def two_runs(sqlite_stack: Stack, tiny_assets: Any) -> list[dict[str, Any]]:
    """Two short runs that save checkpoints: the first keeps two, the second drops them when it succeeds."""
    training = {"max_steps": STEPS, "save_steps": 2, "eval_steps": 3, "eval_generation_samples": 0}
    keep = sqlite_stack.train(tiny_spec(tiny_assets, "manage-keep", training=training))
    drop = sqlite_stack.train(
        tiny_spec(tiny_assets, "manage-drop", training=training, placement={"keep_checkpoints": 0})
    )
    return [keep, drop]


def test_disk_bytes_and_retention(sqlite_stack: Stack, two_runs: list[dict[str, Any]]) -> None:
    keep, drop = two_runs
    keep_dir = sqlite_stack.data_dir / "runs" / f"run-{keep['id']}"
    drop_dir = sqlite_stack.data_dir / "runs" / f"run-{drop['id']}"
    assert sorted(p.name for p in (keep_dir / "checkpoints").iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-4",
        "checkpoint-6",
    ]
    assert not (drop_dir / "checkpoints").exists() and Path(drop["artifact_dir"]).is_dir()
    assert keep["disk_bytes"] > drop["disk_bytes"] > 0
    with sqlite_stack.client() as client:
        by_disk = client.get("/api/runs", params={"sort": "-disk", "name": "manage-"}).json()["items"]
        assert [r["id"] for r in by_disk][:2] == [keep["id"], drop["id"]]
        metrics = client.get("/metrics").text
    assert "tunedeck_data_dir_free_bytes" in metrics and "tunedeck_runs_disk_bytes" in metrics


def test_tags_notes_archive_filters_and_compare(sqlite_stack: Stack, two_runs: list[dict[str, Any]]) -> None:
    keep, drop = two_runs
    with sqlite_stack.client() as client:
        bad = client.patch(f"/api/runs/{keep['id']}", json={"tags": ["fine", "has space"]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "tags"], bad.text
        assert "not a tag" in bad.text
        assert client.patch(f"/api/runs/{keep['id']}", json={"archived": "maybe"}).status_code == 422

        notes = "<script>alert(1)</script> keeps two"
        patched = client.patch(
            f"/api/runs/{keep['id']}", json={"name": "manage-keep renamed", "tags": ["cmp", "keep"], "notes": notes}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["name"] == "manage-keep renamed" and patched.json()["tags"] == ["cmp", "keep"]
        assert patched.json()["spec_hash"] == keep["spec_hash"]
        page = client.get(f"/runs/{keep['id']}").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; keeps two" in page and notes not in page

        assert client.post("/api/runs/bulk/tag", json={"run_ids": [drop["id"]], "add": ["cmp"]}).status_code == 200
        tagged = client.get("/api/runs", params={"tag": "cmp"}).json()
        assert {r["id"] for r in tagged["items"]} == {keep["id"], drop["id"]}
        compared = client.get("/api/compare", params={"tag": "cmp"}).json()
        assert set(compared["run_ids"]) == {keep["id"], drop["id"]}

        assert client.post("/api/runs/bulk/archive", json={"run_ids": [drop["id"]]}).status_code == 200
        assert [r["id"] for r in client.get("/api/runs", params={"tag": "cmp"}).json()["items"]] == [keep["id"]]
        archived = client.get("/api/runs", params={"tag": "cmp", "archived": "true"}).json()["items"]
        assert [r["id"] for r in archived] == [drop["id"]]
        assert set(client.get("/api/compare", params={"tag": "cmp"}).json()["run_ids"]) == {keep["id"]}
        assert client.post("/api/runs/bulk/restore", json={"run_ids": [drop["id"]]}).status_code == 200
        assert client.post("/api/runs/bulk/archive", json={"run_ids": [drop["id"], 10**6]}).status_code == 404


def test_delete_a_trained_run_removes_its_rows_and_files(
    sqlite_stack: Stack, tiny_assets: Any, two_runs: list[dict[str, Any]]
) -> None:
    run = sqlite_stack.train(
        tiny_spec(
            tiny_assets, "manage-delete", training={"max_steps": 4, "save_steps": 2, "eval_generation_samples": 0}
        )
    )
    folder = sqlite_stack.data_dir / "runs" / f"run-{run['id']}"
    assert folder.is_dir() and all(
        count > 0 for table, count in _rows(sqlite_stack, run["id"]).items() if table != "sweep_runs"
    )
    neighbour = sqlite_stack.data_dir / "runs" / f"run-{two_runs[0]['id']}"
    with sqlite_stack.client() as client:
        answer = client.delete(f"/api/runs/{run['id']}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["deleted"] == [run["id"]] and answer.json()["freed_bytes"] == run["disk_bytes"] > 0
        assert client.get(f"/api/runs/{run['id']}").status_code == 404
        assert client.delete(f"/api/runs/{run['id']}").status_code == 404
    assert not folder.exists() and neighbour.is_dir()
    assert set(_rows(sqlite_stack, run["id"]).values()) == {0}
    assert not any((sqlite_stack.data_dir / "runs" / ".trash").iterdir())


def test_a_running_run_is_not_deleted(sqlite_stack: Stack, tiny_assets: Any) -> None:
    spec = tiny_spec(tiny_assets, "manage-running", training={"max_steps": 100_000, "batch_size": 2, "eval_steps": 50})
    with sqlite_stack.client() as client:
        run_id = client.post("/api/runs", json=spec).json()["id"]
        try:
            wait_for_running(client, run_id)
            refused = client.delete(f"/api/runs/{run_id}")
            assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"], refused.text
            bulk = client.post("/api/runs/bulk/delete", json={"run_ids": [run_id]})
            assert bulk.status_code == 409
        finally:
            client.post(f"/api/runs/{run_id}/cancel")
            sqlite_stack.wait_for_run(run_id)
        assert client.delete(f"/api/runs/{run_id}").status_code == 200
    assert not (sqlite_stack.data_dir / "runs" / f"run-{run_id}").exists()


def test_delete_a_sweep_keeps_the_runs_it_reused(
    sqlite_stack: Stack, tiny_assets: Any, two_runs: list[dict[str, Any]]
) -> None:
    keep = two_runs[0]
    base = {k: v for k, v in keep["spec"].items() if k != "name"}
    request = {
        "name": "manage-sweep",
        "base": base,
        "grid": {"training.learning_rate": [keep["spec"]["training"]["learning_rate"], 1e-3]},
    }
    with sqlite_stack.client() as client:
        sweep = client.post("/api/sweeps", json=request)
        assert sweep.status_code == 201, sweep.text
        sweep_id = sweep.json()["id"]
        reused = [r["id"] for r in sweep.json()["runs"] if r["reused"]]
        new = [r["id"] for r in sweep.json()["runs"] if not r["reused"]]
        # the two runs differ only in placement (not hashed): the newest succeeded one is reused
        assert reused == [two_runs[1]["id"]] and len(new) == 1
        for run_id in new:
            sqlite_stack.wait_for_run(run_id)
        assert client.patch(f"/api/sweeps/{sweep_id}", json={"tags": ["s1"], "archived": True}).json()["archived"]
        assert sweep_id not in [s["id"] for s in client.get("/api/sweeps").json()]
        tagged = client.get("/api/sweeps", params={"tag": "s1", "archived": "any"}).json()
        assert [s["id"] for s in tagged] == [sweep_id]
        assert client.get("/api/sweeps", params={"tag": "s2", "archived": "any"}).json() == []
        bad_tag = client.get("/api/sweeps", params={"tag": "has space"})
        assert bad_tag.status_code == 422 and bad_tag.json()["detail"].startswith("tag:"), bad_tag.text
        answer = client.delete(f"/api/sweeps/{sweep_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["deleted"] == new
        assert [k["id"] for k in answer.json()["kept"]] == reused
        assert client.get(f"/api/sweeps/{sweep_id}").status_code == 404
        assert client.get(f"/api/runs/{reused[0]}").status_code == 200
        assert client.get(f"/api/runs/{new[0]}").status_code == 404
