"""metrics without a foreign key to runs: PostgreSQL checks a foreign key with a trigger per inserted row, which
took more than half of a metric batch's insert time (points per second into PostgreSQL: about 47,000 with it,
87,000 without; 176,000 with COPY, which the writer now uses). Integrity stays: a point is written only by
`record_progress`, in the transaction that reads its run first, and runs are never deleted.

Revision ID: 0006_metrics_without_foreign_key
Revises: 0005_metric_read_path
Create Date: 2026-11-28 10:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_metrics_without_foreign_key"
down_revision = "0005_metric_read_path"
branch_labels = None
depends_on = None


def _sqlite_rebuild(foreign_key: str) -> None:
    """SQLite cannot drop or add a constraint in place: copy into a new clustered table, in key order."""
    op.execute(
        f"""
        CREATE TABLE metrics_new (
            run_id INTEGER NOT NULL,
            "key" VARCHAR(64) NOT NULL,
            step INTEGER NOT NULL,
            value FLOAT NOT NULL,
            CONSTRAINT pk_metrics PRIMARY KEY (run_id, "key", step){foreign_key}
        ) WITHOUT ROWID
        """
    )
    op.execute(
        'INSERT INTO metrics_new (run_id, "key", step, value) '
        'SELECT run_id, "key", step, value FROM metrics ORDER BY run_id, "key", step'
    )
    op.execute("DROP TABLE metrics")
    op.execute("ALTER TABLE metrics_new RENAME TO metrics")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _sqlite_rebuild("")
        return
    for foreign_key in sa.inspect(bind).get_foreign_keys("metrics"):
        op.drop_constraint(foreign_key["name"], "metrics", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_rebuild(",\n            FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE")
        return
    op.create_foreign_key("metrics_run_id_fkey", "metrics", "runs", ["run_id"], ["id"], ondelete="CASCADE")
