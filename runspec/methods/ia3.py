"""IA3 (Liu et al. 2022): learned vectors that rescale the activations of chosen layers.

Attention layers get their outputs (keys, values) scaled; feed-forward layers get their inputs scaled. The vectors
start at 1, so training starts from the base model. Fewer trainable parameters than any other method here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.method_terms import MethodMemory, ia3_memory
from runspec.methods.base import MethodSpec, ModuleList, peft_targets, target_modules_help

IA3_DEFAULT_TARGETS = "Bloom query_key_value,mlp.dense_4h_to_h, Llama k_proj,v_proj,down_proj, GPT-2 c_attn,mlp.c_proj"
IA3_DEFAULT_FEEDFORWARD = "Bloom mlp.dense_4h_to_h, Llama down_proj, GPT-2 mlp.c_proj"


class IA3Spec(MethodSpec):
    name: Literal["ia3"] = "ia3"
    label = "IA3"
    summary = "Learned vectors rescaling attention outputs and feed-forward inputs; the fewest trainable parameters."
    main_fields = ("target_modules", "feedforward_modules")
    trains = "one scaling vector per target layer (output size; input size for feed-forward layers)"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules", "feedforward_modules")

    target_modules: ModuleList | None = Field(
        None, description=target_modules_help("Layers whose activations are rescaled.", IA3_DEFAULT_TARGETS)
    )
    feedforward_modules: ModuleList | None = Field(
        None,
        description="Which of target_modules are feed-forward layers (their input is scaled instead of their "
        f"output); must be among target_modules. Empty: peft's default ({IA3_DEFAULT_FEEDFORWARD}).",
    )

    @model_validator(mode="after")
    def _feedforward_among_targets(self) -> IA3Spec:
        if self.feedforward_modules and not self.target_modules:
            raise ValueError(
                "feedforward_modules needs target_modules too (it must be a subset of them); "
                "give both, or leave both empty for peft's defaults"
            )
        if self.feedforward_modules and self.target_modules and peft_targets(self.target_modules) != "all-linear":
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(f"feedforward_modules {', '.join(extra)} must also be listed in target_modules")
        return self

    def peft_config(self) -> Any:
        from peft import IA3Config, TaskType

        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=peft_targets(self.target_modules),
            feedforward_modules=list(self.feedforward_modules) if self.feedforward_modules else None,
        )

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Memory estimate: the scaled input (feed-forward layers) or the output before scaling (the others)."""
        return ia3_memory(model, run, label=f"{self.label} scalings")

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
