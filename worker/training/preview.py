"""What training will see of a dataset: its first rows, each rendered and tokenized exactly as training does
(template applied, masked part marked, cut at max_length), and the distribution of token lengths."""

from __future__ import annotations

import math
import statistics
from typing import Any

from runspec import DatasetSpec
from worker.training.data import load_rows
from worker.training.errors import TrainingError
from worker.training.formats import (
    IGNORE_INDEX,
    check_columns,
    has_chat_template,
    row_turns,
    tokenize_rows,
)
from worker.training.loading import load_tokenizer

#: Rows tokenized for the length histogram (the first ones); the preview says when it measured fewer.
MEASURE_LIMIT = 20_000
#: Rows checked against the format when a dataset is registered.
VALIDATE_LIMIT = 100_000
CELL_MAX_CHARS = 2000
HISTOGRAM_BINS_UP_TO_MAX = 10
HISTOGRAM_BINS_PAST_MAX = 10


def inspect_dataset(spec: DatasetSpec) -> dict[str, Any]:
    """Rows, columns, and every row (up to VALIDATE_LIMIT) checked against the format: fail fast, by row."""
    rows = load_rows(spec)
    mapping = check_columns(rows.column_names, spec, repr(spec.source))
    checked = min(len(rows), VALIDATE_LIMIT)
    for index, example in enumerate(rows.select(range(checked))):
        row_turns(example, spec, mapping, index)
    return {"rows": len(rows), "columns": list(rows.column_names), "checked_rows": checked}


def preview_dataset(spec: DatasetSpec, model: str, max_length: int, rows: int = 5) -> dict[str, Any]:
    tokenizer = load_tokenizer(model)
    loaded = load_rows(spec)
    measured = loaded.select(range(min(len(loaded), MEASURE_LIMIT)))
    tokenized = tokenize_rows(measured, tokenizer, spec, max_length, model_label=repr(model))
    shown = min(rows, len(measured))
    samples = []
    for index in range(shown):
        example = tokenized[index]
        samples.append(
            {
                "row": index,
                "segments": _segments(tokenizer, example["input_ids"], example["labels"]),
                "tokens": len(example["input_ids"]),
                "full_length": example["full_length"],
                "learned_tokens": sum(1 for label in example["labels"] if label != IGNORE_INDEX),
                "truncated": example["full_length"] > max_length,
            }
        )
    lengths = list(tokenized["full_length"])
    dropped = sum(1 for labels in tokenized["labels"] if all(label == IGNORE_INDEX for label in labels))
    return {
        "columns": list(loaded.column_names),
        "rows": [_jsonable_row(row) for row in measured.select(range(shown))],
        "total_rows": len(loaded),
        "measured_rows": len(measured),
        "format": spec.format,
        "template": spec.template,
        "model": model,
        "has_chat_template": has_chat_template(tokenizer),
        "max_length": max_length,
        "samples": samples,
        "lengths": _length_stats(lengths, max_length, dropped),
        "histogram": histogram(lengths, max_length),
    }


def _segments(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[dict[str, Any]]:
    """Runs of masked / learned tokens, each decoded (special tokens shown) as training sees them."""
    runs: list[dict[str, Any]] = []
    start = 0
    for position in range(1, len(input_ids) + 1):
        if position == len(input_ids) or (labels[position] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            ids = input_ids[start:position]
            runs.append(
                {
                    "text": tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                    "learned": labels[start] != IGNORE_INDEX,
                    "tokens": len(ids),
                }
            )
            start = position
    return runs


def _length_stats(lengths: list[int], max_length: int, dropped: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0, "truncated": 0, "dropped": 0, "max_length": max_length}
    ordered = sorted(lengths)
    return {
        "count": len(lengths),
        "truncated": sum(1 for n in lengths if n > max_length),
        "dropped": dropped,
        "max_length": max_length,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": round(statistics.fmean(lengths), 1),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
    }


def histogram(lengths: list[int], max_length: int) -> list[dict[str, Any]]:
    """Bins of max_length / 10 tokens, so bins past max_length hold exactly the samples that are cut.

    Bin i counts lengths in (start, end]; the last bin is open-ended when lengths go further."""
    if not lengths:
        return []
    per_max = HISTOGRAM_BINS_UP_TO_MAX
    longest = max(lengths)
    past = min(HISTOGRAM_BINS_PAST_MAX, -(-max(0, longest - max_length) * per_max // max_length))
    count = per_max + past
    bins: list[dict[str, Any]] = [
        {
            "start": round(i * max_length / per_max, 1),
            "end": round((i + 1) * max_length / per_max, 1),
            "count": 0,
            "truncated": i >= per_max,
        }
        for i in range(count)
    ]
    for length in lengths:
        index = -(-length * per_max // max_length) - 1  # ceil(length / width) - 1, in integers
        bins[min(count - 1, max(0, index))]["count"] += 1
    if longest > bins[-1]["end"]:
        bins[-1]["end"] = longest
        bins[-1]["open"] = True
    return bins


def _jsonable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _cell(value) for key, value in row.items()}


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= CELL_MAX_CHARS else value[:CELL_MAX_CHARS] + "…"
    if isinstance(value, list):
        return [_cell(v) for v in value[:50]]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


__all__ = ["TrainingError", "histogram", "inspect_dataset", "preview_dataset"]
