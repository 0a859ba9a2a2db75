"""Every fine-tuning method of the registry, proven by training (issue 3).

* In-process matrix: `worker.training.loop.train` trains each method on the tiny Bloom and Llama (and GPT-2 where
  peft supports the method on its Conv1D layers) for 30 steps; the loss falls, frozen parameters stay bit-identical
  (and equal the checkpoint on disk where the method keeps the base as it is), the recorded trainable count is
  peft's, and the saved adapter reloads with PeftModel.from_pretrained to the logits of the trained model.
* Through the real API and a real worker (sqlite_stack): every method is submitted once and trains; the form
  renders and submits every method's fields.
* Bad input: bounds (422 naming the field), target modules the model lacks (422 listing the names it has, and
  the same refusal from the worker when the submit-time check was skipped), methods an architecture cannot take,
  a paged optimizer on a CPU-only worker (a failed run with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.stack import Stack
from runspec import METHODS, RunSpec
from tests.conftest import tiny_spec
from tests.html import control_value, controls, field_error, fragment_root, parse
from tests.method_matrix import (
    check_base_weights_match_files,
    check_loss_fell,
    check_only_method_parameters_changed,
    check_recorded_counts,
    check_reload_gives_same_logits,
    run_in_process,
)

ARCH_FIXTURES = {"bloom": "tiny_assets", "llama": "tiny_llama", "gpt2": "tiny_gpt2"}
BOTH = ("bloom", "llama")
ALL = ("bloom", "llama", "gpt2")
COURSE_PROMPT = "下面是一段人与机器人的对话。"


@dataclass(frozen=True)
class Case:
    id: str
    method: dict[str, Any]
    learning_rate: float
    archs: tuple[str, ...] = BOTH
    #: The base weights stay exactly those of the checkpoint on disk (not full, QLoRA, PiSSA/OLoRA, trained biases).
    keeps_base: bool = True
    atol: float = 1e-5
    training: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("full", {"name": "full"}, 1e-3, ALL, keeps_base=False),
    Case("full-frozen-embeddings", {"name": "full", "freeze_embeddings": True}, 1e-3, ("llama",), keeps_base=False),
    Case("lora", {"name": "lora", "r": 8, "lora_alpha": 16}, 2e-2, ALL),
    Case(
        "lora-all-linear-rslora",
        {"name": "lora", "target_modules": ["all-linear"], "use_rslora": True},
        2e-2,
        ("bloom",),
    ),
    Case("lora-dora-bias", {"name": "lora", "use_dora": True, "bias": "all"}, 2e-2, ("bloom",), keeps_base=False),
    # PiSSA/OLoRA move the principal part of the weight into the adapter: the saved adapter is converted back to a
    # plain LoRA on the original base, so reloading it checks the conversion (to float rounding).
    Case("lora-pissa", {"name": "lora", "init_lora_weights": "pissa"}, 5e-3, ALL, keeps_base=False, atol=1e-4),
    Case("lora-olora", {"name": "lora", "init_lora_weights": "olora"}, 5e-3, ("llama",), keeps_base=False, atol=1e-4),
    Case("qlora-nf4", {"name": "qlora", "r": 8}, 2e-2, keeps_base=False),
    Case(
        "qlora-fp4-single-quant",
        {"name": "qlora", "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
        2e-2,
        ("bloom",),
        keeps_base=False,
        training={"optim": "adamw_8bit"},
    ),
    Case("prompt_tuning", {"name": "prompt_tuning", "num_virtual_tokens": 8}, 1e-1, ALL),
    Case(
        "prompt_tuning-text",
        {"name": "prompt_tuning", "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": COURSE_PROMPT},
        1e-1,
        ("llama",),
    ),
    Case("prefix_tuning", {"name": "prefix_tuning", "num_virtual_tokens": 8, "encoder_hidden_size": 32}, 1e-2, ALL),
    Case("p_tuning-mlp", {"name": "p_tuning", "encoder_hidden_size": 32}, 1e-2, ALL),
    Case("p_tuning-lstm", {"name": "p_tuning", "encoder_reparameterization_type": "LSTM"}, 1e-2, ("bloom",)),
    Case("p_tuning_v2", {"name": "p_tuning_v2", "num_virtual_tokens": 8}, 1e-1, ALL),
    Case("ia3", {"name": "ia3"}, 1e-1, ALL),
    Case("adalora", {"name": "adalora", "init_r": 8, "target_r": 4, "tinit": 5, "tfinal": 5, "deltaT": 2}, 5e-3, ALL),
    Case("loha", {"name": "loha", "r": 4}, 2e-2),
    Case("lokr", {"name": "lokr", "r": 4}, 5e-2),
    Case("vera", {"name": "vera", "r": 64}, 1e-1, ALL),
    Case("oft", {"name": "oft", "oft_block_size": 16}, 2e-2),
    # Gradient checkpointing (non-reentrant, turned on by the Trainer) with an adapter, a 4-bit base, a soft prompt.
    # (Prefix tuning and P-Tuning v2 refuse it: see test_prefix_methods_refuse_gradient_checkpointing.)
    Case("lora-checkpointing", {"name": "lora"}, 2e-2, ("bloom",), training={"gradient_checkpointing": True}),
    Case(
        "qlora-checkpointing",
        {"name": "qlora"},
        2e-2,
        ("llama",),
        keeps_base=False,
        training={"gradient_checkpointing": True},
    ),
    Case(
        "prompt_tuning-checkpointing",
        {"name": "prompt_tuning"},
        1e-1,
        ("llama",),
        training={"gradient_checkpointing": True},
    ),
]

MATRIX = [pytest.param(case, arch, id=f"{case.id}-{arch}") for case in CASES for arch in case.archs]
#: What peft cannot apply to GPT-2's Conv1D layers: refused with the reason, before any training.
GPT2_REFUSED = [
    pytest.param({"name": "loha"}, "Conv1D", id="loha"),
    pytest.param({"name": "lokr"}, "Conv1D", id="lokr"),
    pytest.param({"name": "oft"}, "Conv1D", id="oft"),
    pytest.param({"name": "lora", "init_lora_weights": "olora"}, "Conv1D", id="lora-olora"),
]


@pytest.fixture(scope="module")
def service_worker_ready(sqlite_stack: Stack, tiny_assets: Any, tiny_llama: Any, tiny_gpt2: Any) -> Stack:
    """The stack's service worker is up and has built each tiny architecture once (the submit-time method check
    waits only so long for it; a worker still starting would let a run through to the training's own check)."""
    with sqlite_stack.client() as client:
        client.timeout = httpx.Timeout(120)
        for assets in (tiny_assets, tiny_llama, tiny_gpt2):
            body = {"model": str(assets.model_dir), "method": {"name": "lora"}}
            for _ in range(3):
                answer = client.post("/api/models/inspect", json=body)
                if answer.status_code == 200:
                    break
            assert answer.status_code == 200, answer.text
        # Until a check is answered the server only takes a quick look at each submit: wait for an answer (a run
        # that slipped through meanwhile is cancelled while queued).
        refused = tiny_spec(tiny_assets, "warm-up", method={"name": "lora", "target_modules": ["no_such_layer"]})
        for _ in range(10):
            response = client.post("/api/runs", json=refused)
            if response.status_code == 422:
                break
            client.post(f"/api/runs/{response.json()['id']}/cancel")
        assert response.status_code == 422, response.text
    return sqlite_stack


