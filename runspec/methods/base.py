"""What every fine-tuning method declares: its parameters (a pydantic model) and how it builds the model."""

from __future__ import annotations

from typing import Any, ClassVar

from runspec.base import StrictModel


class MethodSpec(StrictModel):
    """Base of one method family's spec. Subclasses set `name` to a Literal, which discriminates the union."""

    name: str
    label: ClassVar[str]
    summary: ClassVar[str]
    #: True when training touches only added parameters (peft); False for full fine-tuning.
    is_peft: ClassVar[bool] = True
    #: True when the method cannot run without a CUDA device.
    requires_cuda: ClassVar[bool] = False

    def model_load_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for `AutoModelForCausalLM.from_pretrained` (quantization, dtype)."""
        return {}

    def build(self, model: Any, tokenizer: Any) -> Any:
        """Turn the loaded base model into the model the Trainer trains. Imports peft lazily."""
        raise NotImplementedError

    def key_params(self) -> dict[str, Any]:
        """The parameters a comparison table shows for this method (everything but the name)."""
        return self.model_dump(exclude={"name"})
