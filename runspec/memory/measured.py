"""The estimate beside what training measured: the rows of the run page's estimate-vs-measurement table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runspec.memory.units import ALLOCATOR_SLACK


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


def reserved_ratio(estimate: Mapping[str, Any] | None, measured: Mapping[str, Any] | None) -> float | None:
    """measured / estimated for a GPU run: torch.cuda.max_memory_reserved over the estimate's allocated peak plus
    the allocator slack (the estimate's own figure for it); None for a CPU run or one without both."""
    if not estimate or not measured or measured.get("device") != "cuda" or estimate.get("device") != "cuda":
        return None
    reserved = measured.get("cuda_max_reserved_bytes")
    allocated = estimate.get("allocated_peak_bytes")
    if not reserved or not allocated:
        return None
    return float(reserved) / (float(allocated) * (1 + ALLOCATOR_SLACK))
