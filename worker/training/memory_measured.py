"""Measured memory: what a run really used.

`MemoryProbe` is the Trainer callback that measures a run: the exact bytes of parameters, gradients and optimizer
state after the first optimizer step, and at the end the peaks (CUDA allocator, NVML, process RSS). `LivePeak` is
the CPU's counterpart of the CUDA allocator's peak (the profile uses it too, on one activation function).
"""

from __future__ import annotations

import resource
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.resources import has_cuda


class LivePeak:
    """torch.cuda.max_memory_allocated for CPU tensors: the bytes of every tensor storage alive at once, followed
    through a dispatch mode (each op's outputs) and weak references (a storage freed). No allocator rounding."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_map_only
        from torch.utils.weak import WeakIdKeyDictionary

        self.current = 0
        self.peak = 0
        self._sizes: Any = WeakIdKeyDictionary()
        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                tree_map_only(torch.Tensor, tracker.track, out)
                return out

        self._mode = _Mode()

    def track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu" or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        if storage in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int) -> None:
        self.current -= size

    def track_module(self, module: nn.Module) -> None:
        """Count what already exists: parameters, buffers and 4-bit weights' quantization constants."""
        params = [*module.parameters(), *module.buffers()]
        for tensor in [*params, *_quantization_constants(params)]:
            self.track(tensor)

    def __enter__(self) -> LivePeak:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def _unique_bytes(tensors: Any) -> int:
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            continue
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key[1] == 0:  # empty storages share address 0
            key = (key[0], id(tensor))
        seen[key] = storage.nbytes()
    return sum(seen.values())


def state_bytes(model: nn.Module, optimizer: Any) -> dict[str, int]:
    """Exact bytes held by parameters, gradients and optimizer state (shared storage counted once)."""
    params = list(model.parameters())
    inner = getattr(optimizer, "optimizer", optimizer)
    optimizer_tensors = [
        value for state in getattr(inner, "state", {}).values() for value in state.values() if torch.is_tensor(value)
    ]
    trainable = [p for p in params if p.requires_grad]
    return {
        # 4-bit weights (bitsandbytes Params4bit) keep their quantization constants beside the packed values
        "params_bytes": _unique_bytes([*params, *_quantization_constants(params)]),
        "buffers_bytes": _unique_bytes(list(model.buffers())),
        "trainable_bytes": _unique_bytes(trainable),
        "grads_bytes": _unique_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_bytes": _unique_bytes(optimizer_tensors),
        "trainable_params": sum(p.numel() for p in {id(p): p for p in trainable}.values()),
    }


def _quantization_constants(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    constants: list[torch.Tensor] = []
    for param in params:
        state = getattr(param, "quant_state", None)
        while state is not None:
            constants.extend(value for value in vars(state).values() if torch.is_tensor(value))
            state = getattr(state, "state2", None)
    return constants


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def nvml_used_bytes() -> int | None:
    """Device memory in use as the driver sees it (includes paged optimizer state and the CUDA context)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        pynvml.nvmlShutdown()
        return used
    except Exception:  # NVML missing or not permitted: the PyTorch counters still stand
        return None


def peaks() -> dict[str, Any]:
    if has_cuda():
        return {
            "device": "cuda",
            "cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated()),
            "cuda_max_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "nvml_used_bytes": nvml_used_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
        }
    return {"device": "cpu", "peak_rss_bytes": peak_rss_bytes()}


class MemoryProbe(TrainerCallback):
    """Measures state bytes right after the first optimizer step (before gradients are cleared) and the peaks."""

    def __init__(self, report: Any) -> None:
        self.report = report
        self.measured: dict[str, Any] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if has_cuda():
            torch.cuda.reset_peak_memory_stats()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if "params_bytes" in self.measured or kwargs.get("model") is None:
            return
        self.measured.update(state_bytes(kwargs["model"], kwargs.get("optimizer")))
        self.measured["measured_at"] = "after the first optimizer step"
        self.measured.update(peaks())
        self.report(dict(self.measured))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if "params_bytes" not in self.measured:
            return
        self.measured.update(peaks())
        self.measured["steps"] = state.global_step
        self.report(dict(self.measured))
