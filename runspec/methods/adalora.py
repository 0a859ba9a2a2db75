"""AdaLoRA (Zhang et al. 2023): LoRA in SVD form whose rank budget moves to the layers that matter most.

Every target layer starts at rank init_r; after tinit warm-up steps the budget shrinks towards an average of
target_r, re-allocated by importance every deltaT steps, and stays fixed for the last tfinal steps. The schedule
spans total_step optimizer steps (training.max_steps unless given). peft's `update_and_allocate` runs after every
optimizer step through a Trainer callback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.method_terms import MethodMemory, adapter_memory
from runspec.methods.base import MethodSpec, ModuleList, peft_targets, target_modules_help

if TYPE_CHECKING:
    from runspec.spec import TrainingSpec


class AdaLoraSpec(MethodSpec):
    name: Literal["adalora"] = "adalora"
    label = "AdaLoRA"
    summary = "LoRA in SVD form whose rank budget is re-allocated during training to the most important layers."
    main_fields = ("init_r", "target_r", "target_modules")
    trains = "SVD-form triplets P·Λ·Q beside each target layer, pruned to an average rank of target_r"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules",)

    init_r: int = Field(12, ge=1, le=4096, description="Initial rank of every adapted layer.")
    target_r: int = Field(8, ge=1, le=4096, description="Average rank the budget shrinks to (≤ init_r).")
    lora_alpha: int = Field(16, gt=0, description="Scaling of the update, as in LoRA.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input, in [0, 1).")
    target_modules: ModuleList | None = Field(None, description=target_modules_help())
    tinit: int = Field(0, ge=0, description="Warm-up steps before the budget starts shrinking.")
    tfinal: int = Field(0, ge=0, description="Final steps with the budget fixed.")
    deltaT: int = Field(1, ge=1, description="Steps between two budget re-allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity) smoothing.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the uncertainty estimate.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regularizer on P and Q.")
    total_step: int | None = Field(
        None, ge=1, description="Steps the schedule spans. Empty: training.max_steps (the usual choice)."
    )

    @model_validator(mode="after")
    def _budget(self) -> AdaLoraSpec:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.total_step is not None:
            _check_schedule(self.tinit, self.tfinal, self.total_step, "total_step")
        return self

    def check_training(self, training: TrainingSpec) -> None:
        if self.total_step is None:
            _check_schedule(self.tinit, self.tfinal, training.max_steps, "training.max_steps")

    def resolved(self, training: TrainingSpec) -> AdaLoraSpec:
        if self.total_step is not None:
            return self
        return self.model_copy(update={"total_step": training.max_steps})

    def peft_config(self) -> Any:
        from peft import AdaLoraConfig, TaskType

        return AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=self.init_r,
            target_r=self.target_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=peft_targets(self.target_modules),
            tinit=self.tinit,
            tfinal=self.tfinal,
            deltaT=self.deltaT,
            beta1=self.beta1,
            beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight,
            # Only counting parameters (no training settings known): any schedule that peft accepts will do.
            total_step=self.total_step or self.tinit + self.tfinal + 1,
        )

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Memory estimate: LoRA's activations at the initial rank (dropout mask, input, rank-sized intermediate)."""
        return adapter_memory(model, run, label=f"{self.label} adapters", rank=self.init_r, dropout=self.lora_dropout)

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())

    def trainer_callbacks(self) -> list[Any]:
        from transformers import TrainerCallback

        class AdaLoraBudgetCallback(TrainerCallback):
            """peft's rank allocation: after the optimizer step, before the gradients are zeroed."""

            def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
                model.base_model.update_and_allocate(state.global_step)

        return [AdaLoraBudgetCallback()]


def _check_schedule(tinit: int, tfinal: int, total: int, total_name: str) -> None:
    if tinit + tfinal >= total:
        raise ValueError(
            f"AdaLoRA's schedule leaves no budgeting phase: tinit ({tinit}) + tfinal ({tfinal}) must be less than "
            f"{total_name} ({total}); lower tinit/tfinal or raise {total_name}"
        )
