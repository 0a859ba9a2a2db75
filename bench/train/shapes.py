"""Models of real shapes for the GPU bench, random-initialised from configs written here (no download), saved
with the demo tokenizer (its 2,000 ids fit every vocabulary), and what MFU needs: the matmul parameters per token
and the GPU's dense bf16 peak."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.train.setup import CACHE, ROOT

#: The published shapes (their config.json values that decide the compute and the memory).
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.2-1b": (
        "llama",
        {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072,
        },
    ),
    "qwen2.5-1.5b": (
        "qwen2",
        {
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768,
        },
    ),
    # bloom-1b4-zh (bench/configs/bloom-1b4-zh.json, the course's largest model)
    "bloom-1b4": ("bloom", {}),
}
#: --smoke: the same architectures at a size a CPU trains in seconds.
SMOKE_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama": (
        "llama",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 2048,
            "tie_word_embeddings": True,
        },
    ),
    "tiny-qwen2": (
        "qwen2",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 2048,
            "tie_word_embeddings": True,
        },
    ),
    "tiny-bloom": ("bloom", {"hidden_size": 64, "n_layer": 2, "n_head": 4, "vocab_size": 2048}),
}
#: Dense bf16 tensor-core peak (no sparsity), by the name torch.cuda.get_device_name gives; first match wins.
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("H100 NVL", 835.0e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0e12),
)


@dataclass(frozen=True)
class BuiltModel:
    name: str
    model_type: str
    path: Path
    #: parameters that take part in a matmul per token: all but the input embeddings (lookups), lm_head once
    matmul_params: int
    total_params: int
    supports_sdpa: bool


def _config(model_type: str, values: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import AutoConfig

    if model_type == "bloom" and not values:
        raw = json.loads((ROOT / "bench" / "configs" / "bloom-1b4-zh.json").read_text())
        values = {k: v for k, v in raw.items() if not k.startswith("_") and k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(model_type, **values)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    return config


def build(name: str, model_type: str, values: dict[str, Any], device: str) -> BuiltModel:
    """The model folder (random init, bf16 safetensors on a GPU, fp32 for the smoke models) with the demo tokenizer,
    built once under the cache."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tunedeck_demo.demo_assets import prepare_demo_assets

    assets = prepare_demo_assets(CACHE, arch="bloom", hidden_size=64, num_layers=2, num_heads=4)  # the tokenizer
    tokenizer = PreTrainedTokenizerFast.from_pretrained(assets.model_dir)
    config = _config(model_type, values, tokenizer)
    target = CACHE / "models" / f"{name}-random"
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    inputs, outputs = meta.get_input_embeddings(), meta.get_output_embeddings()
    total = sum(p.numel() for p in meta.parameters())
    tied = outputs is not None and outputs.weight is inputs.weight
    matmul = total - (0 if tied else inputs.weight.numel())
    sdpa = bool(getattr(type(meta), "_supports_sdpa", False))
    if not (target / ".complete").exists():
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        (target / ".complete").write_text("{}\n")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return BuiltModel(name, model_type, target, matmul, total, sdpa)


def bf16_peak(device_name: str) -> float | None:
    for key, flops in BF16_PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


def mfu(tokens_per_second: float, matmul_params: int, full: bool, peak: float | None) -> float | None:
    """Model FLOPs utilisation: 6N FLOPs a token when every weight is trained (forward, input and weight
    gradients), 4N for a frozen base (no weight gradients); attention's s² FLOPs are not counted."""
    if not peak:
        return None
    return tokens_per_second * (6 if full else 4) * matmul_params / peak
