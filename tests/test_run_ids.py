"""A deleted run's id is never given to a later run (SQLite reused the highest one: migration 0011 adds
AUTOINCREMENT; 0013 does the same for sweeps), and nothing keyed by a run's id outlives its delete (its metric
rollups went stale: a later run with the same id, cancelled while queued, showed the deleted run's curves in
comparisons)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from app.services import manage
from app.services.compare.series import Rollups
from runspec import RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.models import MetricRollup
from tunedeck_state.settings import Settings


def _migrator(engine: Engine) -> Any:
    from tunedeck_state.migrate import alembic_config

    config = alembic_config()

    def migrate(step: Any, revision: str) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)

    return migrate


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    from tunedeck_state.db import make_engine

    made = make_engine(f"sqlite:///{tmp_path / 'ids.sqlite'}")
    yield made
    made.dispose()


def _finished_run_with_series(session: Session, name: str) -> int:
    run = run_service.create_run(session, RunSpec.model_validate({"name": name}))
    session.commit()
    assert run_service.claim_run(session, run.id, 1, "training@test")
    session.commit()
    session.expire_all()  # the claim was an UPDATE: the session's copy of the run still says queued
    points = [(step, "loss", 3.0 - step / 10) for step in range(1, 11)]
    assert not run_service.record_progress(session, run.id, run_service.ProgressUpdate(10, metrics=points), 1)
    outcome = run_service.RunOutcome(status=run_service.RunStatus.succeeded, final_train_loss=2.0)
    assert run_service.finish_run(session, run.id, outcome, attempt=1)
    session.commit()
    return run.id


def test_a_deleted_runs_id_and_series_are_not_given_to_the_next_run(engine: Engine, tmp_path: Path) -> None:
    from alembic import command

    _migrator(engine)(command.upgrade, "head")
    settings = Settings(data_dir=tmp_path / "data")
    with Session(engine, expire_on_commit=False) as session:
        first = _finished_run_with_series(session, "first")
        deleted = _finished_run_with_series(session, "newest")
        folder = settings.runs_dir / f"run-{deleted}"
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"old weights")
        assert session.scalar(select(func.count()).where(MetricRollup.run_id == deleted)) == 1

        outcome = manage.delete_runs(session, settings, [deleted])
        assert outcome.deleted == [deleted] and outcome.freed_bytes == len(b"old weights")
        assert session.scalar(select(func.count()).where(MetricRollup.run_id == deleted)) == 0
        assert session.scalar(select(func.count()).where(MetricRollup.run_id == first)) == 1

        later = run_service.create_run(session, RunSpec.model_validate({"name": "later"}))
        session.commit()
        assert later.id > deleted  # before: later.id == deleted
        assert not (settings.runs_dir / f"run-{later.id}").exists()
        run_service.request_cancel(session, later.id)  # queued -> cancelled: never trained, no series of its own
        session.commit()
        assert Rollups(session, [run_service.get_run(session, later.id)]).of(later.id) == {}


def _insert_run(connection: Any, run_id: int | None) -> None:
    columns = "name, status, method, model, spec, spec_hash, created_at, attempt, cancel_requested, step, "
    columns += "max_steps, details, latest_metrics"
    values = "'r', 'succeeded', 'lora', 'm', '{}', 'h', '2026-01-01', 1, false, 0, 1, '{}', '{}'"
    if run_id is None:
        connection.execute(text(f"INSERT INTO runs ({columns}) VALUES ({values})"))
    else:
        connection.execute(text(f"INSERT INTO runs (id, {columns}) VALUES (:id, {values})"), {"id": run_id})


def test_migration_0011_keeps_every_row_and_stops_id_reuse(engine: Engine) -> None:
    """The rebuild runs with foreign keys on (as `tunedeck db upgrade` does): the rows that refer to runs stay."""
    from alembic import command

    migrate = _migrator(engine)
    migrate(command.upgrade, "0010_compare_scale")

    def snapshot() -> dict[str, Any]:
        with engine.connect() as connection:
            sql = connection.exec_driver_sql
            return {
                "counts": [sql(f"SELECT count(*) FROM {t}").scalar() for t in ("runs", "run_logs", "sweep_runs")],
                "in_sweep": sql("SELECT count(*) FROM runs WHERE sweep_id = 1").scalar(),
                "columns": [tuple(row[1:]) for row in sql("PRAGMA table_info(runs)")],
                "indexes": sorted(row[1] for row in sql("PRAGMA index_list(runs)")),
                "sql": sql("SELECT sql FROM sqlite_master WHERE name = 'runs'").scalar_one(),
            }

    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO sweeps (id, name, request, varied, created_at, trials_asked) "
            "VALUES (1, 's', '{}', '[]', '2026-01-01', 0)"
        )
        for run_id in (1, 2, 3):
            _insert_run(connection, run_id)
            connection.execute(
                text("INSERT INTO run_logs (run_id, created_at, message) VALUES (:id, '2026-01-01', 'x')"),
                {"id": run_id},
            )
        connection.exec_driver_sql("UPDATE runs SET sweep_id = 1")
        connection.exec_driver_sql("INSERT INTO sweep_runs (sweep_id, run_id, position, reused) VALUES (1, 3, 0, 0)")
    before = snapshot()
    assert "AUTOINCREMENT" not in before["sql"]
    migrate(command.upgrade, "0011_run_ids_never_reused")  # 0012 adds the list indexes
    after = snapshot()
    assert "AUTOINCREMENT" in after["sql"]
    assert (after["counts"], after["in_sweep"], after["columns"], after["indexes"]) == (
        [3, 3, 1],
        3,
        before["columns"],
        before["indexes"],
    )
    with engine.begin() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        connection.exec_driver_sql("DELETE FROM runs WHERE id = 3")  # its log line and membership go with it
        _insert_run(connection, None)
        assert connection.exec_driver_sql("SELECT max(id) FROM runs").scalar() == 4
    migrate(command.downgrade, "0010_compare_scale")
    back = snapshot()
    assert "AUTOINCREMENT" not in back["sql"] and back["counts"] == [3, 2, 0] and back["columns"] == before["columns"]


def test_the_workers_model_cache_tells_runs_apart_by_more_than_their_folder(tmp_path: Path) -> None:
    """The generation cache's key held the folder and its files' newest mtime: a later run whose adapter lands in
    the same folder with the same times (a restored backup, a coarse clock) would have been answered by the deleted
    run's cached model. The key now names the run too (its id and creation time)."""
    from worker.training.generate import ModelSource

    adapter = tmp_path / "runs" / "run-2" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")

    def source(owner: str) -> ModelSource:
        return ModelSource(kind="adapter", model="base", adapter_dir=str(adapter), owner=owner)

    deleted, later = source("2@2026-12-01T10:00:00"), source("2@2026-12-02T10:00:00")
    assert deleted.cache_key() != later.cache_key()
    assert deleted.cache_key() == source("2@2026-12-01T10:00:00").cache_key()


