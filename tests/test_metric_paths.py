"""The metric write path (a worker's reporter → one upsert per batch) and the read paths that must stay cheap at
scale (run lists never touch the metrics table), on real SQLite and PostgreSQL. Timings live in bench/."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select, text

from harness.stack import Stack

KEYS = ("loss", "learning_rate", "tokens_per_second", "memory_bytes")


def _point_database(data_dir: Path, database_url: str | None) -> None:
    """Point this process's settings, engine and sessions at a database, migrated to head."""
    from tunedeck_state.db import get_engine, get_sessionmaker
    from tunedeck_state.migrate import upgrade_database
    from tunedeck_state.settings import get_settings

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    os.environ["TUNEDECK_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["TUNEDECK_DATABASE_URL"] = database_url
    else:
        os.environ.pop("TUNEDECK_DATABASE_URL", None)
    for cached in (get_settings, get_engine, get_sessionmaker):
        cached.cache_clear()
    upgrade_database()


@contextmanager
def _scratch_postgres() -> Iterator[str]:
    """A database of its own (the session's postgres_url is shared with the stacks' runs)."""
    import sqlalchemy as sa

    from tests.conftest import POSTGRES_ADMIN_URL, _services_unavailable

    name = f"tunedeck_test_{uuid.uuid4().hex[:10]}"
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in ("TUNEDECK_DATA_DIR", "TUNEDECK_DATABASE_URL")}
    with ExitStack() as stack:
        url = stack.enter_context(_scratch_postgres()) if request.param == "postgres" else None
        _point_database(tmp_path, url)
        try:
            yield request.param
        finally:
            from tunedeck_state.db import get_engine, get_sessionmaker
            from tunedeck_state.settings import get_settings

            get_engine().dispose()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for cached in (get_settings, get_engine, get_sessionmaker):
                cached.cache_clear()


def _running_run(name: str = "r") -> int:
    from tunedeck_state.db import session_scope
    from tunedeck_state.models import Run, RunStatus, utcnow

    with session_scope() as session:
        run = Run(
            name=name,
            status=RunStatus.running,
            method="lora",
            model="m",
            spec={},
            spec_hash="h",
            started_at=utcnow(),
            heartbeat_at=utcnow(),
            details={},
            latest_metrics={},
        )
        session.add(run)
        session.flush()
        return run.id


def test_reporter_stores_every_point_once_and_a_resumed_attempt_overwrites(database: str) -> None:
    """Points logged through the worker's reporter, over several flushes, then steps logged again (as a resumed
    attempt does after its checkpoint) with new values: each (key, step) is stored once, with the last value."""
    from tunedeck_state.db import session_scope
    from tunedeck_state.models import Metric, Run
    from worker.reporting import DatabaseReporter

    run_id = _running_run()
    with DatabaseReporter(run_id, flush_seconds=0.05, attempt=1) as reporter:
        reporter.progress(0, 3000)
        for step in range(1, 2001):
            reporter.metrics(step, {key: step + k / 4 for k, key in enumerate(KEYS)})
            reporter.progress(step, 3000)
            if step % 500 == 0:
                reporter.flush()  # a batch boundary in the middle of the steps, as the flusher thread makes them
    with DatabaseReporter(run_id, flush_seconds=0.05, attempt=1) as reporter:  # resumed from step 1500
        for step in range(1501, 3001):
            reporter.metrics(step, {key: -(step + k / 4) for k, key in enumerate(KEYS)})
            # the same step twice in one batch: the last value wins
            reporter.metrics(step, {"loss": -float(step)})
    with session_scope() as session:
        counts = dict(
            session.execute(select(Metric.key, func.count()).where(Metric.run_id == run_id).group_by(Metric.key)).all()
        )
        distinct = session.scalar(
            select(func.count()).select_from(
                select(Metric.key, Metric.step).where(Metric.run_id == run_id).distinct().subquery()
            )
        )
        values = dict(
            session.execute(
                select(Metric.step, Metric.value).where(Metric.run_id == run_id, Metric.key == "loss")
            ).all()
        )
        run = session.get(Run, run_id)
        assert run is not None
        latest, details = run.latest_metrics, run.details
    assert counts == {key: 3000 for key in KEYS}
    assert distinct == 4 * 3000
    assert values[1500] == 1500.0 and values[1501] == -1501.0 and values[3000] == -3000.0
    assert latest["loss"] == {"step": 3000, "value": -3000.0}
    assert "first_step_at" in details  # when the first optimizer step ended (bench/launch.py)


