"""Batching defaults (training.group_by_length, training.packing, training.supervised_logits_only): what each
method gets, and that it trains.

Real training of the tiny models in-process (worker.training.loop.train with an in-memory Reporter); a callback
looks at the batches the Trainer's dataloader really produced and at a fixed held-out batch's loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainerCallback

from runspec import RunSpec
from tests.conftest import tiny_spec
from tests.method_matrix import MemoryReporter
from worker.training.batching import check_supervised_logits, plan_batching, plan_supervised_logits
from worker.training.errors import TrainingError
from worker.training.loop import train
from worker.training.method_fit import build_method


class BatchWatcher(TrainerCallback):
    """Which sampler the training dataloader uses, real vs computed tokens of its batches, and the loss on a
    fixed padded batch when training begins and ends."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch
        self.sampler: Any = None
        #: (rows, real tokens) and computed tokens of every batch collated (the dataloader looks one ahead)
        self.batches: list[tuple[int, int]] = []
        self.computed_per_batch: list[int] = []
        self.steps = 0
        self.losses: list[float] = []

    def _loss(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(model(**self.batch).loss)
        finally:
            model.train(was_training)

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kw: Any) -> None:
        self.sampler = train_dataloader.batch_sampler.sampler
        loader = train_dataloader.base_dataloader
        inner = loader.collate_fn

        def counting(features: list[dict[str, Any]]) -> Any:
            batch = inner(features)
            self.batches.append((batch["input_ids"].shape[0], sum(len(f["input_ids"]) for f in features)))
            self.computed_per_batch.append(batch["input_ids"].numel())
            return batch

        loader.collate_fn = counting
        self.losses.append(self._loss(kw["model"]))

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.steps = state.global_step
        self.losses.append(self._loss(model))

    @property
    def rows(self) -> list[int]:
        return [rows for rows, _ in self.batches[: self.steps]]

    @property
    def real(self) -> int:
        return sum(real for _, real in self.batches[: self.steps])

    @property
    def computed(self) -> int:
        return sum(self.computed_per_batch[: self.steps])


def held_out_batch(assets: Any, rows: range = range(300, 316)) -> dict[str, torch.Tensor]:
    """Rows of the bundled data past max_samples (never trained on), framed and masked as training does."""
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    lines = Path(assets.dataset_path).read_text(encoding="utf-8").splitlines()
    features = []
    for index in rows:
        row = json.loads(lines[index])
        prompt = "\n".join(["Human: " + row["instruction"], row["input"]]).strip() + "\n\nAssistant: "
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt_ids + answer_ids
        labels = [-100] * len(prompt_ids) + answer_ids
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return dict(DataCollatorForSeq2Seq(tokenizer, padding=True)(features))


@pytest.mark.parametrize(
    "method",
    [
        {"name": "lora", "r": 8, "lora_alpha": 16},
        {"name": "prompt_tuning", "num_virtual_tokens": 8},
    ],
    ids=["lora", "prompt_tuning"],
)
def test_tuned_defaults_group_batches_by_length_and_train(tiny_assets: Any, tmp_path: Path, method: dict) -> None:
    """The defaults group by length (no packing on a CPU, nor ever for prompt tuning): the Trainer samples with
    LengthGroupedSampler, its batches carry little padding, and the held-out loss falls."""
    # A soft prompt barely moves a randomly initialised model: a large rate makes its (small) progress clear.
    lr = 2e-2 if method["name"] == "lora" else 3e-1
    spec = RunSpec.model_validate(
        tiny_spec(
            tiny_assets,
            method=method,
            dataset={"eval_fraction": 0, "max_samples": 256},
            training={"max_steps": 12, "batch_size": 4, "learning_rate": lr, "eval_generation_samples": 0},
        )
    )
    assert spec.training.group_by_length is True and spec.training.packing == "auto"
    watcher = BatchWatcher(held_out_batch(tiny_assets))
    reporter = MemoryReporter()
    train(spec, tmp_path / "run", reporter, callbacks=[watcher])

    batching = reporter.facts["batching"]
    assert batching["group_by_length"] is True and batching["packing"] is False, batching
    expected_reason = "auto: eager attention" if method["name"] == "lora" else "virtual tokens before every sample"
    assert expected_reason in batching["packing_reason"], batching
    assert batching["supervised_logits_only"] is True, batching
    assert type(watcher.sampler).__name__ == "LengthGroupedSampler"
    assert watcher.rows == [4] * 12  # padded batches of batch_size rows
    # Random batches of 4 of this data compute about 1.9× their real tokens; grouped ones hardly more than 1×.
    assert watcher.computed / watcher.real < 1.15, (watcher.computed, watcher.real)
    before, after = watcher.losses
    assert math.isfinite(after) and after < before, f"held-out loss did not fall: {before:.4f} → {after:.4f}"
    assert len(reporter.series["loss"]) == 12


