"""Inference with a trained run (the course's "模型推理"): generation served by a worker, the "Try it" box,
and merging a LoRA adapter into its base, with the course's claim about merged LoRA checked on the weights."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness.stack import Stack
from tests.conftest import tiny_spec

PROMPTS = [
    {"instruction": "Sort the numbers in ascending order.", "input": "17, 96, 12, 79, 32"},
    "Copy the input exactly.",
]


ANSWER = "好的。"
#: What every test that checks the learned answer asserts: robust to the last digits of CPU arithmetic.
LEARNED = "好的"
#: Every linear layer of the tiny Bloom, so 30 steps are enough for the adapter to learn its one answer.
BLOOM_LINEAR = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


@pytest.fixture(scope="module")
def lora_run(sqlite_stack: Stack, tiny_assets: Any) -> dict[str, Any]:
    """A LoRA run taught one answer to every instruction of the bundled data, so what it learned shows."""
    rows = [json.loads(line) for line in Path(tiny_assets.dataset_path).read_text().splitlines()[:200]]
    data = sqlite_stack.data_dir / "inference-data" / "one_answer.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text(
        "".join(
            json.dumps({"instruction": r["instruction"], "input": r.get("input", ""), "output": ANSWER}) + "\n"
            for r in rows
        )
    )
    spec = tiny_spec(
        tiny_assets,
        "infer-lora",
        dataset={"source": str(data), "eval_fraction": 0},
        method={"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": BLOOM_LINEAR},
        training={"learning_rate": 2e-2},
    )
    return sqlite_stack.train(spec)


@pytest.fixture(scope="module")
def merged_lora(sqlite_stack: Stack, lora_run: dict[str, Any]) -> dict[str, Any]:
    """The LoRA run after a merge through the API: its merge state once the worker has finished."""
    with sqlite_stack.client() as client:
        queued = client.post(f"/api/runs/{lora_run['id']}/merge")
        # 200 when the browser test merged it already through the page's button.
        assert queued.status_code in (200, 202), queued.text
        assert queued.json()["status"] in (("queued", "running") if queued.status_code == 202 else ("succeeded",))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = client.get(f"/api/runs/{lora_run['id']}/merge").json()
            if state["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
    assert state["status"] == "succeeded", state
    return state


def _generate(stack: Stack, run_id: int, **body: Any) -> Any:
    with stack.client() as client:
        return client.post(f"/api/runs/{run_id}/generate", json={"prompts": PROMPTS, "max_new_tokens": 24, **body})


def _completions(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [item["completion"] for item in answer.json()["completions"]]


def test_generate_is_deterministic_and_the_adapter_changes_the_answer(
    sqlite_stack: Stack, lora_run: dict[str, Any]
) -> None:
    first = _generate(sqlite_stack, lora_run["id"])
    body = first.json()
    completions = _completions(first)
    assert len(completions) == 2
    assert all(text.startswith(LEARNED) for text in completions), f"the adapter's answer was not learned: {completions}"
    assert body["model_kind"] == "adapter" and body["variant"] == "run"
    # The training template frames the prompt; only the continuation comes back.
    assert (
        body["completions"][0]["prompt"]
        == "Human: Sort the numbers in ascending order.\n17, 96, 12, 79, 32\n\nAssistant: "
    )
    assert body["completions"][1]["prompt"] == "Human: Copy the input exactly.\n\nAssistant: "
    for item in body["completions"]:
        assert not item["completion"].startswith("Human:")
        assert 0 < item["completion_tokens"] <= 24
        assert item["finish_reason"] in ("stop", "length")

    again = _generate(sqlite_stack, lora_run["id"])
    assert _completions(again) == completions, "greedy decoding gave a different answer the second time"
    assert again.json()["cached"] is True, "the worker loaded the same model again instead of keeping it"

    base = _generate(sqlite_stack, lora_run["id"], base=True)
    assert base.json()["model_kind"] == "base"
    assert not any(text.startswith(LEARNED) for text in _completions(base)), "the base model knows the answer too"

    # Sampling with a seed repeats too; each prompt starts from the seed, so the order of prompts does not matter.
    sampled = _generate(sqlite_stack, lora_run["id"], do_sample=True, temperature=0.9, top_p=0.95, seed=7)
    resampled = _generate(sqlite_stack, lora_run["id"], do_sample=True, temperature=0.9, top_p=0.95, seed=7)
    assert _completions(sampled) == _completions(resampled)


def test_generate_refused_until_the_run_has_a_model(sqlite_stack: Stack, tiny_assets: Any) -> None:
    broken = sqlite_stack.data_dir / "inference-data" / "no_columns.jsonl"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text(json.dumps({"question": "?", "answer": "!"}) + "\n")
    with sqlite_stack.client() as client:
        failed = client.post("/api/runs", json=tiny_spec(tiny_assets, "infer-broken", dataset={"source": str(broken)}))
        assert failed.status_code == 201, failed.text
        waiting = client.post("/api/runs", json=tiny_spec(tiny_assets, "infer-waiting", training={"max_steps": 500}))
        assert waiting.status_code == 201, waiting.text
        waiting_id = waiting.json()["id"]
        try:
            early = client.post(f"/api/runs/{waiting_id}/generate", json={"prompts": ["hi"]})
            assert early.status_code == 409, early.text
            assert any(word in early.json()["detail"] for word in ("queued", "running")), early.json()
            page = client.get(f"/runs/{waiting_id}")
            assert 'id="try-it" data-ready="false"' in page.text
            merge = client.post(f"/api/runs/{waiting_id}/merge")
            assert merge.status_code == 409, merge.text
        finally:
            client.post(f"/api/runs/{waiting_id}/cancel")

        run = sqlite_stack.wait_for_run(failed.json()["id"])
        assert run["status"] == "failed"
        refused = client.post(f"/api/runs/{run['id']}/generate", json={"prompts": ["hi"]})
        assert refused.status_code == 409
        assert "failed" in refused.json()["detail"]
        missing = client.post("/api/runs/999999/generate", json={"prompts": ["hi"]})
        assert missing.status_code == 404
    sqlite_stack.wait_for_run(waiting_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 100_000}, "max_new_tokens"),
        ({"temperature": 0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"prompts": []}, "prompts"),
        ({"prompts": [""]}, "prompts.0.instruction"),
        ({"prompts": [{"input": "only input"}]}, "prompts.0.instruction"),
        ({"base": True, "merged": True}, "merged"),
        ({"max_tokens": 5}, "max_tokens"),
    ],
)
def test_bad_generation_settings_are_422_naming_the_field(
    sqlite_stack: Stack, lora_run: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    with sqlite_stack.client() as client:
        answer = client.post(f"/api/runs/{lora_run['id']}/generate", json={"prompts": ["hi"], **body})
    assert answer.status_code == 422, answer.text
    assert field in [error["field"] for error in answer.json()["detail"]], answer.json()


def test_try_it_and_merge_in_a_browser(sqlite_stack: Stack, lora_run: dict[str, Any], browser_page: Any) -> None:
    """The page's htmx: Generate swaps the answer in; Merge shows "Merging…", then the path, and offers the
    merged model in the Try it box without a reload."""
    page = browser_page
    run_id = lora_run["id"]
    page.goto(f"{sqlite_stack.base_url}/runs/{run_id}")
    page.fill("#try-it textarea[name=instruction]", "Copy the input exactly.")
    page.fill("#try-it textarea[name=input]", "a red bird")
    page.click("#try-it button[type=submit]")
    completion = page.locator("#try-it pre.try-completion")
    completion.wait_for()
    assert completion.inner_text().startswith(LEARNED)
    assert page.input_value("#try-it textarea[name=input]") == "a red bird", "the form lost what was typed"

    page.check("#try-it input[name=variant][value=base]")
    page.click("#try-it button[type=submit]")
    page.wait_for_selector('#try-it .try-result[data-variant="base"]')
    assert not page.locator("#try-it pre.try-completion").inner_text().startswith(LEARNED)

    page.fill("#try-it input[name=max_new_tokens]", "0")
    page.evaluate("document.querySelector('#try-it form').noValidate = true")
    page.click("#try-it button[type=submit]")
    page.wait_for_selector("#try-it .has-error .error")
    assert "greater than or equal to 1" in page.locator("#try-it .has-error .error").inner_text()
    page.fill("#try-it input[name=max_new_tokens]", "24")

    assert page.locator("#try-it input[name=variant][value=merged]").count() == 0
    page.click("#merge-panel button")
    page.wait_for_selector("#merge-panel code.merged-dir", timeout=240_000)
    assert page.locator("#merge-panel code.merged-dir").inner_text().endswith("/merged")
    page.check("#try-it input[name=variant][value=merged]")
    page.click("#try-it button[type=submit]")
    page.wait_for_selector('#try-it .try-result[data-variant="merged"]')
    assert page.locator("#try-it pre.try-completion").inner_text().startswith(LEARNED)


def test_merge_saves_a_plain_model_that_answers_like_the_adapter(
    sqlite_stack: Stack, lora_run: dict[str, Any], merged_lora: dict[str, Any]
) -> None:
    merged_dir = Path(merged_lora["merged_dir"])
    assert merged_dir == Path(lora_run["artifact_dir"]).parent / "merged"
    assert (merged_dir / "model.safetensors").is_file()
    assert (merged_dir / "config.json").is_file() and (merged_dir / "tokenizer.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    assert (
        merged_lora["total_params"]
        == merged_lora["base_params"]
        == lora_run["total_params"] - lora_run["trainable_params"]
    )

    with sqlite_stack.client() as client:
        run = client.get(f"/api/runs/{lora_run['id']}").json()
        assert run["details"]["merged_dir"] == str(merged_dir)
        again = client.post(f"/api/runs/{lora_run['id']}/merge")
        assert again.status_code == 200 and again.json()["merged_dir"] == str(merged_dir)

    merged = _generate(sqlite_stack, lora_run["id"], merged=True)
    assert merged.json()["model_kind"] == "merged"
    assert _completions(merged) == _completions(_generate(sqlite_stack, lora_run["id"]))


def test_merged_lora_adds_no_parameters_and_gives_the_same_logits(
    tiny_assets: Any, lora_run: dict[str, Any], merged_lora: dict[str, Any]
) -> None:
    """The course: W0 + BA folds into one matrix, so a merged LoRA costs no extra inference time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora_run["artifact_dir"])
    text = "Human: Sort the numbers in ascending order.\n17, 96, 12, 79, 32\n\nAssistant: 12, 17"
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)

    def load_base() -> Any:
        return AutoModelForCausalLM.from_pretrained(tiny_assets.model_dir, dtype=torch.float32).eval()

    base = load_base()
    base_params = base.num_parameters()
    with torch.no_grad():
        base_logits = base(**inputs).logits
    adapted = PeftModel.from_pretrained(load_base(), lora_run["artifact_dir"]).eval()
    with torch.no_grad():
        adapter_logits = adapted(**inputs).logits
    assert sum(p.numel() for p in adapted.parameters()) == base_params + lora_run["trainable_params"]
    assert (adapter_logits - base_logits).abs().max() > 1e-3, "the trained adapter does not change the logits"

    merged = PeftModel.from_pretrained(load_base(), lora_run["artifact_dir"]).merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
    assert merged.num_parameters() == base_params
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=0)

    # The model the worker merged and saved loads without peft and agrees as well.
    saved = AutoModelForCausalLM.from_pretrained(merged_lora["merged_dir"], dtype=torch.float32).eval()
    with torch.no_grad():
        saved_logits = saved(**inputs).logits
    assert saved.num_parameters() == base_params
    torch.testing.assert_close(saved_logits, adapter_logits, atol=1e-4, rtol=0)


