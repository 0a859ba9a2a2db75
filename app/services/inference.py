"""Inference with a finished run and merging its adapter, as the web asks for them.

The state (what a run can generate with, the merge's progress) lives in tunedeck_state/merges.py; the merge task is
sent after the commit by tunedeck_jobs/dispatch.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from runspec.inference import GenerationSettings
from tunedeck_jobs import dispatch
from tunedeck_state.merges import (
    finish_merge,
    generate_refusal,
    merge_refusal,
    merge_state,
    merged_dir,
    peft_type,
    request_merge,
)
from tunedeck_state.models import Run


def submit_merge(session: Session, run_id: int) -> Run:
    """Queue a merge, commit, then send its task; if the broker is unreachable the merge fails with that reason."""
    run, send = request_merge(session, run_id)
    session.commit()
    if send:
        attempt = merge_state(run)["attempt"]

        def fail(reason: str) -> None:
            finish_merge(session, run_id, attempt, error=reason)
            session.commit()

        dispatch.sent(lambda: dispatch.send_merge(run_id, attempt), "merge", fail)
    session.refresh(run)
    return run


def page_context(run: Run) -> dict[str, Any]:
    """What the run page's "Try it" and merge blocks show."""
    return {
        "generate_refusal": generate_refusal(run),
        "merge_refusal": merge_refusal(run),
        "merge": merge_state(run),
        "merged_dir": merged_dir(run),
        "peft_type": peft_type(run),
        "form": form_defaults(),
    }


def form_defaults() -> dict[str, Any]:
    """The "Try it" form's initial values: the API's defaults."""
    defaults = GenerationSettings()
    return {
        "instruction": "",
        "input": "",
        "variant": "run",
        "max_new_tokens": defaults.max_new_tokens,
        "do_sample": defaults.do_sample,
        "temperature": defaults.temperature,
        "top_p": defaults.top_p,
        "seed": "" if defaults.seed is None else defaults.seed,
    }
