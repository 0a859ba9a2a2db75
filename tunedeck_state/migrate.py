"""Apply Alembic migrations programmatically (`tunedeck db upgrade`, and on start)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from tunedeck_state.db import get_engine

_HERE = Path(__file__).resolve().parent


def _packaged_or_checkout(name: str) -> Path:
    """Installed from a wheel, migrations/ and alembic.ini are package data beside this module; in a checkout,
    they are the repository's top-level ones."""
    return next(p for p in (_HERE / name, _HERE.parent / name) if p.exists())


def alembic_config() -> Config:
    config = Config(str(_packaged_or_checkout("alembic.ini")))
    config.set_main_option("script_location", str(_packaged_or_checkout("migrations")))
    return config


def upgrade_database(revision: str = "head") -> None:
    config = alembic_config()
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        refresh_run_statistics(connection)


log = logging.getLogger(__name__)


def refresh_run_statistics(connection: Connection) -> bool:
    """ANALYZE the runs table when the planner's idea of its size is off by 2x or more (or it has none), so run
    lists pick their indexes by real statistics. PostgreSQL's autovacuum does this as a table grows, where it is
    on; SQLite never does it by itself (its documented practice, PRAGMA optimize, runs at connection close; this
    covers a server that starts on a database grown by bulk writes). At 100,000 runs it takes about 0.1 s."""
    runs = connection.scalar(text("SELECT count(*) FROM runs")) or 0
    if connection.dialect.name == "sqlite":
        known = connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").scalar()
        stats = [row[0] for row in connection.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'runs'")]
        estimate = max((int(stat.split()[0]) for stat in stats), default=-1) if known else -1
    else:
        estimate = int(connection.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'runs'")) or -1)
    if runs < 1000 or (estimate > 0 and estimate / 2 <= runs <= estimate * 2):
        return False
    log.info("analyzing runs: %d rows, the planner thought %d", runs, estimate)
    connection.execute(text("ANALYZE runs"))
    return True
