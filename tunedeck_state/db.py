"""Engine and session factory. One engine per process, created from Settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, FromClause, create_engine, event
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.orm import Session, sessionmaker

from tunedeck_state.settings import get_settings


class _SQLiteCompiler(SQLiteCompiler):
    """Renders `Select.with_hint(table, "INDEXED BY ...", dialect_name="sqlite")` after the table's name, where
    SQLite reads it; SQLAlchemy's own SQLite compiler leaves table hints out."""

    def get_from_hint_text(self, table: FromClause, text: str | None) -> str | None:
        return text


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        engine.dialect.statement_compiler = _SQLiteCompiler

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the web server read while a worker writes metrics.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Reads through a memory map of the file (shared by every connection, no copy into each connection's
            # small page cache): the run lists' row lookups and the metric series are reads of the OS page cache.
            cursor.execute("PRAGMA mmap_size=268435456")
            cursor.close()

        @event.listens_for(engine, "close")
        def _sqlite_optimize(dbapi_conn: Any, _record: Any) -> None:
            # SQLite's documented practice: refresh the statistics the planner found missing or stale. Best effort:
            # it never waits on a writer (a busy database skips it until the next close).
            try:
                dbapi_conn.execute("PRAGMA busy_timeout=50")
                dbapi_conn.execute("PRAGMA analysis_limit=1000")
                dbapi_conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass

        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    settings.ensure_dirs()
    return make_engine(settings.resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction per unit of work: commit on success, roll back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    """FastAPI dependency: a session whose transaction the request commits explicitly."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()
