"""Datasets: upload (API and page), register a local file or hub id, list, and preview on a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services import datasets as dataset_service
from app.services import token_lengths
from app.web.deps import DatasetDep, SessionDep, load_dataset
from app.web.schemas import UtcDateTime
from runspec import DatasetSpec
from runspec.base import StrictModel
from runspec.datasets import FORMAT_HELP, DatasetFormat, PromptTemplate, format_columns
from runspec.sources import SourceRefused
from tunedeck_jobs.names import INSPECT_DATASET_TASK, PREVIEW_DATASET_TASK
from tunedeck_jobs.rpc import WorkerRefused, WorkerUnavailable, call_worker
from tunedeck_state import dataset_registry
from tunedeck_state.models import Dataset, Run
from tunedeck_state.settings import get_settings

#: Checking every row of a big file, or tokenizing it for the preview, can take longer than a quick request.
DATASET_RPC_TIMEOUT_SECONDS = 300.0
DEFAULT_PREVIEW_MAX_LENGTH = 512

api_router = APIRouter(tags=["datasets"])
page_router = APIRouter()


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    source: str
    config: str | None
    split: str
    format: str
    column_mapping: dict[str, str] | None
    columns: list[str]
    row_count: int | None
    size_bytes: int | None
    sha256: str | None
    original_filename: str | None
    created_at: UtcDateTime
    #: The run spec's `dataset` section that trains on it.
    spec: dict[str, Any]


class RegisterRequest(StrictModel):
    source: str = Field(..., min_length=1, max_length=500, description="A local file or a hub dataset id.")
    format: DatasetFormat = "alpaca"
    columns: dict[str, str] | None = None
    config: str | None = None
    split: str = "train"
    name: str | None = Field(None, max_length=200)


def _out(dataset: Dataset) -> dict[str, Any]:
    values = {name: getattr(dataset, name) for name in DatasetOut.model_fields if name != "spec"}
    return DatasetOut.model_validate({**values, "spec": _spec(dataset)}).model_dump()


def _spec(dataset: Dataset) -> dict[str, Any]:
    return dataset_service.spec_section(dataset)


def _inspect(spec: DatasetSpec) -> dict[str, Any]:
    return call_worker(INSPECT_DATASET_TASK, spec.model_dump(mode="json"), timeout=DATASET_RPC_TIMEOUT_SECONDS)


def _spec_or_422(**values: Any) -> DatasetSpec:
    try:
        return DatasetSpec.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'dataset'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message) from None


def upload(
    session: Session, stream: BinaryIO, filename: str | None, fmt: str, columns: Any, name: str | None
) -> Dataset:
    """Store, check on a worker, register. A refused file is removed again. Raises HTTPException."""
    settings = get_settings()
    try:
        suffix = dataset_service.upload_suffix(filename)
    except dataset_service.DatasetRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    _spec_or_422(source=f"upload{suffix}", format=fmt, columns=columns)  # refuse a bad format before storing
    try:
        stored = dataset_service.store_upload(stream, suffix, settings.uploads_dir, settings.max_upload_bytes)
    except dataset_service.UploadTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    except dataset_service.DatasetRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    spec = _spec_or_422(source=str(stored.path), format=fmt, columns=columns)
    try:
        facts = _inspect(spec)
    except (WorkerRefused, WorkerUnavailable) as exc:
        dataset_service.discard(stored.path, settings.uploads_dir)
        code = status.HTTP_422_UNPROCESSABLE_CONTENT if isinstance(exc, WorkerRefused) else 503
        reason = str(exc).replace(str(stored.path), dataset_service.display_name(filename))
        raise HTTPException(code, reason) from None
    dataset = dataset_service.keep(
        session,
        name=(name or "").strip() or dataset_service.display_name(filename),
        kind="upload",
        spec=spec,
        columns=facts.get("columns") or [],
        row_count=facts.get("rows"),
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        original_filename=dataset_service.display_name(filename),
    )
    return dataset


# -- API -------------------------------------------------------------------------------------------------


@api_router.post(
    "/datasets",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    max_body_size=get_settings().max_upload_bytes,
)
def upload_dataset(
    session: SessionDep,
    file: Annotated[UploadFile, File(description="A JSON, JSONL, CSV or Parquet file.")],
    format: Annotated[DatasetFormat, Form(description="alpaca, sharegpt or text.")] = "alpaca",
    columns: Annotated[str | None, Form(description="field=column pairs, e.g. instruction=prompt")] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Any:
    """Upload a dataset (multipart). It is stored under a generated name, every row is checked against the
    format on a worker (422 with the reason when it does not fit), and it is registered. 413 past
    TUNEDECK_MAX_UPLOAD_BYTES. Train on it with the returned `spec` as the run's `dataset`."""
    return _out(upload(session, file.file, file.filename, format, columns, name))


