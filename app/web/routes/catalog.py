"""What can be trained: the methods the registry declares, a model's shape read on a worker, and health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import Field
from sqlalchemy import text

from app.web.deps import SessionDep
from app.web.schemas import Health
from runspec import METHODS, AnyMethod
from runspec.base import StrictModel
from tunedeck_jobs.names import INSPECT_MODEL_TASK
from tunedeck_jobs.rpc import WorkerRefused, WorkerUnavailable, call_worker
from tunedeck_state.settings import get_settings
from tunedeck_state.source_checks import check_model_source

api_router = APIRouter(tags=["catalog"])
page_router = APIRouter()


class InspectRequest(StrictModel):
    model: str = Field(..., min_length=1, max_length=500, description="Hub id or local model folder.")
    method: AnyMethod | None = Field(None, description="Also count the parameters this method would train.")


@api_router.post("/models/inspect")
def inspect_model(request: InspectRequest) -> dict[str, Any]:
    """Config, module names and parameter counts of a model, read on a worker without loading weights."""
    check_model_source(request.model)  # a URL, a path outside the data roots, custom code: 422 before any worker
    method = request.method.model_dump(mode="json") if request.method else None
    return call_worker_or_http_error(INSPECT_MODEL_TASK, request.model, method)


def call_worker_or_http_error(task: str, *args: Any) -> dict[str, Any]:
    try:
        return call_worker(task, *args)
    except WorkerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except WorkerRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@api_router.get("/methods")
def list_methods() -> dict[str, Any]:
    """Every fine-tuning method with its parameters (JSON Schema), as the registry declares them."""
    return {
        name: {
            "label": cls.label,
            "summary": cls.summary,
            "is_peft": cls.is_peft,
            "trains": cls.trains,
            "requires_cuda": cls.requires_cuda,
            "schema": cls.model_json_schema(),
        }
        for name, cls in METHODS.items()
    }


@api_router.get("/health", response_model=Health)
def health(session: SessionDep) -> Any:
    session.execute(text("SELECT 1"))
    settings = get_settings()
    broker = "embedded (SQLite)" if settings.uses_embedded_broker else "redis"
    return {"status": "ok", "database": session.get_bind().dialect.name, "broker": broker}
