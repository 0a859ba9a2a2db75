"""Live workers: each worker process writes a heartbeat row every few seconds (worker/heartbeat.py).

A worker whose row is older than a few heartbeat intervals is gone (killed, machine lost) and no longer counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import WorkerHeartbeat, utcnow

STALE_AFTER_BEATS = 3


def beat(session: Session, name: str, queues: str, pid: int, details: dict[str, Any]) -> None:
    row = session.get(WorkerHeartbeat, name)
    now = utcnow()
    if row is None or row.pid != pid:
        if row is not None:
            session.delete(row)
            session.flush()
        session.add(WorkerHeartbeat(name=name, queues=queues, pid=pid, started_at=now, last_seen=now, details=details))
    else:
        row.last_seen = now
        row.queues = queues
        row.details = details


def forget(session: Session, name: str, pid: int) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name, WorkerHeartbeat.pid == pid))


def live_workers(session: Session, interval_seconds: float) -> Sequence[WorkerHeartbeat]:
    cutoff = utcnow() - timedelta(seconds=STALE_AFTER_BEATS * interval_seconds)
    return session.scalars(
        select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen >= cutoff).order_by(WorkerHeartbeat.name)
    ).all()
