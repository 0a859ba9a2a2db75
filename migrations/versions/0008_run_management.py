"""run management: tags, notes and archiving of runs and sweeps, and each run's bytes on disk.

runs.archived rides in the loss sorts' covering indexes (the default list hides archived runs, and a loss sort
must still answer from its index alone), and has an index of its own; runs.disk_bytes is indexed for its sort.
Tags are a JSON list of short labels (filtered as text: they hold no quotes or wildcards).

Revision ID: 0008_run_management
Revises: 0007_run_list_covering_indexes
Create Date: 2026-12-02 17:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0008_run_management"
down_revision = "0007_run_list_covering_indexes"
branch_labels = None
depends_on = None

LOSSES = ("final_train_loss", "final_eval_loss")


def _labels(batch_op: BatchOperations) -> None:
    batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
    batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
    batch_op.add_column(sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false()))


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        _labels(batch_op)
        batch_op.add_column(sa.Column("disk_bytes", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_runs_archived", ["archived"], unique=False)
        batch_op.create_index("ix_runs_disk_bytes", ["disk_bytes"], unique=False)
        for column in LOSSES:
            batch_op.drop_index(f"ix_runs_{column}_cover")
            batch_op.create_index(
                f"ix_runs_{column}_cover", [column, "status", "method", "name", "archived"], unique=False
            )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        _labels(batch_op)
        batch_op.create_index("ix_sweeps_archived", ["archived"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_index("ix_sweeps_archived")
        for column in ("archived", "notes", "tags"):
            batch_op.drop_column(column)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for column in LOSSES:
            batch_op.drop_index(f"ix_runs_{column}_cover")
            batch_op.create_index(f"ix_runs_{column}_cover", [column, "status", "method", "name"], unique=False)
        batch_op.drop_index("ix_runs_disk_bytes")
        batch_op.drop_index("ix_runs_archived")
        for column in ("disk_bytes", "archived", "notes", "tags"):
            batch_op.drop_column(column)
