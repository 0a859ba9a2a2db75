"""Search sweeps and early stopping: sweeps.strategy and sweeps.trials_asked, sweep_runs.trial (the study's
parameters of a trial), runs.prune_reason (why the sweep's pruner stopped a run, in the new status `pruned`).

Revision ID: 0009_search
Revises: 0008_run_management
Create Date: 2026-12-02 17:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_search"
down_revision = "0008_run_management"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strategy", sa.String(length=16), server_default="grid", nullable=False))
        batch_op.add_column(sa.Column("trials_asked", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("sweep_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trial", sa.JSON(), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prune_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("prune_reason")
    with op.batch_alter_table("sweep_runs", schema=None) as batch_op:
        batch_op.drop_column("trial")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("trials_asked")
        batch_op.drop_column("strategy")
