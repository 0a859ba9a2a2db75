"""Sweeps: launch many runs from a base spec and a grid (or overrides), follow, cancel; as JSON and as pages whose run
tables refresh as htmx fragments."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.services import sweep_search
from app.services import sweeps as sweep_service
from app.services.compare import DEFAULT_OBJECTIVE
from app.services.compare.columns import QUALITY_METRICS
from app.services.sweeps import SweepInvalid, SweepRequest
from app.web import sweep_form
from app.web.deps import SessionDep, SweepDep
from app.web.schemas import Problem, UtcDateTime
from app.web.templating import is_htmx, templates
from runspec import RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.labels import tag_problem
from tunedeck_state.models import Sweep
from tunedeck_state.search.pruning import rung_values

api_router = APIRouter(tags=["sweeps"])
page_router = APIRouter()


class SweepRunOut(BaseModel):
    id: int
    position: int
    name: str
    status: str
    method: str
    reused: bool
    step: int
    max_steps: int
    progress: float
    final_train_loss: float | None
    final_eval_loss: float | None
    error: str | None
    prune_reason: str | None
    params: dict[str, Any] | None
    rungs: list[float] = Field(
        default_factory=list,
        description="hyperband: the eval loss at each rung the pruner judged the run at (a pruned run failed its last)",
    )


class SweepOut(BaseModel):
    id: int
    name: str
    created_at: UtcDateTime
    state: str
    progress: float
    total: int
    counts: dict[str, int]
    varied: list[str]
    request: dict[str, Any]
    run_ids: list[int]
    runs: list[SweepRunOut]
    compare_url: str
    page_url: str
    strategy: str
    max_runs: int | None
    steps_saved: int
    #: hours the runs held their devices, and the budget's limit on them (random / tpe; None: no limit)
    device_hours: float = 0.0
    gpu_hours: float | None = None
    tags: list[str] = []
    notes: str | None = None
    archived: bool = False


class SweepPreview(BaseModel):
    count: int
    names: list[str]
    varied: list[str]
    strategy: str = "grid"
    space: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    objective: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None


def sweep_out(sweep: Sweep) -> dict[str, Any]:
    summary = sweep_service.summarize(sweep)
    runs = [
        {
            "id": m.run.id,
            "position": m.position,
            "name": m.run.name,
            "status": m.run.status,
            "method": m.run.method,
            "reused": m.reused,
            "step": m.run.step,
            "max_steps": m.run.max_steps,
            "progress": m.run.progress,
            "final_train_loss": m.run.final_train_loss,
            "final_eval_loss": m.run.final_eval_loss,
            "error": m.run.error,
            "prune_reason": m.run.prune_reason,
            "params": (m.trial or {}).get("params"),
            "rungs": rung_values((m.trial or {}).get("system_attrs")),
        }
        for m in sweep.members
    ]
    run_ids = [r["id"] for r in runs]
    return {
        "id": sweep.id,
        "name": sweep.name,
        "created_at": sweep.created_at,
        "state": summary.state,
        "progress": summary.progress,
        "total": summary.total,
        "counts": summary.counts,
        "varied": sweep.varied or [],
        "request": sweep.request,
        "run_ids": run_ids,
        "runs": runs,
        "compare_url": f"/api/compare?sweep_id={sweep.id}",
        "page_url": f"/sweeps/{sweep.id}",
        "strategy": sweep.strategy or "grid",
        "max_runs": summary.max_runs,
        "steps_saved": summary.steps_saved,
        "device_hours": summary.device_hours,
        "gpu_hours": summary.gpu_hours,
        "tags": sweep.tags or [],
        "notes": sweep.notes,
        "archived": bool(sweep.archived),
    }


def invalid_response(exc: SweepInvalid) -> JSONResponse:
    """422 naming each bad run (its index in the expansion) and field, in the API's usual error shape."""
    detail = [
        {
            "loc": ["body", "runs", p["run_index"], *str(p["field"]).split(".")]
            if p["run_index"] is not None
            else ["body", *str(p["field"]).split(".")],
            **p,
        }
        for p in exc.problems
    ]
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail, "message": str(exc)}
    )


def launch(session: Session, request: SweepRequest) -> Sweep:
    """Create the sweep a request asks for (the API's and the form's): a grid's runs, or a search's first trials."""
    if request.strategy == "grid":
        return sweep_service.create_sweep(session, sweep_search.grid_from_space(request))
    return sweep_search.create_search_sweep(session, request)


@api_router.post(
    "/sweeps",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepOut,
    responses={
        422: {"model": Problem, "description": "an expanded run is invalid: detail names its run_index and field"}
    },
)
def create_sweep(request: SweepRequest, session: SessionDep) -> Any:
    """Grid: expand the grid (× overrides), validate every run, store them and queue the new ones. Runs identical
    to one that already succeeded (or is queued or running) are reused unless `rerun` is true.
    Random / TPE: check the space, store the sweep and queue its first budget.max_concurrent trials; the next
    ones are asked as runs end."""
    try:
        sweep = launch(session, request)
    except SweepInvalid as exc:
        session.rollback()
        return invalid_response(exc)
    return sweep_out(sweep)


