"""Ask and tell: store the next trials of a search sweep as queued runs, as many as its budget has free slots.

Called when the sweep is created (web, in the creating transaction) and whenever one of its runs ends (the
`tunedeck.sweep_next` task, sent after the commit that ended the run: tunedeck_jobs.dispatch.launch_next_trials).
Nothing here commits or sends: the caller places, commits and queues the runs it gets back.

Two askers at once (two runs ending together) are kept apart by an optimistic lock on `sweeps.trials_asked`:
the UPDATE that reserves trial numbers only matches the count it read; the loser gets AskConflict, rolls back and
asks again with fresh counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from runspec import RunSpec
from runspec.spec_paths import METHOD_NAME, apply_changes, format_value, short_label
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run, RunStatus, Sweep, SweepRun, as_utc
from tunedeck_state.search.space import sample
from tunedeck_state.search.study import build_study, load_members, read_config

log = logging.getLogger(__name__)

NAME_MAX = 100
ACTIVE = (RunStatus.queued.value, RunStatus.running.value)


class AskConflict(RuntimeError):
    """Another asker reserved trials of this sweep meanwhile: roll back and ask again."""


def is_search(sweep: Sweep) -> bool:
    return (sweep.strategy or "grid") != "grid"


def device_hours(runs: Iterable[Run], now: datetime | None = None) -> float:
    """Hours the runs held their devices: every ended attempt's (runs.device_seconds), and a running one's so far."""
    now = now or datetime.now(UTC)
    seconds = 0.0
    for run in runs:
        seconds += run.device_seconds or 0.0
        if run.status == RunStatus.running.value and run.started_at is not None:
            seconds += max(0.0, (now - as_utc(run.started_at)).total_seconds())
    return seconds / 3600


def trial_name(sweep_name: str, number: int, changes: dict[str, Any]) -> str:
    parts = [f"#{number}"]
    if METHOD_NAME in changes:
        parts.append(format_value(changes[METHOD_NAME]))
    for path, value in changes.items():
        if path != METHOD_NAME:
            parts.append(f"{short_label(path)}={format_value(round(value, 6) if isinstance(value, float) else value)}")
    name = " ".join([sweep_name, *parts])
    return "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in name)[:NAME_MAX].strip()


def launch_trials(session: Session, sweep_id: int) -> list[Run]:
    """Store the trials the sweep's free slots allow (budget.max_concurrent in flight, budget.max_runs in all)."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or not is_search(sweep):
        return []
    config = read_config(sweep.request)
    assert config.budget is not None
    members = load_members(session, sweep)
    active = sum(1 for m in members if m.run.status in ACTIVE)
    asked = sweep.trials_asked or 0
    free = min(config.budget.max_concurrent - active, config.budget.max_runs - asked)
    if free <= 0:
        return []
    if config.budget.gpu_hours is not None and device_hours(m.run for m in members) >= config.budget.gpu_hours:
        # the device-hours are spent: the budget counts as used (the sweep ends when its runs in flight end)
        _reserve(session, sweep_id, asked, config.budget.max_runs)
        log.info("sweep %s: its device-hours budget is spent, no more trials", sweep_id)
        return []
    _reserve(session, sweep_id, asked, asked + free)
    study = build_study(sweep, config, members, sampler_seed=asked)
    base = {k: v for k, v in (sweep.request.get("base") or {}).items() if k != "name"}
    launched: list[Run] = []
    for number in range(asked, asked + free):
        trial = study.ask()
        changes = sample(trial, config.space)
        values = apply_changes(base, changes)
        values["name"] = trial_name(sweep.name, number, changes)
        try:
            spec = RunSpec.model_validate(values)
        except ValidationError as exc:  # a combination the corners did not show: that trial fails, the next is asked
            log.warning("sweep %s trial %s is not a valid spec: %s", sweep_id, number, exc)
            from optuna.trial import TrialState

            study.tell(trial, state=TrialState.FAIL)
            continue
        run = run_service.create_run(session, spec)
        run.sweep_id = sweep.id
        session.add(
            SweepRun(
                sweep_id=sweep.id,
                run_id=run.id,
                position=number,
                reused=False,
                trial={"number": number, "params": dict(trial.params)},
            )
        )
        launched.append(run)
    session.flush()
    return launched


def _reserve(session: Session, sweep_id: int, asked: int, up_to: int) -> None:
    """trials_asked: asked -> up_to, only if no other asker moved it meanwhile (the optimistic lock)."""
    reserved = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.trials_asked == asked)
        .values(trials_asked=up_to)
        .execution_options(synchronize_session=False)
    )
    if reserved.rowcount != 1:  # type: ignore[attr-defined]
        raise AskConflict(f"sweep {sweep_id}: trials reserved by another asker")


def stop_asking(session: Session, sweep: Sweep) -> None:
    """No more trials (the sweep was cancelled): its budget counts as used."""
    if is_search(sweep):
        config = read_config(sweep.request)
        sweep.trials_asked = config.budget.max_runs if config.budget else sweep.trials_asked


def sweep_to_continue(session: Session, run_id: int) -> int | None:
    """The search sweep that launched `run_id`, if it still has trials to ask (the run just ended)."""
    run = session.get(Run, run_id)
    if run is None or run.sweep_id is None:
        return None
    sweep = session.get(Sweep, run.sweep_id)
    if sweep is None or not is_search(sweep):
        return None
    config = read_config(sweep.request)
    return sweep.id if config.budget and (sweep.trials_asked or 0) < config.budget.max_runs else None