def test_try_it_box_renders_the_completion(sqlite_stack: Stack, lora_run: dict[str, Any]) -> None:
    run_id = lora_run["id"]
    expected = _completions(_generate(sqlite_stack, run_id, prompts=[PROMPTS[0]]))[0]
    with sqlite_stack.client() as client:
        page = client.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert 'id="try-it" data-ready="true"' in page.text
        assert f'hx-post="/runs/{run_id}/try"' in page.text
        assert 'id="merge-panel"' in page.text

        form = {
            "instruction": PROMPTS[0]["instruction"],  # type: ignore[index]
            "input": PROMPTS[0]["input"],  # type: ignore[index]
            "variant": "run",
            "max_new_tokens": "24",
            "temperature": "1.0",
            "top_p": "1.0",
            "seed": "",
        }
        answer = client.post(f"/runs/{run_id}/try", data=form, headers={"HX-Request": "true"})
        assert answer.status_code == 200, answer.text
        assert answer.text.lstrip().startswith('<section class="try-it" id="try-it"'), "not the try_it block"
        assert "<html" not in answer.text
        assert f'<pre class="try-completion">{html.escape(expected)}</pre>' in answer.text

        bad = client.post(f"/runs/{run_id}/try", data={**form, "max_new_tokens": "0"}, headers={"HX-Request": "true"})
        assert bad.status_code == 422
        assert "greater than or equal to 1" in bad.text
        assert 'class="try-completion"' not in bad.text


def test_full_runs_generate_with_their_model_and_cannot_merge(sqlite_stack: Stack, tiny_assets: Any) -> None:
    spec = tiny_spec(
        tiny_assets,
        "infer-full",
        method={"name": "full"},
        dataset={"eval_fraction": 0, "max_samples": 100},
        training={"max_steps": 10, "learning_rate": 1e-3},
    )
    with sqlite_stack.client() as client:
        created = client.post("/api/runs", json=spec)
        assert created.status_code == 201, created.text
        run = sqlite_stack.wait_for_run(created.json()["id"])
        assert run["status"] == "succeeded", run["error"]
        answer = client.post(f"/api/runs/{run['id']}/generate", json={"prompts": ["Copy the input exactly."]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_kind"] == "full"
        merge = client.post(f"/api/runs/{run['id']}/merge")
        assert merge.status_code == 409
        assert "full fine-tune" in merge.json()["detail"]
        merged = client.post(f"/api/runs/{run['id']}/generate", json={"prompts": ["hi"], "merged": True})
        assert merged.status_code == 409
        assert "no merged model" in merged.json()["detail"]
