"""Inference with a finished run (the course's "模型推理"): generate through the API or the run page's
"Try it" box, and merge a LoRA-family adapter into its base. A worker does the torch work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.services import inference as inference_service
from app.web.deps import RunDep, SessionDep, load_run
from app.web.templating import templates
from runspec.inference import GenerateRequest
from tunedeck_jobs.names import GENERATE_TASK
from tunedeck_jobs.rpc import WorkerRefused, WorkerUnavailable, call_worker
from tunedeck_state import merges
from tunedeck_state.models import Run
from tunedeck_state.settings import get_settings

api_router = APIRouter(tags=["inference"])
page_router = APIRouter()


class CompletionOut(BaseModel):
    #: The prompt as the model saw it (the training template filled in).
    prompt: str
    #: Only the generated continuation, without the prompt and the end-of-sequence token.
    completion: str
    prompt_tokens: int
    completion_tokens: int
    #: "stop": the model ended its answer; "length": max_new_tokens cut it.
    finish_reason: str


class GenerateResponse(BaseModel):
    run_id: int
    #: run (the run's adapter on its base, or its fully fine-tuned model), base or merged.
    variant: str
    #: What was loaded: adapter, full, base or merged.
    model_kind: str
    device: str
    #: Whether the worker had the model loaded already.
    cached: bool
    load_seconds: float
    generate_seconds: float
    completions: list[CompletionOut]


class MergeOut(BaseModel):
    run_id: int
    #: queued, running, succeeded or failed
    status: str
    merged_dir: str | None = None
    error: str | None = None
    total_params: int | None = None
    base_params: int | None = None
    requested_at: str | None = None
    finished_at: str | None = None


def _generate(session: Session, run: Run, request: GenerateRequest) -> dict[str, Any]:
    """Check the run can answer (409 with the reason), then have a service worker generate."""
    try:
        merges.generation_source(run, request.variant)
    except merges.NotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    run_id = run.id
    session.rollback()  # hold no transaction open while the worker loads and generates
    try:
        return call_worker(
            GENERATE_TASK,
            run_id,
            request.variant,
            [p.model_dump() for p in request.prompts],
            request.settings().model_dump(),
            timeout=get_settings().generate_timeout_seconds,
        )
    except WorkerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except WorkerRefused as exc:
        # The request itself was valid: what the worker refuses is the run's state or its saved files.
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


def _merge_out(run: Run) -> dict[str, Any]:
    state = merges.merge_state(run)
    return {
        "run_id": run.id,
        "status": state.get("status", "none"),
        **{k: state.get(k) for k in MergeOut.model_fields if k not in ("run_id", "status")},
    }


@api_router.post("/runs/{run_id}/generate", response_model=GenerateResponse)
def generate(run_id: int, request: GenerateRequest, session: SessionDep) -> Any:
    """Completions from the run's model (its adapter on the base, or its full model) with the training
    prompt template; `base: true` answers with the base model alone, `merged: true` with the merged one.
    409 when the run has no trained model (queued, running, failed) or no merged model yet."""
    return _generate(session, load_run(session, run_id), request)


@api_router.post("/runs/{run_id}/merge", response_model=MergeOut, status_code=status.HTTP_202_ACCEPTED)
def merge(run: RunDep, session: SessionDep, response: Response) -> Any:
    """Merge a LoRA-family adapter into its base on a worker (`merge_and_unload`), saved with safetensors and
    the tokenizer to `<run dir>/merged`. 202 while queued or running (poll `GET` on this path); 200 when the
    merged model already exists. 409 for runs that cannot be merged, with the reason."""
    try:
        run = inference_service.submit_merge(session, run.id)
    except merges.NotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if merges.merge_state(run).get("status") == "succeeded":
        response.status_code = status.HTTP_200_OK
    return _merge_out(run)


@api_router.get("/runs/{run_id}/merge", response_model=MergeOut)
def merge_status(run: RunDep) -> Any:
    """The state of the run's merge: none, queued, running, succeeded (with merged_dir) or failed (with error)."""
    return _merge_out(run)


# -- the run page's "Try it" and merge blocks ---------------------------------------------------------------


def _block(request: Request, run: Run, block: str, status_code: int = 200, **extra: Any) -> Response:
    context = {
        "run": run,
        "inference": inference_service.page_context(run),
        **extra,
    }
    return templates.TemplateResponse(request, "run_detail.html", context, block_name=block, status_code=status_code)


def _request_from_form(form: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    defaults = inference_service.form_defaults()
    values = {**defaults, **{k: v for k, v in form.items() if k in defaults}}
    values["do_sample"] = "do_sample" in form
    body: dict[str, Any] = {
        "prompts": [{"instruction": str(values["instruction"]).strip(), "input": str(values["input"]).strip()}],
        "do_sample": values["do_sample"],
        "base": values["variant"] == "base",
        "merged": values["variant"] == "merged",
    }
    for name in ("max_new_tokens", "temperature", "top_p", "seed"):
        if str(values[name]).strip() != "":
            body[name] = str(values[name]).strip()
    return values, body


def _form_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = loc[-1] if loc and loc[0] == "prompts" else (loc[0] if loc else "instruction")
        name = "variant" if name in ("base", "merged") else name
        message = str(error["msg"]).removeprefix("Value error, ")
        errors.setdefault(name, message)
    return errors


@page_router.get("/runs/{run_id}/try", response_class=HTMLResponse)
def try_it_block(request: Request, run: RunDep) -> Response:
    return _block(request, run, "try_it")


@page_router.post("/runs/{run_id}/try", response_class=HTMLResponse)
async def try_it(request: Request, run: RunDep, session: SessionDep) -> Response:
    values, body = _request_from_form(dict(await request.form()))
    try:
        generate_request = GenerateRequest.model_validate(body)
    except ValidationError as exc:
        return _block(
            request,
            run,
            "try_it",
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            try_values=values,
            try_errors=_form_errors(exc),
        )
    try:
        # In a thread: generation waits on a worker, which must not stall the event loop (every other request).
        result = await run_in_threadpool(_generate, session, run, generate_request)
    except HTTPException as exc:
        return _block(request, run, "try_it", exc.status_code, try_values=values, try_errors={"form": exc.detail})
    return _block(request, run, "try_it", try_values=values, try_result=result)


@page_router.get("/runs/{run_id}/merge", response_class=HTMLResponse)
def merge_block(request: Request, run: RunDep) -> Response:
    return _block(request, run, "merge", merge_oob=True)


@page_router.post("/runs/{run_id}/merge", response_class=HTMLResponse)
def merge_from_page(request: Request, run: RunDep, session: SessionDep) -> Response:
    run_id = run.id
    try:
        run = inference_service.submit_merge(session, run_id)
    except merges.NotReady as exc:
        return _block(request, load_run(session, run_id), "merge", status.HTTP_409_CONFLICT, merge_error=str(exc))
    return _block(request, run, "merge", merge_oob=True)
