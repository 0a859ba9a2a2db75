"""Workers: each worker process writes a heartbeat row every few seconds (worker/heartbeat.py).

A worker whose row is older than a few heartbeat intervals is lost (killed, machine gone): no longer counted as live,
shown as lost on the Workers page (its running runs are failed by the lifecycle reaper, tunedeck_state/lifecycle.py),
and forgotten after a week. A worker that stops cleanly removes its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tunedeck_state.models import Run, RunStatus, WorkerHeartbeat, as_utc, utcnow

STALE_AFTER_BEATS = 3
FORGET_LOST_AFTER = timedelta(days=7)


def beat(
    session: Session,
    name: str,
    queues: str,
    pid: int,
    details: dict[str, Any],
    *,
    host: str | None = None,
    capacity_bytes: int | None = None,
) -> None:
    row = session.get(WorkerHeartbeat, name)
    now = utcnow()
    if row is None or row.pid != pid:
        if row is not None:
            session.delete(row)
            session.flush()
        session.add(
            WorkerHeartbeat(
                name=name,
                queues=queues,
                pid=pid,
                started_at=now,
                last_seen=now,
                details=details,
                host=host,
                capacity_bytes=capacity_bytes,
            )
        )
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < now - FORGET_LOST_AFTER))
        # Runs sent to a queue no live worker consumed carry that reason ("no training worker is running",
        # "needs 31 GiB ..."): this worker takes them now.
        session.execute(
            update(Run)
            .where(Run.status == RunStatus.queued.value, Run.queue.in_(queues.split(",")), Run.wait_reason.is_not(None))
            .values(wait_reason=None)
        )
    else:
        row.last_seen = now
        row.queues = queues
        row.details = details
        row.host = host
        row.capacity_bytes = capacity_bytes


def forget(session: Session, name: str, pid: int) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name, WorkerHeartbeat.pid == pid))


def live_workers(session: Session, interval_seconds: float) -> Sequence[WorkerHeartbeat]:
    cutoff = stale_cutoff(interval_seconds)
    return session.scalars(
        select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen >= cutoff).order_by(WorkerHeartbeat.name)
    ).all()


def stale_cutoff(interval_seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=STALE_AFTER_BEATS * interval_seconds)


def all_workers(session: Session) -> Sequence[WorkerHeartbeat]:
    """Every worker row, live or lost, by name."""
    return session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.name)).all()


def is_live(worker: WorkerHeartbeat, interval_seconds: float) -> bool:
    seen = as_utc(worker.last_seen)
    return seen >= stale_cutoff(interval_seconds)


def describe(session: Session, interval_seconds: float) -> list[dict[str, Any]]:
    """Every worker as the Workers page and GET /api/workers show it: live or lost, its GPUs (or CPU), versions,
    the memory it offers a run, and the runs it is training now."""
    from tunedeck_state.models import Run, RunStatus

    running: dict[str, list[dict[str, Any]]] = {}
    for run_id, name, worker, step, max_steps in session.execute(
        select(Run.id, Run.name, Run.worker, Run.step, Run.max_steps)
        .where(Run.status == RunStatus.running.value)
        .order_by(Run.id)
    ).all():
        running.setdefault(worker or "", []).append({"id": run_id, "name": name, "step": step, "max_steps": max_steps})
    from tunedeck_state.storage import server_storage_id

    storage_id = server_storage_id()
    now = utcnow()
    views = []
    for row in all_workers(session):
        details = row.details or {}
        seen = as_utc(row.last_seen)
        started = as_utc(row.started_at)
        live = is_live(row, interval_seconds)
        views.append(
            {
                "name": row.name,
                "state": "live" if live else "lost",
                "host": row.host,
                "pid": row.pid,
                "roles": [q.rsplit(".", 1)[-1] for q in (row.queues or "").split(",") if q],
                "queues": details.get("queues") or [q for q in (row.queues or "").split(",") if q],
                "started_at": started,
                "last_seen": seen,
                "seconds_since_seen": max(0.0, (now - seen).total_seconds()),
                "capacity_bytes": row.capacity_bytes,
                "gpus": details.get("gpus") or [],
                "gpu_count": int(details.get("gpu_count") or len(details.get("gpus") or [])),
                "fake_gpu": bool(details.get("fake_gpu")),
                "cpu": details.get("cpu") or {},
                "versions": details.get("versions") or {},
                "concurrency": details.get("concurrency"),
                "runs_per_gpu": details.get("runs_per_gpu") or 1,
                "multi_gpu": bool(details.get("multi_gpu")),
                "running": running.get(row.name, []) if live else [],
                "lost_runs": running.get(row.name, []) if not live else [],
                "data_dir": details.get("data_dir"),
                # False: it does not see the server's data directory (README "Scaling out": shared storage)
                "shared_storage": bool(storage_id) and details.get("storage_id") == storage_id,
            }
        )
    return views
