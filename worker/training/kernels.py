"""Which kernels a run trains with: the attention implementation (training.attn_implementation) and Liger's fused
Triton kernels (training.liger_kernel, applied by the Trainer through transformers' own `use_liger_kernel`).

`check_kernels` runs before anything is loaded and refuses what this worker cannot run at all (FlashAttention or
Liger asked for without a CUDA GPU or without the package); `plan_kernels` then decides on the model's config
(which attention implementations its transformers class has, whether liger-kernel knows its architecture) and
refuses an explicit choice the model cannot take. `auto` never fails: it falls back, and says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.util import find_spec
from typing import Any

import torch

from runspec import RunSpec
from runspec.precision import ResolvedDtypes
from worker.training.errors import TrainingError
from worker.training.resources import has_cuda

FLASH_INSTALL = "pip install flash-attn --no-build-isolation"
LIGER_INSTALL = "pip install 'tunedeck[gpu]', which adds liger-kernel"


@dataclass(frozen=True)
class Kernels:
    #: for from_pretrained; None: transformers' default for the model (sdpa where it has it, else eager)
    attn_implementation: str | None
    #: the attention that runs
    attention: str
    attention_reason: str
    liger: bool
    liger_reason: str

    def details(self) -> dict[str, Any]:
        return asdict(self)


def flash_attention_problem() -> str | None:
    """Why this worker cannot run FlashAttention 2, or None."""
    if not has_cuda():
        return "FlashAttention needs a CUDA GPU and this worker has none"
    if find_spec("flash_attn") is None:
        return f"the flash-attn package is not installed on this worker ({FLASH_INSTALL})"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"FlashAttention 2 needs a GPU of compute capability 8.0 or newer and this worker's is {major}.{minor}"
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return "transformers cannot use this worker's flash-attn package (too old, or built for another CUDA)"
    return None


def liger_problem() -> str | None:
    """Why this worker cannot run Liger's kernels, or None."""
    if not has_cuda():
        return "Liger's kernels are Triton kernels for CUDA GPUs and this worker has none"
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():
        return f"the liger-kernel package (0.3.0 or newer) is not installed on this worker ({LIGER_INSTALL})"
    return None


def check_kernels(spec: RunSpec) -> None:
    """Fail at once, before loading anything, when the spec asks for a kernel this worker cannot run."""
    training = spec.training
    if training.attn_implementation == "flash_attention_2" and (problem := flash_attention_problem()):
        raise TrainingError(
            f"training.attn_implementation=flash_attention_2: {problem}; use attn_implementation=auto or sdpa"
        )
    if training.liger_kernel == "on" and (problem := liger_problem()):
        raise TrainingError(f"training.liger_kernel=on: {problem}; use liger_kernel=auto or off")


def plan_kernels(spec: RunSpec, config: Any, dtypes: ResolvedDtypes) -> Kernels:
    """The kernels for this run on this model (its config) and worker; TrainingError for an explicit choice the
    model cannot take."""
    attn, attention, attention_reason = _plan_attention(spec.training.attn_implementation, config, dtypes)
    liger, liger_reason = _plan_liger(spec.training.liger_kernel, config)
    return Kernels(attn, attention, attention_reason, liger, liger_reason)


def _model_class(config: Any) -> Any:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, ValueError):
        return None  # custom code: its own class decides when it is loaded


def _plan_attention(setting: str, config: Any, dtypes: ResolvedDtypes) -> tuple[str | None, str, str]:
    cls = _model_class(config)
    kind = getattr(config, "model_type", None) or type(config).__name__
    has_sdpa = cls is None or bool(getattr(cls, "_supports_sdpa", False))
    has_flash = cls is None or bool(getattr(cls, "_supports_flash_attn", False))
    default = "sdpa" if has_sdpa else "eager"
    if setting == "eager":
        return "eager", "eager", "training.attn_implementation=eager"
    if setting == "sdpa":
        if not has_sdpa:
            raise TrainingError(
                f"training.attn_implementation=sdpa: transformers has no sdpa attention for {kind} models; use "
                "attn_implementation=auto (eager for this model) or eager"
            )
        return "sdpa", "sdpa", "training.attn_implementation=sdpa"
    problem = flash_attention_problem()  # None for flash_attention_2: check_kernels refused it already
    if problem is None and not has_flash:
        problem = f"transformers has no FlashAttention for {kind} models"
    elif problem is None and dtypes.compute == "float32":
        problem = "FlashAttention computes in bf16 or fp16 and this run computes in fp32 (training.precision)"
    if setting == "flash_attention_2":
        if problem:
            raise TrainingError(
                f"training.attn_implementation=flash_attention_2: {problem}; use attn_implementation=auto or sdpa"
            )
        return "flash_attention_2", "flash_attention_2", "training.attn_implementation=flash_attention_2"
    if problem is None:
        return "flash_attention_2", "flash_attention_2", "auto: flash-attn is installed on this CUDA worker"
    return None, default, f"auto: {default}, not FlashAttention: {problem}"


def liger_model_types() -> frozenset[str]:
    """The model types liger-kernel has kernels for (empty without the package)."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return frozenset()
    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def _plan_liger(setting: str, config: Any) -> tuple[bool, str]:
    if setting == "off":
        return False, "training.liger_kernel=off"
    problem = liger_problem()  # None for on: check_kernels refused it already
    kind = str(getattr(config, "model_type", None) or type(config).__name__)
    if problem is None and kind not in (supported := liger_model_types()):
        shown = ", ".join(sorted(supported)[:20]) + (", …" if len(supported) > 20 else "")
        problem = f"liger-kernel has no kernels for {kind} models (it has: {shown})"
    if setting == "on":
        if problem:
            raise TrainingError(f"training.liger_kernel=on: {problem}; use liger_kernel=auto or off")
        return True, "training.liger_kernel=on"
    if problem:
        return False, f"auto: off: {problem}"
    return True, f"auto: on: liger-kernel is installed on this CUDA worker and has kernels for {kind} models"
