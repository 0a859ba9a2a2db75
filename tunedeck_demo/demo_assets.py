"""Offline demo assets: a byte-level BPE tokenizer and tiny randomly initialised causal LMs.

The worker normally fine-tunes models from the Hugging Face hub. For demos, tests and benchmarks on
machines without network access, this module builds everything locally in a few seconds:

* the synthetic bilingual alpaca dataset from :mod:`tunedeck_demo.demo_data`,
* a small byte-level BPE tokenizer trained on it (any Chinese or English text encodes without unknown
  tokens), saved as a ``transformers`` fast tokenizer,
* a randomly initialised model of a real architecture (Bloom, Llama or GPT-2), saved with
  ``save_pretrained`` (safetensors) together with the tokenizer, so ``AutoModelForCausalLM`` and
  ``AutoTokenizer`` load it from a plain directory exactly like a downloaded checkpoint.

:func:`prepare_demo_assets` ties these together and is idempotent: everything goes under one root
directory, each finished artefact carries a ``.complete`` marker written last, and directories are built
in a temporary location and renamed into place so concurrent callers never see half-written files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from tunedeck_demo.demo_data import write_demo_dataset

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_HIDDEN_SIZE",
    "DEFAULT_NUM_HEADS",
    "DEFAULT_NUM_LAYERS",
    "PROMPT_TEMPLATE_TEXTS",
    "Arch",
    "DemoAssets",
    "build_tiny_model",
    "prepare_demo_assets",
    "train_tokenizer",
]

Arch = Literal["bloom", "llama", "gpt2"]

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# Longest sequence the tiny models (and the tokenizer's model_max_length) support.
MAX_POSITIONS = 2048

# Words of the prompt template used for the demo runs; the tokenizer sees them so they get compact tokens.
PROMPT_TEMPLATE_TEXTS: tuple[str, ...] = ("Human: ", "Assistant: ", "下面是一段人与机器人的对话。")

# Default demo model: a Bloom of about 3.6 million parameters.
DEFAULT_ARCH: Arch = "bloom"
DEFAULT_HIDDEN_SIZE = 256
DEFAULT_NUM_LAYERS = 4
DEFAULT_NUM_HEADS = 4

_COMPLETE = ".complete"


@dataclass(frozen=True)
class DemoAssets:
    """Paths produced by :func:`prepare_demo_assets`."""

    model_dir: Path
    """Model checkpoint plus tokenizer files; load with ``from_pretrained(model_dir)``."""
    dataset_path: Path
    """Alpaca-format JSON Lines dataset."""


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir`` with ``save_pretrained``.

    The ByteLevel pre-tokenizer covers all 256 byte values, so any text (Chinese included) encodes without
    unknown tokens and decodes back unchanged. Special tokens ``<pad>``, ``<s>``, ``</s>``, ``<unk>`` get
    ids 0-3. No BOS/EOS are added automatically and no chat template is set: the training code formats
    prompts and appends EOS itself.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _model_config(
    arch: Arch,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
) -> PretrainedConfig:
    special: dict[str, Any] = {
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }
    if arch == "bloom":
        # Bloom uses ALiBi position biases, so it has no maximum-position setting.
        return BloomConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, n_layer=num_layers, n_head=num_heads, **special
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=MAX_POSITIONS,
            **special,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=MAX_POSITIONS,
            **special,
        )
    raise ValueError(f"unknown arch {arch!r}; expected one of 'bloom', 'llama', 'gpt2'")


def build_tiny_model(
    out_dir: Path,
    tokenizer_dir: Path,
    arch: Arch = "bloom",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``arch`` causal LM and the tokenizer from ``tokenizer_dir`` to ``out_dir``.

    Vocabulary size and pad/bos/eos ids come from the tokenizer. Weights are deterministic for a given
    ``seed`` and stored as float32 safetensors. Returns ``out_dir``.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = _model_config(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _training_texts(dataset_path: Path) -> Iterator[str]:
    """Instruction, input and output strings of every row, plus the prompt template words once per row."""
    with dataset_path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("instruction", "input", "output"):
                if row.get(key):
                    yield row[key]
            yield from PROMPT_TEMPLATE_TEXTS


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _build_atomically(final_dir: Path, build: Any, marker: dict[str, Any]) -> None:
    """Run ``build(tmp_dir)``, write the ``.complete`` marker last, then rename ``tmp_dir`` to ``final_dir``.

    A leftover ``final_dir`` without a marker (an interrupted earlier build) is removed first. If another
    process finished the same directory in the meantime, its result is kept and ours discarded.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = final_dir.with_name(f".{final_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        build(tmp_dir)
        (tmp_dir / _COMPLETE).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")
        if final_dir.exists() and not (final_dir / _COMPLETE).exists():
            shutil.rmtree(final_dir, ignore_errors=True)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not (final_dir / _COMPLETE).exists():
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / _COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def prepare_demo_assets(
    root: Path,
    *,
    arch: Arch = DEFAULT_ARCH,
    hidden_size: int = DEFAULT_HIDDEN_SIZE,
    num_layers: int = DEFAULT_NUM_LAYERS,
    num_heads: int = DEFAULT_NUM_HEADS,
    n_records: int = 1200,
) -> DemoAssets:
    """Create (or reuse) the demo dataset, tokenizer and a tiny model under ``root``.

    Layout::

        root/data/demo_alpaca.jsonl                    alpaca JSON Lines, ``n_records`` rows (seed 0)
        root/tokenizer/                                trained once per root, shared by all archs
        root/models/tiny-<arch>-<hidden>x<layers>/     model + tokenizer files, ``.complete`` written last

    Idempotent: the dataset is rewritten only if missing or of a different length, the tokenizer is
    trained only if ``root/tokenizer/.complete`` is missing, and a model directory whose ``.complete``
    marker records the same settings is returned without rebuilding.
    """
    root = Path(root)
    dataset_path = root / "data" / "demo_alpaca.jsonl"
    if not dataset_path.exists() or _count_lines(dataset_path) != n_records:
        write_demo_dataset(dataset_path, n=n_records, seed=0)

    tokenizer_dir = root / "tokenizer"
    if not (tokenizer_dir / _COMPLETE).exists():
        _build_atomically(
            tokenizer_dir,
            lambda tmp: train_tokenizer(_training_texts(dataset_path), tmp),
            {"kind": "tokenizer"},
        )

    model_dir = root / "models" / f"tiny-{arch}-{hidden_size}x{num_layers}"
    settings: dict[str, Any] = {
        "kind": "model",
        "arch": arch,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "seed": 0,
    }
    if _read_marker(model_dir) != settings:
        if (model_dir / _COMPLETE).exists():
            # Same name but different settings (e.g. another head count): rebuild in place.
            shutil.rmtree(model_dir, ignore_errors=True)
        _build_atomically(
            model_dir,
            lambda tmp: build_tiny_model(
                tmp, tokenizer_dir, arch, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads
            ),
            settings,
        )
    return DemoAssets(model_dir=model_dir, dataset_path=dataset_path)
