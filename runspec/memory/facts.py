"""The model as a worker profiled it (`ModelFacts`) and how the run computes (`RunShape`).

The bottom of the memory model: nothing here knows about run specs or methods, so every method module can import
its types and every formula module can build on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from runspec.memory.units import BNB_4BIT_BLOCK, EstimateError, dtype_bytes

#: Bump when the profile's shape changes (cached answers of older workers are then refused).
PROFILE_VERSION = 1


# -- the model, as the worker saw it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamGroup:
    kind: str  # embedding, lm_head, linear, linear_bias, norm, other, adapter (added by the method)
    dtype: str
    trainable: bool
    quantized: bool  # a linear weight the method's bitsandbytes loading replaces by a 4-/8-bit one
    params: int
    tensors: int
    largest_tensor: int = 0


@dataclass(frozen=True)
class Linear:
    name: str
    part: str  # attention, mlp, other
    in_features: int
    out_features: int
    quantized: bool
    trainable: bool = False  # its weight is trained (full fine-tuning): then it keeps its input for backward


@dataclass(frozen=True)
class Norm:
    name: str
    type: str  # layernorm, rmsnorm
    saved_per_token: float  # hidden-sized tensors it keeps for backward (measured on the worker, fp32)
    after_layers: bool = True  # outside the layers: the final norm (True) or one on the embeddings (False)


@dataclass(frozen=True)
class AdaptedModule:
    """A layer the method wraps (LoRA, IA³, LoHa, ...): its leaf name, in/out features and how many there are."""

    name: str
    base_type: str
    in_features: int
    out_features: int
    count: int
    feedforward: bool = False  # IA³: scales the layer's input (feed-forward) rather than its output


@dataclass(frozen=True)
class PromptFacts:
    kind: str  # "input": virtual tokens before the sample; "past_key_values": prefixes at every layer
    num_virtual_tokens: int
    encoder_hidden_size: int | None = None
    prefix_projection: bool = False
    encoder_reparameterization_type: str = ""


@dataclass(frozen=True)
class Quantization:
    bits: int
    quant_type: str
    double_quant: bool
    compute_dtype: str
    storage_dtype: str = "uint8"
    blocksize: int = BNB_4BIT_BLOCK


@dataclass(frozen=True)
class ModelFacts:
    """A worker's memory profile, checked and typed (see worker/training/memory.py)."""

    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    ffn_size: int
    tied_embeddings: bool
    attn_implementation: str
    attention_dropout: float
    hidden_dropout: float
    embedding_dropout: float
    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    stem_norms: tuple[Norm, ...]
    activation_saved: float
    activation_backward_peak: float
    gated_mlp: bool
    groups: tuple[ParamGroup, ...]
    trainable_params: int
    total_params: int
    load_dtype: str
    quantization: Quantization | None
    peft_type: str | None
    adapted_modules: tuple[AdaptedModule, ...]
    prompt: PromptFacts | None
    buffers: dict[str, int] = field(default_factory=dict)
    quantizable_linear_params: int = 0
    embeddings_trainable: bool = False
    lm_head_trainable: bool = False

    @property
    def attention_linears(self) -> tuple[Linear, ...]:
        return tuple(linear for linear in self.linears if linear.part == "attention")

    @property
    def mlp_linears(self) -> tuple[Linear, ...]:
        return tuple(linear for linear in self.linears if linear.part == "mlp")

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> ModelFacts:
        if profile.get("version") != PROFILE_VERSION:
            raise EstimateError(
                f"the worker's memory profile has version {profile.get('version')!r}, this server expects "
                f"{PROFILE_VERSION}; update the worker"
            )
        dims = profile.get("dims") or {}
        model_type = str(profile.get("model_type") or "unknown")
        _check_dims(dims, model_type)
        block = profile.get("block") or {}
        linears = _linears(block, model_type, profile.get("architecture"))
        mlp = [lin for lin in linears if lin.part == "mlp"]
        hidden = int(dims["hidden_size"])
        heads = int(dims["num_heads"])
        activation = block.get("activation") or {}
        dropout = dims.get("dropout") or {}
        load = profile.get("load") or {}
        method = profile.get("method") or {}
        return cls(
            model_type=model_type,
            architecture=str(profile.get("architecture") or model_type),
            hidden_size=hidden,
            num_layers=int(dims["num_layers"]),
            num_heads=heads,
            num_kv_heads=int(dims.get("num_kv_heads") or heads),
            head_dim=int(dims.get("head_dim") or hidden // heads),
            vocab_size=int(dims["vocab_size"]),
            ffn_size=int(mlp[-1].in_features),
            tied_embeddings=bool(dims.get("tied_embeddings")),
            attn_implementation=str(dims.get("attn_implementation") or "eager"),
            attention_dropout=float(dropout.get("attention") or 0.0),
            hidden_dropout=float(dropout.get("hidden") or 0.0),
            embedding_dropout=float(dropout.get("embedding") or 0.0),
            linears=linears,
            norms=tuple(_norm(item) for item in block.get("norms") or []),
            stem_norms=tuple(_norm(item) for item in block.get("stem_norms") or []),
            activation_saved=float(activation.get("saved_per_input") or 1.0),
            activation_backward_peak=float(activation.get("backward_peak_per_input") or 2.0),
            gated_mlp=len(mlp) >= 3,
            groups=tuple(_group(item) for item in profile.get("groups") or []),
            trainable_params=int(profile.get("trainable_params") or 0),
            total_params=int(profile.get("total_params") or 0),
            load_dtype=str(load.get("dtype") or "float32"),
            quantization=_quantization(load.get("quantization")),
            peft_type=method.get("peft_type"),
            adapted_modules=tuple(_adapted(item) for item in method.get("adapted_modules") or []),
            prompt=_prompt(method.get("prompt")),
            buffers={str(k): int(v) for k, v in (profile.get("buffers") or {}).items()},
            quantizable_linear_params=int(profile.get("quantizable_linear_params") or 0),
            embeddings_trainable=bool(dims.get("embeddings_trainable")),
            lm_head_trainable=bool(dims.get("lm_head_trainable")),
        )


# -- reading a profile ------------------------------------------------------------------------------------------


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def _check_dims(dims: Mapping[str, Any], model_type: str) -> None:
    missing = [key for key in ("hidden_size", "num_layers", "num_heads", "vocab_size") if not _positive(dims.get(key))]
    if missing:
        raise EstimateError(
            f"cannot estimate memory for architecture {model_type!r}: its config has no {', '.join(missing)}"
        )


def _linears(block: Mapping[str, Any], model_type: str, architecture: Any) -> tuple[Linear, ...]:
    linears = tuple(
        Linear(
            name=str(item["name"]),
            part=str(item.get("part", "other")),
            in_features=int(item["in"]),
            out_features=int(item["out"]),
            quantized=bool(item.get("quantized")),
            trainable=bool(item.get("trainable")),
        )
        for item in block.get("linears") or []
    )
    if not any(lin.part == "attention" for lin in linears) or not any(lin.part == "mlp" for lin in linears):
        raise EstimateError(
            f"cannot estimate memory for architecture {model_type!r} ({architecture}): no "
            "decoder layer with attention and MLP linear layers was found in it"
        )
    return linears


def _norm(item: Mapping[str, Any]) -> Norm:
    return Norm(
        name=str(item.get("name", "")),
        type=str(item.get("type", "layernorm")),
        saved_per_token=float(item.get("saved_per_token") or 1.0),
        after_layers=bool(item.get("after_layers", True)),
    )


def _group(item: Mapping[str, Any]) -> ParamGroup:
    return ParamGroup(
        kind=str(item["kind"]),
        dtype=str(item["dtype"]),
        trainable=bool(item["trainable"]),
        quantized=bool(item.get("quantized")),
        params=int(item["params"]),
        tensors=int(item.get("tensors") or 1),
        largest_tensor=int(item.get("largest_tensor") or 0),
    )


def _quantization(quant: Mapping[str, Any] | None) -> Quantization | None:
    if not quant:
        return None
    return Quantization(
        bits=int(quant["bits"]),
        quant_type=str(quant.get("quant_type") or "nf4"),
        double_quant=bool(quant.get("double_quant")),
        compute_dtype=str(quant.get("compute_dtype") or "float32"),
        storage_dtype=str(quant.get("storage_dtype") or "uint8"),
        blocksize=int(quant.get("blocksize") or BNB_4BIT_BLOCK),
    )


def _adapted(item: Mapping[str, Any]) -> AdaptedModule:
    return AdaptedModule(
        name=str(item["name"]),
        base_type=str(item.get("base_type") or ""),
        in_features=int(item["in"]),
        out_features=int(item["out"]),
        count=int(item.get("count") or 1),
        feedforward=bool(item.get("feedforward")),
    )


def _prompt(prompt: Mapping[str, Any] | None) -> PromptFacts | None:
    if not prompt:
        return None
    return PromptFacts(
        kind=str(prompt["kind"]),
        num_virtual_tokens=int(prompt["num_virtual_tokens"]),
        encoder_hidden_size=prompt.get("encoder_hidden_size"),
        prefix_projection=bool(prompt.get("prefix_projection")),
        encoder_reparameterization_type=str(prompt.get("encoder_reparameterization_type") or ""),
    )


def group_dtype(facts: ModelFacts, kind: str) -> str | None:
    """The dtype of the first unquantized parameter group of this kind (None: the model has none)."""
    for group in facts.groups:
        if group.kind == kind and not group.quantized:
            return group.dtype
    return None


def linear_weight_bytes(facts: ModelFacts) -> int:
    return dtype_bytes(group_dtype(facts, "linear") or facts.load_dtype, 4)


def as_loaded(
    facts: ModelFacts,
    *,
    base: str,
    trainable: str,
    full: bool,
    quantized_compute: str | None = None,
    attn_implementation: str = "auto",
) -> ModelFacts:
    """The profiled model as the run loads it (runspec.precision decides the dtypes): the profile is built once, in
    fp32 on the meta device, whatever device a run trains on. Full fine-tuning: every weight in `base` (fp32
    master weights, or bf16 with pure_bf16). A PEFT method: the frozen base (and base parameters it leaves
    trainable, such as biases) in `base`, the parameters it adds (adapters, prompt encoders, prefixes) in
    `trainable` (peft keeps them fp32 beside a 16-bit base). 4-bit layers keep their packed size; they
    de-quantize to `quantized_compute`. `attn_implementation`: training.attn_implementation (auto keeps the
    profiled model's default)."""

    def dtype_of(group: ParamGroup) -> str:
        if group.quantized:
            return group.dtype
        if full:
            return base
        return trainable if group.kind == "adapter" else base

    groups = tuple(replace(group, dtype=dtype_of(group)) for group in facts.groups)
    quantization = facts.quantization
    if quantization is not None and quantized_compute:
        quantization = replace(quantization, compute_dtype=quantized_compute)
    attention = facts.attn_implementation if attn_implementation == "auto" else attn_implementation
    return replace(facts, groups=groups, load_dtype=base, quantization=quantization, attn_implementation=attention)


#: Model types liger-kernel has kernels for (its MODEL_TYPE_TO_APPLY_LIGER_FN, the long-standing ones): the
#: estimate's assumption for training.liger_kernel=auto on a GPU, where the gpu extra installs liger-kernel.
LIGER_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "gemma",
        "gemma2",
        "gemma3_text",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "granite",
        "olmo2",
        "glm4",
    }
)


