"""How training batches are made, so that as little compute as possible goes to padding.

Two settings (training.group_by_length, training.packing):

* **Length grouping** (default on, every method): transformers' `LengthGroupedSampler` shuffles the samples,
  cuts them into mega-batches of 50 batches and sorts each by length, so a batch holds samples of similar
  length and `DataCollatorForSeq2Seq` pads little. Only the order changes: every sample is still seen once per
  epoch, and prompt-learning methods (virtual tokens, prefixes) see exactly the inputs they would otherwise.
* **Packing** (padding-free): `DataCollatorWithFlattening` concatenates a batch's samples into one row with
  position ids restarting at each sample and no attention mask; transformers then keeps attention within each
  sample (a block-diagonal causal mask, or FlashAttention's variable-length kernel). That holds only for
  models that take position ids and build their mask from them, with the attention cache off; Bloom (ALiBi,
  positions from the attention mask) lets a packed sample attend to the one before it. So packing is used
  only after `packed_attention_problem` found, on the run's own model, that a packed row computes each
  sample exactly as alone. Never for prompt-learning methods: their virtual tokens go before each *row*.
  `auto` packs only where the attention kernel skips the masked-out blocks (FlashAttention): SDPA and eager
  attention compute the whole packed row's square and mask it, which can cost more than it saves.

A third setting, training.supervised_logits_only (default on), skips work that is not padding: only positions
whose next token is learned (the response) are projected onto the vocabulary. Each batch carries a boolean
`logits_to_keep` and the learned tokens as `shift_labels`, which transformers' causal-LM models and loss take as
they are; the loss and gradients are those of every position projected, since the others' labels are -100
anyway. `check_supervised_logits` checks this on the run's model (after the method wrapped it, which also tells
how many virtual tokens prompt tuning puts before the inputs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from runspec import RunSpec
from runspec.methods import MethodSpec
from worker.training.errors import TrainingError, first_line
from worker.training.modes import evaluating

log = logging.getLogger("tunedeck.training")

#: Attention implementations whose kernels compute packed rows sample by sample (variable-length).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "flash")


@dataclass(frozen=True)
class Batching:
    group_by_length: bool
    packing: bool
    #: why packing is on or off, for the run's log and details
    reason: str
    #: logits only where a token is learned; None: every position (and `logits_reason` says why)
    supervised_logits: SupervisedLogits | None = None
    #: None until plan_supervised_logits has looked at the method-wrapped model
    logits_reason: str | None = None

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "group_by_length": self.group_by_length,
            "packing": self.packing,
            "packing_reason": self.reason,
        }
        if self.logits_reason is not None:
            details["supervised_logits_only"] = self.supervised_logits is not None
            details["supervised_logits_reason"] = self.logits_reason
        return details

    def collator(self, tokenizer: Any) -> Any:
        if self.packing:
            # Labels: each sample's first label becomes -100, so no sample learns to predict the next one's start.
            collate: Any = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        else:
            collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        if self.supervised_logits is not None:
            return self.supervised_logits.wrap(collate)
        return collate

    def sampling_strategy(self) -> str:
        return "group_by_length" if self.group_by_length else "random"


@dataclass(frozen=True)
class SupervisedLogits:
    """What a batch needs so that the model projects onto the vocabulary only where a token is learned."""

    #: positions the method puts before the inputs (prompt tuning's and P-Tuning's virtual tokens)
    virtual_tokens: int = 0

    def wrap(self, collate: Any) -> Any:
        return _SupervisedLogitsCollator(collate, self)

    def add_to(self, batch: Any) -> Any:
        """`shift_labels`: the learned next tokens, flattened; `logits_to_keep`: the positions that predict them
        (batch × positions, virtual ones included). The model returns their logits flattened, in the same order."""
        labels = batch["labels"]
        next_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        keep = next_labels != -100
        batch["shift_labels"] = next_labels[keep]
        if self.virtual_tokens:
            keep = torch.cat((keep.new_zeros((keep.shape[0], self.virtual_tokens)), keep), dim=1)
        batch["logits_to_keep"] = keep
        return batch


@dataclass(frozen=True)
class _SupervisedLogitsCollator:
    collate: Any
    plan: SupervisedLogits

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        return self.plan.add_to(self.collate(features))


def plan_supervised_logits(spec: RunSpec, batching: Batching, model: Any, *, fused_loss: bool = False) -> Batching:
    """Add training.supervised_logits_only to the batching plan, checked on the method-wrapped model.

    `fused_loss`: Liger's fused linear cross entropy computes the loss (training.liger_kernel); it takes the
    hidden states and the output weight and never materialises the logits, and it cannot take a boolean
    logits_to_keep (it slices the hidden states by it as a 1-D index), so the batches carry none."""
    if not spec.training.supervised_logits_only:
        return replace(batching, supervised_logits=None, logits_reason="training.supervised_logits_only=false")
    if fused_loss:
        return replace(
            batching,
            supervised_logits=None,
            logits_reason="Liger's fused linear cross entropy (training.liger_kernel) computes the loss without "
            "materialising logits; supervised_logits_only is not needed",
        )
    checked = check_supervised_logits(model)
    if isinstance(checked, str):
        return replace(batching, supervised_logits=None, logits_reason=f"every position projected: {checked}")
    return replace(
        batching,
        supervised_logits=checked,
        logits_reason="checked on this model: the loss from the learned positions' logits equals the full one",
    )


def check_supervised_logits(model: Any) -> SupervisedLogits | str:
    """How to batch for logits at learned positions only, or what goes wrong on this model. Two rows (one padded,
    prompts labelled -100) go through the model in eval mode, once projecting every position and once only the
    learned ones: the second must return one logit row per learned token and the same loss."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return "the model's vocabulary is too small to check"
    device = next(model.parameters()).device
    ids = torch.randint(4, vocab, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 9:] = -100
    try:
        with evaluating(model), torch.no_grad():
            every = model(input_ids=ids, attention_mask=attention_mask, labels=labels)
            plan = SupervisedLogits(virtual_tokens=max(0, every.logits.shape[1] - ids.shape[1]))
            batch = plan.add_to({"input_ids": ids, "attention_mask": attention_mask, "labels": labels})
            learned = model(**batch)
    except Exception as exc:  # a model whose forward takes no boolean logits_to_keep or shift_labels
        return f"{type(model).__name__} cannot ({first_line(exc, 200)})"
    expected_rows = int(batch["shift_labels"].numel())
    if learned.logits.shape[:-1] != (expected_rows,):
        return f"{type(model).__name__} ignores a boolean logits_to_keep (logits {tuple(learned.logits.shape)})"
    full, part = float(every.loss), float(learned.loss)
    if not abs(full - part) <= (1e-5 if config_dtype_is_fp32(model) else 1e-2) * max(1.0, abs(full)):
        return f"the loss differs from the full projection's ({part:.6g} vs {full:.6g})"
    return plan


