"""Instruction data as the course prepares it: alpaca rows → prompt/response token ids with masked labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runspec import DatasetSpec
from worker.training.errors import TrainingError
from worker.training.sources import looks_like_local_path

IGNORE_INDEX = -100
ALPACA_REQUIRED = ("instruction", "output")
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def format_prompt(instruction: str, input_text: str | None = None) -> str:
    """The course's template: "Human: {instruction}\\n{input}\\n\\nAssistant: " (empty input dropped)."""
    return "\n".join(["Human: " + instruction, input_text or ""]).strip() + "\n\nAssistant: "


def load_rows(spec: DatasetSpec) -> Any:
    """Load the dataset's rows (a `datasets.Dataset`) from a local file or the hub, and check its columns."""
    import datasets

    source = spec.source
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_file():
            raise TrainingError(f"dataset.source {source!r} is a folder; give a JSON, JSONL, CSV or Parquet file")
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise TrainingError(
                f"dataset.source {source!r} has an unsupported extension {path.suffix!r}; "
                f"use one of {', '.join(sorted(FILE_BUILDERS))}"
            )
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:
            raise TrainingError(f"dataset file {source!r} could not be read as {builder}: {_first_line(exc)}") from exc
    elif looks_like_local_path(source):
        raise TrainingError(f"dataset.source {source!r} does not exist")
    else:
        try:
            rows = datasets.load_dataset(source, split="train")
        except Exception as exc:
            raise TrainingError(
                f"could not load dataset {source!r} from the Hugging Face hub: {_first_line(exc)}. "
                "Check the id and network access, or give a local file."
            ) from exc

    missing = [column for column in ALPACA_REQUIRED if column not in rows.column_names]
    if missing:
        raise TrainingError(
            f"dataset {source!r} has no {', '.join(repr(m) for m in missing)} column; the alpaca format needs "
            f"'instruction' and 'output' (and optionally 'input'). Columns found: {', '.join(rows.column_names)}"
        )
    if len(rows) == 0:
        raise TrainingError(f"dataset {source!r} is empty")
    if spec.max_samples is not None and len(rows) > spec.max_samples:
        rows = rows.select(range(spec.max_samples))
    return rows


def tokenize_alpaca(rows: Any, tokenizer: Any, max_length: int) -> Any:
    """Prompt tokens get label -100 so only the response (plus EOS) is learned; samples are cut at max_length.

    Samples whose response is cut away entirely are dropped: they would contribute no loss."""
    eos_id = tokenizer.eos_token_id

    def encode(example: dict[str, Any]) -> dict[str, list[int]]:
        prompt_ids = tokenizer(
            format_prompt(str(example["instruction"] or ""), _text(example.get("input"))),
            add_special_tokens=False,
        )["input_ids"]
        response_ids = tokenizer(_text(example["output"]), add_special_tokens=False)["input_ids"]
        if eos_id is not None:
            response_ids = [*response_ids, eos_id]
        input_ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    encoded = rows.map(encode, remove_columns=rows.column_names, desc="tokenize")
    return encoded.filter(lambda example: any(label != IGNORE_INDEX for label in example["labels"]))


def split_eval(dataset: Any, eval_fraction: float, seed: int) -> tuple[Any, Any | None]:
    if eval_fraction <= 0 or len(dataset) < 2:
        return dataset, None
    eval_size = max(1, round(len(dataset) * eval_fraction))
    split = dataset.train_test_split(test_size=eval_size, seed=seed, shuffle=True)
    return split["train"], split["test"]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