def liger_planned(setting: str, model_type: str, device: str) -> tuple[bool, str]:
    """Whether the estimate counts Liger's kernels (training.liger_kernel), and why."""
    if setting == "off":
        return False, "training.liger_kernel=off"
    if setting == "on":
        return True, "training.liger_kernel=on"
    if device != "cuda":
        return False, "liger_kernel=auto: off on a CPU (Liger's kernels are Triton kernels for CUDA GPUs)"
    if model_type not in LIGER_MODEL_TYPES:
        return False, f"liger_kernel=auto: off, liger-kernel has no kernels for {model_type} models"
    return True, (
        f"liger_kernel=auto: on for {model_type} on a GPU, assuming the worker has liger-kernel (the gpu extra); "
        "without it the run materialises the logits and needs the logits line of liger_kernel=off"
    )


# -- how the run computes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunShape:
    """The numbers a method's memory hook needs about how the run computes."""

    device: str  # cuda or cpu
    precision: str  # fp32, bf16, fp16 (resolved for the device)
    batch_size: int
    seq_len: int  # tokens through the model per sample (max_length, plus input virtual tokens)
    key_len: int  # keys each query attends to (seq_len, plus prefix tokens)
    autocast: bool
    compute_bytes: int  # matmul inputs and outputs under autocast, else the weights' dtype
    residual_bytes: int  # the residual stream between layers (the embeddings' dtype)
    norm_out_bytes: int  # what a norm hands to the next matmul
    quant_compute_bytes: int  # the dtype 4-bit layers de-quantize to (bnb_4bit_compute_dtype)
    mask_bytes: int  # a dropout mask element (bool on CUDA; the tensor's dtype on a CPU)
    gradient_checkpointing: bool
    liger: bool = False  # Liger's fused kernels: RMSNorm, SwiGLU, fused linear + cross entropy (no logits)
    adapter_input_bytes: int = 0  # peft casts an adapter's input to its (fp32) weights' dtype; 0: no cast

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len
