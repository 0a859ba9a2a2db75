"""Runs: creating, listing, claiming, progress, finishing, cancelling.

State changes that can race (a worker claiming a run, a user cancelling it) are conditional UPDATEs:
the database row is the lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, insert, select, update
from sqlalchemy.orm import Session

from runspec import RunSpec
from tunedeck_state.models import Metric, Run, RunEvent, RunLog, RunStatus, as_utc, utcnow
from tunedeck_state.rollups import write_rollups
from tunedeck_state.run_lists import (  # noqa: F401 (the run service's list, as callers import it)
    CURSOR_MAX_CHARS,
    RUN_SORTS,
    SORT_CHOICES,
    InvalidCursor,
    RunPage,
    list_runs,
)
from tunedeck_state.search import pruning

LOG_LINE_MAX = 2000


class RunNotFound(LookupError):
    pass


class InvalidTransition(ValueError):
    pass


def create_run(session: Session, spec: RunSpec) -> Run:
    run = Run(
        name=spec.name,
        status=RunStatus.queued,
        method=spec.method.name,
        model=spec.model,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.spec_hash(),
        max_steps=spec.training.max_steps,
        details={},
        latest_metrics={},
    )
    session.add(run)
    session.flush()
    session.add(RunEvent(run_id=run.id, from_status=None, to_status=RunStatus.queued, reason="submitted"))
    return run


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def _transition(
    session: Session,
    run_id: int,
    *,
    expected: Iterable[RunStatus],
    to: RunStatus,
    reason: str | None,
    values: dict[str, Any] | None = None,
    attempt: int | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> bool:
    """Move a run from one of `expected` states to `to` in one conditional UPDATE. False if it was not there.

    `attempt` and `where` add conditions the row must still meet (the attempt it was claimed for, a stale
    heartbeat, ...)."""
    expected = list(expected)
    conditions = [Run.id == run_id, Run.status.in_([s.value for s in expected]), *where]
    if attempt is not None:
        conditions.append(Run.attempt == attempt)
    before = session.execute(select(Run.status, Run.started_at).where(Run.id == run_id)).one_or_none()
    current = before.status if before else None
    values = dict(values or {})
    if current == RunStatus.running.value and to is not RunStatus.running and before and before.started_at:
        # the attempt gives its device back: add its time (a resumed run keeps its earlier attempts')
        held = (as_utc(values.get("finished_at") or utcnow()) - as_utc(before.started_at)).total_seconds()
        values["device_seconds"] = Run.device_seconds + max(0.0, held)
    result = session.execute(
        update(Run).where(*conditions).values(status=to.value, **values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add(RunEvent(run_id=run_id, from_status=current, to_status=to.value, reason=reason))
    return True


def claim_run(session: Session, run_id: int, attempt: int, worker: str) -> bool:
    """A worker takes a queued run. A duplicate delivery of the same task finds it claimed and gets False."""
    now = utcnow()
    return _transition(
        session,
        run_id,
        expected=[RunStatus.queued],
        to=RunStatus.running,
        reason=f"claimed by {worker}",
        attempt=attempt,
        values={"started_at": now, "heartbeat_at": now, "worker": worker, "error": None, "wait_reason": None},
    )


def request_cancel(session: Session, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is asked to stop at its next step."""
    run = get_run(session, run_id)
    if run.status_enum is RunStatus.queued and _transition(
        session,
        run_id,
        expected=[RunStatus.queued],
        to=RunStatus.cancelled,
        reason="cancelled before it started",
        values={"finished_at": utcnow()},
    ):
        session.refresh(run)
        return run
    session.refresh(run)
    if run.status_enum is RunStatus.running:
        run.cancel_requested = True
        return run
    raise InvalidTransition(f"run {run_id} is {run.status}; only queued or running runs can be cancelled")


def fail_queued(session: Session, run_id: int, error: str) -> bool:
    return _transition(
        session,
        run_id,
        expected=[RunStatus.queued],
        to=RunStatus.failed,
        reason=error,
        values={"error": error, "finished_at": utcnow()},
    )


