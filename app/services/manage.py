"""Living with many runs: rename, tag, annotate and archive runs and sweeps; delete them; the bulk actions of the runs
list. One transaction each, committed here (routes never commit).

Deleting refuses (Refused, 409) a queued or running run, and one whose merge is queued or running: cancel it first.
Its rows (metrics, logs, events, sweep memberships, the run) and its folder (checkpoints, adapter or model, merged
model, exports) go, in the order tunedeck_state/disk.py describes, so an interrupted delete can be retried. A sweep's
delete removes the runs it launched, except those another sweep also uses (kept, and said so).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.services import sweeps as sweep_service
from runspec.base import StrictModel
from tunedeck_state import disk
from tunedeck_state import runs as run_service
from tunedeck_state.labels import MAX_TAGS, NOTES_MAX, TAG_RULE, clean_tags
from tunedeck_state.merges import MERGE_ACTIVE, merge_state
from tunedeck_state.models import Metric, MetricRollup, Run, RunEvent, RunLog, RunStatus, Sweep, SweepRun
from tunedeck_state.settings import Settings

log = logging.getLogger(__name__)
MAX_BULK = 500
NAME_PATTERN = r"^[^/\\\x00-\x1f]+$"
ACTIVE = (RunStatus.queued.value, RunStatus.running.value)


class Refused(Exception):
    """The action cannot be done now (409): the message says why and what to do."""


class _Labels(StrictModel):
    tags: list[str] | None = Field(
        None, max_length=MAX_TAGS, description=f"Short labels, each {TAG_RULE}; replaces the list.", examples=[["best"]]
    )
    notes: str | None = Field(None, max_length=NOTES_MAX, description="Free text (shown escaped).")
    archived: bool | None = Field(None, description="Archived: hidden from the default list and comparisons, kept.")

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str] | None:
        return None if tags is None else clean_tags(tags)


class RunPatch(_Labels):
    """`PATCH /api/runs/{id}`: the fields given change, the others stay."""

    name: str | None = Field(None, min_length=1, max_length=100, pattern=NAME_PATTERN, description="A new label.")


class SweepPatch(_Labels):
    """`PATCH /api/sweeps/{id}`."""

    name: str | None = Field(None, min_length=1, max_length=80, pattern=NAME_PATTERN, description="A new label.")


def _apply(record: Run | Sweep, patch: _Labels) -> None:
    values = patch.model_dump(exclude_unset=True)
    if values.get("name") is not None:
        name = values["name"].strip()
        if not name.strip("."):
            raise ValueError("name must contain something other than dots and spaces")
        record.name = name
        if isinstance(record, Run):  # the spec's name is a label too (left out of its hash): a clone takes the new one
            record.spec = {**(record.spec or {}), "name": name}
    if values.get("tags") is not None:
        record.tags = list(values["tags"])
    if "notes" in values:
        record.notes = (values["notes"] or "").strip() or None
    if values.get("archived") is not None:
        record.archived = bool(values["archived"])


def update_run(session: Session, run_id: int, patch: RunPatch) -> Run:
    run = run_service.get_run(session, run_id)
    _apply(run, patch)
    session.commit()
    return run


def update_sweep(session: Session, sweep_id: int, patch: SweepPatch) -> Sweep:
    sweep = sweep_service.get_sweep(session, sweep_id)
    _apply(sweep, patch)
    session.commit()
    return sweep_service.get_sweep(session, sweep_id)


# -- bulk ------------------------------------------------------------------------------------------------------


def runs_by_id(session: Session, ids: Sequence[int]) -> list[Run]:
    """The runs, in the order given; RunNotFound naming the missing ones."""
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(list(ids))))} if ids else {}
    missing = [i for i in ids if i not in found]
    if missing:
        raise run_service.RunNotFound(", ".join(map(str, missing)))
    return [found[i] for i in ids]


def set_archived(session: Session, ids: Sequence[int], archived: bool) -> list[Run]:
    runs = runs_by_id(session, ids)
    for run in runs:
        run.archived = archived
    session.commit()
    return runs


def tag_runs(session: Session, ids: Sequence[int], add: Sequence[str] = (), remove: Sequence[str] = ()) -> list[Run]:
    """Add tags to (and remove others from) every run given."""
    add, remove = clean_tags(add), clean_tags(remove)
    runs = runs_by_id(session, ids)
    for run in runs:
        tags = [t for t in (run.tags or []) if t not in remove]
        run.tags = clean_tags([*tags, *add])
    session.commit()
    return runs


def cancel_runs(session: Session, ids: Sequence[int]) -> dict[str, Any]:
    """Cancel each queued (at once) or running (at its next step) run; the others are skipped, with the reason."""
    runs_by_id(session, ids)
    cancelled: list[int] = []
    skipped: list[dict[str, Any]] = []
    for run_id in ids:
        try:
            run_service.request_cancel(session, run_id)
        except run_service.InvalidTransition as exc:
            skipped.append({"id": run_id, "reason": str(exc)})
        else:
            cancelled.append(run_id)
    session.commit()
    return {"cancelled": cancelled, "skipped": skipped}


# -- delete ----------------------------------------------------------------------------------------------------


@dataclass
class Deletion:
    deleted: list[int] = field(default_factory=list)
    freed_bytes: int = 0
    #: run id -> the sweeps it was a member of (removed from them with it)
    removed_from_sweeps: dict[int, list[int]] = field(default_factory=dict)
    #: runs a deleted sweep used and that stay: [{"id", "reason", "used_by": [sweep ids]}]
    kept: list[dict[str, Any]] = field(default_factory=list)
    sweep_id: int | None = None


def delete_refusal(run: Run) -> str | None:
    """Why the run cannot be deleted now, or None."""
    if run.status in ACTIVE:
        return f"run {run.id} is {run.status}: cancel it first (POST /api/runs/{run.id}/cancel), then delete it"
    if merge_state(run).get("status") in MERGE_ACTIVE:
        return f"run {run.id} has a merge {merge_state(run)['status']}: wait until it ends, then delete it"
    return None


def sweeps_using(session: Session, run_ids: Sequence[int]) -> dict[int, list[int]]:
    """run id -> ids of the sweeps it is a member of."""
    using: dict[int, list[int]] = {}
    if run_ids:
        rows = session.execute(
            select(SweepRun.run_id, SweepRun.sweep_id)
            .where(SweepRun.run_id.in_(list(run_ids)))
            .order_by(SweepRun.sweep_id)
        )
        for run_id, sweep_id in rows:
            using.setdefault(run_id, []).append(sweep_id)
    return using


def delete_runs(session: Session, settings: Settings, ids: Sequence[int]) -> Deletion:
    """Delete the runs (all or none: Refused naming every one that cannot go)."""
    runs = runs_by_id(session, ids)
    refusals = [reason for run in runs if (reason := delete_refusal(run))]
    if refusals:
        raise Refused("; ".join(refusals))
    return _delete(session, settings, runs, Deletion(removed_from_sweeps=sweeps_using(session, ids)))


def delete_sweep(session: Session, settings: Settings, sweep_id: int) -> Deletion:
    """Delete a sweep and the runs it launched; runs it reused, or that another sweep also uses, stay."""
    sweep = sweep_service.get_sweep(session, sweep_id)
    members = [m.run for m in sweep.members]
    using = sweeps_using(session, [run.id for run in members])
    outcome = Deletion(sweep_id=sweep_id)
    doomed: list[Run] = []
    for run in members:
        others = [s for s in using.get(run.id, []) if s != sweep_id]
        if run.sweep_id != sweep_id:
            outcome.kept.append({"id": run.id, "reason": "launched elsewhere, reused by this sweep", "used_by": others})
        elif others:
            outcome.kept.append({"id": run.id, "reason": "another sweep uses it too", "used_by": others})
        else:
            doomed.append(run)
    refusals = [reason for run in doomed if (reason := delete_refusal(run))]
    if refusals:
        raise Refused(
            f"sweep {sweep_id} has runs that cannot be deleted yet (cancel the sweep first): " + "; ".join(refusals)
        )
    session.delete(sweep)  # its memberships go with it (cascade); the kept runs' sweep_id is cleared below
    for kept in outcome.kept:
        stays = session.get(Run, kept["id"])
        if stays is not None and stays.sweep_id == sweep_id:
            stays.sweep_id = None
    return _delete(session, settings, doomed, outcome)


def _delete(session: Session, settings: Settings, runs: Sequence[Run], outcome: Deletion) -> Deletion:
    """Trash the folders, delete the rows, commit, then remove the folders (tunedeck_state/disk.py)."""
    disk.settle_trash(settings, session, on_error=lambda path, exc: log.warning("trash %s: %s", path, exc))
    ids = [run.id for run in runs]
    trashed: list[disk.TrashedRun] = []
    try:
        for run in runs:
            trashed.append(disk.trash_run_folder(settings, run))
        if ids:
            for table in (Metric, MetricRollup, RunLog, RunEvent, SweepRun):
                session.execute(delete(table).where(table.run_id.in_(ids)).execution_options(synchronize_session=False))
            final = [s.value for s in RunStatus if s.value not in ACTIVE]
            gone = session.execute(
                delete(Run).where(Run.id.in_(ids), Run.status.in_(final)).execution_options(synchronize_session=False)
            )
            if gone.rowcount != len(ids):  # type: ignore[attr-defined]
                raise Refused("a run changed state (resumed?) while it was being deleted; try again")
        session.commit()
    except BaseException:
        session.rollback()
        for item in reversed(trashed):
            with contextlib.suppress(OSError):
                item.restore()
        raise
    for item in trashed:
        item.purge()
    session.expunge_all()
    outcome.deleted = ids
    outcome.freed_bytes = sum(item.bytes for item in trashed)
    outcome.removed_from_sweeps = {i: s for i, s in outcome.removed_from_sweeps.items() if i in ids}
    return outcome
