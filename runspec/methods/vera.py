"""VeRA (Kopiczko et al. 2024): one pair of frozen random low-rank matrices shared by all layers, plus per-layer
trainable scaling vectors.

ΔW = Λ_b · B · Λ_d · A, where A and B are random, frozen and shared; only the vectors d (size r) and b (size out)
are trained per layer, so a high rank costs few parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.method_terms import MethodMemory, vera_memory
from runspec.methods.base import MethodSpec, ModuleList, peft_targets, target_modules_help


class VeraSpec(MethodSpec):
    name: Literal["vera"] = "vera"
    label = "VeRA"
    summary = "Shared frozen random low-rank matrices with per-layer trainable scaling vectors: LoRA's rank, tiny cost."
    main_fields = ("r", "target_modules")
    trains = "two scaling vectors per target layer (size r and the layer's output size)"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules",)

    r: int = Field(256, ge=1, le=16_384, description="Rank of the shared random matrices (higher than LoRA's).")
    target_modules: ModuleList | None = Field(None, description=target_modules_help())
    vera_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input, in [0, 1).")
    d_initial: float = Field(0.1, gt=0, le=10, description="Initial value of the d scaling vector.")
    projection_prng_key: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of the shared random matrices (saved with the adapter)."
    )

    def peft_config(self) -> Any:
        from peft import TaskType, VeraConfig

        return VeraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            target_modules=peft_targets(self.target_modules),
            vera_dropout=self.vera_dropout,
            d_initial=self.d_initial,
            projection_prng_key=self.projection_prng_key,
            save_projection=True,
        )

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Memory estimate: the rank-r intermediate and the output per layer; autocast copies of the shared A, B."""
        return vera_memory(model, run, label=f"{self.label} adapters", rank=self.r, dropout=self.vera_dropout)

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
