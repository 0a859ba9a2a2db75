"""Datasets: uploads stored under generated names, local files and hub ids registered for reuse.

A registered dataset is what a run spec's `dataset` section points at: `Dataset.spec()` gives the section
(source = the stored file's absolute path, or the hub id). Reading rows needs the ML stack, so checking a
file against its format and previewing it happen on a worker (see worker/dataset_tasks.py).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunedeck_state.dataset_registry import display_name, register
from tunedeck_state.models import Dataset, Run

UPLOAD_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
CHUNK = 1 << 20


class DatasetNotFound(LookupError):
    pass


class DatasetRefused(ValueError):
    """A dataset that cannot be stored or registered; the message says why and what to do."""


class UploadTooLarge(DatasetRefused):
    pass


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size_bytes: int
    sha256: str


def upload_suffix(filename: str | None) -> str:
    """The file type, taken from the client's name only to choose among the allowed types."""
    suffix = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DatasetRefused(
            f"file: {display_name(filename)!r} is not a dataset file tunedeck reads; upload a "
            f"{', '.join(UPLOAD_SUFFIXES)} file"
        )
    return suffix


def store_upload(stream: BinaryIO, suffix: str, uploads_dir: Path, max_bytes: int) -> StoredFile:
    """Copy the upload under a generated name (never the client's), hashing it; refuse past max_bytes."""
    if suffix not in UPLOAD_SUFFIXES:
        raise DatasetRefused(f"unsupported file type {suffix!r}")
    uploads_dir.mkdir(parents=True, exist_ok=True)
    target = uploads_dir / f"{uuid.uuid4().hex}{suffix}"
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "xb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(
                        f"file: the upload is larger than {max_bytes} bytes (TUNEDECK_MAX_UPLOAD_BYTES)"
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise DatasetRefused("file: the upload is empty")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return StoredFile(path=target, size_bytes=size, sha256=digest.hexdigest())


def discard(path: Path, uploads_dir: Path) -> None:
    """Remove a stored upload that was refused (only ever inside the uploads folder)."""
    resolved = path.resolve()
    if resolved.is_relative_to(uploads_dir.resolve()):
        resolved.unlink(missing_ok=True)


def list_datasets(session: Session, limit: int = 500) -> Sequence[Dataset]:
    return session.scalars(select(Dataset).order_by(Dataset.id.desc()).limit(limit)).all()


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def spec_section(dataset: Dataset, **overrides: Any) -> dict[str, Any]:
    """The run spec's `dataset` section that trains on this dataset."""
    section: dict[str, Any] = {"source": dataset.source, "format": dataset.format}
    if dataset.config:
        section["config"] = dataset.config
    if dataset.split and dataset.split != "train":
        section["split"] = dataset.split
    if dataset.column_mapping:
        section["columns"] = dict(dataset.column_mapping)
    section.update({k: v for k, v in overrides.items() if v is not None})
    return section


def runs_using(session: Session, dataset: Dataset, limit: int = 20) -> list[Run]:
    """Runs whose spec trains on this dataset's source, newest first."""
    runs = session.scalars(select(Run).order_by(Run.id.desc()).limit(2000)).all()
    return [run for run in runs if ((run.spec or {}).get("dataset") or {}).get("source") == dataset.source][:limit]


def keep(session: Session, **fields: Any) -> Dataset:
    """Register a checked dataset (tunedeck_state.dataset_registry.register's fields) and commit it."""
    dataset = register(session, **fields)
    session.commit()
    return dataset
