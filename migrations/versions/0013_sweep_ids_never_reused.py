"""sweeps.id never reused on SQLite: the table is rebuilt with AUTOINCREMENT, as runs was in 0011.

Without it deleting the newest sweep (DELETE /api/sweeps/{id}) handed its id to the next sweep, so a link someone
kept (/sweeps/<id>, a shared comparison view) opened a different sweep. PostgreSQL's sequences never reuse a value.

The rebuild runs in the migration's transaction with foreign keys on, so dropping the old table deletes the
sweep_runs rows (ON DELETE CASCADE) and clears runs.sweep_id (ON DELETE SET NULL). Both are kept aside first and put
back after.

Revision ID: 0013_sweep_ids_never_reused
Revises: 0012_runs_list_scale
Create Date: 2026-12-03 07:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0013_sweep_ids_never_reused"
down_revision = "0012_runs_list_scale"
branch_labels = None
depends_on = None


def _rebuild_sweeps(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("CREATE TEMP TABLE _keep_sweep_runs AS SELECT * FROM sweep_runs")
    op.execute("CREATE TEMP TABLE _keep_run_sweeps AS SELECT id, sweep_id FROM runs WHERE sweep_id IS NOT NULL")
    with op.batch_alter_table("sweeps", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass
    op.execute("DELETE FROM sweep_runs")
    op.execute("INSERT INTO sweep_runs SELECT * FROM _keep_sweep_runs")
    op.execute(
        "UPDATE runs SET sweep_id = (SELECT k.sweep_id FROM _keep_run_sweeps k WHERE k.id = runs.id) "
        "WHERE id IN (SELECT id FROM _keep_run_sweeps)"
    )
    op.execute("DROP TABLE _keep_sweep_runs")
    op.execute("DROP TABLE _keep_run_sweeps")


def upgrade() -> None:
    _rebuild_sweeps(autoincrement=True)


def downgrade() -> None:
    _rebuild_sweeps(autoincrement=False)
