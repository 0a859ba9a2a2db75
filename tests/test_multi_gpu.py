"""Runs on several GPUs of one machine (training.num_gpus > 1): placement, launch with torchrun, reporting from rank 0,
cancellation and cleanup of every process.

There is no GPU here: a worker started with `--multi-gpu` declares two fake GPUs (TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB,
TUNEDECK_WORKER_FAKE_GPU_COUNT) and trains a run on two CPU processes that talk over gloo, which is the same code path
a GPU machine takes with NCCL (torchrun, DDP in the Trainer, rank 0 reporting and saving). FSDP needs CUDA: on this
worker it fails the run with the reason. The stack is SQLite and the embedded broker, as on one machine.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from harness.stack import ROOT, Stack, stack_env
from runspec import PlacementSpec, RunSpec
from tests.conftest import tiny_spec
from tunedeck_jobs import placement as p

GIB = 2**30
#: Each training step of the multi-GPU worker sleeps this long (in every process), so a cancel lands mid-run.
STEP_DELAY = "0.3"
TRAINING = {"max_steps": 8, "eval_steps": 4, "save_steps": 4, "eval_generation_samples": 2, "num_gpus": 2}


# -- placement rules (pure) ------------------------------------------------------------------------------------


def _estimate(gib: float) -> dict[str, int]:
    return {"total_peak_bytes": int(gib * GIB)}


def _offer(name: str, gib: float, count: int = 1, multi: bool = False) -> p.Offer:
    return p.Offer(name=name, capacity_bytes=int(gib * GIB), gpu_name="NVIDIA A100", gpu_count=count, multi_gpu=multi)


def test_multi_gpu_runs_go_to_multi_gpu_workers_with_enough_gpus_and_memory() -> None:
    assert p.training_queues("m@box", 80 * GIB, "NVIDIA A100", multi_gpu_count=4) == [
        "tunedeck.training.worker.m@box",
        "tunedeck.training.gpus-2",
        "tunedeck.training.gpus-3",
        "tunedeck.training.gpus-4",
    ]
    singles = [_offer("a@x", 80, count=4), _offer("b@y", 24)]
    waiting = p.choose(PlacementSpec(), _estimate(5), singles, 0.1, num_gpus=2)
    assert waiting.queue == "tunedeck.training.gpus-2"
    assert waiting.wait_reason and "needs 2 GPUs on one machine" in waiting.wait_reason
    assert "no live worker offers more than 1" in waiting.wait_reason and "--multi-gpu" in waiting.wait_reason

    live = [*singles, _offer("m2@z", 80, count=2, multi=True), _offer("m4@w", 40, count=4, multi=True)]
    assert p.choose(PlacementSpec(), _estimate(5), live, 0.1, num_gpus=2) == p.Placement(
        "tunedeck.training.gpus-2", 5, None, int(5 * GIB * 1.1)
    )
    # Only the 4-GPU worker has 4; 8 GPUs nobody has.
    assert p.choose(PlacementSpec(), _estimate(5), live, 0.1, num_gpus=4).queue == "tunedeck.training.gpus-4"
    eight = p.choose(PlacementSpec(), _estimate(5), live, 0.1, num_gpus=8)
    assert eight.wait_reason and "no live worker offers more than 4" in eight.wait_reason
    # 50 GiB per GPU: of the workers on gpus-2 only the 80 GiB one fits, so it goes to that worker's own queue.
    assert p.choose(PlacementSpec(), _estimate(50), live, 0.1, num_gpus=2).queue == "tunedeck.training.worker.m2@z"
    too_big = p.choose(PlacementSpec(), _estimate(100), live, 0.1, num_gpus=2)
    assert too_big.queue == "tunedeck.training.gpus-2" and "on each of its 2 GPUs" in (too_big.wait_reason or "")
    # A pin to a single-GPU worker can never be honoured: refused at submit.
    with pytest.raises(p.PlacementRefused) as refused:
        p.choose(PlacementSpec(worker="a@x"), _estimate(5), live, 0.1, num_gpus=2)
    assert refused.value.field == "placement.worker" and "offers 1 GPU(s)" in refused.value.message
    pinned = p.choose(PlacementSpec(worker="m4@w"), _estimate(5), live, 0.1, num_gpus=4)
    assert pinned.queue == "tunedeck.training.worker.m4@w" and pinned.wait_reason is None
    # Single-GPU runs never go to a multi-GPU worker's queues.
    single = p.choose(PlacementSpec(), _estimate(5), live, 0.1)
    assert single.queue.startswith("tunedeck.training.mem-") and not any(o.consumes_class(6) for o in live[2:])
    only_multi = p.choose(PlacementSpec(), _estimate(5), live[2:], 0.1)
    assert only_multi.queue == "tunedeck.training" and "only multi-GPU workers" in (only_multi.wait_reason or "")


def test_the_spec_checks_num_gpus_and_the_strategy() -> None:
    one = RunSpec.model_validate({"name": "x", "method": {"name": "full"}})
    two = RunSpec.model_validate({"name": "x", "method": {"name": "full"}, "training": {"num_gpus": 2}})
    assert two.training.distributed == "ddp"
    assert one.spec_hash() != two.spec_hash()  # twice the effective batch: another run
    fsdp = {"name": "x", "method": {"name": "full"}, "training": {"num_gpus": 4, "distributed": "fsdp"}}
    assert RunSpec.model_validate(fsdp).training.distributed == "fsdp"
    for bad in ({**fsdp, "training": {"distributed": "fsdp"}}, {**fsdp, "method": {"name": "lora"}}):
        with pytest.raises(ValidationError) as refused:
            RunSpec.model_validate(bad)
        assert [e["loc"] for e in refused.value.errors()] == [("training", "distributed")]


def test_the_memory_estimate_is_per_gpu() -> None:
    """DDP: every GPU holds what one GPU would, plus DDP's gradient buckets; FSDP: sharded states, 1/N each."""
    from transformers import AutoConfig

    from runspec.memory.estimate import estimate_memory
    from worker.training.memory_profile import memory_profile

    config = AutoConfig.for_model(
        "llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000
    )

    def estimate(**training: Any) -> Any:
        spec = RunSpec.model_validate({"name": "x", "model": "m", "method": {"name": "full"}, "training": training})
        return estimate_memory(spec, memory_profile(config, spec.method.resolved(spec.training)))

    one, ddp, fsdp = estimate(), estimate(num_gpus=4), estimate(num_gpus=4, distributed="fsdp")
    grads = one.line("gradients").bytes
    assert ddp.total_peak_bytes > one.total_peak_bytes
    assert ddp.line("ddp_buckets").bytes == grads and ddp.line("weights").bytes == one.line("weights").bytes
    assert fsdp.line("optimizer").bytes == one.line("optimizer").bytes // 4
    assert fsdp.line("gradients").bytes == grads // 4
    assert one.line("weights").bytes // 4 < fsdp.line("weights").bytes < one.line("weights").bytes
    assert fsdp.total_peak_bytes < one.total_peak_bytes
    assert any("FSDP" in note for note in fsdp.notes) and any("DDP" in note for note in ddp.notes)


