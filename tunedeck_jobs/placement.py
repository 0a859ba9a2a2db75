"""Placement: which Celery queue a training run is sent to, so that it only reaches a GPU its memory estimate fits.

No scheduler of our own: Celery routing does the work. Every training worker consumes

* `tunedeck.training`: runs without an estimate (no service worker answered at submit) or, when no live worker
  declares GPU memory, every run (the single-machine default);
* `tunedeck.training.worker.<name>`: runs pinned to it (`placement.worker`);
* on a worker with GPUs (or a fake one in tests), memory-class queues `tunedeck.training.mem-<G>g`: one for every
  class G of the ladder below that is at most its capacity, plus its own exact class (its capacity rounded down to
  0.25 GiB, so a 23.99 GiB card also takes runs that need 23.5 GiB); and `tunedeck.training.gpu-<type>` for runs
  pinned to its GPU type (`placement.gpu_type`).

A worker's capacity is the GPU memory it offers one run: the smallest of its GPUs' free memory when it started.
At submit, a run needs its estimate's total peak (memory_estimate.total_peak_bytes) plus
TUNEDECK_PLACEMENT_MARGIN_FRACTION; it goes to the smallest class that covers that need and that a live worker
consumes. Any worker consuming a class queue has at least that much memory, so the run fits wherever it lands. A
run no live worker fits goes to the smallest ladder class that covers it, which nobody consumes yet: it waits
there, with the reason on the run ("needs 31 GiB ..., largest GPU has 24 GiB"), and starts when a worker with a
GPU that large joins. Priority is Celery's message priority (Redis: priority 0 is served first, so the spec's
0-9, higher first, is sent as 9 - priority); the embedded SQLite broker ignores priorities.

Multi-GPU runs (training.num_gpus = N > 1) go to `tunedeck.training.gpus-<N>`, which only workers started with
`tunedeck worker --multi-gpu` consume (gpus-2 ... gpus-G for their G GPUs; they take no single-GPU run). Each of the
N GPUs must hold the run's estimate; a run no live multi-GPU worker can take waits there with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from runspec import PlacementSpec, RunSpec
from tunedeck_jobs.names import TRAINING_QUEUE
from tunedeck_state.models import Run, WorkerHeartbeat
from tunedeck_state.settings import Settings, get_settings

GIB = 2**30
CLASS_PREFIX = f"{TRAINING_QUEUE}.mem-"
WORKER_PREFIX = f"{TRAINING_QUEUE}.worker."
GPU_PREFIX = f"{TRAINING_QUEUE}.gpu-"
#: Runs that train on N GPUs of one machine (training.num_gpus = N > 1): consumed only by `--multi-gpu` workers.
GPUS_PREFIX = f"{TRAINING_QUEUE}.gpus-"
#: A worker's exact class: its capacity rounded down to this many GiB.
QUANTUM_GIB = 0.25
#: Memory classes in GiB (a run needing at most G GiB may go to class G), dense enough that a run loses little by
#: rounding up: steps of ≤ 12% above 16 GiB, finer below (tests place runs of a few hundred MiB).
LADDER_GIB: tuple[float, ...] = (
    *(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22, 24, 28, 32, 36, 40, 44, 48),
    *(56, 64, 72, 80, 88, 96, 112, 128, 144, 160, 176, 192, 224, 256, 320, 384, 448, 512),
)


class PlacementRefused(ValueError):
    """A pin no live worker can ever honour (the pinned worker's GPU is too small): (dotted field, message)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- queue names ------------------------------------------------------------------------------------------------


def gib_text(gib: float) -> str:
    return f"{gib:g}"


def class_queue(gib: float) -> str:
    return f"{CLASS_PREFIX}{gib_text(gib)}g"


def worker_queue(name: str) -> str:
    return f"{WORKER_PREFIX}{name}"


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def gpu_queue(gpu_name: str) -> str:
    return f"{GPU_PREFIX}{gpu_slug(gpu_name)}"


def exact_class_gib(capacity_bytes: int) -> float:
    return math.floor(capacity_bytes / GIB / QUANTUM_GIB) * QUANTUM_GIB


def classes_for(capacity_bytes: int) -> list[float]:
    """The memory classes a worker with this capacity consumes: every ladder class it holds, and its exact one."""
    classes = {gib for gib in LADDER_GIB if gib * GIB <= capacity_bytes}
    exact = exact_class_gib(capacity_bytes)
    if exact > 0:
        classes.add(exact)
    return sorted(classes)


def gpus_queue(count: int) -> str:
    return f"{GPUS_PREFIX}{count}"


def training_queues(
    name: str, capacity_bytes: int | None, gpu_name: str | None, *, multi_gpu_count: int | None = None
) -> list[str]:
    """Every queue a training worker consumes (see the module docstring). A `--multi-gpu` worker with G GPUs
    (`multi_gpu_count`) takes only multi-GPU runs: its own queue and gpus-2 ... gpus-G."""
    if multi_gpu_count is not None:
        return [worker_queue(name), *(gpus_queue(n) for n in range(2, multi_gpu_count + 1))]
    queues = [TRAINING_QUEUE, worker_queue(name)]
    if capacity_bytes:
        queues += [class_queue(gib) for gib in classes_for(capacity_bytes)]
        if gpu_name:
            queues.append(gpu_queue(gpu_name))
    return queues


def celery_priority(priority: int) -> int:
    """The spec's priority (0-9, higher first) as a Redis message priority (0 is served first)."""
    return 9 - max(0, min(9, priority))


# -- live capacity ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """A live training worker as placement sees it."""

    name: str
    capacity_bytes: int | None
    gpu_name: str | None
    gpu_count: int = 1
    #: A `--multi-gpu` worker: one run at a time on all its GPUs; it consumes only gpus-N and its own queue.
    multi_gpu: bool = False

    @property
    def gpus_per_run(self) -> int:
        """How many GPUs this worker gives one run."""
        return self.gpu_count if self.multi_gpu else 1

    def consumes_class(self, gib: float) -> bool:
        if not self.capacity_bytes or self.multi_gpu:
            return False
        return gib * GIB <= self.capacity_bytes and (gib in LADDER_GIB or gib == exact_class_gib(self.capacity_bytes))


def offers(session: Session, settings: Settings | None = None) -> list[Offer]:
    from tunedeck_state.workers import live_workers

    settings = settings or get_settings()
    found = []
    for row in live_workers(session, settings.heartbeat_seconds):
        if TRAINING_QUEUE not in (row.queues or "").split(","):
            continue
        details = row.details or {}
        found.append(
            Offer(
                name=row.name,
                capacity_bytes=row.capacity_bytes,
                gpu_name=_gpu_name(row),
                gpu_count=int(details.get("gpu_count") or len(details.get("gpus") or [])),
                multi_gpu=bool(details.get("multi_gpu")),
            )
        )
    return found


def _gpu_name(row: WorkerHeartbeat) -> str | None:
    gpus = (row.details or {}).get("gpus") or []
    return str(gpus[0].get("name")) if gpus and gpus[0].get("name") else None


# -- the decision -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    queue: str
    priority: int  # the spec's: 0-9, higher first
    wait_reason: str | None = None
    need_bytes: int | None = None


def need_bytes(estimate: Mapping[str, Any] | None, margin: float) -> int | None:
    """What a run needs of a GPU: its estimate's total peak (with framework overhead) plus the margin."""
    if not estimate or not estimate.get("total_peak_bytes"):
        return None
    return int(int(estimate["total_peak_bytes"]) * (1 + margin))


def _gib(value: float) -> str:
    return f"{value / GIB:.3g} GiB" if value < 10 * GIB else f"{value / GIB:.0f} GiB"


def _need_text(need: int, estimate: Mapping[str, Any], margin: float) -> str:
    return f"needs {_gib(need)} (estimate {_gib(int(estimate['total_peak_bytes']))} + {margin:.0%} margin)"


def choose(
    placement: PlacementSpec,
    estimate: Mapping[str, Any] | None,
    live: Sequence[Offer],
    margin: float,
    *,
    strict: bool = True,
    num_gpus: int = 1,
) -> Placement:
    """The queue for a run. `strict`: a pin to a live worker (or GPU type) too small for the run raises
    PlacementRefused (at submit); otherwise (a requeue) the run is sent there anyway, with the reason.
    `num_gpus` > 1 (training.num_gpus): only a `--multi-gpu` worker with that many GPUs takes it."""
    need = need_bytes(estimate, margin)
    priority = placement.priority
    names = ", ".join(o.name for o in live) or "none"
    if num_gpus > 1:
        return _multi_gpu(placement, estimate, need, live, margin, strict, names, num_gpus)
    if placement.worker:
        return _pinned_to_worker(placement, estimate, need, live, margin, strict, names)
    multi = [o.name for o in live if o.multi_gpu]
    live = [o for o in live if not o.multi_gpu]  # multi-GPU workers take only runs with num_gpus > 1
    if placement.gpu_type:
        return _pinned_to_gpu_type(placement, estimate, need, live, margin, strict)
    if not live:
        reason = "no training worker is running: the run starts when one does"
        if multi:
            reason = (
                f"only multi-GPU workers are running ({', '.join(multi)}), which take runs with training.num_gpus "
                "of 2 or more: the run starts when a training worker without --multi-gpu joins"
            )
        return Placement(TRAINING_QUEUE, priority, reason, need)
    gpu_workers = [o for o in live if o.capacity_bytes]
    if need is None or not gpu_workers:
        return Placement(TRAINING_QUEUE, priority, None, need)
    assert estimate is not None
    exact = {exact_class_gib(o.capacity_bytes or 0) for o in gpu_workers}
    candidates = sorted(gib for gib in {*LADDER_GIB, *exact} if gib * GIB >= need)
    for gib in candidates:
        if any(o.consumes_class(gib) for o in gpu_workers):
            return Placement(class_queue(gib), priority, None, need)
    biggest = max(gpu_workers, key=lambda o: o.capacity_bytes or 0)
    waiting_class = next((gib for gib in LADDER_GIB if gib * GIB >= need), math.ceil(need / GIB / 64) * 64)
    reason = (
        f"{_need_text(need, estimate, margin)}, largest GPU has {_gib(biggest.capacity_bytes or 0)} free "
        f"(worker {biggest.name}); it starts when a worker with a GPU that large joins"
    )
    return Placement(class_queue(waiting_class), priority, reason, need)


def _pinned_to_worker(
    placement: PlacementSpec,
    estimate: Mapping[str, Any] | None,
    need: int | None,
    live: Sequence[Offer],
    margin: float,
    strict: bool,
    names: str,
) -> Placement:
    name = placement.worker or ""
    queue = worker_queue(name)
    offer = next((o for o in live if o.name == name), None)
    if offer is None:
        return Placement(
            queue, placement.priority, f"pinned to worker {name}, which is not running (live: {names})", need
        )
    problem = None
    if placement.gpu_type and not (offer.gpu_name and placement.gpu_type.lower() in offer.gpu_name.lower()):
        problem = ("placement.gpu_type", f"worker {name} has {offer.gpu_name or 'no GPU'}, not {placement.gpu_type}")
    elif need is not None and estimate and offer.capacity_bytes and need > offer.capacity_bytes:
        problem = (
            "placement.worker",
            f"the run {_need_text(need, estimate, margin)}; worker {name} offers {_gib(offer.capacity_bytes)} per GPU "
            "(pin it to a bigger worker, or make it fit: see the memory estimate)",
        )
    if problem and strict:
        raise PlacementRefused(*problem)
    return Placement(queue, placement.priority, problem[1] if problem else None, need)


def _pinned_to_gpu_type(
    placement: PlacementSpec,
    estimate: Mapping[str, Any] | None,
    need: int | None,
    live: Sequence[Offer],
    margin: float,
    strict: bool,
) -> Placement:
    wanted = placement.gpu_type or ""
    matches = [o for o in live if o.gpu_name and wanted.lower() in o.gpu_name.lower() and o.capacity_bytes]
    fitting = [o for o in matches if need is None or need <= (o.capacity_bytes or 0)]
    if fitting:
        best = min(fitting, key=lambda o: o.capacity_bytes or 0)
        return Placement(gpu_queue(best.gpu_name or wanted), placement.priority, None, need)
    if matches and estimate and need is not None:
        biggest = max(matches, key=lambda o: o.capacity_bytes or 0)
        message = (
            f"the run {_need_text(need, estimate, margin)}; the largest {wanted} of a live worker has "
            f"{_gib(biggest.capacity_bytes or 0)} ({biggest.name})"
        )
        if strict:
            raise PlacementRefused("placement.gpu_type", message)
        return Placement(gpu_queue(biggest.gpu_name or wanted), placement.priority, message, need)
    gpus = sorted({o.gpu_name for o in live if o.gpu_name}) or ["none"]
    return Placement(
        gpu_queue(wanted),
        placement.priority,
        f"pinned to GPU type {wanted}, which no live worker has (live GPUs: {', '.join(gpus)})",
        need,
    )


def _multi_gpu(
    placement: PlacementSpec,
    estimate: Mapping[str, Any] | None,
    need: int | None,
    live: Sequence[Offer],
    margin: float,
    strict: bool,
    names: str,
    num_gpus: int,
) -> Placement:
    """A run on `num_gpus` GPUs of one machine: queue gpus-N, which every `--multi-gpu` worker with at least N GPUs
    consumes; a worker's own queue when only some of those have the memory per GPU the estimate needs (under DDP
    every GPU holds what one GPU would; the estimate of an FSDP run is already per GPU)."""
    priority = placement.priority
    queue = gpus_queue(num_gpus)
    wanted = f"{num_gpus} GPUs on one machine"
    if placement.worker:
        name = placement.worker
        offer = next((o for o in live if o.name == name), None)
        if offer is None:
            return Placement(
                worker_queue(name), priority, f"pinned to worker {name}, which is not running (live: {names})", need
            )
        candidates = [offer]
    else:
        candidates = list(live)
    if placement.gpu_type:
        wanted_type = placement.gpu_type.lower()
        candidates = [o for o in candidates if o.gpu_name and wanted_type in o.gpu_name.lower()]
    enough = [o for o in candidates if o.multi_gpu and o.gpu_count >= num_gpus]
    if not enough:
        most = max((o.gpus_per_run for o in candidates), default=0)
        if placement.worker:
            field, where = "placement.worker", f"worker {placement.worker} offers {most} GPU(s) to one run"
        elif placement.gpu_type:
            field, where = "placement.gpu_type", f"no live worker with a {placement.gpu_type} offers more than {most}"
        elif not live:
            return Placement(
                queue, priority, f"needs {wanted}; no training worker is running: it starts when one does", need
            )
        else:
            field, where = "training.num_gpus", f"no live worker offers more than {most} to one run"
        message = (
            f"needs {wanted}; {where} (a machine's GPUs train one run together only under "
            f"`tunedeck worker --multi-gpu`, on a machine with {num_gpus} or more GPUs)"
        )
        if strict and (placement.worker or placement.gpu_type):
            raise PlacementRefused(field, message)
        pinned = worker_queue(placement.worker) if placement.worker else queue
        return Placement(pinned, priority, message + ": it starts when one joins", need)
    fitting = [o for o in enough if need is None or not o.capacity_bytes or need <= o.capacity_bytes]
    if not fitting:
        assert estimate is not None and need is not None
        biggest = max(enough, key=lambda o: o.capacity_bytes or 0)
        message = (
            f"{_need_text(need, estimate, margin)} on each of its {num_gpus} GPUs; the largest of a live multi-GPU "
            f"worker has {_gib(biggest.capacity_bytes or 0)} free ({biggest.name})"
        )
        if strict and (placement.worker or placement.gpu_type):
            raise PlacementRefused("placement.worker" if placement.worker else "placement.gpu_type", message)
        return Placement(worker_queue(placement.worker) if placement.worker else queue, priority, message, need)
    if placement.worker or placement.gpu_type or len(fitting) < len(enough):
        # Not every worker on gpus-N fits (or the user chose): the worker's own queue, the smallest that fits.
        best = min(fitting, key=lambda o: (o.gpu_count, o.capacity_bytes or 0))
        return Placement(worker_queue(best.name), priority, None, need)
    return Placement(queue, priority, None, need)


def place_spec(
    session: Session, spec: RunSpec, estimate: Mapping[str, Any] | None, *, strict: bool = True
) -> Placement:
    settings = get_settings()
    return choose(
        spec.placement,
        estimate,
        offers(session, settings),
        settings.placement_margin_fraction,
        strict=strict,
        num_gpus=spec.training.num_gpus,
    )


def place_run(session: Session, run: Run, *, strict: bool = False) -> Placement:
    """Decide a stored run's queue now (a retry or resume goes wherever fits at that moment) and record it."""
    spec = RunSpec.model_validate(run.spec)
    placement = place_spec(session, spec, (run.details or {}).get("memory_estimate"), strict=strict)
    record(run, placement)
    return placement


def record(run: Run, placement: Placement) -> None:
    run.queue = placement.queue
    run.priority = placement.priority
    run.wait_reason = placement.wait_reason
