"""What a finished run can do with its model, and the state of merging its adapter (both sides write it).

Generation is answered by a service worker; a merge runs as a task on the training queue (it can take long for big
models) and keeps its state in `run.details["merge"]`: queued → running → succeeded (with
`run.details["merged_dir"]`) or failed (with the error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from runspec.inference import Variant
from tunedeck_state import runs as run_service
from tunedeck_state.models import Run, RunStatus, utcnow

#: peft adapter types whose weight update folds into the base (`merge_and_unload`). Prompt-learning methods
#: (prompt tuning, prefix tuning, P-Tuning) add virtual tokens instead and cannot be merged.
MERGEABLE_PEFT_TYPES = frozenset({"LORA", "ADALORA", "LOHA", "LOKR", "VERA", "OFT", "BOFT", "IA3"})
MERGE_ACTIVE = ("queued", "running")


class NotReady(ValueError):
    """The run cannot do this now; the message says why (HTTP 409)."""


@dataclass(frozen=True)
class GenerationSource:
    """What a worker loads to answer: `kind` is adapter, full, base or merged; `model` the folder or hub id
    to load with AutoModelForCausalLM; `adapter_dir` the peft adapter on it; `method` the run's method spec
    (its load arguments, e.g. QLoRA's 4-bit base, apply to the adapter's base)."""

    kind: str
    model: str
    adapter_dir: str | None = None
    method: dict[str, Any] | None = None
    #: course, chat or plain: the prompt framing the run trained with.
    template: str = "course"


def has_artifact(run: Run) -> bool:
    return bool(run.artifact_dir)


def generate_refusal(run: Run) -> str | None:
    """Why this run cannot generate, or None when it can."""
    if run.status == RunStatus.succeeded and has_artifact(run):
        return None
    if run.status == RunStatus.cancelled and has_artifact(run):
        return None
    if run.status == RunStatus.cancelled:
        return f"run {run.id} was cancelled before it saved a model; only runs with a saved result can generate"
    if run.status == RunStatus.failed:
        return f"run {run.id} failed, so it has no trained model to generate with; clone it and train again"
    if run.status in (RunStatus.queued, RunStatus.running):
        return f"run {run.id} is {run.status}; it can generate once it has succeeded"
    return f"run {run.id} is {run.status} and saved no model; only succeeded runs can generate"


def peft_type(run: Run) -> str | None:
    config = (run.details or {}).get("peft_config") or {}
    value = config.get("peft_type")
    return str(value).rsplit(".", 1)[-1].upper() if value else None


def merge_state(run: Run) -> dict[str, Any]:
    """The merge of the run's current result; one made before the run was resumed and retrained is stale: {}."""
    state = dict((run.details or {}).get("merge") or {})
    if state.get("run_attempt", run.attempt) != run.attempt:
        return {}
    return state


def merged_dir(run: Run) -> str | None:
    if merge_state(run).get("status") != "succeeded":
        return None
    value = (run.details or {}).get("merged_dir")
    return str(value) if value else None


def merge_refusal(run: Run) -> str | None:
    """Why this run's adapter cannot be merged, or None when it can."""
    if run.method == "full" or (run.spec or {}).get("method", {}).get("name") == "full":
        return f"run {run.id} is a full fine-tune: its saved model already is the merged model"
    kind = peft_type(run)
    if kind is not None and kind not in MERGEABLE_PEFT_TYPES:
        return (
            f"run {run.id}'s {kind} adapter cannot be merged: prompt-learning methods add virtual tokens, "
            "not a weight update; use the adapter as it is"
        )
    refusal = generate_refusal(run)
    if refusal is not None:
        return refusal.replace("can generate", "can be merged").replace("to generate with", "to merge")
    if kind is None:
        return f"run {run.id} recorded no peft config, so there is no adapter to merge"
    return None


