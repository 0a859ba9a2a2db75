"""Weights dtypes and kernels (issue 15): the base loaded in the compute dtype with fp32 trainable parameters, bf16 on
a CPU training for real, pure_bf16 full fine-tuning, FlashAttention and Liger refused where they cannot run, and
the new training fields validated (422 naming the field)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from harness.stack import Stack
from runspec import RunSpec
from runspec.precision import resolve_dtypes
from tests.conftest import tiny_spec
from tests.method_matrix import run_in_process

FAST = {"max_steps": 4, "eval_steps": 4, "eval_generation_samples": 0, "save_steps": 100}


@pytest.mark.parametrize(
    ("method", "precision", "base_dtype", "cuda", "expected"),
    [
        # (compute, base, trainable, autocast, master weights)
        ("lora", "auto", "auto", True, ("bfloat16", "bfloat16", "float32", True, False)),
        ("lora", "auto", "auto", False, ("float32", "float32", "float32", False, False)),
        ("lora", "bf16", "auto", False, ("bfloat16", "bfloat16", "float32", True, False)),
        ("lora", "auto", "fp32", True, ("bfloat16", "float32", "float32", True, False)),
        ("full", "auto", "auto", True, ("bfloat16", "float32", "float32", True, True)),
        ("full", "pure_bf16", "auto", True, ("bfloat16", "bfloat16", "bfloat16", False, False)),
    ],
)
def test_resolve_dtypes(method: str, precision: str, base_dtype: str, cuda: bool, expected: tuple[Any, ...]) -> None:
    d = resolve_dtypes(method, precision, base_dtype, cuda=cuda)
    assert (d.compute, d.base, d.trainable, d.autocast, d.master_weights) == expected
    assert resolve_dtypes("qlora", "auto", cuda=True).quantized_compute == "bfloat16"
    assert resolve_dtypes("qlora", "auto", "fp32", cuda=True, bf16_supported=False).quantized_compute == "float16"


@pytest.mark.parametrize("method", ["lora", "qlora", "prompt_tuning"])
def test_a_bf16_base_gets_fp32_trainable_parameters(method: str, tiny_llama: Any) -> None:
    """precision=bf16 on this CPU: the frozen base is loaded in bf16 (QLoRA: its layers that are not 4-bit) and
    peft keeps what it trains in fp32; base_dtype=fp32 loads it all in fp32 as before."""
    from worker.training.loading import load_base_model, load_tokenizer
    from worker.training.precision import run_dtypes

    for base_dtype, frozen_dtype in (("auto", torch.bfloat16), ("fp32", torch.float32)):
        spec = RunSpec.model_validate(
            tiny_spec(tiny_llama, method={"name": method}, training={"precision": "bf16", "base_dtype": base_dtype})
        )
        model = spec.method.build(load_base_model(spec, run_dtypes(spec)), load_tokenizer(spec.model))
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.dtype.is_floating_point}
        trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        assert frozen == {frozen_dtype}, (base_dtype, frozen)
        assert trainable == {torch.float32}, trainable
        if method == "qlora":
            assert any(p.dtype == torch.uint8 for p in model.parameters()), "the 4-bit weights are packed in uint8"


def test_bf16_on_cpu_trains_with_a_loss_close_to_fp32s(tiny_llama: Any, tmp_path: Path) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        spec = tiny_spec(tiny_llama, precision, training={**FAST, "precision": precision})
        outcome = run_in_process(spec, tmp_path / precision)
        losses[precision] = outcome.losses
        recorded = outcome.reporter.facts["dtypes"]
        expected = "bfloat16" if precision == "bf16" else "float32"
        assert recorded["compute"] == expected and recorded["autocast"] == (precision == "bf16")
        assert set(recorded["loaded"]["frozen_params"]) == {expected}
        assert set(recorded["loaded"]["trainable_params"]) == {"float32"}
        assert set(recorded["optimizer_state"]) == {"float32"}
    assert len(losses["bf16"]) == FAST["max_steps"]
    assert all(math.isfinite(value) for value in losses["bf16"])
    for fp32, bf16 in zip(losses["fp32"], losses["bf16"], strict=True):
        assert abs(bf16 - fp32) <= 0.02 * abs(fp32), losses
    assert losses["bf16"][-1] < losses["bf16"][0], "training did not move"


class _StateDtypes(TrainerCallback):
    """The parameters', gradients' and AdamW states' dtypes right after the first optimizer step."""

    def __init__(self) -> None:
        self.seen: dict[str, set[torch.dtype]] = {}

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.seen:
            return
        model, optimizer = kwargs["model"], kwargs["optimizer"]
        inner = getattr(optimizer, "optimizer", optimizer)
        self.seen["params"] = {p.dtype for p in model.parameters()}
        self.seen["grads"] = {p.grad.dtype for p in model.parameters() if p.grad is not None}
        self.seen["optimizer"] = {
            v.dtype for s in inner.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")
        }


