"""HTMX pages. Each page template owns its fragments as named blocks; htmx endpoints render one block."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.services import control
from app.services import inference as inference_service
from app.services.demo import DEMO_DATASET, DEMO_MODEL_DIRNAME
from app.services.submit import submit_run
from app.web.deps import RunDep, SessionDep, load_run
from app.web.forms import errors_by_field, fields_for, spec_from_form
from app.web.templating import templates
from runspec import METHODS, DatasetSpec, PlacementSpec, RunSpec, TrainingSpec
from runspec.spec import DEFAULT_DATASET, DEFAULT_MODEL
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run, RunStatus
from tunedeck_state.settings import get_settings
from tunedeck_state.source_checks import SpecRefused

router = APIRouter(include_in_schema=False)
CHART_GROUPS = [
    {"title": "Loss", "keys": ["loss", "eval_loss"]},
    {"title": "Learning rate", "keys": ["learning_rate"]},
    {"title": "Throughput (tokens/s)", "keys": ["tokens_per_second"]},
    {"title": "Memory (MiB)", "keys": ["memory_bytes"], "scale": 1 / 2**20},
]


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


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
}


@dataclass(frozen=True)
class RunsQuery:
    """The runs page's filters, sort and page, from its query string (empty form fields mean "any")."""

    status: str | None
    method: str | None
    name: str | None
    sort: str
    page: int

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
) -> RunsQuery:
    statuses = [s.value for s in RunStatus]
    if status_ and status_ not in statuses:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"status must be one of {', '.join(statuses)}")
    if sort and sort not in run_service.SORT_CHOICES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"sort must be one of {', '.join(run_service.SORT_CHOICES)}"
        )
    return RunsQuery(status_ or None, method or None, (name or "").strip() or None, sort or "-created", page)


RunsQueryDep = Annotated[RunsQuery, Depends(runs_query)]


