"""Instruction data as the course prepares it: alpaca rows → prompt/response token ids with masked labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runspec import DatasetSpec
from runspec.sources import SourceRefused, refuse_packaged_builder
from worker.training.errors import TrainingError
from worker.training.formats import IGNORE_INDEX as IGNORE_INDEX
from worker.training.formats import check_columns, drop_unlearned, file_sha256, tokenize_rows
from worker.training.loading import resolve_dataset

ALPACA_REQUIRED = ("instruction", "output")
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
#: `load_dataset("hf://datasets/org/name")` is remote only: a folder of that name in the current directory is ignored.
HUB_ONLY_PREFIX = "hf://datasets/"


def refuse_builder_name(source: str) -> None:
    """TrainingError for a packaged builder of the installed `datasets` (the policy knows the names it was written
    for; a newer release may add more)."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    try:
        refuse_packaged_builder(source, builders=frozenset(_PACKAGED_DATASETS_MODULES))
    except SourceRefused as exc:
        raise TrainingError(str(exc)) from None


def format_prompt(instruction: str, input_text: str | None = None) -> str:
    """The course's template: "Human: {instruction}\\n{input}\\n\\nAssistant: " (empty input dropped)."""
    return "\n".join(["Human: " + instruction, input_text or ""]).strip() + "\n\nAssistant: "


def load_rows(spec: DatasetSpec) -> Any:
    """Load the dataset's rows (a `datasets.Dataset`) from a local file or the hub, and check its columns.

    A local file is read with its builder and that one file as explicit `data_files`; a hub id only as a hub
    repository (`hf://datasets/<id>`: never a folder of the current directory, never a packaged builder such as
    `json`, which without data files would read the current folder)."""
    import datasets

    source = spec.source
    # A URL, a builder name or a path outside the worker's data roots (after symlinks) is refused before reading.
    resolved = resolve_dataset(source)
    refuse_builder_name(source)
    if resolved.kind == "local":
        path = Path(resolved.location)
        if not path.is_file():
            raise TrainingError(f"dataset.source {source!r} is a folder; give a JSON, JSONL, CSV or Parquet file")
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise TrainingError(
                f"dataset.source {source!r} has an unsupported extension {path.suffix!r}; "
                f"use one of {', '.join(sorted(FILE_BUILDERS))}"
            )
        if _is_blank(path):
            raise TrainingError(empty_dataset_message(source))
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split=spec.split)
        except ValueError as exc:
            if "corresponds to no data" in str(exc):  # datasets' words for a file with a header and no rows
                raise TrainingError(empty_dataset_message(source)) from exc
            raise TrainingError(f"dataset file {source!r} could not be read as {builder}: {_reason(exc)}") from exc
        except Exception as exc:
            raise TrainingError(f"dataset file {source!r} could not be read as {builder}: {_reason(exc)}") from exc
    else:
        try:
            rows = datasets.load_dataset(HUB_ONLY_PREFIX + resolved.location, name=spec.config, split=spec.split)
        except Exception as exc:
            raise TrainingError(
                f"could not load dataset {source!r} from the Hugging Face hub: {_reason(exc).rstrip('.')}. "
                "Check the id and network access, or give a local file."
            ) from exc

    if len(rows) == 0:
        raise TrainingError(empty_dataset_message(source))
    check_columns(rows.column_names, spec, repr(source))
    if spec.max_samples is not None and len(rows) > spec.max_samples:
        rows = rows.select(range(spec.max_samples))
    return rows


def tokenize_alpaca(rows: Any, tokenizer: Any, max_length: int) -> Any:
    """Prompt tokens get label -100 so only the response (plus EOS) is learned; samples are cut at max_length.

    Samples whose response is cut away entirely are dropped: they would contribute no loss."""
    spec = DatasetSpec(source="rows", format="alpaca")
    return drop_unlearned(tokenize_rows(rows, tokenizer, spec, max_length))


@dataclass(frozen=True)
class PreparedData:
    #: input_ids, attention_mask, labels and full_length (tokens before the cut) per row
    tokenized: Any
    #: what the run records about its data: source, format, rows, columns, sha256 of a local file
    facts: dict[str, Any]


def prepare_dataset(
    spec: DatasetSpec, tokenizer: Any, max_length: int, *, model_label: str = "the model", log: Any = None
) -> PreparedData:
    """Load rows, check them against the format, and tokenize under the template (cached)."""
    rows = load_rows(spec)
    path = Path(spec.source).expanduser()
    sha256 = file_sha256(path) if path.is_file() else None
    data_id = f"sha256:{sha256}" if sha256 else f"hub:{spec.source}:{spec.config}:{spec.split}:{rows._fingerprint}"
    tokenized = tokenize_rows(rows, tokenizer, spec, max_length, model_label=model_label, data_id=data_id, log=log)
    facts: dict[str, Any] = {
        "source": spec.source,
        "format": spec.format,
        "template": spec.template,
        "rows": len(rows),
        "columns": list(rows.column_names),
        "sha256": sha256,
        "fingerprint": data_id if sha256 is None else None,
    }
    return PreparedData(tokenized=tokenized, facts=facts)


def split_eval(dataset: Any, eval_fraction: float, seed: int) -> tuple[Any, Any | None]:
    if eval_fraction <= 0 or len(dataset) < 2:
        return dataset, None
    eval_size = max(1, round(len(dataset) * eval_fraction))
    split = dataset.train_test_split(test_size=eval_size, seed=seed, shuffle=True)
    return split["train"], split["test"]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def empty_dataset_message(source: str) -> str:
    return f"dataset {source!r} is empty: it has no rows; give a file with at least one example"


def _is_blank(path: Path) -> bool:
    """An empty file, or one of only whitespace (small files only: a large file has content)."""
    size = path.stat().st_size
    return size == 0 or (size < 4096 and not path.read_bytes().strip())


def _reason(exc: BaseException) -> str:
    """The first line of the most specific error in the chain: datasets wraps the parser's error in a generic one."""
    reasons = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text:
            reasons.append(text.splitlines()[0][:500])
        current = current.__cause__  # not __context__: that is whatever a fallback parser tried meanwhile
    return reasons[-1] if reasons else type(exc).__name__