def generation_source(run: Run, variant: Variant) -> GenerationSource:
    """What answers a generation request for this run; NotReady says why it cannot."""
    refusal = generate_refusal(run)
    if refusal is not None:
        raise NotReady(refusal)
    assert run.artifact_dir is not None
    method = dict((run.spec or {}).get("method") or {})
    template = prompt_template(run)
    if variant == "base":
        return GenerationSource(kind="base", model=run.model, template=template)
    if variant == "merged":
        merged = merged_dir(run)
        if not merged:
            state = merge_state(run).get("status")
            if state in MERGE_ACTIVE:
                raise NotReady(f"run {run.id}'s merge is {state}; generate with merged once it has finished")
            raise NotReady(f"run {run.id} has no merged model; merge it first (POST /api/runs/{run.id}/merge)")
        return GenerationSource(kind="merged", model=merged, template=template)
    if method.get("name") == "full":
        return GenerationSource(kind="full", model=run.artifact_dir, template=template)
    return GenerationSource(
        kind="adapter", model=run.model, adapter_dir=run.artifact_dir, method=method, template=template
    )


def prompt_template(run: Run) -> str:
    """How the run's training data framed prompts, so generation frames them the same way."""
    dataset = dict((run.spec or {}).get("dataset") or {})
    if dataset.get("format") == "text":
        return "plain"
    return "chat" if dataset.get("template") == "chat" else "course"


# -- merging ---------------------------------------------------------------------------------------------


def merge_output_dir(run: Run) -> Path:
    """`<run dir>/merged`, beside the adapter the run saved."""
    assert run.artifact_dir is not None
    return Path(run.artifact_dir).parent / "merged"


def _set_merge(run: Run, state: dict[str, Any], **extra: Any) -> None:
    # A new dict, so the JSON column is seen as changed.
    run.details = {**(run.details or {}), "merge": state, **extra}


def _locked_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        raise run_service.RunNotFound(run_id)
    return run


def request_merge(session: Session, run_id: int) -> tuple[Run, bool]:
    """Queue a merge of the run's adapter. Returns the run and whether a task must be sent (after the commit):
    a merge already queued or running, or one that succeeded and whose folder is still there, is left alone."""
    run = _locked_run(session, run_id)
    refusal = merge_refusal(run)
    if refusal is not None:
        raise NotReady(refusal)
    state = merge_state(run)
    if state.get("status") in MERGE_ACTIVE:
        return run, False
    done = merged_dir(run)
    if state.get("status") == "succeeded" and done and (Path(done) / "config.json").is_file():
        return run, False
    details = {k: v for k, v in (run.details or {}).items() if k != "merged_dir"}
    run.details = details
    _set_merge(
        run,
        {
            "status": "queued",
            "attempt": int((run.details or {}).get("merge", {}).get("attempt") or 0) + 1,
            "run_attempt": run.attempt,
            "requested_at": utcnow().isoformat(),
        },
    )
    return run, True


def start_merge(session: Session, run_id: int, attempt: int) -> Run | None:
    """A worker takes a queued merge; None when this attempt is not queued any more (a duplicate delivery)."""
    run = _locked_run(session, run_id)
    state = merge_state(run)
    if state.get("status") != "queued" or state.get("attempt") != attempt:
        return None
    refusal = merge_refusal(run)
    if refusal is not None:  # the run changed since the merge was asked for (resumed, say)
        _set_merge(run, {**state, "status": "failed", "error": refusal, "finished_at": utcnow().isoformat()})
        return None
    _set_merge(run, {**state, "status": "running", "started_at": utcnow().isoformat()})
    return run


def finish_merge(
    session: Session,
    run_id: int,
    attempt: int,
    *,
    merged: str | None = None,
    error: str | None = None,
    facts: dict[str, Any] | None = None,
) -> bool:
    """Record the merge's outcome: the merged folder (and facts about it), or the error."""
    run = _locked_run(session, run_id)
    state = merge_state(run)
    if state.get("attempt") != attempt or state.get("status") not in MERGE_ACTIVE:
        return False
    finished = {**state, **(facts or {}), "finished_at": utcnow().isoformat()}
    if merged is not None:
        _set_merge(run, {**finished, "status": "succeeded", "merged_dir": merged, "error": None}, merged_dir=merged)
    else:
        _set_merge(run, {**finished, "status": "failed", "error": error or "the merge failed"})
    return True
