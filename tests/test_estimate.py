"""The memory estimate (runspec/memory/) against what training really holds, and where the product shows it.

* every method on the tiny models, trained in-process for one step: the estimate's trainable count is peft's,
  and its parameters, gradients and optimizer state are within 2% of the bytes the worker measured;
* the arithmetic itself: 4-bit costs, gradient checkpointing, the s² term, prompt and prefix methods, suggestions;
* POST /api/estimate, the new-run form's live estimate (htmx block and a real browser), the estimate stored with a
  run at submit and the run page's estimate-vs-measurement table;
* bench/gpu_memory.py in its CPU smoke mode, so the GPU benchmark keeps working without a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig

from harness.stack import ROOT, Stack
from runspec import METHODS, RunSpec
from runspec.memory.estimate import estimate_memory
from runspec.memory.facts import ModelFacts, Quantization
from runspec.memory.suggestions import apply_patch, suggest
from runspec.memory.units import GIB, EstimateError
from runspec.memory.weights import quantized_bytes
from tests.conftest import tiny_spec
from tests.html import fragment_root, parse
from worker.training.errors import TrainingError
from worker.training.loop import train
from worker.training.memory_profile import memory_profile

CONFIGS = ROOT / "bench" / "configs"
HX = {"HX-Request": "true"}
#: GPT-2's Conv1D layers are refused by some peft methods (LoHa, LoKr, OFT); these cover its own code paths.
GPT2_METHODS = ("full", "lora", "qlora", "ia3", "prefix_tuning", "prompt_tuning")


class Reporter:
    """The Reporter protocol, in memory."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def progress(self, step: int, max_steps: int) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def details(self, values: dict[str, object]) -> None:
        self.facts.update(values)

    def should_stop(self) -> bool:
        return False


def _one_step_spec(assets: Any, method: str) -> RunSpec:
    return RunSpec.model_validate(
        {
            "name": f"memory-{method}",
            "model": str(assets.model_dir),
            "dataset": {"source": str(assets.dataset_path), "eval_fraction": 0, "max_samples": 8},
            "method": {"name": method},
            "training": {
                "max_steps": 1,
                "batch_size": 4,
                "max_length": 64,
                "learning_rate": 1e-3,
                "eval_generation_samples": 0,
                "save_steps": 1000,
            },
        }
    )


def _within(estimated: float, measured: float, tolerance: float = 0.02) -> bool:
    return abs(estimated - measured) <= tolerance * measured


def _check_state_bytes(estimate: dict[str, Any], measured: dict[str, Any], label: str) -> None:
    lines = {line["key"]: line["bytes"] for line in estimate["lines"]}
    weights = measured["params_bytes"] + measured["buffers_bytes"]
    assert _within(lines["weights"], weights), f"{label}: weights {lines['weights']} vs measured {weights}"
    assert _within(lines["gradients"], measured["grads_bytes"]), (
        f"{label}: gradients {lines['gradients']} vs measured {measured['grads_bytes']}"
    )
    assert _within(lines["optimizer"], measured["optimizer_bytes"]), (
        f"{label}: optimizer state {lines['optimizer']} vs measured {measured['optimizer_bytes']}"
    )


def _matrix() -> list[tuple[str, str]]:
    cases = [("bloom", m) for m in METHODS] + [("llama", m) for m in METHODS]
    return cases + [("gpt2", m) for m in GPT2_METHODS if m in METHODS]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "method"), _matrix())
def test_state_bytes_and_trainable_count_match_the_worker(
    arch: str, method: str, tiny_assets: Any, tiny_llama: Any, tiny_gpt2: Any, tmp_path: Path
) -> None:
    assets = {"bloom": tiny_assets, "llama": tiny_llama, "gpt2": tiny_gpt2}[arch]
    spec = _one_step_spec(assets, method)
    reporter = Reporter()
    try:
        result = train(spec, tmp_path / "run", reporter)
    except TrainingError as exc:  # the method does not fit this architecture: then it cannot be estimated either
        assert "cannot be applied" in str(exc)
        with pytest.raises(TrainingError):
            memory_profile(AutoConfig.from_pretrained(assets.model_dir), spec.method.resolved(spec.training))
        return
    estimate = reporter.facts["memory_estimate"]  # made by the worker at training start (nothing was stored)
    measured = reporter.facts["memory_measured"]
    assert estimate["made_by"].startswith("the training worker")
    assert estimate["device"] == measured["device"] == "cpu"
    assert estimate["trainable_params"] == result.trainable_params == measured["trainable_params"]
    _check_state_bytes(estimate, measured, f"{arch}/{method}")
    # The web process's path gives the same: a profile built from the config alone, on the meta device.
    profile = memory_profile(AutoConfig.from_pretrained(assets.model_dir), spec.method.resolved(spec.training))
    again = estimate_memory(spec, profile, device="cpu")
    assert again.trainable_params == result.trainable_params
    assert {line.key: line.bytes for line in again.lines}["gradients"] == measured["grads_bytes"]


