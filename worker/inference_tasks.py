"""Celery tasks for inference: generation (service queue, answered to the waiting web request) and merging a
run's adapter into its base (training queue, state kept in the run's details). Thin: they take ids, read the
run through app.services, and hand over to worker.training.generate."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from runspec.inference import GenerationSettings, Prompt, Variant, token_budget_problem
from tunedeck_jobs.celery_app import celery_app
from tunedeck_jobs.names import GENERATE_TASK, MERGE_TASK
from tunedeck_jobs.rpc import was_revoked
from tunedeck_state import disk, merges
from tunedeck_state import runs as run_service
from tunedeck_state.db import session_scope
from tunedeck_state.settings import get_settings
from worker.service_base import ServiceTask
from worker.training.errors import TrainingError

log = logging.getLogger(__name__)


@celery_app.task(name=GENERATE_TASK, ignore_result=False, base=ServiceTask, bind=True)
def generate_task(
    self: Any, run_id: int, variant: Variant, prompts: list[dict[str, Any]], settings: dict[str, Any]
) -> dict:
    """Completions for the prompts from the run's model; {"ok": false, "error": ...} when it cannot answer.
    Over this worker's token budget it refuses; it stops early when its caller gives up (tunedeck_jobs.rpc)."""
    import time

    from pydantic import TypeAdapter

    from runspec import AnyMethod
    from worker.training.generate import GenerationStopped, ModelSource, generate, model_cache

    try:
        with session_scope() as session:
            run = run_service.get_run(session, run_id)
            source = merges.generation_source(run, variant)
            owner = f"{run.id}@{run.created_at.isoformat() if run.created_at else ''}"
        parsed_prompts = [Prompt.model_validate(p) for p in prompts]
        parsed_settings = GenerationSettings.model_validate(settings)
        worker_settings = get_settings()
        over = token_budget_problem(
            len(parsed_prompts), parsed_settings.max_new_tokens, worker_settings.generation_max_total_new_tokens
        )
        if over:
            return {"ok": False, "error": over}
        load_kwargs: dict[str, Any] = {}
        load_key = ""
        if source.kind == "adapter" and source.method:
            method = TypeAdapter(AnyMethod).validate_python(source.method)
            load_kwargs = method.model_load_kwargs()
            load_key = json.dumps(source.method, sort_keys=True)
        model_source = ModelSource(
            kind=source.kind,  # type: ignore[arg-type]
            model=source.model,
            adapter_dir=source.adapter_dir,
            load_kwargs=load_kwargs,
            load_key=load_key,
            owner="" if source.kind == "base" else owner,  # a hub base is shared by every run
        )
        loaded, cached = model_cache(worker_settings.generation_cache_models).get(model_source)
        started = time.perf_counter()
        task_id = self.request.id
        completions = generate(
            loaded,
            parsed_prompts,
            parsed_settings,
            source.template,  # type: ignore[arg-type]
            batch_size=worker_settings.generation_batch_size,
            should_stop=lambda: was_revoked(task_id),
        )
    except run_service.RunNotFound:
        return {"ok": False, "error": f"run {run_id} does not exist"}
    except GenerationStopped as exc:
        log.info("generation for run %s stopped: its caller gave up (task %s)", run_id, self.request.id)
        return {"ok": False, "error": str(exc)}
    except (merges.NotReady, TrainingError) as exc:
        return {"ok": False, "error": str(exc)}
    return {
        "ok": True,
        "run_id": run_id,
        "variant": variant,
        "model_kind": source.kind,
        "device": loaded.device,
        "template": source.template,
        "cached": cached,
        "load_seconds": 0.0 if cached else loaded.load_seconds,
        "generate_seconds": time.perf_counter() - started,
        "completions": [asdict(c) for c in completions],
    }


@celery_app.task(name=MERGE_TASK, acks_late=True)
def merge_task(run_id: int, attempt: int) -> None:
    """Merge the run's adapter into its base and save it to `<run dir>/merged`; the outcome goes to the run."""
    from worker.training.generate import merge_adapter

    with session_scope() as session:
        run = merges.start_merge(session, run_id, attempt)
        if run is None:
            log.info("merge %s of run %s is not queued any more; nothing to do", attempt, run_id)
            return
        base_model, adapter_dir = run.model, run.artifact_dir
        out_dir = merges.merge_output_dir(run)
    try:
        result = merge_adapter(base_model, str(adapter_dir), out_dir)
    except TrainingError as exc:
        outcome: dict[str, Any] = {"error": str(exc)}
    except Exception as exc:
        log.exception("merge of run %s failed", run_id)
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        outcome = {
            "merged": str(result.merged_dir),
            "facts": {
                "total_params": result.total_params,
                "base_params": result.base_params,
                "dtype": result.dtype,
                "seconds": round(result.seconds, 3),
            },
        }
    with session_scope() as session:
        if merges.finish_merge(session, run_id, attempt, **outcome):
            disk.record_disk_bytes(session, get_settings(), run_id)
