"""The activation memory a method adds beyond the base model's: the formulas each method's `memory` hook uses.

Below the methods (runspec/methods/*.py import these); nothing here knows about specs or methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from runspec.memory.facts import ModelFacts, RunShape


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
    #: temporaries of one layer, per token (peft's fp32 casts of an adapter's input and of its gradient)
    workspace_per_token: float = 0.0
    #: temporaries of one layer's forward pass that do not depend on the batch (DoRA's weight norm)
    workspace_fixed: float = 0.0


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
    input is not needed to train it) and a rank-sized intermediate. Beside a 16-bit base, peft casts the input to
    the fp32 adapters' dtype: a CPU's dropout mask is then fp32, and the cast (and its gradient) is a temporary
    of one layer."""
    total = 0.0
    parts = []
    mask = run.mask_bytes if run.device == "cuda" else (run.adapter_input_bytes or run.mask_bytes)
    for module in facts.adapted_modules:
        per = 0.0
        if dropout > 0:
            per += mask * module.in_features
        per += input_copies * run.compute_bytes * module.in_features
        per += run.compute_bytes * rank
        total += per * module.count
        parts.append(f"{module.count}× {module.name} ({module.in_features}→{module.out_features})")
    if not facts.adapted_modules:
        return MethodMemory()
    pieces = []
    if dropout > 0:
        pieces.append(f"dropout mask {mask} B·in")
    pieces.append(f"input {run.compute_bytes} B·in")
    if rank:
        pieces.append(f"rank-{rank} intermediate {run.compute_bytes} B·r")
    formula = f"per token and adapted module: {' + '.join(pieces) or '0'}; over {', '.join(parts)}"
    cast = 0.0
    if run.adapter_input_bytes:
        cast = 2 * run.adapter_input_bytes * max(m.in_features for m in facts.adapted_modules)
        formula += (
            f"; peft casts the 16-bit input to the fp32 adapters' dtype ({run.adapter_input_bytes}·in, a temporary)"
        )
    return MethodMemory(terms=(ActivationTerm(label, total, formula),), workspace_per_token=cast)


def dora_memory(facts: ModelFacts, run: RunShape, adapters: MethodMemory, *, label: str) -> MethodMemory:
    """DoRA on top of LoRA's adapters (peft's DoraLinearLayer): the trained magnitude scales the base output and
    the LoRA output, so both are kept for its gradient (out per token each); and every forward pass rebuilds
    the weight norm ||W + s·B·A|| of each layer: B·A through an in×in identity, the weight and W + s·B·A in the
    input's dtype (fp32: peft casts the input up), one layer at a time (the norm is detached: nothing is kept)."""
    if not facts.adapted_modules:
        return adapters
    per_token = sum(2 * run.compute_bytes * m.out_features * m.count for m in facts.adapted_modules)
    x = run.adapter_input_bytes or run.compute_bytes
    transient = max(
        4 * m.in_features**2 + (run.compute_bytes + 3 * x) * m.in_features * m.out_features
        for m in facts.adapted_modules
    )
    term = ActivationTerm(
        f"{label} magnitude",
        per_token,
        f"per token and adapted layer: the base and LoRA outputs {run.compute_bytes}·out each, kept for the "
        f"magnitude's gradient; each forward pass rebuilds the weight norm (an in×in identity 4·in², B·A and "
        f"W + s·B·A {x}-byte out×in, one layer at a time)",
    )
    return MethodMemory(
        terms=(*adapters.terms, term),
        notes=adapters.notes,
        workspace_per_token=adapters.workspace_per_token,
        workspace_fixed=adapters.workspace_fixed + transient,
    )


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


def default_method_memory(method_label: str, facts: ModelFacts, run: RunShape) -> MethodMemory:
    """Methods without their own hook: adapters beside linear layers keep one input copy per adapted module."""
    if facts.adapted_modules:
        return adapter_memory(facts, run, label=f"{method_label} adapters")
    return MethodMemory()
