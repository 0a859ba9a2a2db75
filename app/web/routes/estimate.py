"""The memory estimate: `POST /api/estimate` (JSON) and the new-run form's live estimate (an htmx block)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from app.services.estimates import FORM_TIMEOUT_SECONDS, EstimateUnavailable, estimate_spec
from app.web.deps import RunDep, SessionDep
from app.web.forms import FormConflict, errors_by_field, fields_for, spec_from_form
from app.web.templating import templates
from runspec import METHODS, DatasetSpec, RunSpec, TrainingSpec
from runspec.memory.measured import compare
from runspec.memory.results import Estimate
from runspec.memory.units import GIB

api_router = APIRouter(tags=["estimate"])
page_router = APIRouter()

#: Components drawn in the bar, in this order (the trainable parameters are part of the weights).
BAR_ORDER = (
    "weights",
    "optimizer",
    "gradients",
    "optimizer_scratch",
    "mixed_precision",
    "activations",
    "prompt",
    "logits",
    "overhead",
)


@api_router.post("/estimate")
def estimate(
    spec: RunSpec,
    session: SessionDep,
    device_memory_bytes: Annotated[
        int | None, Query(ge=1, description="Compare with a device of this size. Default: what a worker reported.")
    ] = None,
    device: Annotated[
        Literal["cuda", "cpu"] | None,
        Query(description="Estimate for a GPU (cuda) or a CPU. Default: the kind of worker that answers."),
    ] = None,
) -> dict[str, Any]:
    """The memory a run spec (the body of POST /api/runs) needs, in bytes per component with the formula behind
    each line, its peak, and whether it fits the device. 422 with the reason when it cannot be estimated."""
    try:
        result = estimate_spec(spec, device=device, device_memory_bytes=device_memory_bytes, session=session)
    except EstimateUnavailable as exc:
        code = status.HTTP_503_SERVICE_UNAVAILABLE if exc.retry_later else status.HTTP_422_UNPROCESSABLE_CONTENT
        raise HTTPException(code, f"no estimate: {exc.reason}") from None
    return result.to_dict()


def form_values(form: dict[str, Any]) -> dict[str, Any]:
    """The new-run form's fields as a spec dict (the same parsing as launching from the form)."""
    method_cls = METHODS.get(str(form.get("method.name", "")))
    lists: set[str] = set()
    bools: set[str] = set()
    for model, prefix in ((method_cls, "method"), (DatasetSpec, "dataset"), (TrainingSpec, "training")):
        if model is not None:
            for field in fields_for(model, prefix, skip=frozenset()):
                if field.kind == "list":
                    lists.add(field.path)
                elif field.kind == "checkbox":
                    bools.add(field.path)
    return spec_from_form(form, frozenset(lists), frozenset(bools))


def bar(estimate: Estimate) -> list[dict[str, Any]]:
    """The stacked bar's segments: what is resident at the peak, per component, as a share of the scale."""
    lines = {line.key: line for line in estimate.lines}
    scale = max(estimate.total_peak_bytes, estimate.device_memory_bytes or 0) or 1
    segments = []
    for key in BAR_ORDER:
        line = lines.get(key)
        if line is None or line.peak_bytes <= 0:
            continue
        segments.append(
            {
                "key": key,
                "label": line.label,
                "bytes": line.peak_bytes,
                "percent": 100.0 * line.peak_bytes / scale,
                "formula": line.formula,
            }
        )
    return segments


class EstimateView(BaseModel):
    """What the estimate block shows."""

    estimate: dict[str, Any] | None = None
    segments: list[dict[str, Any]] = []
    device_percent: float | None = None
    reason: str | None = None


def _view(estimate: Estimate) -> EstimateView:
    scale = max(estimate.total_peak_bytes, estimate.device_memory_bytes or 0) or 1
    return EstimateView(
        estimate=estimate.to_dict(),
        segments=bar(estimate),
        device_percent=100.0 * estimate.device_memory_bytes / scale if estimate.device_memory_bytes else None,
    )


@page_router.post("/runs/new/estimate", response_class=HTMLResponse)
async def estimate_block(request: Request, session: SessionDep) -> Response:
    """The form's estimate result (the `estimate` block), recomputed from whatever the form holds now, its device
    controls included (never an error page)."""
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    device = form.get("_estimate.device") or None
    gib = (form.get("_estimate.memory_gib") or "").strip()
    context: dict[str, Any] = {}
    try:
        values = form_values(form)
    except FormConflict as exc:
        context["estimate_view"] = EstimateView(reason=f"the form is not complete yet ({exc.field}: {exc})")
        return templates.TemplateResponse(request, "run_new.html", context, block_name="estimate")
    values.setdefault("name", "estimate")  # a name is not needed to estimate
    try:
        number = float(gib) if gib else None
        if number is not None and not (math.isfinite(number) and number > 0):  # inf would overflow the int
            raise ValueError
        memory = int(number * GIB) if number is not None else None
        if memory is not None and memory <= 0:
            raise ValueError
    except ValueError:
        context["estimate_view"] = EstimateView(reason="device memory: give a positive number of GiB")
        return templates.TemplateResponse(request, "run_new.html", context, block_name="estimate")
    if device not in (None, "cuda", "cpu"):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown device {device!r}")
    try:
        spec = RunSpec.model_validate(values)
        # In a thread: the estimate waits on a worker, which must not stall the event loop (every other request).
        result = await run_in_threadpool(
            estimate_spec,
            spec,
            device=device,
            device_memory_bytes=memory,
            timeout=FORM_TIMEOUT_SECONDS,
            session=session,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{field}: {message}" for field, message in errors_by_field(exc).items())
        context["estimate_view"] = EstimateView(reason=f"the form is not complete yet ({problems})")
    except EstimateUnavailable as exc:
        context["estimate_view"] = EstimateView(reason=exc.reason)
    else:
        context["estimate_view"] = _view(result)
    return templates.TemplateResponse(request, "run_new.html", context, block_name="estimate")


templates.env.globals["memory_comparison"] = compare


@page_router.get("/runs/{run_id}/memory", response_class=HTMLResponse)
def run_memory(request: Request, run: RunDep) -> Response:
    """The run page's memory block: its estimate beside what the worker measured."""
    return templates.TemplateResponse(request, "run_detail.html", {"run": run}, block_name="memory")
