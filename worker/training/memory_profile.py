"""Memory profile: the facts the estimator needs about a model (what a run really used: memory_measured.py).

`memory_profile` reads a model built on the meta device (no weights, no memory) as training would build it: every
unique parameter grouped by kind (linear weights 4-bit quantization would replace, their biases, embeddings,
norms, lm_head, parameters the method added), dtype and trainability; the shape of one decoder layer; what the
method's peft config adds (virtual tokens, adapted modules). The arithmetic on these facts lives in
`runspec.memory`, which has no torch, so the web process can compute an estimate from a worker's answer.

`estimate_at_start` is the estimate a run makes for its own worker's device when none was stored at submit time.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from typing import Any

import psutil
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from runspec import MethodSpec, RunSpec
from runspec.memory.estimate import estimate_memory
from runspec.memory.facts import PROFILE_VERSION
from worker.training.loading import count_parameters, remote_code_kwargs, resolve_model
from worker.training.memory_measured import LivePeak
from worker.training.method_fit import build_method
from worker.training.resources import has_cuda

ATTENTION_WORDS = ("attn", "attention")
MLP_WORDS = ("mlp", "feed_forward", "ffn")
DROPOUT_KEYS = {
    "attention": ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", "attn_dropout"),
    "hidden": ("hidden_dropout", "resid_pdrop", "hidden_dropout_prob", "dropout"),
    "embedding": ("embd_pdrop", "embedding_dropout"),
}


# -- what the model is made of ------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear or type(module).__name__ == "Conv1D"


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    if type(module).__name__ == "Conv1D":  # GPT-2 stores the weight as (in, out)
        rows, cols = module.get_parameter("weight").shape
        return int(rows), int(cols)
    if isinstance(module, nn.Embedding):
        return int(module.num_embeddings), int(module.embedding_dim)
    weight = getattr(module, "weight", None)
    in_features = getattr(module, "in_features", None)
    out_features = getattr(module, "out_features", None)
    if in_features is None and weight is not None and weight.dim() == 2:
        out_features, in_features = weight.shape
    return int(in_features or 0), int(out_features or 0)


def quantized_module_names(model: nn.Module, skip_modules: list[str] | None = None) -> set[str]:
    """Modules transformers' bitsandbytes integration would replace by 4-/8-bit layers (its own rule)."""
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    not_convert = HfQuantizer.get_modules_to_not_convert(model, skip_modules, keep_fp32)  # type: ignore[arg-type]
    return {
        name
        for name, module in model.named_modules()
        if name and _is_linear(module) and should_convert_module(name, not_convert)
    }


