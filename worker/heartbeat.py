"""Each worker process announces itself every few seconds (the `workers` table): its host, its GPUs and their
memory (NVML or nvidia-smi; CPU cores and RAM), its ML stack's versions, the queues it consumes and the GPU memory it
offers a run (worker/capacity.py). The Workers page, GET /api/workers, /metrics and placement read it. Runs in the
worker's main process, in a thread; NVML is asked instead of torch so the main process never initialises CUDA
before forking."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from worker import capacity, fork_safety

log = logging.getLogger(__name__)
_state: dict[str, Any] = {}


def gpu_memory() -> list[dict[str, Any]]:
    """Per GPU: index, name, total, used and free memory in bytes (empty without a GPU)."""
    return capacity.detect_gpus()


def _beat_once(name: str, queues: str, all_queues: list[str], concurrency: int | None) -> None:
    from tunedeck_state import workers as worker_service
    from tunedeck_state.db import session_scope

    declared = capacity.DECLARED if capacity.DECLARED is not None and capacity.DECLARED.name == name else None
    details = capacity.heartbeat_details(declared, all_queues, concurrency)
    with session_scope() as session:
        worker_service.beat(
            session,
            name,
            queues,
            os.getpid(),
            details,
            host=capacity.host(),
            capacity_bytes=declared.capacity_bytes if declared else None,
        )


def _loop(
    name: str, queues: str, all_queues: list[str], concurrency: int | None, interval: float, stop: threading.Event
) -> None:
    failures = 0
    while True:
        try:
            with fork_safety.GUARD:  # no pool process is forked while this thread is inside SQLite
                _beat_once(name, queues, all_queues, concurrency)
            failures = 0
        except Exception as exc:  # the database may be briefly unavailable; the next beat retries
            failures += 1
            if failures == 1:
                log.exception("worker heartbeat failed")
            elif failures % 60 == 0:
                log.warning("worker heartbeat still failing: %s", str(exc).splitlines()[0][:200])
        if stop.wait(interval):
            return


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    from tunedeck_jobs.names import QUEUES
    from tunedeck_state.settings import get_settings

    name = str(getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}")
    try:
        all_queues = sorted(q.name for q in sender.task_consumer.queues)
    except Exception:
        all_queues = []
    # The roles it serves (training, service, quick); every queue it consumes goes into details.queues.
    roles = [q for q in all_queues if q in QUEUES.values()]
    if QUEUES["service"] in roles and QUEUES["quick"] in roles:
        roles.remove(QUEUES["quick"])  # a service worker answers quick calls too: that is what "service" means
    if QUEUES["training"] not in roles and any(q.startswith(QUEUES["training"] + ".") for q in all_queues):
        roles.append(QUEUES["training"])  # a --multi-gpu worker: only its own queue and gpus-N, still a trainer
    queues = ",".join(sorted(roles))
    concurrency = getattr(getattr(sender, "controller", None), "concurrency", None)
    stop = threading.Event()
    thread = threading.Thread(
        target=_loop,
        args=(name, queues, all_queues, concurrency, get_settings().heartbeat_seconds, stop),
        name="worker-heartbeat",
        daemon=True,
    )
    _state.update(name=name, stop=stop, thread=thread, pid=os.getpid())
    thread.start()


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    stop = _state.get("stop")
    if stop is None or _state.get("pid") != os.getpid():
        return
    stop.set()
    try:
        from tunedeck_state import workers as worker_service
        from tunedeck_state.db import session_scope

        with session_scope() as session:
            worker_service.forget(session, _state["name"], os.getpid())
    except Exception:
        log.exception("could not remove the worker's heartbeat")
