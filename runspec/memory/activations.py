"""Activations: what each decoder layer keeps for backward, outside the layers, the logits, prompt extras."""

from __future__ import annotations

import math
from typing import Any

from runspec.memory.facts import Linear, ModelFacts, Norm, RunShape, group_dtype, linear_weight_bytes
from runspec.memory.method_terms import MethodMemory
from runspec.memory.units import dtype_bytes, human_bytes


def activation_lines(facts: ModelFacts, run: RunShape, method_memory: MethodMemory) -> dict[str, Any]:
    """Saved activations per layer and outside the layers, logits, prompt extras; per token unless noted."""
    h, a, kv_heads, hd = facts.hidden_size, facts.num_heads, facts.num_kv_heads, facts.head_dim
    c, r, no, qc = run.compute_bytes, run.residual_bytes, run.norm_out_bytes, run.quant_compute_bytes
    q_dim = a * hd
    # Eager attention repeats grouped K/V to every head; SDPA takes them as they are (enable_gqa).
    kv_dim = q_dim if kv_heads != a and not run_uses_fused_attention(facts, run) else kv_heads * hd
    attn = facts.attention_linears
    mlp = facts.mlp_linears
    f = facts.ffn_size

    def wanted(linear: Linear) -> int:
        if linear.quantized:
            return qc
        return c if run.autocast else no

    def out_bytes(linear: Linear) -> int:
        return no if linear.quantized else c  # bitsandbytes hands back the input's dtype

    def kept_inputs(consumers: tuple[Linear, ...], source: int) -> tuple[float, str]:
        """Inputs kept by the trained matmuls among `consumers` (a frozen one needs only its weight)."""
        kept = [lin for lin in consumers if lin.trainable]
        if not kept:
            return 0.0, "none: frozen matmuls keep no input (only trained weights need it)"
        copies = sum(wanted(lin) * lin.in_features for lin in kept if wanted(lin) != source)
        shared = max((source * lin.in_features for lin in kept if wanted(lin) == source), default=0)
        if copies and not shared:
            return copies, f"{len(kept)} trained matmul(s) keep their own {c}-byte copy of the input"
        return copies + shared, "the input, kept once for the trained matmuls"

    norm_bytes = sum(norm_saved(n, run, h) for n in facts.norms)
    attn_in, attn_in_text = kept_inputs(attn[:-1], no)
    qkv = c * (q_dim + 2 * kv_dim)
    fused = run_uses_fused_attention(facts, run)
    if fused:
        scores = 0.0
        core = qkv + c * q_dim + 4 * a
        core_text = f"Q,K,V {c}·(h + 2·h_kv) + SDPA output {c}·h (fused attention: no s² term)"
    else:
        per_key = 4 + (c if c != 4 else 0)
        dropout_text = ""
        if facts.attention_dropout > 0:
            per_key += run.mask_bytes + c
            dropout_text = f" + dropout mask {run.mask_bytes} + output {c}"
        scores = per_key * a * run.key_len
        core = qkv
        core_text = (
            f"Q,K,V {c}·(h + 2·h_kv); softmax fp32 4{f' + its {c}-byte copy' if c != 4 else ''}{dropout_text} "
            f"per a·s_k (s² term: {per_key}·a·s_k = {human_bytes(scores)} per token)"
        )
    out_in, out_text = kept_inputs(attn[-1:], c)
    mlp_in, mlp_in_text = kept_inputs(mlp[:-1], no)
    lin_out = out_bytes(mlp[0])
    # Liger's SwiGLU keeps only the gate and up projections' outputs and recomputes the SiLU in backward.
    liger_mlp = run.liger and facts.gated_mlp
    act = 0.0 if liger_mlp else facts.activation_saved * lin_out * f
    gated = 2 * lin_out * f if facts.gated_mlp else 0
    down_in, down_text = kept_inputs(mlp[-1:], lin_out)
    residual_dropout = 2 * run.mask_bytes * h if facts.hidden_dropout > 0 else 0
    per_layer_token = norm_bytes + attn_in + core + scores + out_in + mlp_in + act + gated + down_in + residual_dropout
    layer_parts = [
        (
            "norm inputs",
            norm_bytes,
            f"{len(facts.norms)} norms keep their input"
            + (f" ({r}·h + fp32 rstd each: Liger's RMSNorm)" if run.liger else f" ({r}·h each)"),
        ),
        ("attention input", attn_in, attn_in_text),
        ("Q, K, V" + (" and output" if fused else ""), core, core_text),
        ("attention scores (s²)", scores, "eager attention keeps the probabilities" if scores else "none: fused"),
        ("attention output projection input", out_in, out_text),
        ("MLP input", mlp_in, mlp_in_text),
        (
            "MLP activation",
            act + gated,
            (
                f"Liger's SwiGLU keeps the gate and up outputs 2×{lin_out}·f and recomputes the SiLU"
                if liger_mlp
                else f"the activation function keeps {facts.activation_saved:g}×{lin_out}·f"
                + (f" + the gate product's operands 2×{lin_out}·f" if facts.gated_mlp else "")
            )
            + f" (f = {f})",
        ),
        ("MLP down-projection input", down_in, down_text),
    ]
    if residual_dropout:
        layer_parts.append(("dropout masks", residual_dropout, f"2 × {run.mask_bytes}·h"))

    grad_from_start = facts.embeddings_trainable or bool(facts.prompt and facts.prompt.kind == "input")
    # Until the first trained weight, nothing needs a gradient: the first layer's first norm keeps nothing.
    first_layer_saving = 0.0
    if not grad_from_start and facts.norms:
        first = facts.norms[0]
        first_layer_saving = norm_saved(first, run, h)
    stem = sum(norm_saved(n, run, h) for n in facts.stem_norms if n.after_layers or grad_from_start)
    if facts.lm_head_trainable and not run.liger:
        stem += (c if run.autocast else no) * h  # lm_head's input, for its weight gradient (Liger: computed early)
    if facts.embedding_dropout > 0 and grad_from_start:
        stem += run.mask_bytes * h
    method_tokens = sum(term.bytes_per_token for term in method_memory.terms)
    method_fixed = sum(term.fixed_bytes for term in method_memory.terms)
    # Backward of one layer: its largest temporaries (the probabilities' gradient and the softmax backward, or the
    # activation function's backward and its output gradient) plus the hidden states' gradients.
    # peft's cast of an adapter's input to fp32 (and its gradient) is one more temporary of one layer.
    workspace = (
        max(
            0.0 if fused else (c + 4) * a * run.key_len,
            (facts.activation_backward_peak + 1) * lin_out * f,
            method_memory.workspace_per_token,
        )
        + 2 * r * h
    )

    tokens = run.tokens
    layers = facts.num_layers
    layer_bytes = per_layer_token * tokens
    all_layers = layer_bytes * layers
    checkpoint_inputs = r * h * tokens * layers
    logits_backward = 12.0 * tokens * facts.vocab_size
    logits_forward = (c + 4 + 4 if c != 4 else 8) * tokens * facts.vocab_size * 1.0
    logits_text = (
        f"b·s·V = {run.batch_size}·{run.seq_len}·{facts.vocab_size} logits × 12 B at the start of backward "
        "(fp32 log-softmax kept for backward + its gradient + the gradient it produces); the forward holds "
        f"the {c}-byte logits, their fp32 upcast and the log-softmax"
    )
    if run.liger:
        logits_forward = logits_backward = liger_loss_bytes(facts, run, tokens)
        logits_text = liger_loss_text(facts, run, tokens)

    prompt_bytes = 0.0
    prompt_text = ""
    prompt = facts.prompt
    if prompt is not None:
        n = prompt.num_virtual_tokens
        enc = int(prompt.encoder_hidden_size or h)
        p_b = dtype_bytes(group_dtype(facts, "adapter"), 4)
        if prompt.kind == "past_key_values":
            kv_bytes = run.batch_size * n * 2 * layers * kv_heads * hd * p_b
            encoder = run.batch_size * n * (enc * 2 + 2 * layers * h) * p_b if prompt.prefix_projection else 0
            prompt_bytes = kv_bytes + encoder
            prompt_text = (
                f"past key/values b·n·2·L·h_kv·{p_b} = {run.batch_size}·{n}·2·{layers}·{kv_heads * hd}·{p_b}"
                + (f" + prefix MLP b·n·(2·{enc} + 2·L·h)·{p_b}" if encoder else "")
                + f"; attention over s + n = {run.key_len} keys (in the layers' s² and K/V terms)"
            )
        else:
            encoder = run.batch_size * n * (4 * enc + h) * p_b if prompt.encoder_reparameterization_type else 0
            prompt_bytes = encoder + run.batch_size * n * h * p_b
            prompt_text = (
                f"{n} virtual tokens before each sample: every layer and the logits see s = "
                f"{run.seq_len} tokens (counted there); the prompt embeddings b·n·h·{p_b}"
                + (f" + prompt encoder b·n·(4·{enc} + h)·{p_b}" if encoder else "")
            )
    return {
        "per_layer_token": per_layer_token,
        "layer_parts": layer_parts,
        "layer_bytes": layer_bytes,
        "all_layers": all_layers - first_layer_saving * tokens,
        "checkpoint_inputs": checkpoint_inputs,
        "stem": stem * tokens,
        "method": method_tokens * tokens + method_fixed,
        "method_per_layer": (method_tokens * tokens + method_fixed) / layers,
        "logits_backward": logits_backward,
        "logits_forward": logits_forward,
        "logits_text": logits_text,
        # a transient of one layer's forward pass the method builds (DoRA's weight norm), not kept for backward
        "method_workspace": method_memory.workspace_fixed,
        "prompt": prompt_bytes,
        "prompt_text": prompt_text,
        "scores_per_layer": scores * tokens,
        # a 4-bit layer de-quantizes its whole weight for each matmul (forward and backward), one at a time
        "workspace": workspace * tokens
        + max((qc * lin.in_features * lin.out_features for lin in facts.linears if lin.quantized), default=0),
    }