def test_migration_0013_keeps_sweep_members_and_stops_sweep_id_reuse(engine: Engine) -> None:
    """Dropping the old sweeps table cascades to sweep_runs and clears runs.sweep_id: both come back."""
    from alembic import command

    migrate = _migrator(engine)
    migrate(command.upgrade, "0012_runs_list_scale")

    def snapshot() -> dict[str, Any]:
        with engine.connect() as connection:
            sql = connection.exec_driver_sql
            return {
                "members": sql("SELECT sweep_id, run_id, position FROM sweep_runs ORDER BY 1, 2").all(),
                "run_sweeps": sql("SELECT id, sweep_id FROM runs ORDER BY id").all(),
                "columns": [tuple(row[1:]) for row in sql("PRAGMA table_info(sweeps)")],
                "indexes": sorted(row[1] for row in sql("PRAGMA index_list(sweeps)")),
                "sql": sql("SELECT sql FROM sqlite_master WHERE name = 'sweeps'").scalar_one(),
            }

    def insert_sweep(connection: Any, sweep_id: int | None) -> int:
        columns = "name, request, varied, created_at, trials_asked"
        values = "'s', '{}', '[]', '2026-01-01', 0"
        if sweep_id is not None:
            columns, values = f"id, {columns}", f"{sweep_id}, {values}"
        return connection.exec_driver_sql(f"INSERT INTO sweeps ({columns}) VALUES ({values}) RETURNING id").scalar()

    with engine.begin() as connection:
        for sweep_id in (1, 2):
            insert_sweep(connection, sweep_id)
        for run_id, sweep_id in ((1, 1), (2, 2), (3, None)):
            _insert_run(connection, run_id)
            connection.execute(text("UPDATE runs SET sweep_id = :s WHERE id = :r"), {"s": sweep_id, "r": run_id})
        connection.exec_driver_sql(
            "INSERT INTO sweep_runs (sweep_id, run_id, position, reused) "
            "VALUES (1, 1, 0, 0), (2, 2, 0, 0), (2, 1, 1, 1)"
        )
    before = snapshot()
    assert "AUTOINCREMENT" not in before["sql"]
    migrate(command.upgrade, "0013_sweep_ids_never_reused")
    after = snapshot()
    assert "AUTOINCREMENT" in after["sql"]
    assert {key: after[key] for key in ("members", "run_sweeps", "columns", "indexes")} == {
        key: before[key] for key in ("members", "run_sweeps", "columns", "indexes")
    }
    assert after["run_sweeps"] == [(1, 1), (2, 2), (3, None)]
    with engine.begin() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        connection.exec_driver_sql("DELETE FROM sweeps WHERE id = 2")  # the newest
        assert insert_sweep(connection, None) == 3  # before: 2 again
    migrate(command.downgrade, "0012_runs_list_scale")
    back = snapshot()
    assert "AUTOINCREMENT" not in back["sql"] and back["columns"] == before["columns"]
    assert back["members"] == [(1, 1, 0)] and back["run_sweeps"] == [(1, 1), (2, None), (3, None)]


