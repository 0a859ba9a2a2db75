"""Each worker process announces itself every few seconds (the `workers` table), with its GPUs' memory where
nvidia-smi tells it, so /metrics can count live workers. Runs in the worker's main process, in a thread;
nvidia-smi is asked instead of torch so the main process never initialises CUDA before forking."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from worker import fork_safety

log = logging.getLogger(__name__)
_state: dict[str, Any] = {}


def gpu_memory() -> list[dict[str, Any]]:
    """Per GPU: name, total and used memory in bytes (empty without nvidia-smi)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        output = subprocess.run(
            [binary, "--query-gpu=index,name,memory.total,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in output.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(
                {
                    "index": int(parts[0]),
                    "name": parts[1],
                    "memory_total_bytes": int(float(parts[2]) * 2**20),
                    "memory_used_bytes": int(float(parts[3]) * 2**20),
                }
            )
        except ValueError:
            continue
    return gpus


def _beat_once(name: str, queues: str) -> None:
    from app.db import session_scope
    from app.services import workers as worker_service

    with session_scope() as session:
        worker_service.beat(session, name, queues, os.getpid(), {"gpus": gpu_memory()})


def _loop(name: str, queues: str, interval: float, stop: threading.Event) -> None:
    failures = 0
    while True:
        try:
            with fork_safety.GUARD:  # no pool process is forked while this thread is inside SQLite
                _beat_once(name, queues)
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
    from app.settings import get_settings

    name = str(getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}")
    try:
        queues = ",".join(sorted(q.name for q in sender.task_consumer.queues))
    except Exception:
        queues = ""
    stop = threading.Event()
    thread = threading.Thread(
        target=_loop, args=(name, queues, get_settings().heartbeat_seconds, stop), name="worker-heartbeat", daemon=True
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
        from app.db import session_scope
        from app.services import workers as worker_service

        with session_scope() as session:
            worker_service.forget(session, _state["name"], os.getpid())
    except Exception:
        log.exception("could not remove the worker's heartbeat")
