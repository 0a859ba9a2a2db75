"""Response models of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC): mark them UTC, so every timestamp the API answers carries
    its zone, as the declared `date-time` format requires (RFC 3339)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: A timestamp in UTC, serialised with its zone ("2026-01-01T12:00:00Z").
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    name: str
    status: str
    method: str
    model: str
    spec: dict[str, Any]
    spec_hash: str
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    error: str | None
    #: Why its sweep's pruner stopped it (status pruned).
    prune_reason: str | None = None
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
    #: seconds the run held its device, over all its attempts
    device_seconds: float = 0.0
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

    at: UtcDateTime
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
    #: The next page: pass it as `cursor` (with the same filters and sort); null on the last page.
    next_cursor: str | None = None


class MetricSeries(BaseModel):
    run_id: int
    #: {key: [[step, value], ...]} ordered by step
    series: dict[str, list[list[float]]]


class LogLine(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: UtcDateTime
    message: str


class FieldProblem(BaseModel):
    """One problem of a refused request: the dotted field it is about and what to do."""

    model_config = ConfigDict(extra="allow")

    field: str | None = Field(None, description="The dotted field, e.g. training.learning_rate (body: the whole).")
    msg: str
    loc: list[str | int] = []
    type: str | None = None


class Problem(BaseModel):
    """Every 4xx/5xx answer of the API: `detail` is one sentence, or (422 of a body or query) a list naming each
    field; `message` sums a list up."""

    detail: str | list[FieldProblem]
    message: str | None = None


#: Declared on every API operation (app/web/app.py): what a request can be answered besides its success.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed body or form, or a Host name not answered"},
    403: {"model": Problem, "description": "a cross-site request (a browser sent it from another site's page)"},
    404: {"model": Problem, "description": "no such run, sweep or dataset (or an id out of range)"},
    409: {"model": Problem, "description": "not possible in the record's present state; detail says why"},
    413: {"model": Problem, "description": "body over TUNEDECK_MAX_REQUEST_BYTES (uploads: their own limit)"},
    422: {"model": Problem, "description": "invalid input: detail names the field and the fix"},
    502: {"model": Problem, "description": "the Hugging Face hub could not be reached or failed"},
    503: {"model": Problem, "description": "no worker answered in time; try again when one runs"},
}


class Health(BaseModel):
    status: str
    database: str
    broker: str