@api_router.post("/datasets/register", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def register_dataset(request: RegisterRequest, session: SessionDep) -> Any:
    """Register a local file (inside the data roots) or a hub dataset id, checked on a worker."""
    try:
        resolved = get_settings().source_policy().resolve_dataset(request.source, "source")
    except SourceRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    spec = _spec_or_422(
        source=resolved.location,
        format=request.format,
        columns=request.columns,
        config=request.config,
        split=request.split,
    )
    existing = dataset_registry.find_registered(session, spec)
    if existing is not None:
        return _out(existing)
    try:
        facts = _inspect(spec)
    except WorkerRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except WorkerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    local = resolved.kind == "local"
    path = Path(resolved.location)
    dataset = dataset_service.keep(
        session,
        name=request.name or (path.name if local else request.source),
        kind=resolved.kind,
        spec=spec,
        columns=facts.get("columns") or [],
        row_count=facts.get("rows"),
        size_bytes=path.stat().st_size if local else None,
    )
    return _out(dataset)


@api_router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(session: SessionDep) -> Any:
    """Registered datasets, newest first, with row counts."""
    return [_out(d) for d in dataset_service.list_datasets(session)]


@api_router.get("/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset: DatasetDep) -> Any:
    return _out(dataset)


def preview(
    dataset: Dataset, model: str, template: str | None, max_length: int, rows: int, fmt: str | None = None
) -> dict[str, Any]:
    # Only what the caller chose overrides the stored section: a None must not drop the stored format (a text
    # dataset previewed as alpaca found no instruction column).
    chosen = {key: value for key, value in (("template", template), ("format", fmt)) if value is not None}
    spec = _spec_or_422(**{**_spec(dataset), **chosen})
    answer = call_worker(
        PREVIEW_DATASET_TASK, spec.model_dump(mode="json"), model, max_length, rows, timeout=DATASET_RPC_TIMEOUT_SECONDS
    )
    token_lengths.remember_preview(spec, model, answer)  # the memory estimate's length for runs on it
    return answer


@api_router.get("/datasets/{dataset_id}/preview")
def preview_dataset(
    dataset_id: int,
    session: SessionDep,
    model: Annotated[str, Query(min_length=1, max_length=500, description="Whose tokenizer (hub id or folder).")],
    template: Annotated[PromptTemplate | None, Query(description="course or chat (default: course).")] = None,
    max_length: Annotated[int, Query(ge=8, le=131_072)] = DEFAULT_PREVIEW_MAX_LENGTH,
    rows: Annotated[int, Query(ge=1, le=50)] = 5,
) -> dict[str, Any]:
    """The first rows, each rendered as training sees it (`samples[].segments`: text runs, `learned` false for
    the masked prompt), and token lengths against max_length (`lengths.truncated`, `histogram`)."""
    dataset = load_dataset(session, dataset_id)
    _check_model(model)
    try:
        answer = preview(dataset, model, template, max_length, rows)
    except WorkerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except WorkerRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    answer.pop("ok", None)
    return {"dataset_id": dataset.id, **answer}


def _check_model(model: str) -> None:
    try:
        get_settings().source_policy().resolve_model(model, "model")
    except SourceRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


# -- pages -----------------------------------------------------------------------------------------------


def _templates() -> Any:
    from app.web.templating import templates

    return templates


def _list_context(session: Session, error: str | None = None, values: dict[str, Any] | None = None) -> dict:
    return {
        "datasets": dataset_service.list_datasets(session),
        "formats": FORMAT_HELP,
        "error": error,
        "values": values or {},
        "max_upload_bytes": get_settings().max_upload_bytes,
    }


@page_router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep) -> Response:
    return _templates().TemplateResponse(request, "datasets.html", _list_context(session))


@page_router.post("/datasets", response_class=HTMLResponse, max_body_size=get_settings().max_upload_bytes)
def upload_from_page(
    request: Request,
    session: SessionDep,
    file: Annotated[UploadFile, File()],
    format: Annotated[str, Form()] = "alpaca",
    columns: Annotated[str | None, Form()] = None,
    name: Annotated[str | None, Form()] = None,
) -> Response:
    try:
        dataset = upload(session, file.file, file.filename, format, columns, name)
    except HTTPException as exc:
        context = _list_context(session, str(exc.detail), {"format": format, "columns": columns, "name": name})
        return _templates().TemplateResponse(request, "datasets.html", context, status_code=exc.status_code)
    return RedirectResponse(f"/datasets/{dataset.id}", status_code=status.HTTP_303_SEE_OTHER)


def _default_model(session: Session, dataset: Dataset) -> str:
    """The model of the newest run on this dataset, else of the newest run, else the demo model."""
    used = dataset_service.runs_using(session, dataset, limit=1)
    if used:
        return used[0].model
    newest = session.scalars(select(Run.model).order_by(Run.id.desc()).limit(1)).first()
    if newest:
        return newest
    from app.services.demo import DEMO_MODEL_DIRNAME

    return str(get_settings().demo_dir / DEMO_MODEL_DIRNAME)


@page_router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset: DatasetDep, session: SessionDep) -> Response:
    context = {
        "dataset": dataset,
        "spec": _spec(dataset),
        "columns_text": format_columns(dataset.column_mapping),
        "runs": dataset_service.runs_using(session, dataset),
        "form": {"model": _default_model(session, dataset), "template": "course", "max_length": 512, "rows": 5},
        "preview": None,
        "error": None,
    }
    return _templates().TemplateResponse(request, "dataset_detail.html", context)


