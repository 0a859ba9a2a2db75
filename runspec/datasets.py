"""Dataset formats and column mappings, shared by the spec (validation), the pages and the workers (loading).

Pure Python. A format names the logical fields a row carries; `dataset.columns` maps a logical field to the
column the file actually has (like LLaMA-Factory's dataset_info), e.g. {"instruction": "prompt"}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

DatasetFormat = Literal["alpaca", "sharegpt", "text"]
PromptTemplate = Literal["course", "chat"]

#: Logical fields per format, with the column each is read from when `dataset.columns` does not say.
FORMAT_FIELDS: dict[str, dict[str, str]] = {
    "alpaca": {
        "instruction": "instruction",
        "input": "input",
        "output": "output",
        "system": "system",
        "history": "history",
    },
    # "conversations" also falls back to a "messages" column (the OpenAI / hub chat layout).
    "sharegpt": {"conversations": "conversations", "system": "system"},
    "text": {"text": "text"},
}
#: Fields a row must have; the others are optional.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "text": ("text",),
}
FORMAT_HELP: dict[str, str] = {
    "alpaca": "instruction, input, output (optional system, and history: [[question, answer], ...] before it)",
    "sharegpt": "conversations: [{from: human|gpt|system, value}] or [{role: user|assistant|system, content}]",
    "text": "a text column: plain text for continued pre-training, every token learned",
}
#: Role names a conversation may use, and what they mean.
ROLE_ALIASES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def parse_columns(value: Any) -> Any:
    """`dataset.columns` as a mapping; a string "instruction=prompt, output=answer" (the form's spelling) too."""
    if value is None or isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        mapping: dict[str, str] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            key, sep, column = item.partition("=")
            if not sep:
                key, sep, column = item.partition(":")
            if not sep or not key.strip() or not column.strip():
                raise ValueError(f"write the column mapping as field=column pairs separated by commas, not {item!r}")
            mapping[key.strip()] = column.strip()
        return mapping
    return value


def format_columns(mapping: Mapping[str, str] | None) -> str:
    """The form's spelling of a column mapping."""
    return ", ".join(f"{key}={column}" for key, column in (mapping or {}).items())


def check_column_fields(fmt: str, mapping: Mapping[str, str] | None) -> None:
    allowed = FORMAT_FIELDS.get(fmt, {})
    unknown = [key for key in (mapping or {}) if key not in allowed]
    if unknown:
        raise ValueError(
            f"the {fmt} format has no field {', '.join(repr(k) for k in unknown)}; map one of "
            f"{', '.join(allowed)} to your file's column names"
        )
