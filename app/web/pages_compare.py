"""Pages of sweeps and comparisons. The charts and tables are drawn by app/static/compare.js from the same
JSON that `GET /api/compare` serves; the sweep pages refresh their run tables as htmx fragments."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.services import sweeps as sweep_service
from app.services.sweeps import SweepInvalid, SweepRequest
from app.web.api_compare import parse_run_ids
from app.web.deps import SessionDep, SweepDep
from app.web.templating import templates
from runspec import METHODS, DatasetSpec, RunSpec, TrainingSpec
from tunedeck_state import runs as run_service
from tunedeck_state.models import Sweep

router = APIRouter(include_in_schema=False)
VARY_ROWS = 4


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


# -- compare ---------------------------------------------------------------------------------------------


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request, run_ids: Annotated[list[str] | None, Query()] = None, sweep_id: int | None = None
) -> Response:
    ids = parse_run_ids(run_ids)
    if not ids and sweep_id is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "choose runs to compare: tick them in the runs list, or a sweep"
        )
    query = "&".join(
        part
        for part in (f"run_ids={','.join(map(str, ids))}" if ids else "", f"sweep_id={sweep_id}" if sweep_id else "")
        if part
    )
    return templates.TemplateResponse(request, "compare.html", {"query": query, "run_ids": ids, "sweep_id": sweep_id})


# -- sweeps ----------------------------------------------------------------------------------------------


def _sweep_rows(sweeps: list[Sweep]) -> list[dict[str, Any]]:
    return [{"sweep": s, "summary": sweep_service.summarize(s)} for s in sweeps]


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request, session: SessionDep) -> Response:
    rows = _sweep_rows(sweep_service.list_sweeps(session, limit=200))
    block = "sweeps_table" if _is_htmx(request) else None
    return templates.TemplateResponse(request, "sweeps.html", {"rows": rows}, block_name=block)


def _sweep_context(sweep: Sweep) -> dict[str, Any]:
    return {
        "sweep": sweep,
        "summary": sweep_service.summarize(sweep),
        "members": sweep.members,
        "request_json": json.dumps(sweep.request, indent=2, ensure_ascii=False),
    }


@router.get("/sweeps/{sweep_id:int}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep: SweepDep) -> Response:
    block = "sweep_live" if _is_htmx(request) else None
    return templates.TemplateResponse(request, "sweep.html", _sweep_context(sweep), block_name=block)


@router.post("/sweeps/{sweep_id:int}/cancel", response_class=HTMLResponse)
def cancel_sweep_from_page(request: Request, sweep: SweepDep, session: SessionDep) -> Response:
    sweep = sweep_service.cancel_sweep(session, sweep.id)
    return templates.TemplateResponse(request, "sweep.html", _sweep_context(sweep), block_name="sweep_live")


# -- new sweep -------------------------------------------------------------------------------------------


def _leaf_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Fields a sweep can vary from a form: scalars (numbers, strings, booleans, choices), not lists."""
    paths = []
    for name, prop in model.model_json_schema().get("properties", {}).items():
        variants = prop.get("anyOf", [prop])
        if any(v.get("type") in ("array", "object") or "$ref" in v for v in variants):
            continue
        paths.append(f"{prefix}.{name}")
    return paths


def vary_options() -> list[str]:
    options = ["method.name"]
    for cls in METHODS.values():
        options += [p for p in _leaf_paths(cls, "method") if p not in options]
    options += _leaf_paths(TrainingSpec, "training")
    options += [p for p in _leaf_paths(DatasetSpec, "dataset") if p != "dataset.source"]
    return options


def parse_values(raw: str) -> list[Any]:
    """ "1, 2, 4" → [1, 2, 4]; "1e-4, 3e-4" → floats; "lora, full" → strings; true/false → booleans."""
    values = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = json.loads(part)
        except ValueError:
            value = part
        values.append(value if isinstance(value, int | float | str | bool) else part)
    return values


def _default_base() -> dict[str, Any]:
    return RunSpec.model_validate({"name": "base"}).model_dump(mode="json", exclude={"name"})


