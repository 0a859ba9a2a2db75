"""Dataset rows → conversations → token ids with labels, under a prompt template.

Every format becomes a list of turns (role, content): alpaca's system, history pairs and instruction/input/
output; sharegpt's conversation (from/value or role/content); text is one learned piece. A template renders
the turns into segments, each either masked (label -100) or learned:

* course: the course's "Human: {question}\\n\\nAssistant: " prompt, each answer followed by EOS
  (for a single alpaca row exactly `data.format_prompt` + output + EOS);
* chat: the model's own chat template (`tokenizer.apply_chat_template`), each assistant message learned.

Only assistant turns are learned; system and user turns are masked. Samples are cut at max_length and
samples left without a learned token are dropped. The tokenized dataset is cached by the `datasets`
library under a fingerprint of (dataset content, tokenizer, format, columns, template, max_length).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from runspec import DatasetSpec
from runspec.datasets import FORMAT_FIELDS, FORMAT_HELP, REQUIRED_FIELDS, ROLE_ALIASES
from worker.training.errors import TrainingError, first_line

IGNORE_INDEX = -100
#: Bump when the encoding changes, so cached tokenized datasets of older code are not reused.
ENCODING_VERSION = "2"
COURSE_USER_PREFIX = "Human: "
COURSE_ASSISTANT_PREFIX = "\n\nAssistant: "

Turn = tuple[str, str]


class Segment(NamedTuple):
    text: str
    learned: bool
    #: Append the tokenizer's EOS id after this segment's tokens (the course template ends answers so).
    eos: bool = False


# -- columns -----------------------------------------------------------------------------------------------


def resolve_columns(spec: DatasetSpec, column_names: Sequence[str]) -> dict[str, str]:
    """Logical field → the file's column, from the format's defaults and `dataset.columns`."""
    fields = dict(FORMAT_FIELDS[spec.format])
    explicit = spec.columns or {}
    if (
        spec.format == "sharegpt"
        and "conversations" not in explicit
        and "conversations" not in column_names
        and "messages" in column_names
    ):
        fields["conversations"] = "messages"
    fields.update(explicit)
    return fields


def check_columns(column_names: Sequence[str], spec: DatasetSpec, label: str) -> dict[str, str]:
    """The column mapping, or a readable refusal naming what is missing and how to map it."""
    mapping = resolve_columns(spec, column_names)
    explicit = spec.columns or {}
    missing = [
        field
        for field in FORMAT_FIELDS[spec.format]
        if mapping[field] not in column_names and (field in REQUIRED_FIELDS[spec.format] or field in explicit)
    ]
    if missing:
        wanted = ", ".join(
            f"{field!r}" + (f" (mapped to {mapping[field]!r})" if field in explicit else "") for field in missing
        )
        raise TrainingError(
            f"dataset {label} does not fit dataset.format={spec.format}: it has no column for {wanted}. "
            f"Columns found: {', '.join(column_names) or '(none)'}. The {spec.format} format needs "
            f"{FORMAT_HELP[spec.format]}; map your column names with dataset.columns "
            f"(e.g. {next(iter(REQUIRED_FIELDS[spec.format]))}=your_column) or choose another dataset.format."
        )
    return mapping


# -- rows → turns ------------------------------------------------------------------------------------------


def row_turns(example: Mapping[str, Any], spec: DatasetSpec, mapping: Mapping[str, str], index: int) -> list[Turn]:
    """One row as (role, content) turns; a row that does not fit the format is refused with its number."""
    if spec.format == "alpaca":
        return _alpaca_turns(example, mapping, index)
    if spec.format == "sharegpt":
        return _sharegpt_turns(example, mapping, index)
    text = example.get(mapping["text"])
    if not isinstance(text, str):
        raise TrainingError(f"row {index + 1}: column {mapping['text']!r} is {_kind(text)}, not text")
    return [("assistant", text)]


def _alpaca_turns(example: Mapping[str, Any], mapping: Mapping[str, str], index: int) -> list[Turn]:
    turns: list[Turn] = []
    system = _text(example.get(mapping["system"]))
    if system:
        turns.append(("system", system))
    history = _maybe_json(example.get(mapping["history"]))
    if history not in (None, "", []):
        if not isinstance(history, list):
            raise TrainingError(
                f"row {index + 1}: history must be a list of [question, answer] pairs, not {_kind(history)}"
            )
        for number, pair in enumerate(history, start=1):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise TrainingError(
                    f"row {index + 1}: history item {number} must be a [question, answer] pair, not {_kind(pair)}"
                )
            turns += [("user", _text(pair[0])), ("assistant", _text(pair[1]))]
    instruction = example.get(mapping["instruction"])
    output = example.get(mapping["output"])
    if instruction is None or output is None:
        missing = mapping["instruction"] if instruction is None else mapping["output"]
        raise TrainingError(f"row {index + 1}: column {missing!r} is empty")
    # Joined as the course joins them: format_prompt strips the same ends.
    turns.append(("user", "\n".join([_text(instruction), _text(example.get(mapping["input"]))])))
    turns.append(("assistant", _text(output)))
    return turns


def _sharegpt_turns(example: Mapping[str, Any], mapping: Mapping[str, str], index: int) -> list[Turn]:
    column = mapping["conversations"]
    conversation = _maybe_json(example.get(column))
    if not isinstance(conversation, list) or not conversation:
        raise TrainingError(
            f"row {index + 1}: column {column!r} must be a non-empty list of messages, not {_kind(conversation)}"
        )
    turns: list[Turn] = []
    system = _text(example.get(mapping["system"]))
    for number, message in enumerate(conversation, start=1):
        if not isinstance(message, Mapping):
            raise TrainingError(f"row {index + 1}: message {number} must be an object, not {_kind(message)}")
        raw_role = message.get("from", message.get("role"))
        content = message.get("value", message.get("content"))
        if raw_role is None or content is None:
            raise TrainingError(
                f"row {index + 1}: message {number} needs 'from' and 'value' (or 'role' and 'content'); "
                f"it has {', '.join(sorted(k for k in message if message[k] is not None)) or 'nothing'}"
            )
        role = ROLE_ALIASES.get(str(raw_role).strip().lower())
        if role is None:
            raise TrainingError(
                f"row {index + 1}: message {number} has the role {raw_role!r}; use human/user, gpt/assistant or system"
            )
        turns.append((role, _text(content)))
    if system and not any(role == "system" for role, _ in turns):
        turns.insert(0, ("system", system))
    if not any(role == "assistant" for role, _ in turns):
        raise TrainingError(f"row {index + 1}: the conversation has no gpt/assistant message to learn")
    return turns


# -- turns → segments --------------------------------------------------------------------------------------


def course_segments(turns: Sequence[Turn]) -> list[Segment]:
    """The course's template. One alpaca row renders as format_prompt(instruction, input) + output + EOS."""
    segments: list[Segment] = []
    pending = ""
    for role, content in turns:
        if role == "system":
            pending += content + "\n"
        elif role == "user":
            pending += (COURSE_USER_PREFIX + content).strip() + COURSE_ASSISTANT_PREFIX
        else:
            segments += [Segment(pending, False), Segment(content, True, eos=True)]
            pending = ""
    return segments


