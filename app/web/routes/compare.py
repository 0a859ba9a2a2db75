"""Comparisons: every chart and table of the comparison page as JSON (or the table as CSV), and the page that draws them
(app/static/compare.js)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services import compare as compare_service
from app.services import sweeps as sweep_service
from app.web.deps import SessionDep
from app.web.templating import templates
from tunedeck_state.labels import has_tag, tag_problem
from tunedeck_state.models import Run

api_router = APIRouter(tags=["compare"])
page_router = APIRouter()
#: A tag's runs beyond this many: the comparison refuses them (compare_service.MAX_RUNS) rather than cut silently.
MAX_TAGGED = compare_service.MAX_RUNS + 1


def parse_run_ids(raw: str | list[str] | None) -> list[int]:
    """ "1,2,3" (or the parameter repeated, as a form sends ticked boxes) → [1, 2, 3]; a clear 422 otherwise."""
    if not raw:
        return []
    joined = raw if isinstance(raw, str) else ",".join(raw)
    ids: list[int] = []
    for part in joined.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"run_ids: {part!r} is not a run id; give comma-separated ids such as run_ids=1,2,3",
            )
        if int(part) not in ids:
            ids.append(int(part))
    return ids


def resolve_run_ids(
    session: Session,
    run_ids: str | list[str] | None,
    sweep_id: int | None,
    tag: str | None = None,
    varied: list[str] | None = None,
    trial_numbers: dict[int, int] | None = None,
) -> list[int]:
    """The runs named, then a sweep's and a tag's runs (archived runs left out of those two); a sweep's varied spec
    paths are appended to `varied`, and its runs' trial numbers put in `trial_numbers`, when they are given."""
    ids = parse_run_ids(run_ids)
    if sweep_id is not None:
        try:
            sweep = sweep_service.get_sweep(session, sweep_id)
        except sweep_service.SweepNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} does not exist") from None
        ids += [m.run_id for m in sweep.members if m.run_id not in ids and not m.run.archived]
        if varied is not None:
            varied += list(sweep.varied or [])
        if trial_numbers is not None:
            trial_numbers.update({m.run_id: int((m.trial or {}).get("number", m.position)) for m in sweep.members})
    if tag:
        if problem := tag_problem(tag):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"tag: {problem}")
        tagged = session.scalars(
            select(Run.id).where(has_tag(Run.tags, tag), Run.archived.is_(False)).order_by(Run.id).limit(MAX_TAGGED)
        ).all()
        if not tagged and not ids:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"tag: no run (not archived) is tagged {tag}")
        ids += [run_id for run_id in tagged if run_id not in ids]
    if not ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "run_ids: give the runs to compare, e.g. run_ids=1,2,3 (or sweep_id, or tag)",
        )
    if len(ids) > compare_service.MAX_RUNS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"run_ids: at most {compare_service.MAX_RUNS} runs at a time"
        )
    return ids


@api_router.get(
    "/compare",
    responses={
        200: {
            "description": "curves, table, params, efficiency, diff, generations (JSON), or the table as CSV",
            "content": {"application/json": {}, "text/csv": {}},
        }
    },
)
def compare(
    session: SessionDep,
    run_ids: Annotated[list[str] | None, Query(description="Comma-separated run ids: 1,2,3 (or repeated)")] = None,
    sweep_id: Annotated[int | None, Query(description="Compare the runs of this sweep (and any run_ids).")] = None,
    tag: Annotated[str | None, Query(max_length=32, description="Compare the runs with this tag (and any others).")] = (
        None
    ),
    x: Annotated[Literal["step", "tokens"], Query(description="Curves' x axis: optimizer step or tokens seen.")] = (
        "step"
    ),
    max_points: Annotated[int, Query(ge=10, le=10_000, description="Most points per curve.")] = (
        compare_service.DEFAULT_MAX_POINTS
    ),
    format: Annotated[Literal["json", "csv"], Query(description="csv: the table only.")] = "json",
    group_by: Annotated[
        str | None, Query(description="Group the runs by these config fields (comma-separated spec paths: method.r).")
    ] = None,
    objective: Annotated[
        str, Query(description="The metric of the parallel coordinates and the parameter importances.")
    ] = compare_service.DEFAULT_OBJECTIVE,
) -> Response:
    """Compare any set of runs: named, a sweep's, a tag's (archived runs are left out of a sweep's and a tag's).
    Curves are downsampled on the server (min/max per bucket, so spikes stay). With the views that explain a sweep:
    parallel coordinates over the swept parameters (a sweep's varied paths, else the fields that differ) and the
    objective, PED-ANOVA importances, groups by any config field, and `trials`: the objective trial by trial (a
    sweep's trial order, else creation order) with each run's state and the best value so far."""
    varied: list[str] = []
    numbers: dict[int, int] = {}
    ids = resolve_run_ids(session, run_ids, sweep_id, tag, varied, numbers)
    by = [p.strip() for p in (group_by or "").split(",") if p.strip()] or None
    try:
        comparison = compare_service.compare(
            session,
            ids,
            x=x,
            max_points=max_points,
            params=varied,
            group_by=by,
            objective=objective,
            trial_numbers=numbers,
        )
    except compare_service.RunsNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except compare_service.ViewInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if format == "csv":
        return Response(
            compare_service.table_csv(comparison),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="comparison.csv"'},
        )
    return Response(orjson.dumps(comparison, option=orjson.OPT_NON_STR_KEYS), media_type="application/json")


def view_query(group_by: str | None, objective: str | None) -> str:
    """The page's view parameters, passed on to GET /api/compare (which checks them)."""
    parts = {"group_by": group_by, "objective": objective}
    return urlencode({k: v for k, v in parts.items() if v}, safe=",")


# -- compare ---------------------------------------------------------------------------------------------


@page_router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    run_ids: Annotated[list[str] | None, Query()] = None,
    sweep_id: int | None = None,
    group_by: str | None = None,
    objective: str | None = None,
    tag: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    ids = parse_run_ids(run_ids)
    if tag and (problem := tag_problem(tag)):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"tag: {problem}")
    if not ids and sweep_id is None and not tag:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "choose runs to compare: tick them in the runs list, or a sweep"
        )
    query = "&".join(
        part
        for part in (
            f"run_ids={','.join(map(str, ids))}" if ids else "",
            f"sweep_id={sweep_id}" if sweep_id else "",
            view_query(group_by, objective),
            f"tag={quote(tag)}" if tag else "",
        )
        if part
    )
    return templates.TemplateResponse(request, "compare.html", {"query": query, "run_ids": ids, "sweep_id": sweep_id})
