"""Look inside a model without loading its weights: its config, module names and parameter counts.

The model is built from its config on the meta device, so this costs no memory and, for a hub id,
downloads only config.json.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from runspec import MethodSpec
from worker.training.errors import TrainingError
from worker.training.run import check_model_source, count_parameters, model_load_error

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


def load_config(model_source: str) -> Any:
    check_model_source(model_source)
    try:
        return AutoConfig.from_pretrained(model_source, trust_remote_code=False)
    except Exception as exc:
        raise TrainingError(model_load_error(model_source, exc)) from exc


def build_on_meta(config: Any) -> Any:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


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
    model = build_on_meta(config)
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
            built = method.build(model, None)
        trainable, with_method = count_parameters(built)
        answer.update({"trainable_params": trainable, "total_params_with_method": with_method})
    return answer
