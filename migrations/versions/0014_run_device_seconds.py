"""runs.device_seconds: the seconds a run has held its device, over all its attempts.

Added to at every transition out of `running` (finish, a cancel or prune taking effect, a lost worker reaped), by
the time since the attempt's claim (runs._transition): a resumed run keeps what its earlier attempts used, where
started_at only tells the last one's. A search sweep's `budget.gpu_hours` adds these up (search.trials).

Runs that ended before this revision get their last attempt's time (finished_at − started_at): the earlier ones
were not recorded.

Revision ID: 0014_run_device_seconds
Revises: 0013_sweep_ids_never_reused
Create Date: 2026-12-03 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_run_device_seconds"
down_revision = "0013_sweep_ids_never_reused"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("device_seconds", sa.Float(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "sqlite":
        held = "(julianday(finished_at) - julianday(started_at)) * 86400.0"
    else:
        held = "EXTRACT(EPOCH FROM (finished_at - started_at))"
    op.execute(
        f"UPDATE runs SET device_seconds = {held} "
        "WHERE finished_at IS NOT NULL AND started_at IS NOT NULL AND finished_at > started_at"
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("device_seconds")
