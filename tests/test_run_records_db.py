"""Run management on both databases (SQLite and PostgreSQL, migrated to head): the tag and archive filters, and a
delete that removes every row of a run and its folder, and is put back when the transaction fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.services import manage
from runspec import RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.models import Metric, Run, RunEvent, RunLog, RunStatus
from tunedeck_state.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    from alembic import command

    from tunedeck_state.db import make_engine
    from tunedeck_state.migrate import alembic_config

    url = (
        f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    engine = make_engine(url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with Session(engine, expire_on_commit=False) as db:
        yield db
        db.rollback()
        db.execute(Run.__table__.delete())  # the PostgreSQL database is shared by the session's tests
        db.commit()
    engine.dispose()


def finished_run(session: Session, name: str, tags: list[str]) -> Run:
    run = run_service.create_run(session, RunSpec.model_validate({"name": name}))
    run.status, run.tags = RunStatus.succeeded.value, tags
    session.flush()
    run_service.upsert_metrics(session, run.id, [(1, "loss", 1.0), (2, "loss", 0.5)])
    session.add(RunLog(run_id=run.id, message="hello"))
    session.commit()
    return run


def test_filters_and_delete(session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    a = finished_run(session, "a", ["best", "微调"])
    b = finished_run(session, "b", ["bestest"])
    assert [r.id for r in run_service.list_runs(session, tag="best").items] == [a.id]
    assert [r.id for r in run_service.list_runs(session, tag="微调").items] == [a.id]
    manage.set_archived(session, [b.id], True)
    assert [r.id for r in run_service.list_runs(session, sort="train_loss").items] == [a.id]
    assert [r.id for r in run_service.list_runs(session, archived=True).items] == [b.id]

    folder = settings.runs_dir / f"run-{a.id}"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "weights").write_bytes(b"x" * 1000)
    outcome = manage.delete_runs(session, settings, [a.id])
    assert outcome.deleted == [a.id] and outcome.freed_bytes == 1000 and not folder.exists()
    for table in (Metric, RunLog, RunEvent):
        assert session.scalar(select(func.count()).select_from(table).where(table.run_id == a.id)) == 0
    assert session.get(Run, a.id) is None and session.get(Run, b.id) is not None

    # A run that is resumed meanwhile is not deleted, and its folder is put back.
    folder_b = settings.runs_dir / f"run-{b.id}"
    folder_b.mkdir(parents=True)
    session.execute(Run.__table__.update().where(Run.id == b.id).values(status="queued"))
    with pytest.raises(manage.Refused):
        manage._delete(session, settings, [session.get(Run, b.id)], manage.Deletion())  # type: ignore[list-item]
    assert folder_b.is_dir() and session.get(Run, b.id) is not None
