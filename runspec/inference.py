"""What a generation request carries: prompts in the training template's parts, and decoding settings.

Shared by the REST API, the "Try it" form and the worker that generates. Pure pydantic (no torch).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from runspec.base import StrictModel

MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 8000
#: One request's budget, prompts × max_new_tokens (TUNEDECK_GENERATION_MAX_TOTAL_NEW_TOKENS; the process's settings
#: set it when they load, see tunedeck_state.settings.get_settings).
DEFAULT_MAX_TOTAL_NEW_TOKENS = 8192
_budget = {"max_total_new_tokens": DEFAULT_MAX_TOTAL_NEW_TOKENS}


def set_max_total_new_tokens(limit: int) -> None:
    _budget["max_total_new_tokens"] = int(limit)


def max_total_new_tokens() -> int:
    return _budget["max_total_new_tokens"]


def token_budget_problem(prompts: int, max_new_tokens: int, limit: int | None = None) -> str | None:
    """Why a request of `prompts` prompts × `max_new_tokens` is over the budget, or None."""
    limit = max_total_new_tokens() if limit is None else limit
    total = prompts * max_new_tokens
    if total <= limit:
        return None
    return (
        f"prompts × max_new_tokens = {prompts} × {max_new_tokens} = {total} new tokens, over this server's budget "
        f"of {limit} per request (TUNEDECK_GENERATION_MAX_TOTAL_NEW_TOKENS); send fewer prompts or lower "
        f"max_new_tokens (at most {max(1, limit // max(1, prompts))} for {prompts} prompt(s))"
    )


#: Which weights answer: the run's own result (adapter on the base, or the fully fine-tuned model), the base
#: model alone (to compare), or the base with the adapter merged in (LoRA family, after a merge).
Variant = Literal["run", "base", "merged"]


class Prompt(StrictModel):
    """One prompt, in the parts the training template joins ("Human: {instruction}\\n{input}\\n\\nAssistant: ")."""

    instruction: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="The instruction.")
    input: str = Field("", max_length=MAX_PROMPT_CHARS, description="Optional input text for the instruction.")


def _prompt_from_string(value: Any) -> Any:
    return {"instruction": value} if isinstance(value, str) else value


PromptItem = Annotated[Prompt, BeforeValidator(_prompt_from_string, json_schema_input_type=str | Prompt)]


class GenerationSettings(StrictModel):
    """Decoding settings. Greedy by default, so the same prompt gives the same completion."""

    max_new_tokens: int = Field(64, ge=1, le=2048, description="Most tokens to generate per prompt.")
    do_sample: bool = Field(False, description="Sample (with temperature and top_p) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature, in (0, 5]; used when do_sample.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass, in (0, 1]; used when do_sample.")
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Seed for sampling; each prompt starts from it, so answers repeat."
    )


class GenerateRequest(GenerationSettings):
    """`POST /api/runs/{id}/generate`: prompts and settings, answered by a worker."""

    prompts: list[PromptItem] = Field(
        ...,
        min_length=1,
        max_length=MAX_PROMPTS,
        description='Instructions as strings, or {"instruction": ..., "input": ...} objects.',
    )
    base: bool = Field(False, description="Answer with the base model alone, without the run's adapter.")
    merged: bool = Field(False, description="Answer with the merged model (after POST /api/runs/{id}/merge).")

    @field_validator("prompts")
    @classmethod
    def _within_token_budget(cls, prompts: list[Prompt], info: ValidationInfo) -> list[Prompt]:
        max_new_tokens = info.data.get("max_new_tokens")
        if isinstance(max_new_tokens, int):
            problem = token_budget_problem(len(prompts), max_new_tokens)
            if problem:
                raise ValueError(problem)
        return prompts

    @field_validator("merged")
    @classmethod
    def _one_variant(cls, merged: bool, info: ValidationInfo) -> bool:
        if merged and info.data.get("base"):
            raise ValueError("base and merged exclude each other: set one of them, not both")
        return merged

    @property
    def variant(self) -> Variant:
        return "base" if self.base else "merged" if self.merged else "run"

    def settings(self) -> GenerationSettings:
        return GenerationSettings.model_validate(self.model_dump(include=set(GenerationSettings.model_fields)))
