"""REST API: everything the pages do, as JSON, so sweeps can be scripted."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import Field
from sqlalchemy import text

from app.services import control
from app.services.submit import submit_run
from app.web.deps import RunDep, SessionDep, load_run
from app.web.schemas import Health, LogLine, MetricSeries, RunDetail, RunList, RunOut
from runspec import METHODS, AnyMethod, RunSpec
from runspec.base import StrictModel
from tunedeck_jobs.names import INSPECT_MODEL_TASK
from tunedeck_jobs.rpc import WorkerRefused, WorkerUnavailable, call_worker
from tunedeck_state import runs as run_service
from tunedeck_state.models import RunStatus
from tunedeck_state.settings import get_settings
from tunedeck_state.source_checks import check_model_source

router = APIRouter(prefix="/api", tags=["api"])
SORT_PATTERN = f"^-?({'|'.join(run_service.RUN_SORTS)})$"


@router.post("/runs", status_code=status.HTTP_201_CREATED, response_model=RunOut)
def create_run(spec: RunSpec, session: SessionDep) -> Any:
    return submit_run(session, spec)


@router.get("/runs", response_model=RunList)
def list_runs(
    session: SessionDep,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
    name: Annotated[str | None, Query(max_length=100, description="Runs whose name contains this (any case).")] = None,
    sort: Annotated[
        str,
        Query(
            pattern=SORT_PATTERN,
            description=f"One of {', '.join(run_service.RUN_SORTS)}; a leading '-' sorts descending.",
        ),
    ] = "-created",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """A page of runs, newest first unless `sort` says otherwise. Read from indexes and the runs' latest-value
    summary only (never the metrics table), so it costs the same with 10 runs or 10,000."""
    page = run_service.list_runs(
        session,
        status=status_.value if status_ else None,
        method=method,
        name=name,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return {"items": page.items, "total": page.total, "limit": page.limit, "offset": page.offset}


@router.get("/runs/{run_id}", response_model=RunDetail)
def get_run(run: RunDep) -> Any:
    """One run, with `events`: every status change with its time and reason."""
    return run


@router.get("/runs/{run_id}/metrics", response_model=MetricSeries)
def get_metrics(
    run_id: int,
    session: SessionDep,
    key: Annotated[str | None, Query(max_length=64)] = None,
    after_step: Annotated[int | None, Query(ge=-1)] = None,
) -> Any:
    load_run(session, run_id)
    return {"run_id": run_id, "series": run_service.metric_series(session, run_id, key=key, after_step=after_step)}


@router.get("/runs/{run_id}/logs", response_model=list[LogLine])
def get_logs(run_id: int, session: SessionDep, lines: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
    load_run(session, run_id)
    return run_service.log_tail(session, run_id, lines)


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(run: RunDep, session: SessionDep) -> Any:
    run_id = run.id
    try:
        run = control.cancel(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return run


@router.post("/runs/{run_id}/resume", response_model=RunDetail)
def resume_run(run: RunDep, session: SessionDep) -> Any:
    """Queue a failed or cancelled run again (attempt + 1); it continues from its last complete checkpoint."""
    run_id = run.id
    try:
        control.resume(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return load_run(session, run_id)


class InspectRequest(StrictModel):
    model: str = Field(..., min_length=1, max_length=500, description="Hub id or local model folder.")
    method: AnyMethod | None = Field(None, description="Also count the parameters this method would train.")


@router.post("/models/inspect")
def inspect_model(request: InspectRequest) -> dict[str, Any]:
    """Config, module names and parameter counts of a model, read on a worker without loading weights."""
    check_model_source(request.model)  # a URL, a path outside the data roots, custom code: 422 before any worker
    method = request.method.model_dump(mode="json") if request.method else None
    return call_worker_or_http_error(INSPECT_MODEL_TASK, request.model, method)


def call_worker_or_http_error(task: str, *args: Any) -> dict[str, Any]:
    try:
        return call_worker(task, *args)
    except WorkerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except WorkerRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.get("/methods")
def list_methods() -> dict[str, Any]:
    """Every fine-tuning method with its parameters (JSON Schema), as the registry declares them."""
    return {
        name: {
            "label": cls.label,
            "summary": cls.summary,
            "is_peft": cls.is_peft,
            "trains": cls.trains,
            "requires_cuda": cls.requires_cuda,
            "schema": cls.model_json_schema(),
        }
        for name, cls in METHODS.items()
    }


@router.get("/health", response_model=Health)
def health(session: SessionDep) -> Any:
    session.execute(text("SELECT 1"))
    settings = get_settings()
    broker = "embedded (SQLite)" if settings.uses_embedded_broker else "redis"
    return {"status": "ok", "database": session.get_bind().dialect.name, "broker": broker}