@dataclass(frozen=True)
class ProgressUpdate:
    step: int | None = None
    max_steps: int | None = None
    metrics: Sequence[tuple[int, str, float]] = ()
    log_lines: Sequence[tuple[datetime, str]] = ()
    details: dict[str, Any] | None = None


def record_progress(session: Session, run_id: int, update_: ProgressUpdate, attempt: int | None = None) -> bool:
    """Write one batch from a training run: metrics, log lines, progress and heartbeat.

    Returns True when the user asked the run to stop, when its sweep's pruner stops it at this batch's eval loss
    (search.pruning), or when `attempt` is no longer the run's running attempt (it was declared lost, or a newer
    attempt replaced it): then nothing is written."""
    run = get_run(session, run_id)
    if attempt is not None and (run.attempt != attempt or run.status_enum is not RunStatus.running):
        return True
    now = utcnow()
    if update_.metrics:
        upsert_metrics(session, run_id, update_.metrics)
        latest = dict(run.latest_metrics or {})
        for step, key, value in update_.metrics:
            previous = latest.get(key)
            if previous is None or step >= previous["step"]:
                latest[key] = {"step": step, "value": value}
        run.latest_metrics = latest
    if update_.log_lines:
        session.execute(
            insert(RunLog),
            [{"run_id": run_id, "created_at": at, "message": line[:LOG_LINE_MAX]} for at, line in update_.log_lines],
        )
    if update_.details:
        run.details = {**(run.details or {}), **update_.details}
    if update_.step is not None:
        run.step = update_.step
    if update_.max_steps:
        run.max_steps = update_.max_steps
    # Steps of this attempt only: a resumed attempt started at its checkpoint's step.
    done = run.step - int((run.details or {}).get("resumed_from_step") or 0)
    if run.started_at is not None and done > 0 and run.max_steps:
        elapsed = (now - as_utc(run.started_at)).total_seconds()
        run.eta_seconds = max(0.0, elapsed / done * (run.max_steps - run.step))
    run.heartbeat_at = now
    if update_.metrics:
        pruning.check_after_eval(session, run, update_.metrics)
    return bool(run.cancel_requested)


#: PostgreSQL: a batch is COPYed in (binary); a batch that re-logs stored points is written again as one upsert
#: statement, the batch travelling as three arrays.
_POSTGRES_COPY = 'COPY metrics (run_id, "key", step, value) FROM STDIN (FORMAT BINARY)'
_POSTGRES_UPSERT = (
    "INSERT INTO metrics (run_id, key, step, value) "
    "SELECT %s, k, s, v FROM unnest(%s::text[], %s::integer[], %s::float8[]) AS t(k, s, v) "
    "ON CONFLICT (run_id, key, step) DO UPDATE SET value = EXCLUDED.value"
)
#: SQLite: the driver's executemany (SQLite's C loop over the rows, one prepared statement).
_SQLITE_UPSERT = (
    "INSERT INTO metrics (run_id, key, step, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value"
)


def upsert_metrics(session: Session, run_id: int, points: Sequence[tuple[int, str, float]]) -> None:
    """Insert points in the session's transaction; a point already stored for (run, key, step) is overwritten,
    never duplicated (a resumed attempt logs again the steps after its checkpoint: its values win).

    Within a batch the last value logged for a (key, step) wins. The rows go to the driver as plain tuples or
    arrays, past SQLAlchemy's per-row parameter handling: this is the path of every metric a worker logs."""
    latest_per_point = {(step, key): value for step, key, value in points}
    if not latest_per_point:
        return
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        _postgres_upsert(connection, run_id, latest_per_point)
    elif dialect == "sqlite":
        connection.exec_driver_sql(
            _SQLITE_UPSERT, [(run_id, key, step, value) for (step, key), value in latest_per_point.items()]
        )
    else:
        rows = [{"run_id": run_id, "step": s, "key": k, "value": v} for (s, k), v in latest_per_point.items()]
        connection.execute(insert(Metric), rows)


