"""Runs: the list, a run's page and its live fragments, cancel and resume; the same as JSON under /api/runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.services import control
from app.services import inference as inference_service
from app.services import manage as manage_service
from app.services.submit import submit_run
from app.web.deps import RunDep, SessionDep, load_run
from app.web.schemas import LogLine, MetricSeries, RunDetail, RunList, RunOut
from app.web.templating import templates
from runspec import METHODS, RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.labels import tag_problem
from tunedeck_state.models import Run, RunStatus

api_router = APIRouter(tags=["runs"])
page_router = APIRouter()
SORT_PATTERN = f"^-?({'|'.join(run_service.RUN_SORTS)})$"
CHART_GROUPS = [
    {"title": "Loss", "keys": ["loss", "eval_loss"]},
    {"title": "Learning rate", "keys": ["learning_rate"]},
    {"title": "Throughput (tokens/s)", "keys": ["tokens_per_second"]},
    {"title": "Memory (MiB)", "keys": ["memory_bytes"], "scale": 1 / 2**20},
]


RUNS_PER_PAGE = 50
SORT_LABELS = {
    "-created": "newest first",
    "created": "oldest first",
    "name": "name A–Z",
    "-name": "name Z–A",
    "status": "status",
    "method": "method",
    "train_loss": "lowest train loss",
    "eval_loss": "lowest eval loss",
    "-train_loss": "highest train loss",
    "-eval_loss": "highest eval loss",
    "-disk": "most disk used",
    "disk": "least disk used",
}
#: The runs list's archive filter: "" hides archived runs (the default), "yes" shows only them, "all" both.
ARCHIVED_CHOICES = {"": False, "no": False, "yes": True, "all": None}


@dataclass(frozen=True)
class RunsQuery:
    """The runs page's filters, sort and page, from its query string (empty form fields mean "any")."""

    status: str | None
    method: str | None
    name: str | None
    sort: str
    page: int
    tag: str | None = None
    archived: str | None = None
    #: Where this page starts (the previous page's next_cursor); `page` then only numbers it.
    cursor: str | None = None

    def url(self, path: str = "/", **changes: Any) -> str:
        values = {**asdict(self), **changes}
        defaults = {"sort": "-created", "page": 1}
        query = {k: v for k, v in values.items() if v not in (None, "") and defaults.get(k) != v}
        return f"{path}?{urlencode(query)}" if query else path


def runs_query(
    status_: Annotated[str | None, Query(alias="status", max_length=16)] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
    name: Annotated[str | None, Query(max_length=100)] = None,
    sort: Annotated[str | None, Query(max_length=16)] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    tag: Annotated[str | None, Query(max_length=32)] = None,
    archived: Annotated[str | None, Query(max_length=8)] = None,
    cursor: Annotated[str | None, Query(max_length=run_service.CURSOR_MAX_CHARS)] = None,
) -> RunsQuery:
    statuses = [s.value for s in RunStatus]
    if status_ and status_ not in statuses:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"status must be one of {', '.join(statuses)}")
    if sort and sort not in run_service.SORT_CHOICES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"sort must be one of {', '.join(run_service.SORT_CHOICES)}"
        )
    if (archived or "") not in ARCHIVED_CHOICES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "archived must be one of no, yes, all")
    tag = (tag or "").strip() or None
    if tag and (problem := tag_problem(tag)):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"tag: {problem}")
    return RunsQuery(
        status_ or None,
        method or None,
        (name or "").strip() or None,
        sort or "-created",
        page,
        tag,
        archived or None,
        cursor or None,
    )


RunsQueryDep = Annotated[RunsQuery, Depends(runs_query)]


