"""The new-run form: its fields per method, and the submit that stores a run (or answers the form with its errors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from app.services.demo import DEMO_DATASET, DEMO_MODEL_DIRNAME
from app.services.submit import submit_run
from app.web.deps import SessionDep, load_run
from app.web.forms import FormConflict, errors_by_field, fields_for, run_form_layout, shown_values, spec_from_form
from app.web.presets import PRESETS, apply_preset
from app.web.templating import is_htmx, templates
from runspec import METHODS, DatasetSpec, PlacementSpec, RunSpec, TrainingSpec
from runspec.spec import DEFAULT_DATASET, DEFAULT_MODEL
from tunedeck_state.settings import get_settings
from tunedeck_state.source_checks import SpecRefused

api_router = APIRouter()
page_router = APIRouter()


def _form_context(values: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    values = shown_values(values)
    errors = errors or {}
    method_values = values.get("method") or {}
    method_name = method_values.get("name", "lora")
    method_cls = METHODS.get(method_name, METHODS["lora"])
    return {
        "values": values,
        "errors": errors,
        "methods": METHODS,
        "method_name": method_cls.model_fields["name"].default,
        "layout": run_form_layout(values, errors, method_cls, DatasetSpec, TrainingSpec, PlacementSpec),
        "demo_sources": _demo_sources(),
        "presets": PRESETS,
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


def _default_values(demo: dict[str, str]) -> dict[str, Any]:
    """The hub defaults, or with `serve --demo` (once prepared) the demo's model and data."""
    return {
        "name": "",
        "model": demo.get("model", DEFAULT_MODEL),
        "dataset": {"source": demo.get("dataset", DEFAULT_DATASET)},
        "method": {"name": "lora"},
    }


@page_router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(
    request: Request,
    session: SessionDep,
    clone: int | None = None,
    dataset: int | None = None,
    preset: str | None = None,
) -> Response:
    demo = _demo_sources() if get_settings().demo else {}
    values = _default_values(demo)
    if clone is not None:  # "Clone run" on a run's page, or "start from run #N" here
        source = load_run(session, clone)
        values = {**source.spec, "name": f"{source.name}-copy"}
    if preset is not None:
        if preset not in PRESETS:
            known = ", ".join(PRESETS)
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no preset {preset!r}; the presets are {known}")
        values = apply_preset(values, PRESETS[preset], keep_model="model" in demo)
    if dataset is not None:  # "Train on this" from a dataset's page
        from app.services import datasets as dataset_service

        try:
            values["dataset"] = dataset_service.spec_section(dataset_service.get_dataset(session, dataset))
        except dataset_service.DatasetNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset} does not exist") from None
    return templates.TemplateResponse(request, "run_new.html", _form_context(values))


@page_router.get("/runs/new/method", response_class=HTMLResponse)
def method_fields(request: Request) -> Response:
    name = request.query_params.get("method.name", "lora")
    if name not in METHODS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown method {name!r}")
    # The switch swaps the method's block (its main fields and its details), so only the method's values count.
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
        block_name="form" if is_htmx(request) else None,
    )


@page_router.post("/runs", response_class=HTMLResponse)
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
    try:
        values = spec_from_form(dict(form), frozenset(list_fields), frozenset(bool_fields))
    except FormConflict as exc:
        return _refused_form(request, {}, {exc.field: str(exc)})
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
    if is_htmx(request):
        return Response(status_code=status.HTTP_201_CREATED, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


# -- one run ---------------------------------------------------------------------------------------------
