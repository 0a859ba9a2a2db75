"""Optimizer state and the scratch memory of its step, per optimizer (torch AdamW, bitsandbytes, SGD, Adafactor)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.units import BNB_MIN_8BIT_SIZE, dtype_bytes


@dataclass(frozen=True)
class OptimizerMemory:
    state: int
    scratch: int
    formula: str
    scratch_formula: str
    notes: tuple[str, ...] = ()


def optimizer_memory(facts: ModelFacts, optim: str, run: RunShape) -> OptimizerMemory:
    """Optimizer state (bytes) and the step's scratch memory, with their formulas."""
    trainable = [g for g in facts.groups if g.trainable]
    params = sum(g.params for g in trainable)
    tensors = sum(g.tensors for g in trainable)
    state_bytes = sum(g.params * dtype_bytes(g.dtype) for g in trainable)
    largest = max((g.largest_tensor * dtype_bytes(g.dtype) for g in trainable), default=0)
    if optim in ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw"):
        fused = optim == "adamw_torch_fused"
        # torch keeps each parameter's step count as a 0-d fp32 tensor on the CPU (on the GPU only when fused).
        steps = 4 * tensors if run.device == "cpu" or fused else 0
        formula = f"AdamW: 2 moments × {params:,} trainable params at their dtype (fp32: 8 B/param)"
        if steps:
            formula += f" + {tensors} step counters × 4 B"
        if run.device != "cuda":
            scratch = 2 * largest
            scratch_formula = "the per-parameter temporaries of the AdamW update (largest parameter, twice)"
        elif fused:
            scratch, scratch_formula = 0, "none: the fused kernel updates in place"
        else:
            scratch = state_bytes
            scratch_formula = "foreach AdamW's temporary second-moment square roots (one per trainable parameter)"
        return OptimizerMemory(2 * state_bytes + steps, scratch, formula, scratch_formula)
    if optim in ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"):
        big = sum(g.params for g in trainable if g.largest_tensor >= BNB_MIN_8BIT_SIZE)
        small = params - big
        formula = (
            f"8-bit AdamW: 2 × {big:,} params × (1 B + fp32 scale per 256) + 2 × {small:,} params of tensors "
            f"under {BNB_MIN_8BIT_SIZE} values × 4 B"
        )
        notes = (
            (
                "paged optimizer state lives in CUDA unified memory: torch.cuda.max_memory_allocated does not "
                "count it, NVML does; under memory pressure it is paged out to CPU RAM",
            )
            if optim.startswith("paged")
            else ()
        )
        size = int(2 * big * (1 + 4 / 256)) + 2 * small * 4
        return OptimizerMemory(size, 0, formula, "none: bitsandbytes updates in place", notes)
    if optim == "paged_adamw_32bit":
        return OptimizerMemory(
            2 * params * 4,
            0,
            f"paged 32-bit AdamW: 2 × {params:,} params × 4 B (in CUDA unified memory)",
            "none: bitsandbytes updates in place",
            ("paged optimizer state is not counted by torch.cuda.max_memory_allocated (NVML sees it)",),
        )
    if optim == "sgd":
        return OptimizerMemory(0, 0, "SGD without momentum keeps no state", "none")
    if optim == "adafactor":
        size = int(params * 4 * 2 / max(1, math.sqrt(params / max(1, tensors))))
        formula = "Adafactor: factored second moments (row + column sums per matrix), no first moment"
        return OptimizerMemory(size, largest, formula, "one update-sized temporary (largest parameter)")
    return OptimizerMemory(
        2 * state_bytes,
        state_bytes,
        f"{optim}: assumed 2 states per trainable parameter",
        "assumed one temporary per trainable parameter",
    )
