"""How much memory a run needs, per component, with the formula behind each line (the course's 显存资源估算).

Pure Python: the web process computes an estimate from a run spec and a worker's *memory profile* of the model
(`worker/training/memory_profile.py` builds the model on the meta device and reports its parameters by kind, dtype and
trainability, one decoder layer's shape, what the method adds). Nothing here imports torch.

What is counted, in bytes (b = batch size, s = tokens per sample, h = hidden size, a = heads, L = layers,
f = FFN width, V = vocabulary, c = bytes of the compute dtype, r = bytes of the residual stream):

* weights: every unique parameter at its dtype; layers loaded in 4 bit cost 0.5 byte per parameter plus their
  quantization constants (one fp32 absmax per block of 64: 0.5 bit per parameter; with double quantization an
  8-bit absmax per block plus one fp32 constant per 256 blocks: 8/64 + 32/(64·256) ≈ 0.127 bit);
* trainable parameters, gradients for them only (same dtype), optimizer state (AdamW: two moments per trainable
  parameter at its dtype; 8-bit AdamW one byte each plus a scale per 256 values; SGD none);
* mixed precision: the Trainer keeps the parameters in their loaded dtype (fp32 here) and autocasts; there is
  no separate master copy, but autocast's 16-bit copies of the linear weights are kept for backward;
* activations per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models": 34·s·b·h + 5·a·s²·b bytes per layer in 16 bit), re-derived from the layer's real shape and dtypes: the
  inputs saved by each norm and matmul, Q/K/V, the attention probabilities (eager attention keeps the fp32
  softmax and its 16-bit copy: the s² term; fused SDPA/flash attention does not), the FFN activation; gradient
  checkpointing keeps only each layer's input and recomputes one layer at a time;
* logits: b·s·V at the start of backward as the fp32 log-softmax kept for backward, its incoming gradient and
  the gradient it produces (12 bytes per logit);
* prompt methods: prompt tuning and P-Tuning put their virtual tokens before every sample (the sequence grows);
  prefix tuning and P-Tuning v2 add past key/values at every layer (attention over s + n keys);
* framework overhead: the CUDA context and the caching allocator's slack (not in max_memory_allocated, but
  the device has to hold it), or on a CPU the interpreter with torch and transformers loaded.

The peak is the largest of: the end of the forward pass, the start of backward (every activation plus the
logits' gradients, before most gradients exist: the Trainer frees gradients after each step), the backward of
one recomputed layer (gradient checkpointing), and the optimizer step (all gradients plus the optimizer's
scratch). Gradient accumulation keeps the gradients across micro-batches, so then they coexist with activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runspec.methods.base import MethodSpec
    from runspec.spec import RunSpec

#: Bump when the profile's shape changes (cached answers of older workers are then refused).
PROFILE_VERSION = 1

MIB = 2**20
GIB = 2**30

DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "float": 4,
    "tfloat32": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "int8": 1,
    "uint8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "bool": 1,
}

#: CUDA context and library handles outside PyTorch's allocator (typical for torch 2.x with lazy module loading).
CUDA_CONTEXT_BYTES = 512 * MIB
#: Caching allocator slack: reserved minus allocated memory at the peak (fragmentation, rounding of blocks).
ALLOCATOR_SLACK = 0.10
#: A training worker's interpreter with torch, transformers, peft and datasets imported: ≈490 MiB resident measured.
CPU_RUNTIME_BYTES = 512 * MIB
#: bitsandbytes: 8-bit optimizer state is kept in 32 bit for tensors smaller than this (min_8bit_size).
BNB_MIN_8BIT_SIZE = 4096
BNB_4BIT_BLOCK = 64


class EstimateError(ValueError):
    """The spec cannot be estimated (unknown architecture, missing dimensions): the reason, for a 422."""


def dtype_bytes(name: str | None, default: int = 4) -> int:
    if not name:
        return default
    return DTYPE_BYTES.get(str(name).removeprefix("torch."), default)


def human_bytes(value: float) -> str:
    value = float(value)
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


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
    """A worker's memory profile, checked and typed (see worker/training/memory_profile.py)."""

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
        missing = [
            key for key in ("hidden_size", "num_layers", "num_heads", "vocab_size") if not _positive(dims.get(key))
        ]
        if missing:
            raise EstimateError(
                f"cannot estimate memory for architecture {model_type!r}: its config has no {', '.join(missing)}"
            )
        block = profile.get("block") or {}
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
                f"cannot estimate memory for architecture {model_type!r} ({profile.get('architecture')}): no "
                "decoder layer with attention and MLP linear layers was found in it"
            )
        mlp = [lin for lin in linears if lin.part == "mlp"]
        hidden = int(dims["hidden_size"])
        heads = int(dims["num_heads"])
        activation = block.get("activation") or {}
        dropout = dims.get("dropout") or {}
        load = profile.get("load") or {}
        quant = load.get("quantization")
        method = profile.get("method") or {}
        prompt = method.get("prompt")
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
            groups=tuple(
                ParamGroup(
                    kind=str(g["kind"]),
                    dtype=str(g["dtype"]),
                    trainable=bool(g["trainable"]),
                    quantized=bool(g.get("quantized")),
                    params=int(g["params"]),
                    tensors=int(g.get("tensors") or 1),
                    largest_tensor=int(g.get("largest_tensor") or 0),
                )
                for g in profile.get("groups") or []
            ),
            trainable_params=int(profile.get("trainable_params") or 0),
            total_params=int(profile.get("total_params") or 0),
            load_dtype=str(load.get("dtype") or "float32"),
            quantization=Quantization(
                bits=int(quant["bits"]),
                quant_type=str(quant.get("quant_type") or "nf4"),
                double_quant=bool(quant.get("double_quant")),
                compute_dtype=str(quant.get("compute_dtype") or "float32"),
                storage_dtype=str(quant.get("storage_dtype") or "uint8"),
                blocksize=int(quant.get("blocksize") or BNB_4BIT_BLOCK),
            )
            if quant
            else None,
            peft_type=method.get("peft_type"),
            adapted_modules=tuple(
                AdaptedModule(
                    name=str(m["name"]),
                    base_type=str(m.get("base_type") or ""),
                    in_features=int(m["in"]),
                    out_features=int(m["out"]),
                    count=int(m.get("count") or 1),
                    feedforward=bool(m.get("feedforward")),
                )
                for m in method.get("adapted_modules") or []
            ),
            prompt=PromptFacts(
                kind=str(prompt["kind"]),
                num_virtual_tokens=int(prompt["num_virtual_tokens"]),
                encoder_hidden_size=prompt.get("encoder_hidden_size"),
                prefix_projection=bool(prompt.get("prefix_projection")),
                encoder_reparameterization_type=str(prompt.get("encoder_reparameterization_type") or ""),
            )
            if prompt
            else None,
            buffers={str(k): int(v) for k, v in (profile.get("buffers") or {}).items()},
            quantizable_linear_params=int(profile.get("quantizable_linear_params") or 0),
            embeddings_trainable=bool(dims.get("embeddings_trainable")),
            lm_head_trainable=bool(dims.get("lm_head_trainable")),
        )


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def _norm(item: Mapping[str, Any]) -> Norm:
    return Norm(
        name=str(item.get("name", "")),
        type=str(item.get("type", "layernorm")),
        saved_per_token=float(item.get("saved_per_token") or 1.0),
        after_layers=bool(item.get("after_layers", True)),
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

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class ActivationTerm:
    """Activation memory a method adds, for the whole model (spread over its layers): bytes per token, and bytes
    that do not depend on the batch (a weight-sized tensor an adapter builds in each forward pass)."""

    label: str
    bytes_per_token: float
    formula: str
    fixed_bytes: float = 0.0


@dataclass(frozen=True)
class MethodMemory:
    """What a method contributes to the estimate beyond its parameters (those come from the built model)."""

    terms: tuple[ActivationTerm, ...] = ()
    notes: tuple[str, ...] = ()


def adapter_memory(
    facts: ModelFacts,
    run: RunShape,
    *,
    label: str,
    rank: int = 0,
    dropout: float = 0.0,
    input_copies: float = 1.0,
) -> MethodMemory:
    """Activations of adapters beside linear layers (LoRA-like), per adapted module and token: a dropout mask, the
    input the adapter's first matmul keeps for its weight gradient (the frozen base layer keeps none: its own
    input is not needed to train it) and a rank-sized intermediate."""
    total = 0.0
    parts = []
    for module in facts.adapted_modules:
        per = 0.0
        if dropout > 0:
            per += run.mask_bytes * module.in_features
        per += input_copies * run.compute_bytes * module.in_features
        per += run.compute_bytes * rank
        total += per * module.count
        parts.append(f"{module.count}× {module.name} ({module.in_features}→{module.out_features})")
    if not facts.adapted_modules:
        return MethodMemory()
    pieces = []
    if dropout > 0:
        pieces.append(f"dropout mask {run.mask_bytes} B·in")
    pieces.append(f"input {run.compute_bytes} B·in")
    if rank:
        pieces.append(f"rank-{rank} intermediate {run.compute_bytes} B·r")
    formula = f"per token and adapted module: {' + '.join(pieces) or '0'}; over {', '.join(parts)}"
    return MethodMemory(terms=(ActivationTerm(label, total, formula),))


def delta_weight_memory(facts: ModelFacts, run: RunShape, *, label: str) -> MethodMemory:
    """LoHa, LoKr: each adapted layer builds its full update ΔW (out×in) in every forward pass and its matmul keeps
    it for backward, with the layer's input (for ΔW's gradient)."""
    per_token = sum(run.compute_bytes * m.in_features * m.count for m in facts.adapted_modules)
    fixed = sum(run.compute_bytes * m.in_features * m.out_features * m.count for m in facts.adapted_modules)
    if not facts.adapted_modules:
        return MethodMemory()
    formula = (
        f"per adapted layer: ΔW {run.compute_bytes}·in·out (built each forward pass) + input {run.compute_bytes} B·in "
        f"per token; over {', '.join(f'{m.count}× {m.name}' for m in facts.adapted_modules)}"
    )
    return MethodMemory(terms=(ActivationTerm(label, per_token, formula, fixed),))


def vera_memory(facts: ModelFacts, run: RunShape, *, label: str, rank: int, dropout: float) -> MethodMemory:
    """VeRA: the frozen shared A, B keep no input; the scaling vectors keep the rank-r intermediate and the output;
    under autocast each layer casts its slices of A and B again."""
    per_token = 0.0
    fixed = 0.0
    for m in facts.adapted_modules:
        per = run.compute_bytes * (rank + m.out_features)
        if dropout > 0:
            per += (run.mask_bytes + run.compute_bytes) * m.in_features
        per_token += per * m.count
        if run.autocast:
            fixed += run.compute_bytes * rank * (m.in_features + m.out_features) * m.count
    if not facts.adapted_modules:
        return MethodMemory()
    formula = f"per adapted layer and token {run.compute_bytes}·(r + out) with r = {rank}" + (
        f"; each layer's {run.compute_bytes}-byte copy of A and B: r·(in + out)" if run.autocast else ""
    )
    return MethodMemory(terms=(ActivationTerm(label, per_token, formula, fixed),))


def ia3_memory(facts: ModelFacts, run: RunShape, *, label: str) -> MethodMemory:
    """IA³: a feed-forward layer's scaled input, or another layer's output before it is scaled."""
    per_token = sum(
        run.compute_bytes * (m.in_features if m.feedforward else m.out_features) * m.count
        for m in facts.adapted_modules
    )
    if not facts.adapted_modules:
        return MethodMemory()
    formula = f"per adapted layer and token: {run.compute_bytes}·in (feed-forward layers) or {run.compute_bytes}·out"
    return MethodMemory(terms=(ActivationTerm(label, per_token, formula),))


def default_method_memory(method: MethodSpec, facts: ModelFacts, run: RunShape) -> MethodMemory:
    """Methods without their own hook: adapters beside linear layers keep one input copy per adapted module."""
    if facts.adapted_modules:
        return adapter_memory(facts, run, label=f"{method.label} adapters")
    return MethodMemory()


# -- the estimate -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    key: str
    label: str
    bytes: int  # the component's full size
    formula: str
    peak_bytes: int = 0  # how much of it is resident at the peak
    parts: tuple[Line, ...] = ()


@dataclass(frozen=True)
class Suggestion:
    change: str
    patch: dict[str, Any]
    total_bytes: int


@dataclass(frozen=True)
class Estimate:
    model: str
    method: str
    device: str
    precision: str
    batch_size: int
    seq_len: int
    lines: tuple[Line, ...]
    peak_phase: str
    allocated_peak_bytes: int  # what torch.cuda.max_memory_allocated should show (no overhead)
    total_peak_bytes: int  # plus framework overhead: what the device must hold
    trainable_params: int
    total_params: int
    device_memory_bytes: int | None = None
    device_source: str | None = None
    fits: bool | None = None
    headroom_bytes: int | None = None
    notes: tuple[str, ...] = ()
    suggestion: Suggestion | None = None

    def line(self, key: str) -> Line:
        for line in self.lines:
            if line.key == key:
                return line
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(precision: str, device: str) -> str:
    """As training resolves it: auto is bf16 on a GPU (the worker checks support), fp32 on a CPU."""
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    return precision


def run_shape(spec: RunSpec, facts: ModelFacts, device: str) -> RunShape:
    precision = resolve_precision(spec.training.precision, device)
    autocast = precision in ("bf16", "fp16")
    weight_bytes = _linear_weight_bytes(facts)
    compute = 2 if autocast else weight_bytes
    residual = dtype_bytes(_group_dtype(facts, "embedding"), weight_bytes)
    layernorm = all(norm.type == "layernorm" for norm in facts.norms) if facts.norms else True
    norm_out = 4 if autocast and layernorm else residual
    quant_compute = compute
    if facts.quantization is not None:
        quant_compute = dtype_bytes(_quant_compute_dtype(spec.method, facts.quantization, device), compute)
    virtual_in = facts.prompt.num_virtual_tokens if facts.prompt and facts.prompt.kind == "input" else 0
    prefix = facts.prompt.num_virtual_tokens if facts.prompt and facts.prompt.kind == "past_key_values" else 0
    seq = spec.training.max_length + virtual_in
    return RunShape(
        device=device,
        precision=precision,
        batch_size=spec.training.batch_size,
        seq_len=seq,
        key_len=seq + prefix,
        autocast=autocast,
        compute_bytes=compute,
        residual_bytes=residual,
        norm_out_bytes=norm_out,
        quant_compute_bytes=quant_compute,
        mask_bytes=1 if device == "cuda" else compute,
        gradient_checkpointing=spec.training.gradient_checkpointing,
    )


def _quant_compute_dtype(method: MethodSpec, quantization: Quantization, device: str) -> str:
    """The 4-bit layers' compute dtype on the estimated device (QLoRA's "auto" follows the device)."""
    chosen = getattr(method, "bnb_4bit_compute_dtype", None)
    if chosen == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return str(chosen or quantization.compute_dtype)


def _group_dtype(facts: ModelFacts, kind: str) -> str | None:
    for group in facts.groups:
        if group.kind == kind and not group.quantized:
            return group.dtype
    return None


def _linear_weight_bytes(facts: ModelFacts) -> int:
    return dtype_bytes(_group_dtype(facts, "linear") or facts.load_dtype, 4)


def quantized_bytes(params: int, tensors: int, quantization: Quantization) -> tuple[int, str]:
    """bitsandbytes storage of quantized weights: packed values plus quantization constants."""
    if quantization.bits == 8:
        return params, "1 B/param (LLM.int8 weights; row scales not counted)"
    blocks = math.ceil(params / quantization.blocksize)
    packed = math.ceil(params / 2)
    code = 16 * 4 * tensors  # the 16-value NF4/FP4 code book per tensor, fp32
    if quantization.double_quant:
        nested_blocks = math.ceil(blocks / 256)
        constants = blocks + nested_blocks * 4 + tensors * (256 * 4 + 4)  # 8-bit absmax, fp32 second level, code
        rule = (
            f"4 bit + double-quantized constants (8-bit absmax per {quantization.blocksize} + fp32 per "
            f"{quantization.blocksize * 256}: ≈0.127 bit) per param"
        )
    else:
        constants = blocks * 4
        rule = f"4 bit + one fp32 absmax per block of {quantization.blocksize} (0.5 bit) per param"
    return packed + constants + code, f"{quantization.quant_type.upper()}: {rule}"


def weight_lines(facts: ModelFacts, quant_compute_bytes: int = 4) -> tuple[int, list[Line]]:
    """Weights by kind and dtype; quantized linear weights at their 4-bit cost (their biases are cast to the
    compute dtype by bitsandbytes on first use)."""
    parts: list[Line] = []
    merged: dict[tuple[str, str, bool], list[int]] = {}
    for group in facts.groups:
        key = (group.kind, group.dtype, group.quantized)
        entry = merged.setdefault(key, [0, 0])
        entry[0] += group.params
        entry[1] += group.tensors
    total = 0
    labels = {
        "linear": "linear weights",
        "linear_bias": "linear biases",
        "embedding": "embeddings",
        "lm_head": "lm_head",
        "norm": "norms",
        "other": "other",
        "adapter": "added by the method",
    }
    for (kind, dtype, quantized), (params, tensors) in sorted(merged.items()):
        if quantized and facts.quantization is not None and kind == "linear_bias":
            size = params * quant_compute_bytes
            formula = f"{params:,} params × {quant_compute_bytes} B (biases of 4-bit layers, in the compute dtype)"
        elif quantized and facts.quantization is not None:
            size, rule = quantized_bytes(params, tensors, facts.quantization)
            formula = f"{params:,} params × {rule}"
        else:
            size = params * dtype_bytes(dtype)
            formula = f"{params:,} params × {dtype_bytes(dtype)} B ({dtype})"
        parts.append(Line(f"weights.{kind}.{dtype}", f"{labels.get(kind, kind)} ({dtype})", size, formula, size))
        total += size
    for dtype, numel in sorted(facts.buffers.items()):
        size = numel * dtype_bytes(dtype)
        if size:
            parts.append(
                Line(f"weights.buffers.{dtype}", f"buffers ({dtype})", size, f"{numel:,} × {dtype_bytes(dtype)} B")
            )
            total += size
    return total, parts


@dataclass(frozen=True)
class OptimizerMemory:
    state: int
    scratch: int
    formula: str
    scratch_formula: str
    notes: tuple[str, ...] = ()


def optimizer_memory(facts: ModelFacts, optim: str, run: RunShape) -> OptimizerMemory:
    """Optimizer state (bytes) and the step's scratch memory, with their formulas."""
    trainable = [g for g in facts.groups if g.trainable]
    params = sum(g.params for g in trainable)
    tensors = sum(g.tensors for g in trainable)
    state_bytes = sum(g.params * dtype_bytes(g.dtype) for g in trainable)
    largest = max((g.largest_tensor * dtype_bytes(g.dtype) for g in trainable), default=0)
    if optim in ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw"):
        fused = optim == "adamw_torch_fused"
        # torch keeps each parameter's step count as a 0-d fp32 tensor on the CPU (on the GPU only when fused).
        steps = 4 * tensors if run.device == "cpu" or fused else 0
        formula = f"AdamW: 2 moments × {params:,} trainable params at their dtype (fp32: 8 B/param)"
        if steps:
            formula += f" + {tensors} step counters × 4 B"
        if run.device != "cuda":
            scratch = 2 * largest
            scratch_formula = "the per-parameter temporaries of the AdamW update (largest parameter, twice)"
        elif fused:
            scratch, scratch_formula = 0, "none: the fused kernel updates in place"
        else:
            scratch = state_bytes
            scratch_formula = "foreach AdamW's temporary second-moment square roots (one per trainable parameter)"
        return OptimizerMemory(2 * state_bytes + steps, scratch, formula, scratch_formula)
    if optim in ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"):
        big = sum(g.params for g in trainable if g.largest_tensor >= BNB_MIN_8BIT_SIZE)
        small = params - big
        formula = (
            f"8-bit AdamW: 2 × {big:,} params × (1 B + fp32 scale per 256) + 2 × {small:,} params of tensors "
            f"under {BNB_MIN_8BIT_SIZE} values × 4 B"
        )
        notes = (
            (
                "paged optimizer state lives in CUDA unified memory: torch.cuda.max_memory_allocated does not "
                "count it, NVML does; under memory pressure it is paged out to CPU RAM",
            )
            if optim.startswith("paged")
            else ()
        )
        size = int(2 * big * (1 + 4 / 256)) + 2 * small * 4
        return OptimizerMemory(size, 0, formula, "none: bitsandbytes updates in place", notes)
    if optim == "paged_adamw_32bit":
        return OptimizerMemory(
            2 * params * 4,
            0,
            f"paged 32-bit AdamW: 2 × {params:,} params × 4 B (in CUDA unified memory)",
            "none: bitsandbytes updates in place",
            ("paged optimizer state is not counted by torch.cuda.max_memory_allocated (NVML sees it)",),
        )
    if optim == "sgd":
        return OptimizerMemory(0, 0, "SGD without momentum keeps no state", "none")
    if optim == "adafactor":
        size = int(params * 4 * 2 / max(1, math.sqrt(params / max(1, tensors))))
        formula = "Adafactor: factored second moments (row + column sums per matrix), no first moment"
        return OptimizerMemory(size, largest, formula, "one update-sized temporary (largest parameter)")
    return OptimizerMemory(
        2 * state_bytes,
        state_bytes,
        f"{optim}: assumed 2 states per trainable parameter",
        "assumed one temporary per trainable parameter",
    )


def activation_lines(facts: ModelFacts, run: RunShape, method_memory: MethodMemory) -> dict[str, Any]:
    """Saved activations per layer and outside the layers, logits, prompt extras; per token unless noted."""
    h, a, kv_heads, hd = facts.hidden_size, facts.num_heads, facts.num_kv_heads, facts.head_dim
    c, r, no, qc = run.compute_bytes, run.residual_bytes, run.norm_out_bytes, run.quant_compute_bytes
    q_dim = a * hd
    # Eager attention repeats grouped K/V to every head; SDPA takes them as they are (enable_gqa).
    kv_dim = q_dim if kv_heads != a and not run_uses_fused_attention(facts, run) else kv_heads * hd
    attn = facts.attention_linears
    mlp = facts.mlp_linears
    f = facts.ffn_size

    def wanted(linear: Linear) -> int:
        if linear.quantized:
            return qc
        return c if run.autocast else no

    def out_bytes(linear: Linear) -> int:
        return no if linear.quantized else c  # bitsandbytes hands back the input's dtype

    def kept_inputs(consumers: tuple[Linear, ...], source: int) -> tuple[float, str]:
        """Inputs kept by the trained matmuls among `consumers` (a frozen one needs only its weight)."""
        kept = [lin for lin in consumers if lin.trainable]
        if not kept:
            return 0.0, "none: frozen matmuls keep no input (only trained weights need it)"
        copies = sum(wanted(lin) * lin.in_features for lin in kept if wanted(lin) != source)
        shared = max((source * lin.in_features for lin in kept if wanted(lin) == source), default=0)
        if copies and not shared:
            return copies, f"{len(kept)} trained matmul(s) keep their own {c}-byte copy of the input"
        return copies + shared, "the input, kept once for the trained matmuls"

    norm_bytes = sum(n.saved_per_token * (4 if n.type == "rmsnorm" else r) * h for n in facts.norms)
    attn_in, attn_in_text = kept_inputs(attn[:-1], no)
    qkv = c * (q_dim + 2 * kv_dim)
    fused = run_uses_fused_attention(facts, run)
    if fused:
        scores = 0.0
        core = qkv + c * q_dim + 4 * a
        core_text = f"Q,K,V {c}·(h + 2·h_kv) + SDPA output {c}·h (fused attention: no s² term)"
    else:
        per_key = 4 + (c if c != 4 else 0)
        dropout_text = ""
        if facts.attention_dropout > 0:
            per_key += run.mask_bytes + c
            dropout_text = f" + dropout mask {run.mask_bytes} + output {c}"
        scores = per_key * a * run.key_len
        core = qkv
        core_text = (
            f"Q,K,V {c}·(h + 2·h_kv); softmax fp32 4{f' + its {c}-byte copy' if c != 4 else ''}{dropout_text} "
            f"per a·s_k (s² term: {per_key}·a·s_k = {human_bytes(scores)} per token)"
        )
    out_in, out_text = kept_inputs(attn[-1:], c)
    mlp_in, mlp_in_text = kept_inputs(mlp[:-1], no)
    lin_out = out_bytes(mlp[0])
    act = facts.activation_saved * lin_out * f
    gated = 2 * lin_out * f if facts.gated_mlp else 0
    down_in, down_text = kept_inputs(mlp[-1:], lin_out)
    residual_dropout = 2 * run.mask_bytes * h if facts.hidden_dropout > 0 else 0
    per_layer_token = norm_bytes + attn_in + core + scores + out_in + mlp_in + act + gated + down_in + residual_dropout
    layer_parts = [
        ("norm inputs", norm_bytes, f"{len(facts.norms)} norms keep their input ({r}·h each)"),
        ("attention input", attn_in, attn_in_text),
        ("Q, K, V" + (" and output" if fused else ""), core, core_text),
        ("attention scores (s²)", scores, "eager attention keeps the probabilities" if scores else "none: fused"),
        ("attention output projection input", out_in, out_text),
        ("MLP input", mlp_in, mlp_in_text),
        (
            "MLP activation",
            act + gated,
            f"the activation function keeps {facts.activation_saved:g}×{lin_out}·f"
            + (f" + the gate product's operands 2×{lin_out}·f" if facts.gated_mlp else "")
            + f" (f = {f})",
        ),
        ("MLP down-projection input", down_in, down_text),
    ]
    if residual_dropout:
        layer_parts.append(("dropout masks", residual_dropout, f"2 × {run.mask_bytes}·h"))

    grad_from_start = facts.embeddings_trainable or bool(facts.prompt and facts.prompt.kind == "input")
    # Until the first trained weight, nothing needs a gradient: the first layer's first norm keeps nothing.
    first_layer_saving = 0.0
    if not grad_from_start and facts.norms:
        first = facts.norms[0]
        first_layer_saving = first.saved_per_token * (4 if first.type == "rmsnorm" else r) * h
    stem = sum(
        n.saved_per_token * (4 if n.type == "rmsnorm" else r) * h
        for n in facts.stem_norms
        if n.after_layers or grad_from_start
    )
    if facts.lm_head_trainable:
        stem += (c if run.autocast else no) * h  # lm_head's input, for its weight gradient
    if facts.embedding_dropout > 0 and grad_from_start:
        stem += run.mask_bytes * h
    method_tokens = sum(term.bytes_per_token for term in method_memory.terms)
    method_fixed = sum(term.fixed_bytes for term in method_memory.terms)
    # Backward of one layer: its largest temporaries (the probabilities' gradient and the softmax backward, or the
    # activation function's backward and its output gradient) plus the hidden states' gradients.
    workspace = (
        max(
            0.0 if fused else (c + 4) * a * run.key_len,
            (facts.activation_backward_peak + 1) * lin_out * f,
        )
        + 2 * r * h
    )

    tokens = run.tokens
    layers = facts.num_layers
    layer_bytes = per_layer_token * tokens
    all_layers = layer_bytes * layers
    checkpoint_inputs = r * h * tokens * layers
    logits_backward = 12 * tokens * facts.vocab_size
    logits_forward = (c + 4 + 4 if c != 4 else 8) * tokens * facts.vocab_size

    prompt_bytes = 0.0
    prompt_text = ""
    prompt = facts.prompt
    if prompt is not None:
        n = prompt.num_virtual_tokens
        enc = int(prompt.encoder_hidden_size or h)
        p_b = dtype_bytes(_group_dtype(facts, "adapter"), 4)
        if prompt.kind == "past_key_values":
            kv_bytes = run.batch_size * n * 2 * layers * kv_heads * hd * p_b
            encoder = run.batch_size * n * (enc * 2 + 2 * layers * h) * p_b if prompt.prefix_projection else 0
            prompt_bytes = kv_bytes + encoder
            prompt_text = (
                f"past key/values b·n·2·L·h_kv·{p_b} = {run.batch_size}·{n}·2·{layers}·{kv_heads * hd}·{p_b}"
                + (f" + prefix MLP b·n·(2·{enc} + 2·L·h)·{p_b}" if encoder else "")
                + f"; attention over s + n = {run.key_len} keys (in the layers' s² and K/V terms)"
            )
        else:
            encoder = run.batch_size * n * (4 * enc + h) * p_b if prompt.encoder_reparameterization_type else 0
            prompt_bytes = encoder + run.batch_size * n * h * p_b
            prompt_text = (
                f"{n} virtual tokens before each sample: every layer and the logits see s = "
                f"{run.seq_len} tokens (counted there); the prompt embeddings b·n·h·{p_b}"
                + (f" + prompt encoder b·n·(4·{enc} + h)·{p_b}" if encoder else "")
            )
    return {
        "per_layer_token": per_layer_token,
        "layer_parts": layer_parts,
        "layer_bytes": layer_bytes,
        "all_layers": all_layers - first_layer_saving * tokens,
        "checkpoint_inputs": checkpoint_inputs,
        "stem": stem * tokens,
        "method": method_tokens * tokens + method_fixed,
        "method_per_layer": (method_tokens * tokens + method_fixed) / layers,
        "logits_backward": logits_backward,
        "logits_forward": logits_forward,
        "prompt": prompt_bytes,
        "prompt_text": prompt_text,
        "scores_per_layer": scores * tokens,
        # a 4-bit layer de-quantizes its whole weight for each matmul (forward and backward), one at a time
        "workspace": workspace * tokens
        + max((qc * lin.in_features * lin.out_features for lin in facts.linears if lin.quantized), default=0),
    }


def run_uses_fused_attention(facts: ModelFacts, run: RunShape) -> bool:
    """SDPA / flash attention keep no s² probabilities (on CPU too: PyTorch's SDPA has a flash kernel)."""
    return facts.attn_implementation in ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def weight_copy_bytes(facts: ModelFacts, run: RunShape) -> tuple[int, int, str]:
    """Autocast's 16-bit copies of linear weights kept for backward: all layers, and one layer plus lm_head."""
    if not run.autocast:
        return 0, 0, "no autocast: matmuls use the weights as they are"
    weight_dtype_bytes = _linear_weight_bytes(facts)
    if weight_dtype_bytes == run.compute_bytes:
        return 0, 0, "weights are already in the compute dtype"
    per_layer = sum(
        run.compute_bytes * lin.in_features * lin.out_features for lin in facts.linears if not lin.quantized
    )
    head = run.compute_bytes * facts.vocab_size * facts.hidden_size
    total = per_layer * facts.num_layers + head
    formula = (
        f"autocast keeps a {run.compute_bytes}-byte copy of each fp32 linear weight for backward: "
        f"{facts.num_layers} layers × {human_bytes(per_layer)} + lm_head {human_bytes(head)}; no fp32 master copy "
        "(the parameters already are fp32)"
    )
    if facts.quantization is not None:
        formula += "; 4-bit layers keep only their packed weights and de-quantize again in backward"
    return total, per_layer + head, formula


def estimate_memory(
    spec: RunSpec,
    profile: Mapping[str, Any],
    *,
    device: str = "cuda",
    device_memory_bytes: int | None = None,
    device_source: str | None = None,
) -> Estimate:
    """The memory `spec` needs on `device` ("cuda" or "cpu"), from a worker's memory profile of its model."""
    facts = ModelFacts.from_profile(profile)
    notes: list[str] = []
    if facts.quantization is not None and device != "cuda" and spec.method.requires_cuda:
        notes.append(f"{spec.method.label} needs a CUDA device: estimated for one")
        device = "cuda"
    run = run_shape(spec, facts, device)
    memory = spec.method.memory(facts, run)
    notes.extend(memory.notes)

    weights, weight_parts = weight_lines(facts, run.quant_compute_bytes)
    trainable_groups = [g for g in facts.groups if g.trainable]
    trainable_bytes = sum(g.params * dtype_bytes(g.dtype) for g in trainable_groups)
    grads = trainable_bytes
    head_grads = sum(
        g.params * dtype_bytes(g.dtype)
        for g in trainable_groups
        if g.kind == "lm_head" or (g.kind == "embedding" and facts.tied_embeddings)
    )
    optim = getattr(spec.training, "optim", "adamw_torch_fused")
    optimizer_mem = optimizer_memory(facts, optim, run)
    optimizer, optimizer_scratch = optimizer_mem.state, optimizer_mem.scratch
    notes.extend(optimizer_mem.notes)
    weights_formula = _weights_formula(facts)
    gpus = getattr(spec.training, "num_gpus", 1)
    ddp_buckets = 0
    if gpus > 1 and getattr(spec.training, "distributed", "ddp") == "fsdp":
        # Per GPU: every sharded state is 1/N; a layer's full weights exist only while it runs (and the next one,
        # prefetched). Activations and logits are this GPU's own batch, as on one GPU.
        gathered = 2 * weights // max(1, facts.num_layers)
        weights = weights // gpus + gathered
        grads, head_grads = grads // gpus, head_grads // gpus
        optimizer, optimizer_scratch = optimizer // gpus, optimizer_scratch // gpus
        weights_formula += f"; FSDP: 1/{gpus} of them per GPU plus two decoder layers gathered at a time"
        notes.append(
            f"per GPU of {gpus} (FSDP): weights, gradients and optimizer state are sharded 1/{gpus} each; "
            "activations and logits are each GPU's own batch"
        )
    elif gpus > 1:
        ddp_buckets = trainable_bytes  # DDP's reducer: one flat bucket per group of gradients, for all of them
        notes.append(
            f"per GPU of {gpus} (DDP): every GPU holds what one GPU would, plus DDP's gradient buckets "
            f"({human_bytes(ddp_buckets)}); each GPU trains its own batch of {spec.training.batch_size}"
        )
    paged = optim.startswith("paged")
    resident_optimizer = 0 if paged else optimizer
    copies_all, copies_one, copies_formula = weight_copy_bytes(facts, run)
    act = activation_lines(facts, run, memory)
    accumulating = spec.training.gradient_accumulation_steps > 1

    gc = run.gradient_checkpointing
    saved = act["checkpoint_inputs"] if gc else act["all_layers"] + act["method"]
    lm_head_copy = facts.vocab_size * facts.hidden_size * run.compute_bytes if copies_all else 0
    copies_saved = lm_head_copy if gc else copies_all  # under checkpointing only lm_head's copy outlives a layer
    base = weights + resident_optimizer + ddp_buckets
    # The logits' gradients exist before any weight gradient (lm_head's comes right after, when they are freed).
    grads_early = grads if accumulating else 0
    phases: dict[str, dict[str, float]] = {
        "end of forward": {
            "activations": saved + act["stem"],
            "logits": act["logits_forward"],
            "mixed_precision": copies_saved,
            "prompt": act["prompt"],
            "gradients": grads_early if accumulating else 0,
        },
        "start of backward": {
            "activations": saved + act["stem"],
            "logits": act["logits_backward"],
            "mixed_precision": copies_saved,
            "prompt": act["prompt"],
            "gradients": grads_early,
        },
        "optimizer step": {"gradients": grads, "optimizer_scratch": optimizer_scratch},
    }
    if not gc:
        # Backward of the last layer: every activation still kept, the logits' gradients gone.
        phases["backward of the last layer"] = {
            "activations": saved + act["stem"] + act["workspace"],
            "mixed_precision": copies_saved,
            "prompt": act["prompt"],
            "gradients": grads if accumulating else head_grads,
        }
    if gc:
        # One layer recomputed, plus its backward workspace.
        phases["backward of a recomputed layer"] = {
            "activations": saved + act["layer_bytes"] + act["method_per_layer"] + act["workspace"],
            "mixed_precision": copies_one,
            "prompt": act["prompt"],
            "gradients": grads,
        }
    totals = {name: base + sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=lambda name: totals[name])
    at_peak = phases[peak_phase]
    allocated = int(totals[peak_phase])

    if device == "cuda":
        overhead = int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * allocated)
        overhead_formula = (
            f"CUDA context and library handles ≈ {human_bytes(CUDA_CONTEXT_BYTES)} + caching-allocator slack "
            f"{ALLOCATOR_SLACK:.0%} of the allocated peak (neither shows in torch.cuda.max_memory_allocated)"
        )
    else:
        overhead = CPU_RUNTIME_BYTES
        overhead_formula = (
            f"the worker process with torch, transformers, peft and datasets loaded ≈ {human_bytes(overhead)} "
            "resident (measured on a CPU worker)"
        )
    total = allocated + overhead

    tokens_text = f"b·s = {run.batch_size}·{run.seq_len}"
    layer_formula = (
        f"per layer and token {human_bytes(act['per_layer_token'])} ({run.precision}, {facts.attn_implementation} "
        f"attention; Korthikanti et al. 2022 in 16 bit: 34·h + 5·a·s = "
        f"{human_bytes(34 * facts.hidden_size + 5 * facts.num_heads * run.key_len)}) × {tokens_text} × "
        f"{facts.num_layers} layers"
    )
    if gc:
        layer_formula = (
            f"gradient checkpointing: each layer's input {run.residual_bytes}·h × {tokens_text} × {facts.num_layers} "
            f"layers = {human_bytes(act['checkpoint_inputs'])}, plus one layer recomputed in backward "
            f"({human_bytes(act['layer_bytes'])}: {human_bytes(act['per_layer_token'])} per token)"
        )
    layer_parts = tuple(
        Line(f"activations.{i}", label, int(value * run.tokens), formula + " per token")
        for i, (label, value, formula) in enumerate(act["layer_parts"])
    )
    activation_parts = [
        Line("activations.layers", "decoder layers", int(act["all_layers"]), layer_formula, parts=layer_parts),
        Line(
            "activations.stem",
            "embeddings, final norm, lm_head input",
            int(act["stem"]),
            f"norms outside the layers and lm_head's {run.compute_bytes}·h input × {tokens_text}",
        ),
    ]
    for term in memory.terms:
        activation_parts.append(
            Line(
                "activations.method",
                term.label,
                int(term.bytes_per_token * run.tokens + term.fixed_bytes),
                term.formula + (" (recomputed with the layers under gradient checkpointing)" if gc else ""),
            )
        )
    full_activations = int(act["all_layers"] + act["stem"] + act["method"])
    lines = [
        Line("weights", "weights", weights, weights_formula, weights, tuple(weight_parts)),
        Line(
            "trainable",
            "trainable parameters",
            trainable_bytes,
            f"{facts.trainable_params:,} trainable of {facts.total_params:,} parameters (peft's count); "
            "included in the weights",
            0,
        ),
        Line(
            "gradients",
            "gradients",
            grads,
            "one gradient per trainable parameter at its dtype"
            + (
                "; kept across micro-batches (gradient accumulation)"
                if accumulating
                else "; allocated during backward while activations are freed (the Trainer sets them to None "
                "after each step)"
            ),
            int(at_peak.get("gradients", 0)),
        ),
        Line("optimizer", "optimizer states", optimizer, optimizer_mem.formula, resident_optimizer),
        Line(
            "optimizer_scratch",
            "optimizer step scratch",
            optimizer_scratch,
            optimizer_mem.scratch_formula,
            int(at_peak.get("optimizer_scratch", 0)),
        ),
        Line(
            "mixed_precision",
            "mixed-precision weight copies",
            copies_all,
            copies_formula,
            int(at_peak.get("mixed_precision", 0)),
        ),
        Line(
            "activations",
            "activations",
            full_activations,
            layer_formula,
            int(at_peak.get("activations", 0)),
            tuple(activation_parts),
        ),
        Line(
            "logits",
            "logits",
            int(act["logits_backward"]),
            f"b·s·V = {run.batch_size}·{run.seq_len}·{facts.vocab_size} logits × 12 B at the start of backward "
            "(fp32 log-softmax kept for backward + its gradient + the gradient it produces); the forward holds "
            f"the {run.compute_bytes}-byte logits, their fp32 upcast and the log-softmax",
            int(at_peak.get("logits", 0)),
        ),
    ]
    if ddp_buckets:
        lines.append(
            Line(
                "ddp_buckets",
                "DDP gradient buckets",
                ddp_buckets,
                "DistributedDataParallel's buckets: a copy of every gradient, kept for the all-reduce",
                ddp_buckets,
            )
        )
    if facts.prompt is not None:
        label = "past key/values (prefix)" if facts.prompt.kind == "past_key_values" else "virtual tokens"
        lines.append(Line("prompt", label, int(act["prompt"]), act["prompt_text"], int(at_peak.get("prompt", 0))))
    lines.append(Line("overhead", "framework overhead", overhead, overhead_formula, overhead))

    fits = headroom = None
    if device_memory_bytes:
        fits = total <= device_memory_bytes
        headroom = device_memory_bytes - total
    return Estimate(
        model=spec.model,
        method=spec.method.name,
        device=device,
        precision=run.precision,
        batch_size=run.batch_size,
        seq_len=run.seq_len,
        lines=tuple(lines),
        peak_phase=peak_phase,
        allocated_peak_bytes=allocated,
        total_peak_bytes=total,
        trainable_params=facts.trainable_params,
        total_params=facts.total_params,
        device_memory_bytes=device_memory_bytes,
        device_source=device_source,
        fits=fits,
        headroom_bytes=headroom,
        notes=tuple(notes),
    )


