"""What would make a run fit: the cheapest spec change (checkpointing, smaller batches, then QLoRA) that does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from runspec.memory.estimate import estimate_memory
from runspec.memory.results import Estimate, Suggestion
from runspec.spec import RunSpec


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
        # the same length as the estimate (the dataset's longest sample, when known; capped by the candidate's)
        return estimate_memory(
            candidate, candidate_profile, device=estimate.device, seq_len=estimate.sample_len or None
        ).total_peak_bytes

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