def _new_sweep_context(
    session: Session,
    values: dict[str, Any] | None = None,
    *,
    count: int | None = None,
    names: list[str] | None = None,
    problems: list[dict[str, Any]] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    values = values or {}
    rows = values.get("vary") or []
    rows = [*rows, *([{"path": "", "values": ""}] * (VARY_ROWS - len(rows)))]
    return {
        "values": values,
        "vary_rows": rows,
        "vary_options": vary_options(),
        "recent_runs": run_service.list_runs(session, limit=50).items,
        "count": count,
        "names": names or [],
        "problems": problems or [],
        "error": error,
    }


@router.get("/sweeps/new", response_class=HTMLResponse)
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
    values = {
        "name": name,
        "base": json.dumps(base, indent=2, ensure_ascii=False),
        "base_run": base_run,
        "vary": [{"path": "method.r", "values": "4, 8, 16"}] if base.get("method", {}).get("name") == "lora" else [],
    }
    return templates.TemplateResponse(request, "sweep_new.html", _new_sweep_context(session, values))


def _request_from_form(form: dict[str, Any]) -> tuple[dict[str, Any], SweepRequest]:
    """The form's values (to re-render it) and the SweepRequest they make. Raises SweepInvalid."""
    vary = []
    for i in range(VARY_ROWS * 4):
        path = str(form.get(f"vary-{i}-path", "")).strip()
        raw = str(form.get(f"vary-{i}-values", "")).strip()
        if f"vary-{i}-path" not in form and f"vary-{i}-values" not in form:
            continue
        vary.append({"path": path, "values": raw})
    base_text = str(form.get("base", ""))
    values: dict[str, Any] = {
        "name": str(form.get("name", "")).strip(),
        "base": base_text,
        "rerun": str(form.get("rerun", "")).lower() in {"on", "true", "1"},
        "vary": vary,
    }
    problems = []
    try:
        base = json.loads(base_text or "{}")
        if not isinstance(base, dict):
            raise ValueError("the base spec must be a JSON object")
    except ValueError as exc:
        problems.append({"run_index": None, "run_name": None, "field": "base", "msg": f"not valid JSON: {exc}"})
        base = {}
    grid: dict[str, list[Any]] = {}
    for row in vary:
        if not row["path"] and not row["values"]:
            continue
        if not row["path"]:
            problems.append({"run_index": None, "run_name": None, "field": "vary", "msg": "choose a field to vary"})
            continue
        parsed = parse_values(row["values"])
        if not parsed:
            problems.append(
                {"run_index": None, "run_name": None, "field": row["path"], "msg": "give comma-separated values"}
            )
            continue
        if row["path"] in grid:
            problems.append({"run_index": None, "run_name": None, "field": row["path"], "msg": "is listed twice"})
        grid[row["path"]] = parsed
    if problems:
        raise SweepInvalid(problems)
    try:
        request = SweepRequest.model_validate(
            {"name": values["name"], "base": base, "grid": grid, "rerun": values["rerun"]}
        )
    except ValidationError as exc:
        raise SweepInvalid(
            [
                {
                    "run_index": None,
                    "run_name": None,
                    "field": ".".join(str(p) for p in e["loc"]),
                    "msg": e["msg"],
                }
                for e in exc.errors()
            ]
        ) from None
    return values, request


@router.post("/sweeps/new/count", response_class=HTMLResponse)
async def new_sweep_count(request: Request, session: SessionDep) -> Response:
    """The live "makes N runs" line under the form (htmx), with every problem an expanded run would have."""
    form = dict(await request.form())
    try:
        values, sweep_request = _request_from_form(form)
        plan = sweep_service.plan_sweep(sweep_request)
    except SweepInvalid as exc:
        context = _new_sweep_context(session, {}, problems=exc.problems)
        return templates.TemplateResponse(request, "sweep_new.html", context, block_name="count")
    context = _new_sweep_context(session, values, count=len(plan.runs), names=[p.spec.name for p in plan.runs])
    return templates.TemplateResponse(request, "sweep_new.html", context, block_name="count")


@router.post("/sweeps", response_class=HTMLResponse)
async def create_sweep_from_form(request: Request, session: SessionDep) -> Response:
    form = dict(await request.form())
    values: dict[str, Any] = {}
    try:
        values, sweep_request = _request_from_form(form)
        # In a thread: storing and checking the runs may wait on a worker; the event loop must not stall.
        sweep = await run_in_threadpool(sweep_service.create_sweep, session, sweep_request)
    except SweepInvalid as exc:
        session.rollback()
        if not values:
            values = {
                "name": form.get("name", ""),
                "base": form.get("base", ""),
                "vary": [
                    {"path": form.get(f"vary-{i}-path", ""), "values": form.get(f"vary-{i}-values", "")}
                    for i in range(VARY_ROWS)
                ],
            }
        context = _new_sweep_context(session, values, problems=exc.problems)
        return templates.TemplateResponse(
            request,
            "sweep_new.html",
            context,
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            block_name="form" if _is_htmx(request) else None,
        )
    url = f"/sweeps/{sweep.id}"
    if _is_htmx(request):
        return Response(status_code=status.HTTP_201_CREATED, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)
