"""Build the FastAPI application."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError

from app.web import prometheus, routes, security
from app.web.routes import exports as exports_web
from app.web.schemas import ERROR_RESPONSES
from app.web.templating import STATIC_DIR
from runspec import METHODS
from tunedeck_jobs import dispatch
from tunedeck_state import __version__, disk
from tunedeck_state.settings import get_settings
from tunedeck_state.source_checks import SpecRefused
from tunedeck_state.storage import server_storage_id

log = logging.getLogger(__name__)


def _dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path"}:
        parts = parts[1:]
    # A discriminated union puts the tag in the path (method.lora.r): users think of it as method.r; an error of
    # the method as a whole (method.lora, from a validator across its fields) is an error of "method".
    if len(parts) >= 2 and parts[0] == "method" and parts[1] in METHODS:
        parts = [parts[0], *parts[2:]]
    return ".".join(parts) or "body"


#: Fields whose value an error never echoes (`input`), whatever its size.
SECRET_FIELD_WORDS = ("token", "secret", "password")
#: The longest string an error echoes back as its `input`; longer ones, objects and lists are left out.
MAX_ECHOED_CHARS = 200


def _echoable(field: str, value: Any) -> bool:
    """Whether a 422 may carry the offending value back: never a secret (a hub token over its length limit must not
    come back in the answer, or in a proxy's log), never an object or list (a body nested 900 deep would be
    walked again to encode it), never a long string."""
    if any(word in part.lower() for part in field.split(".") for word in SECRET_FIELD_WORDS):
        return False
    if isinstance(value, str):
        return len(value) <= MAX_ECHOED_CHARS
    return value is None or isinstance(value, bool | int | float)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each error's field as a dotted spec path, plus one readable summary line."""
    errors = []
    for error in exc.errors():
        error = {k: v for k, v in error.items() if k != "url"}
        error["field"] = _dotted(error.get("loc", ()))
        if "input" in error and not _echoable(error["field"], error["input"]):
            del error["input"]
        errors.append(error)
    summary = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:10])
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content=_json_safe(jsonable_encoder({"detail": errors, "message": summary}, custom_encoder={Exception: str})),
    )


def _json_safe(value: Any) -> Any:
    """NaN and infinities (which JSON cannot carry) as strings: an error about `NaN` must not become a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def _spec_refused(request: Request, exc: SpecRefused) -> JSONResponse:
    """A spec that validates but names a source tunedeck will not read: the same 422 shape, field included."""
    return await _validation_error(request, RequestValidationError(exc.as_validation_errors()))


async def _id_out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """An id too large for the database's integer column names nothing that exists: 404, not 500."""
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": "no such id (out of range)"})


#: How often the web server looks for runs whose worker stopped beating (one indexed SELECT).
REAP_INTERVAL_SECONDS = 1.0


@asynccontextmanager
async def _reap_lost_runs(app: FastAPI) -> AsyncIterator[None]:
    """Fail (and maybe retry) runs whose worker died, even while no worker is left to notice. Reading runs has no
    side effects: this thread does it. Once, in another thread: measure the finished runs stored before disk_bytes
    existed (tunedeck_state/disk.py)."""
    stop = threading.Event()
    threading.Thread(
        target=disk.backfill_disk_bytes,
        args=(get_settings(), lambda exc: log.warning("measuring the runs' folders failed: %s", exc)),
        name="disk-backfill",
        daemon=True,
    ).start()

    def loop() -> None:
        while not stop.wait(REAP_INTERVAL_SECONDS):
            dispatch.reap_lost_runs(min_interval=0)

    thread = threading.Thread(target=loop, name="lost-run-reaper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def create_app() -> FastAPI:
    app = FastAPI(
        lifespan=_reap_lost_runs,
        title="tunedeck",
        version=__version__,
        description="Launch parameter-efficient fine-tunes of causal language models, watch them, compare them.",
        max_body_size=get_settings().max_request_bytes,  # 413 above; an upload route sets its own
        responses=ERROR_RESPONSES,  # every error answer, declared with its shape (app/web/schemas.py)
    )
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(SpecRefused, _spec_refused)  # type: ignore[arg-type]
    # SQLite raises OverflowError and PostgreSQL a DataError for an integer id beyond 64/32 bits.
    app.add_exception_handler(OverflowError, _id_out_of_range)
    app.add_exception_handler(DataError, _id_out_of_range)
    security.install(app)  # host check, cross-site refusal, token + login (app/web/security.py)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(routes.api_router)
    app.include_router(routes.page_router)
    app.include_router(prometheus.router)
    exports_web.register_template_helpers()
    server_storage_id()  # the data directory's identity, which workers report back (tunedeck_state/storage.py)
    return app