def _assets(request: pytest.FixtureRequest, arch: str) -> Any:
    return request.getfixturevalue(ARCH_FIXTURES[arch])


def _matrix_spec(assets: Any, case: Case, name: str = "matrix") -> dict[str, Any]:
    return tiny_spec(
        assets,
        name,
        method=case.method,
        dataset={"eval_fraction": 0.05, "max_samples": 200},
        training={
            "max_steps": 30,
            "learning_rate": case.learning_rate,
            "batch_size": 8,
            "max_length": 64,
            "eval_steps": 15,
            "eval_generation_samples": 0,
            "save_steps": 1000,
            **case.training,
        },
    )


def test_every_registered_method_is_in_the_matrix() -> None:
    covered = {case.method["name"] for case in CASES}
    assert covered == set(METHODS), f"methods without a training test: {set(METHODS) - covered}"
    for name in METHODS:
        archs = {arch for case in CASES if case.method["name"] == name for arch in case.archs}
        assert {"bloom", "llama"} <= archs, f"{name} is not trained on both Bloom and Llama"


@pytest.mark.parametrize(("case", "arch"), MATRIX)
def test_method_trains(case: Case, arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    outcome = run_in_process(_matrix_spec(_assets(request, arch), case), tmp_path / "run")
    assert outcome.result.steps == 30 and not outcome.result.cancelled
    check_loss_fell(outcome)
    check_only_method_parameters_changed(outcome)
    if case.keeps_base:
        check_base_weights_match_files(outcome)
    check_recorded_counts(outcome)
    check_reload_gives_same_logits(outcome, atol=case.atol)
    artifact = outcome.result.artifact_dir
    assert (artifact / ("adapter_config.json" if outcome.spec.method.is_peft else "config.json")).is_file()


def test_adalora_reallocates_its_rank_budget(tiny_llama: Any, tmp_path: Path) -> None:
    """The Trainer callback runs peft's update_and_allocate: after tfinal the budget is fixed and recorded."""
    case = Case("adalora", {"name": "adalora", "init_r": 8, "target_r": 2, "tinit": 4, "tfinal": 6, "deltaT": 2}, 5e-3)
    outcome = run_in_process(_matrix_spec(tiny_llama, case), tmp_path / "run")
    config = outcome.observer.model.peft_config["default"]
    assert config.total_step == 30  # training.max_steps, filled in by the worker (the stored spec keeps None)
    assert outcome.spec.method.total_step is None  # type: ignore[union-attr]
    assert config.rank_pattern, "update_and_allocate never ran"
    kept = sum(int(sum(mask)) for mask in config.rank_pattern.values())
    assert kept <= 2 * len(config.rank_pattern), f"{kept} ranks kept, budget is target_r=2 per layer"


@pytest.mark.parametrize(("method", "reason"), GPT2_REFUSED)
def test_gpt2_refuses_what_peft_cannot_apply_to_conv1d(
    method: dict[str, Any], reason: str, tiny_gpt2: Any, tmp_path: Path
) -> None:
    from worker.training.method_fit import MethodRefused

    spec = _matrix_spec(tiny_gpt2, Case("refused", method, 1e-2))
    with pytest.raises(MethodRefused) as refused:
        run_in_process(spec, tmp_path / "run")
    message = str(refused.value)
    assert "cannot be applied to this gpt2 model" in message and reason in message, message
    assert not (tmp_path / "run" / "adapter").exists()


def test_worker_refuses_missing_target_modules_with_the_submit_check_message(tiny_assets: Any, tmp_path: Path) -> None:
    """A run queued without the submit-time check (no service worker answered) fails at its start, same words."""
    from runspec import TrainingSpec
    from worker.training.method_fit import MethodRefused, check_method

    method = {"name": "ia3", "target_modules": ["query_key_value", "q_proj"], "feedforward_modules": ["q_proj"]}
    spec = _matrix_spec(tiny_assets, Case("missing", method, 1e-2))
    with pytest.raises(MethodRefused) as refused:
        run_in_process(spec, tmp_path / "run")
    assert set(refused.value.problems) == {"method.target_modules", "method.feedforward_modules"}
    message = refused.value.problems["method.target_modules"]
    assert message.startswith("q_proj matches no module of this bloom model")
    for real in ("query_key_value", "dense_h_to_4h", "dense_4h_to_h", "dense"):
        assert real in message
    parsed = RunSpec.model_validate(spec)
    answer = check_method(str(tiny_assets.model_dir), parsed.method, TrainingSpec())
    assert answer == {"checked": True, "problems": refused.value.problems}


def test_a_first_step_failure_is_reported_as_the_method_not_fitting() -> None:
    """An error before the first optimizer step (say, a cache format peft's prefix tuning cannot extend) fails
    the run with a sentence naming the method and the architecture; errors that explain themselves pass through."""
    from types import SimpleNamespace

    import torch

    from runspec.methods.prefix_tuning import PrefixTuningSpec
    from worker.training.errors import TrainingError
    from worker.training.method_fit import first_step_failure

    model = SimpleNamespace(config=SimpleNamespace(model_type="mamba"))
    failure = first_step_failure(TypeError("'MambaCache' object is not subscriptable"), PrefixTuningSpec(), model)
    assert failure is not None
    assert str(failure) == (
        "the first training step of Prefix Tuning on this mamba model failed, so this method cannot train this "
        "model: TypeError: 'MambaCache' object is not subscriptable"
    )
    assert first_step_failure(TrainingError("explained"), PrefixTuningSpec(), model) is None
    assert first_step_failure(torch.OutOfMemoryError("CUDA out of memory"), PrefixTuningSpec(), model) is None


def test_paged_optimizer_fails_fast_on_a_cpu_worker(tiny_assets: Any, tmp_path: Path) -> None:
    from worker.training.errors import TrainingError

    spec = _matrix_spec(tiny_assets, Case("paged", {"name": "qlora"}, 1e-2, training={"optim": "paged_adamw_8bit"}))
    with pytest.raises(TrainingError, match=r"training.optim=paged_adamw_8bit needs a CUDA GPU"):
        run_in_process(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing should be loaded or trained"


# -- through the API and a real worker ------------------------------------------------------------------------

#: Every method once through POST /api/runs, spread over Bloom and Llama.
API_RUNS = [
    ("full", "bloom", {"name": "full"}, 1e-3),
    ("lora", "llama", {"name": "lora", "init_lora_weights": "pissa"}, 5e-3),
    ("qlora", "bloom", {"name": "qlora"}, 2e-2),
    (
        "prompt_tuning",
        "llama",
        {"name": "prompt_tuning", "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": COURSE_PROMPT},
        1e-1,
    ),
    ("prefix_tuning", "bloom", {"name": "prefix_tuning"}, 1e-2),
    ("p_tuning", "llama", {"name": "p_tuning", "encoder_reparameterization_type": "LSTM"}, 1e-2),
    ("p_tuning_v2", "bloom", {"name": "p_tuning_v2"}, 1e-1),
    ("ia3", "llama", {"name": "ia3"}, 1e-1),
    ("adalora", "bloom", {"name": "adalora", "tinit": 2, "tfinal": 2}, 5e-3),
    ("loha", "llama", {"name": "loha"}, 2e-2),
    ("lokr", "bloom", {"name": "lokr"}, 5e-2),
    ("vera", "llama", {"name": "vera", "r": 32}, 1e-1),
    ("oft", "bloom", {"name": "oft"}, 2e-2),
]


def test_api_runs_cover_every_method() -> None:
    assert {name for name, *_ in API_RUNS} == set(METHODS)


def test_every_method_trains_from_the_api(sqlite_stack: Stack, request: pytest.FixtureRequest) -> None:
    submitted = []
    with sqlite_stack.client() as client:
        for name, arch, method, lr in API_RUNS:
            assets = _assets(request, arch)
            spec = tiny_spec(
                assets,
                f"api-{name}",
                method=method,
                dataset={"max_samples": 200},
                training={
                    "max_steps": 8,
                    "learning_rate": lr,
                    "max_length": 64,
                    "eval_steps": 4,
                    "eval_generation_samples": 2,
                    "eval_max_new_tokens": 8,
                },
            )
            response = client.post("/api/runs", json=spec)
            assert response.status_code == 201, response.text
            expected = client.post("/api/models/inspect", json={"model": spec["model"], "method": method})
            assert expected.status_code == 200, expected.text
            submitted.append((name, response.json()["id"], expected.json()["trainable_params"]))

    for name, run_id, inspected_trainable in submitted:
        run = sqlite_stack.wait_for_run(run_id, timeout=600)
        assert run["status"] == "succeeded", f"{name}: {run['error']}"
        assert run["method"] == name and run["spec"]["method"]["name"] == name
        details = run["details"]
        assert run["trainable_params"] == details["trainable_params"] > 0
        assert run["total_params"] == details["total_params"]
        assert details["trainable_percent"] == pytest.approx(100 * run["trainable_params"] / run["total_params"])
        assert run["trainable_params"] == inspected_trainable, f"{name}: meta-device count differs from training"
        if name == "full":
            assert details["peft_config"] is None
            assert run["trainable_params"] == run["total_params"]
        else:
            assert details["peft_config"]["peft_type"], details["peft_config"]
            assert run["artifact_dir"].endswith("adapter")
        assert run["step"] == 8 and run["final_train_loss"] is not None


# -- the form and the API schema ----------------------------------------------------------------------------------


def test_openapi_shows_the_methods_as_a_discriminated_union(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:
        schema = client.get("/openapi.json").json()
        methods = client.get("/api/methods").json()
    run_spec = schema["components"]["schemas"]["RunSpec"]["properties"]["method"]
    union = run_spec.get("oneOf") or run_spec["anyOf"]
    assert run_spec["discriminator"]["propertyName"] == "name"
    assert set(run_spec["discriminator"]["mapping"]) == set(METHODS)
    assert len(union) == len(METHODS)
    lora = schema["components"]["schemas"]["LoraSpec"]["properties"]
    assert lora["r"]["minimum"] == 1 and lora["lora_dropout"]["exclusiveMaximum"] == 1
    assert set(methods) == set(METHODS)
    assert methods["qlora"]["schema"]["properties"]["bnb_4bit_quant_type"]["enum"] == ["nf4", "fp4"]
    assert all(entry["trains"] for entry in methods.values())


#: A value for each method's form that differs from its default, by field kind (list, checkbox, select, number).
FORM_CHANGES: dict[str, dict[str, str]] = {
    "full": {"method.freeze_embeddings": "on"},
    "lora": {"method.target_modules": "query_key_value", "method.use_rslora": "on", "method.bias": "lora_only"},
    "qlora": {"method.bnb_4bit_quant_type": "fp4", "method.bnb_4bit_use_double_quant": ""},
    "prompt_tuning": {"method.prompt_tuning_init": "TEXT", "method.prompt_tuning_init_text": COURSE_PROMPT},
    "prefix_tuning": {"method.encoder_hidden_size": "24", "method.prefix_projection": "on"},
    "p_tuning": {"method.encoder_reparameterization_type": "LSTM", "method.encoder_hidden_size": "16"},
    "p_tuning_v2": {"method.num_virtual_tokens": "4"},
    "ia3": {"method.target_modules": "query_key_value, dense_4h_to_h", "method.feedforward_modules": "dense_4h_to_h"},
    "adalora": {"method.init_r": "6", "method.target_r": "3", "method.tinit": "1", "method.tfinal": "1"},
    "loha": {"method.r": "4", "method.alpha": "4"},
    "lokr": {"method.decompose_both": "on"},
    "vera": {"method.r": "32"},
    "oft": {"method.oft_block_size": "16", "method.coft": "on"},
}
FORM_EXPECTED: dict[str, dict[str, Any]] = {
    "full": {"freeze_embeddings": True},
    "lora": {"target_modules": ["query_key_value"], "use_rslora": True, "bias": "lora_only", "use_dora": False},
    "qlora": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    "prompt_tuning": {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": COURSE_PROMPT},
    "prefix_tuning": {"encoder_hidden_size": 24, "prefix_projection": True},
    "p_tuning": {"encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 16},
    "p_tuning_v2": {"num_virtual_tokens": 4},
    "ia3": {"target_modules": ["query_key_value", "dense_4h_to_h"], "feedforward_modules": ["dense_4h_to_h"]},
    "adalora": {"init_r": 6, "target_r": 3, "tinit": 1, "tfinal": 1, "total_step": None},
    "loha": {"r": 4, "alpha": 4},
    "lokr": {"decompose_both": True},
    "vera": {"r": 32},
    "oft": {"oft_block_size": 16, "coft": True, "r": 0},
}


def test_form_covers_every_method() -> None:
    assert set(FORM_CHANGES) == set(FORM_EXPECTED) == set(METHODS)


def test_every_method_renders_and_submits_from_the_form(sqlite_stack: Stack, tiny_assets: Any) -> None:
    """The method select swaps in each method's fields (htmx fragment); the form as rendered, with some fields
    changed, submits to the spec the API would take. The runs are cancelled while queued (no training)."""
    with sqlite_stack.client() as client:
        page = parse(client.get("/runs/new").text)
        options = {str(o["value"]) for o in page.find("select", attrs={"name": "method.name"}).find_all("option")}
        assert options == set(METHODS)
        base = {name: control_value(c) for name, c in controls(page.find("form", id="run-form")).items()}
        base = {k: v for k, v in base.items() if not k.startswith("method.") and v != ""}
        base.update(
            {
                "name": "form",
                "model": str(tiny_assets.model_dir),
                "dataset.source": str(tiny_assets.dataset_path),
                "training.max_steps": "5",
            }
        )
        for name, cls in METHODS.items():
            response = client.get("/runs/new/method", params={"method.name": name}, headers={"HX-Request": "true"})
            assert response.status_code == 200, response.text
            fragment = fragment_root(response.text)
            fields = controls(fragment)
            declared = {f"method.{f}" for f in cls.model_fields if f != "name"}
            assert set(fields) == declared, f"{name}: form fields {set(fields) ^ declared} differ from the spec"
            values = {k: control_value(c) for k, c in fields.items()}
            values = {k: v for k, v in values.items() if v != ""}  # unchecked boxes and empty optionals
            values.update(FORM_CHANGES[name])
            values = {k: v for k, v in values.items() if v != ""}
            form = {**base, **values, "name": f"form-{name}", "method.name": name}
            posted = client.post("/runs", data=form, follow_redirects=False)
            assert posted.status_code == 303, f"{name}: {posted.status_code} {posted.text[:2000]}"
            run_id = int(posted.headers["location"].removeprefix("/runs/"))
            cancelled = client.post(f"/api/runs/{run_id}/cancel")
            run = client.get(f"/api/runs/{run_id}").json()
            stored = run["spec"]["method"]
            assert stored["name"] == name
            for key, expected in FORM_EXPECTED[name].items():
                assert stored[key] == expected, f"{name}.{key}: {stored[key]!r} != {expected!r}"
            defaults = cls().model_dump(mode="json")
            untouched = {
                k for k in defaults if f"method.{k}" not in FORM_CHANGES[name] and k not in FORM_EXPECTED[name]
            }
            assert {k: stored[k] for k in untouched} == {k: defaults[k] for k in untouched}, name
            assert cancelled.status_code in {200, 409}


# -- bad input ------------------------------------------------------------------------------------------------------

BAD_METHODS = [
    pytest.param({"name": "lora", "r": 0}, "method.r", "greater than or equal to 1", id="lora-r0"),
    pytest.param({"name": "lora", "lora_alpha": 0}, "method.lora_alpha", "greater than 0", id="lora-alpha0"),
    pytest.param({"name": "lora", "lora_alpha": -4}, "method.lora_alpha", "greater than 0", id="lora-alpha-neg"),
    pytest.param({"name": "lora", "lora_dropout": 1}, "method.lora_dropout", "less than 1", id="lora-dropout1"),
    pytest.param({"name": "qlora", "r": 0}, "method.r", "greater than or equal to 1", id="qlora-r0"),
    pytest.param({"name": "qlora", "bnb_4bit_quant_type": "int4"}, "method.bnb_4bit_quant_type", "nf4", id="quant"),
    pytest.param({"name": "prompt_tuning", "num_virtual_tokens": 0}, "method.num_virtual_tokens", "1", id="pt-nvt0"),
    pytest.param(
        {"name": "prompt_tuning", "prompt_tuning_init": "TEXT"},
        "method",
        "prompt_tuning_init_text",
        id="pt-text-missing",
    ),
    pytest.param({"name": "prefix_tuning", "num_virtual_tokens": 0}, "method.num_virtual_tokens", "1", id="prefix0"),
    pytest.param(
        {"name": "p_tuning", "encoder_reparameterization_type": "GRU"},
        "method.encoder_reparameterization_type",
        "MLP",
        id="ptuning-gru",
    ),
    pytest.param({"name": "p_tuning_v2", "num_virtual_tokens": 0}, "method.num_virtual_tokens", "1", id="v2-0"),
    pytest.param(
        {"name": "ia3", "target_modules": ["a"], "feedforward_modules": ["b"]},
        "method",
        "target_modules",
        id="ia3-ff-subset",
    ),
    pytest.param({"name": "adalora", "target_r": 16, "init_r": 8}, "method", "init_r", id="adalora-budget"),
    pytest.param({"name": "adalora", "tinit": 30, "tfinal": 30}, "body", "training.max_steps", id="adalora-sched"),
    pytest.param({"name": "loha", "rank_dropout": 1.5}, "method.rank_dropout", "less than 1", id="loha-dropout"),
    pytest.param({"name": "lokr", "decompose_factor": 0}, "method.decompose_factor", "-1", id="lokr-factor0"),
    pytest.param({"name": "vera", "r": 0}, "method.r", "greater than or equal to 1", id="vera-r0"),
    pytest.param({"name": "oft", "r": 4, "oft_block_size": 16}, "method", "exactly one", id="oft-both"),
    pytest.param(
        {"name": "lora", "target_modules": ["q_proj", "q_proj"]},
        "method.target_modules",
        "twice",
        id="duplicate-module",
    ),
    pytest.param(
        {"name": "lora", "init_lora_weights": "pissa", "use_dora": True}, "method", "use_dora", id="pissa-dora"
    ),
    pytest.param({"name": "dreambooth"}, "method", "does not match any of the expected tags", id="unknown-method"),
    pytest.param({"name": "lora", "rank": 8}, "method.rank", "Extra inputs are not permitted", id="typo"),
]


@pytest.mark.parametrize(("method", "field_path", "phrase"), BAD_METHODS)
def test_bad_method_parameters_are_422_naming_the_field(
    method: dict[str, Any], field_path: str, phrase: str, sqlite_stack: Stack, tiny_assets: Any
) -> None:
    spec = tiny_spec(tiny_assets, "bad", method=method, training={"max_steps": 20})
    with sqlite_stack.client() as client:
        before = client.get("/api/runs", params={"limit": 1}).json()["total"]
        response = client.post("/api/runs", json=spec)
        after = client.get("/api/runs", params={"limit": 1}).json()["total"]
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    matching = [e for e in errors if e["field"] == field_path]
    assert matching, f"no error for {field_path}: {errors}"
    assert any(phrase in e["msg"] for e in matching), matching
    assert after == before, "a refused spec must not create a run"


@pytest.mark.parametrize("name", ["prefix_tuning", "p_tuning_v2"])
def test_prefix_methods_refuse_gradient_checkpointing(name: str, sqlite_stack: Stack, tiny_assets: Any) -> None:
    """Checkpointed layers drop the attention cache the prefix travels in (the first step would fail on a shape
    mismatch), so the spec is refused before anything is queued."""
    spec = tiny_spec(tiny_assets, "prefix-gc", method={"name": name}, training={"gradient_checkpointing": True})
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=spec)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert "cannot train with training.gradient_checkpointing" in error["msg"], error
    spec["training"]["gradient_checkpointing"] = False
    RunSpec.model_validate(spec)


def test_bad_learning_rate_is_422(sqlite_stack: Stack, tiny_assets: Any) -> None:
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=tiny_spec(tiny_assets, "bad", training={"learning_rate": 0}))
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == ["training.learning_rate"]


@pytest.mark.parametrize(
    ("arch", "method", "field_path", "names"),
    [
        pytest.param(
            "bloom",
            {"name": "lora", "target_modules": ["q_proj", "v_proj"]},
            "method.target_modules",
            ["query_key_value", "dense_h_to_4h"],
            id="lora-llama-names-on-bloom",
        ),
        pytest.param(
            "llama",
            {"name": "ia3", "target_modules": ["down_proj", "mlp.c_fc"], "feedforward_modules": ["mlp.c_fc"]},
            "method.target_modules",
            ["q_proj", "down_proj", "gate_proj"],
            id="ia3-gpt2-names-on-llama",
        ),
        pytest.param(
            "llama",
            {"name": "vera", "target_modules": ["query_key_value"]},
            "method.target_modules",
            ["q_proj", "o_proj"],
            id="vera",
        ),
        pytest.param("gpt2", {"name": "loha"}, "method.target_modules", ["c_attn", "c_proj"], id="loha-on-conv1d"),
        pytest.param("gpt2", {"name": "lora", "init_lora_weights": "olora"}, "method", [], id="olora-on-conv1d"),
    ],
)
def test_method_that_does_not_fit_the_model_is_422_listing_real_names(
    arch: str,
    method: dict[str, Any],
    field_path: str,
    names: list[str],
    service_worker_ready: Stack,
    request: pytest.FixtureRequest,
) -> None:
    sqlite_stack = service_worker_ready
    spec = tiny_spec(_assets(request, arch), "no-fit", method=method, training={"max_steps": 20})
    with sqlite_stack.client() as client:
        before = client.get("/api/runs", params={"limit": 1}).json()["total"]
        response = client.post("/api/runs", json=spec)
        after = client.get("/api/runs", params={"limit": 1}).json()["total"]
    assert response.status_code == 422, response.text
    error = next(e for e in response.json()["detail"] if e["field"] == field_path)
    assert f"this {arch} model" in error["msg"], error
    for name in names:
        assert name in error["msg"], error
    assert after == before


def test_form_shows_the_module_refusal_on_its_field(service_worker_ready: Stack, tiny_assets: Any) -> None:
    sqlite_stack = service_worker_ready
    form = {
        "name": "form-bad-modules",
        "model": str(tiny_assets.model_dir),
        "dataset.source": str(tiny_assets.dataset_path),
        "method.name": "lora",
        "method.target_modules": "q_proj, v_proj",
        "training.max_steps": "5",
    }
    with sqlite_stack.client() as client:
        response = client.post("/runs", data=form, headers={"HX-Request": "true"})
    assert response.status_code == 422
    error = field_error(fragment_root(response.text), "method.target_modules")
    assert error and "q_proj, v_proj match no module of this bloom model" in error and "query_key_value" in error


def test_paged_optimizer_on_a_cpu_worker_fails_the_run_with_the_reason(sqlite_stack: Stack, tiny_assets: Any) -> None:
    spec = tiny_spec(tiny_assets, "paged", method={"name": "qlora"}, training={"optim": "paged_adamw_32bit"})
    with sqlite_stack.client() as client:
        response = client.post("/api/runs", json=spec)
    assert response.status_code == 201, response.text
    run = sqlite_stack.wait_for_run(response.json()["id"])
    assert run["status"] == "failed"
    assert run["error"].startswith("training.optim=paged_adamw_32bit needs a CUDA GPU"), run["error"]
    assert "adamw_8bit" in run["error"] and "Traceback" not in run["error"]
    assert run["step"] == 0