def text_segments(turns: Sequence[Turn]) -> list[Segment]:
    return [Segment(turns[0][1], True, eos=True)]


def chat_segments(turns: Sequence[Turn], tokenizer: Any, model_label: str = "the model") -> list[Segment]:
    """The tokenizer's chat template; each assistant message (with the template's end-of-turn) is learned.

    Renders the conversation up to each assistant message twice (with a generation prompt, then with the
    message) and takes the difference as the learned part."""
    messages = [{"role": role, "content": content} for role, content in turns]
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render_chat(tokenizer, messages[:i], True, model_label) if i else ""
        full = _render_chat(tokenizer, messages[: i + 1], False, model_label)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise TrainingError(
                f"the chat template of {model_label} does not render conversations incrementally (a shorter "
                "conversation is not a prefix of a longer one), so the learned answers cannot be marked; use "
                "dataset.template=course"
            )
        segments += [Segment(prompt[len(done) :], False), Segment(full[len(prompt) :], True)]
        done = full
    return segments


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, label: str) -> str:
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:
        reason = first_line(exc, 300)
        raise TrainingError(f"the chat template of {label} refused a conversation: {reason}") from exc
    return str(rendered)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_template(spec: DatasetSpec, tokenizer: Any, model_label: str) -> None:
    if spec.template == "chat" and spec.format != "text" and not has_chat_template(tokenizer):
        raise TrainingError(
            f"dataset.template=chat needs a chat template, and the tokenizer of {model_label} has none; "
            "use dataset.template=course (the Human/Assistant template) or a model that ships one"
        )