def plan_batching(spec: RunSpec, method: MethodSpec, model: Any) -> Batching:
    """Decide grouping and packing for this run on its loaded base model (before the method wraps it).

    When packing is chosen, the model's config gets use_cache=False: with a cache, transformers builds a plain
    causal mask and packed samples would attend to each other."""
    t = spec.training
    packing, reason = _decide_packing(t.packing, method, model)
    # A packed batch has no padding left to group away; random order keeps batches as varied as the recipe's.
    return Batching(group_by_length=t.group_by_length and not packing, packing=packing, reason=reason)


def _decide_packing(setting: str, method: MethodSpec, model: Any) -> tuple[bool, str]:
    if setting == "off":
        return False, "training.packing=off"
    if method.prompt_learning:  # packing=on was refused when the spec was validated
        return False, f"{method.label} puts virtual tokens before every sample: packed rows would share them"
    attention = str(getattr(model.config, "_attn_implementation", None) or "eager")
    if setting == "auto" and not any(attention.startswith(kind) for kind in VARLEN_ATTENTION):
        return False, (
            f"auto: {attention} attention computes a packed row's whole square (masked), so length grouping is "
            "used instead; packing=auto packs with FlashAttention"
        )
    problem = packed_attention_problem(model)
    if problem is not None:
        if setting == "on":
            raise TrainingError(
                f"training.packing=on: {problem}. Use training.packing=auto or off (length grouping, "
                "training.group_by_length, still removes most padding)."
            )
        return False, f"auto: {problem}"
    return True, f"{setting}: checked on this model: a packed row computes each sample as alone ({attention})"


def packed_attention_problem(model: Any) -> str | None:
    """None when a packed row (DataCollatorWithFlattening's format) computes each sample exactly as alone;
    otherwise what goes wrong. Two short samples are run through the model in eval mode, with its config's own
    use_cache (set to False here, as training will have it):

    1. sample b's logits must not depend on sample a before it in the row (same shapes, different a: exact up to
       rounding; attention that crosses the boundary changes them);
    2. each sample's logits must equal those of the sample run alone (position ids restart)."""
    config = model.config
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 8:
        return "the model's vocabulary is too small to check packing"
    use_cache, config.use_cache = getattr(config, "use_cache", None), False
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    a, a2 = (torch.randint(4, vocab, (7,), generator=generator) for _ in range(2))
    b = torch.randint(4, vocab, (5,), generator=generator)
    collate = DataCollatorWithFlattening(return_position_ids=True)

    def logits(*samples: torch.Tensor) -> torch.Tensor:
        batch = collate([{"input_ids": s.tolist()} for s in samples])
        out = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device))
        return out.logits[0].float().cpu()

    try:
        with evaluating(model), torch.no_grad():
            packed, packed_other = logits(a, b), logits(a2, b)
            alone_a, alone_b = logits(a), logits(b)
    except Exception as exc:  # a model that refuses position ids or a row without attention mask
        config.use_cache = use_cache
        return f"{type(model).__name__} cannot run a packed row ({first_line(exc, 200)})"
    problem = _packing_problem(model, packed, packed_other, alone_a, alone_b)
    if problem is not None:
        config.use_cache = use_cache  # packing will not be used: leave the model as it was
    return problem


def _packing_problem(
    model: Any, packed: torch.Tensor, packed_other: torch.Tensor, alone_a: torch.Tensor, alone_b: torch.Tensor
) -> str | None:
    config = model.config
    scale = max(1.0, float(alone_a.abs().max()), float(alone_b.abs().max()))
    crossing = float((packed[7:] - packed_other[7:]).abs().max()) / scale
    exact = config_dtype_is_fp32(model)
    if crossing > (1e-5 if exact else 1e-3):
        kind = getattr(config, "model_type", type(model).__name__)
        why = " (its ALiBi positions come from the attention mask, not from position ids)" if kind == "bloom" else ""
        return f"{kind} lets a packed sample attend to the sample before it{why}"
    apart = max(float((packed[:7] - alone_a).abs().max()), float((packed[7:] - alone_b).abs().max())) / scale
    if apart > (1e-4 if exact else 3e-2):
        return (
            f"a packed sample's outputs differ from the sample alone (relative {apart:.1e}): positions do not restart"
        )
    return None


def config_dtype_is_fp32(model: Any) -> bool:
    """fp32 weights throughout: outputs of equal computations agree to rounding (16-bit or 4-bit: looser)."""
    return all(p.dtype == torch.float32 for p in model.parameters())