def _runs_context(session: Session, query: RunsQuery) -> dict[str, Any]:
    """One page of the list (RUNS_PER_PAGE runs, from the indexes and each run's latest-value summary)."""
    page = run_service.list_runs(
        session,
        status=query.status,
        method=query.method,
        name=query.name,
        sort=query.sort,
        limit=RUNS_PER_PAGE,
        offset=(query.page - 1) * RUNS_PER_PAGE,
    )
    pages = max(1, -(-page.total // RUNS_PER_PAGE))
    return {
        "runs": page.items,
        "total": page.total,
        "query": query,
        "pages": pages,
        "table_url": query.url("/runs/table"),
        "prev_url": query.url(page=query.page - 1) if query.page > 1 else None,
        "next_url": query.url(page=query.page + 1) if query.page < pages else None,
        "statuses": [s.value for s in RunStatus],
        "methods": list(METHODS),
        "sorts": SORT_LABELS,
        "filtered": bool(query.status or query.method or query.name),
    }


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, query: RunsQueryDep) -> Response:
    return templates.TemplateResponse(request, "runs_list.html", _runs_context(session, query))


@router.get("/runs/table", response_class=HTMLResponse)
def runs_table(request: Request, session: SessionDep, query: RunsQueryDep) -> Response:
    return templates.TemplateResponse(request, "runs_list.html", _runs_context(session, query), block_name="runs_table")


# -- new run ---------------------------------------------------------------------------------------------


def _form_context(values: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    method_values = values.get("method") or {}
    method_name = method_values.get("name", "lora")
    method_cls = METHODS.get(method_name, METHODS["lora"])
    return {
        "values": values,
        "errors": errors or {},
        "methods": METHODS,
        "method_name": method_cls.model_fields["name"].default,
        "method_fields": fields_for(method_cls, "method", method_values),
        "dataset_fields": fields_for(DatasetSpec, "dataset", values.get("dataset"), skip=frozenset({"source"})),
        "training_fields": fields_for(TrainingSpec, "training", values.get("training")),
        "placement_fields": fields_for(PlacementSpec, "placement", values.get("placement")),
        "demo_sources": _demo_sources(),
    }


def _demo_sources() -> dict[str, str]:
    """The offline demo's model and data, once `tunedeck demo prepare` has built them: the form offers them,
    since the hub defaults cannot be downloaded on a machine without network access."""
    demo_dir = get_settings().demo_dir
    model, dataset = demo_dir / DEMO_MODEL_DIRNAME, demo_dir / DEMO_DATASET
    found = {}
    if (model / "config.json").is_file():
        found["model"] = str(model)
    if dataset.is_file():
        found["dataset"] = str(dataset)
    return found


def _default_values() -> dict[str, Any]:
    return {
        "name": "",
        "model": DEFAULT_MODEL,
        "dataset": {"source": DEFAULT_DATASET},
        "method": {"name": "lora"},
    }


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(
    request: Request, session: SessionDep, clone: int | None = None, dataset: int | None = None
) -> Response:
    values = _default_values()
    if clone is not None:
        source = load_run(session, clone)
        values = {**source.spec, "name": f"{source.name}-copy"}
    if dataset is not None:  # "Train on this" from a dataset's page
        from app.services import datasets as dataset_service

        try:
            values["dataset"] = dataset_service.spec_section(dataset_service.get_dataset(session, dataset))
        except dataset_service.DatasetNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset} does not exist") from None
    return templates.TemplateResponse(request, "run_new.html", _form_context(values))


@router.get("/runs/new/method", response_class=HTMLResponse)
def method_fields(request: Request) -> Response:
    name = request.query_params.get("method.name", "lora")
    if name not in METHODS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown method {name!r}")
    return templates.TemplateResponse(
        request, "run_new.html", _form_context({"method": {"name": name}}), block_name="method_fields"
    )


def _field_kinds(model: type[BaseModel], prefix: str) -> tuple[set[str], set[str]]:
    fields = fields_for(model, prefix, skip=frozenset())
    return {f.path for f in fields if f.kind == "list"}, {f.path for f in fields if f.kind == "checkbox"}


def _refused_form(request: Request, values: dict[str, Any], errors: dict[str, str]) -> Response:
    """422: the form again with what was typed, each error next to its field (only the form block for htmx)."""
    return templates.TemplateResponse(
        request,
        "run_new.html",
        _form_context(values, errors),
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        block_name="form" if _is_htmx(request) else None,
    )


@router.post("/runs", response_class=HTMLResponse)
async def create_run_from_form(request: Request, session: SessionDep) -> Response:
    form = await request.form()
    method_cls = METHODS.get(str(form.get("method.name", "")))
    list_fields: set[str] = set()
    bool_fields: set[str] = set()
    for model, prefix in ((method_cls, "method"), (DatasetSpec, "dataset"), (TrainingSpec, "training")):
        if model is not None:
            lists, bools = _field_kinds(model, prefix)
            list_fields |= lists
            bool_fields |= bools
    values = spec_from_form(dict(form), frozenset(list_fields), frozenset(bool_fields))
    try:
        spec = RunSpec.model_validate(values)
    except ValidationError as exc:
        return _refused_form(request, values, errors_by_field(exc))
    try:
        # In a thread: submitting may wait on a worker (the method check), which must not stall the event loop.
        run = await run_in_threadpool(submit_run, session, spec)
    except SpecRefused as exc:  # a model or dataset the worker would not read (missing path, outside the roots)
        return _refused_form(request, values, {field: message for field, message in exc.problems})
    url = f"/runs/{run.id}"
    if _is_htmx(request):
        return Response(status_code=status.HTTP_201_CREATED, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


# -- one run ---------------------------------------------------------------------------------------------


def _run_context(session: Session, run: Run) -> dict[str, Any]:
    return {
        "run": run,
        "log_lines": run_service.log_tail(session, run.id, 30),
        "chart_groups": CHART_GROUPS,
        "inference": inference_service.page_context(run),
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    return templates.TemplateResponse(request, "run_detail.html", _run_context(session, run))


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
def run_live(request: Request, run: RunDep, session: SessionDep) -> Response:
    return templates.TemplateResponse(request, "run_detail.html", _run_context(session, run), block_name="live")


@router.post("/runs/{run_id}/cancel", response_class=HTMLResponse)
def cancel_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    run_id = run.id
    try:
        run = control.cancel(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return templates.TemplateResponse(request, "run_detail.html", _run_context(session, run), block_name="live")


@router.post("/runs/{run_id}/resume", response_class=HTMLResponse)
def resume_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    run_id = run.id
    try:
        control.resume(session, run_id)
    except run_service.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    run = load_run(session, run_id)
    return templates.TemplateResponse(request, "run_detail.html", _run_context(session, run), block_name="live")
