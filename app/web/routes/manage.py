"""Managing runs and sweeps: rename, tag, notes, archive (PATCH), delete (DELETE), and the runs list's bulk actions
(POST /api/runs/bulk/<action>), as JSON and as htmx fragments of the run page (block `labels`), the sweep page
(block `sweep_labels`) and the runs list.

Mounted before `runs`, so /runs/bulk/... is not read as /runs/{run_id}/...
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy.orm import Session

from app.services import manage
from app.services.manage import RunPatch, SweepPatch
from app.web.deps import RunDep, SessionDep, SweepDep, load_run, load_sweep
from app.web.formatting import human_bytes
from app.web.routes.runs import run_page_context, runs_page_context, runs_query
from app.web.routes.sweeps import SweepOut, _sweep_context, sweep_out
from app.web.schemas import RunOut
from app.web.templating import templates
from tunedeck_state import runs as run_service
from tunedeck_state.labels import clean_tags
from tunedeck_state.settings import get_settings

api_router = APIRouter(tags=["runs"])
page_router = APIRouter()

DELETE_RULE = (
    "A queued or running run is refused with 409 and the reason (cancel it first); so is a run whose merge is queued "
    "or running. The run's rows (metrics, logs, events, sweep memberships) and its folder (checkpoints, adapter or "
    "model, merged model, exports) go; the answer says how many bytes were freed and which sweeps used the run."
)


class DeletionOut(BaseModel):
    deleted: list[int]
    freed_bytes: int
    #: run id -> ids of the sweeps the run was a member of (it is gone from them)
    removed_from_sweeps: dict[int, list[int]]
    #: runs a deleted sweep used that stay: {"id", "reason", "used_by": [sweep ids]}
    kept: list[dict[str, Any]]
    sweep_id: int | None = None


class BulkIds(BaseModel):
    run_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        ..., min_length=1, max_length=manage.MAX_BULK, description="The runs to act on."
    )


class BulkTags(BulkIds):
    add: list[str] = Field(default_factory=list, description="Tags to add to every run.")
    remove: list[str] = Field(default_factory=list, description="Tags to take off every run.")

    @field_validator("add", "remove")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        return clean_tags(tags)


class BulkOut(BaseModel):
    run_ids: list[int]
    #: cancel only: the runs that were not queued or running, with the reason
    skipped: list[dict[str, Any]] = []


T = TypeVar("T")
P = TypeVar("P", RunPatch, SweepPatch)


def _not_found(exc: run_service.RunNotFound) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"run_ids: runs {exc} do not exist")


def _on_existing_runs(action: Callable[[], T]) -> T:
    """A bulk action over runs that all exist: one that names a missing run is a 404 naming `run_ids`."""
    try:
        return action()
    except run_service.RunNotFound as exc:
        raise _not_found(exc) from None


def _deleted(outcome: manage.Deletion) -> dict[str, Any]:
    return {
        "deleted": outcome.deleted,
        "freed_bytes": outcome.freed_bytes,
        "removed_from_sweeps": outcome.removed_from_sweeps,
        "kept": outcome.kept,
        "sweep_id": outcome.sweep_id,
    }


# -- API: bulk (before /runs/{run_id}) ---------------------------------------------------------------------------


@api_router.post("/runs/bulk/archive", response_model=BulkOut)
def bulk_archive(body: BulkIds, session: SessionDep) -> Any:
    """Archive the runs: hidden from the default list and from comparisons of a sweep or tag; kept."""
    return {"run_ids": [r.id for r in _on_existing_runs(lambda: manage.set_archived(session, body.run_ids, True))]}


@api_router.post("/runs/bulk/restore", response_model=BulkOut)
def bulk_restore(body: BulkIds, session: SessionDep) -> Any:
    """Take the runs out of the archive."""
    return {"run_ids": [r.id for r in _on_existing_runs(lambda: manage.set_archived(session, body.run_ids, False))]}


@api_router.post("/runs/bulk/tag", response_model=BulkOut)
def bulk_tag(body: BulkTags, session: SessionDep) -> Any:
    """Add tags to (and remove tags from) every run given."""
    tagged = _on_existing_runs(lambda: manage.tag_runs(session, body.run_ids, body.add, body.remove))
    return {"run_ids": [r.id for r in tagged]}


@api_router.post("/runs/bulk/cancel", response_model=BulkOut)
def bulk_cancel(body: BulkIds, session: SessionDep) -> Any:
    """Cancel the queued (at once) and running (at their next step) runs; the others are listed in `skipped`."""
    done = _on_existing_runs(lambda: manage.cancel_runs(session, body.run_ids))
    return {"run_ids": done["cancelled"], "skipped": done["skipped"]}


@api_router.post(
    "/runs/bulk/delete",
    response_model=DeletionOut,
    responses={409: {"description": DELETE_RULE}},
    description=f"Delete the runs, all or none. {DELETE_RULE}",
)
def bulk_delete(body: BulkIds, session: SessionDep) -> Any:
    try:
        return _deleted(_on_existing_runs(lambda: manage.delete_runs(session, get_settings(), body.run_ids)))
    except manage.Refused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


# -- API: one run, one sweep -------------------------------------------------------------------------------------


@api_router.patch("/runs/{run_id}", response_model=RunOut)
def patch_run(run_id: int, patch: RunPatch, session: SessionDep) -> Any:
    """Change a run's `name`, `tags` (replaces the list), `notes` or `archived`; fields left out stay."""
    load_run(session, run_id)
    try:
        return manage.update_run(session, run_id, patch)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"name: {exc}") from None


