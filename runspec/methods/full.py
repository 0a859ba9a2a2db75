"""Full fine-tuning: every parameter of the base model is trained."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from runspec.methods.base import MethodSpec


class FullSpec(MethodSpec):
    name: Literal["full"] = "full"
    label = "Full fine-tuning"
    summary = "All parameters trained; the largest memory footprint, no adapter."
    main_fields = ("freeze_embeddings",)
    trains = "every weight of the model (optionally all but the input embeddings)"
    is_peft = False

    freeze_embeddings: bool = Field(
        False, description="Keep the input embeddings (and a tied lm_head) frozen; trains everything else."
    )

    def build(self, model: Any, tokenizer: Any) -> Any:
        if self.freeze_embeddings:
            model.get_input_embeddings().requires_grad_(False)
        return model