def _embeddings(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The model's input and output embeddings (a transformers model has both; a bare module neither)."""
    get_inputs = getattr(model, "get_input_embeddings", None)
    get_outputs = getattr(model, "get_output_embeddings", None)
    return (get_inputs() if callable(get_inputs) else None, get_outputs() if callable(get_outputs) else None)


def classify_parameters(model: nn.Module, quantizable: set[str]) -> dict[int, tuple[str, bool]]:
    """{id(parameter): (kind, replaced by quantization)} for the base model, before a method wraps it."""
    kinds: dict[int, tuple[str, bool]] = {}
    inputs, outputs = _embeddings(model)
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in kinds:
                continue  # tied: counted under its first owner (the input embeddings)
            if module is inputs or isinstance(module, nn.Embedding):
                kind, quantized = "embedding", False
            elif module is outputs:
                kind, quantized = "lm_head", False
            elif _is_linear(module):
                # a quantized layer's bias stays a regular tensor, cast to the compute dtype on its first use
                kind, quantized = ("linear" if param_name == "weight" else "linear_bias"), name in quantizable
            elif "norm" in type(module).__name__.lower():
                kind, quantized = "norm", False
            else:
                kind, quantized = "other", False
            kinds[id(param)] = (kind, quantized)
    return kinds


def parameter_groups(model: nn.Module, base_kinds: dict[int, tuple[str, bool]]) -> list[dict[str, Any]]:
    """Unique parameters of the built model, summed per (kind, dtype, trainable, quantized)."""
    counts: Counter[tuple[str, str, bool, bool]] = Counter()
    tensors: Counter[tuple[str, str, bool, bool]] = Counter()
    largest: dict[tuple[str, str, bool, bool], int] = {}
    for _, param in model.named_parameters():  # deduplicated: a tied weight appears once
        kind, quantized = base_kinds.get(id(param), ("adapter", False))
        key = (kind, _dtype_name(param.dtype), bool(param.requires_grad), quantized)
        counts[key] += param.numel()
        tensors[key] += 1
        largest[key] = max(largest.get(key, 0), param.numel())
    return [
        {
            "kind": kind,
            "dtype": dtype,
            "trainable": trainable,
            "quantized": quantized,
            "params": int(counts[key]),
            "tensors": int(tensors[key]),
            "largest_tensor": int(largest[key]),
        }
        for key in sorted(counts)
        for kind, dtype, trainable, quantized in [key]
    ]


def _decoder_layers(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList] | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and num_layers > 0:
            return name, module
    return None


def _saved_elements_per_input(module: nn.Module, width: int) -> float:
    """How many input-sized tensors `module` keeps for backward (run once on a tiny CPU copy, in fp32)."""
    probe = copy.deepcopy(module)
    if any(p.is_meta for p in probe.parameters()):
        probe = probe.to_empty(device="cpu")
        with torch.no_grad():
            for p in probe.parameters():
                p.fill_(1.0)
    probe = probe.float().train()
    tokens = 3
    x = torch.randn(tokens, width, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu" and t.numel() >= width and not isinstance(t, nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = probe(x)
        if isinstance(y, tuple):
            y = y[0]
    weight_ptrs = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    saved = sum(nbytes for ptr, nbytes in storages.items() if ptr not in weight_ptrs)
    del y
    return saved / (tokens * width * 4)


def _backward_peak_per_input(module: nn.Module, width: int = 16) -> float:
    """Peak of the temporaries the activation function's backward allocates, in input-sized fp32 tensors."""
    x = torch.randn(3, width, requires_grad=True)
    y = module(x)
    grad = torch.ones_like(y)
    tracker = LivePeak()
    with tracker:
        (x_grad,) = torch.autograd.grad(y, x, grad)
    del x_grad
    return tracker.peak / (x.numel() * 4)


def block_facts(model: nn.Module, config: Any, quantizable: set[str]) -> dict[str, Any]:
    """The shape of one decoder layer: its linear layers in order, norms and activation function."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = int(getattr(text_config, "num_hidden_layers", 0) or 0)
    found = _decoder_layers(model, num_layers)
    if found is None:
        return {}
    layers_name, layers = found
    block = layers[0]
    prefix = f"{layers_name}.0."
    linears: list[dict[str, Any]] = []
    norms: list[dict[str, Any]] = []
    activation: dict[str, Any] | None = None
    for name, module in block.named_modules():
        part = (
            "attention"
            if any(word in name.lower() for word in ATTENTION_WORDS)
            else "mlp"
            if any(word in name.lower() for word in MLP_WORDS)
            else "other"
        )
        if _is_linear(module):
            in_features, out_features = _linear_shape(module)
            linears.append(
                {
                    "name": name,
                    "part": part,
                    "in": in_features,
                    "out": out_features,
                    "quantized": prefix + name in quantizable,
                    # filled in once the method is applied (see memory_profile)
                    "weight": module.weight,
                }
            )
        elif "norm" in type(module).__name__.lower() and list(module.parameters()):
            norms.append(
                {
                    "name": name,
                    "type": "rmsnorm" if "rms" in type(module).__name__.lower() else "layernorm",
                    "module": module,  # measured once the method is applied (a frozen norm keeps less)
                }
            )
        elif (
            activation is None
            and part == "mlp"
            and name
            and not list(module.parameters())
            and not list(module.children())
            and "dropout" not in type(module).__name__.lower()
        ):
            activation = {"name": name, "type": type(module).__name__}
    if activation is not None:
        act_module = block.get_submodule(activation["name"])
        activation["saved_per_input"] = _saved_elements_per_input(act_module, 16)
        activation["backward_peak_per_input"] = _backward_peak_per_input(act_module)
    stem_norms = []
    after_layers = False  # modules are registered in the order the forward pass uses them
    for name, module in model.named_modules():
        if name.startswith(layers_name + ".") or name == layers_name:
            after_layers = True
            continue
        if "norm" in type(module).__name__.lower() and list(module.parameters(recurse=False)):
            stem_norms.append(
                {
                    "name": name,
                    "type": "rmsnorm" if "rms" in type(module).__name__.lower() else "layernorm",
                    "module": module,
                    "after_layers": after_layers,
                }
            )
    return {
        "layers_module": layers_name,
        "block_class": type(block).__name__,
        "linears": linears,
        "norms": norms,
        "activation": activation,
        "stem_norms": stem_norms,
    }


def _first_attr(config: Any, keys: tuple[str, ...], default: Any = None) -> Any:
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return default


def model_dims(model: nn.Module, config: Any) -> dict[str, Any]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None)
    heads = getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if hidden and heads else None)
    inputs, outputs = _embeddings(model)
    vocab = getattr(text, "vocab_size", None)
    if outputs is not None:
        vocab = _linear_shape(outputs)[1]
    tied = bool(outputs is not None and inputs is not None and outputs.weight is inputs.weight)
    dropouts = {
        part: float(_first_attr(text, keys, 0.0) or 0.0)
        if isinstance(_first_attr(text, keys, 0.0), int | float)
        else 0.0
        for part, keys in DROPOUT_KEYS.items()
    }
    return {
        "hidden_size": hidden,
        "num_layers": getattr(text, "num_hidden_layers", None),
        "num_heads": heads,
        "num_kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "tied_embeddings": tied,
        "attn_implementation": getattr(model.config, "_attn_implementation", None) or "eager",
        "dropout": dropouts,
    }


def method_facts(model: nn.Module) -> dict[str, Any]:
    """What the method's peft config adds: virtual tokens, prefix key/values, the modules it wraps."""
    configs = getattr(model, "peft_config", None) or {}
    config = next(iter(configs.values()), None)
    facts: dict[str, Any] = {"peft_type": None, "adapted_modules": []}
    if config is None:
        return facts
    peft_type = getattr(config.peft_type, "value", str(config.peft_type))
    facts["peft_type"] = peft_type
    if getattr(config, "is_prompt_learning", False):
        facts["prompt"] = {
            "kind": "past_key_values" if peft_type == "PREFIX_TUNING" else "input",
            "num_virtual_tokens": int(config.num_virtual_tokens),
            "num_transformer_submodules": int(getattr(config, "num_transformer_submodules", 1) or 1),
            "encoder_hidden_size": getattr(config, "encoder_hidden_size", None),
            "prefix_projection": bool(getattr(config, "prefix_projection", False)),
            "encoder_reparameterization_type": str(
                getattr(getattr(config, "encoder_reparameterization_type", None), "value", "")
                or getattr(config, "encoder_reparameterization_type", "")
                or ""
            ),
        }
        return facts
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted: Counter[tuple[str, str, int, int, bool]] = Counter()
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "get_base_layer"):
            base = module.get_base_layer()
            if base is module:
                continue
            in_features, out_features = _linear_shape(base)
            feedforward = bool(getattr(module, "is_feedforward", False))  # IA³ scales such a layer's input
            adapted[(name.rsplit(".", 1)[-1], type(base).__name__, in_features, out_features, feedforward)] += 1
    facts["adapted_modules"] = [
        {"name": leaf, "base_type": kind, "in": in_features, "out": out_features, "count": count, "feedforward": ff}
        for (leaf, kind, in_features, out_features, ff), count in sorted(adapted.items())
    ]
    return facts


def load_facts(method: MethodSpec, default_dtype: torch.dtype) -> tuple[dict[str, Any], torch.dtype]:
    """How training loads the base model for this method: dtype and bitsandbytes quantization."""
    kwargs = method.model_load_kwargs()
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype") or default_dtype
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, default_dtype)
    quantization: dict[str, Any] | None = None
    config = kwargs.get("quantization_config")
    if config is not None:
        if getattr(config, "load_in_4bit", False):
            storage = getattr(config, "bnb_4bit_quant_storage", None)
            compute = getattr(config, "bnb_4bit_compute_dtype", None)
            quantization = {
                "bits": 4,
                "quant_type": str(getattr(config, "bnb_4bit_quant_type", "fp4")),
                "double_quant": bool(getattr(config, "bnb_4bit_use_double_quant", False)),
                "compute_dtype": _dtype_name(compute) if isinstance(compute, torch.dtype) else "float32",
                "storage_dtype": _dtype_name(storage) if isinstance(storage, torch.dtype) else "uint8",
                "blocksize": 64,
            }
        elif getattr(config, "load_in_8bit", False):
            quantization = {"bits": 8, "quant_type": "int8", "double_quant": False, "compute_dtype": "float16"}
        if quantization is not None:
            quantization["skip_modules"] = list(getattr(config, "llm_int8_skip_modules", None) or [])
    return {"dtype": _dtype_name(dtype), "quantization": quantization}, dtype


