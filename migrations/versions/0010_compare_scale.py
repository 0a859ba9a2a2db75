"""metric_rollups: each finished attempt's series rolled up once (summary statistics and the min/max points at
the finest bucket width a comparison chart asks for), so a cold comparison of 200 runs × 10,000 steps × 4 metrics
reads 800 small rows instead of 8 M points (SQLite, 2 shared cores: the points alone took 4 s to read). Runs that
finished before this revision have none and are read point by point, as before.

Revision ID: 0010_compare_scale
Revises: 0009_search
Create Date: 2026-12-02 17:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_compare_scale"
down_revision = "0009_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("width", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_x", sa.Float(), nullable=False),
        sa.Column("last_x", sa.Float(), nullable=False),
        sa.Column("minimum", sa.Float(), nullable=False),
        sa.Column("maximum", sa.Float(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("xs", sa.LargeBinary(), nullable=False),
        sa.Column("ys", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_metric_rollups"),
    )


def downgrade() -> None:
    op.drop_table("metric_rollups")
