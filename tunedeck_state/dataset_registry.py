"""The registry of datasets runs train on: uploads, registered files and hub ids (both sides write it).

A worker registers the dataset a run trained on when it succeeds; the web registers uploads and files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from runspec import DatasetSpec
from tunedeck_state.models import Dataset, Run


def display_name(filename: str | None, fallback: str = "upload") -> str:
    """The client's file name made safe for display (last path part, no control characters)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if ord(ch) >= 32 and ch not in "\x7f").strip()
    return name[:200] or fallback


def register(
    session: Session,
    *,
    name: str,
    kind: str,
    spec: DatasetSpec,
    columns: Sequence[str],
    row_count: int | None,
    size_bytes: int | None = None,
    sha256: str | None = None,
    original_filename: str | None = None,
) -> Dataset:
    dataset = Dataset(
        name=name[:200],
        kind=kind,
        source=spec.source,
        config=spec.config,
        split=spec.split,
        format=spec.format,
        column_mapping=dict(spec.columns) if spec.columns else None,
        columns=list(columns),
        row_count=row_count,
        size_bytes=size_bytes,
        sha256=sha256,
        original_filename=original_filename,
    )
    session.add(dataset)
    session.flush()
    return dataset


def find_registered(session: Session, spec: DatasetSpec) -> Dataset | None:
    query = select(Dataset).where(
        Dataset.source == spec.source, Dataset.format == spec.format, Dataset.split == spec.split
    )
    query = query.where(Dataset.config.is_(None) if spec.config is None else Dataset.config == spec.config)
    for dataset in session.scalars(query.order_by(Dataset.id)):
        if (dataset.column_mapping or None) == (dict(spec.columns) if spec.columns else None):
            return dataset
    return None


def register_from_run(session: Session, run: Run) -> Dataset | None:
    """A run that trained on a local file or hub dataset registers it (once), with what the worker learned."""
    facts = (run.details or {}).get("dataset") or {}
    if not facts.get("rows"):
        return None
    try:
        spec = DatasetSpec.model_validate((run.spec or {}).get("dataset") or {})
    except ValueError:
        return None
    existing = find_registered(session, spec)
    if existing is not None:
        if existing.row_count is None:
            existing.row_count = int(facts["rows"])
        return existing
    local = Path(spec.source).is_absolute() or facts.get("sha256") is not None
    return register(
        session,
        name=display_name(spec.source, spec.source) if local else spec.source,
        kind="local" if local else "hub",
        spec=spec,
        columns=list(facts.get("columns") or []),
        row_count=int(facts["rows"]),
        sha256=facts.get("sha256"),
    )
