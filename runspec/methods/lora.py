"""LoRA: a low-rank bypass B·A beside chosen linear layers (A Gaussian-initialised, B zero, as the course does)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from runspec.methods.base import MethodSpec


class LoraSpec(MethodSpec):
    name: Literal["lora"] = "lora"
    label = "LoRA"
    summary = "Low-rank adapters on attention (or chosen) projections; the base stays frozen."

    r: int = Field(8, ge=1, le=4096, description="Rank of the update matrices.")
    lora_alpha: int = Field(16, gt=0, description="Scaling: the update is multiplied by lora_alpha / r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt. Empty: peft's default for the architecture "
        "(Bloom query_key_value, Llama q_proj,v_proj, GPT-2 c_attn).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    init_lora_weights: Literal["gaussian", "default", "pissa", "olora"] = Field(
        "gaussian",
        description="gaussian: A ~ N(0, 1/r), B = 0; default: peft's Kaiming-uniform A; pissa/olora.",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling lora_alpha / sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")

    def peft_config(self) -> Any:
        from peft import LoraConfig, TaskType

        init: bool | str = True if self.init_lora_weights == "default" else self.init_lora_weights
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules or None,
            bias=self.bias,
            init_lora_weights=init,  # type: ignore[arg-type]
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
        )

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
