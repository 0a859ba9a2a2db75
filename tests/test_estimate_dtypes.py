"""The memory estimate follows the dtypes a run loads and the kernels it uses (runspec.precision, liger_kernel).

Config-only estimates of published shapes (deterministic arithmetic, not timings): Llama-3.2-3B and an 8B Llama
against what peers measure; and the weight line against the bytes of the tiny demo Llama really loaded on CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from runspec import RunSpec
from runspec.memory.estimate import estimate_memory
from runspec.memory.results import Estimate
from runspec.memory.units import GIB
from worker.training.memory_profile import memory_profile
from worker.training.method_fit import build_method

#: Llama-3.2-3B's published shape (tied embeddings) and Llama-3.1-8B's.
LLAMA_3B = {
    "hidden_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
LLAMA_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
LORA_QV = {"name": "lora", "r": 32, "target_modules": ["q_proj", "v_proj"]}


def _estimate(shape: dict[str, Any], method: dict[str, Any], **training: Any) -> Estimate:
    spec = RunSpec.model_validate({"name": "x", "method": method, "training": training})
    config = LlamaConfig(**shape)
    config._attn_implementation = "sdpa"  # what from_pretrained picks for Llama
    return estimate_memory(spec, memory_profile(config, spec.method), device="cuda")


def _lines(estimate: Estimate) -> dict[str, int]:
    return {line.key: line.bytes for line in estimate.lines}


def test_llama_3b_lora_on_a_bf16_base() -> None:
    """LoRA r32 on q/v of Llama-3.2-3B, batch 4 × 768, bf16, AdamW: peers measure about 21 GiB (no Liger)."""
    plain = _estimate(LLAMA_3B, LORA_QV, batch_size=4, max_length=768, precision="bf16", liger_kernel="off")
    assert 0.8 * 21 * GIB <= plain.total_peak_bytes <= 1.25 * 21 * GIB, plain.total_peak_bytes / GIB
    lines = _lines(plain)
    assert plain.dtypes == {**(plain.dtypes or {}), "base": "bfloat16", "trainable": "float32", "autocast": True}
    assert lines["mixed_precision"] == 0  # the base is bf16 already: autocast copies nothing
    assert 2 * plain.total_params < lines["weights"] < 2 * plain.total_params + 4 * plain.trainable_params + 2**20
    # Liger (auto, on a GPU, for Llama): the fused linear cross entropy never materialises the b·s·V logits.
    liger = _estimate(LLAMA_3B, LORA_QV, batch_size=4, max_length=768, precision="bf16")
    assert liger.kernels and liger.kernels["liger"] is True
    assert _lines(liger)["logits"] < lines["logits"] / 20
    assert liger.total_peak_bytes < plain.total_peak_bytes - 4 * GIB
    # DoRA keeps the base and LoRA outputs of every adapted layer for its magnitude's gradient.
    dora = _estimate(
        LLAMA_3B, {**LORA_QV, "use_dora": True}, batch_size=4, max_length=768, precision="bf16", liger_kernel="off"
    )
    adapted_outputs = 28 * (3072 + 1024) * 2 * 2 * 4 * 768  # layers × (q + v outputs) × 2 tensors × 2 B × tokens
    assert _lines(dora)["activations"] - lines["activations"] >= adapted_outputs
    # base_dtype=fp32 is the old behaviour: fp32 weights and autocast's bf16 copies of them.
    fp32 = _estimate(LLAMA_3B, LORA_QV, batch_size=4, max_length=768, precision="bf16", base_dtype="fp32")
    assert _lines(fp32)["weights"] > 1.9 * lines["weights"] and _lines(fp32)["mixed_precision"] > 5 * GIB


def test_llama_3b_full_fine_tuning() -> None:
    """Full fine-tuning of Llama-3.2-3B, batch 4 × 768, AdamW. pure_bf16 (weights, gradients and AdamW states at
    2 bytes) comes to the 36 GiB peers report; mixed precision keeps fp32 master weights, fp32 gradients and
    fp32 moments: 16 bytes a parameter before any activation (48 GiB for 3.2 B), so it cannot be 36 GiB."""
    pure = _estimate(
        LLAMA_3B, {"name": "full"}, batch_size=4, max_length=768, precision="pure_bf16", liger_kernel="off"
    )
    assert 0.8 * 36 * GIB <= pure.total_peak_bytes <= 1.25 * 36 * GIB, pure.total_peak_bytes / GIB
    lines = _lines(pure)
    n = pure.total_params
    assert lines["gradients"] == 2 * n <= lines["weights"] < 2 * n + 2**20  # and the rotary buffers
    assert lines["mixed_precision"] == 0
    assert 4 * n <= lines["optimizer"] < 4 * n + 2**20
    mixed = _estimate(LLAMA_3B, {"name": "full"}, batch_size=4, max_length=768, precision="bf16", liger_kernel="off")
    assert mixed.dtypes and mixed.dtypes["master_weights"] is True
    m = _lines(mixed)
    assert m["gradients"] == 4 * n <= m["weights"] < 4 * n + 2**20 and m["optimizer"] >= 8 * n
    assert m["mixed_precision"] > 2 * (n - 128256 * 3072)  # bf16 copies of the fp32 linear weights
    assert 16 * n < mixed.allocated_peak_bytes < 16 * n + 20 * GIB


def test_llama_8b_lora_with_checkpointing_fits_24_gb() -> None:
    estimate = _estimate(LLAMA_8B, {"name": "lora"}, batch_size=4, max_length=1024, gradient_checkpointing=True)
    card = 24 * 10**9
    assert estimate.total_peak_bytes < card, estimate.total_peak_bytes / GIB
    assert _lines(estimate)["weights"] < 2.01 * estimate.total_params  # bf16, not the 32 GB of fp32


@pytest.mark.parametrize(
    ("method", "precision", "loaded"),
    [
        ("lora", "fp32", torch.float32),
        ("lora", "bf16", torch.bfloat16),
        ("full", "fp32", torch.float32),
        ("full", "pure_bf16", torch.bfloat16),
    ],
)
def test_weight_line_is_what_loading_holds(tiny_llama: Any, method: str, precision: str, loaded: Any) -> None:
    """The tiny demo Llama loaded on CPU in the dtype runspec.precision decides, the method applied: the weight
    line is the bytes of its parameters and buffers (peft keeps LoRA's matrices fp32 beside a bf16 base)."""
    spec = RunSpec.model_validate(
        {
            "name": "x",
            "model": str(tiny_llama.model_dir),
            "method": {"name": method},
            "training": {"precision": precision},
        }
    )
    estimate = estimate_memory(
        spec, memory_profile(AutoConfig.from_pretrained(tiny_llama.model_dir), spec.method), device="cpu"
    )
    assert estimate.dtypes and estimate.dtypes["base"] == str(loaded).removeprefix("torch.")
    model = build_method(spec.method, AutoModelForCausalLM.from_pretrained(tiny_llama.model_dir, dtype=loaded), None)
    params = {id(p): p for p in model.parameters()}.values()
    if method == "lora":
        assert {p.dtype for p in params if p.requires_grad} == {torch.float32}
    measured = sum(p.numel() * p.element_size() for p in params)
    measured += sum(b.numel() * b.element_size() for b in model.buffers())
    assert _lines(estimate)["weights"] == measured