@api_router.delete(
    "/runs/{run_id}", response_model=DeletionOut, responses={409: {"description": DELETE_RULE}}, description=DELETE_RULE
)
def delete_run(run: RunDep, session: SessionDep) -> Any:
    try:
        return _deleted(manage.delete_runs(session, get_settings(), [run.id]))
    except manage.Refused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@api_router.patch("/sweeps/{sweep_id}", response_model=SweepOut)
def patch_sweep(sweep_id: int, patch: SweepPatch, session: SessionDep) -> Any:
    """Change a sweep's `name`, `tags`, `notes` or `archived` (an archived sweep is left out of the sweeps list)."""
    load_sweep(session, sweep_id)
    try:
        return sweep_out(manage.update_sweep(session, sweep_id, patch))
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"name: {exc}") from None


@api_router.delete("/sweeps/{sweep_id}", response_model=DeletionOut, responses={409: {"description": DELETE_RULE}})
def delete_sweep(sweep: SweepDep, session: SessionDep) -> Any:
    """Delete a sweep and the runs it launched; the runs it reused, or that another sweep also uses, stay (`kept`).
    Refused with 409 while any of those runs is queued or running: cancel the sweep first."""
    try:
        return _deleted(manage.delete_sweep(session, get_settings(), sweep.id))
    except manage.Refused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


# -- pages -------------------------------------------------------------------------------------------------------

BULK_ACTIONS = ("archive", "restore", "tag", "cancel", "delete")


def split_tags(raw: str) -> list[str]:
    """ "a, b c" -> ["a", "b", "c"]."""
    return [part for part in re.split(r"[,\s]+", raw or "") if part]


def _labels_block(request: Request, session: Session, run_id: int, code: int = 200, **extra: Any) -> Response:
    run = load_run(session, run_id)
    context = {**run_page_context(session, run), **extra}
    return templates.TemplateResponse(request, "run_detail.html", context, block_name="labels", status_code=code)


@page_router.get("/runs/{run_id:int}/labels", response_class=HTMLResponse)
def labels_fragment(request: Request, run: RunDep, session: SessionDep, edit: bool = False) -> Response:
    return _labels_block(request, session, run.id, editing=edit)


def _label_form(form: Any) -> dict[str, str]:
    return {key: str(form.get(key) or "") for key in ("name", "tags", "notes")}


def _label_errors(exc: ValidationError | ValueError) -> dict[str, str]:
    """Field -> message, for the in-place form (a ValueError from _apply is about the name)."""
    if isinstance(exc, ValidationError):
        return {str(e["loc"][0]) if e["loc"] else "form": e["msg"].removeprefix("Value error, ") for e in exc.errors()}
    return {"name": str(exc)}


def _patch_from_form(model: type[P], values: dict[str, str]) -> P:
    return model.model_validate({"name": values["name"], "tags": split_tags(values["tags"]), "notes": values["notes"]})


@page_router.post("/runs/{run_id:int}/labels", response_class=HTMLResponse)
async def save_labels(request: Request, run: RunDep, session: SessionDep) -> Response:
    values = _label_form(await request.form())
    try:
        manage.update_run(session, run.id, _patch_from_form(RunPatch, values))
    except (ValidationError, ValueError) as exc:
        session.rollback()
        errors = _label_errors(exc)
        return _labels_block(request, session, run.id, 422, editing=True, label_values=values, label_errors=errors)
    return _labels_block(request, session, run.id, renamed=True)  # the heading's name too (out of band)


@page_router.post("/runs/{run_id:int}/archive", response_class=HTMLResponse)
def archive_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    manage.update_run(session, run.id, RunPatch(archived=not run.archived))
    return _labels_block(request, session, run.id)


