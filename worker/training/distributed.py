"""Training on several processes (one per GPU, or gloo processes on CPU) launched by torchrun.

The Trainer does the data parallelism (DDP, or FSDP when the run asks for it); this module holds what tunedeck adds:
which process reports and saves (rank 0), and stopping every process at the same step when the user cancels.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from runspec import RunSpec
from worker.training.errors import TrainingError


def world_size() -> int:
    """How many processes train this run (torchrun sets WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 reports metrics, writes the log and saves the result; the others only train."""
    return rank() == 0


def any_process_says(flag: bool, device: torch.device) -> bool:
    """True on every process when any of them passed True: a cancel seen by rank 0 stops all ranks at the same step
    (a rank that stopped alone would leave the others waiting in their next gradient all-reduce)."""
    if world_size() <= 1 or not dist.is_available() or not dist.is_initialized():
        return flag
    signal = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(signal, op=dist.ReduceOp.MAX)
    return bool(signal.item())


#: A run with training.distributed=fsdp on a worker that trains on its CPU (fake GPUs in tests, or no CUDA).
FSDP_NEEDS_CUDA = (
    "training.distributed=fsdp needs CUDA GPUs, and this worker trains on its CPU (its GPUs are declared for tests "
    "only, or CUDA is unavailable): use training.distributed=ddp, or a multi-GPU worker with real GPUs"
)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    """Wait for every process (nothing with one process)."""
    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def uses_fsdp(spec: RunSpec) -> bool:
    return world_size() > 1 and spec.training.distributed == "fsdp"


def check_processes(spec: RunSpec) -> None:
    """Before anything loads: the run trains on as many processes as it asked for GPUs, and FSDP only on CUDA."""
    wanted, running = spec.training.num_gpus, world_size()
    if wanted != running:
        raise TrainingError(
            f"training.num_gpus={wanted} but this training runs in {running} process(es): a run on several GPUs is "
            "launched by a worker started with `tunedeck worker --multi-gpu` (worker/distributed_launch.py)"
        )
    if uses_fsdp(spec) and not torch.cuda.is_available():
        raise TrainingError(FSDP_NEEDS_CUDA)


def trainer_arguments(spec: RunSpec) -> dict[str, Any]:
    """TrainingArguments for the run's strategy. DDP needs nothing: the Trainer wraps the model when torchrun started
    several processes. FSDP (full fine-tuning): FSDP2 through Accelerate, each decoder layer (the model's
    `_no_split_modules`) sharded on its own; checkpoints and the saved model gather the full state dict
    (FULL_STATE_DICT), so `Trainer.save_model` writes a normal model.safetensors. Gradient checkpointing becomes
    FSDP's activation checkpointing."""
    if not uses_fsdp(spec):
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "state_dict_type": "FULL_STATE_DICT",
            "activation_checkpointing": spec.training.gradient_checkpointing,
        },
    }


def describe(spec: RunSpec) -> dict[str, Any] | None:
    """details.distributed of a run trained by several processes: how many, over which backend, which strategy."""
    if world_size() <= 1:
        return None
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return {"processes": world_size(), "backend": backend, "strategy": spec.training.distributed}