def test_same_settings_pad_like_the_recipe(tiny_assets: Any, tmp_path: Path) -> None:
    """group_by_length=false, packing=off: random order, padded batches (the course's recipe)."""
    spec = RunSpec.model_validate(
        tiny_spec(
            tiny_assets,
            dataset={"eval_fraction": 0, "max_samples": 256},
            training={
                "max_steps": 4,
                "batch_size": 4,
                "group_by_length": False,
                "packing": "off",
                "supervised_logits_only": False,
                "eval_generation_samples": 0,
            },
        )
    )
    watcher = BatchWatcher(held_out_batch(tiny_assets))
    reporter = MemoryReporter()
    train(spec, tmp_path / "run", reporter, callbacks=[watcher])
    assert reporter.facts["batching"] == {
        "group_by_length": False,
        "packing": False,
        "packing_reason": "training.packing=off",
        "supervised_logits_only": False,
        "supervised_logits_reason": "training.supervised_logits_only=false",
    }
    assert type(watcher.sampler).__name__.endswith("RandomSampler")  # accelerate's seedable one
    assert watcher.rows == [4] * 4


def test_packing_trains_llama_on_flattened_rows(tiny_llama: Any, tmp_path: Path) -> None:
    """packing=on on a Llama: checked on the model, then batches are one flattened row with restarting position
    ids; every token counts as seen (no padding), and the loss falls."""
    spec = RunSpec.model_validate(
        tiny_spec(
            tiny_llama,
            dataset={"eval_fraction": 0, "max_samples": 256},
            training={
                "max_steps": 6,
                "batch_size": 4,
                "learning_rate": 2e-2,
                "packing": "on",
                "eval_generation_samples": 0,
            },
        )
    )
    watcher = BatchWatcher(held_out_batch(tiny_llama))
    reporter = MemoryReporter()
    train(spec, tmp_path / "run", reporter, callbacks=[watcher])
    batching = reporter.facts["batching"]
    assert batching["packing"] is True and batching["group_by_length"] is False, batching
    assert watcher.rows == [1] * 6  # one flattened row per batch
    assert watcher.computed == watcher.real  # nothing computed on padding
    tokens_seen = reporter.series["tokens_seen"][-1][1]
    assert tokens_seen == watcher.real
    before, after = watcher.losses
    assert after < before, f"held-out loss did not fall: {before:.4f} → {after:.4f}"


def test_packed_rows_compute_the_padded_loss(tiny_llama: Any) -> None:
    """The packed batch's training loss (train mode, as the Trainer calls the model) equals the padded batch's:
    no sample attends to another, positions restart, and each sample's first label is not learned from the one
    before."""
    spec = RunSpec.model_validate(
        tiny_spec(tiny_llama, method={"name": "full"}, training={"packing": "on"}, dataset={"eval_fraction": 0})
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_llama.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama.model_dir)
    batching = plan_batching(spec, spec.method, model)
    assert batching.packing and model.config.use_cache is False
    generator = torch.Generator().manual_seed(1)
    features = []
    for length in (9, 4, 13):
        ids = torch.randint(4, len(tokenizer), (length,), generator=generator).tolist()
        features.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * 2 + ids[2:]})
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True)(features)
    packed = batching.collator(tokenizer)(features)
    assert packed["input_ids"].shape == (1, 26) and "attention_mask" not in packed
    model.train()
    assert float(model(**packed).loss) == pytest.approx(float(model(**padded).loss), rel=1e-5)


