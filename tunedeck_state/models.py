"""Database models. The schema itself is owned by Alembic (migrations/)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time, timezone-aware: SQLite gives naive datetimes back (they were written in UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    #: Stopped early by its sweep's pruner (Run.prune_reason says why); it keeps its checkpoint and can be resumed.
    pruned = "pruned"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.pruned)


#: The run lists' loss sorts read a page's ids from these alone (the filters' columns ride along), never from the
#: runs' rows, whose JSON columns make every row read expensive (migration 0007).
RUN_LOSS_SORT_INDEXES = {
    "final_train_loss": "ix_runs_final_train_loss_cover",
    "final_eval_loss": "ix_runs_final_eval_loss_cover",
}


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        *(
            Index(name, column, "status", "method", "name", "archived")
            for column, name in RUN_LOSS_SORT_INDEXES.items()
        ),
        # a deleted run's id is never given to a new run (SQLite reuses the highest otherwise; migration 0011)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)  # sort and search of run lists
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.queued, index=True)
    method: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(500))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]

    #: Incremented each time the run is (re)queued; a task only claims the attempt it was sent for.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)

    step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int] = mapped_column(Integer, default=0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)

    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    total_params: Mapped[int | None] = mapped_column(BigInteger)
    final_train_loss: Mapped[float | None] = mapped_column(Float)
    final_eval_loss: Mapped[float | None] = mapped_column(Float)
    wall_time_seconds: Mapped[float | None] = mapped_column(Float)
    #: Seconds the run held its device, over all its attempts (claim to end of each; migration 0014).
    device_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    artifact_dir: Mapped[str | None] = mapped_column(String(1000))
    #: Facts the worker learned while training: resolved peft config, device, dataset sizes, ...
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Latest value per metric key, so lists never scan the metric table.
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The sweep that launched this run (a sweep may also reuse runs launched elsewhere: see SweepRun).
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL", name="fk_runs_sweep_id_sweeps"), index=True
    )
    #: The Celery queue the run was last sent to (a memory class, a worker, a GPU type: tunedeck_jobs/placement.py).
    queue: Mapped[str | None] = mapped_column(String(255))
    #: spec.placement.priority (0-9, higher starts first), kept here so lists can show and sort by it.
    priority: Mapped[int] = mapped_column(Integer, default=5, server_default="5")
    #: Why a queued run is not running yet ("needs 31 GiB, largest GPU has 24 GiB"); cleared when claimed.
    wait_reason: Mapped[str | None] = mapped_column(Text)
    #: Why its sweep's pruner stopped it ("eval loss 2.31 at step 40 is above the median 1.97 of 5 runs at step 40").
    prune_reason: Mapped[str | None] = mapped_column(Text)
    #: Short labels (tunedeck_state/labels.py), notes (free text, rendered escaped), and archived: hidden from the
    #: default list and from comparisons of a sweep or a tag, kept and restorable (migration 0008).
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    notes: Mapped[str | None] = mapped_column(Text)
    archived: Mapped[bool] = mapped_column(default=False, server_default=false(), index=True)
    #: Bytes of the run's folder (checkpoints, final artifact, merged model, exports), written when they change.
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger, index=True)

    events: Mapped[list[RunEvent]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="RunEvent.id"
    )

    @property
    def status_enum(self) -> RunStatus:
        return RunStatus(self.status)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0

    @property
    def trainable_percent(self) -> float | None:
        if self.trainable_params is None or not self.total_params:
            return None
        return 100.0 * self.trainable_params / self.total_params


#: What the run lists walk (migration 0012): every list filters on `archived`, and ties sort newest first.
RUN_LIST_INDEXES = (
    Index("ix_runs_list_status", Run.archived, Run.status, Run.id.desc()),
    Index("ix_runs_list_status_desc", Run.archived, Run.status.desc(), Run.id.desc()),
    Index("ix_runs_list_method", Run.archived, Run.method, Run.id.desc()),
    Index("ix_runs_list_method_desc", Run.archived, Run.method.desc(), Run.id.desc()),
    Index("ix_runs_list_name", Run.archived, Run.name, Run.id.desc()),
    Index("ix_runs_list_disk", Run.archived, Run.disk_bytes, Run.id.desc()),
)
# Also ix_runs_list_tags (its shape differs by database), and on PostgreSQL name_folded with its indexes: see
# migration 0012.


class Metric(Base):
    """One logged point. The primary key (run, key, step) is the table's only index: a point logged twice (a
    resumed attempt) overwrites the first, and a run's series is one range of it. On SQLite the table is
    clustered on it (WITHOUT ROWID), so reading a series reads its values in order, index only.

    No foreign key to runs: PostgreSQL would check it with a trigger per inserted point, most of the insert's
    time (migration 0006). Points are written only by record_progress, which reads their run first."""

    __tablename__ = "metrics"
    __table_args__ = (PrimaryKeyConstraint("run_id", "key", "step", name="pk_metrics"), {"sqlite_with_rowid": False})

    run_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class MetricRollup(Base):
    """A finished attempt's series of one metric, rolled up once (tunedeck_state.rollups, written by finish_run):
    its summary statistics and its min/max points at the finest bucket width a comparison's chart can ask for, so
    a comparison reads a few hundred points per series instead of every logged one. Valid while the run is final
    and still at `attempt`; otherwise the series is read from the metrics table."""

    __tablename__ = "metric_rollups"
    __table_args__ = (PrimaryKeyConstraint("run_id", "key", name="pk_metric_rollups"),)

    run_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    #: bucket width of `steps`/`values`; 0: every point is kept
    width: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    first_x: Mapped[float] = mapped_column(Float)
    last_x: Mapped[float] = mapped_column(Float)
    minimum: Mapped[float] = mapped_column(Float)
    maximum: Mapped[float] = mapped_column(Float)
    mean: Mapped[float] = mapped_column(Float)
    last: Mapped[float] = mapped_column(Float)
    #: little-endian float64 arrays: the kept points' true steps (xs) and values (ys), in step order
    xs: Mapped[bytes] = mapped_column(LargeBinary)
    ys: Mapped[bytes] = mapped_column(LargeBinary)


class RunLog(Base):
    __tablename__ = "run_logs"
    __table_args__ = (Index("ix_run_logs_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    message: Mapped[str] = mapped_column(Text)


class RunEvent(Base):
    """Every status change, timestamped, with its reason."""

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="events")


class Sweep(Base):
    """A set of runs launched together from a base spec and a grid (or a list) of overrides."""

    __tablename__ = "sweeps"
    __table_args__ = ({"sqlite_autoincrement": True},)  # a deleted sweep's id is never given to a later one

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: What was asked for: {"base": {...}, "grid": {...}, "overrides": [...]}.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Dotted spec paths the sweep varies (grid keys and override keys), in the order given.
    varied: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: grid (the runs are expanded at once), random or tpe (trials asked of Optuna as runs end: tunedeck_state.search).
    strategy: Mapped[str] = mapped_column(String(16), default="grid", server_default="grid")
    #: Trials of a search sweep asked so far (its budget's max_runs caps it; the lock of concurrent askers).
    trials_asked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    notes: Mapped[str | None] = mapped_column(Text)
    archived: Mapped[bool] = mapped_column(default=False, server_default=false(), index=True)

    members: Mapped[list[SweepRun]] = relationship(
        back_populates="sweep", cascade="all, delete-orphan", order_by="SweepRun.position"
    )


class SweepRun(Base):
    """A run in a sweep, at its position in the expansion. A run re-used by a later sweep belongs to both."""

    __tablename__ = "sweep_runs"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)
    #: True when an identical run already existed and was not trained again.
    reused: Mapped[bool] = mapped_column(default=False)
    #: A search trial: {"number", "params": the study's parameter values, "system_attrs": the pruner's notes}.
    trial: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    sweep: Mapped[Sweep] = relationship(back_populates="members")
    run: Mapped[Run] = relationship()


class Dataset(Base):
    """A dataset a run can train on: an upload (stored under a generated name), a local file or a hub id."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    #: upload, local or hub
    kind: Mapped[str] = mapped_column(String(16))
    #: What a run spec puts in dataset.source: the stored file's absolute path, or the hub id.
    source: Mapped[str] = mapped_column(String(1000), index=True)
    config: Mapped[str | None] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(200), default="train")
    format: Mapped[str] = mapped_column(String(16))
    #: dataset.columns: logical field → the file's column
    column_mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: The file's own column names.
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    row_count: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    #: The name the browser sent, for display only (never used as a path).
    original_filename: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerHeartbeat(Base):
    """A live worker process, refreshed every few seconds (the /metrics worker count and GPU memory)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: The machine it runs on.
    host: Mapped[str | None] = mapped_column(String(255))
    #: GPU memory it offers one run (the smallest of its GPUs' free memory at start); None on a CPU-only worker.
    capacity_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: {"gpus": [{"index", "name", "memory_total_bytes", "memory_used_bytes", "memory_free_bytes"}], "cpu": {...},
    #: "versions": {...}, "queues": [every queue it consumes], "concurrency", ...} (worker/capacity.py)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