# -- the arithmetic -----------------------------------------------------------------------------------------


def _bloom_profile(size: str, method: dict[str, Any]) -> dict[str, Any]:
    config = AutoConfig.for_model(**json.loads((CONFIGS / f"{size}.json").read_text()))
    return memory_profile(config, RunSpec.model_validate({"name": "x", "method": method}).method)


def _spec(method: dict[str, Any], **training: Any) -> RunSpec:
    return RunSpec.model_validate(
        {"name": "x", "method": method, "training": {"batch_size": 4, "max_length": 512, **training}}
    )


def test_four_bit_weights_cost_their_quantization_constants() -> None:
    params = 4096 * 4096 * 10  # ten 4096×4096 layers
    plain, _ = quantized_bytes(params, 10, Quantization(4, "nf4", False, "bfloat16"))
    double, _ = quantized_bytes(params, 10, Quantization(4, "nf4", True, "bfloat16"))
    # 4 bits + one fp32 absmax per 64 values (0.5 bit); double quantization: ≈0.127 bit. The code books are small.
    assert 4.5 < plain * 8 / params < 4.51
    assert 4.127 < double * 8 / params < 4.14


def test_components_follow_the_run_settings() -> None:
    size = "bloom-389m-zh"
    full_profile = _bloom_profile(size, {"name": "full"})
    base = estimate_memory(_spec({"name": "full"}), full_profile)
    assert base.device == "cuda" and base.precision == "bf16"
    lines = {line.key: line for line in base.lines}
    total = full_profile["total_params"]
    assert lines["weights"].bytes == 4 * total and lines["gradients"].bytes == 4 * total
    # Fused AdamW (the default): two fp32 moments and a 4-byte step counter per tensor, all on the GPU; it
    # updates in place, where foreach AdamW needs a parameter-sized temporary and keeps its counters on the CPU.
    assert 8 * total < lines["optimizer"].bytes < 8 * total + 4 * 1000
    assert lines["optimizer_scratch"].bytes == 0
    foreach = {ln.key: ln for ln in estimate_memory(_spec({"name": "full"}, optim="adamw_torch"), full_profile).lines}
    assert foreach["optimizer"].bytes == 8 * total and foreach["optimizer_scratch"].bytes == 4 * total
    assert lines["logits"].bytes == 12 * 4 * 512 * 42437
    # Gradient checkpointing keeps only each layer's input.
    checkpointed = estimate_memory(_spec({"name": "full"}, gradient_checkpointing=True), full_profile)
    assert checkpointed.allocated_peak_bytes < base.allocated_peak_bytes
    assert {ln.key: ln for ln in checkpointed.lines}["activations"].peak_bytes < lines["activations"].peak_bytes / 5
    # Bloom's eager attention keeps the s² probabilities: twice the length, more than twice the activations.
    longer = estimate_memory(_spec({"name": "full"}, max_length=1024), full_profile)
    assert {ln.key: ln for ln in longer.lines}["activations"].bytes > 2.2 * lines["activations"].bytes
    # LoRA: frozen matmuls keep no inputs, only the adapters train.
    lora = estimate_memory(_spec({"name": "lora"}), _bloom_profile(size, {"name": "lora"}))
    lora_lines = {ln.key: ln for ln in lora.lines}
    assert lora_lines["activations"].bytes < 0.9 * lines["activations"].bytes
    assert 8 * lora.trainable_params < lora_lines["optimizer"].bytes < 8 * lora.trainable_params + 4 * 1000
    # QLoRA: linear layers at ≈4.13 bits, embeddings and norms in the compute dtype (bf16 on a GPU).
    qlora = estimate_memory(_spec({"name": "qlora"}), _bloom_profile(size, {"name": "qlora"}))
    linear = full_profile["quantizable_linear_params"]
    expected = linear * 4.127 / 8 + (total - linear) * 2 + qlora.trainable_params * 4  # fp32 adapters
    assert _within({ln.key: ln for ln in qlora.lines}["weights"].bytes, expected, 0.01)
    assert qlora.allocated_peak_bytes < lora.allocated_peak_bytes


