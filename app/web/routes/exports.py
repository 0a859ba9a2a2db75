"""Download a run's adapter, full model or merged model as a zip (with a model card), or push it to the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from pydantic import Field, SecretStr, ValidationError

from app.services import exports as export_service
from app.web.deps import SessionDep, load_run
from runspec.base import StrictModel
from tunedeck_state.models import Run
from tunedeck_state.settings import get_settings

api_router = APIRouter(tags=["exports"])
page_router = APIRouter()
KindParam = Literal["adapter", "model", "merged"]


def _folder_or_409(run: Run, kind: KindParam) -> tuple[Path, Path]:
    runs_dir = get_settings().runs_dir
    try:
        folder = export_service.export_folder(runs_dir, run, kind)
    except export_service.ExportRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return folder, export_service.run_dir(runs_dir, run)


@api_router.get(
    "/runs/{run_id}/export/{kind}",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, 409: {"description": "not available for this run"}},
)
def download_export(run_id: int, kind: KindParam, session: SessionDep) -> Any:
    """A zip of the run's `adapter` (PEFT: adapter_config.json, adapter_model.safetensors, tokenizer), its
    full `model` (full fine-tuning), or its `merged` model (after POST /api/runs/{id}/merge), with a generated
    model card (README.md). 409 with the reason when the run has no such result."""
    run = load_run(session, run_id)
    folder, base = _folder_or_409(run, kind)
    # Built once per result (concurrent requests wait for the one build) and streamed from the run's folder.
    target = export_service.cached_zip(folder, base, kind, export_service.model_card(run, kind))
    return FileResponse(target, media_type="application/zip", filename=export_service.zip_name(run, kind))


@api_router.get(
    "/runs/{run_id}/model-card",
    # Not response_class=PlainTextResponse: that would declare the JSON error answers as text/plain too.
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}, "description": "the card"}},
)
def model_card(run_id: int, session: SessionDep, kind: KindParam = "adapter") -> Any:
    """The README.md an export of this kind carries (markdown)."""
    run = load_run(session, run_id)
    _folder_or_409(run, kind)
    return PlainTextResponse(export_service.model_card(run, kind), media_type="text/markdown; charset=utf-8")


class PushRequest(StrictModel):
    repo_id: str = Field(
        ..., min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="org/name on the hub."
    )
    token: SecretStr = Field(
        ..., min_length=1, max_length=500, description="A hub write token, used for this push only and not stored."
    )
    kind: KindParam = Field("adapter", description="adapter, model (full runs) or merged (after a merge).")
    private: bool = Field(True, description="Create the repository as private (when it does not exist yet).")
    commit_message: str = Field("Upload from tunedeck", min_length=1, max_length=200)


class PushOut(StrictModel):
    repo_id: str
    commit_url: str
    files: int


def push(run: Run, request: PushRequest) -> export_service.PushResult:
    folder, base = _folder_or_409(run, request.kind)
    try:
        return export_service.push_to_hub(
            folder,
            base,
            export_service.model_card(run, request.kind),
            repo_id=request.repo_id,
            token=request.token.get_secret_value(),
            private=request.private,
            endpoint=get_settings().hub_endpoint,
            commit_message=request.commit_message,
        )
    except export_service.HubPushFailed as exc:
        code = 422 if exc.status_code in (401, 403) else status.HTTP_502_BAD_GATEWAY
        raise HTTPException(code, str(exc)) from None


@api_router.post("/runs/{run_id}/push", response_model=PushOut)
def push_to_hub(run_id: int, request: PushRequest, session: SessionDep) -> Any:
    """Push the export to the Hugging Face hub (created if missing). The token is used for this one push and
    never stored or logged. 422 when the hub refuses the token, 502 for other hub errors."""
    run = load_run(session, run_id)
    result = push(run, request)
    return {"repo_id": result.repo_id, "commit_url": result.commit_url, "files": result.files}


# -- the run page's export panel -------------------------------------------------------------------------


def _templates() -> Any:
    from app.web.templating import templates

    return templates


@page_router.post("/runs/{run_id}/push", response_class=HTMLResponse)
def push_from_page(
    request: Request,
    run_id: int,
    session: SessionDep,
    repo_id: Annotated[str, Form()],
    token: Annotated[str, Form()],
    kind: Annotated[str, Form()] = "adapter",
    private: Annotated[str | None, Form()] = None,
) -> Response:
    run = load_run(session, run_id)
    message, ok, code = "", False, status.HTTP_200_OK
    try:
        push_request = PushRequest.model_validate(
            {"repo_id": repo_id.strip(), "token": token.strip(), "kind": kind, "private": private is not None}
        )
        result = push(run, push_request)
        message, ok = f"pushed {result.files} files: {result.commit_url}", True
    except HTTPException as exc:
        message, code = str(exc.detail), exc.status_code
    except ValidationError as exc:  # name the field, never echo the token
        errors = exc.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors) or "invalid input"
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
    return _templates().TemplateResponse(
        request,
        "_exports.html",
        {"run": run, "push_message": message, "push_ok": ok},
        status_code=code if code < 500 else status.HTTP_422_UNPROCESSABLE_CONTENT,
        block_name="push_result",
    )


def register_template_helpers() -> None:
    env = _templates().env
    env.globals["export_kinds"] = export_service.available_kinds