def _weights_formula(facts: ModelFacts) -> str:
    if facts.quantization is not None:
        q = facts.quantization
        return (
            f"{facts.total_params:,} parameters: linear layers in {q.bits} bit ({q.quant_type}"
            f"{', double quantization' if q.double_quant else ''}), embeddings, norms and lm_head at their dtype"
        )
    dtypes = sorted({g.dtype for g in facts.groups})
    return f"{facts.total_params:,} parameters × bytes of their dtype ({', '.join(dtypes)})"


# -- what would make it fit -------------------------------------------------------------------------------------


def candidate_changes(spec: RunSpec) -> list[tuple[str, dict[str, Any]]]:
    """Spec patches that lower memory without changing what is learned, cheapest first: gradient checkpointing
    (recomputes activations, about a third slower), then a smaller batch with proportionally more accumulation
    (same effective batch), then both. QLoRA, which changes the method, is tried last (see `suggest`)."""
    t = spec.training
    changes: list[tuple[str, dict[str, Any]]] = []
    if not t.gradient_checkpointing:
        changes.append(("turn on gradient checkpointing", {"training.gradient_checkpointing": True}))
    batch = t.batch_size
    while batch > 1:
        batch //= 2
        factor = t.batch_size // batch
        changes.append(
            (
                f"batch_size {batch} with gradient_accumulation_steps {t.gradient_accumulation_steps * factor} "
                f"(same effective batch of {t.batch_size * t.gradient_accumulation_steps})",
                {
                    "training.batch_size": batch,
                    "training.gradient_accumulation_steps": t.gradient_accumulation_steps * factor,
                },
            )
        )
    if not t.gradient_checkpointing and t.batch_size > 1:
        batch = t.batch_size
        while batch > 1:
            batch //= 2
            factor = t.batch_size // batch
            changes.append(
                (
                    f"gradient checkpointing and batch_size {batch} with gradient_accumulation_steps "
                    f"{t.gradient_accumulation_steps * factor}",
                    {
                        "training.gradient_checkpointing": True,
                        "training.batch_size": batch,
                        "training.gradient_accumulation_steps": t.gradient_accumulation_steps * factor,
                    },
                )
            )
    return changes