def test_prompt_methods_add_tokens_or_prefixes() -> None:
    size = "bloom-389m-zh"
    plain = estimate_memory(_spec({"name": "lora"}), _bloom_profile(size, {"name": "lora"}))
    prompt = estimate_memory(
        _spec({"name": "prompt_tuning", "num_virtual_tokens": 32}),
        _bloom_profile(size, {"name": "prompt_tuning", "num_virtual_tokens": 32}),
    )
    assert prompt.seq_len == 512 + 32 and plain.seq_len == 512
    assert {ln.key: ln for ln in prompt.lines}["logits"].bytes == 12 * 4 * 544 * 42437
    prefix = estimate_memory(
        _spec({"name": "p_tuning_v2", "num_virtual_tokens": 32}),
        _bloom_profile(size, {"name": "p_tuning_v2", "num_virtual_tokens": 32}),
    )
    assert prefix.seq_len == 512
    past = {ln.key: ln for ln in prefix.lines}["prompt"]
    assert past.bytes == 4 * 32 * 2 * 24 * 1024 * 4  # b·n·2·L·h fp32 key/values
    assert "past key/values" in past.formula


def test_suggests_the_cheapest_change_that_fits() -> None:
    profile = _bloom_profile("bloom-1b4-zh", {"name": "full"})
    spec = _spec({"name": "full"}, max_length=1024)
    need = estimate_memory(spec, profile).total_peak_bytes
    with_gc = estimate_memory(apply_patch(spec, {"training.gradient_checkpointing": True}), profile).total_peak_bytes
    assert with_gc < need
    device = (need + with_gc) // 2  # checkpointing fits, the run as asked does not
    estimate = estimate_memory(spec, profile, device_memory_bytes=device)
    assert estimate.fits is False
    suggestion = suggest(spec, estimate, profile)
    assert suggestion is not None and suggestion.patch == {"training.gradient_checkpointing": True}
    # Nothing but QLoRA fits 12 GiB: the suggestion switches the method.
    small = estimate_memory(spec, profile, device_memory_bytes=12 * GIB)
    qlora_spec = _spec({"name": "qlora"}, max_length=1024)
    qlora_profile = _bloom_profile("bloom-1b4-zh", {"name": "qlora"})
    to_qlora = suggest(spec, small, profile, qlora=lambda: (qlora_spec, qlora_profile))
    assert to_qlora is not None and to_qlora.patch["method"]["name"] == "qlora"
    assert to_qlora.total_bytes <= 12 * GIB
    assert suggest(spec, estimate_memory(spec, profile, device_memory_bytes=80 * GIB), profile) is None


def test_a_profile_without_dimensions_cannot_be_estimated() -> None:
    profile = _bloom_profile("bloom-389m-zh", {"name": "lora"})
    broken = {**profile, "model_type": "mystery", "dims": {**profile["dims"], "num_heads": None}}
    with pytest.raises(EstimateError, match=r"mystery.*num_heads"):
        ModelFacts.from_profile(broken)
    with pytest.raises(EstimateError, match="decoder layer"):
        ModelFacts.from_profile({**profile, "block": {}})


# -- in the product -------------------------------------------------------------------------------------------


