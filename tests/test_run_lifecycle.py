"""The run lifecycle's conditional updates on a real SQLite database (fast; no workers), and which checkpoints
count as complete. The same code under real faults, workers and PostgreSQL: tests/test_reliability.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from runspec import RunSpec
from tunedeck_state import lifecycle
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run, utcnow

pytestmark = pytest.mark.reliability


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    from alembic import command

    from tunedeck_state.db import make_engine
    from tunedeck_state.migrate import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'lifecycle.sqlite'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with Session(engine, expire_on_commit=False) as db:
        yield db
    engine.dispose()


def new_running_run(session: Session, max_retries: int = 0) -> Run:
    spec = RunSpec.model_validate({"name": "r", "training": {"max_retries": max_retries}})
    run = run_service.create_run(session, spec)
    session.commit()
    assert run_service.claim_run(session, run.id, 1, "training@test")
    session.commit()
    return run


def age_heartbeat(session: Session, run: Run, seconds: float) -> None:
    session.execute(update(Run).where(Run.id == run.id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
    session.commit()


def reasons(session: Session, run: Run) -> list[tuple[str, str]]:
    session.expire_all()
    return [(event.to_status, event.reason or "") for event in run_service.get_run(session, run.id).events]


def test_a_stale_heartbeat_fails_the_run_and_a_fresh_one_does_not(session: Session) -> None:
    fresh, stale = new_running_run(session), new_running_run(session)
    age_heartbeat(session, fresh, 5)
    age_heartbeat(session, stale, 30)

    assert lifecycle.reap_lost_runs(session, timeout_seconds=10) == []
    session.commit()
    session.expire_all()
    assert run_service.get_run(session, fresh.id).status == "running"
    lost = run_service.get_run(session, stale.id)
    assert lost.status == "failed" and lost.finished_at is not None
    assert lost.error and lost.error.startswith("worker lost: no heartbeat for 30 s")
    assert reasons(session, stale)[-1] == ("failed", lost.error)

    # Its late heartbeats (a worker that was only cut off) write nothing and tell the training to stop.
    update_ = run_service.ProgressUpdate(step=9, metrics=[(9, "loss", 1.0)])
    assert run_service.record_progress(session, stale.id, update_, attempt=1) is True
    session.commit()
    assert run_service.get_metrics(session, stale.id) == []


def test_retries_requeue_a_new_attempt_until_max_retries(session: Session) -> None:
    run = new_running_run(session, max_retries=1)
    age_heartbeat(session, run, 60)
    retries = lifecycle.reap_lost_runs(session, timeout_seconds=10)
    session.commit()
    assert retries == [lifecycle.Attempt(run.id, 2)]
    session.expire_all()
    requeued = run_service.get_run(session, run.id)
    assert (requeued.status, requeued.attempt, requeued.error) == ("queued", 2, None)
    assert reasons(session, run)[-1][1].startswith("retrying automatically (1 of 1, attempt 2) after: worker lost")

    # The old attempt's task (a duplicate delivery) cannot claim it; the new one can.
    assert not run_service.claim_run(session, run.id, 1, "training@test")
    assert run_service.claim_run(session, run.id, 2, "training@test")
    session.commit()
    # The first attempt, had it lived on, cannot finish the second one.
    done = run_service.RunOutcome(status=run_service.RunStatus.succeeded, reason="finished")
    assert not run_service.finish_run(session, run.id, done, attempt=1)

    # Lost again: no retries left.
    assert lifecycle.fail_lost_attempt(session, run.id, 2, "worker lost: killed") is None
    session.commit()
    session.expire_all()
    assert run_service.get_run(session, run.id).status == "failed"
    assert [status for status, _ in reasons(session, run)] == [
        "queued", "running", "failed", "queued", "running", "failed",
    ]  # fmt: skip


def test_resume_is_for_failed_or_cancelled_runs_once(session: Session) -> None:
    run = new_running_run(session)
    with pytest.raises(run_service.InvalidTransition):
        lifecycle.resume_run(session, run.id)
    session.rollback()

    run_service.request_cancel(session, run.id)
    outcome = run_service.RunOutcome(status=run_service.RunStatus.cancelled, reason="cancelled by the user")
    assert run_service.finish_run(session, run.id, outcome, attempt=1)
    session.commit()
    assert lifecycle.resume_run(session, run.id) == lifecycle.Attempt(run.id, 2)
    session.commit()
    resumed = run_service.get_run(session, run.id)
    assert (resumed.status, resumed.attempt, resumed.cancel_requested) == ("queued", 2, False)
    with pytest.raises(run_service.InvalidTransition):  # a second click finds it queued already
        lifecycle.resume_run(session, run.id)


def _checkpoint(root: Path, step: int, *, marked: bool = True) -> Path:
    from worker.training.checkpoints import mark_complete

    folder = root / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (folder / name).write_bytes(b"x" * (10 + step))
    if marked:
        mark_complete(folder, step)
    return folder


def test_only_complete_checkpoints_are_resumed_from(tmp_path: Path) -> None:
    from worker.training.checkpoints import MARKER, discard_checkpoints_after, last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    four = _checkpoint(tmp_path, 4)
    eight = _checkpoint(tmp_path, 8)
    _checkpoint(tmp_path, 12, marked=False)  # the process died while the Trainer was writing it
    assert last_complete_checkpoint(tmp_path) == eight
    assert json.loads((eight / MARKER).read_text())["step"] == 8

    (eight / "optimizer.pt").write_bytes(b"torn")  # rewritten after its marker: no longer the marked content
    assert last_complete_checkpoint(tmp_path) == four

    removed = discard_checkpoints_after(tmp_path, 4)
    assert sorted(p.name for p in removed) == ["checkpoint-12", "checkpoint-8"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-4"]
