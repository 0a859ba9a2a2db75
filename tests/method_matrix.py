"""Helpers for tests/test_methods.py: train one method in-process and check what it did to the model.

`train_and_check` calls `worker.training.loop.train` directly (no worker, no database) with an in-memory
Reporter and a callback that snapshots every parameter when training starts and computes logits on a fixed
padded batch when it ends. The checks then compare those against the model files on disk and the saved adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from runspec import RunSpec
from runspec.methods.qlora import keep_training_layout
from worker.training.loop import TrainingResult, train

#: Substrings of the names of parameters (and buffers) peft adds; everything else belongs to the base model.
ADAPTER_MARKERS = (
    "lora_",
    "ia3_",
    "hada_",
    "lokr_",
    "vera_",
    "oft_",
    "prompt_encoder",
    "ranknum",
)
FIXED_TEXTS = ("Human: 你好\n\nAssistant: 你好！有什么可以帮你？", "Human: Translate: cat\n\nAssistant: ")


class MemoryReporter:
    """The Reporter protocol, kept in memory."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.lines: list[str] = []
        self.facts: dict[str, Any] = {}
        self.last_step = 0

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.series.setdefault(key, []).append((step, value))

    def progress(self, step: int, max_steps: int) -> None:
        self.last_step = step

    def log(self, line: str) -> None:
        self.lines.append(line)

    def details(self, values: dict[str, object]) -> None:
        self.facts.update(values)

    def should_stop(self) -> bool:
        return False


def fixed_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths, right-padded: the padding path counts too (prompt methods extend masks)."""
    return dict(tokenizer(list(FIXED_TEXTS), return_tensors="pt", padding=True, add_special_tokens=False))


def logits_of(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(**batch).logits.float().cpu()
    finally:
        model.train(was_training)


class ObserverCallback(TrainerCallback):
    """Parameters when training starts; parameters, trainable count and logits when it ends."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.trainable: set[str] = set()
        self.peft_trainable: int | None = None
        self.requires_grad_count = 0
        self.logits: torch.Tensor | None = None
        self.model: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.before = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        self.requires_grad_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if hasattr(model, "get_nb_trainable_parameters"):
            self.peft_trainable = int(model.get_nb_trainable_parameters()[0])

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.after = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.logits = logits_of(model, self.batch)
        self.model = model


@dataclass
class Outcome:
    spec: RunSpec
    result: TrainingResult
    reporter: MemoryReporter
    observer: ObserverCallback
    tokenizer: Any
    run_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [value for _, value in self.reporter.series.get("loss", [])]


def run_in_process(spec_dict: dict[str, Any], run_dir: Path) -> Outcome:
    spec = RunSpec.model_validate(spec_dict)
    tokenizer = AutoTokenizer.from_pretrained(spec.model)
    observer = ObserverCallback(fixed_batch(tokenizer))
    reporter = MemoryReporter()
    result = train(spec, run_dir, reporter, callbacks=[observer])
    return Outcome(spec, result, reporter, observer, tokenizer, run_dir)


def base_key(name: str, original: dict[str, Any]) -> str | None:
    """A parameter name of the trained model → its name in the base model's safetensors file (None: not there).

    A tuner (LoRA, IA3, ...) wraps the model as base_model.model and its layers' weights as base_layer; prompt
    learning keeps the model as base_model."""
    name = name.replace(".base_layer.", ".")
    for prefix in ("base_model.model.", "base_model.", ""):
        if name.startswith(prefix) and name[len(prefix) :] in original:
            return name[len(prefix) :]
    return None


def is_adapter(name: str) -> bool:
    return any(marker in name for marker in ADAPTER_MARKERS)


def check_loss_fell(outcome: Outcome) -> None:
    losses = outcome.losses
    assert len(losses) == outcome.spec.training.max_steps, f"{len(losses)} losses logged"
    assert all(math.isfinite(v) for v in losses)
    first, last = mean(losses[:5]), mean(losses[-5:])
    assert last < first, f"training loss did not fall: {first:.4f} → {last:.4f}"


