"""Memory estimates in the web process: a worker profiles the model (no torch here), runspec.memory does the sums.

The profile of a (model, method) pair comes from the service task `tunedeck.service.inspect_model`, which builds
the model on the meta device. Answers are kept in a small LRU cache, so the live estimate on the new-run form only
asks a worker when the model or the method's parameters change (batch size, length, checkpointing, precision and
optimizer are pure arithmetic).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from app.services.memory_accuracy import accuracy_on
from app.services.token_lengths import length_for_estimate
from runspec import METHODS, RunSpec
from runspec.memory.estimate import estimate_memory
from runspec.memory.results import Estimate
from runspec.memory.suggestions import suggest, with_suggestion
from runspec.memory.units import EstimateError
from tunedeck_jobs.names import INSPECT_MODEL_TASK, TRAINING_QUEUE
from tunedeck_jobs.rpc import WorkerRefused, WorkerUnavailable, call_worker
from tunedeck_state.settings import get_settings
from tunedeck_state.workers import live_workers

CACHE_SIZE = 64
#: How long the live form waits for a worker's profile (a hub model's config may have to be fetched first).
FORM_TIMEOUT_SECONDS = 20.0
#: How long a submit waits for the estimate it stores; without one the training worker makes it at its start.
SUBMIT_TIMEOUT_SECONDS = 5.0
#: ...and how long while the last submit-time estimate went unanswered (no service worker running).
QUICK_LOOK_SECONDS = 2.0

log = logging.getLogger(__name__)


class EstimateUnavailable(Exception):
    """No estimate: the reason, and whether it is the spec's fault (422) or no worker answered (503)."""

    def __init__(self, reason: str, *, retry_later: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_later = retry_later


@dataclass(frozen=True)
class Profile:
    profile: dict[str, Any]
    device: dict[str, Any] | None  # the answering worker's device: {"kind", "name", "memory_bytes"}


_cache: OrderedDict[tuple[str, str], Profile] = OrderedDict()
_in_flight: dict[tuple[str, str], Future[Profile]] = {}
_lock = threading.Lock()
_unanswered = threading.Event()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def profile_for(model: str, method: Mapping[str, Any], timeout: float | None = None) -> Profile:
    """The worker's memory profile of `model` with `method` applied (cached per model and method parameters).

    Concurrent misses for the same pair share one request to the worker (a burst of identical submissions asks
    once, not once each)."""
    key = (model, json.dumps(method, sort_keys=True))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        pending = _in_flight.get(key)
        owner = pending is None
        if pending is None:
            pending = _in_flight[key] = Future()
    if not owner:
        try:
            return pending.result(timeout=timeout or get_settings().rpc_timeout_seconds)
        except FutureTimeout:
            raise EstimateUnavailable(
                "no worker answered in time (another request is still waiting)", retry_later=True
            ) from None
    try:
        found = _ask_worker(model, method, timeout)
    except BaseException as exc:
        pending.set_exception(exc)
        raise
    finally:
        with _lock:
            _in_flight.pop(key, None)
    with _lock:
        _cache[key] = found
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    pending.set_result(found)
    return found


def _ask_worker(model: str, method: Mapping[str, Any], timeout: float | None) -> Profile:
    try:
        answer = call_worker(INSPECT_MODEL_TASK, model, dict(method), timeout=timeout)  # None: settings.rpc_timeout
    except WorkerRefused as exc:
        raise EstimateUnavailable(str(exc)) from None
    except WorkerUnavailable as exc:
        raise EstimateUnavailable(str(exc), retry_later=True) from None
    profile = answer.get("memory_profile")
    if not isinstance(profile, dict):
        if answer.get("memory_profile_error"):
            raise EstimateUnavailable(str(answer["memory_profile_error"]))
        raise EstimateUnavailable(
            "the worker answered without a memory profile (an older worker version?)", retry_later=True
        )
    return Profile(profile=profile, device=answer.get("device"))


def training_gpu(session: Session) -> tuple[int, str, str] | None:
    """The largest GPU a live training worker reported in its heartbeat (nvidia-smi): bytes, a label, its name."""

    best: tuple[int, str, str] | None = None
    for worker in live_workers(session, get_settings().heartbeat_seconds):
        if TRAINING_QUEUE not in (worker.queues or "").split(","):
            continue
        for gpu in (worker.details or {}).get("gpus") or []:
            size = int(gpu.get("memory_total_bytes") or 0)
            if size and (best is None or size > best[0]):
                best = (
                    size,
                    f"{gpu.get('name') or 'GPU'} of training worker {worker.name}",
                    str(gpu.get("name") or ""),
                )
    return best


def estimate_spec(
    spec: RunSpec,
    *,
    device: str | None = None,
    device_memory_bytes: int | None = None,
    timeout: float | None = None,
    with_suggestions: bool = True,
    session: Session | None = None,
) -> Estimate:
    """The memory `spec` needs. Device and capacity: as given; else the largest GPU a live training worker reported
    (with `session`); else the device of the worker that answered (its GPU, or its RAM on a CPU-only worker).
    Raises EstimateUnavailable."""
    method = spec.method.resolved(spec.training)
    found = profile_for(spec.model, method.model_dump(mode="json"), timeout)
    worker = found.device or {}
    gpu = training_gpu(session) if session is not None and device in (None, "cuda") else None
    kind = device or ("cuda" if spec.method.requires_cuda or gpu else str(worker.get("kind") or "cuda"))
    source = None
    if device_memory_bytes:
        source = "given"
    elif gpu is not None and kind == "cuda":
        device_memory_bytes, source, _ = gpu
    elif worker.get("kind") == kind and worker.get("memory_bytes"):
        device_memory_bytes = int(worker["memory_bytes"])
        source = f"{worker.get('name') or kind} reported by a worker"
    seq_len, seq_len_source = length_for_estimate(session, spec)  # the dataset's longest sample, once known
    try:
        estimate = estimate_memory(
            spec,
            found.profile,
            device=kind,
            device_memory_bytes=device_memory_bytes,
            device_source=source,
            seq_len=seq_len,
            seq_len_source=seq_len_source,
        )
        if with_suggestions:
            estimate = with_suggestion(
                estimate, suggest(spec, estimate, found.profile, qlora=lambda: _qlora_alternative(spec, timeout))
            )
    except EstimateError as exc:
        raise EstimateUnavailable(str(exc)) from None
    return _with_history(estimate, session, gpu[2] if gpu is not None and kind == "cuda" else None)


def _with_history(estimate: Estimate, session: Session | None, gpu_name: str | None) -> Estimate:
    """The estimate, saying how far off past estimates have been on this GPU type (app.services.memory_accuracy)."""
    if session is None or not gpu_name:
        return estimate
    found = accuracy_on(session, gpu_name)
    if found is None:
        return estimate
    return replace(estimate, notes=(*estimate.notes, found.note()))


def _qlora_alternative(spec: RunSpec, timeout: float | None) -> tuple[RunSpec, Mapping[str, Any]] | None:
    """The same run as QLoRA (LoRA's parameters kept), with its profile; None when there is no such method."""
    qlora = METHODS.get("qlora")
    if qlora is None or spec.method.name not in ("full", "lora"):
        return None
    shared = {
        key: value
        for key, value in spec.method.model_dump(mode="json").items()
        if key in qlora.model_fields and key != "name"
    }
    try:
        method = qlora.model_validate({**shared, "name": "qlora"})
    except ValueError:
        method = qlora.model_validate({"name": "qlora"})
    candidate = RunSpec.model_validate({**spec.model_dump(mode="json"), "method": method.model_dump(mode="json")})
    try:
        found = profile_for(spec.model, candidate.method.resolved(candidate.training).model_dump(mode="json"), timeout)
    except EstimateUnavailable:
        return None
    return candidate, found.profile


def estimate_at_submit(spec: RunSpec, session: Session | None = None) -> dict[str, Any] | None:
    """The estimate stored with a new run, or None when no worker answered soon enough (the training worker then
    makes it at its start). Never raises: a run is launched whether or not it could be estimated."""
    timeout = QUICK_LOOK_SECONDS if _unanswered.is_set() else SUBMIT_TIMEOUT_SECONDS
    try:
        estimate = estimate_spec(spec, timeout=timeout, with_suggestions=False, session=session)
    except EstimateUnavailable as exc:
        if exc.retry_later:
            _unanswered.set()
        log.info("run submitted without a memory estimate: %s", exc.reason)
        return None
    except Exception as exc:  # broker or result backend unreachable: queueing reports the broker itself
        log.warning("run submitted without a memory estimate: %s: %s", type(exc).__name__, exc)
        return None
    _unanswered.clear()
    return {**estimate.to_dict(), "made_by": "the web process at submit time"}
