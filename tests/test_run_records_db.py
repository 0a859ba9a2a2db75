"""Run management on both databases (SQLite and PostgreSQL, migrated to head): the tag and archive filters, and a
delete that removes every row of a run and its folder, and is put back when the transaction fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def many_runs(session: Session, count: int) -> list[Run]:
    """Runs with repeated statuses and methods, tied and missing losses, a few archived: every sort has ties and
    nulls to order."""
    statuses, methods = ["succeeded", "failed", "queued"], ["lora", "qlora", "ia3", "full"]
    runs = [
        Run(
            name=f"{'Alpha' if i % 3 == 0 else 'beta'}-{i % 17:02d}",  # names repeat too
            status=statuses[i % 3],
            method=methods[i % 4],
            model="m",
            spec={},
            spec_hash="h",
            details={},
            latest_metrics={},
            final_train_loss=None if i % 5 == 0 else float(i % 7),
            final_eval_loss=None if i % 2 else float(i % 4) / 3,
            disk_bytes=None if i % 3 == 1 else (i % 6) * 1000,
            archived=i % 11 == 0,
            tags=["best", "r8"] if i % 4 == 1 else ["bestest"] if i % 4 == 2 else [],
        )
        for i in range(count)
    ]
    session.add_all(runs)
    session.commit()
    return runs


def expected_order(runs: list[Run], sort: str) -> list[int]:
    """RUN_SORTS' order computed here: runs without a value last, ties newest first."""
    key = sort.removeprefix("-")
    attribute = run_service.RUN_SORTS[key].key
    descending = sort.startswith("-")
    newest = sorted(runs, key=lambda r: -r.id)
    if key == "created":
        return [r.id for r in (newest if descending else newest[::-1])]
    valued = sorted((r for r in newest if getattr(r, attribute) is not None), key=lambda r: getattr(r, attribute))
    if descending:  # a stable sort keeps ties newest first
        valued = sorted(valued, key=lambda r: getattr(r, attribute), reverse=True)
    return [r.id for r in valued] + [r.id for r in newest if getattr(r, attribute) is None]


def pages_by(session: Session, how: str, sort: str, **filters: Any) -> tuple[list[int], int]:
    """Every page of a list, 7 runs a page, by offset or by cursor; the ids in order and the total."""
    ids: list[int] = []
    cursor: str | None = None
    while True:
        if how == "offset":
            page = run_service.list_runs(session, sort=sort, limit=7, offset=len(ids), **filters)
        else:
            page = run_service.list_runs(session, sort=sort, limit=7, cursor=cursor, **filters)
        ids += [r.id for r in page.items]
        cursor = page.next_cursor
        if (how == "offset" and len(page.items) < 7) or (how == "cursor" and cursor is None):
            return ids, page.total
        assert len(page.items) == 7


@pytest.mark.parametrize(
    "filters", [{}, {"status": "failed"}, {"method": "lora", "name": "ALPHA"}, {"archived": None}, {"tag": "best"}]
)
def test_cursor_pages_are_the_offset_pages(session: Session, filters: dict[str, Any]) -> None:
    runs = many_runs(session, 80)
    for sort in run_service.SORT_CHOICES:
        by_offset, total = pages_by(session, "offset", sort, **filters)
        by_cursor, cursor_total = pages_by(session, "cursor", sort, **filters)
        chosen = [
            r
            for r in runs
            if (filters.get("archived", False) is None or r.archived == filters.get("archived", False))
            and r.status == filters.get("status", r.status)
            and r.method == filters.get("method", r.method)
            and filters.get("name", "").lower() in r.name.lower()
            and ("tag" not in filters or filters["tag"] in r.tags)
        ]
        assert by_cursor == by_offset == expected_order(chosen, sort), sort
        assert total == cursor_total == len(chosen), sort


def test_an_offset_past_the_runs_with_a_value_lands_among_those_without(session: Session) -> None:
    runs = many_runs(session, 40)
    order = expected_order([r for r in runs if not r.archived], "-eval_loss")
    for offset in (0, 10, 19, 20, 21, 33, 35, 60):
        page = run_service.list_runs(session, sort="-eval_loss", limit=3, offset=offset)
        assert [r.id for r in page.items] == order[offset : offset + 3], offset
        assert page.total == len(order)


def test_cursors_that_are_not_ours_are_refused(session: Session) -> None:
    from tunedeck_state.run_lists import encode_cursor

    many_runs(session, 10)
    cursor = run_service.list_runs(session, sort="train_loss", limit=2).next_cursor
    assert cursor
    for sort, bad in [
        ("train_loss", "not-base64!"),
        ("train_loss", encode_cursor("train_loss", "a string, not a loss", 5)),  # never compared in SQL
        ("created", encode_cursor("created", None, 5)),  # ids are never missing
        ("name", encode_cursor("name", True, 5)),
        ("name", encode_cursor("name", "beta", 10**30)),  # beyond any id column
        ("disk", encode_cursor("disk", 10**30, 5)),
    ]:
        with pytest.raises(run_service.InvalidCursor, match="not one this server gave"):
            run_service.list_runs(session, sort=sort, cursor=bad)
    longest = encode_cursor("-train_loss", "\U0001d518" * 100, -(2**63))  # longer than any real one
    assert len(longest) <= run_service.CURSOR_MAX_CHARS
    with pytest.raises(run_service.InvalidCursor, match="made for sort=train_loss"):
        run_service.list_runs(session, sort="name", cursor=cursor)
    with pytest.raises(run_service.InvalidCursor, match="not both"):
        run_service.list_runs(session, sort="train_loss", cursor=cursor, offset=2)