def test_device_seconds_add_up_over_attempts(engine: Engine) -> None:
    """A run's device time is every attempt's, claim to end: a resumed run keeps the first attempt's (what a
    search sweep's budget.gpu_hours adds up); started_at alone tells only the last one."""
    from datetime import timedelta

    from alembic import command

    from tunedeck_state.lifecycle import resume_run
    from tunedeck_state.search.trials import device_hours

    _migrator(engine)(command.upgrade, "head")

    def started_ago(session: Session, run_id: int, seconds: float) -> None:
        session.execute(
            text("UPDATE runs SET started_at = :t WHERE id = :id"),
            {"t": (run_service.utcnow() - timedelta(seconds=seconds)).replace(tzinfo=None), "id": run_id},
        )

    with Session(engine, expire_on_commit=False) as session:
        run = run_service.create_run(session, RunSpec.model_validate({"name": "twice"}))
        session.commit()
        assert run_service.claim_run(session, run.id, 1, "training@test")
        started_ago(session, run.id, 100)
        cancelled = run_service.RunOutcome(status=run_service.RunStatus.cancelled)
        assert run_service.finish_run(session, run.id, cancelled, 1)
        session.commit()
        first = run_service.get_run(session, run.id)
        session.refresh(first)
        assert 100 <= first.device_seconds < 110

        resume_run(session, run.id)
        session.commit()
        assert run_service.claim_run(session, run.id, 2, "training@test")
        started_ago(session, run.id, 50)
        session.commit()
        running = run_service.get_run(session, run.id)
        session.refresh(running)
        assert 150 <= device_hours([running]) * 3600 < 165  # ended attempts plus the running one's so far
        outcome = run_service.RunOutcome(status=run_service.RunStatus.succeeded, final_train_loss=1.0)
        assert run_service.finish_run(session, run.id, outcome, 2)
        session.commit()
        session.refresh(running)
        assert 150 <= running.device_seconds < 165 and 150 <= device_hours([running]) * 3600 < 165


def test_migration_0014_gives_ended_runs_their_last_attempts_time(engine: Engine) -> None:
    from alembic import command

    migrate = _migrator(engine)
    migrate(command.upgrade, "0013_sweep_ids_never_reused")
    with engine.begin() as connection:
        for run_id in (1, 2):
            _insert_run(connection, run_id)
        connection.exec_driver_sql(
            "UPDATE runs SET started_at = '2026-01-01 10:00:00.000000', finished_at = '2026-01-01 10:00:30.500000' "
            "WHERE id = 1"
        )
    migrate(command.upgrade, "0014_run_device_seconds")
    with engine.connect() as connection:
        held = dict(connection.exec_driver_sql("SELECT id, device_seconds FROM runs").all())
    assert held[1] == pytest.approx(30.5, abs=0.01) and held[2] == 0
    migrate(command.downgrade, "0013_sweep_ids_never_reused")
