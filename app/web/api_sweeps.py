"""REST API of sweeps: launch many runs from a base spec and a grid (or overrides), follow, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.services import sweeps as sweep_service
from app.services.sweeps import SweepInvalid, SweepRequest
from app.web.deps import SessionDep, SweepDep
from tunedeck_state.models import Sweep

router = APIRouter(prefix="/api", tags=["sweeps"])


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


class SweepOut(BaseModel):
    id: int
    name: str
    created_at: datetime
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


class SweepPreview(BaseModel):
    count: int
    names: list[str]
    varied: list[str]


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


@router.post(
    "/sweeps",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepOut,
    responses={422: {"description": "an expanded run is invalid: detail names its run_index and field"}},
)
def create_sweep(request: SweepRequest, session: SessionDep) -> Any:
    """Expand the grid (× overrides), validate every run, store them and queue the new ones. Runs identical
    to one that already succeeded (or is queued or running) are reused unless `rerun` is true."""
    try:
        sweep = sweep_service.create_sweep(session, request)
    except SweepInvalid as exc:
        session.rollback()
        return invalid_response(exc)
    return sweep_out(sweep)


@router.post("/sweeps/preview", response_model=SweepPreview)
def preview_sweep(request: SweepRequest) -> Any:
    """How many runs the request makes and their names, validated, without launching anything."""
    try:
        plan = sweep_service.plan_sweep(request)
    except SweepInvalid as exc:
        return invalid_response(exc)
    return {"count": len(plan.runs), "names": [p.spec.name for p in plan.runs], "varied": plan.varied}


@router.get("/sweeps", response_model=list[SweepOut])
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    return [sweep_out(s) for s in sweep_service.list_sweeps(session, limit=limit, offset=offset)]


@router.get("/sweeps/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep: SweepDep) -> Any:
    return sweep_out(sweep)


@router.post("/sweeps/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(sweep: SweepDep, session: SessionDep) -> Any:
    """Cancel all queued (at once) and running (at their next step) runs of the sweep."""
    return sweep_out(sweep_service.cancel_sweep(session, sweep.id))
