"""RunSpec: what a user asks for. Stored with every run; scripts rely on its shape (extend, keep stable)."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar, Literal
from urllib.parse import unquote

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from runspec.base import StrictModel
from runspec.datasets import DatasetFormat, PromptTemplate, check_column_fields, parse_columns
from runspec.methods import AnyMethod, LoraSpec
from runspec.precision import BaseDtype, Precision

DEFAULT_MODEL = "Langboat/bloom-389m-zh"

Optimizer = Literal[
    "adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"
]
#: Optimizers that only run on a CUDA device: a CPU-only worker fails such a run at once, with this reason.
CUDA_ONLY_OPTIMIZERS = frozenset({"paged_adamw_8bit", "paged_adamw_32bit"})
DEFAULT_DATASET = "c-s-ale/alpaca-gpt4-data-zh"
AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2"]


class DatasetSpec(StrictModel):
    #: What the new-run form shows first; every other field goes in its "dataset details" section.
    main_fields: ClassVar[tuple[str, ...]] = ("source",)

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
    #: What the new-run form shows first; every other field (a new one too) goes in "training details".
    main_fields: ClassVar[tuple[str, ...]] = ("max_steps", "learning_rate", "batch_size", "max_length")

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
    group_by_length: bool = Field(
        True,
        description="Batch samples of similar length together (transformers' group_by_length sampler), so little "
        "compute goes to padding; every sample is still seen once per epoch, in a shuffled order of batches. "
        "Correct for every method.",
    )
    packing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Padding-free batches: a batch's samples are concatenated into one row, position ids restart "
        "at each sample and attention stays within it. Only for models whose attention keeps packed samples "
        "apart (checked on the model when training starts: Llama-, Qwen2- or GPT-2-style models, not "
        "Bloom) and never for prompt tuning, P-Tuning or prefix tuning (their virtual tokens go before every "
        "sample). auto: on where a FlashAttention kernel computes packed rows without waste, else off "
        "(length grouping does the work); on: wherever it is correct (a run on a model that cannot fails at "
        "start).",
    )
    supervised_logits_only: bool = Field(
        True,
        description="Project onto the vocabulary only at positions whose next token is learned (the response), "
        "not at prompt or padding positions: the same loss and gradients with less compute and memory (the logits "
        "are batch × length × vocabulary numbers). Checked on the model when training starts (transformers' "
        "boolean logits_to_keep); where the model cannot, every position is projected. With Liger kernels on "
        "(training.liger_kernel) their fused linear cross entropy is used instead: it never materialises the "
        "logits at all.",
    )
    precision: Precision = Field(
        "auto",
        description="The compute dtype. auto: bf16 on a GPU that supports it, fp32 on CPU; bf16 (also on CPU) and "
        "fp16: mixed precision (autocast), with fp32 trainable parameters and optimizer states; fp32: no autocast. "
        "pure_bf16 (full fine-tuning only): weights, gradients and AdamW states all in bf16, half the memory of "
        "mixed precision's fp32 master weights, at a cost: with no fp32 master copy, an update smaller than bf16's "
        "resolution of the weight (about 1/256 of its size) is rounded away, so small learning rates and late, "
        "small updates can be lost.",
    )
    base_dtype: BaseDtype = Field(
        "auto",
        description="The dtype the base model's weights are loaded in. auto: PEFT methods load the frozen base in "
        "the compute dtype (bf16 on a GPU, fp32 on CPU unless precision is bf16; QLoRA de-quantizes to it), while "
        "adapters, prompt encoders and prefixes and their optimizer states stay fp32 (peft's default); full "
        "fine-tuning keeps fp32 master weights (bf16 with precision=pure_bf16). fp32: always load the base in fp32 "
        "and autocast (twice the weight memory of a bf16 base).",
    )
    attn_implementation: AttnImplementation = Field(
        "auto",
        description="The attention kernel (transformers' attn_implementation). auto: flash_attention_2 on a CUDA "
        "worker where the flash_attn package is installed and the model supports it, else sdpa (transformers' "
        "default, eager for models without it); sdpa: PyTorch's scaled_dot_product_attention; eager: plain "
        "matmuls; flash_attention_2: FlashAttention 2 (needs a CUDA GPU, the flash-attn package and 16-bit "
        "compute; a worker without them fails the run at start with the reason).",
    )
    liger_kernel: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear + cross entropy), applied "
        "through transformers' use_liger_kernel. auto: on for architectures liger-kernel supports (Llama, Qwen2/3, "
        "Mistral, Gemma, Phi-3, ...) on a CUDA worker where liger-kernel is installed (the gpu extra), else off; "
        "on: required (a worker without CUDA or liger-kernel, or a model it does not support, fails the run at "
        "start). With Liger the loss is computed by the fused linear cross entropy, chunk by chunk, so no logits "
        "are materialised and supervised_logits_only is not used.",
    )
    optim: Optimizer = Field(
        "adamw_torch_fused",
        description="The optimizer (transformers' names). adamw_torch_fused (transformers' default): AdamW in one "
        "fused kernel per step; adamw_torch: the same update, one parameter at a time on CPU (foreach on CUDA). "
        "adamw_8bit keeps 8-bit optimizer state (bitsandbytes); "
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
    num_gpus: int = Field(
        1,
        ge=1,
        le=8,
        description="GPUs on one machine training this run together (data parallel: one process per GPU, each on "
        "its own share of every batch). The effective batch is batch_size × gradient_accumulation_steps × "
        "num_gpus. More than 1 needs a worker started with `tunedeck worker --multi-gpu`.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With num_gpus > 1: ddp keeps a whole copy of the model on every GPU and averages gradients "
        "(any method); fsdp shards weights, gradients and optimizer state across the GPUs, for full fine-tuning "
        "of a model that does not fit one GPU (CUDA only).",
    )


class PlacementSpec(StrictModel):
    """Where and when a run trains, and what it keeps on disk (not what it is: left out of the spec hash, so it never
    makes a run different)."""

    worker: str | None = Field(
        None,
        max_length=200,
        description="Train only on this worker (its name on the Workers page, e.g. training@gpu-box-1). "
        "Empty: any worker whose GPU memory fits the run's estimate.",
    )
    gpu_type: str | None = Field(
        None,
        max_length=100,
        description="Train only on a GPU whose name contains this (e.g. A100, RTX 4090; case does not matter).",
    )
    priority: int = Field(
        5,
        ge=0,
        le=9,
        description="0 to 9: among queued runs a higher priority starts first (Redis broker; the embedded "
        "single-machine broker keeps submission order).",
    )
    keep_checkpoints: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Checkpoints kept on disk: the newest N while training (a failed or cancelled run resumes from "
        "the newest); 0 keeps one while training and removes it when the run succeeds (the final adapter or model "
        "stays). Empty: the server's default (TUNEDECK_KEEP_CHECKPOINTS).",
    )

    @field_validator("worker", "gpu_type", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str):
            value = _reject_control_characters(value)
            return value or None
        return value


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
    placement: PlacementSpec = Field(default_factory=PlacementSpec)

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
        if self.training.packing == "on" and self.method.prompt_learning:
            raise ValueError(
                f"training.packing=on cannot be used with {self.method.label}: its virtual tokens go before every "
                "sample, and a packed row holds several samples; use training.packing=auto or off (length "
                "grouping, training.group_by_length, still removes most padding)"
            )
        _check_distributed(self)
        _check_precision(self)
        return self

    def spec_hash(self) -> str:
        """Hash of the normalised spec (defaults filled in), so identical runs can be recognised. The name (a label)
        and placement (which worker, priority) do not change what is trained, so they are left out."""
        canonical = json.dumps(
            self.model_dump(mode="json", exclude={"name", "placement"}), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def _check_distributed(spec: RunSpec) -> None:
    """training.distributed=fsdp only where it means something: full fine-tuning on several GPUs. The error names
    training.distributed (a ValidationError raised here keeps its own location)."""
    training = spec.training
    if training.distributed != "fsdp":
        return
    problem = None
    if spec.method.is_peft:
        problem = (
            f"fsdp shards the whole model and is for full fine-tuning (method full); {spec.method.label} trains "
            "small added weights beside a frozen base: use training.distributed=ddp (every GPU holds the base)"
        )
    elif training.num_gpus < 2:
        problem = "fsdp shards the model across GPUs: set training.num_gpus to 2 or more, or use ddp"
    if problem:
        _refuse("distributed", problem, training.distributed)


def _check_precision(spec: RunSpec) -> None:
    """pure_bf16 only for full fine-tuning (and not with an fp32 base); FlashAttention only with 16-bit compute."""
    training = spec.training
    if training.precision == "pure_bf16" and spec.method.is_peft:
        _refuse(
            "precision",
            f"pure_bf16 trains every weight in bf16 and is for full fine-tuning (method full); {spec.method.label} "
            "keeps its trainable parameters in fp32 beside a frozen base that is loaded in bf16 already with "
            "precision=bf16 (or auto on a GPU): use training.precision=bf16",
            training.precision,
        )
    if training.precision == "pure_bf16" and training.base_dtype == "fp32":
        _refuse(
            "base_dtype",
            "training.precision=pure_bf16 loads the weights in bf16, which base_dtype=fp32 contradicts: use "
            "base_dtype=auto, or precision=bf16 for fp32 master weights under bf16 autocast",
            training.base_dtype,
        )
    if training.attn_implementation == "flash_attention_2" and training.precision == "fp32":
        _refuse(
            "attn_implementation",
            "FlashAttention computes in bf16 or fp16 only, and training.precision=fp32 computes in fp32: use "
            "precision auto or bf16, or attn_implementation=sdpa",
            training.attn_implementation,
        )


def _refuse(field: str, problem: str, value: object) -> None:
    """A ValidationError at training.<field> (raised from a model validator, it keeps this location)."""
    raise ValidationError.from_exception_data(
        "RunSpec",
        [InitErrorDetails(type=PydanticCustomError("value_error", problem), loc=("training", field), input=value)],
    )


def _reject_control_characters(value: str) -> str:
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("must not contain control characters (such as NUL or newlines)")
    return value.strip()
