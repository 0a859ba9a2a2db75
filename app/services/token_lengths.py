"""What the web process knows about a dataset's token lengths, for the memory estimate's length.

Once a dataset has been tokenized for a model (by a run: `details.dataset.longest_tokens`, the longest sample
before the cut) or previewed with that model's tokenizer (the preview's `lengths.max`, kept here for this web
process), the estimate uses the longest batch the run will see, min(longest sample, training.max_length),
instead of max_length. Padding makes a batch as long as its longest sample and packing concatenates at most
batch_size samples, so batch_size × that length bounds every batch's tokens.

A length is used only when it covers the rows the run trains on: `dataset.max_samples` takes the first rows, so a
tokenization or preview of at least that many first rows (or of all of them) bounds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from runspec import DatasetSpec, RunSpec
from tunedeck_state.models import Run

#: Recent runs of the same model read for a tokenized length (newest first).
RECENT_RUNS = 200
PREVIEW_CACHE_SIZE = 256


@dataclass(frozen=True)
class KnownLength:
    longest: int  # the longest sample, tokens before the cut at max_length
    rows: int  # the first rows it was measured on
    all_rows: bool  # ...which were all of them
    source: str  # where it comes from, for the estimate's text

    def covers(self, dataset: DatasetSpec) -> bool:
        return self.all_rows or (dataset.max_samples is not None and dataset.max_samples <= self.rows)


_previews: OrderedDict[tuple[Any, ...], KnownLength] = OrderedDict()
_lock = threading.Lock()


def tokenization_key(dataset: DatasetSpec, model: str) -> tuple[Any, ...]:
    """What a sample's token count depends on: the rows, how they are rendered, the tokenizer."""
    columns = tuple(sorted((dataset.columns or {}).items()))
    return (model, dataset.source, dataset.config, dataset.split, dataset.format, columns, dataset.template)


def remember_preview(dataset: DatasetSpec, model: str, answer: Mapping[str, Any]) -> None:
    """Keep a preview's longest sample (worker.training.preview: lengths over the first measured_rows)."""
    lengths = answer.get("lengths") or {}
    measured = int(answer.get("measured_rows") or 0)
    if not lengths.get("max") or not measured:
        return
    known = KnownLength(
        longest=int(lengths["max"]),
        rows=measured,
        all_rows=measured >= int(answer.get("total_rows") or 0),
        source=f"the dataset preview with {model}'s tokenizer ({measured:,} rows)",
    )
    with _lock:
        _previews[tokenization_key(dataset, model)] = known
        _previews.move_to_end(tokenization_key(dataset, model))
        while len(_previews) > PREVIEW_CACHE_SIZE:
            _previews.popitem(last=False)


def clear_previews() -> None:
    with _lock:
        _previews.clear()


def known_length(session: Session | None, spec: RunSpec) -> KnownLength | None:
    """The shortest known bound on the longest sample `spec` will train on, or None when nothing covers it."""
    key = tokenization_key(spec.dataset, spec.model)
    candidates: list[KnownLength] = []
    with _lock:
        preview = _previews.get(key)
    if preview is not None:
        candidates.append(preview)
    if session is not None:
        candidates.extend(_from_runs(session, spec, key))
    covering = [known for known in candidates if known.covers(spec.dataset)]
    return min(covering, key=lambda known: known.longest) if covering else None


def _from_runs(session: Session, spec: RunSpec, key: tuple[Any, ...]) -> list[KnownLength]:
    rows = session.execute(
        select(Run.id, Run.spec, Run.details).where(Run.model == spec.model).order_by(Run.id.desc()).limit(RECENT_RUNS)
    )
    found: list[KnownLength] = []
    for run_id, run_spec, details in rows:
        facts = (details or {}).get("dataset") or {}
        if not facts.get("longest_tokens") or not facts.get("rows"):
            continue
        try:
            dataset = DatasetSpec.model_validate((run_spec or {}).get("dataset") or {})
        except ValueError:
            continue
        if tokenization_key(dataset, spec.model) != key:
            continue
        found.append(
            KnownLength(
                longest=int(facts["longest_tokens"]),
                rows=int(facts["rows"]),
                all_rows=dataset.max_samples is None or dataset.max_samples > int(facts["rows"]),
                source=f"run {run_id}'s tokenized dataset ({int(facts['rows']):,} rows)",
            )
        )
    return found


def length_for_estimate(session: Session | None, spec: RunSpec) -> tuple[int | None, str | None]:
    """(seq_len, where it comes from) for runspec.memory.estimate_memory; (None, None): training.max_length."""
    known = known_length(session, spec)
    if known is None:
        return None, None
    max_length = spec.training.max_length
    if known.longest >= max_length:
        return None, (
            f"training.max_length = {max_length} (the longest sample is {known.longest} tokens, per {known.source})"
        )
    return known.longest, f"the longest sample, {known.longest} tokens, per {known.source} (max_length {max_length})"
