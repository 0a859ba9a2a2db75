"""One process of a multi-GPU run: `python -m torch.distributed.run ... -m worker.distributed_train RUN ATTEMPT
[--resume CHECKPOINT]`, started by worker/distributed_launch.py in a worker's task.

Every process reads the run's spec from the database and trains with the same `train()` a single-process run uses;
the Trainer shards the batches (DDP, or FSDP for full fine-tuning) and torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK) tells each process who it is. Rank 0 reports through a DatabaseReporter (metrics, log, progress,
heartbeat; it also learns of a cancel, which the reporter callback's all-reduce hands to every process so all stop
at the same step); the others report nothing. Each process writes its result or its error for the task
(distributed_launch.result_path) and dies with torchrun.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

import torch

from runspec import RunSpec
from tunedeck_state import runs as run_service
from tunedeck_state.db import session_scope
from tunedeck_state.settings import get_settings
from tunedeck_state.settings_checks import heartbeat_interval
from worker.attempts import fault_callbacks
from worker.distributed_launch import result_path, result_payload, write_result
from worker.reporting import DatabaseReporter
from worker.training.distributed import is_main_process, local_rank, rank
from worker.training.errors import TrainingError
from worker.training.loading import set_policy as set_source_policy
from worker.training.loop import train
from worker.training.reporter import failures_logged

log = logging.getLogger(__name__)


class SilentReporter:
    """The Reporter of every process but rank 0: it says nothing and never asks to stop on its own (rank 0's
    cancel reaches it through the all-reduce in ReporterCallback.on_step_end)."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def progress(self, step: int, max_steps: int) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def details(self, values: dict[str, object]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def __enter__(self) -> SilentReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def die_with_parent() -> None:
    """SIGKILL when torchrun goes (Linux): a rank must not train on alone after its launcher was killed."""
    parent = os.getppid()
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.distributed_train")
    parser.add_argument("run_id", type=int)
    parser.add_argument("attempt", type=int)
    parser.add_argument("--resume", type=Path, default=None, help="a complete checkpoint of this run")
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank()}] %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    set_source_policy(settings.source_policy())
    if torch.cuda.is_available():
        # Before anything touches CUDA: this process's GPU (also where a 4-bit QLoRA base is loaded).
        torch.cuda.set_device(local_rank())
    with session_scope() as session:
        run = run_service.get_run(session, args.run_id)
        spec = RunSpec.model_validate(run.spec)
        estimate = (run.details or {}).get("memory_estimate")
    run_dir = settings.runs_dir / f"run-{args.run_id}"
    where = result_path(run_dir, args.attempt, rank())
    reporter: DatabaseReporter | SilentReporter = (
        DatabaseReporter(args.run_id, heartbeat_interval(settings), attempt=args.attempt)
        if is_main_process()
        else SilentReporter()
    )
    try:
        with reporter, fault_callbacks(settings) as callbacks, failures_logged(reporter):
            result = train(
                spec,
                run_dir,
                reporter,
                resume_from=args.resume,
                callbacks=callbacks,
                memory_estimate=estimate,
            )
    except TrainingError as exc:
        write_result(where, {"ok": False, "kind": "training", "error": str(exc)})
        return 1
    except Exception as exc:
        log.exception("training failed")
        write_result(where, {"ok": False, "kind": "unexpected", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:
        _leave_process_group()
    write_result(where, result_payload(result))
    return 0


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
