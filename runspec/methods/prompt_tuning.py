"""Prompt Tuning (Lester et al. 2021): a few trainable "soft prompt" embeddings put before every input.

The whole model stays frozen; only `num_virtual_tokens` × hidden-size embedding values are trained. They start
random, or (text init, the course's "hard" prompt) from the embeddings of a text such as
"下面是一段人与机器人的对话。" tokenized with the model's own tokenizer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from runspec.methods.base import MethodSpec

COURSE_PROMPT = "下面是一段人与机器人的对话。"


class PromptTuningSpec(MethodSpec):
    name: Literal["prompt_tuning"] = "prompt_tuning"
    label = "Prompt Tuning"
    summary = "Trainable soft-prompt embeddings before the input; the whole model stays frozen."
    main_fields = ("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text")
    trains = "num_virtual_tokens input embeddings (the soft prompt)"
    prompt_learning = True

    num_virtual_tokens: int = Field(8, ge=1, le=1024, description="Length of the soft prompt, in tokens.")
    prompt_tuning_init: Literal["RANDOM", "TEXT"] = Field(
        "RANDOM",
        description="RANDOM: random embeddings; TEXT: the embeddings of prompt_tuning_init_text "
        "(repeated or cut to num_virtual_tokens).",
    )
    prompt_tuning_init_text: str | None = Field(
        None,
        max_length=2000,
        description=f"The initial prompt for TEXT init, e.g. {COURSE_PROMPT}; tokenized with the model's tokenizer.",
        examples=[COURSE_PROMPT],
    )

    @model_validator(mode="after")
    def _text_for_text_init(self) -> PromptTuningSpec:
        text = (self.prompt_tuning_init_text or "").strip()
        if self.prompt_tuning_init == "TEXT" and not text:
            raise ValueError(
                f"prompt_tuning_init=TEXT needs prompt_tuning_init_text (for example {COURSE_PROMPT!r}), "
                "or choose RANDOM"
            )
        return self

    def peft_config(self, tokenizer_name_or_path: str | None) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        if self.prompt_tuning_init == "TEXT":
            return PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=self.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=self.prompt_tuning_init_text,
                tokenizer_name_or_path=tokenizer_name_or_path,
            )
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.num_virtual_tokens)

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model_source(model, tokenizer)))


def model_source(model: Any, tokenizer: Any) -> str | None:
    """Where the model (and so its tokenizer) was loaded from: what peft's text init loads the tokenizer from."""
    for candidate in (getattr(tokenizer, "name_or_path", None), getattr(model, "name_or_path", None)):
        if candidate:
            return str(candidate)
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None
