"""Launching a run on several GPUs of one machine (training.num_gpus > 1), from the Celery task's process.

The task process does not train: it starts `python -m torch.distributed.run --standalone --nproc_per_node N -m
worker.distributed_train <run> <attempt> [--resume <checkpoint>]` (torchrun) on the worker's first N GPUs, waits for
it, and turns what the processes left behind into the same TrainingResult (or error) a single-process run gives:

* each process writes `result-rank<R>.json` into `<run dir>/distributed-<attempt>/` as it ends: the result (rank 0)
  or its error, a TrainingError's text kept apart from an unexpected error's;
* their output (torchrun's and every rank's) goes to `output.log` there, whose last lines explain a crash that left
  no result (a process killed by the kernel, a failed start).

Rank 0 reports metrics, logs, progress and heartbeats itself (worker/distributed_train.py); this process keeps its
own reporter for the run's heartbeat while the processes start, and for its own lines.

The processes never outlive the task: torchrun runs in a session of its own, dies with this process
(PR_SET_PDEATHSIG, Linux), and is stopped (SIGTERM to its group, then SIGKILL) whenever the wait ends without it
having exited; each rank dies with torchrun in turn (worker/distributed_train.py). Torchrun stops the other ranks
when one fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from runspec import RunSpec
from worker import capacity
from worker.attempts import AttemptSetup
from worker.reporting import DatabaseReporter
from worker.training.distributed import FSDP_NEEDS_CUDA
from worker.training.errors import TrainingError
from worker.training.loop import TrainingResult

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
#: After a cancel (or a superseded attempt), how long the processes may take to stop at a step's end, save a
#: checkpoint and the adapter, before they are stopped by force.
STOP_GRACE_SECONDS = 300.0
#: After SIGTERM to torchrun's group: how long it may take to stop its processes (it waits 30 s itself).
TERMINATE_SECONDS = 40.0
OUTPUT_TAIL_LINES = 20

#: Runs `python <args>` with PR_SET_PDEATHSIG set, so torchrun gets SIGTERM when the task process dies, however it
#: dies. argv: the parent's pid, then Python's arguments. Exits at once if the parent is already gone.
_EXEC_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: the task's finally still stops it
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class DistributedFailure(Exception):
    """The processes of a multi-GPU run failed without a TrainingError: an unexpected error or a crash. The message
    is shown as it is (with the rank and the last lines of output where they help); the run may be retried."""


def output_dir(run_dir: Path, attempt: int) -> Path:
    return run_dir / f"distributed-{attempt}"


def result_path(run_dir: Path, attempt: int, rank: int) -> Path:
    return output_dir(run_dir, attempt) / f"result-rank{rank}.json"


def write_result(path: Path, payload: dict[str, Any]) -> None:
    """What one process leaves for the task (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    os.replace(tmp, path)


def result_payload(result: TrainingResult) -> dict[str, Any]:
    return {"ok": True, "result": {**asdict(result), "artifact_dir": str(result.artifact_dir)}}


def _result_from(payload: dict[str, Any]) -> TrainingResult:
    values = dict(payload["result"])
    values["artifact_dir"] = Path(values["artifact_dir"])
    return TrainingResult(**values)


def launch_command(run_id: int, attempt: int, processes: int, resume_from: Path | None) -> list[str]:
    command = [
        sys.executable,
        "-c",
        _EXEC_WITH_PARENT,
        str(os.getpid()),
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "worker.distributed_train",
        str(run_id),
        str(attempt),
    ]
    if resume_from is not None:
        command += ["--resume", str(resume_from)]
    return command


def train_distributed(
    spec: RunSpec, run_id: int, attempt: int, run_dir: Path, reporter: DatabaseReporter, setup: AttemptSetup
) -> TrainingResult:
    """Train the run on training.num_gpus processes of this worker's GPUs; raises TrainingError (the spec's fault,
    as the processes said) or DistributedFailure (anything else)."""
    processes = spec.training.num_gpus
    declared = capacity.DECLARED
    if declared is None or not declared.multi_gpu or len(declared.gpus) < processes:
        have = f"{len(declared.gpus)} GPU(s)" if declared is not None else "no declared GPUs"
        kind = "a multi-GPU worker" if declared is not None and declared.multi_gpu else "not a --multi-gpu worker"
        _refuse(
            reporter,
            f"training.num_gpus={processes}: this worker has {have} and is {kind}; runs on several GPUs need a worker "
            f"started with `tunedeck worker --multi-gpu` on a machine with {processes} or more GPUs",
        )
    if spec.training.distributed == "fsdp" and declared.fake:
        _refuse(reporter, FSDP_NEEDS_CUDA)  # the processes would refuse it too (check_processes), after starting
    folder = output_dir(run_dir, attempt)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    visible = declared.visible_devices(processes)
    if visible is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the indices are NVML's (PCI bus order), see capacity.pin_process
        env["CUDA_VISIBLE_DEVICES"] = visible
    reporter.details(
        {
            "cuda_visible_devices": visible,
            "gpu_name": declared.gpu_name,
            "distributed_launch": {"processes": processes, "strategy": spec.training.distributed},
        }
    )
    reporter.log(
        f"launching {processes} training processes ({spec.training.distributed}, torchrun) on "
        + (f"GPUs {visible}" if visible is not None else f"the CPU ({len(declared.gpus)} fake GPUs declared)")
    )
    # Written now, by this process: from here on rank 0 writes the run's details, and two writers of that JSON
    # column would overwrite each other's keys.
    reporter.flush()
    command = launch_command(run_id, attempt, processes, setup.resume_from)
    with open(folder / "output.log", "ab") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            code = _wait(process, reporter)
        finally:
            if process.poll() is None:
                _stop(process)
    return _collect(run_dir, attempt, processes, code, reporter)


def _refuse(reporter: DatabaseReporter, message: str) -> NoReturn:
    reporter.log(f"error: {message}")
    raise TrainingError(message)


def _wait(process: subprocess.Popen[bytes], reporter: DatabaseReporter) -> int:
    stop_seen: float | None = None
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if reporter.should_stop() and stop_seen is None:
            stop_seen = time.monotonic()  # rank 0 sees it too and stops every process at the step's end
        if stop_seen is not None and time.monotonic() - stop_seen > STOP_GRACE_SECONDS:
            reporter.log(f"the training processes did not stop within {STOP_GRACE_SECONDS:.0f} s: stopping them")
            _stop(process)
            return process.wait()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun's group (it stops its processes), SIGKILL if it is still there after a while."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_SECONDS), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _collect(run_dir: Path, attempt: int, processes: int, code: int, reporter: DatabaseReporter) -> TrainingResult:
    results: dict[int, dict[str, Any]] = {}
    for rank in range(processes):
        path = result_path(run_dir, attempt, rank)
        try:
            results[rank] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    main = results.get(0)
    if main is not None and main.get("ok"):
        return _result_from(main)
    failed = sorted((rank for rank, payload in results.items() if not payload.get("ok")), key=lambda r: (r != 0, r))
    if failed:
        rank = failed[0]
        payload = results[rank]
        where = "" if rank == 0 else f" (process {rank} of {processes})"
        if rank != 0:  # rank 0 wrote its own error into the run's log
            reporter.log(f"error{where}: {payload.get('error')}")
        if payload.get("kind") == "training":
            raise TrainingError(str(payload.get("error")))
        raise DistributedFailure(f"{payload.get('error')}{where}")
    tail = _tail(output_dir(run_dir, attempt) / "output.log")
    message = (
        f"the {processes} training processes exited with code {code} without a result (killed, out of memory, or "
        f"failed to start); last lines of their output:\n{tail}"
    )
    reporter.log(f"error: {message}")
    raise DistributedFailure(message)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(lines[-OUTPUT_TAIL_LINES:]) or "(no output)"
