"""Errors that come from a request's values but surface in the database layer: answered 422, never 500.

A path or query number larger than the database's integers (`/api/runs/99999999999999999999999`) makes
SQLite's driver raise OverflowError and PostgreSQL's a DataError. Every endpoint taking an id would need its
own bound; these handlers are the net under all of them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

SQLITE_OVERFLOW = "too large to convert to SQLite INTEGER"
MESSAGE = "a number in the request is out of range (ids and counts must fit in a 64-bit integer)"


async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, OverflowError) and SQLITE_OVERFLOW not in str(exc):
        raise exc  # some other overflow: a bug of ours, answered 500 by the server error handler
    return JSONResponse({"detail": MESSAGE}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def install(app: FastAPI) -> None:
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)