def norm_saved(norm: Norm, run: RunShape, h: int) -> float:
    """Bytes per token a norm keeps for backward: as measured on the worker (an RMSNorm's fp32 upcasts), or
    Liger's RMSNorm: its input in the residual stream's dtype and one fp32 rstd per token."""
    if norm.type == "rmsnorm" and run.liger:
        return run.residual_bytes * h + 4
    return norm.saved_per_token * (4 if norm.type == "rmsnorm" else run.residual_bytes) * h


def liger_chunk(facts: ModelFacts, tokens: int) -> int:
    """Rows of hidden states Liger's fused linear cross entropy projects at a time (its own rule)."""
    increase = math.ceil(facts.vocab_size / facts.hidden_size)
    rows = max(1, math.ceil(tokens / increase))
    return int(2 ** math.ceil(math.log2(rows)))


def liger_loss_bytes(facts: ModelFacts, run: RunShape, tokens: int) -> float:
    """Liger's fused linear cross entropy: the hidden states' gradient (computed in the forward pass), one chunk of
    logits with its fp32 loss arithmetic, the per-token losses, and lm_head's gradient when it is trained."""
    head_grad = facts.vocab_size * facts.hidden_size * linear_weight_bytes(facts) if facts.lm_head_trainable else 0
    chunk = liger_chunk(facts, tokens)
    return (
        run.compute_bytes * tokens * facts.hidden_size
        + (run.compute_bytes + 4) * chunk * facts.vocab_size
        + (4 * tokens)
        + head_grad
    )


def liger_loss_text(facts: ModelFacts, run: RunShape, tokens: int) -> str:
    chunk = liger_chunk(facts, tokens)
    return (
        f"Liger's fused linear cross entropy materialises no b·s·V logits: the hidden states' gradient "
        f"{run.compute_bytes}·b·s·h, computed in the forward pass, + one chunk of {chunk} rows × V = "
        f"{facts.vocab_size} logits × ({run.compute_bytes} + 4 fp32) B + fp32 per-token losses"
        + (" + lm_head's gradient (computed with the loss)" if facts.lm_head_trainable else "")
    )


def run_uses_fused_attention(facts: ModelFacts, run: RunShape) -> bool:
    """SDPA / flash attention keep no s² probabilities (on CPU too: PyTorch's SDPA has a flash kernel)."""
    return facts.attn_implementation in ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
