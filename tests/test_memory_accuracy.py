"""The estimate's closed loop: GPU runs store their estimate and what they measured; measured / estimated per GPU
type over past runs is on the Workers page and in the estimate shown before a launch on that GPU type."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from transformers import AutoConfig

from app.services.estimates import _with_history, training_gpu
from app.services.memory_accuracy import accuracy_by_gpu
from app.web.templating import templates
from harness.stack import ROOT
from runspec import RunSpec
from runspec.memory.estimate import estimate_memory
from runspec.memory.units import GIB
from tunedeck_state import workers
from tunedeck_state.models import Base, Run
from worker.training.memory_profile import memory_profile

H100 = "NVIDIA H100 80GB HBM3"


def _run(status: str, gpu: str | None, allocated: int, reserved: int, device: str = "cuda") -> Run:
    details = {
        "device": device,
        "memory_estimate": {"device": device, "allocated_peak_bytes": allocated, "total_peak_bytes": allocated},
        "memory_measured": {"device": device, "cuda_max_reserved_bytes": reserved} if device == "cuda" else {},
    }
    if gpu:
        details["gpu"] = gpu
    return Run(name="r", method="lora", model="m", spec={}, spec_hash="h", status=status, details=details)


def test_measured_over_estimated_per_gpu_type(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'accuracy.sqlite'}")
    Base.metadata.create_all(engine)
    slack = 1.1  # the estimate's reserved figure is its allocated peak plus the allocator slack
    with Session(engine) as session:
        session.add_all(
            [
                _run("succeeded", H100, 10 * GIB, int(10 * GIB * slack * 0.9)),
                _run("succeeded", H100, 20 * GIB, int(20 * GIB * slack * 1.1)),
                _run("succeeded", H100, 20 * GIB, int(20 * GIB * slack * 0.95)),
                _run("failed", H100, 10 * GIB, int(10 * GIB * slack * 3)),  # an OOM says nothing of the estimate
                _run("succeeded", "NVIDIA A10G", 10 * GIB, int(10 * GIB * slack * 1.2)),
                _run("succeeded", None, 10 * GIB, 0, device="cpu"),
            ]
        )
        session.commit()
        found = {a.gpu: a for a in accuracy_by_gpu(session)}
        assert set(found) == {H100, "NVIDIA A10G"}
        h100 = found[H100]
        assert h100.runs == 3 and abs(h100.median - 0.95) < 0.01 and abs(h100.low - 0.9) < 0.01
        assert abs(h100.high - 1.1) < 0.01

        # A training worker reports an H100: the estimate shown before launch says how far off it has been there.
        gpus = [{"index": 0, "name": H100, "memory_total_bytes": 80 * GIB, "memory_free_bytes": 79 * GIB}]
        workers.beat(session, "gpu@x", "tunedeck.training", 1, {"gpus": gpus})
        session.commit()
        gpu = training_gpu(session)
        assert gpu is not None and gpu[2] == H100
        config = AutoConfig.for_model(**json.loads((ROOT / "bench/configs/bloom-389m-zh.json").read_text()))
        spec = RunSpec.model_validate({"name": "x", "method": {"name": "lora"}})
        estimate = _with_history(estimate_memory(spec, memory_profile(config, spec.method)), session, gpu[2])
        assert any(n.startswith(f"On {H100}, past runs used 5% less than their estimates") for n in estimate.notes)
        assert "median of 3 runs, 0.90–1.10×" in estimate.notes[-1]

        page = templates.env.get_template("workers.html").render(workers=[], accuracy=accuracy_by_gpu(session))
        assert f'<tr data-gpu="{H100}"><td>{H100}</td><td class="num">3</td>' in page
        assert "0.95×" in page
