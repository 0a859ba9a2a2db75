"""Out-of-memory errors are recognised, CUDA's and the CPU allocator's, and explained with the usual remedies.

The CPU path runs for real in test_reliability.py (a worker with a memory cap); CUDA's error is recognised by
its type here, since the test machines have no GPU."""

from __future__ import annotations

import pytest

from runspec import RunSpec

pytestmark = pytest.mark.reliability


def test_out_of_memory_errors_are_recognised_and_explained() -> None:
    import torch

    from worker.training.oom import describe_out_of_memory, is_out_of_memory

    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"
    )
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 145926400 bytes.")
    wrapped = RuntimeError("step failed")
    wrapped.__cause__ = cuda
    assert describe_out_of_memory(cpu, RunSpec(name="x"), {}).startswith("out of memory on the CPU: ")
    assert is_out_of_memory(cuda) and is_out_of_memory(cpu) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(wrapped)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of range"))

    spec = RunSpec.model_validate({"name": "big", "training": {"batch_size": 64, "max_length": 2048}})
    message = describe_out_of_memory(cuda, spec, {"total_params": 7_000_000_000, "trainable_params": 4_000_000})
    assert message.startswith("out of memory on the GPU: CUDA out of memory.")
    assert "Tried to allocate 20.00 GiB" in message
    assert "Estimated need: at least 26.12 GiB" in message  # 4 bytes × 7e9 weights + 12 bytes × 4e6 trainable
    assert "batch_size=64 × max_length=2048" in message
    for remedy in ("training.batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "QLoRA"):
        assert remedy in message
    with_estimate = describe_out_of_memory(
        cuda, spec, {"memory_estimate": {"total_peak_bytes": 90 * 2**30, "device": "cuda"}}
    )
    assert "Estimated peak: 90.00 GiB on cuda" in with_estimate