@page_router.get("/datasets/{dataset_id}/preview", response_class=HTMLResponse)
def dataset_preview_fragment(
    request: Request,
    dataset_id: int,
    session: SessionDep,
    model: str = "",
    template: str = "course",
    max_length: int = DEFAULT_PREVIEW_MAX_LENGTH,
    rows: int = 5,
) -> Response:
    dataset = load_dataset(session, dataset_id)
    form = {"model": model, "template": template, "max_length": max_length, "rows": rows}
    answer: dict[str, Any] | None = None
    error: str | None = None
    code = status.HTTP_200_OK
    try:
        if not model.strip():
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "model: give the model whose tokenizer to use")
        if template not in ("course", "chat"):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "template: choose course or chat")
        if not 8 <= max_length <= 131_072 or not 1 <= rows <= 50:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "max_length: 8 to 131072; rows: 1 to 50")
        _check_model(model)
        answer = preview(dataset, model.strip(), template, max_length, rows)
    except HTTPException as exc:
        error, code = str(exc.detail), exc.status_code
    except WorkerRefused as exc:
        error, code = str(exc), status.HTTP_422_UNPROCESSABLE_CONTENT
    except WorkerUnavailable as exc:
        error, code = str(exc), status.HTTP_503_SERVICE_UNAVAILABLE
    context = {"dataset": dataset, "form": form, "preview": answer, "error": error}
    return _templates().TemplateResponse(
        request, "dataset_detail.html", context, status_code=code, block_name="preview"
    )
