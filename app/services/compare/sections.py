"""The config diff and the generations side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runspec.spec_paths import differing_paths
from tunedeck_state.models import Run


def _diff(runs: Sequence[Run], flats: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Only the spec fields that are not the same in every selected run."""
    fields = differing_paths(flats.values()) if len(runs) > 1 else []
    return {
        "fields": fields,
        "rows": [
            {"run_id": run.id, "name": run.name, "values": {f: flats[run.id].get(f) for f in fields}} for run in runs
        ],
    }


def _generations(runs: Sequence[Run]) -> dict[str, Any]:
    """The end-of-training answers to the held-out prompts, one row per prompt, one column per run."""
    prompts: dict[str, dict[str, Any]] = {}
    for run in runs:
        for sample in (run.details or {}).get("generations") or []:
            if not isinstance(sample, Mapping) or "prompt" not in sample:
                continue
            row = prompts.setdefault(
                str(sample["prompt"]), {"prompt": sample["prompt"], "reference": sample.get("reference"), "outputs": {}}
            )
            row["outputs"][str(run.id)] = sample.get("output")
    return {"run_ids": [run.id for run in runs], "prompts": list(prompts.values())}
