"""Exports: each zip downloads, loads with plain transformers / peft in a fresh process and reproduces the run's
final logits (probe.safetensors); downloads stay inside the run's folder; a push reaches a local hub stand-in
with the user's token, which is stored nowhere."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.stack import ROOT, Stack
from tests.conftest import tiny_spec
from tests.hub_standin import HubStandIn

TRAINING = {"max_steps": 5, "eval_steps": 5, "eval_generation_samples": 0, "batch_size": 8, "max_length": 96}
HUB_TOKEN = "hf_standin_secret_token_0123456789"

#: Run in a fresh interpreter: load the export with plain transformers/peft, feed the run's probe input.
PROBE_CHECK = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
kind, base, folder, probe_file = sys.argv[1:5]
probe = load_file(probe_file)
def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=probe["input_ids"]).logits
if kind == "adapter":
    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
else:
    model = AutoModelForCausalLM.from_pretrained(folder)
base_logits = logits(AutoModelForCausalLM.from_pretrained(base))
print(json.dumps({
    "diff": (logits(model) - probe["logits"]).abs().max().item(),
    "base_diff": (base_logits - probe["logits"]).abs().max().item(),
}))
"""


def _client(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=360)


@pytest.fixture(scope="module")
def trained(sqlite_stack: Stack, tiny_assets: Any) -> dict[str, dict[str, Any]]:
    specs = {
        "lora": tiny_spec(tiny_assets, "export-lora", training=TRAINING, dataset={"max_samples": 64}),
        "full": tiny_spec(
            tiny_assets,
            "export-full",
            method={"name": "full"},
            training={**TRAINING, "learning_rate": 1e-3},
            dataset={"max_samples": 64},
        ),
    }
    with _client(sqlite_stack) as client:
        ids = {key: client.post("/api/runs", json=spec).json()["id"] for key, spec in specs.items()}
    runs = {key: sqlite_stack.wait_for_run(run_id, timeout=420) for key, run_id in ids.items()}
    for key, run in runs.items():
        assert run["status"] == "succeeded", (key, run["error"])
    return runs


