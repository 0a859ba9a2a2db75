"""Response models of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    name: str
    status: str
    method: str
    model: str
    spec: dict[str, Any]
    spec_hash: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    attempt: int
    worker: str | None
    step: int
    max_steps: int
    progress: float
    eta_seconds: float | None
    trainable_params: int | None
    total_params: int | None
    trainable_percent: float | None
    final_train_loss: float | None
    final_eval_loss: float | None
    wall_time_seconds: float | None
    artifact_dir: str | None
    latest_metrics: dict[str, Any]
    details: dict[str, Any]
    #: The sweep that launched the run, if any (GET /api/sweeps/{id}).
    sweep_id: int | None = None
    #: The Celery queue it was sent to: a memory class (tunedeck.training.mem-24g), a worker, a GPU type, or
    #: tunedeck.training (tunedeck_jobs/placement.py).
    queue: str | None = None
    #: spec.placement.priority: 0-9, higher starts first (Redis broker).
    priority: int = 5
    #: Why a queued run is not running yet, e.g. "needs 31 GiB (estimate ...), largest GPU has 24 GiB free".
    wait_reason: str | None = None
    #: Short labels, free-text notes, archived (hidden from the default list and from comparisons of a sweep or tag).
    tags: list[str] = []
    notes: str | None = None
    archived: bool = False
    #: Bytes of the run's folder (checkpoints, final artifact, merged model, exports); null until first measured.
    disk_bytes: int | None = None


class RunEventOut(BaseModel):
    """A status change: when, from what to what, and why."""

    model_config = ConfigDict(from_attributes=True)

    at: datetime
    from_status: str | None
    to_status: str
    reason: str | None


class RunDetail(RunOut):
    #: Every status change, oldest first.
    events: list[RunEventOut]


class RunList(BaseModel):
    items: list[RunOut]
    total: int
    limit: int
    offset: int


class MetricSeries(BaseModel):
    run_id: int
    #: {key: [[step, value], ...]} ordered by step
    series: dict[str, list[list[float]]]


class LogLine(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    message: str


class Health(BaseModel):
    status: str
    database: str
    broker: str