def memory_profile(
    config: Any,
    method: MethodSpec,
    *,
    default_dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Every fact `runspec.memory` needs, from the model's config alone: built on the meta device."""
    load, dtype = load_facts(method, default_dtype)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype)
    quantization = load["quantization"]
    quantizable = quantized_module_names(base, (quantization or {}).get("skip_modules") or None)
    kinds = classify_parameters(base, quantizable if quantization else set())
    would_quantize = sum(p.numel() for n, p in base.named_parameters() if _weight_of(n, quantizable))
    dims = model_dims(base, config)
    block = block_facts(base, config, quantizable if quantization else set())
    inputs, outputs = base.get_input_embeddings(), base.get_output_embeddings()
    with torch.device("meta"):
        built = build_method(method, base, tokenizer)  # readable refusal when the method does not fit the model
    trainable, total = count_parameters(built)
    # Which weights the method left trainable: a frozen matmul keeps no copy of its input for backward.
    for linear in block.get("linears", []):
        linear["trainable"] = bool(linear.pop("weight").requires_grad)
    hidden = int(dims.get("hidden_size") or 0)
    for norm in [*block.get("norms", []), *block.get("stem_norms", [])]:
        module = norm.pop("module")
        norm["trainable"] = any(p.requires_grad for p in module.parameters())
        norm["saved_per_token"] = _saved_elements_per_input(module, hidden) if hidden else 1.0
    dims["embeddings_trainable"] = bool(inputs is not None and inputs.weight.requires_grad)
    dims["lm_head_trainable"] = bool(outputs is not None and outputs.weight.requires_grad)
    buffers: Counter[str] = Counter()
    for buffer in built.buffers():
        buffers[_dtype_name(buffer.dtype)] += buffer.numel()
    return {
        "version": PROFILE_VERSION,
        "model_type": getattr(config, "model_type", None),
        "architecture": type(base).__name__,
        "dims": dims,
        "block": block,
        "load": load,
        "groups": parameter_groups(built, kinds),
        "buffers": dict(buffers),
        "quantizable_linear_params": int(would_quantize),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "method": method_facts(built),
    }


