"""The estimate: the run's shape on the device, every component's size, the phases of a step, and the peak."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runspec.memory.activations import activation_lines
from runspec.memory.facts import ModelFacts, RunShape, as_loaded, group_dtype, liger_planned, linear_weight_bytes
from runspec.memory.optimizer import optimizer_memory
from runspec.memory.results import Estimate, Line
from runspec.memory.units import ALLOCATOR_SLACK, CPU_RUNTIME_BYTES, CUDA_CONTEXT_BYTES, dtype_bytes, human_bytes
from runspec.memory.weights import describe_weights, weight_copy_bytes, weight_lines
from runspec.precision import BYTES, ResolvedDtypes, resolve_spec_dtypes
from runspec.spec import RunSpec


def resolve_precision(precision: str, device: str) -> str:
    """As training resolves it: auto is bf16 on a GPU (the worker checks support), fp32 on a CPU."""
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    return precision


def run_dtypes(spec: RunSpec, device: str) -> ResolvedDtypes:
    """The run's dtypes on `device` (runspec.precision's decision; a GPU is assumed to compute in bf16)."""
    return resolve_spec_dtypes(spec, cuda=device == "cuda")


def run_shape(
    spec: RunSpec, facts: ModelFacts, device: str, dtypes: ResolvedDtypes, *, liger: bool = False, seq_len: int = 0
) -> RunShape:
    """How the run computes on `device`; `facts` as loaded (`as_loaded`); `seq_len`: tokens per sample before any
    virtual tokens (0: training.max_length)."""
    precision = resolve_precision(spec.training.precision, device)
    compute = BYTES[dtypes.compute]
    residual = dtype_bytes(group_dtype(facts, "embedding"), linear_weight_bytes(facts))
    layernorm = all(norm.type == "layernorm" for norm in facts.norms) if facts.norms else True
    norm_out = 4 if dtypes.autocast and layernorm else residual
    quant_compute = BYTES[dtypes.quantized_compute] if dtypes.quantized_compute else compute
    virtual_in = facts.prompt.num_virtual_tokens if facts.prompt and facts.prompt.kind == "input" else 0
    prefix = facts.prompt.num_virtual_tokens if facts.prompt and facts.prompt.kind == "past_key_values" else 0
    seq = (seq_len or spec.training.max_length) + virtual_in
    # peft casts each adapter's input to its weights' dtype: fp32 adapters beside a 16-bit base see fp32 inputs.
    adapter_input = 4 if spec.method.is_peft and residual < 4 and dtypes.trainable == "float32" else 0
    return RunShape(
        device=device,
        precision=precision,
        batch_size=spec.training.batch_size,
        seq_len=seq,
        key_len=seq + prefix,
        autocast=dtypes.autocast,
        compute_bytes=compute,
        residual_bytes=residual,
        norm_out_bytes=norm_out,
        quant_compute_bytes=quant_compute,
        mask_bytes=1 if device == "cuda" else compute,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        liger=liger,
        adapter_input_bytes=adapter_input,
    )


def estimate_memory(
    spec: RunSpec,
    profile: Mapping[str, Any],
    *,
    device: str = "cuda",
    device_memory_bytes: int | None = None,
    device_source: str | None = None,
    seq_len: int | None = None,
    seq_len_source: str | None = None,
) -> Estimate:
    """The memory `spec` needs on `device` ("cuda" or "cpu"), from a worker's memory profile of its model.

    `seq_len`: the tokens per sample the run will see at most when the dataset is known (its longest batch,
    capped by training.max_length), with `seq_len_source` saying where it comes from; None: training.max_length."""
    profiled = ModelFacts.from_profile(profile)
    notes: list[str] = []
    if profiled.quantization is not None and device != "cuda" and spec.method.requires_cuda:
        notes.append(f"{spec.method.label} needs a CUDA device: estimated for one")
        device = "cuda"
    dtypes = run_dtypes(spec, device)
    facts = as_loaded(
        profiled,
        base=dtypes.base,
        trainable=dtypes.trainable,
        full=not spec.method.is_peft,
        quantized_compute=dtypes.quantized_compute,
        attn_implementation=spec.training.attn_implementation,
    )
    liger, liger_reason = liger_planned(spec.training.liger_kernel, facts.model_type, device)
    length = min(seq_len, spec.training.max_length) if seq_len else spec.training.max_length
    length_text = seq_len_source
    run = run_shape(spec, facts, device, dtypes, liger=liger, seq_len=length)
    memory = spec.method.memory(facts, run)
    notes.extend(memory.notes)

    weights, weight_parts = weight_lines(facts, run.quant_compute_bytes)
    trainable_groups = [g for g in facts.groups if g.trainable]
    trainable_bytes = sum(g.params * dtype_bytes(g.dtype) for g in trainable_groups)
    grads = trainable_bytes
    head_grads = sum(
        g.params * dtype_bytes(g.dtype)
        for g in trainable_groups
        if g.kind == "lm_head" or (g.kind == "embedding" and facts.tied_embeddings)
    )
    optim = getattr(spec.training, "optim", "adamw_torch_fused")
    optimizer_mem = optimizer_memory(facts, optim, run)
    optimizer, optimizer_scratch = optimizer_mem.state, optimizer_mem.scratch
    notes.extend(optimizer_mem.notes)
    weights_formula = describe_weights(facts)
    gpus = getattr(spec.training, "num_gpus", 1)
    ddp_buckets = 0
    if gpus > 1 and getattr(spec.training, "distributed", "ddp") == "fsdp":
        # Per GPU: every sharded state is 1/N; a layer's full weights exist only while it runs (and the next one,
        # prefetched). Activations and logits are this GPU's own batch, as on one GPU.
        gathered = 2 * weights // max(1, facts.num_layers)
        weights = weights // gpus + gathered
        grads, head_grads = grads // gpus, head_grads // gpus
        optimizer, optimizer_scratch = optimizer // gpus, optimizer_scratch // gpus
        weights_formula += f"; FSDP: 1/{gpus} of them per GPU plus two decoder layers gathered at a time"
        notes.append(
            f"per GPU of {gpus} (FSDP): weights, gradients and optimizer state are sharded 1/{gpus} each; "
            "activations and logits are each GPU's own batch"
        )
    elif gpus > 1:
        ddp_buckets = trainable_bytes  # DDP's reducer: one flat bucket per group of gradients, for all of them
        notes.append(
            f"per GPU of {gpus} (DDP): every GPU holds what one GPU would, plus DDP's gradient buckets "
            f"({human_bytes(ddp_buckets)}); each GPU trains its own batch of {spec.training.batch_size}"
        )
    paged = optim.startswith("paged")
    resident_optimizer = 0 if paged else optimizer
    copies_all, copies_one, copies_formula = weight_copy_bytes(facts, run)
    act = activation_lines(facts, run, memory)
    accumulating = spec.training.gradient_accumulation_steps > 1

    gc = run.gradient_checkpointing
    saved = act["checkpoint_inputs"] if gc else act["all_layers"] + act["method"]
    lm_head_copy = facts.vocab_size * facts.hidden_size * run.compute_bytes if copies_all else 0
    copies_saved = lm_head_copy if gc else copies_all  # under checkpointing only lm_head's copy outlives a layer
    base = weights + resident_optimizer + ddp_buckets
    # The logits' gradients exist before any weight gradient (lm_head's comes right after, when they are freed).
    grads_early = grads if accumulating else 0
    phases: dict[str, dict[str, float]] = {
        "end of forward": {
            "activations": saved + act["stem"] + act["method_workspace"],
            "logits": act["logits_forward"],
            "mixed_precision": copies_saved,
            "prompt": act["prompt"],
            "gradients": grads_early if accumulating else 0,
        },
        "start of backward": {
            "activations": saved + act["stem"],
            "logits": act["logits_backward"],
            "mixed_precision": copies_saved,
            "prompt": act["prompt"],
            "gradients": grads_early,
        },
        "optimizer step": {"gradients": grads, "optimizer_scratch": optimizer_scratch},
    }
    if not gc:
        # Backward of the last layer: every activation still kept, the logits' gradients gone.
        phases["backward of the last layer"] = {
            "activations": saved + act["stem"] + act["workspace"],
            "mixed_precision": copies_saved,
            "prompt": act["prompt"],
            "gradients": grads if accumulating else head_grads,
        }
    if gc:
        # One layer recomputed, plus its backward workspace.
        phases["backward of a recomputed layer"] = {
            "activations": saved
            + act["layer_bytes"]
            + act["method_per_layer"]
            + max(act["workspace"], act["method_workspace"]),
            "mixed_precision": copies_one,
            "prompt": act["prompt"],
            "gradients": grads,
        }
    totals = {name: base + sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=lambda name: totals[name])
    at_peak = phases[peak_phase]
    allocated = int(totals[peak_phase])

    if device == "cuda":
        overhead = int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * allocated)
        overhead_formula = (
            f"CUDA context and library handles ≈ {human_bytes(CUDA_CONTEXT_BYTES)} + caching-allocator slack "
            f"{ALLOCATOR_SLACK:.0%} of the allocated peak (neither shows in torch.cuda.max_memory_allocated)"
        )
    else:
        overhead = CPU_RUNTIME_BYTES
        overhead_formula = (
            f"the worker process with torch, transformers, peft and datasets loaded ≈ {human_bytes(overhead)} "
            "resident (measured on a CPU worker)"
        )
    total = allocated + overhead

    tokens_text = f"b·s = {run.batch_size}·{run.seq_len}"
    layer_formula = (
        f"per layer and token {human_bytes(act['per_layer_token'])} ({run.precision}, {facts.attn_implementation} "
        f"attention; Korthikanti et al. 2022 in 16 bit: 34·h + 5·a·s = "
        f"{human_bytes(34 * facts.hidden_size + 5 * facts.num_heads * run.key_len)}) × {tokens_text} × "
        f"{facts.num_layers} layers"
    )
    if gc:
        layer_formula = (
            f"gradient checkpointing: each layer's input {run.residual_bytes}·h × {tokens_text} × {facts.num_layers} "
            f"layers = {human_bytes(act['checkpoint_inputs'])}, plus one layer recomputed in backward "
            f"({human_bytes(act['layer_bytes'])}: {human_bytes(act['per_layer_token'])} per token)"
        )
    layer_parts = tuple(
        Line(f"activations.{i}", label, int(value * run.tokens), formula + " per token")
        for i, (label, value, formula) in enumerate(act["layer_parts"])
    )
    activation_parts = [
        Line("activations.layers", "decoder layers", int(act["all_layers"]), layer_formula, parts=layer_parts),
        Line(
            "activations.stem",
            "embeddings, final norm, lm_head input",
            int(act["stem"]),
            f"norms outside the layers and lm_head's {run.compute_bytes}·h input × {tokens_text}",
        ),
    ]
    for term in memory.terms:
        activation_parts.append(
            Line(
                "activations.method",
                term.label,
                int(term.bytes_per_token * run.tokens + term.fixed_bytes),
                term.formula + (" (recomputed with the layers under gradient checkpointing)" if gc else ""),
            )
        )
    full_activations = int(act["all_layers"] + act["stem"] + act["method"])
    lines = [
        Line("weights", "weights", weights, weights_formula, weights, tuple(weight_parts)),
        Line(
            "trainable",
            "trainable parameters",
            trainable_bytes,
            f"{facts.trainable_params:,} trainable of {facts.total_params:,} parameters (peft's count); "
            "included in the weights",
            0,
        ),
        Line(
            "gradients",
            "gradients",
            grads,
            "one gradient per trainable parameter at its dtype"
            + (
                "; kept across micro-batches (gradient accumulation)"
                if accumulating
                else "; allocated during backward while activations are freed (the Trainer sets them to None "
                "after each step)"
            ),
            int(at_peak.get("gradients", 0)),
        ),
        Line("optimizer", "optimizer states", optimizer, optimizer_mem.formula, resident_optimizer),
        Line(
            "optimizer_scratch",
            "optimizer step scratch",
            optimizer_scratch,
            optimizer_mem.scratch_formula,
            int(at_peak.get("optimizer_scratch", 0)),
        ),
        Line(
            "mixed_precision",
            "mixed-precision weight copies",
            copies_all,
            copies_formula,
            int(at_peak.get("mixed_precision", 0)),
        ),
        Line(
            "activations",
            "activations",
            full_activations,
            layer_formula,
            int(at_peak.get("activations", 0)),
            tuple(activation_parts),
        ),
        Line(
            "logits",
            "logits",
            int(act["logits_backward"]),
            act["logits_text"] + f" ({liger_reason})",
            int(at_peak.get("logits", 0)),
        ),
    ]
    if ddp_buckets:
        lines.append(
            Line(
                "ddp_buckets",
                "DDP gradient buckets",
                ddp_buckets,
                "DistributedDataParallel's buckets: a copy of every gradient, kept for the all-reduce",
                ddp_buckets,
            )
        )
    if facts.prompt is not None:
        label = "past key/values (prefix)" if facts.prompt.kind == "past_key_values" else "virtual tokens"
        lines.append(Line("prompt", label, int(act["prompt"]), act["prompt_text"], int(at_peak.get("prompt", 0))))
    lines.append(Line("overhead", "framework overhead", overhead, overhead_formula, overhead))

    fits = headroom = None
    if device_memory_bytes:
        fits = total <= device_memory_bytes
        headroom = device_memory_bytes - total
    return Estimate(
        model=spec.model,
        method=spec.method.name,
        device=device,
        precision=run.precision,
        batch_size=run.batch_size,
        seq_len=run.seq_len,
        lines=tuple(lines),
        peak_phase=peak_phase,
        allocated_peak_bytes=allocated,
        total_peak_bytes=total,
        trainable_params=facts.trainable_params,
        total_params=facts.total_params,
        device_memory_bytes=device_memory_bytes,
        device_source=device_source,
        fits=fits,
        headroom_bytes=headroom,
        notes=tuple(notes),
        dtypes=dtypes.details(),
        kernels={"attention": facts.attn_implementation, "liger": liger, "liger_reason": liger_reason},
        seq_len_source=length_text
        or f"training.max_length = {spec.training.max_length}"
        + (f" + {run.seq_len - length} virtual tokens" if run.seq_len != length else ""),
        sample_len=length,
    )