@page_router.post("/runs/{run_id:int}/delete", response_class=HTMLResponse)
def delete_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    run_id = run.id
    try:
        outcome = manage.delete_runs(session, get_settings(), [run_id])
    except manage.Refused as exc:
        return _labels_block(request, session, run_id, delete_error=str(exc))
    return Response(status_code=200, headers={"HX-Redirect": f"/?deleted={len(outcome.deleted)}"})


def _sweep_labels_block(request: Request, session: Session, sweep_id: int, code: int = 200, **extra: Any) -> Response:
    sweep = load_sweep(session, sweep_id)
    context = {**_sweep_context(sweep), **extra}
    return templates.TemplateResponse(request, "sweep.html", context, block_name="sweep_labels", status_code=code)


@page_router.get("/sweeps/{sweep_id:int}/labels", response_class=HTMLResponse)
def sweep_labels_fragment(request: Request, sweep: SweepDep, session: SessionDep, edit: bool = False) -> Response:
    return _sweep_labels_block(request, session, sweep.id, editing=edit)


@page_router.post("/sweeps/{sweep_id:int}/labels", response_class=HTMLResponse)
async def save_sweep_labels(request: Request, sweep: SweepDep, session: SessionDep) -> Response:
    values = _label_form(await request.form())
    try:
        manage.update_sweep(session, sweep.id, _patch_from_form(SweepPatch, values))
    except (ValidationError, ValueError) as exc:
        session.rollback()
        errors = _label_errors(exc)
        return _sweep_labels_block(
            request, session, sweep.id, 422, editing=True, label_values=values, label_errors=errors
        )
    return _sweep_labels_block(request, session, sweep.id, renamed=True)


@page_router.post("/sweeps/{sweep_id:int}/archive", response_class=HTMLResponse)
def archive_sweep_from_page(request: Request, sweep: SweepDep, session: SessionDep) -> Response:
    manage.update_sweep(session, sweep.id, SweepPatch(archived=not sweep.archived))
    return _sweep_labels_block(request, session, sweep.id)


@page_router.post("/sweeps/{sweep_id:int}/delete", response_class=HTMLResponse)
def delete_sweep_from_page(sweep: SweepDep, session: SessionDep) -> Response:
    try:
        manage.delete_sweep(session, get_settings(), sweep.id)
    except manage.Refused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Response(status_code=200, headers={"HX-Redirect": "/sweeps"})


@page_router.post("/runs/bulk/{action}", response_class=HTMLResponse)
async def bulk_from_page(request: Request, action: str, session: SessionDep) -> Response:
    """The runs list's bulk buttons: the ticked runs (run_ids) and the list's own filters; answers the list."""
    if action not in BULK_ACTIONS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no bulk action {action!r}; one of {', '.join(BULK_ACTIONS)}")
    form = await request.form()
    ids = [int(str(v)) for v in form.getlist("run_ids") if str(v).isdigit()]
    query = runs_query(
        status_=str(form.get("status") or "") or None,
        method=str(form.get("method") or "") or None,
        name=str(form.get("name") or "") or None,
        sort=str(form.get("sort") or "") or None,
        tag=str(form.get("tag") or "") or None,
        archived=str(form.get("archived") or "") or None,
    )
    message, problem = "", ""
    try:
        if not ids:
            problem = "Tick one or more runs first."
        elif action in ("archive", "restore"):
            manage.set_archived(session, ids, action == "archive")
            message = (
                f"{len(ids)} run{'s' if len(ids) != 1 else ''} {'archived' if action == 'archive' else 'restored'}."
            )
        elif action == "tag":
            tags = split_tags(str(form.get("bulk_tags") or ""))
            if not tags:
                problem = "Type one or more tags to add."
            else:
                manage.tag_runs(session, ids, tags)
                message = f"Tagged {len(ids)} run{'s' if len(ids) != 1 else ''} {', '.join(tags)}."
        elif action == "cancel":
            done = manage.cancel_runs(session, ids)
            message = (
                f"{len(done['cancelled'])} cancelled"
                + (f", {len(done['skipped'])} not active" if done["skipped"] else "")
                + "."
            )
        else:
            outcome = manage.delete_runs(session, get_settings(), ids)
            count = len(outcome.deleted)
            message = f"Deleted {count} run{'s' if count != 1 else ''}, freed {human_bytes(outcome.freed_bytes)}."
    except (manage.Refused, ValueError, run_service.RunNotFound) as exc:
        session.rollback()
        problem = str(exc) if not isinstance(exc, run_service.RunNotFound) else f"runs {exc} do not exist"
    context = {**runs_page_context(session, query), "bulk_message": message, "bulk_problem": problem}
    return templates.TemplateResponse(request, "runs_list.html", context, block_name="runs_table")
