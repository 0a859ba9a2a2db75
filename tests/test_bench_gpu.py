"""`make bench-gpu` (bench/gpu_train.py) cannot be run without a GPU here: its smoke mode runs the same code on
tiny shapes on the CPU, and without --smoke it refuses at once, saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.stack import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_bench_refuses_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_train", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr and "--smoke" in result.stderr
    assert not (tmp_path / "gpu-train.json").exists()


def test_gpu_bench_smoke_runs_both_sides(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_train",
            "--smoke",
            "--shapes",
            "tiny-llama",
            "--methods",
            "lora,full",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-train.json").read_text())
    assert [(r["shape"], r["method"]) for r in report["rows"]] == [("tiny-llama", "lora"), ("tiny-llama", "full")]
    for row in report["rows"]:
        assert row["skipped"] is None, row
        for side in ("tunedeck", "recipe"):
            assert row["sides"][side]["tokens_per_second"] > 0 and row["sides"][side]["estimate_total"] > 0
        assert row["ratio"] > 0
    assert row["sides"]["tunedeck"]["dtypes"]["master_weights"] is False  # fp32 on a CPU: no autocast
    assert "needs a CUDA GPU" in report["two_per_gpu"]["skipped"]
    assert "| tiny-llama | lora |" in (tmp_path / "gpu-train.md").read_text()