def apply_patch(spec: RunSpec, patch: Mapping[str, Any]) -> RunSpec:
    data = spec.model_dump(mode="json")
    for path, value in patch.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return type(spec).model_validate(data)


def suggest(
    spec: RunSpec,
    estimate: Estimate,
    profile: Mapping[str, Any],
    *,
    qlora: Callable[[], tuple[RunSpec, Mapping[str, Any]] | None] | None = None,
) -> Suggestion | None:
    """The cheapest change that makes a run that does not fit, fit (None when it fits or nothing helps)."""
    if estimate.fits is not False or not estimate.device_memory_bytes:
        return None
    capacity = estimate.device_memory_bytes

    def total(candidate: RunSpec, candidate_profile: Mapping[str, Any]) -> int:
        return estimate_memory(candidate, candidate_profile, device=estimate.device).total_peak_bytes

    for change, patch in candidate_changes(spec):
        try:
            candidate = apply_patch(spec, patch)
        except ValueError:  # not allowed for this method (prefix tuning refuses gradient checkpointing)
            continue
        size = total(candidate, profile)
        if size <= capacity:
            return Suggestion(change, patch, size)
    if qlora is not None and estimate.device == "cuda":
        alternative = qlora()
        if alternative is not None:
            qspec, qprofile = alternative
            for gc in (False, True):
                qpatch: dict[str, Any] = {"method": qspec.method.model_dump(mode="json")}
                candidate = qspec
                if gc and not qspec.training.gradient_checkpointing:
                    qpatch["training.gradient_checkpointing"] = True
                    try:
                        candidate = apply_patch(qspec, {"training.gradient_checkpointing": True})
                    except ValueError:
                        continue
                size = total(candidate, qprofile)
                if size <= capacity:
                    what = "switch to QLoRA (LoRA on a 4-bit NF4 base)" + (" with gradient checkpointing" if gc else "")
                    return Suggestion(what, qpatch, size)
    return None


