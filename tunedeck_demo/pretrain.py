"""Pre-train the demo's tiny model on the bundled tasks, so demo runs answer held-out prompts with text.

A randomly initialised model (``demo_assets.build_tiny_model``) answers every prompt with nothing useful; the demo
runs (80 steps each) are too short to teach it language from scratch. ``tunedeck demo prepare`` therefore runs a
plain causal-LM loop (transformers' Trainer, every token learned) over rows generated like the bundled dataset but
from another seed (``demo_data.generate_alpaca_records(seed=1)``: the same tasks, none of the demo dataset's rows,
so its held-out rows stay held out), each written with the course's instruction template. The fine-tuning runs
then teach the exact answers, and methods and ranks differ in how well.

Cached: the result goes to ``<model>-pretrained`` with a ``.complete`` marker holding a hash of the base model's
config and weights, the pre-training rows and these settings; a second call with the same inputs returns at once.
Tests and the harness keep the untrained builder (``prepare_demo_assets``), so CI never waits for this.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunedeck_demo.demo_assets import _COMPLETE, _build_atomically, _read_marker
from tunedeck_demo.demo_data import generate_alpaca_records

# The course template, as worker/training/formats.py writes it (tunedeck_demo does not import worker/).
USER_PREFIX = "Human: "
ASSISTANT_PREFIX = "\n\nAssistant: "


@dataclass(frozen=True)
class PretrainConfig:
    records: int = 4000
    seed: int = 1  # the rows' seed: the demo dataset is seed 0
    max_steps: int = 150
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_length: int = 128


def course_text(record: dict[str, str]) -> str:
    prompt = (USER_PREFIX + "\n".join([record["instruction"].strip(), record.get("input", "").strip()])).strip()
    return prompt + ASSISTANT_PREFIX + record["output"]


def pretrained_dir(model_dir: Path) -> Path:
    return model_dir.with_name(model_dir.name + "-pretrained")


def _fingerprint(model_dir: Path, texts: list[str], config: PretrainConfig) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    digest.update(json.dumps(texts, ensure_ascii=False).encode())
    digest.update(json.dumps(asdict(config), sort_keys=True).encode())
    return digest.hexdigest()


def pretrain_demo_model(model_dir: Path, config: PretrainConfig | None = None, log: Any = print) -> Path:
    """The pre-trained copy of ``model_dir`` (built once per content hash): its path."""
    config = config or PretrainConfig()
    texts = [course_text(r) for r in generate_alpaca_records(config.records, seed=config.seed)]
    out_dir = pretrained_dir(model_dir)
    marker = {"kind": "pretrained", "hash": _fingerprint(model_dir, texts, config)}
    if _read_marker(out_dir) == marker:
        return out_dir
    if (out_dir / _COMPLETE).exists():
        shutil.rmtree(out_dir, ignore_errors=True)
    log(f"pre-training the demo model on {len(texts)} rows ({config.max_steps} steps; a minute or two on two cores)")
    _build_atomically(out_dir, lambda tmp: _train(model_dir, texts, config, tmp), marker)
    return out_dir


def _train(model_dir: Path, texts: list[str], config: PretrainConfig, out_dir: Path) -> None:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)

    def encode(batch: dict[str, list[str]]) -> dict[str, Any]:
        rows = [text + tokenizer.eos_token for text in batch["text"]]
        return tokenizer(rows, truncation=True, max_length=config.max_length)

    dataset = Dataset.from_dict({"text": texts}).map(encode, batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.max_steps // 20,
        weight_decay=0.0,
        logging_steps=max(1, config.max_steps // 10),
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    result = trainer.train()
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "pretraining.json").write_text(
        json.dumps({**asdict(config), "train_loss": result.training_loss}, indent=2) + "\n", encoding="utf-8"
    )
