"""The routes' dependencies: the request's database session and the records named by a path id (404 otherwise).

A dependency runs before FastAPI validates the route's own parameters, so `RunDep` (and the like) answers 404 for
a missing run even when the rest of the request is invalid. Routes with a body, a form or other validated parameters
call `load_run` in their body instead, which keeps the 422 first, as it always was.

Authentication is not a dependency: `app/web/security.py`'s middleware checks every request before routing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from sqlalchemy.orm import Session

from app.services import datasets as dataset_service
from app.services import sweeps as sweep_service
from tunedeck_state import runs as run_service
from tunedeck_state.db import get_session
from tunedeck_state.models import Dataset, Run, Sweep

SessionDep = Annotated[Session, Depends(get_session)]


def load_run(session: Session, run_id: int) -> Run:
    try:
        return run_service.get_run(session, run_id)
    except run_service.RunNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} does not exist") from None


def run_from_path(run_id: int, session: SessionDep) -> Run:
    return load_run(session, run_id)


RunDep = Annotated[Run, Depends(run_from_path)]


def load_sweep(session: Session, sweep_id: int) -> Sweep:
    try:
        return sweep_service.get_sweep(session, sweep_id)
    except sweep_service.SweepNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} does not exist") from None


def sweep_from_path(sweep_id: int, session: SessionDep) -> Sweep:
    return load_sweep(session, sweep_id)


SweepDep = Annotated[Sweep, Depends(sweep_from_path)]


def load_dataset(session: Session, dataset_id: int) -> Dataset:
    try:
        return dataset_service.get_dataset(session, dataset_id)
    except dataset_service.DatasetNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} does not exist") from None


def dataset_from_path(dataset_id: int, session: SessionDep) -> Dataset:
    return load_dataset(session, dataset_id)


DatasetDep = Annotated[Dataset, Depends(dataset_from_path)]