def test_api_estimate(sqlite_stack: Stack, tiny_assets: Any) -> None:
    spec = tiny_spec(tiny_assets, "estimate-me", training={"batch_size": 4, "max_length": 64})
    with sqlite_stack.client() as client:
        answer = client.post("/api/estimate", json=spec, params={"device": "cpu"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["device"] == "cpu" and body["trainable_params"] == 2 * 8 * (64 + 192)
        keys = [line["key"] for line in body["lines"]]
        for key in ("weights", "trainable", "gradients", "optimizer", "activations", "logits", "overhead"):
            assert key in keys
        assert all(line["formula"] for line in body["lines"])
        assert body["total_peak_bytes"] == body["allocated_peak_bytes"] + body["lines"][-1]["bytes"]
        assert body["device_memory_bytes"] > 0 and body["fits"] is True  # the worker's RAM, as it reported it

        tight = client.post("/api/estimate", json=spec, params={"device": "cuda", "device_memory_bytes": 2**20}).json()
        assert tight["fits"] is False and tight["device_source"] == "given"
        roomy = client.post("/api/estimate", json=spec, params={"device": "cuda", "device_memory_bytes": 80 * GIB})
        assert roomy.json()["fits"] is True and roomy.json()["precision"] == "bf16"

        missing = client.post("/api/estimate", json={**spec, "model": str(tiny_assets.model_dir) + "-nope"})
        assert missing.status_code == 422
        assert "no estimate" in missing.json()["detail"] and "does not exist" in missing.json()["detail"]
        mystery = sqlite_stack.data_dir / "models" / "mystery"  # inside the data roots, so only its config is wrong
        mystery.mkdir(parents=True, exist_ok=True)
        (mystery / "config.json").write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
        unknown = client.post("/api/estimate", json={**spec, "model": str(mystery)})
        assert unknown.status_code == 422, unknown.text
        assert "no estimate" in unknown.json()["detail"] and "no-such-architecture" in unknown.json()["detail"]
        invalid = client.post("/api/estimate", json={**spec, "training": {"batch_size": 0}})
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["field"] == "training.batch_size"


@pytest.fixture
def service_worker_up(sqlite_stack: Stack, tiny_assets: Any) -> Stack:
    """The stack once its service worker answers (the API waits for a cold worker longer than the form does;
    the stack's client outwaits the server's RPC timeout)."""
    with sqlite_stack.client() as client:
        warm = tiny_spec(tiny_assets, "warm", training={"max_length": 64})
        assert client.post("/api/estimate", json=warm).status_code == 200
    return sqlite_stack


def _form(assets: Any, **extra: str) -> dict[str, str]:
    return {
        "name": "",
        "model": str(assets.model_dir),
        "dataset.source": str(assets.dataset_path),
        "method.name": "lora",
        "method.r": "8",
        "training.batch_size": "4",
        "training.max_length": "64",
        **extra,
    }


def test_form_estimate_block(service_worker_up: Stack, tiny_assets: Any) -> None:
    with service_worker_up.client() as client:
        block = fragment_root(client.post("/runs/new/estimate", data=_form(tiny_assets), headers=HX).text)
        assert block["id"] == "estimate-result"
        segments = [seg["class"][1] for seg in block.select(".estimate-bar .estimate-seg")]
        assert {"seg-weights", "seg-activations", "seg-logits", "seg-overhead"} <= set(segments)
        assert block.select_one(".estimate-verdict")["data-fits"] == "true"

        cramped = _form(tiny_assets, **{"_estimate.device": "cuda", "_estimate.memory_gib": "0.001"})
        block = fragment_root(client.post("/runs/new/estimate", data=cramped, headers=HX).text)
        verdict = block.select_one(".estimate-verdict")
        assert verdict["data-fits"] == "false" and "does not fit" in verdict.text and "on a GPU" in verdict.text

        unknown = _form(tiny_assets, model=str(tiny_assets.model_dir) + "-nope")
        block = fragment_root(client.post("/runs/new/estimate", data=unknown, headers=HX).text)
        assert "No estimate" in block.text and "does not exist" in block.text
        # The page itself carries the block, and launching does not depend on it.
        section = parse(client.get("/runs/new").text).select_one("form#run-form section#estimate")
        assert section is not None and "change" in section["hx-trigger"]
        assert section["hx-target"] == "#estimate-result" and section.select_one("#estimate-result") is not None


def test_a_run_stores_its_estimate_and_what_it_used(sqlite_stack: Stack, tiny_assets: Any) -> None:
    spec = tiny_spec(
        tiny_assets,
        "memory-api",
        training={"max_steps": 2, "batch_size": 4, "max_length": 64, "eval_generation_samples": 0},
    )
    with sqlite_stack.client() as client:
        created = client.post("/api/runs", json=spec)
        assert created.status_code == 201, created.text
        stored = created.json()["details"]["memory_estimate"]
        assert stored["made_by"] == "the web process at submit time"
        run = sqlite_stack.wait_for_run(created.json()["id"])
        assert run["status"] == "succeeded", run["error"]
        estimate, measured = run["details"]["memory_estimate"], run["details"]["memory_measured"]
        assert estimate == stored  # the CPU worker kept the submit-time estimate (same kind of device)
        assert estimate["trainable_params"] == run["trainable_params"] == measured["trainable_params"]
        _check_state_bytes(estimate, measured, "api/lora")
        assert measured["peak_rss_bytes"] > measured["params_bytes"]

        page = parse(client.get(f"/runs/{run['id']}").text)
        memory = page.select_one("section#run-memory")
        assert memory is not None and "hx-get" not in memory.attrs  # finished: no polling
        rows = {row["data-row"]: row for row in memory.select("tr[data-row]")}
        assert {"weights (parameters and buffers)", "gradients", "optimizer state", "peak RSS (CPU)"} <= rows.keys()
        for label in ("weights (parameters and buffers)", "gradients", "optimizer state"):
            error = rows[label].select("td")[-1].text.strip()
            assert error.endswith("%") and abs(float(error.rstrip("%"))) <= 2.0, (label, error)
        fragment = client.get(f"/runs/{run['id']}/memory", headers=HX)
        assert fragment_root(fragment.text)["id"] == "run-memory"

        # The run tokenized its dataset: a later estimate on the same rows uses the longest sample, not max_length.
        longest = run["details"]["dataset"]["longest_tokens"]
        longer = {**spec, "training": {**spec["training"], "max_length": 4 * longest}}
        answer = client.post("/api/estimate", json=longer, params={"device": "cpu"}).json()
        assert answer["seq_len"] == longest and "tokenized dataset" in answer["seq_len_source"], answer
        everything = {**longer, "dataset": {**spec["dataset"], "max_samples": None}}  # rows it has not seen
        answer = client.post("/api/estimate", json=everything, params={"device": "cpu"}).json()
        assert answer["seq_len"] == 4 * longest and "training.max_length" in answer["seq_len_source"]


def test_a_preview_bounds_the_length() -> None:
    from app.services import token_lengths

    spec = _spec({"name": "lora"}, max_length=512)
    token_lengths.remember_preview(
        spec.dataset, spec.model, {"lengths": {"max": 300}, "measured_rows": 20, "total_rows": 99}
    )
    assert token_lengths.length_for_estimate(None, spec)[0] is None  # 20 of 99 rows measured: no bound
    first = RunSpec.model_validate({**spec.model_dump(), "dataset": {**spec.dataset.model_dump(), "max_samples": 20}})
    seq_len, source = token_lengths.length_for_estimate(None, first)
    assert seq_len == 300 and source and "preview" in source
    assert estimate_memory(first, _bloom_profile("bloom-389m-zh", {"name": "lora"}), seq_len=seq_len).seq_len == 300
    token_lengths.clear_previews()


@pytest.mark.browser
def test_the_form_shows_the_estimate_live(service_worker_up: Stack, tiny_assets: Any, browser_page: Any) -> None:
    page = browser_page
    page.goto(f"{service_worker_up.base_url}/runs/new")
    page.fill("input[name='model']", str(tiny_assets.model_dir))
    page.fill("input[name='dataset.source']", str(tiny_assets.dataset_path))
    page.fill("input[name='training.max_length']", "64")
    page.dispatch_event("input[name='training.max_length']", "change")
    page.locator("#estimate .estimate-verdict").wait_for(timeout=60_000)
    first = int(page.get_attribute("#estimate [data-total]", "data-total") or 0)
    assert first > 0
    page.fill("input[name='training.batch_size']", "16")
    page.dispatch_event("input[name='training.batch_size']", "change")
    page.wait_for_function(f"() => Number(document.querySelector('#estimate [data-total]')?.dataset.total) > {first}")
    assert "batch 16" in page.inner_text("#estimate .estimate-verdict")
    page.select_option("select[name='_estimate.device']", "cuda")
    page.fill("input[name='_estimate.memory_gib']", "0.0005")
    page.dispatch_event("input[name='_estimate.memory_gib']", "change")
    page.locator("#estimate .estimate-verdict.does-not-fit").wait_for()
    assert "on a GPU" in page.inner_text("#estimate .estimate-verdict")
    assert page.eval_on_selector("select[name='_estimate.device']", "e => e.value") == "cuda"  # kept as chosen
    # Switching the method re-estimates with that method's fields.
    page.select_option("select[name='method.name']", "prompt_tuning")
    page.wait_for_function(
        "() => document.querySelector('#estimate .estimate-verdict')?.textContent.includes('× 72 tokens')"
    )


def test_readme_memory_table_is_generated() -> None:
    """The README's table is the generator's output (python -m bench.memory_table --write README.md)."""
    from bench.memory_table import MARK_END, MARK_START, build_table

    readme = (ROOT / "README.md").read_text()
    section = readme.split(MARK_START, 1)[1].split(MARK_END, 1)[0].strip()
    assert section == build_table().strip()


def test_gpu_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cells.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_memory", "--cpu-smoke", "--lengths", "48", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = json.loads(out.read_text())
    assert {(c["method"], c["checkpointing"]) for c in cells} == {
        (m, gc) for m in ("full", "lora", "qlora") for gc in (False, True)
    }
    for cell in cells:
        assert cell["measured_bytes"] and cell["estimate_bytes"], cell
        assert abs(cell["error_percent"]) < 15, cell
    assert "| tiny-bloom | lora | 48 |" in result.stdout
