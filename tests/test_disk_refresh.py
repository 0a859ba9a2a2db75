"""disk_bytes for runs that lack it or whose folder changed outside tunedeck: `refresh_disk_bytes`, the
`tunedeck disk refresh` command, and the web server's backfill of missing sizes when it starts
(tunedeck_state/disk.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from runspec import RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.disk import REFRESH_BATCH, refresh_disk_bytes
from tunedeck_state.models import Run, RunStatus
from tunedeck_state.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _tunedeck(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNEDECK_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    env.pop("TUNEDECK_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tunedeck_cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _engine(data_dir: Path) -> Engine:
    from tunedeck_state.db import make_engine

    return make_engine(f"sqlite:///{data_dir / 'tunedeck.sqlite'}")


def _stored_runs(data_dir: Path, statuses: list[RunStatus]) -> list[int]:
    """Runs as an older tunedeck left them: no disk_bytes, a folder with files."""
    engine = _engine(data_dir)
    ids = []
    with Session(engine) as session:
        for i, status in enumerate(statuses):
            run = run_service.create_run(session, RunSpec.model_validate({"name": f"old-{i}"}))
            session.flush()
            session.execute(update(Run).where(Run.id == run.id).values(status=status.value, disk_bytes=None))
            ids.append(run.id)
        session.commit()
    engine.dispose()
    for i, run_id in enumerate(ids):
        adapter = data_dir / "runs" / f"run-{run_id}" / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_model.safetensors").write_bytes(b"w" * (100 * (i + 1)))
    return ids


def _sizes(data_dir: Path) -> dict[int, int | None]:
    engine = _engine(data_dir)
    with engine.connect() as connection:
        sizes = {run_id: size for run_id, size in connection.execute(select(Run.id, Run.disk_bytes))}
    engine.dispose()
    return sizes


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    migrated = _tunedeck(tmp_path / "data", "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    return tmp_path / "data"


def test_refresh_fills_missing_sizes_then_remeasures_changed_folders(data_dir: Path) -> None:
    done, failed, running = _stored_runs(data_dir, [RunStatus.succeeded, RunStatus.failed, RunStatus.running])
    settings = Settings(data_dir=data_dir)
    engine = _engine(data_dir)
    with Session(engine) as session:
        changed = refresh_disk_bytes(session, settings, missing_only=True)
    # the running run's worker measures it; the finished ones had nothing
    assert [(c.run_id, c.before, c.after) for c in changed] == [(done, None, 100), (failed, None, 200)]
    assert _sizes(data_dir) == {done: 100, failed: 200, running: None}

    (data_dir / "runs" / f"run-{done}" / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 7)
    with Session(engine) as session:
        assert refresh_disk_bytes(session, settings, missing_only=True) == []  # sizes there: left alone
        assert [(c.run_id, c.after) for c in refresh_disk_bytes(session, settings, run_ids=[done])] == [(done, 7)]
    engine.dispose()


def test_refresh_walks_every_run_in_batches(data_dir: Path) -> None:
    ids = _stored_runs(data_dir, [RunStatus.succeeded] * (REFRESH_BATCH + 3))
    engine = _engine(data_dir)
    with Session(engine) as session:
        changed = refresh_disk_bytes(session, Settings(data_dir=data_dir))
    engine.dispose()
    assert [c.run_id for c in changed] == ids and all(size is not None for size in _sizes(data_dir).values())


def test_disk_refresh_command(data_dir: Path) -> None:
    first, second = _stored_runs(data_dir, [RunStatus.succeeded, RunStatus.cancelled])
    answer = _tunedeck(data_dir, "disk", "refresh", str(second))
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == [f"run {second}: none -> 200 B", "1 run changed"]
    assert _sizes(data_dir) == {first: None, second: 200}
    answer = _tunedeck(data_dir, "disk", "refresh")
    assert answer.returncode == 0 and answer.stdout.splitlines()[-1] == "1 run changed", answer.stdout


def test_the_web_server_fills_missing_sizes_when_it_starts(data_dir: Path) -> None:
    (run_id,) = _stored_runs(data_dir, [RunStatus.succeeded])
    # the real application's lifespan, in a process of its own (settings and engine are per process)
    script = (
        "import time\n"
        "from fastapi.testclient import TestClient\n"
        "from app.web.app import create_app\n"
        "with TestClient(create_app(), base_url='http://127.0.0.1') as client:\n"
        f"    for _ in range(100):\n"
        f"        size = client.get('/api/runs/{run_id}').json()['disk_bytes']\n"
        "        if size is not None: break\n"
        "        time.sleep(0.1)\n"
        "print(size)\n"
    )
    env = {**os.environ, "TUNEDECK_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    env.pop("TUNEDECK_DATABASE_URL", None)
    answer = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.strip().splitlines()[-1] == "100"
