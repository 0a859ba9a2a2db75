"""Prefix Tuning (Li & Liang 2021) and P-Tuning v2 (Liu et al. 2022): trainable key/value prefixes at every layer.

Unlike Prompt Tuning, which only prepends input embeddings, these put `num_virtual_tokens` trained keys and values
in front of the attention of every layer (peft passes them as past_key_values). Prefix Tuning reparameterizes
the prefix through an MLP (prefix projection) for stable training; P-Tuning v2 trains the deep prompts directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from runspec.methods.base import MethodSpec

if TYPE_CHECKING:
    from runspec.spec import TrainingSpec

NUM_VIRTUAL_TOKENS_HELP = "Length of the prefix, in tokens (keys and values added at every layer)."


def refuse_gradient_checkpointing(method: MethodSpec, training: TrainingSpec) -> None:
    """The prefix travels in the attention cache (past_key_values), which transformers drops from every layer it
    recomputes under gradient checkpointing: the keys would lose the prefix that the attention mask expects."""
    if training.gradient_checkpointing:
        raise ValueError(
            f"{method.label} cannot train with training.gradient_checkpointing: its prefix lives in the attention "
            "cache, which checkpointed layers drop; turn gradient_checkpointing off (or use prompt_tuning, p_tuning "
            "or a LoRA-style method)"
        )


class PrefixTuningSpec(MethodSpec):
    name: Literal["prefix_tuning"] = "prefix_tuning"
    label = "Prefix Tuning"
    summary = "Trainable key/value prefixes at every layer, produced by an MLP; the model stays frozen."
    main_fields = ("num_virtual_tokens", "prefix_projection")
    trains = "prefix embeddings and the MLP (prefix projection) that turns them into keys/values of every layer"
    prompt_learning = True

    num_virtual_tokens: int = Field(8, ge=1, le=1024, description=NUM_VIRTUAL_TOKENS_HELP)
    prefix_projection: bool = Field(
        True,
        description="Reparameterize the prefix through a two-layer MLP (the paper's setup). Off: train the prefix "
        "directly, which is P-Tuning v2.",
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, le=65_536, description="Hidden size of the projection MLP. Empty: the model's hidden size."
    )

    def peft_config(self) -> Any:
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=self.num_virtual_tokens,
            prefix_projection=self.prefix_projection,
            encoder_hidden_size=self.encoder_hidden_size,  # type: ignore[arg-type]  # peft fills None in
        )

    def check_training(self, training: TrainingSpec) -> None:
        refuse_gradient_checkpointing(self, training)

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())


class PTuningV2Spec(MethodSpec):
    name: Literal["p_tuning_v2"] = "p_tuning_v2"
    label = "P-Tuning v2"
    summary = "Deep prompts: trainable key/value prefixes at every layer, without reparameterization."
    main_fields = ("num_virtual_tokens",)
    trains = "num_virtual_tokens keys and values for every layer, trained directly"
    prompt_learning = True

    num_virtual_tokens: int = Field(8, ge=1, le=1024, description=NUM_VIRTUAL_TOKENS_HELP)

    def peft_config(self) -> Any:
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.num_virtual_tokens, prefix_projection=False
        )

    def check_training(self, training: TrainingSpec) -> None:
        refuse_gradient_checkpointing(self, training)

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