def test_pure_bf16_full_fine_tuning_keeps_weights_gradients_and_adamw_in_bf16(tiny_llama: Any, tmp_path: Path) -> None:
    from tests.method_matrix import MemoryReporter
    from worker.training.loop import train

    spec = RunSpec.model_validate(
        tiny_spec(
            tiny_llama,
            method={"name": "full"},
            training={**FAST, "max_steps": 2, "precision": "pure_bf16", "learning_rate": 1e-3},
        )
    )
    probe, reporter = _StateDtypes(), MemoryReporter()
    result = train(spec, tmp_path / "run", reporter, callbacks=[probe])
    assert result.steps == 2 and math.isfinite(result.final_train_loss or math.nan)
    assert probe.seen == {"params": {torch.bfloat16}, "grads": {torch.bfloat16}, "optimizer": {torch.bfloat16}}
    assert reporter.facts["dtypes"]["autocast"] is False
    assert set(reporter.facts["dtypes"]["optimizer_state"]) == {"bfloat16"}


@pytest.mark.parametrize(
    ("training", "reason"),
    [
        (
            {"attn_implementation": "flash_attention_2"},
            "training.attn_implementation=flash_attention_2: FlashAttention needs a CUDA GPU and this worker has none",
        ),
        (
            {"liger_kernel": "on"},
            "training.liger_kernel=on: Liger's kernels are Triton kernels for CUDA GPUs and this worker has none",
        ),
    ],
)
def test_flash_attention_and_liger_are_refused_on_this_cpu_worker(
    training: dict[str, Any], reason: str, tiny_llama: Any, tmp_path: Path
) -> None:
    from worker.training.errors import TrainingError

    with pytest.raises(TrainingError) as refused:
        run_in_process(tiny_spec(tiny_llama, training={**FAST, **training}), tmp_path / "run")
    assert str(refused.value).startswith(reason), refused.value
    assert "auto" in str(refused.value)
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing should be loaded or trained"


def test_auto_kernels_fall_back_and_say_why(tiny_assets: Any) -> None:
    """On this CPU auto picks no FlashAttention and no Liger; Bloom has no sdpa, so asking for it is refused."""
    from worker.training.errors import TrainingError
    from worker.training.kernels import plan_kernels
    from worker.training.loading import load_config
    from worker.training.precision import run_dtypes

    spec = RunSpec.model_validate(tiny_spec(tiny_assets))
    kernels = plan_kernels(spec, load_config(spec.model), run_dtypes(spec))
    assert (kernels.attn_implementation, kernels.attention, kernels.liger) == (None, "eager", False)
    assert "needs a CUDA GPU" in kernels.attention_reason and "CUDA" in kernels.liger_reason
    sdpa = RunSpec.model_validate(tiny_spec(tiny_assets, training={"attn_implementation": "sdpa"}))
    with pytest.raises(TrainingError, match="transformers has no sdpa attention for bloom models"):
        plan_kernels(sdpa, load_config(spec.model), run_dtypes(sdpa))


def test_liger_on_fails_the_run_with_the_reason(sqlite_stack: Stack, tiny_llama: Any) -> None:
    spec = tiny_spec(tiny_llama, "liger", training={**FAST, "liger_kernel": "on"})
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=spec)
    assert response.status_code == 201, response.text
    run = sqlite_stack.wait_for_run(response.json()["id"])
    assert run["status"] == "failed" and run["step"] == 0
    assert run["error"].startswith("training.liger_kernel=on: Liger's kernels are Triton kernels"), run["error"]
    assert "Traceback" not in run["error"]


@pytest.mark.parametrize(
    ("method", "training", "field", "phrase"),
    [
        ("lora", {"precision": "bf32"}, "training.precision", "pure_bf16"),
        ("lora", {"base_dtype": "fp16"}, "training.base_dtype", "'auto' or 'fp32'"),
        ("lora", {"attn_implementation": "flash"}, "training.attn_implementation", "flash_attention_2"),
        ("lora", {"liger_kernel": "yes"}, "training.liger_kernel", "'auto', 'on' or 'off'"),
        ("lora", {"precision": "pure_bf16"}, "training.precision", "use training.precision=bf16"),
        ("full", {"precision": "pure_bf16", "base_dtype": "fp32"}, "training.base_dtype", "use base_dtype=auto"),
        (
            "lora",
            {"attn_implementation": "flash_attention_2", "precision": "fp32"},
            "training.attn_implementation",
            "attn_implementation=sdpa",
        ),
    ],
)
def test_bad_precision_and_kernel_fields_are_422_naming_the_field(
    method: str, training: dict[str, Any], field: str, phrase: str, sqlite_stack: Stack, tiny_assets: Any
) -> None:
    spec = tiny_spec(tiny_assets, "bad", method={"name": method}, training=training)
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=spec)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [e["field"] for e in errors] == [field], errors
    assert phrase in errors[0]["msg"], errors
