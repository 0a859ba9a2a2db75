"""RunSpec: what a user asks for. Stored with every run; scripts rely on its shape (extend, keep stable)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal
from urllib.parse import unquote

from pydantic import Field, field_validator, model_validator

from runspec.base import StrictModel
from runspec.datasets import DatasetFormat, PromptTemplate, check_column_fields, parse_columns
from runspec.methods import AnyMethod, LoraSpec

DEFAULT_MODEL = "Langboat/bloom-389m-zh"

Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"]
#: Optimizers that only run on a CUDA device: a CPU-only worker fails such a run at once, with this reason.
CUDA_ONLY_OPTIMIZERS = frozenset({"paged_adamw_8bit", "paged_adamw_32bit"})
DEFAULT_DATASET = "c-s-ale/alpaca-gpt4-data-zh"


class DatasetSpec(StrictModel):
    source: str = Field(
        DEFAULT_DATASET,
        min_length=1,
        max_length=500,
        description="A Hugging Face hub dataset id, or a local JSON, JSONL, CSV or Parquet file.",
    )
    config: str | None = Field(
        None, max_length=200, description="Hub datasets only: the configuration (subset) name, if it has several."
    )
    split: str = Field(
        "train", min_length=1, max_length=200, description="Which split to read (hub datasets; files have 'train')."
    )
    format: DatasetFormat = Field(
        "alpaca",
        description="alpaca: instruction, input, output (optional system, history); sharegpt: conversations "
        "with roles; text: plain text, every token learned.",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="When your column names differ: field=column pairs, e.g. instruction=prompt, output=answer.",
    )
    template: PromptTemplate = Field(
        "course",
        description="course: 'Human: …\\n\\nAssistant: '; chat: the model's own chat template "
        "(tokenizer.apply_chat_template).",
    )
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share held out for evaluation, in [0, 1).")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many rows (before the split).")

    @field_validator("source")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        return _reject_control_characters(value)

    @field_validator("config", mode="before")
    @classmethod
    def _empty_config_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_from_text(cls, value: object) -> object:
        return parse_columns(value)

    @model_validator(mode="after")
    def _columns_fit_the_format(self) -> DatasetSpec:
        check_column_fields(self.format, self.columns)
        if self.format == "text" and self.template == "chat":
            raise ValueError("the text format is learned as it is, without a prompt template; use template=course")
        return self


class TrainingSpec(StrictModel):
    max_steps: int = Field(200, ge=1, le=10_000_000, description="Optimizer steps to train.")
    learning_rate: float = Field(2e-4, gt=0, le=10, description="Peak learning rate; must be > 0.")
    batch_size: int = Field(4, ge=1, le=4096, description="Samples per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Forward passes per optimizer step.")
    max_length: int = Field(512, ge=8, le=131_072, description="Tokens per sample; longer samples are cut.")
    seed: int = Field(42, ge=0, le=2**32 - 1)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0, le=1)
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every this many steps. Empty: five times per run and at the end."
    )
    logging_steps: int = Field(1, ge=1, description="Log loss and learning rate every this many steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 on CPU."
    )
    optim: Optimizer = Field(
        "adamw_torch",
        description="The optimizer (transformers' names). adamw_8bit keeps 8-bit optimizer state (bitsandbytes); "
        "paged_adamw_8bit / paged_adamw_32bit page optimizer state to CPU memory on GPU memory spikes (QLoRA) "
        "and need a CUDA GPU.",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Also log to these trackers (their packages must be installed on the worker); "
        "empty: only the dashboard.",
    )
    eval_generation_samples: int = Field(
        16,
        ge=0,
        le=1000,
        description="Held-out prompts answered at the end for exact match, BLEU and ROUGE-L (0: skip).",
    )
    eval_max_new_tokens: int = Field(
        48, ge=1, le=2048, description="Most tokens generated per held-out prompt at the end."
    )
    save_steps: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description="Save a resumable checkpoint (weights, optimizer, scheduler and RNG state) every this many "
        "steps and at the end; Resume continues from the last one.",
    )
    max_retries: int = Field(
        0,
        ge=0,
        le=10,
        description="Requeue the run automatically up to this many times when its worker is lost or crashes; "
        "each retry continues from the last checkpoint.",
    )


class RunSpec(StrictModel):
    name: str = Field(
        ...,
        min_length=1,
        max_length=100,
        pattern=r"^[^/\\\x00-\x1f]+$",
        description="A label for the run (no slashes or control characters).",
        examples=["lora-r8"],
    )
    model: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=500,
        description="A Hugging Face hub model id, or a local folder with config.json and weights.",
    )
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    method: AnyMethod = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @field_validator("model")
    @classmethod
    def _model_no_control_characters(cls, value: str) -> str:
        return _reject_control_characters(value)

    @field_validator("name")
    @classmethod
    def _name_not_dots(cls, value: str) -> str:
        if value.strip(" .") == "":
            raise ValueError("name must contain something other than dots and spaces")
        decoded = unquote(value)  # a name is a label, never a path: not even once percent-decoded
        if decoded != value and (any(ch in decoded for ch in "/\\") or any(ord(ch) < 32 for ch in decoded)):
            raise ValueError("name must not encode slashes or control characters (such as %2f)")
        return value

    @model_validator(mode="after")
    def _method_fits_training(self) -> RunSpec:
        self.method.check_training(self.training)
        return self

    def spec_hash(self) -> str:
        """Hash of the normalised spec (defaults filled in), so identical runs can be recognised."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _reject_control_characters(value: str) -> str:
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("must not contain control characters (such as NUL or newlines)")
    return value.strip()
