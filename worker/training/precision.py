"""The dtypes a run trains in on this worker (the decision is runspec.precision's), checked before anything is
loaded, and the dtypes really used, recorded in run.details["dtypes"]: what was planned, the loaded model's
frozen and trainable parameters by dtype, and the optimizer state's after the first step."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from runspec import RunSpec
from runspec.precision import ResolvedDtypes, resolve_spec_dtypes
from worker.training.errors import TrainingError
from worker.training.resources import has_cuda


def bf16_supported() -> bool:
    return has_cuda() and bool(torch.cuda.is_bf16_supported())


def run_dtypes(spec: RunSpec) -> ResolvedDtypes:
    """The run's dtypes on this worker's device."""
    return resolve_spec_dtypes(spec, cuda=has_cuda(), bf16_supported=bf16_supported())


def check_precision(spec: RunSpec) -> None:
    """Fail at once when this worker cannot compute in the dtype the spec asks for."""
    precision = spec.training.precision
    if precision in ("bf16", "pure_bf16") and has_cuda() and not bf16_supported():
        raise TrainingError(
            f"training.precision={precision} needs a GPU that computes in bf16 (Ampere or newer) and this worker's "
            f"{torch.cuda.get_device_name(0)} does not; use precision=fp16 or auto, or run on a newer GPU"
        )


def dtype_counts(parameters: Any) -> dict[str, int]:
    """Elements per dtype name (a parameter shared by two modules counted once)."""
    counts: Counter[str] = Counter()
    for param in {id(p): p for p in parameters}.values():
        counts[str(param.dtype).removeprefix("torch.")] += param.numel()
    return dict(counts)


def loaded_dtypes(model: Any) -> dict[str, dict[str, int]]:
    params = list(model.parameters())
    return {
        "frozen_params": dtype_counts(p for p in params if not p.requires_grad),
        "trainable_params": dtype_counts(p for p in params if p.requires_grad),
    }


def optimizer_state_dtypes(optimizer: Any) -> dict[str, int]:
    inner = getattr(optimizer, "optimizer", optimizer)
    tensors = [
        value
        for state in getattr(inner, "state", {}).values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0  # not the step counters
    ]
    return dtype_counts(tensors)


class DtypesRecorder(TrainerCallback):
    """run.details["dtypes"]: the plan and the loaded model's dtypes at once, the optimizer state's after the first
    optimizer step."""

    def __init__(self, dtypes: ResolvedDtypes, model: Any, report: Any) -> None:
        self.recorded: dict[str, Any] = {**dtypes.details(), "loaded": loaded_dtypes(model)}
        self.report = report
        self.report({"dtypes": dict(self.recorded)})

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if "optimizer_state" in self.recorded or kwargs.get("optimizer") is None:
            return
        self.recorded["optimizer_state"] = optimizer_state_dtypes(kwargs["optimizer"])
        self.report({"dtypes": dict(self.recorded)})
