"""Units of the memory model: byte sizes, dtype widths, the framework's fixed costs, and its error."""

from __future__ import annotations

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