def with_suggestion(estimate: Estimate, suggestion: Suggestion | None) -> Estimate:
    return replace(estimate, suggestion=suggestion)


def compare(estimate: Mapping[str, Any], measured: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Estimate beside measurement, with the error in percent: the rows the run page shows."""
    lines = {line["key"]: line for line in estimate.get("lines", [])}
    rows: list[dict[str, Any]] = []

    def row(label: str, estimated: float | None, actual: float | None, note: str = "") -> None:
        if estimated is None or actual is None:
            return
        error = 100.0 * (estimated - actual) / actual if actual else None
        rows.append({"label": label, "estimated": estimated, "measured": actual, "error_percent": error, "note": note})

    def line_bytes(key: str) -> float | None:
        return float(lines[key]["bytes"]) if key in lines else None

    weights = measured.get("params_bytes")
    if weights is not None:
        weights += measured.get("buffers_bytes") or 0
    row("weights (parameters and buffers)", line_bytes("weights"), weights, "after the first optimizer step")
    row("gradients", line_bytes("gradients"), measured.get("grads_bytes"))
    row("optimizer state", line_bytes("optimizer"), measured.get("optimizer_bytes"))
    if measured.get("cuda_max_allocated_bytes") is not None:
        row(
            "peak allocated (CUDA)",
            estimate.get("allocated_peak_bytes"),
            measured.get("cuda_max_allocated_bytes"),
            "torch.cuda.max_memory_allocated",
        )
        row(
            "peak reserved (CUDA)",
            estimate.get("allocated_peak_bytes", 0) * (1 + ALLOCATOR_SLACK),
            measured.get("cuda_max_reserved_bytes"),
            "torch.cuda.max_memory_reserved",
        )
    if measured.get("nvml_used_bytes"):
        row("device memory used (NVML)", estimate.get("total_peak_bytes"), measured.get("nvml_used_bytes"))
    if measured.get("device") == "cpu" and measured.get("peak_rss_bytes"):
        row("peak RSS (CPU)", estimate.get("total_peak_bytes"), measured.get("peak_rss_bytes"), "whole process")
    return rows
