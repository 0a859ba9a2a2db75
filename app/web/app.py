"""Build the FastAPI application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.web import api, pages

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def _dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path"}:
        parts = parts[1:]
    # A discriminated union puts the tag in the path (method.lora.r): users think of it as method.r.
    if len(parts) > 2 and parts[0] == "method":
        parts = [parts[0], *parts[2:]]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each error's field as a dotted spec path, plus one readable summary line."""
    errors = []
    for error in exc.errors():
        error = {k: v for k, v in error.items() if k != "url"}
        error["field"] = _dotted(error.get("loc", ()))
        errors.append(error)
    summary = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:10])
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content=jsonable_encoder({"detail": errors, "message": summary}, custom_encoder={Exception: str}),
    )


def create_app() -> FastAPI:
    app = FastAPI(
        title="tunedeck",
        version=__version__,
        description="Launch parameter-efficient fine-tunes of causal language models, watch them, compare them.",
    )
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
