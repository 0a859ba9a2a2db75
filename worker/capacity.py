"""What a worker declares about itself: its GPUs (NVML, else nvidia-smi), or its CPU cores and RAM, the versions of
its ML stack, and the GPU memory it offers one run (its capacity, which decides the memory-class queues it consumes:
tunedeck_jobs/placement.py).

Asked in the worker's main process without torch, so CUDA is never initialised before the pool forks. Each pool
process is then pinned to one GPU with CUDA_VISIBLE_DEVICES (`pin_process`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

GIB = 2**30
VERSIONED = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")
FAKE_GPU_NAME = "Fake GPU"  # a CPU worker declaring TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB (tests)


def _nvml_gpus() -> list[dict[str, Any]] | None:
    """Per GPU from NVML (pynvml, from the nvidia-ml-py package); None when NVML is not there."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU-only machine
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_total_bytes": int(memory.total),
                    "memory_used_bytes": int(memory.used),
                    "memory_free_bytes": int(memory.free),
                }
            )
        return gpus
    except Exception:
        log.exception("NVML failed; falling back to nvidia-smi")
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvidia_smi_gpus() -> list[dict[str, Any]]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        output = subprocess.run(
            [binary, "--query-gpu=index,name,memory.total,memory.used,memory.free", "--format=csv,noheader,nounits"],
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
        if len(parts) != 5:
            continue
        try:
            gpus.append(
                {
                    "index": int(parts[0]),
                    "name": parts[1],
                    "memory_total_bytes": int(float(parts[2]) * 2**20),
                    "memory_used_bytes": int(float(parts[3]) * 2**20),
                    "memory_free_bytes": int(float(parts[4]) * 2**20),
                }
            )
        except ValueError:
            continue
    return gpus


def visible_indices() -> list[int] | None:
    """The GPU indices CUDA_VISIBLE_DEVICES allows (None: all). Only numeric lists are understood."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        return None


def detect_gpus() -> list[dict[str, Any]]:
    """The GPUs this worker may use (NVML, else nvidia-smi; limited to CUDA_VISIBLE_DEVICES), or a fake one."""
    from tunedeck_state.settings import get_settings

    settings = get_settings()
    fake = settings.worker_fake_gpu_memory_gib
    if fake:
        size = int(fake * GIB)
        return [
            {
                "index": index,
                "name": FAKE_GPU_NAME,
                "memory_total_bytes": size,
                "memory_used_bytes": 0,
                "memory_free_bytes": size,
                "fake": True,
            }
            for index in range(settings.worker_fake_gpu_count)
        ]
    gpus = _nvml_gpus()
    if gpus is None:
        gpus = _nvidia_smi_gpus()
    allowed = visible_indices()
    if allowed is not None:
        order = {index: position for position, index in enumerate(allowed)}
        gpus = sorted((g for g in gpus if g["index"] in order), key=lambda g: order[g["index"]])
    return gpus


def cpu_info() -> dict[str, Any]:
    import psutil

    memory = psutil.virtual_memory()
    return {
        "cores": os.cpu_count() or 1,
        "memory_total_bytes": int(memory.total),
        "memory_available_bytes": int(memory.available),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@dataclass
class Declared:
    """What a training worker offers, decided once when it starts (its queues follow from it)."""

    name: str
    gpus: list[dict[str, Any]] = field(default_factory=list)
    runs_per_gpu: int = 1
    queues: list[str] = field(default_factory=list)
    concurrency: int = 1
    #: `tunedeck worker --multi-gpu`: one run at a time on all its GPUs (torchrun), no pinning per process.
    multi_gpu: bool = False

    @property
    def capacity_bytes(self) -> int | None:
        """GPU memory one run may use: the smallest free memory of its GPUs at start (None without GPUs)."""
        if not self.gpus:
            return None
        return min(int(g.get("memory_free_bytes") or g.get("memory_total_bytes") or 0) for g in self.gpus)

    @property
    def gpu_name(self) -> str | None:
        return str(self.gpus[0]["name"]) if self.gpus else None

    @property
    def fake(self) -> bool:
        return any(g.get("fake") for g in self.gpus)

    def visible_devices(self, count: int) -> str | None:
        """CUDA_VISIBLE_DEVICES for a run on this worker's first `count` GPUs (None for fake GPUs: the CPU)."""
        if self.fake or len(self.gpus) < count:
            return None
        return ",".join(str(g["index"]) for g in self.gpus[:count])


#: Set by `tunedeck worker` in the worker's main process before the pool forks (read by the heartbeat, pinning).
DECLARED: Declared | None = None
#: In a pool process: the position of its GPU in DECLARED.gpus.
SLOT: int | None = None


class MultiGpuRefused(ValueError):
    """`--multi-gpu` on a worker with fewer than two GPUs."""


def declare(name: str, *, training: bool, runs_per_gpu: int, multi_gpu: bool = False) -> Declared:
    """What this worker offers. `multi_gpu`: one run at a time on all its GPUs (needs two or more; raises
    MultiGpuRefused otherwise)."""
    from tunedeck_jobs.placement import training_queues

    global DECLARED
    gpus = detect_gpus() if training else []
    if multi_gpu and (not training or len(gpus) < 2):
        raise MultiGpuRefused(
            f"--multi-gpu trains one run on several GPUs of this machine, and this worker has {len(gpus)} "
            f"{'GPU' if len(gpus) == 1 else 'GPUs'}{'' if training else ' (it does not consume the training queue)'}; "
            "start it on a machine with two or more GPUs (tests declare fake ones: TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB "
            "and TUNEDECK_WORKER_FAKE_GPU_COUNT)"
        )
    declared = Declared(name=name, gpus=gpus, runs_per_gpu=1 if multi_gpu else runs_per_gpu, multi_gpu=multi_gpu)
    if training:
        declared.queues = training_queues(
            name, declared.capacity_bytes, declared.gpu_name, multi_gpu_count=len(gpus) if multi_gpu else None
        )
    DECLARED = declared
    return declared


def host() -> str:
    return socket.gethostname()


def heartbeat_details(declared: Declared | None, queues: list[str], concurrency: int | None) -> dict[str, Any]:
    """The `details` of a worker's heartbeat row: what the Workers page and GET /api/workers show."""
    from tunedeck_state.settings import get_settings
    from tunedeck_state.storage import read_storage_id

    gpus = detect_gpus()
    return {
        "data_dir": str(get_settings().resolved_data_dir),
        "storage_id": read_storage_id(),
        "gpus": gpus,
        "gpu_count": len(gpus),
        "fake_gpu": bool(declared and declared.fake),
        "cpu": cpu_info(),
        "versions": versions(),
        "queues": queues,
        "concurrency": concurrency,
        "runs_per_gpu": declared.runs_per_gpu if declared else 1,
        "multi_gpu": bool(declared and declared.multi_gpu),
    }


def pin_process() -> int | None:
    """In a fresh pool process: take the GPU of this process's slot (pool index modulo the GPU count), so a worker
    with N GPUs runs N trainings at once, one per GPU. Returns the slot."""
    global SLOT
    declared = DECLARED
    if declared is None or not declared.gpus or declared.multi_gpu:
        return None  # a multi-GPU worker's run sees all its GPUs (worker/distributed_launch.py picks them)
    try:
        from billiard.process import current_process

        index = int(getattr(current_process(), "index", 0) or 0)
    except Exception:
        index = 0
    SLOT = index % len(declared.gpus)
    gpu = declared.gpus[SLOT]
    if not gpu.get("fake"):
        # NVML numbers GPUs by PCI bus; CUDA's default order (fastest first) may differ, so make CUDA count alike.
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu["index"])
    return SLOT