def test_run_lists_page_sort_and_search_without_reading_metrics(database: str) -> None:
    from tunedeck_state import runs as run_service
    from tunedeck_state.db import session_scope
    from tunedeck_state.models import Run
    from tunedeck_state.runs import upsert_metrics

    with session_scope() as session:
        for i in range(30):
            session.add(
                Run(
                    name=f"{'Alpha' if i % 3 == 0 else 'beta'}_{i:02d}%",
                    status="succeeded" if i % 2 else "failed",
                    method="lora",
                    model="m",
                    spec={},
                    spec_hash="h",
                    details={},
                    latest_metrics={"loss": {"step": 1, "value": 1.0}},
                    final_train_loss=None if i % 5 == 0 else float(30 - i),
                )
            )
        session.flush()
        first = session.scalar(select(func.min(Run.id)))
        assert first is not None
        upsert_metrics(session, first, [(1, "loss", 1.0)])

    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    from tunedeck_state.db import get_engine

    event.listen(get_engine(), "before_cursor_execute", capture)
    try:
        with session_scope() as session:
            newest = run_service.list_runs(session, limit=10)
            by_loss = run_service.list_runs(session, sort="train_loss", limit=30)
            by_loss_desc = run_service.list_runs(session, sort="-train_loss", limit=30)
            page_two = run_service.list_runs(session, sort="name", limit=10, offset=10)
            alpha = run_service.list_runs(session, name="alpha", status="failed")
            percent = run_service.list_runs(session, name="0%")  # LIKE's wildcards are plain characters here
            underscore = run_service.list_runs(session, name="_0")
            names = [run.name for run in run_service.list_runs(session, sort="name", limit=30).items]
            # Loss sorts read their ids from a covering index, the filters checked in it.
            failed_by_loss = run_service.list_runs(session, status="failed", sort="train_loss", limit=4, offset=2)
            beta_by_loss = run_service.list_runs(session, name="BETA", method="lora", sort="-train_loss")
            everything = run_service.list_runs(session, limit=30).items
    finally:
        event.remove(get_engine(), "before_cursor_execute", capture)
    assert statements and not [s for s in statements if "metrics" in s.replace("latest_metrics", "")]
    assert newest.total == 30 and [r.id for r in newest.items] == sorted((r.id for r in newest.items), reverse=True)
    losses = [r.final_train_loss for r in by_loss.items]
    assert losses[:24] == sorted(x for x in losses if x is not None) and losses[24:] == [None] * 6  # nulls last
    losses_desc = [r.final_train_loss for r in by_loss_desc.items]
    assert losses_desc[0] == 29.0 and losses_desc[24:] == [None] * 6
    assert [r.name for r in page_two.items] == names[10:20]
    assert alpha.total == 5 and all(r.name.startswith("Alpha") and r.status == "failed" for r in alpha.items)
    assert sorted(r.name for r in percent.items) == ["Alpha_00%", "beta_10%", "beta_20%"]
    assert underscore.total == 10 and all("_0" in r.name for r in underscore.items)

    def by_loss_then_newest(runs: Any, descending: bool) -> list[int]:
        with_loss = sorted(
            (r for r in runs if r.final_train_loss is not None),
            key=lambda r: (-r.final_train_loss if descending else r.final_train_loss, -r.id),
        )
        return [r.id for r in with_loss] + sorted((r.id for r in runs if r.final_train_loss is None), reverse=True)

    failed = [r for r in everything if r.status == "failed"]
    assert failed_by_loss.total == 15
    assert [r.id for r in failed_by_loss.items] == by_loss_then_newest(failed, descending=False)[2:6]
    beta = [r for r in everything if r.name.startswith("beta")]
    assert beta_by_loss.total == 20 and [r.id for r in beta_by_loss.items] == by_loss_then_newest(beta, True)
    if database == "sqlite":
        page_ids = [s for s in statements if s.split("from", 1)[0].strip() == "select runs.id"]
        loss_sorts = [s for s in page_ids if "order by runs.final_train_loss" in s]
        assert loss_sorts and all("indexed by ix_runs_final_train_loss_cover" in s for s in loss_sorts)
        with session_scope() as session:
            plan = session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + loss_sorts[-1], ("lora", "BETA", 50, 0))
            assert "COVERING INDEX ix_runs_final_train_loss_cover" in " ".join(str(row[3]) for row in plan)
    with pytest.raises(ValueError, match="sort must be one of"), session_scope() as session:
        run_service.list_runs(session, sort="spec")