def _postgres_upsert(connection: Connection, run_id: int, points: dict[tuple[int, str], float]) -> None:
    """COPY first, in a savepoint: almost every batch is new points, and COPY writes them about twice as fast as
    one INSERT of the same rows (and four times an INSERT ... ON CONFLICT). Only a batch that re-logs a stored
    point (a resumed attempt) is rolled back to the savepoint and written again as an upsert."""
    from psycopg.errors import UniqueViolation

    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    with dbapi.cursor(binary=True) as cursor:  # type: ignore[attr-defined]
        savepoint = connection.begin_nested()
        try:
            with cursor.copy(_POSTGRES_COPY) as copy:
                copy.set_types(["int4", "varchar", "int4", "float8"])
                for (step, key), value in points.items():
                    copy.write_row((run_id, key, int(step), float(value)))
        except UniqueViolation:
            savepoint.rollback()
            cursor.execute(
                _POSTGRES_UPSERT,
                (
                    run_id,
                    [key for _, key in points],
                    [int(step) for step, _ in points],
                    [float(v) for v in points.values()],
                ),
            )
        else:
            savepoint.commit()


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    reason: str | None = None
    error: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    wall_time_seconds: float | None = None
    artifact_dir: str | None = None


def finish_run(session: Session, run_id: int, outcome: RunOutcome, attempt: int | None = None) -> bool:
    """running → the outcome's state, for that attempt only. A run stopped because its sweep's pruner asked
    (prune_reason set) ends `pruned` with that reason rather than `cancelled`."""
    prune_reason = session.scalar(select(Run.prune_reason).where(Run.id == run_id))
    if outcome.status is RunStatus.cancelled and prune_reason:
        outcome = replace(outcome, status=RunStatus.pruned, reason=f"pruned: {prune_reason}")
    values: dict[str, Any] = {
        "finished_at": utcnow(),
        "error": outcome.error,
        "eta_seconds": 0.0 if outcome.status is RunStatus.succeeded else None,
    }
    if outcome.status is not RunStatus.pruned:
        values["prune_reason"] = None  # it trained to its end (or failed) before the pruner's stop arrived
    for field in (
        "trainable_params",
        "total_params",
        "final_train_loss",
        "final_eval_loss",
        "wall_time_seconds",
        "artifact_dir",
    ):
        value = getattr(outcome, field)
        if value is not None:
            values[field] = value
    finished = _transition(
        session,
        run_id,
        expected=[RunStatus.running],
        to=outcome.status,
        reason=outcome.reason or outcome.error,
        values=values,
        attempt=attempt,
    )
    if finished:  # its series no longer change: roll them up once for comparisons (tunedeck_state.rollups)
        write_rollups(session, run_id, session.scalar(select(Run.attempt).where(Run.id == run_id)) or 1)
    return finished


def get_metrics(
    session: Session,
    run_id: int,
    *,
    key: str | None = None,
    after_step: int | None = None,
    limit: int = 10_000,
) -> Sequence[Metric]:
    query = select(Metric).where(Metric.run_id == run_id)
    if key:
        query = query.where(Metric.key == key)
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    return session.scalars(query.order_by(Metric.key, Metric.step).limit(limit)).all()


def metric_series(
    session: Session, run_id: int, *, key: str | None = None, after_step: int | None = None
) -> dict[str, list[list[float]]]:
    """All series of a run (or one, `key`) as {key: [[step, value], ...]}, ordered by step: read as plain rows
    through the (run_id, key, step) index, no ORM objects (a live run's page asks for this every half second)."""
    query = select(Metric.key, Metric.step, Metric.value).where(Metric.run_id == run_id)
    if key:
        query = query.where(Metric.key == key)
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    series: dict[str, list[list[float]]] = {}
    for name, step, value in session.execute(query.order_by(Metric.key, Metric.step)):
        series.setdefault(name, []).append([step, value])
    return series


def log_tail(session: Session, run_id: int, lines: int = 30) -> list[RunLog]:
    rows = session.scalars(select(RunLog).where(RunLog.run_id == run_id).order_by(RunLog.id.desc()).limit(lines)).all()
    return list(reversed(rows))
