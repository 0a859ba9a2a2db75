"""Placement decisions (tunedeck_jobs/placement.py): which queue a run goes to for the live workers' capacities.

Pure functions; tests/test_scale_out.py checks the same rules with real workers, Redis and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from runspec import PlacementSpec, RunSpec
from tunedeck_jobs import placement as p
from tunedeck_state import workers
from tunedeck_state.models import Base, Run

GIB = 2**30


def _estimate(gib: float) -> dict[str, int]:
    return {"total_peak_bytes": int(gib * GIB)}


def _offer(name: str, gib: float | None, gpu: str | None = "NVIDIA GeForce RTX 4090") -> p.Offer:
    return p.Offer(name=name, capacity_bytes=int(gib * GIB) if gib else None, gpu_name=gpu if gib else None)


def test_a_worker_consumes_every_class_it_holds_and_its_own_exact_class() -> None:
    queues = p.training_queues("training@box", int(23.99 * GIB), "NVIDIA GeForce RTX 4090")
    assert queues[:2] == ["tunedeck.training", "tunedeck.training.worker.training@box"]
    assert "tunedeck.training.mem-22g" in queues and "tunedeck.training.mem-23.75g" in queues
    assert "tunedeck.training.mem-24g" not in queues
    assert queues[-1] == "tunedeck.training.gpu-nvidia-geforce-rtx-4090"
    # A CPU-only worker: the plain queue and its own, no memory classes.
    assert p.training_queues("training@cpu", None, None) == [
        "tunedeck.training",
        "tunedeck.training.worker.training@cpu",
    ]


def test_the_smallest_class_a_live_worker_consumes_is_chosen() -> None:
    live = [_offer("small", 23.99), _offer("big", 79.6, "NVIDIA H100 80GB HBM3")]
    placed = p.choose(PlacementSpec(), _estimate(10), live, margin=0.1)  # needs 11 GiB
    assert placed.queue == "tunedeck.training.mem-12g" and placed.wait_reason is None
    # 21 GiB + 10% = 23.1 GiB: above the 22 GiB class, within the 4090's exact class (23.75 GiB).
    placed = p.choose(PlacementSpec(), _estimate(21), live, margin=0.1)
    assert placed.queue == "tunedeck.training.mem-23.75g"
    # Too big for the 4090: the smallest class only the H100 consumes.
    placed = p.choose(PlacementSpec(), _estimate(30), live, margin=0.1)
    assert placed.queue == "tunedeck.training.mem-36g"
    assert placed.need_bytes == int(30 * GIB * 1.1)


def test_a_run_no_live_worker_fits_waits_in_a_class_nobody_consumes_with_the_reason() -> None:
    live = [_offer("training@box", 24)]
    placed = p.choose(PlacementSpec(), _estimate(28.2), live, margin=0.1)  # needs 31 GiB
    assert placed.queue == "tunedeck.training.mem-32g"
    assert not any(o.consumes_class(32) for o in live)
    assert placed.wait_reason is not None
    assert "needs 31 GiB" in placed.wait_reason and "largest GPU has 24 GiB" in placed.wait_reason
    assert "training@box" in placed.wait_reason


def test_without_gpu_workers_or_an_estimate_runs_use_the_plain_queue() -> None:
    assert p.choose(PlacementSpec(), _estimate(3), [_offer("cpu", None)], 0.1).queue == "tunedeck.training"
    assert p.choose(PlacementSpec(), None, [_offer("gpu", 24)], 0.1).queue == "tunedeck.training"
    nobody = p.choose(PlacementSpec(), _estimate(3), [], 0.1)
    assert nobody.queue == "tunedeck.training" and "no training worker is running" in (nobody.wait_reason or "")


def test_pins_to_a_worker_or_a_gpu_type() -> None:
    live = [_offer("a@x", 24), _offer("b@y", 80, "NVIDIA A100-SXM4-80GB")]
    pinned = p.choose(PlacementSpec(worker="a@x"), _estimate(5), live, 0.1)
    assert pinned.queue == "tunedeck.training.worker.a@x" and pinned.wait_reason is None
    with pytest.raises(p.PlacementRefused) as refused:
        p.choose(PlacementSpec(worker="a@x"), _estimate(30), live, 0.1)
    assert refused.value.field == "placement.worker" and "24 GiB" in refused.value.message
    # Not strict (a retry): sent there anyway, with the reason.
    assert p.choose(PlacementSpec(worker="a@x"), _estimate(30), live, 0.1, strict=False).wait_reason
    absent = p.choose(PlacementSpec(worker="c@z"), _estimate(5), live, 0.1)
    assert absent.queue == "tunedeck.training.worker.c@z" and "not running" in (absent.wait_reason or "")

    by_type = p.choose(PlacementSpec(gpu_type="a100"), _estimate(30), live, 0.1)
    assert by_type.queue == "tunedeck.training.gpu-nvidia-a100-sxm4-80gb" and by_type.wait_reason is None
    with pytest.raises(p.PlacementRefused):
        p.choose(PlacementSpec(gpu_type="4090"), _estimate(30), live, 0.1)
    missing = p.choose(PlacementSpec(gpu_type="H200"), _estimate(30), live, 0.1)
    assert "no live worker has" in (missing.wait_reason or "")


def test_priority_is_sent_as_a_redis_priority_and_placement_leaves_the_spec_hash_alone() -> None:
    assert p.celery_priority(9) == 0 and p.celery_priority(0) == 9 and p.celery_priority(5) == 4
    base = {"name": "x", "model": "m", "dataset": {"source": "d.jsonl"}}
    plain = RunSpec.model_validate(base)
    pinned = RunSpec.model_validate({**base, "placement": {"worker": "a@x", "priority": 9, "gpu_type": " "}})
    assert pinned.placement.gpu_type is None
    assert plain.spec_hash() == pinned.spec_hash()
    with pytest.raises(ValueError, match="priority"):
        RunSpec.model_validate({**base, "placement": {"priority": 10}})


def test_a_training_worker_joining_clears_the_no_worker_reason(tmp_path: Path) -> None:
    """The single-machine demo queues runs before its worker's first heartbeat: their "no training worker is
    running" reason must not outlive the worker's arrival. Other reasons (a class nobody consumes) stay."""
    engine = create_engine(f"sqlite:///{tmp_path / 'placement.sqlite'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        waiting = Run(name="w", method="lora", model="m", spec={}, spec_hash="h", queue="tunedeck.training")
        waiting.wait_reason = p.choose(PlacementSpec(), _estimate(1), [], 0.1).wait_reason
        too_big = Run(name="b", method="lora", model="m", spec={}, spec_hash="h", queue="tunedeck.training.mem-32g")
        too_big.wait_reason = "needs 31 GiB (estimate 28.2 GiB + 10% margin), largest GPU has 24 GiB free"
        session.add_all([waiting, too_big])
        session.commit()

        workers.beat(session, "service@x", "tunedeck.service", 1, {})
        session.commit()
        session.refresh(waiting)
        assert waiting.wait_reason is not None, "a service worker does not train"

        workers.beat(session, "training@x", "tunedeck.training,tunedeck.training.worker.training@x", 2, {})
        session.commit()
        session.refresh(waiting)
        session.refresh(too_big)
        assert waiting.wait_reason is None
        assert (too_big.wait_reason or "").startswith("needs 31 GiB")
