"""Disk: what a run's folder holds, the data directory's space, and deleting run folders so that the rows and the
files always agree.

* `folder_bytes(path)`: the bytes of the files below a folder (links not followed).
* `record_disk_bytes(session, settings, run_id)`: measure a run's folder into runs.disk_bytes (the list sorts on the
  column); the worker calls it after each checkpoint and at the end, the deletes of checkpoints after them.
* `refresh_disk_bytes(session, settings, ...)`: measure runs again. Runs stored before disk_bytes existed have none
  (the web server fills those in a background thread when it starts: `backfill_disk_bytes`); a folder changed
  outside tunedeck is measured again by `tunedeck disk refresh`.
* `data_dir_usage(settings)`: total, used and free bytes of the filesystem holding the data directory.
* Deleting (`TrashedRun`): a run's folder is first *renamed* into data/runs/.trash (one atomic step on the same
  filesystem), then its rows are deleted and committed, then the renamed folder is removed. A process that dies
  before the commit leaves the rows and a trashed folder, which `settle_trash` puts back; one that dies after it
  leaves only a trashed folder, which `settle_trash` removes. Either way the delete can be retried.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from tunedeck_state.db import session_scope
from tunedeck_state.models import Run, RunStatus, as_utc
from tunedeck_state.paths import run_dir
from tunedeck_state.settings import Settings

TRASH = ".trash"


def folder_bytes(path: Path) -> int:
    """Bytes of every regular file below `path` (0 when it does not exist); symbolic links are not followed."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
        for name in filenames:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, name))
                if not os.path.islink(os.path.join(dirpath, name)):
                    total += info.st_size
    return total


def record_disk_bytes(session: Session, settings: Settings, run_id: int) -> int:
    """Measure the run's folder and store it on the run's row (in the session's transaction)."""
    size = folder_bytes(run_dir(settings, run_id))
    session.execute(
        update(Run).where(Run.id == run_id).values(disk_bytes=size).execution_options(synchronize_session=False)
    )
    return size


#: Runs measured per transaction by refresh_disk_bytes (each batch commits: a long refresh holds no lock).
REFRESH_BATCH = 50
_ACTIVE = (RunStatus.queued.value, RunStatus.running.value)


@dataclass(frozen=True)
class Remeasured:
    run_id: int
    before: int | None
    after: int


def refresh_disk_bytes(
    session: Session, settings: Settings, *, run_ids: Sequence[int] = (), missing_only: bool = False
) -> list[Remeasured]:
    """Measure the runs' folders again (all runs, or `run_ids`; with `missing_only`, only finished runs that have
    no disk_bytes: an active run's worker measures it) and store what changed, committing every REFRESH_BATCH runs.
    Returns the runs whose value changed."""
    where: list[ColumnElement[bool]] = []
    if run_ids:
        where.append(Run.id.in_(list(run_ids)))
    if missing_only:
        where += [Run.disk_bytes.is_(None), Run.status.not_in(_ACTIVE)]
    changed: list[Remeasured] = []
    after_id = 0
    while True:
        batch = session.execute(
            select(Run.id, Run.disk_bytes).where(*where, Run.id > after_id).order_by(Run.id).limit(REFRESH_BATCH)
        ).all()
        if not batch:
            return changed
        for run_id, before in batch:
            size = folder_bytes(run_dir(settings, run_id))
            if size != before:
                session.execute(
                    update(Run)
                    .where(Run.id == run_id)
                    .values(disk_bytes=size)
                    .execution_options(synchronize_session=False)
                )
                changed.append(Remeasured(run_id, before, size))
        session.commit()
        after_id = batch[-1][0]


def backfill_disk_bytes(settings: Settings, on_error: Callable[[Exception], None] | None = None) -> int:
    """Fill in disk_bytes of the finished runs that have none (the web server's start, in a thread): how many."""
    try:
        with session_scope() as session:
            return len(refresh_disk_bytes(session, settings, missing_only=True))
    except Exception as exc:  # a backfill must never take the server down; the runs keep "–" until the next try
        if on_error:
            on_error(exc)
        return 0


@dataclass(frozen=True)
class DiskUsage:
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int


def data_dir_usage(settings: Settings) -> DiskUsage | None:
    """The filesystem of the data directory (None when it cannot be read)."""
    folder = settings.resolved_data_dir
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return DiskUsage(str(folder), usage.total, usage.used, usage.free)


def trash_dir(settings: Settings) -> Path:
    return settings.runs_dir / TRASH


def _stamp(run: Run) -> str:
    """Tells a deleted run from a later one given the same id (SQLite reuses the highest deleted id)."""
    if run.created_at is None:
        return "0"
    created = as_utc(run.created_at)
    return str(int(created.timestamp() * 1_000_000))


@dataclass
class TrashedRun:
    run_id: int
    bytes: int
    original: Path
    trashed: Path | None

    def restore(self) -> None:
        """Undo the move (the rows were not deleted after all)."""
        if self.trashed is not None and self.trashed.exists() and not self.original.exists():
            self.trashed.rename(self.original)

    def purge(self) -> None:
        if self.trashed is not None:
            shutil.rmtree(self.trashed, ignore_errors=True)


def trash_run_folder(settings: Settings, run: Run) -> TrashedRun:
    """Move the run's folder aside (measured first); nothing to move when it has none."""
    original = run_dir(settings, run.id)
    if not original.exists():
        return TrashedRun(run.id, 0, original, None)
    size = folder_bytes(original)
    trash = trash_dir(settings)
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"run-{run.id}-{_stamp(run)}-{uuid.uuid4().hex[:8]}"
    original.rename(target)
    return TrashedRun(run.id, size, original, target)


def settle_trash(
    settings: Settings, session: Session, on_error: Callable[[Path, Exception], None] | None = None
) -> int:
    """Finish what an interrupted delete left: a trashed folder whose run still exists goes back, the rest is
    removed. Returns how many entries were settled."""
    trash = trash_dir(settings)
    if not trash.is_dir():
        return 0
    settled = 0
    for entry in trash.iterdir():
        parts = entry.name.split("-")
        run = None
        if len(parts) == 4 and parts[0] == "run" and parts[1].isdigit():
            run = session.scalar(select(Run).where(Run.id == int(parts[1])))
        try:
            if run is not None and _stamp(run) == parts[2] and not run_dir(settings, run.id).exists():
                entry.rename(run_dir(settings, run.id))
            else:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError as exc:
            if on_error:
                on_error(entry, exc)
            continue
        settled += 1
    return settled