def _download(stack: Stack, run_id: int, kind: str, into: Path) -> tuple[Path, list[str], str]:
    with _client(stack) as client:
        answer = client.get(f"/api/runs/{run_id}/export/{kind}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert f"run-{run_id}" in answer.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    archive.extractall(into)
    return into, archive.namelist(), archive.read("README.md").decode()


def _probe_check(kind: str, base: str, folder: Path, run: dict[str, Any], stack: Stack) -> dict[str, float]:
    probe = stack.data_dir / "runs" / f"run-{run['id']}" / "probe.safetensors"
    assert probe.is_file(), "the run recorded no probe logits"
    result = subprocess.run(
        [sys.executable, "-c", PROBE_CHECK, kind, base, str(folder), str(probe)],
        cwd=ROOT,
        env={**stack.env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_adapter_export_loads_in_plain_peft_and_reproduces_the_logits(
    sqlite_stack: Stack, tiny_assets: Any, trained: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    run = trained["lora"]
    folder, names, card = _download(sqlite_stack, run["id"], "adapter", tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(names)
    assert not any(name.startswith(("checkpoint", "..", "/")) for name in names)
    for text in ("export-lora", "tunedeck 0.1.0", "final train loss", str(tiny_assets.dataset_path), "PeftModel"):
        assert text in card, text
    assert f"{run['final_train_loss']:.4f}" in card and 'library_name: "peft"' in card

    check = _probe_check("adapter", str(tiny_assets.model_dir), folder, run, sqlite_stack)
    assert check["diff"] < 1e-4, check
    assert check["base_diff"] > 100 * max(check["diff"], 1e-7), "the adapter changes nothing: the test proves nothing"


def test_full_model_export_reproduces_the_logits(
    sqlite_stack: Stack, tiny_assets: Any, trained: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    run = trained["full"]
    folder, names, card = _download(sqlite_stack, run["id"], "model", tmp_path / "model")
    assert {"config.json", "model.safetensors", "README.md"} <= set(names)
    assert "a full fine-tune of" in card
    check = _probe_check("model", str(tiny_assets.model_dir), folder, run, sqlite_stack)
    assert check["diff"] < 1e-4 and check["base_diff"] > 1e-3, check


def test_exports_are_refused_with_reasons_and_confined_to_the_run_folder(
    sqlite_stack: Stack, trained: dict[str, dict[str, Any]]
) -> None:
    lora, full = trained["lora"], trained["full"]
    adapter_dir = Path(lora["artifact_dir"])
    outside = sqlite_stack.data_dir / "outside-secret.txt"
    outside.write_text("not yours")
    (adapter_dir / "leak.txt").symlink_to(outside)
    (adapter_dir / "leak-dir").symlink_to("/etc", target_is_directory=True)
    try:
        with _client(sqlite_stack) as client:
            answer = client.get(f"/api/runs/{lora['id']}/export/adapter")
            no_adapter = client.get(f"/api/runs/{full['id']}/export/adapter")
            no_model = client.get(f"/api/runs/{lora['id']}/export/model")
            no_merge = client.get(f"/api/runs/{full['id']}/export/merged")
            unknown = client.get(f"/api/runs/{lora['id']}/export/everything")
            missing = client.get("/api/runs/999999/export/adapter")
    finally:
        (adapter_dir / "leak.txt").unlink()
        (adapter_dir / "leak-dir").unlink()
    names = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    assert "leak.txt" not in names and not any(name.startswith("leak-dir") for name in names)
    assert no_adapter.status_code == 409 and "full fine-tune" in no_adapter.json()["detail"]
    assert no_model.status_code == 409 and "merge" in no_model.json()["detail"]
    assert no_merge.status_code == 409
    assert unknown.status_code == 422 and missing.status_code == 404


def test_merged_export_reproduces_the_logits(
    sqlite_stack: Stack, tiny_assets: Any, trained: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    run = trained["lora"]
    with _client(sqlite_stack) as client:
        before = client.get(f"/api/runs/{run['id']}/export/merged")
        assert before.status_code == 409 and "merge it first" in before.json()["detail"]
        merge = client.post(f"/api/runs/{run['id']}/merge")
        assert merge.status_code in (200, 202), merge.text
        deadline = time.monotonic() + 400
        state = merge.json()
        while state.get("status") not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(1)
            state = client.get(f"/api/runs/{run['id']}/merge").json()
    assert state.get("status") == "succeeded", state
    folder, names, card = _download(sqlite_stack, run["id"], "merged", tmp_path / "merged")
    assert {"config.json", "model.safetensors", "README.md"} <= set(names)
    assert "adapter_config.json" not in names and "merged in" in card
    check = _probe_check("merged", str(tiny_assets.model_dir), folder, run, sqlite_stack)
    assert check["diff"] < 1e-4, check


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    standin = HubStandIn(token=HUB_TOKEN).start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture(scope="module")
def hub_server(sqlite_stack: Stack, hub: HubStandIn) -> Iterator[Stack]:
    """A second server on the same data, pointed at the hub stand-in (and allowed to reach it)."""
    env = {k: v for k, v in sqlite_stack.env.items() if k != "HF_HUB_OFFLINE"}
    side = Stack(data_dir=sqlite_stack.data_dir, env={**env, "TUNEDECK_HUB_ENDPOINT": hub.url})
    try:
        side.start_server()
        yield side
    finally:
        side.stop()


def test_push_to_the_hub_uses_the_token_once_and_stores_it_nowhere(
    hub_server: Stack, hub: HubStandIn, trained: dict[str, dict[str, Any]]
) -> None:
    run = trained["lora"]
    adapter_dir = Path(run["artifact_dir"])
    with _client(hub_server) as client:
        pushed = client.post(
            f"/api/runs/{run['id']}/push", json={"repo_id": "me/tiny-lora", "token": HUB_TOKEN, "kind": "adapter"}
        )
        refused = client.post(
            f"/api/runs/{run['id']}/push", json={"repo_id": "me/tiny-lora", "token": "hf_wrong_token_value_987"}
        )
        no_model = client.post(
            f"/api/runs/{run['id']}/push", json={"repo_id": "me/x", "token": HUB_TOKEN, "kind": "model"}
        )
        page = client.post(f"/runs/{run['id']}/push", data={"repo_id": "me/from-page", "token": HUB_TOKEN})
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["commit_url"].startswith(hub.url + "/me/tiny-lora/commit/")
    files = hub.repos["me/tiny-lora"]["files"]
    assert files["adapter_model.safetensors"] == (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert b"export-lora" in files["README.md"] and "adapter_config.json" in files
    assert hub.repos["me/tiny-lora"]["create"]["visibility"] == "private"
    assert refused.status_code == 422 and "refused the token" in refused.json()["detail"]
    assert "hf_wrong_token_value_987" not in refused.text
    assert no_model.status_code == 409
    assert page.status_code == 200 and "pushed" in page.text and "me/from-page" in hub.repos

    for path in hub_server.data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 200 * 2**20:
            assert HUB_TOKEN.encode() not in path.read_bytes(), f"the token was written to {path}"


@pytest.fixture(scope="module")
def unreachable_hub_server(sqlite_stack: Stack) -> Iterator[Stack]:
    """A server on the same data whose hub endpoint is a port nobody listens on (the hub is unreachable)."""
    from harness.stack import free_port

    env = {k: v for k, v in sqlite_stack.env.items() if k != "HF_HUB_OFFLINE"}
    side = Stack(
        data_dir=sqlite_stack.data_dir, env={**env, "TUNEDECK_HUB_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    )
    try:
        side.start_server()
        yield side
    finally:
        side.stop()


def test_push_while_the_hub_is_unreachable_is_a_502_with_the_reason(
    unreachable_hub_server: Stack, trained: dict[str, dict[str, Any]]
) -> None:
    """Issue 16: an unreachable hub raised httpx.ConnectError through the route (a 500)."""
    run = trained["lora"]
    with _client(unreachable_hub_server) as client:
        api = client.post(f"/api/runs/{run['id']}/push", json={"repo_id": "me/tiny-lora", "token": HUB_TOKEN})
        page = client.post(f"/runs/{run['id']}/push", data={"repo_id": "me/tiny-lora", "token": HUB_TOKEN})
    assert api.status_code == 502, api.text
    assert "could not reach the hub" in api.json()["detail"] and "push again" in api.json()["detail"]
    assert HUB_TOKEN not in api.text
    assert page.status_code == 422 and "could not reach the hub" in page.text  # the panel shows it (htmx swaps 4xx)


#: What an <img src=".../export/model"> on another site's page sends (no-token mode has nothing else to stop it).
IMG_FROM_ANOTHER_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}


def test_exports_are_built_once_and_never_for_another_site(
    sqlite_stack: Stack, trained: dict[str, dict[str, Any]]
) -> None:
    """Issue 16: six cross-site GETs of an export built six temporary zips at once. Now a cross-site request is
    refused before anything is built, and simultaneous downloads share one archive, built once."""
    from concurrent.futures import ThreadPoolExecutor

    run = trained["full"]
    base = sqlite_stack.data_dir / "runs" / f"run-{run['id']}"
    cache = base / ".exports"

    def archives() -> list[Path]:
        return sorted([*cache.glob("*"), *base.glob(".export-*")]) if base.exists() else []

    for leftover in archives():
        leftover.unlink()
    url = f"/api/runs/{run['id']}/export/model"
    with _client(sqlite_stack) as client:
        for headers in (IMG_FROM_ANOTHER_SITE, {"Origin": "http://evil.example"}, {"Referer": "http://evil.example/"}):
            refused = client.get(url, headers=headers)
            assert refused.status_code == 403 and "cross-site" in refused.json()["detail"], refused.text
        assert archives() == [], "a refused request built an archive"

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: client.get(url, headers={"Sec-Fetch-Site": "same-origin"}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.content for a in answers}) == 1, "the six downloads differ"
    built = archives()
    assert len(built) == 1 and built[0].suffix == ".zip", built  # one archive, no partial or temporary ones
    assert "config.json" in zipfile.ZipFile(io.BytesIO(answers[0].content)).namelist()