def _weight_of(param_name: str, modules: set[str]) -> bool:
    module, _, leaf = param_name.rpartition(".")
    return leaf == "weight" and module in modules


def device_capacity() -> dict[str, Any]:
    """The memory of the device this worker trains on: the GPU if there is one, else the machine's RAM."""
    if has_cuda():
        props = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": props.name, "memory_bytes": int(props.total_memory)}
    return {"kind": "cpu", "name": "CPU", "memory_bytes": int(psutil.virtual_memory().total)}


def estimate_at_start(
    spec: RunSpec,
    method: MethodSpec,
    stored: Mapping[str, Any] | None,
    *,
    longest: int | None = None,
    liger: bool | None = None,
    attention: str | None = None,
) -> dict[str, Any] | None:
    """The run's estimate for this worker's device, when none was stored at submit time (no worker answered), the
    stored one was made for another kind of device, or this worker knows better than it did: the longest sample
    of the tokenized dataset (`longest`, before the cut at max_length) is shorter than the length it assumed, or
    the kernels planned here (`liger`, `attention`) are not those it assumed. None: the stored one stands."""
    capacity = device_capacity()
    length = min(longest, spec.training.max_length) if longest else None
    if stored and stored.get("device") == capacity["kind"] and not _knows_better(stored, length, liger, attention):
        return None
    if liger is not None or attention is not None:
        training = spec.training.model_copy(
            update={
                **({"liger_kernel": "on" if liger else "off"} if liger is not None else {}),
                **({"attn_implementation": attention} if attention else {}),
            }
        )
        spec = spec.model_copy(update={"training": training})
    resolved = resolve_model(spec.model)
    config = AutoConfig.from_pretrained(resolved.location, **remote_code_kwargs(resolved))
    profile = memory_profile(config, method, trust_remote_code=resolved.trust_remote_code)
    estimate = estimate_memory(
        spec,
        profile,
        device=capacity["kind"],
        device_memory_bytes=capacity["memory_bytes"],
        device_source=f"{capacity['name']} of the worker that trained it",
        seq_len=length,
        seq_len_source=f"the longest sample of the tokenized dataset: {longest} tokens"
        + (f", cut at training.max_length = {spec.training.max_length}" if length and length < longest else "")
        if longest
        else None,
    ).to_dict()
    estimate["made_by"] = "the training worker, at training start"
    return estimate


def _knows_better(stored: Mapping[str, Any], length: int | None, liger: bool | None, attention: str | None) -> bool:
    kernels = stored.get("kernels") or {}
    assumed = int(stored.get("sample_len") or stored.get("seq_len") or 0)  # tokens per sample, no virtual ones
    return bool(
        (length is not None and length < assumed)
        or (liger is not None and "liger" in kernels and bool(kernels["liger"]) != liger)
        or (attention is not None and kernels.get("attention") not in (None, attention))
    )