def runs_page_context(session: Session, query: RunsQuery) -> dict[str, Any]:
    """One page of the list (RUNS_PER_PAGE runs, from the indexes and each run's latest-value summary)."""
    try:
        page = run_service.list_runs(
            session,
            status=query.status,
            method=query.method,
            name=query.name,
            tag=query.tag,
            archived=ARCHIVED_CHOICES[query.archived or ""],
            sort=query.sort,
            limit=RUNS_PER_PAGE,
            offset=0 if query.cursor else (query.page - 1) * RUNS_PER_PAGE,
            cursor=query.cursor,
        )
    except run_service.InvalidCursor as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"cursor: {exc}") from None
    pages = max(1, -(-page.total // RUNS_PER_PAGE))
    # Next follows the cursor (a seek, however deep); previous and the filters' links go by page number.
    first = replace(query, cursor=None)
    return {
        "runs": page.items,
        "total": page.total,
        "query": first,
        "pages": pages,
        "table_url": query.url("/runs/table"),
        "prev_url": first.url(page=query.page - 1) if query.page > 1 else None,
        "next_url": query.url(page=query.page + 1, cursor=page.next_cursor) if page.next_cursor else None,
        "statuses": [s.value for s in RunStatus],
        "methods": list(METHODS),
        "sorts": SORT_LABELS,
        "filtered": bool(query.status or query.method or query.name or query.tag or query.archived),
    }


@page_router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, query: RunsQueryDep) -> Response:
    return templates.TemplateResponse(request, "runs_list.html", runs_page_context(session, query))


@page_router.get("/runs/table", response_class=HTMLResponse)
def runs_table(request: Request, session: SessionDep, query: RunsQueryDep) -> Response:
    return templates.TemplateResponse(
        request, "runs_list.html", runs_page_context(session, query), block_name="runs_table"
    )


# -- run page ---------------------------------------------------------------------------------------------


def run_page_context(session: Session, run: Run) -> dict[str, Any]:
    """What the run page and its blocks render (manage.py renders the same blocks after an edit)."""
    return {
        "run": run,
        "log_lines": run_service.log_tail(session, run.id, 30),
        "chart_groups": CHART_GROUPS,
        "inference": inference_service.page_context(run),
        "used_by": manage_service.sweeps_using(session, [run.id]).get(run.id, []),
    }


@page_router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    return templates.TemplateResponse(request, "run_detail.html", run_page_context(session, run))


@page_router.get("/runs/{run_id}/live", response_class=HTMLResponse)
def run_live(request: Request, run: RunDep, session: SessionDep) -> Response:
    return templates.TemplateResponse(request, "run_detail.html", run_page_context(session, run), block_name="live")


@page_router.post("/runs/{run_id}/cancel", response_class=HTMLResponse)
def cancel_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    run_id = run.id
    try:
        run = control.cancel(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return templates.TemplateResponse(request, "run_detail.html", run_page_context(session, run), block_name="live")


@page_router.post("/runs/{run_id}/resume", response_class=HTMLResponse)
def resume_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    run_id = run.id
    try:
        control.resume(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    run = load_run(session, run_id)
    return templates.TemplateResponse(request, "run_detail.html", run_page_context(session, run), block_name="live")


# -- API ------------------------------------------------------------------------------------------------


@api_router.post("/runs", status_code=status.HTTP_201_CREATED, response_model=RunOut)
def create_run(spec: RunSpec, session: SessionDep) -> Any:
    return submit_run(session, spec)


@api_router.get("/runs", response_model=RunList)
def list_runs(
    session: SessionDep,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
    method: Annotated[str | None, Query(max_length=32)] = None,
    name: Annotated[str | None, Query(max_length=100, description="Runs whose name contains this (any case).")] = None,
    tag: Annotated[str | None, Query(max_length=32, description="Runs with this tag.")] = None,
    archived: Annotated[
        Literal["false", "true", "any"], Query(description="false: hide archived runs (the default); true: only them.")
    ] = "false",
    sort: Annotated[
        str,
        Query(
            pattern=SORT_PATTERN,
            description=f"One of {', '.join(run_service.RUN_SORTS)}; a leading '-' sorts descending.",
        ),
    ] = "-created",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    cursor: Annotated[
        str | None,
        Query(
            max_length=run_service.CURSOR_MAX_CHARS,
            description="Where the page starts: a `next_cursor` of the same list (not with offset).",
        ),
    ] = None,
) -> Any:
    """A page of runs, newest first unless `sort` says otherwise. Read from indexes and the runs' latest-value
    summary only (never the metrics table), so it costs the same with 10 runs or 100,000. `next_cursor` starts
    the next page; deep in a long list it is cheaper than an offset."""
    try:
        page = run_service.list_runs(
            session,
            status=status_.value if status_ else None,
            method=method,
            name=name,
            tag=tag,
            archived={"false": False, "true": True, "any": None}[archived],
            sort=sort,
            limit=limit,
            offset=offset,
            cursor=cursor or None,
        )
    except run_service.InvalidCursor as exc:
        problem = {"type": "value_error", "loc": ("query", "cursor"), "msg": str(exc), "input": cursor}
        raise RequestValidationError([problem]) from None
    return {
        "items": page.items,
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
        "next_cursor": page.next_cursor,
    }


@api_router.get("/runs/{run_id}", response_model=RunDetail)
def get_run(run: RunDep) -> Any:
    """One run, with `events`: every status change with its time and reason."""
    return run


@api_router.get("/runs/{run_id}/metrics", response_model=MetricSeries)
def get_metrics(
    run_id: int,
    session: SessionDep,
    key: Annotated[str | None, Query(max_length=64)] = None,
    after_step: Annotated[int | None, Query(ge=-1)] = None,
) -> Any:
    load_run(session, run_id)
    return {"run_id": run_id, "series": run_service.metric_series(session, run_id, key=key, after_step=after_step)}


@api_router.get("/runs/{run_id}/logs", response_model=list[LogLine])
def get_logs(run_id: int, session: SessionDep, lines: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
    load_run(session, run_id)
    return run_service.log_tail(session, run_id, lines)


@api_router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(run: RunDep, session: SessionDep) -> Any:
    run_id = run.id
    try:
        run = control.cancel(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return run


@api_router.post("/runs/{run_id}/resume", response_model=RunDetail)
def resume_run(run: RunDep, session: SessionDep) -> Any:
    """Queue a failed, cancelled or pruned run again (attempt + 1); it continues from its last complete checkpoint."""
    run_id = run.id
    try:
        control.resume(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return load_run(session, run_id)
