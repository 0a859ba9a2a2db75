"""Claiming a run on this pool process's GPU.

One run per GPU (the default): each pool process owns one GPU (worker/capacity.py pins it), so the claim is the
plain conditional UPDATE. With TUNEDECK_WORKER_RUNS_PER_GPU > 1 several pool processes share a GPU, and a run is
claimed only when the memory its estimate needs fits beside the runs already on that GPU; until then it stays
queued with the reason ("waiting for room on GPU 0 ..."). The check and the claim happen under a file lock per GPU,
so two processes never both take the last room.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunedeck_jobs.placement import need_bytes
from tunedeck_state import runs as run_service
from tunedeck_state.db import session_scope
from tunedeck_state.models import Run, RunStatus
from tunedeck_state.settings import get_settings
from worker import capacity

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


def _record_slot(session: Session, run_id: int, slot: int | None) -> None:
    declared = capacity.DECLARED
    if declared is None or slot is None or not declared.gpus:
        return
    gpu = declared.gpus[slot]
    run = session.get(Run, run_id, populate_existing=True)
    if run is not None:
        run.details = {
            **(run.details or {}),
            "gpu_slot": slot,
            "gpu_name": gpu.get("name"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }


def _in_use(session: Session, worker: str, slot: int, margin: float) -> tuple[int, list[int]]:
    """Memory the runs already on this GPU need (their estimates with the margin), and their ids."""
    used, ids = 0, []
    rows = session.execute(
        select(Run.id, Run.details).where(Run.status == RunStatus.running.value, Run.worker == worker)
    ).all()
    for run_id, details in rows:
        if (details or {}).get("gpu_slot") != slot:
            continue
        ids.append(run_id)
        need = need_bytes((details or {}).get("memory_estimate"), margin)
        used += need if need is not None else 1 << 62  # without an estimate a run may take the whole GPU
    return used, ids


def claim(run_id: int, attempt: int, worker: str) -> bool:
    """Claim the run for this process (and its GPU). False when it is no longer this attempt's to take."""
    declared, slot = capacity.DECLARED, capacity.SLOT
    if declared is None or slot is None or declared.runs_per_gpu <= 1:
        with session_scope() as session:
            claimed = run_service.claim_run(session, run_id, attempt, worker)
            if claimed:
                _record_slot(session, run_id, slot)
        return claimed
    margin = get_settings().placement_margin_fraction
    gpu = declared.gpus[slot]
    room = int(gpu.get("memory_free_bytes") or gpu.get("memory_total_bytes") or 0)
    lock_path = Path(tempfile.gettempdir()) / f"tunedeck-gpu-{re.sub(r'[^A-Za-z0-9]+', '-', worker)}-{slot}.lock"
    noted = False
    while True:
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            with session_scope() as session:
                run = session.get(Run, run_id)
                if run is None or run.status != RunStatus.queued.value or run.attempt != attempt:
                    return False
                need = need_bytes((run.details or {}).get("memory_estimate"), margin)
                used, others = _in_use(session, worker, slot, margin)
                if not others or (need is not None and used + need <= room):
                    claimed = run_service.claim_run(session, run_id, attempt, worker)
                    if claimed:
                        _record_slot(session, run_id, slot)
                    return claimed
                if not noted:
                    needed = f"{need / 2**30:.2f} GiB" if need is not None else "an unknown amount (no estimate)"
                    run.wait_reason = (
                        f"waiting for room on GPU {slot} of {worker}: needs {needed}, runs "
                        f"{', '.join(str(i) for i in others)} already hold their estimates there "
                        f"({room / 2**30:.2f} GiB in all)"
                    )
                    noted = True
        time.sleep(POLL_SECONDS)
