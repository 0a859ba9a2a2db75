"""worker placement: the queue a run was sent to, its priority and why it waits; each worker's host and the GPU
memory it offers a run (its capacity, which decides the memory-class queues it consumes)

Revision ID: 0004_worker_placement
Revises: 0003_datasets_workers
Create Date: 2026-11-28 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_worker_placement"
down_revision = "0003_datasets_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="5", nullable=False))
        batch_op.add_column(sa.Column("wait_reason", sa.Text(), nullable=True))

    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("capacity_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("capacity_bytes")
        batch_op.drop_column("host")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("wait_reason")
        batch_op.drop_column("priority")
        batch_op.drop_column("queue")
