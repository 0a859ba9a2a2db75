"""RunSpec: what a user asks for. Stored with every run; scripts rely on its shape (extend, keep stable)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator

from runspec.base import StrictModel
from runspec.methods import AnyMethod, LoraSpec

DEFAULT_MODEL = "Langboat/bloom-389m-zh"
DEFAULT_DATASET = "c-s-ale/alpaca-gpt4-data-zh"


class DatasetSpec(StrictModel):
    source: str = Field(
        DEFAULT_DATASET,
        min_length=1,
        max_length=500,
        description="A Hugging Face hub dataset id, or a local JSON, JSONL, CSV or Parquet file.",
    )
    format: Literal["alpaca"] = Field("alpaca", description="alpaca: instruction, input, output columns.")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share held out for evaluation, in [0, 1).")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many rows (before the split).")

    @field_validator("source")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        return _reject_control_characters(value)


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
        return value

    def spec_hash(self) -> str:
        """Hash of the normalised spec (defaults filled in), so identical runs can be recognised."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _reject_control_characters(value: str) -> str:
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("must not contain control characters (such as NUL or newlines)")
    return value.strip()
