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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from runspec import RunSpec
from runspec.methods import MethodSpec
from worker.training.errors import TrainingError

log = logging.getLogger("tunedeck.training")

#: Attention implementations whose kernels compute packed rows sample by sample (variable-length).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "flash")


@dataclass(frozen=True)
class Batching:
    group_by_length: bool
    packing: bool
    #: why packing is on or off, for the run's log and details
    reason: str

    def details(self) -> dict[str, Any]:
        return {"group_by_length": self.group_by_length, "packing": self.packing, "packing_reason": self.reason}

    def collator(self, tokenizer: Any) -> Any:
        if self.packing:
            # Labels: each sample's first label becomes -100, so no sample learns to predict the next one's start.
            return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def sampling_strategy(self) -> str:
        return "group_by_length" if self.group_by_length else "random"


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
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(0)
        a, a2 = (torch.randint(4, vocab, (7,), generator=generator) for _ in range(2))
        b = torch.randint(4, vocab, (5,), generator=generator)
        collate = DataCollatorWithFlattening(return_position_ids=True)

        def logits(*samples: torch.Tensor) -> torch.Tensor:
            batch = collate([{"input_ids": s.tolist()} for s in samples])
            with torch.no_grad():
                out = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device))
            return out.logits[0].float().cpu()

        packed, packed_other = logits(a, b), logits(a2, b)
        alone_a, alone_b = logits(a), logits(b)
    except Exception as exc:  # a model that refuses position ids or a row without attention mask
        config.use_cache = use_cache
        return f"{type(model).__name__} cannot run a packed row ({(str(exc).splitlines() or [''])[0][:200]})"
    finally:
        model.train(was_training)
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