def _migrator(engine: Any) -> Any:
    """migrate(command.upgrade | command.downgrade, revision) on `engine`, in a transaction."""
    from tunedeck_state.migrate import alembic_config

    config = alembic_config()

    def migrate(step: Any, revision: str) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)

    return migrate


def _store_one_run_with_points(engine: Any, steps: int) -> list[tuple[int, str, int, float]]:
    """Run 1 with `steps` steps of every KEYS metric, written with plain SQL (the schema of an older revision)."""
    rows = [(1, key, step, step + k / 4) for step in range(1, steps + 1) for k, key in enumerate(KEYS)]
    placeholders = ", ".join(["?" if engine.dialect.paramstyle == "qmark" else "%s"] * 4)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO runs (id, name, status, method, model, spec, spec_hash, created_at, attempt, "
                "cancel_requested, step, max_steps, details, latest_metrics) VALUES (1, 'r', 'succeeded', 'lora', "
                "'m', '{}', 'h', '2026-01-01', 1, false, :steps, :steps, '{}', '{}')"
            ),
            {"steps": steps},
        )
        connection.exec_driver_sql(f"INSERT INTO metrics (run_id, key, step, value) VALUES ({placeholders})", rows)
    return rows


def test_metrics_migration_keeps_every_point(tmp_path: Path) -> None:
    """0005 rebuilds the metrics table keyed by (run, key, step), 0006 without its foreign key, and back, points
    intact (SQLite)."""
    from alembic import command

    from tunedeck_state.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'migrate.sqlite'}")
    migrate = _migrator(engine)
    migrate(command.upgrade, "0004_worker_placement")
    rows = _store_one_run_with_points(engine, steps=200)
    migrate(command.upgrade, "0005_metric_read_path")
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT run_id, key, step, value FROM metrics").all()
        table = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'metrics'").scalar_one()
    assert sorted(map(tuple, stored)) == sorted(rows)
    assert "WITHOUT ROWID" in table and "PRIMARY KEY (run_id" in table and "FOREIGN KEY" in table
    migrate(command.upgrade, "0006_metrics_without_foreign_key")
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT run_id, key, step, value FROM metrics").all()
        table = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'metrics'").scalar_one()
    assert sorted(map(tuple, stored)) == sorted(rows)
    assert "WITHOUT ROWID" in table and "PRIMARY KEY (run_id" in table and "FOREIGN KEY" not in table
    migrate(command.downgrade, "0004_worker_placement")
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT run_id, key, step, value FROM metrics").all()
    assert sorted(map(tuple, stored)) == sorted(rows)
    engine.dispose()


@pytest.mark.services
def test_postgres_metrics_lose_their_foreign_key_and_get_it_back(tmp_path: Path) -> None:
    """0006 on PostgreSQL: the per-row foreign-key trigger goes (the write path's main cost), points stay."""
    from alembic import command

    from tunedeck_state.db import make_engine

    with _scratch_postgres() as url:
        engine = make_engine(url)
        migrate = _migrator(engine)

        def foreign_keys() -> list[str]:
            with engine.connect() as connection:
                return list(
                    connection.scalars(
                        text("SELECT conname FROM pg_constraint WHERE conrelid = 'metrics'::regclass AND contype = 'f'")
                    )
                )

        migrate(command.upgrade, "0005_metric_read_path")
        rows = _store_one_run_with_points(engine, steps=50)
        assert len(foreign_keys()) == 1
        migrate(command.upgrade, "head")
        assert foreign_keys() == []
        migrate(command.downgrade, "0005_metric_read_path")
        assert foreign_keys() == ["metrics_run_id_fkey"]
        with engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT run_id, key, step, value FROM metrics").all()
        assert sorted(map(tuple, stored)) == sorted(rows)
        engine.dispose()


def test_runs_api_sorts_searches_and_names_a_bad_sort(sqlite_stack: Stack) -> None:
    with httpx.Client(base_url=sqlite_stack.base_url, timeout=60) as client:
        bad = client.get("/api/runs", params={"sort": "spec"})
        assert bad.status_code == 422 and "sort" in bad.text
        answer = client.get("/api/runs", params={"sort": "name", "name": "no-such-run-name", "limit": 5})
        assert answer.status_code == 200 and answer.json()["items"] == [] and answer.json()["total"] == 0
        page = client.get("/", params={"sort": "-name", "status": "", "page": 1})
        assert page.status_code == 200 and 'id="runs-filter"' in page.text
        assert client.get("/", params={"sort": "bogus"}).status_code == 422