@api_router.post("/sweeps/preview", response_model=SweepPreview)
def preview_sweep(request: SweepRequest) -> Any:
    """How many runs the request makes and their names (a search: its space and budget), validated, without
    launching anything."""
    try:
        if request.strategy != "grid":
            return sweep_search.describe(request)
        plan = sweep_service.plan_sweep(sweep_search.grid_from_space(request))
    except SweepInvalid as exc:
        return invalid_response(exc)
    return {"count": len(plan.runs), "names": [p.spec.name for p in plan.runs], "varied": plan.varied}


def _checked_tag(tag: str | None) -> str | None:
    """The tag filter, stripped (None when empty); 422 naming `tag` when it cannot be a tag."""
    tag = (tag or "").strip() or None
    if tag and (problem := tag_problem(tag)):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"tag: {problem}")
    return tag


@api_router.get("/sweeps", response_model=list[SweepOut])
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    archived: Annotated[
        Literal["false", "true", "any"],
        Query(description="false: hide archived sweeps (the default); true: only them."),
    ] = "false",
    tag: Annotated[str | None, Query(max_length=32, description="Only the sweeps with this tag.")] = None,
) -> Any:
    chosen = {"false": False, "true": True, "any": None}[archived]
    tag = _checked_tag(tag)
    found = sweep_service.list_sweeps(session, limit=limit, offset=offset, archived=chosen, tag=tag)
    return [sweep_out(s) for s in found]


