"""The weights: every parameter at its dtype, 4-bit layers at their packed size plus quantization constants, and
autocast's 16-bit copies of the linear weights."""

from __future__ import annotations

import math

from runspec.memory.facts import ModelFacts, Quantization, RunShape, linear_weight_bytes
from runspec.memory.results import Line
from runspec.memory.units import dtype_bytes, human_bytes


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


def describe_weights(facts: ModelFacts) -> str:
    if facts.quantization is not None:
        q = facts.quantization
        return (
            f"{facts.total_params:,} parameters: linear layers in {q.bits} bit ({q.quant_type}"
            f"{', double quantization' if q.double_quant else ''}), embeddings, norms and lm_head at their dtype"
        )
    dtypes = sorted({g.dtype for g in facts.groups})
    return f"{facts.total_params:,} parameters × bytes of their dtype ({', '.join(dtypes)})"


def weight_copy_bytes(facts: ModelFacts, run: RunShape) -> tuple[int, int, str]:
    """Autocast's 16-bit copies of linear weights kept for backward: all layers, and one layer plus lm_head."""
    if not run.autocast:
        return 0, 0, "no autocast: matmuls use the weights as they are"
    weight_dtype_bytes = linear_weight_bytes(facts)
    if weight_dtype_bytes == run.compute_bytes:
        return 0, 0, f"none: the weights are loaded in the compute dtype ({run.compute_bytes} B), autocast copies none"
    per_layer = sum(
        run.compute_bytes * lin.in_features * lin.out_features for lin in facts.linears if not lin.quantized
    )
    head = run.compute_bytes * facts.vocab_size * facts.hidden_size
    total = per_layer * facts.num_layers + head
    formula = (
        f"autocast keeps a {run.compute_bytes}-byte copy of each fp32 linear weight for backward: "
        f"{facts.num_layers} layers × {human_bytes(per_layer)} + lm_head {human_bytes(head)}; the fp32 parameters "
        "are the master weights (no other copy)"
    )
    if facts.quantization is not None:
        formula += "; 4-bit layers keep only their packed weights and de-quantize again in backward"
    return total, per_layer + head, formula