def test_packing_refused_where_attention_would_cross_samples(tiny_assets: Any) -> None:
    """Bloom takes its ALiBi positions from the attention mask: packing=on fails at start naming the setting,
    auto falls back to length grouping; prompt-learning methods refuse packing=on when the spec is checked."""
    model = AutoModelForCausalLM.from_pretrained(tiny_assets.model_dir, dtype=torch.float32)
    on = RunSpec.model_validate(tiny_spec(tiny_assets, training={"packing": "on"}))
    with pytest.raises(TrainingError, match=r"training.packing=on: bloom lets a packed sample attend"):
        plan_batching(on, on.method, model)
    assert model.config.use_cache is True  # left as it was

    auto = RunSpec.model_validate(tiny_spec(tiny_assets))
    batching = plan_batching(auto, auto.method, model)
    assert batching.group_by_length and not batching.packing

    for name in ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"):
        with pytest.raises(ValidationError, match=r"training.packing=on cannot be used with"):
            RunSpec.model_validate(tiny_spec(tiny_assets, method={"name": name}, training={"packing": "on"}))
        spec = RunSpec.model_validate(tiny_spec(tiny_assets, method={"name": name}))
        assert plan_batching(spec, spec.method, model).group_by_length is True


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "full"])
def test_supervised_logits_give_the_full_loss_and_gradients(tiny_assets: Any, method: str) -> None:
    """Logits only where a token is learned: one logit row per learned token (prompt tuning's virtual tokens
    skipped too), and the training loss and every trainable gradient equal those of projecting every position."""
    spec = RunSpec.model_validate(tiny_spec(tiny_assets, method={"name": method}, dataset={"eval_fraction": 0}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_assets.model_dir, dtype=torch.float32)
    batching = plan_batching(spec, spec.method, base)
    model = build_method(spec.method.resolved(spec.training), base, tokenizer)
    batching = plan_supervised_logits(spec, batching, model)
    assert batching.supervised_logits is not None, batching.logits_reason
    assert batching.supervised_logits.virtual_tokens == (8 if method == "prompt_tuning" else 0)

    generator = torch.Generator().manual_seed(3)
    features = []
    for length, prompt in ((11, 6), (5, 2), (16, 9)):
        ids = torch.randint(4, len(tokenizer), (length,), generator=generator).tolist()
        features.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]})
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True)(features)
    learned = batching.collator(tokenizer)(features)
    assert learned["shift_labels"].tolist() == [t for f in features for t in f["labels"][1:] if t != -100]

    def loss_and_gradients(batch: Any) -> tuple[Any, Any, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks for both (LoRA's dropout is on in train mode)
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        return out.loss.detach(), out.logits.shape, grads

    model.train()
    full_loss, full_shape, full_grads = loss_and_gradients(padded)
    loss, shape, grads = loss_and_gradients(learned)
    assert shape == (int(learned["shift_labels"].numel()), full_shape[-1])
    assert float(loss) == pytest.approx(float(full_loss), rel=1e-5)
    assert grads.keys() == full_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, full_grads[name], rtol=1e-4, atol=1e-7), name


def test_supervised_logits_fall_back_where_the_model_cannot(tiny_assets: Any) -> None:
    """A model whose forward ignores logits_to_keep keeps every position, saying why; so does the setting off."""
    from transformers import BloomForCausalLM

    class EveryPosition(BloomForCausalLM):
        def forward(self, *args: Any, logits_to_keep: Any = 0, shift_labels: Any = None, **kwargs: Any) -> Any:
            return super().forward(*args, **kwargs)

    model = EveryPosition.from_pretrained(tiny_assets.model_dir, dtype=torch.float32)
    checked = check_supervised_logits(model)
    assert isinstance(checked, str) and "ignores a boolean logits_to_keep" in checked, checked
    spec = RunSpec.model_validate(tiny_spec(tiny_assets, method={"name": "full"}))
    batching = plan_supervised_logits(spec, plan_batching(spec, spec.method, model), model)
    assert batching.supervised_logits is None and "ignores a boolean logits_to_keep" in batching.logits_reason
    assert "logits_to_keep" not in batching.collator(AutoTokenizer.from_pretrained(tiny_assets.model_dir))(
        [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}]
    )

    off = RunSpec.model_validate(tiny_spec(tiny_assets, training={"supervised_logits_only": False}))
    plain = AutoModelForCausalLM.from_pretrained(tiny_assets.model_dir, dtype=torch.float32)
    batching = plan_supervised_logits(off, plan_batching(off, off.method, plain), plain)
    assert batching.supervised_logits is None
    assert batching.details()["supervised_logits_reason"] == "training.supervised_logits_only=false"
