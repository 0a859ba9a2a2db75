"""Comparisons: every chart and table of the comparison page as JSON (or the table as CSV), and the page that draws them
(app/static/compare.js)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.services import compare as compare_service
from app.services import sweeps as sweep_service
from app.web.deps import SessionDep
from app.web.templating import templates

api_router = APIRouter(tags=["compare"])
page_router = APIRouter()


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


def resolve_run_ids(session: Session, run_ids: str | list[str] | None, sweep_id: int | None) -> list[int]:
    ids = parse_run_ids(run_ids)
    if sweep_id is not None:
        try:
            sweep = sweep_service.get_sweep(session, sweep_id)
        except sweep_service.SweepNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} does not exist") from None
        ids += [member.run_id for member in sweep.members if member.run_id not in ids]
    if not ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "run_ids: give the runs to compare, e.g. run_ids=1,2,3 (or sweep_id)"
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
    x: Annotated[Literal["step", "tokens"], Query(description="Curves' x axis: optimizer step or tokens seen.")] = (
        "step"
    ),
    max_points: Annotated[int, Query(ge=10, le=10_000, description="Most points per curve.")] = (
        compare_service.DEFAULT_MAX_POINTS
    ),
    format: Annotated[Literal["json", "csv"], Query(description="csv: the table only.")] = "json",
) -> Response:
    """Compare any set of runs. Curves are downsampled on the server (min/max per bucket, so spikes stay)."""
    ids = resolve_run_ids(session, run_ids, sweep_id)
    try:
        comparison = compare_service.compare(session, ids, x=x, max_points=max_points)
    except compare_service.RunsNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    if format == "csv":
        return Response(
            compare_service.table_csv(comparison),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="comparison.csv"'},
        )
    return Response(orjson.dumps(comparison, option=orjson.OPT_NON_STR_KEYS), media_type="application/json")


# -- compare ---------------------------------------------------------------------------------------------


@page_router.get("/compare", response_class=HTMLResponse)
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
