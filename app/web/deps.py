"""The routes' dependencies: the request's database session and the records named by a path id (404 otherwise).

A dependency runs before FastAPI validates the route's own parameters, so `RunDep` (and the like) answers 404 for
a missing run even when the rest of the request is invalid. Routes with a body, a form or other validated parameters
call `load_run` in their body instead, which keeps the 422 first, as it always was.

Authentication is not a dependency: `app/web/security.py`'s middleware checks every request before routing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, status
from sqlalchemy.orm import Session

from app.services import datasets as dataset_service
from app.services import sweeps as sweep_service
from tunedeck_state import runs as run_service
from tunedeck_state.db import get_session
from tunedeck_state.models import Dataset, Run, Sweep

SessionDep = Annotated[Session, Depends(get_session)]
T = TypeVar("T")


def _found(load: Callable[[Session, int], T], missing: type[LookupError], kind: str, session: Session, key: int) -> T:
    try:
        return load(session, key)
    except missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{kind} {key} does not exist") from None


def load_run(session: Session, run_id: int) -> Run:
    return _found(run_service.get_run, run_service.RunNotFound, "run", session, run_id)


def load_sweep(session: Session, sweep_id: int) -> Sweep:
    return _found(sweep_service.get_sweep, sweep_service.SweepNotFound, "sweep", session, sweep_id)


def load_dataset(session: Session, dataset_id: int) -> Dataset:
    return _found(dataset_service.get_dataset, dataset_service.DatasetNotFound, "dataset", session, dataset_id)


def run_from_path(run_id: int, session: SessionDep) -> Run:
    return load_run(session, run_id)


def sweep_from_path(sweep_id: int, session: SessionDep) -> Sweep:
    return load_sweep(session, sweep_id)


def dataset_from_path(dataset_id: int, session: SessionDep) -> Dataset:
    return load_dataset(session, dataset_id)


RunDep = Annotated[Run, Depends(run_from_path)]
SweepDep = Annotated[Sweep, Depends(sweep_from_path)]
DatasetDep = Annotated[Dataset, Depends(dataset_from_path)]
