"""LoRA: a low-rank bypass B·A beside chosen linear layers (A Gaussian-initialised, B zero, as the course does).

PiSSA and OLoRA start the bypass from the weight's principal directions and subtract them from the base weight;
their adapter is saved converted to a plain LoRA of rank 2r (peft's `path_initial_model_for_weight_conversion`),
so it applies to the unchanged base model like any other LoRA adapter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.method_terms import MethodMemory, adapter_memory, dora_memory
from runspec.methods.base import MethodNotApplicable, MethodSpec, ModuleList, peft_targets, target_modules_help

#: Initialisations that change the base weights and so need converting when saved.
MUTATING_INITS = ("pissa", "olora")


class LoraFamilySpec(MethodSpec):
    """The parameters LoRA and QLoRA share (peft's LoraConfig names). Not a method itself."""

    trains = "low-rank matrices A (r×in) and B (out×r) beside each target layer"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules",)
    main_fields: ClassVar[tuple[str, ...]] = ("r", "lora_alpha", "target_modules")

    r: int = Field(8, ge=1, le=4096, description="Rank of the update matrices.")
    lora_alpha: int = Field(16, gt=0, description="Scaling: the update is multiplied by lora_alpha / r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: ModuleList | None = Field(None, description=target_modules_help())
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases are trained too: none, all of the model's, or those of adapted layers."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling lora_alpha / sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): also trains a magnitude vector.")

    def lora_init(self) -> bool | str:
        return True

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Per adapted layer and token: the dropout mask, lora_A's input copy and the rank-r intermediate; DoRA
        adds its magnitude's saved outputs and the weight norm it rebuilds in each forward pass."""
        adapters = adapter_memory(model, run, label=f"{self.label} adapters", rank=self.r, dropout=self.lora_dropout)
        if self.use_dora:
            return dora_memory(model, run, adapters, label="DoRA")
        return adapters

    def peft_config(self) -> Any:
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=peft_targets(self.target_modules),
            bias=self.bias,
            init_lora_weights=self.lora_init(),  # type: ignore[arg-type]
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
        )


class LoraSpec(LoraFamilySpec):
    name: Literal["lora"] = "lora"
    label = "LoRA"
    summary = "Low-rank adapters on attention (or chosen) projections; the base stays frozen."

    init_lora_weights: Literal["gaussian", "default", "pissa", "olora"] = Field(
        "gaussian",
        description="gaussian: A ~ N(0, 1/r), B = 0; default: peft's Kaiming-uniform A, B = 0; "
        "pissa / olora: start from the weight's principal (SVD) / QR directions.",
    )

    @model_validator(mode="after")
    def _init_and_dora(self) -> LoraSpec:
        if self.use_dora and self.init_lora_weights in MUTATING_INITS:
            raise ValueError(
                f"init_lora_weights={self.init_lora_weights} cannot be combined with use_dora: the adapter could not "
                "be converted to apply to the unchanged base; use gaussian or default with DoRA"
            )
        return self

    def lora_init(self) -> bool | str:
        return True if self.init_lora_weights == "default" else self.init_lora_weights

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model, get_peft_model_state_dict

        peft_model = get_peft_model(model, self.peft_config())
        if self.init_lora_weights == "olora" and _adapts_conv1d(peft_model):
            # peft's OLoRA ignores fan_in_fan_out, so GPT-2 style Conv1D layers get mis-shaped matrices.
            raise MethodNotApplicable(
                f"init_lora_weights=olora does not support the Conv1D layers of {_model_type(model)} models "
                "(peft's OLoRA ignores fan_in_fan_out); use gaussian, default or pissa"
            )
        if self.init_lora_weights in MUTATING_INITS:
            # Kept to convert the trained adapter into one that applies to the unchanged base (see save).
            peft_model.tunedeck_initial_adapter = {
                key: value.detach().clone() for key, value in get_peft_model_state_dict(peft_model).items()
            }
        return peft_model

    def save(self, model: Any, directory: Path) -> None:
        initial = getattr(model, "tunedeck_initial_adapter", None)
        if initial is None:
            model.save_pretrained(directory)
            return
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as tmp:
            initial_dir = Path(tmp) / "initial"
            initial_dir.mkdir()
            save_file(initial, str(initial_dir / "adapter_model.safetensors"))
            # peft writes the initial adapter's config there itself, then stores A·B − A₀·B₀ as a rank-2r LoRA.
            model.save_pretrained(directory, path_initial_model_for_weight_conversion=str(initial_dir))


def _adapts_conv1d(peft_model: Any) -> bool:
    return any(
        type(module.get_base_layer()).__name__ == "Conv1D"
        for module in peft_model.modules()
        if hasattr(module, "lora_A") and hasattr(module, "get_base_layer")
    )


def _model_type(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "this"))
