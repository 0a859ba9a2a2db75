"""Workers: GET /api/workers and the Workers page (an htmx-polled table), from the heartbeat rows."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.services.memory_accuracy import accuracy_by_gpu
from app.web.deps import SessionDep
from app.web.templating import templates
from tunedeck_state import disk
from tunedeck_state import workers as worker_service
from tunedeck_state.models import Run
from tunedeck_state.settings import get_settings

api_router = APIRouter(tags=["workers"])
page_router = APIRouter()


class WorkerOut(BaseModel):
    model_config = {"protected_namespaces": ()}

    name: str
    #: live, or lost (no heartbeat for 3 × TUNEDECK_HEARTBEAT_SECONDS; its running runs are failed after
    #: TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS and retried as their spec allows)
    state: str
    host: str | None
    pid: int
    #: training and/or service
    roles: list[str]
    #: every Celery queue it consumes (its own, memory classes, GPU type: see README "Scaling out")
    queues: list[str]
    started_at: Any
    last_seen: Any
    seconds_since_seen: float
    #: GPU memory it offers one run (the smallest free memory of its GPUs at start); null on a CPU-only worker
    capacity_bytes: int | None
    #: [{"index", "name", "memory_total_bytes", "memory_used_bytes", "memory_free_bytes"}]
    gpus: list[dict[str, Any]]
    gpu_count: int
    #: a test worker declaring a GPU it does not have (TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB)
    fake_gpu: bool
    #: {"cores", "memory_total_bytes", "memory_available_bytes"}
    cpu: dict[str, Any]
    #: torch, transformers, peft, bitsandbytes, ... (null when not installed)
    versions: dict[str, str | None]
    concurrency: int | None
    runs_per_gpu: int
    #: started with --multi-gpu: one run at a time on all its GPUs (runs with training.num_gpus > 1 only)
    multi_gpu: bool = False
    #: runs it is training now: [{"id", "name", "step", "max_steps"}]
    running: list[dict[str, Any]]
    #: a lost worker's runs still marked running (until the heartbeat timeout fails them)
    lost_runs: list[dict[str, Any]]
    #: its TUNEDECK_DATA_DIR, and whether that is the server's own data directory (shared storage: the server reads
    #: the adapters and logs the worker writes there)
    data_dir: str | None
    shared_storage: bool


def _views(session: Session) -> list[dict[str, Any]]:
    return worker_service.describe(session, get_settings().heartbeat_seconds)


@api_router.get("/workers", response_model=list[WorkerOut])
def list_workers(session: SessionDep) -> Any:
    """Every worker that announced itself: live or lost, its GPUs (or CPU cores and RAM), package versions, the
    memory it offers a run and what it is training. A worker that stopped cleanly is not listed."""
    return _views(session)


@api_router.get("/workers/memory-accuracy")
def memory_accuracy(session: SessionDep) -> list[dict[str, Any]]:
    """Per GPU type, measured / estimated memory (torch.cuda.max_memory_reserved over the estimate) of past
    succeeded runs: median, lowest, highest and how many runs."""
    return [vars(found) for found in accuracy_by_gpu(session)]


@page_router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: SessionDep) -> Response:
    settings = get_settings()
    context = {
        "workers": _views(session),
        "storage": disk.data_dir_usage(settings),
        "runs_disk_bytes": session.scalar(select(func.coalesce(func.sum(Run.disk_bytes), 0))),
        "keep_checkpoints": settings.keep_checkpoints,
        "accuracy": accuracy_by_gpu(session),
    }
    return templates.TemplateResponse(request, "workers.html", context)


@page_router.get("/workers/table", response_class=HTMLResponse)
def workers_table(request: Request, session: SessionDep) -> Response:
    return templates.TemplateResponse(request, "workers.html", {"workers": _views(session)}, block_name="workers_table")
