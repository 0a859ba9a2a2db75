"""runs.id never reused on SQLite: the table is rebuilt with AUTOINCREMENT.

Without it SQLite gives a new row the highest id in use plus one, so deleting the newest run (DELETE /api/runs/{id})
handed its id to the next run, and whatever is keyed by a run's id and outlived the delete (its metric rollups, a
worker's cached model of data/runs/run-<id>, a trashed folder, a link someone kept) could be taken for the new
run's. PostgreSQL's sequences never reuse a value: nothing to do there.

SQLite cannot add AUTOINCREMENT in place; the rebuild (create, copy, drop, rename: alembic's batch mode) runs in
the migration's transaction, where PRAGMA foreign_keys cannot be turned off, so dropping the old table cascades to
the rows that refer to runs. Those rows are copied aside first and put back after, so nothing is lost whichever
way the pragma is set. An id freed by a delete before this revision is reused once at most (only the newest).

Revision ID: 0011_run_ids_never_reused
Revises: 0010_compare_scale
Create Date: 2026-12-02 20:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_run_ids_never_reused"
down_revision = "0010_compare_scale"
branch_labels = None
depends_on = None


def _children(bind: sa.Connection) -> list[str]:
    """The tables with a foreign key to runs (run_logs, run_events, sweep_runs)."""
    inspector = sa.inspect(bind)
    return sorted(
        table
        for table in inspector.get_table_names()
        if table != "runs" and any(fk["referred_table"] == "runs" for fk in inspector.get_foreign_keys(table))
    )


def _rebuild_runs(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    children = _children(bind)
    for table in children:
        op.execute(f"CREATE TEMP TABLE _keep_{table} AS SELECT * FROM {table}")
    with op.batch_alter_table("runs", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass
    for table in children:  # with foreign keys on, dropping the old runs table emptied them
        op.execute(f"DELETE FROM {table}")
        op.execute(f"INSERT INTO {table} SELECT * FROM _keep_{table}")
        op.execute(f"DROP TABLE _keep_{table}")


def upgrade() -> None:
    _rebuild_runs(autoincrement=True)


def downgrade() -> None:
    _rebuild_runs(autoincrement=False)
