"""P-Tuning (Liu et al. 2021): virtual-token embeddings produced by a small prompt encoder (MLP or LSTM).

Like Prompt Tuning the virtual tokens only enter at the input, but they are reparameterized through a trainable
encoder, which makes training steadier. The model stays frozen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from runspec.methods.base import MethodSpec


class PTuningSpec(MethodSpec):
    name: Literal["p_tuning"] = "p_tuning"
    label = "P-Tuning"
    summary = "Virtual-token embeddings produced by a trainable prompt encoder (MLP or LSTM); the model stays frozen."
    main_fields = ("num_virtual_tokens", "encoder_reparameterization_type")
    trains = "virtual-token embeddings and the prompt encoder (MLP or LSTM + MLP) that produces them"
    prompt_learning = True

    num_virtual_tokens: int = Field(8, ge=1, le=1024, description="Number of virtual tokens put before the input.")
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = Field(
        "MLP", description="The prompt encoder: a 3-layer MLP, or a bidirectional LSTM followed by an MLP."
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, le=65_536, description="Hidden size of the prompt encoder. Empty: the model's hidden size."
    )
    encoder_num_layers: int = Field(2, ge=1, le=16, description="LSTM layers (the MLP always has its fixed depth).")
    encoder_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the prompt encoder, in [0, 1).")

    def peft_config(self) -> Any:
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=self.num_virtual_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType(self.encoder_reparameterization_type),
            encoder_hidden_size=self.encoder_hidden_size,  # type: ignore[arg-type]  # peft fills None in
            encoder_num_layers=self.encoder_num_layers,
            encoder_dropout=self.encoder_dropout,
        )

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