@api_router.get("/sweeps/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep: SweepDep) -> Any:
    return sweep_out(sweep)


@api_router.post("/sweeps/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(sweep: SweepDep, session: SessionDep) -> Any:
    """Cancel all queued (at once) and running (at their next step) runs of the sweep."""
    return sweep_out(sweep_service.cancel_sweep(session, sweep.id))


# -- sweeps ----------------------------------------------------------------------------------------------


def _sweep_rows(sweeps: list[Sweep]) -> list[dict[str, Any]]:
    return [{"sweep": s, "summary": sweep_service.summarize(s)} for s in sweeps]


@page_router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(
    request: Request,
    session: SessionDep,
    archived: str = "false",
    tag: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    """The sweeps, newest first; `archived=true` the archived ones, `any` both; `tag` those with the tag."""
    chosen = None if archived == "any" else archived.lower() in ("true", "1", "yes", "on")
    tag = _checked_tag(tag)
    rows = _sweep_rows(sweep_service.list_sweeps(session, limit=200, archived=chosen, tag=tag))
    block = "sweeps_table" if is_htmx(request) else None
    query = urlencode({k: v for k, v in {"archived": archived if chosen is not False else "", "tag": tag}.items() if v})
    context = {"rows": rows, "archived": chosen, "tag": tag or "", "query": query}
    return templates.TemplateResponse(request, "sweeps.html", context, block_name=block)


def _sweep_context(sweep: Sweep) -> dict[str, Any]:
    return {
        "sweep": sweep,
        "summary": sweep_service.summarize(sweep),
        "members": sweep.members,
        "request_json": json.dumps(sweep.request, indent=2, ensure_ascii=False),
        "rungs": {m.run_id: rung_values((m.trial or {}).get("system_attrs")) for m in sweep.members},
    }


@page_router.get("/sweeps/{sweep_id:int}", response_class=HTMLResponse)
def sweep_page(
    request: Request, sweep: SweepDep, group_by: str | None = None, objective: str | None = None
) -> Response:
    block = "sweep_live" if is_htmx(request) else None
    searched = ((sweep.request or {}).get("objective") or {}).get("metric")
    if objective is None and searched in QUALITY_METRICS and searched != DEFAULT_OBJECTIVE:
        objective = searched  # the views (parallel coordinates, trials) start on the search's own objective
    # the comparison's view parameters, passed on to GET /api/compare (which checks them)
    view = urlencode({k: v for k, v in {"group_by": group_by, "objective": objective}.items() if v}, safe=",")
    context = {**_sweep_context(sweep), "view_query": "&" + view if view else ""}
    return templates.TemplateResponse(request, "sweep.html", context, block_name=block)


@page_router.post("/sweeps/{sweep_id:int}/cancel", response_class=HTMLResponse)
def cancel_sweep_from_page(request: Request, sweep: SweepDep, session: SessionDep) -> Response:
    sweep = sweep_service.cancel_sweep(session, sweep.id)
    return templates.TemplateResponse(request, "sweep.html", _sweep_context(sweep), block_name="sweep_live")


# -- new sweep -------------------------------------------------------------------------------------------


def _default_base() -> dict[str, Any]:
    return RunSpec.model_validate({"name": "base"}).model_dump(mode="json", exclude={"name"})


def _padded(rows: list[dict[str, Any]], blank: dict[str, Any], shown: int) -> list[dict[str, Any]]:
    return [*rows, *([blank] * (shown - len(rows)))]


def _space_row(path: str, kind: str, low: str = "", high: str = "", *, log: bool = False) -> dict[str, str]:
    return {"path": path, "type": kind, "low": low, "high": high, "log": "on" if log else "", "choices": ""}


def _new_sweep_context(
    session: Session,
    values: dict[str, Any] | None = None,
    *,
    count: int | None = None,
    names: list[str] | None = None,
    search: dict[str, Any] | None = None,
    problems: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    values = values or {}
    return {
        "values": values,
        "strategy": values["strategy"] if values.get("strategy") in sweep_form.STRATEGIES else "grid",
        "vary_rows": _padded(values.get("vary") or [], {"path": "", "values": ""}, sweep_form.VARY_ROWS),
        "space_rows": _padded(values.get("space") or [], _space_row("", "float"), sweep_form.SPACE_ROWS),
        "vary_options": sweep_form.vary_options(),
        "recent_runs": run_service.list_runs(session, limit=50).items,
        "count": count,
        "names": names or [],
        "search": search,
        "problems": problems or [],
        "errors": sweep_form.field_errors(problems or [], values),
        **sweep_form.choices(),
    }


@page_router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep_page(request: Request, session: SessionDep, base_run: int | None = None) -> Response:
    base = _default_base()
    name = "sweep"
    if base_run is not None:
        try:
            if not 0 < base_run <= sweep_service.MAX_ID:
                raise run_service.RunNotFound(base_run)
            run = run_service.get_run(session, base_run)
        except run_service.RunNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {base_run} does not exist") from None
        base = {k: v for k, v in run.spec.items() if k != "name"}
        name = f"{run.name} sweep"[:80]
    lora = base.get("method", {}).get("name") == "lora"
    values = {
        "name": name,
        "base": json.dumps(base, indent=2, ensure_ascii=False),
        "base_run": base_run,
        "strategy": "grid",
        "vary": [{"path": "method.r", "values": "4, 8, 16"}] if lora else [],
        # what a search starts from when the strategy is switched: rank × learning rate
        "space": [
            *([_space_row("method.r", "int", "2", "16")] if lora else []),
            _space_row("training.learning_rate", "float", "1e-5", "1e-2", log=True),
        ],
        "max_runs": "10",
        "max_concurrent": "1",
        "objective_metric": "best_eval_loss",
        "objective_direction": "minimize",
        "pruner": "median",
    }
    return templates.TemplateResponse(request, "sweep_new.html", _new_sweep_context(session, values))


def _count_context(session: Session, values: dict[str, Any], sweep_request: SweepRequest) -> dict[str, Any]:
    """The form's context with what the request makes: a grid's runs, or a search's space and budget."""
    if sweep_request.strategy != "grid":
        search = sweep_search.describe(sweep_request)
        return _new_sweep_context(session, values, count=search["count"], search=search)
    plan = sweep_service.plan_sweep(sweep_request)
    return _new_sweep_context(session, values, count=len(plan.runs), names=[p.spec.name for p in plan.runs])


@page_router.post("/sweeps/new/count", response_class=HTMLResponse)
async def new_sweep_count(request: Request, session: SessionDep) -> Response:
    """The live "makes N runs" (or "searches N trials") line under the form (htmx), with every problem the request
    (or an expanded run) would have."""
    values = sweep_form.form_values(dict(await request.form()))
    try:
        context = _count_context(session, values, sweep_form.request_from_values(values))
    except SweepInvalid as exc:
        context = _new_sweep_context(session, values, problems=exc.problems)
    return templates.TemplateResponse(request, "sweep_new.html", context, block_name="count")


@page_router.post("/sweeps", response_class=HTMLResponse)
async def create_sweep_from_form(request: Request, session: SessionDep) -> Response:
    values = sweep_form.form_values(dict(await request.form()))
    try:
        sweep_request = sweep_form.request_from_values(values)
        # In a thread: storing and checking the runs may wait on a worker; the event loop must not stall.
        sweep = await run_in_threadpool(launch, session, sweep_request)
    except SweepInvalid as exc:
        session.rollback()
        context = _new_sweep_context(session, values, problems=exc.problems)
        return templates.TemplateResponse(
            request,
            "sweep_new.html",
            context,
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            block_name="form" if is_htmx(request) else None,
        )
    url = f"/sweeps/{sweep.id}"
    if is_htmx(request):
        return Response(status_code=status.HTTP_201_CREATED, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)