def test_a_training_process_checks_it_runs_as_the_spec_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchrun's processes (or FSDP without CUDA) training refuses to start, before loading anything."""
    from worker.training.distributed import FSDP_NEEDS_CUDA, check_processes
    from worker.training.errors import TrainingError

    two = RunSpec.model_validate({"name": "x", "training": {"num_gpus": 2}})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(TrainingError, match="runs in 1 process"):
        check_processes(two)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_processes(two)
    fsdp = RunSpec.model_validate(
        {"name": "x", "method": {"name": "full"}, "training": {"num_gpus": 2, "distributed": "fsdp"}}
    )
    with pytest.raises(TrainingError) as refused:
        check_processes(fsdp)  # this machine has no CUDA
    assert str(refused.value) == FSDP_NEEDS_CUDA


def test_a_multi_gpu_worker_needs_two_gpus(tmp_path: Path) -> None:
    env = stack_env(tmp_path, TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB="1")  # one fake GPU
    answer = subprocess.run(
        [sys.executable, "-m", "tunedeck_cli.main", "worker", "--queues", "training", "--multi-gpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 2, answer.stdout + answer.stderr
    assert "--multi-gpu" in answer.stderr and "has 1 GPU" in answer.stderr


# -- a real stack ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    """Server, service worker and a single-GPU training worker (a fake 2 GiB GPU); the multi-GPU worker joins in
    the test, so a run first waits for it."""
    data_dir = tmp_path_factory.mktemp("multi-gpu-stack")
    stack = Stack(data_dir=data_dir, env=stack_env(data_dir, TUNEDECK_HEARTBEAT_SECONDS="1"))
    try:
        stack.start_server()
        stack.start_worker("service")
        stack.start_worker("training", TUNEDECK_WORKER_NAME="single", TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB="2")
        yield stack
    finally:
        stack.stop()


def _wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _live(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {w["name"].split("@")[0]: w for w in client.get("/api/workers").json() if w["state"] == "live"}


def _run(client: httpx.Client, run_id: int) -> dict[str, Any]:
    return client.get(f"/api/runs/{run_id}").json()


def _training_processes(stack: Stack, run_id: int) -> list[int]:
    """Live torchrun and rank processes of this stack's run (matched by command line and data directory)."""
    found = []
    marker = f"worker.distributed_train\x00{run_id}\x00".encode()
    data_dir = f"TUNEDECK_DATA_DIR={stack.data_dir}\x00".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes() and data_dir in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_two_process_run_waits_for_its_worker_reports_from_rank_0_cancels_resumes_and_dies_with_its_task(
    stack: Stack, tiny_assets: Any
) -> None:
    with stack.client() as client:
        _wait_for("the service and single-GPU workers", lambda: {"service", "single"} <= set(_live(client)))

        form = client.get("/runs/new").text
        assert 'name="training.num_gpus"' in form and 'name="training.distributed"' in form
        # Bad input: the field is named.
        for training, field in (({"num_gpus": 0}, "training.num_gpus"), ({"num_gpus": 9}, "training.num_gpus")):
            answer = client.post("/api/runs", json=tiny_spec(tiny_assets, "bad", training=training))
            assert answer.status_code == 422 and field in {e["field"] for e in answer.json()["detail"]}, answer.text
        lora_fsdp = tiny_spec(tiny_assets, "bad", training={"num_gpus": 2, "distributed": "fsdp"})
        answer = client.post("/api/runs", json=lora_fsdp)
        assert answer.status_code == 422, answer.text
        assert {e["field"] for e in answer.json()["detail"]} == {"training.distributed"}
        assert "full fine-tuning" in answer.text

        # Only a single-GPU worker is live: the run waits, with the reason, in a queue nobody consumes.
        waiting = client.post("/api/runs", json=tiny_spec(tiny_assets, "two", training=TRAINING)).json()
        assert waiting["status"] == "queued" and waiting["queue"] == "tunedeck.training.gpus-2", waiting
        assert "needs 2 GPUs on one machine; no live worker offers more than 1" in (waiting["wait_reason"] or "")
        assert "Waiting:" in client.get(f"/runs/{waiting['id']}").text
        time.sleep(2)
        assert _run(client, waiting["id"])["status"] == "queued"

        # A multi-GPU worker joins: it takes the run and trains it on two processes.
        stack.start_worker(
            "training",
            worker_args=("--multi-gpu",),
            TUNEDECK_WORKER_NAME="multi",
            TUNEDECK_WORKER_FAKE_GPU_MEMORY_GIB="2",
            TUNEDECK_WORKER_FAKE_GPU_COUNT="2",
            TUNEDECK_TEST_STEP_DELAY_SECONDS=STEP_DELAY,
        )
        multi = _wait_for("the multi-GPU worker", lambda: _live(client).get("multi"))
        assert multi["multi_gpu"] and multi["gpu_count"] == 2 and multi["concurrency"] == 1
        assert multi["roles"] == ["training"]
        assert set(multi["queues"]) == {"tunedeck.training.gpus-2", f"tunedeck.training.worker.{multi['name']}"}
        assert "multi-GPU: runs on up to 2 GPUs" in client.get("/workers").text

        run = stack.wait_for_run(waiting["id"], timeout=300)
        assert run["status"] == "succeeded", run["error"]
        assert run["worker"] == multi["name"] and run["step"] == 8
        assert run["details"]["distributed"] == {"processes": 2, "backend": "gloo", "strategy": "ddp"}
        lines = [line["message"] for line in client.get(f"/api/runs/{run['id']}/logs", params={"lines": 200}).json()]
        for step in range(1, 9):  # rank 0 alone reports: one loss line per step
            assert sum(line.startswith(f"step {step}/8 loss=") for line in lines) == 1, (step, lines)
        assert any("launching 2 training processes" in line for line in lines)
        loss = client.get(f"/api/runs/{run['id']}/metrics").json()["series"]["loss"]
        assert [point[0] for point in loss] == [float(step) for step in range(1, 9)]
        # The distributed sampler gives each of the 2 processes half the samples: an epoch is half as many steps
        # of 8 samples as on one process.
        epoch = client.get(f"/api/runs/{run['id']}/metrics").json()["series"]["epoch"][-1][1]
        assert epoch == pytest.approx(8 / math.ceil(math.ceil(run["details"]["train_samples"] / 2) / 8))
        page = client.get(f"/runs/{run['id']}").text
        assert 'id="run-distributed"' in page and "DDP over gloo" in page
        _check_adapter_reloads(stack, run, tiny_assets)

        # Cancel mid-run: every process stops at the same step, a checkpoint is kept, nothing is left running.
        long = client.post(
            "/api/runs", json=tiny_spec(tiny_assets, "cancel", training={**TRAINING, "max_steps": 24})
        ).json()
        _wait_for("two processes training", lambda: _run(client, long["id"])["step"] >= 2, timeout=180)
        assert len(_training_processes(stack, long["id"])) == 3  # torchrun and its two ranks
        assert client.post(f"/api/runs/{long['id']}/cancel").status_code == 200
        cancelled = stack.wait_for_run(long["id"], timeout=120)
        assert cancelled["status"] == "cancelled", cancelled["error"]
        stopped_at = cancelled["step"]
        assert stopped_at < 24
        checkpoint = stack.data_dir / "runs" / f"run-{long['id']}" / "checkpoints" / f"checkpoint-{stopped_at}"
        assert (checkpoint / "tunedeck-complete.json").is_file()
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {f.name for f in checkpoint.iterdir()}
        _wait_for("no process of the cancelled run", lambda: not _training_processes(stack, long["id"]), 30)

        # Resume: a second attempt continues from that checkpoint on two processes.
        assert client.post(f"/api/runs/{long['id']}/resume").status_code == 200
        resumed = stack.wait_for_run(long["id"], timeout=300)
        assert resumed["status"] == "succeeded" and resumed["attempt"] == 2, resumed["error"]
        assert resumed["step"] == 24 and resumed["details"]["resumed_from_step"] == stopped_at
        loss = client.get(f"/api/runs/{long['id']}/metrics").json()["series"]["loss"]
        assert [point[0] for point in loss] == [float(step) for step in range(1, 25)]

        # FSDP needs CUDA: on this (CPU) worker the run fails at start, with the reason.
        full_fsdp = tiny_spec(
            tiny_assets, "fsdp", method={"name": "full"}, training={**TRAINING, "distributed": "fsdp"}
        )
        fsdp = stack.wait_for_run(client.post("/api/runs", json=full_fsdp).json()["id"], timeout=180)
        assert fsdp["status"] == "failed" and "training.distributed=fsdp needs CUDA GPUs" in (fsdp["error"] or "")
        assert fsdp["worker"] == multi["name"]

        # The task's process killed mid-run: its processes go with it, the run fails as lost.
        doomed = client.post(
            "/api/runs", json=tiny_spec(tiny_assets, "killed", training={**TRAINING, "max_steps": 200})
        ).json()
        running = _wait_for("the run training", lambda: (r := _run(client, doomed["id"]))["step"] >= 1 and r, 180)
        assert len(_training_processes(stack, doomed["id"])) == 3
        os.kill(int(running["details"]["worker_pid"]), signal.SIGKILL)
        lost = stack.wait_for_run(doomed["id"], timeout=120)
        assert lost["status"] == "failed" and "worker lost" in (lost["error"] or ""), lost["error"]
        _wait_for("no process of the killed run", lambda: not _training_processes(stack, doomed["id"]), 60)


def _check_adapter_reloads(stack: Stack, run: dict[str, Any], tiny_assets: Any) -> None:
    """The saved adapter loads onto the base with plain peft and gives the logits rank 0 recorded at the end."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = stack.data_dir / "runs" / f"run-{run['id']}"
    probe = load_file(str(run_dir / "probe.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_assets.model_dir), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(input_ids=probe["input_ids"]).logits
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
        logits = model(input_ids=probe["input_ids"]).logits
    assert torch.allclose(logits, probe["logits"], atol=1e-4)
    assert not torch.allclose(base_logits, probe["logits"], atol=1e-4), "the adapter changes nothing"
