"""LoHa and LoKr (the LyCORIS family): the weight update as a Hadamard or Kronecker product of low-rank factors.

LoHa writes ΔW = (B₁A₁) ⊙ (B₂A₂), which reaches a higher rank than LoRA for the same parameter count; LoKr writes
ΔW = C ⊗ (BA), a Kronecker product, which is smaller still. peft implements them for nn.Linear (and conv)
layers, not for the Conv1D layers of GPT-2 style models.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.method_terms import MethodMemory, delta_weight_memory
from runspec.methods.base import MethodSpec, ModuleList, peft_targets, target_modules_help

TARGETS_HELP = target_modules_help("Linear layers to adapt (peft supports nn.Linear, not GPT-2's Conv1D).")


class LoHaSpec(MethodSpec):
    name: Literal["loha"] = "loha"
    label = "LoHa"
    summary = "Hadamard product of two low-rank updates: a higher-rank update for LoRA's parameter count."
    main_fields = ("r", "alpha", "target_modules")
    trains = "two pairs of low-rank factors per target layer, multiplied element-wise"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules",)

    r: int = Field(8, ge=1, le=4096, description="Rank of each of the two factor pairs.")
    alpha: int = Field(8, gt=0, description="Scaling: the update is multiplied by alpha / r.")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each rank of the update, in [0, 1).")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Chance of skipping the whole update, in [0, 1).")
    target_modules: ModuleList | None = Field(None, description=TARGETS_HELP)

    def peft_config(self) -> Any:
        from peft import LoHaConfig, TaskType

        return LoHaConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            alpha=self.alpha,
            rank_dropout=self.rank_dropout,
            module_dropout=self.module_dropout,
            target_modules=peft_targets(self.target_modules),
        )

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Memory estimate: each adapted layer builds its whole update ΔW every forward pass and keeps it."""
        return delta_weight_memory(model, run, label=f"{self.label} adapters")

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())


class LoKrSpec(MethodSpec):
    name: Literal["lokr"] = "lokr"
    label = "LoKr"
    summary = "Kronecker product of a small matrix and a low-rank update: very few parameters per layer."
    main_fields = ("r", "alpha", "target_modules")
    trains = "a small Kronecker factor and a low-rank factor per target layer"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules",)

    r: int = Field(8, ge=1, le=4096, description="Rank of the low-rank factor.")
    alpha: int = Field(8, gt=0, description="Scaling: the update is multiplied by alpha / r.")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each rank of the update, in [0, 1).")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Chance of skipping the whole update, in [0, 1).")
    decompose_both: bool = Field(False, description="Also decompose the small Kronecker factor into low rank.")
    decompose_factor: int = Field(
        -1, ge=-1, description="Size of the Kronecker split of each dimension; -1: as square as possible."
    )
    target_modules: ModuleList | None = Field(None, description=TARGETS_HELP)

    @field_validator("decompose_factor")
    @classmethod
    def _factor(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (automatic) or at least 1")
        return value

    def peft_config(self) -> Any:
        from peft import LoKrConfig, TaskType

        return LoKrConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            alpha=self.alpha,
            rank_dropout=self.rank_dropout,
            module_dropout=self.module_dropout,
            decompose_both=self.decompose_both,
            decompose_factor=self.decompose_factor,
            target_modules=peft_targets(self.target_modules),
        )

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Memory estimate: each adapted layer builds its whole update ΔW every forward pass and keeps it."""
        return delta_weight_memory(model, run, label=f"{self.label} adapters")

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
