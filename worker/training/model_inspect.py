"""Look inside a model without loading its weights: its config, module names and parameter counts.

The model is built from its config on the meta device, so this costs no memory and, for a hub id,
downloads only config.json.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from runspec import MethodSpec, TrainingSpec
from worker.training.loading import build_on_meta, count_parameters, load_config, resolve_model
from worker.training.memory_profile import device_capacity, memory_profile
from worker.training.method_fit import build_method

CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "n_embed",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def leaf_module_names(model: Any) -> list[str]:
    """Distinct names of leaf modules (the last part of the dotted path), as peft's target_modules matches them."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and not list(module.children())}
    return sorted(names)


def linear_module_names(model: Any) -> list[str]:
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and type(module).__name__ in {"Linear", "Conv1D"}
    }
    return sorted(names)


def inspect_model(model_source: str, method: MethodSpec | None = None) -> dict[str, Any]:
    config = load_config(model_source)
    model = build_on_meta(config, trust_remote_code=resolve_model(model_source).trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    dtypes = Counter(str(p.dtype).removeprefix("torch.") for p in model.parameters())
    answer: dict[str, Any] = {
        "model_type": config.model_type,
        "config": {key: getattr(config, key) for key in CONFIG_KEYS if hasattr(config, key)},
        "total_params": total,
        "param_dtypes": dict(dtypes),
        "leaf_modules": leaf_module_names(model),
        "linear_modules": linear_module_names(model),
    }
    if method is not None:
        with torch.device("meta"):
            # Module names checked and peft's errors made readable (MethodRefused is a TrainingError).
            built = build_method(method.resolved(TrainingSpec()), model, None)
        trainable, with_method = count_parameters(built)
        answer.update({"trainable_params": trainable, "total_params_with_method": with_method})
        answer.update(_memory_facts(model_source, config, method.resolved(TrainingSpec())))
    answer["device"] = device_capacity()  # what this worker trains on: the estimate's default capacity
    return answer


def _memory_facts(model_source: str, config: Any, method: MethodSpec) -> dict[str, Any]:
    """The memory profile runspec.memory works from, or why there is none (never fails the inspection)."""
    try:
        trust = resolve_model(model_source).trust_remote_code
        return {"memory_profile": memory_profile(config, method, trust_remote_code=trust)}
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        return {"memory_profile_error": f"cannot profile {model_source!r} for a memory estimate: {reason}"}