def segments_for(turns: Sequence[Turn], spec: DatasetSpec, tokenizer: Any, model_label: str) -> list[Segment]:
    if spec.format == "text":
        return text_segments(turns)
    if spec.template == "chat":
        return chat_segments(turns, tokenizer, model_label)
    return course_segments(turns)


# -- segments → ids ----------------------------------------------------------------------------------------


def encode_segments(segments: Sequence[Segment], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where masked), before truncation."""
    eos_id = tokenizer.eos_token_id
    input_ids: list[int] = []
    labels: list[int] = []
    for segment in segments:
        ids = tokenizer(segment.text, add_special_tokens=False)["input_ids"] if segment.text else []
        if segment.eos and eos_id is not None:
            ids = [*ids, eos_id]
        input_ids += ids
        labels += ids if segment.learned else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def make_encoder(spec: DatasetSpec, tokenizer: Any, mapping: Mapping[str, str], max_length: int, label: str) -> Any:
    def encode(example: dict[str, Any], index: int) -> dict[str, Any]:
        turns = row_turns(example, spec, mapping, index)
        input_ids, labels = encode_segments(segments_for(turns, spec, tokenizer, label), tokenizer)
        full_length = len(input_ids)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": labels,
            "full_length": full_length,
        }

    return encode


def tokenize_rows(
    rows: Any,
    tokenizer: Any,
    spec: DatasetSpec,
    max_length: int,
    *,
    model_label: str = "the model",
    data_id: str | None = None,
    log: Any = None,
) -> Any:
    """Tokenize every row (cached by fingerprint); keeps a `full_length` column (tokens before the cut)."""
    check_template(spec, tokenizer, model_label)
    mapping = check_columns(rows.column_names, spec, repr(spec.source))
    fingerprint = tokenized_fingerprint(rows, tokenizer, spec, max_length, data_id)
    cached = _cache_file_exists(rows, fingerprint)
    if log is not None:
        log.info("tokenized data %s (fingerprint %s)", "from cache" if cached else "built", fingerprint[:12])
    try:
        return rows.map(
            make_encoder(spec, tokenizer, mapping, max_length, model_label),
            with_indices=True,
            remove_columns=rows.column_names,
            new_fingerprint=fingerprint,
            desc="tokenize",
        )
    except TrainingError:
        raise
    except Exception as exc:
        inner = _training_error_in(exc)
        if inner is not None:
            raise inner from exc
        reason = first_line(exc)
        raise TrainingError(f"dataset {spec.source!r} could not be tokenized: {reason}") from exc


def drop_unlearned(tokenized: Any) -> Any:
    """Samples whose answer was cut away entirely contribute no loss: drop them, and the helper column."""
    fingerprint = getattr(tokenized, "_fingerprint", None)
    kept = tokenized.filter(
        _has_learned_token,
        input_columns=["labels"],
        new_fingerprint=f"{fingerprint[:40]}-learned" if fingerprint else None,
        desc="drop samples without answer",
    )
    return kept.remove_columns(["full_length"])


def _has_learned_token(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels)


def _training_error_in(exc: BaseException) -> TrainingError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TrainingError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# -- fingerprints ------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    for extra in (
        type(tokenizer).__name__,
        str(getattr(tokenizer, "chat_template", None)),
        str(tokenizer.eos_token_id),
        json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str),
    ):
        digest.update(b"\0" + extra.encode())
    return digest.hexdigest()


def tokenized_fingerprint(rows: Any, tokenizer: Any, spec: DatasetSpec, max_length: int, data_id: str | None) -> str:
    parts = {
        "version": ENCODING_VERSION,
        "data": data_id or getattr(rows, "_fingerprint", None),
        "rows": len(rows),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "format": spec.format,
        "columns": spec.columns,
        "template": spec.template,
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:48]


def _cache_file_exists(rows: Any, fingerprint: str) -> bool:
    files = getattr(rows, "cache_files", None) or []
    if not files:
        return False
    return os.path.exists(os.path.join(os.path.dirname(files[0]["filename"]), f"cache-{fingerprint}.arrow"))


# -- helpers -----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _maybe_json(value: Any) -> Any:
    """CSV and some JSON files carry nested lists as JSON text."""
    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    return type(value).__name__
