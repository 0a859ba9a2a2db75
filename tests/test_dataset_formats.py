"""Dataset formats and prompt templates, in process on the tiny tokenizer: what is masked, what is learned.

The stack tests (test_datasets_flow.py) train each format through a real worker; these pin the encoding."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runspec import DatasetSpec, RunSpec
from worker.training.data import format_prompt, load_rows, prepare_dataset
from worker.training.errors import TrainingError
from worker.training.formats import IGNORE_INDEX
from worker.training.preview import histogram, inspect_dataset, preview_dataset

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module", autouse=True)
def _tmp_is_a_data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Training code reads local files only inside the data roots: let these tests' temporary files in."""
    from harness.stack import ROOT
    from runspec.sources import SourcePolicy
    from worker.training import loading as sources

    previous = sources._policy
    sources.set_policy(SourcePolicy(data_roots=(tmp_path_factory.getbasetemp(), ROOT)))
    yield
    sources._policy = previous


@pytest.fixture(scope="module")
def tokenizer(tiny_assets: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_assets.model_dir)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _learned(tokenizer: Any, example: dict[str, Any]) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]
    )


def _masked(tokenizer: Any, example: dict[str, Any]) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE_INDEX]
    )


def test_alpaca_course_template_is_the_course_recipe(tmp_path: Path, tokenizer: Any) -> None:
    row = {"instruction": "Add the numbers.", "input": "2 3", "output": "5"}
    spec = DatasetSpec(source=str(_write(tmp_path / "a.jsonl", [row])))
    example = prepare_dataset(spec, tokenizer, 128).tokenized[0]
    prompt_ids = tokenizer(format_prompt(row["instruction"], row["input"]), add_special_tokens=False)["input_ids"]
    answer_ids = [*tokenizer("5", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert example["input_ids"] == prompt_ids + answer_ids
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def test_alpaca_history_and_system_learn_only_the_answers(tmp_path: Path, tokenizer: Any) -> None:
    row = {
        "system": "You count.",
        "history": [["one?", "1"], ["two?", "2"]],
        "instruction": "three?",
        "input": "",
        "output": "3",
    }
    spec = DatasetSpec(source=str(_write(tmp_path / "h.jsonl", [row])))
    example = prepare_dataset(spec, tokenizer, 256).tokenized[0]
    assert tokenizer.decode(example["input_ids"]) == (
        "You count.\nHuman: one?\n\nAssistant: 1</s>Human: two?\n\nAssistant: 2</s>Human: three?\n\nAssistant: 3</s>"
    )
    assert _learned(tokenizer, example) == "1</s>2</s>3</s>"
    assert "one?" in _masked(tokenizer, example) and "You count." in _masked(tokenizer, example)


@pytest.mark.parametrize(
    "messages",
    [
        [
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "bye"},
            {"from": "gpt", "value": "ciao"},
        ],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ],
    ],
    ids=["from-value", "role-content"],
)
def test_sharegpt_both_spellings_learn_assistant_turns(tmp_path: Path, tokenizer: Any, messages: list) -> None:
    column = "conversations" if "from" in messages[0] else "messages"
    spec = DatasetSpec(source=str(_write(tmp_path / "s.jsonl", [{column: messages}])), format="sharegpt")
    example = prepare_dataset(spec, tokenizer, 256).tokenized[0]
    assert _learned(tokenizer, example) == "hello</s>ciao</s>"
    assert _masked(tokenizer, example) == "Human: hi\n\nAssistant: Human: bye\n\nAssistant: "


def test_column_mapping_reads_other_names(tmp_path: Path, tokenizer: Any) -> None:
    path = _write(tmp_path / "m.jsonl", [{"prompt": "Say yes.", "answer": "yes"}])
    spec = RunSpec.model_validate(
        {"name": "m", "dataset": {"source": str(path), "columns": "instruction=prompt, output=answer"}}
    ).dataset
    assert spec.columns == {"instruction": "prompt", "output": "answer"}
    example = prepare_dataset(spec, tokenizer, 64).tokenized[0]
    assert _learned(tokenizer, example) == "yes</s>"
    assert _masked(tokenizer, example) == format_prompt("Say yes.")


