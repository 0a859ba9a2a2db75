"""Out of memory, explained: what the run needed, what the device had, and what usually helps."""

from __future__ import annotations

import gc
import resource
from typing import Any

import psutil
import torch

from runspec import RunSpec

#: Phrases of allocator errors that are out-of-memory errors under another exception type.
_OOM_PHRASES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "defaultcpuallocator",
    "cublas_status_alloc_failed",
)
REMEDIES = (
    "a smaller training.batch_size (raise training.gradient_accumulation_steps to keep the effective batch)",
    "a shorter training.max_length",
    "training.gradient_checkpointing = true",
    "QLoRA (LoRA on a 4-bit quantised base model)",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA and CPU allocation failures, also when wrapped in another exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError | torch.OutOfMemoryError):
            return True
        if isinstance(current, RuntimeError) and any(p in str(current).lower() for p in _OOM_PHRASES):
            return True
        current = current.__cause__ or current.__context__
    return False


def describe_out_of_memory(exc: BaseException, spec: RunSpec, facts: dict[str, Any]) -> str:
    """One readable paragraph: out of memory, the estimate, what was available, the remedies."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    parts = [f"out of memory on {_device(exc)}: {first_line}."]
    estimate = estimate_bytes(facts)
    detailed = facts.get("memory_estimate") or {}
    if detailed.get("total_peak_bytes"):
        parts.append(
            f"Estimated peak: {_gib(detailed['total_peak_bytes'])} on {detailed.get('device', 'the device')} "
            f"(batch_size={spec.training.batch_size}, max_length={spec.training.max_length})."
        )
    elif estimate:
        parts.append(
            f"Estimated need: at least {_gib(estimate)} for weights, gradients and optimizer state "
            f"({facts.get('total_params', 0):,} parameters, {facts.get('trainable_params', 0):,} trainable), "
            f"plus activations for batch_size={spec.training.batch_size} × max_length={spec.training.max_length}."
        )
    parts.append(f"Available: {available_memory()}.")
    parts.append("Try " + "; ".join(REMEDIES) + ".")
    return " ".join(parts)


def estimate_bytes(facts: dict[str, Any]) -> int:
    """fp32 weights, plus fp32 gradients and two AdamW moments for the trainable parameters."""
    total = int(facts.get("total_params") or 0)
    trainable = int(facts.get("trainable_params") or 0)
    return 4 * total + (4 + 8) * trainable


def available_memory() -> str:
    if torch.cuda.is_available():
        try:
            free, total = torch.cuda.mem_get_info()
        except RuntimeError:
            return "unknown (the GPU did not answer)"
        name = torch.cuda.get_device_properties(0).name
        peak = torch.cuda.max_memory_allocated()
        return f"{_gib(free)} free of {_gib(total)} on {name} (this run's peak allocation: {_gib(peak)})"
    ram = psutil.virtual_memory()
    text = f"{_gib(ram.available)} of {_gib(ram.total)} RAM free"
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        text += f"; this process is limited to {_gib(soft)} of address space"
    return text


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device(exc: BaseException) -> str:
    on_gpu = isinstance(exc, torch.OutOfMemoryError) or "cuda" in str(exc).lower()
    return "the GPU" if on_gpu else "the CPU"


def _gib(value: float) -> str:
    if value >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    return f"{value / 2**20:.0f} MiB"
