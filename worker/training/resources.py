"""Which device trains, and how much memory the process uses."""

from __future__ import annotations

import platform

import psutil
import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def memory_metrics() -> dict[str, float]:
    """Peak CUDA memory on a GPU; the process's resident set size on a CPU."""
    if has_cuda():
        return {
            "memory_bytes": float(torch.cuda.max_memory_allocated()),
            "memory_reserved_bytes": float(torch.cuda.max_memory_reserved()),
        }
    return {"memory_bytes": float(psutil.Process().memory_info().rss)}


def device_description() -> dict[str, object]:
    if has_cuda():
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "gpu": props.name, "gpu_memory_bytes": props.total_memory}
    return {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": psutil.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
    }