def test_text_format_learns_every_token(tmp_path: Path, tokenizer: Any) -> None:
    spec = DatasetSpec(source=str(_write(tmp_path / "t.jsonl", [{"text": "the cat eats fish"}])), format="text")
    example = prepare_dataset(spec, tokenizer, 64).tokenized[0]
    assert example["labels"] == example["input_ids"]
    assert tokenizer.decode(example["input_ids"]) == "the cat eats fish</s>"


def test_chat_template_marks_assistant_turns_and_is_refused_without_one(tmp_path: Path, tokenizer: Any) -> None:
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
            ]
        }
    ]
    spec = DatasetSpec(source=str(_write(tmp_path / "c.jsonl", rows)), format="sharegpt", template="chat")
    with pytest.raises(TrainingError, match=r"needs a chat template.*template=course"):
        prepare_dataset(spec, tokenizer, 64)
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        example = prepare_dataset(spec, tokenizer, 64).tokenized[0]
    finally:
        tokenizer.chat_template = None
    assert tokenizer.decode(example["input_ids"]) == "<|system|>S</s><|user|>hi</s><|assistant|>hello</s>"
    assert _learned(tokenizer, example) == "hello</s>"


def test_bad_files_fail_fast_with_readable_reasons(tmp_path: Path, tokenizer: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"}, {"instruction": ', encoding="utf-8")
    with pytest.raises(TrainingError, match="could not be read as json"):
        load_rows(DatasetSpec(source=str(broken)))

    wrong = _write(tmp_path / "wrong.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(TrainingError) as excinfo:
        load_rows(DatasetSpec(source=str(wrong)))
    message = str(excinfo.value)
    assert "'instruction'" in message and "question, reply" in message and "dataset.columns" in message

    roles = _write(
        tmp_path / "roles.jsonl",
        [
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            {"conversations": [{"from": "robot", "value": "b"}]},
        ],
    )
    with pytest.raises(TrainingError, match=r"row 2: message 1 has the role 'robot'"):
        inspect_dataset(DatasetSpec(source=str(roles), format="sharegpt"))


def test_tokenized_data_is_cached_per_dataset_tokenizer_template_and_length(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spec = DatasetSpec(source=str(_write(tmp_path / "c.jsonl", [{"instruction": "x", "output": "y"}] * 3)))
    log = logging.getLogger("test.cache")
    with caplog.at_level(logging.INFO, logger="test.cache"):
        prepare_dataset(spec, tokenizer, 64, log=log)
        prepare_dataset(spec, tokenizer, 64, log=log)
        prepare_dataset(spec, tokenizer, 32, log=log)
    assert [r.message.split(" (")[0] for r in caplog.records] == [
        "tokenized data built",
        "tokenized data from cache",
        "tokenized data built",
    ]


def test_preview_marks_the_prompt_and_counts_truncation(tmp_path: Path, tiny_assets: Any) -> None:
    rows = [{"instruction": "Repeat.", "input": "a " * n, "output": "ok"} for n in (1, 5, 40, 80)]
    spec = DatasetSpec(source=str(_write(tmp_path / "p.jsonl", rows)))
    answer = preview_dataset(spec, str(tiny_assets.model_dir), max_length=32, rows=2)
    lengths = [s["full_length"] for s in answer["samples"]]
    assert answer["samples"][0]["segments"][0] == {
        "text": "Human: Repeat.\na\n\nAssistant: ",
        "learned": False,
        "tokens": answer["samples"][0]["segments"][0]["tokens"],
    }
    assert answer["samples"][0]["segments"][1]["text"] == "ok</s>"
    assert answer["samples"][0]["segments"][1]["learned"] is True
    assert lengths[0] < lengths[1] <= 32
    stats = answer["lengths"]
    assert stats["count"] == 4 and stats["truncated"] == 2 and stats["dropped"] == 2  # answers cut away
    assert sum(b["count"] for b in answer["histogram"] if b["truncated"]) == 2
    assert sum(b["count"] for b in answer["histogram"]) == 4


def test_histogram_bins_align_with_max_length() -> None:
    bins = histogram([3, 128, 129, 400], 128)
    assert [b["count"] for b in bins if not b["truncated"]] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert sum(b["count"] for b in bins if b["truncated"]) == 2
    assert bins[-1]["end"] == 400 and bins[-1].get("open")