def test_the_runs_pages_next_link_follows_the_cursor(session: Session) -> None:
    from urllib.parse import parse_qs, urlsplit

    from app.web.routes.runs import RUNS_PER_PAGE, RunsQuery, runs_page_context

    runs = many_runs(session, 2 * RUNS_PER_PAGE + 30)
    order = expected_order([r for r in runs if not r.archived], "status")
    query = RunsQuery(status=None, method=None, name=None, sort="status", page=1)
    seen: list[int] = []
    for number in (1, 2, 3):
        context = runs_page_context(session, query)
        seen += [r.id for r in context["runs"]]
        assert context["query"].page == number and context["pages"] == 3
        if number == 3:
            assert context["next_url"] is None
            break
        params = parse_qs(urlsplit(context["next_url"]).query)
        assert params["page"] == [str(number + 1)] and params["sort"] == ["status"] and params["cursor"]
        query = RunsQuery(None, None, None, "status", number + 1, cursor=params["cursor"][0])
        assert context["prev_url"] is None or "cursor" not in context["prev_url"]
    assert seen == order


def test_run_list_indexes_are_there_after_migrating(session: Session) -> None:
    many_runs(session, 3)
    """Migration 0012: the list indexes on both databases; on PostgreSQL the lower-cased names that searches
    compare, kept by the database as names change, and their trigram index."""
    from sqlalchemy import inspect, text

    from tunedeck_state.run_lists import name_contains

    names = {index["name"] for index in inspect(session.connection()).get_indexes("runs")}
    assert {"ix_runs_list_status", "ix_runs_list_status_desc", "ix_runs_list_method", "ix_runs_list_name"} <= names
    if session.get_bind().dialect.name == "postgresql":
        definition = session.scalar(text("SELECT pg_get_indexdef('ix_runs_name_trgm'::regclass)"))
        assert definition is not None and "gin (name_folded gin_trgm_ops)" in definition
        assert str(name_contains("x", "postgresql").compile()).startswith("runs.name_folded LIKE")
        session.execute(text("UPDATE runs SET name = 'Mixed-CASE-Ä' WHERE id = (SELECT min(id) FROM runs)"))
        assert session.scalar(text("SELECT name_folded FROM runs WHERE name = 'Mixed-CASE-Ä'")) == "mixed-case-ä"


def test_run_statistics_are_refreshed_when_the_table_has_grown(session: Session) -> None:
    from sqlalchemy import insert

    from tunedeck_state.migrate import refresh_run_statistics

    row = {"name": "bulk", "status": "succeeded", "method": "lora", "model": "m", "spec": {}, "spec_hash": "h"}
    session.execute(insert(Run), [{**row, "details": {}, "latest_metrics": {}} for _ in range(1500)])
    session.commit()
    assert refresh_run_statistics(session.connection())  # bulk-loaded: the planner's estimate is far off
    session.commit()
    assert not refresh_run_statistics(session.connection())  # now it knows
    session.execute(insert(Run), [{**row, "details": {}, "latest_metrics": {}} for _ in range(3000)])
    assert refresh_run_statistics(session.connection())  # tripled


@pytest.mark.services
def test_without_pg_trgm_the_migration_goes_on_and_searches_still_work(postgres_url: str) -> None:
    """A role that may not create extensions (no CREATE on its database): 0012 leaves the trigram index out,
    name searches scan the folded names instead."""
    import uuid

    import sqlalchemy as sa
    from alembic import command

    from tunedeck_state.db import make_engine
    from tunedeck_state.migrate import alembic_config

    role, database = f"tunedeck_plain_{uuid.uuid4().hex[:8]}", f"tunedeck_notrgm_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        conn.execute(sa.text(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC'))
    base = postgres_url.rsplit("/", 1)[0]
    owner = sa.create_engine(f"{base}/{database}", isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(sa.text(f'GRANT ALL ON SCHEMA public TO "{role}"'))
    owner.dispose()
    engine = make_engine(f"{base.replace('postgres@', f'{role}@')}/{database}")
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        names = {index["name"] for index in sa.inspect(engine).get_indexes("runs")}
        assert "ix_runs_list_name_folded" in names and "ix_runs_name_trgm" not in names
        with Session(engine) as db:
            many_runs(db, 12)
            found = run_service.list_runs(db, name="ALPHA-0", archived=None)
            assert sorted(r.name for r in found.items) == ["Alpha-00", "Alpha-03", "Alpha-06", "Alpha-09"]
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