def check_only_method_parameters_changed(outcome: Outcome) -> None:
    """Frozen parameters are bit-identical before and after training; trainable ones belong to the method
    (the base's own weights only for full fine-tuning and LoRA's bias option) and at least one moved."""
    obs, method = outcome.observer, outcome.spec.method
    assert obs.trainable, "nothing was trainable"
    for name, before in obs.before.items():
        if name not in obs.trainable:
            assert torch.equal(before, obs.after[name]), f"frozen parameter {name} changed"
    assert any(not torch.equal(obs.before[n], obs.after[n]) for n in obs.trainable), "no trainable parameter moved"
    if method.name == "full":
        frozen = {n for n in obs.before if n not in obs.trainable}
        if getattr(method, "freeze_embeddings", False):
            assert frozen and all("emb" in n or "wte" in n for n in frozen), frozen
        else:
            assert not frozen, f"full fine-tuning froze {sorted(frozen)[:5]}"
        return
    base_bias_allowed = getattr(method, "bias", "none") != "none"
    for name in obs.trainable:
        if base_bias_allowed and name.endswith(".bias"):
            continue
        assert is_adapter(name) or name.endswith("magnitude_vector.default.weight") or "modules_to_save" in name, (
            f"{method.name} trains a base parameter: {name}"
        )


def check_base_weights_match_files(outcome: Outcome) -> None:
    """The trained model's base weights equal the checkpoint on disk, bit for bit (methods that keep the base
    as it was: not full, not QLoRA's quantized copy, not PiSSA/OLoRA's residual, not LoRA's trained biases)."""
    original = load_file(str(Path(outcome.spec.model) / "model.safetensors"))
    compared = 0
    for name, value in outcome.observer.after.items():
        if is_adapter(name) or "magnitude_vector" in name:
            continue
        key = base_key(name, original)
        if key is None:
            continue  # a tied weight stored once
        assert torch.equal(value, original[key]), f"base weight {key} differs from the file"
        compared += 1
    assert compared >= len(original) - 1, f"compared only {compared} of {len(original)} base weights"


def check_recorded_counts(outcome: Outcome) -> None:
    facts, obs = outcome.reporter.facts, outcome.observer
    assert facts["trainable_params"] == outcome.result.trainable_params
    assert facts["total_params"] == outcome.result.total_params
    assert facts["trainable_percent"] == 100.0 * facts["trainable_params"] / facts["total_params"]
    if obs.peft_trainable is not None:
        assert facts["trainable_params"] == obs.peft_trainable  # what print_trainable_parameters reports
    assert facts["trainable_params"] == obs.requires_grad_count
    if outcome.spec.method.is_peft:
        config = facts["peft_config"]
        assert config and config["task_type"] == "CAUSAL_LM", config


def reload_logits(outcome: Outcome) -> torch.Tensor:
    from peft import PeftModel

    method = outcome.spec.method
    artifact = outcome.result.artifact_dir
    batch = fixed_batch(outcome.tokenizer)
    if not method.is_peft:
        return logits_of(AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32), batch)
    base = AutoModelForCausalLM.from_pretrained(outcome.spec.model, dtype=torch.float32, **method.model_load_kwargs())
    if method.name == "qlora":
        # The trained model ran bitsandbytes' training kernels (see qlora.keep_training_layout); compare like for like.
        keep_training_layout(base)
    return logits_of(PeftModel.from_pretrained(base, artifact), batch)


def check_reload_gives_same_logits(outcome: Outcome, atol: float = 1e-5) -> None:
    trained = outcome.observer.logits
    assert trained is not None
    reloaded = reload_logits(outcome)
    mask = fixed_batch(outcome.tokenizer)["attention_mask"].bool()
    # Prompt Tuning and P-Tuning return logits for their virtual tokens too, in front of the input's.
    length = mask.shape[1]
    diff = (trained[:, -length:] - reloaded[:, -length:]).abs()[mask].max().item()
    assert diff <= atol, f"reloaded adapter's logits differ by {diff:.2e} (allowed {atol:.0e})"
