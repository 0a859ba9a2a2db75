"""The training loop: one run, top to bottom.

`train` checks the worker can run the spec, loads the tokenizer, the data and the base model (loading.py), lets
the method wrap the model (method_fit.py), builds the Trainer with its callbacks, trains, saves the adapter or
model, and evaluates generation on held-out prompts. Running out of memory becomes a readable TrainingError.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from runspec import MethodSpec, RunSpec
from worker.training.batching import Batching, plan_batching, plan_supervised_logits
from worker.training.callbacks import ReporterCallback
from worker.training.checkpoints import CheckpointMarkerCallback
from worker.training.data import prepare_dataset, split_eval
from worker.training.distributed import check_processes, describe, is_main_process, trainer_arguments, uses_fsdp
from worker.training.environment import report_to, run_environment
from worker.training.errors import TrainingError
from worker.training.evaluate import report_generation_metrics
from worker.training.formats import drop_unlearned
from worker.training.kernels import Kernels, check_kernels, plan_kernels
from worker.training.loading import count_parameters, load_base_model, load_config, load_tokenizer
from worker.training.memory_measured import MemoryProbe
from worker.training.memory_profile import estimate_at_start
from worker.training.method_fit import build_method, check_device_needs, first_step_failure
from worker.training.oom import describe_out_of_memory, free_memory, is_out_of_memory
from worker.training.precision import DtypesRecorder, check_precision, run_dtypes
from worker.training.probe import record_probe
from worker.training.reporter import Reporter
from worker.training.resources import device_description, has_cuda

log = logging.getLogger("tunedeck.training")
#: transformers 5.24 renamed TrainingArguments.gradient_checkpointing (the old name still works, with a warning).
CHECKPOINTING_ARGUMENT = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


@dataclass(frozen=True)
class TrainingResult:
    trainable_params: int
    total_params: int
    final_train_loss: float | None
    final_eval_loss: float | None
    artifact_dir: Path
    cancelled: bool
    steps: int
    wall_time_seconds: float


def train(
    spec: RunSpec,
    run_dir: Path,
    reporter: Reporter,
    *,
    resume_from: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    memory_estimate: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """Train one run. `resume_from`: a complete checkpoint of this run (see checkpoints.py) to continue from.
    `memory_estimate`: the one stored at submit time; without one (or for another device) it is made here.

    Running out of memory (CUDA or CPU) becomes a TrainingError that says what was needed, what was
    available and what usually helps."""
    facts: dict[str, Any] = {"memory_estimate": memory_estimate}
    try:
        return _train(spec, run_dir, reporter, resume_from, callbacks, facts, memory_estimate)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        message = describe_out_of_memory(exc, spec, facts)
    free_memory()  # outside the except block: the failed step's tensors are unreachable now
    raise TrainingError(message)


def _train(
    spec: RunSpec,
    run_dir: Path,
    reporter: Reporter,
    resume_from: Path | None,
    extra_callbacks: Sequence[TrainerCallback],
    facts: dict[str, Any],
    memory_estimate: Mapping[str, Any] | None = None,
) -> TrainingResult:
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _forward_logs_to(reporter):
        set_seed(spec.training.seed)
        _check_worker(spec, reporter)

        log.info("loading tokenizer and model %s", spec.model)
        tokenizer = load_tokenizer(spec.model)
        train_set, eval_set = prepare_data(spec, tokenizer, reporter)
        reporter.details({"train_samples": len(train_set), "eval_samples": len(eval_set) if eval_set else 0})
        log.info("data: %d training samples, %d held out", len(train_set), len(eval_set) if eval_set else 0)
        method = spec.method.resolved(spec.training)  # e.g. AdaLoRA's total_step from training.max_steps
        dtypes = run_dtypes(spec)
        kernels = plan_kernels(spec, load_config(spec.model), dtypes)
        reporter.details({"kernels": kernels.details()})
        log.info("attention: %s; liger kernels: %s", kernels.attention_reason, kernels.liger_reason)
        base_model = load_base_model(spec, dtypes, kernels.attn_implementation)

        model, batching = _wrap_with_method(spec, method, base_model, tokenizer, reporter, kernels)
        dtypes_recorder = DtypesRecorder(dtypes, model, reporter.details)
        log.info("dtypes: %s", _describe_dtypes(dtypes_recorder.recorded))
        trainable, total = _report_parameters(model, reporter)
        facts.update(trainable_params=trainable, total_params=total)
        _record_memory_estimate(spec, method, reporter, memory_estimate, _longest(train_set, eval_set), kernels)

        callback = ReporterCallback(reporter)
        # Bytes of parameters, gradients, optimizer state after the first step; peak memory at the end.
        memory_probe = MemoryProbe(lambda measured: reporter.details({"memory_measured": measured}))
        trainer = Trainer(
            model=model,
            args=training_arguments(spec, run_dir, has_eval=eval_set is not None, batching=batching, kernels=kernels),
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=batching.collator(tokenizer),
            # The marker callback comes last: it must see a save the reporter asks for on cancel.
            callbacks=[
                callback,
                memory_probe,
                dtypes_recorder,
                *method.trainer_callbacks(),
                *extra_callbacks,
                CheckpointMarkerCallback(),
            ],
        )
        trainer.remove_callback(PrinterCallback)  # our callback writes the log
        _report_distributed(spec, reporter)

        _fit(trainer, spec, method, model, resume_from)
        steps = trainer.state.global_step
        if eval_set is not None and not callback.cancelled and _needs_final_eval(trainer):
            trainer.evaluate()
        artifact_dir = _save(trainer, spec, method, model, tokenizer, run_dir)
        _evaluate_generation(spec, model, tokenizer, eval_set, steps, reporter, cancelled=callback.cancelled)

    return TrainingResult(
        trainable_params=trainable,
        total_params=total,
        final_train_loss=callback.last_loss,
        final_eval_loss=callback.last_eval_loss,
        artifact_dir=artifact_dir,
        cancelled=callback.cancelled,
        steps=steps,
        wall_time_seconds=time.perf_counter() - started,
    )


def _check_worker(spec: RunSpec, reporter: Reporter) -> None:
    """What this worker is, and whether it can run the spec at all: fail before loading anything."""
    reporter.details(device_description())
    check_device_needs(spec)  # a paged optimizer on a CPU-only worker
    check_precision(spec)  # bf16 on a GPU without it
    check_kernels(spec)  # FlashAttention or Liger without CUDA or their package
    check_processes(spec)  # training.num_gpus processes (torchrun), FSDP only on CUDA
    reporter.details(run_environment(spec))


def _wrap_with_method(
    spec: RunSpec, method: MethodSpec, base_model: Any, tokenizer: Any, reporter: Reporter, kernels: Kernels
) -> tuple[Any, Batching]:
    """The trainable model the method builds on the base model, and how its batches are made."""
    batching = plan_batching(spec, method, base_model)  # packing is checked on the base model itself
    log.info(
        "batches: %s, %s",
        "grouped by length" if batching.group_by_length else "in random order",
        "packed" if batching.packing else f"padded ({batching.reason})",
    )
    model = build_method(method, base_model, tokenizer)  # target modules checked: readable refusal
    # checked on the wrapped model (virtual tokens); Liger's fused loss projects without materialising logits
    batching = plan_supervised_logits(spec, batching, model, fused_loss=kernels.liger)
    reporter.details({"batching": batching.details()})
    log.info("logits: %s", batching.logits_reason)
    return model, batching


def _report_parameters(model: Any, reporter: Reporter) -> tuple[int, int]:
    trainable, total = count_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    reporter.details(
        {
            "trainable_params": trainable,
            "total_params": total,
            "trainable_percent": percent,
            "peft_config": resolved_peft_config(model),
        }
    )
    log.info("trainable params: %d || all params: %d || trainable%%: %.4f", trainable, total, percent)
    return trainable, total


def _report_distributed(spec: RunSpec, reporter: Reporter) -> None:
    distributed = describe(spec)  # several processes (torchrun): rank 0 reports, saves and evaluates generation
    if distributed:
        reporter.details({"distributed": distributed})
        log.info("data parallel: %(processes)d processes (%(strategy)s over %(backend)s)", distributed)


def _fit(trainer: Trainer, spec: RunSpec, method: MethodSpec, model: Any, resume_from: Path | None) -> None:
    """`trainer.train`; an error before the first step finished says the method cannot train this model."""
    if resume_from is not None:
        log.info("resuming from %s", resume_from.name)
    log.info("training for %d steps", spec.training.max_steps)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except Exception as exc:
        failure = first_step_failure(exc, method, model) if trainer.state.global_step == 0 else None
        if failure is None:
            raise
        raise failure from exc


def _save(trainer: Trainer, spec: RunSpec, method: MethodSpec, model: Any, tokenizer: Any, run_dir: Path) -> Path:
    """The adapter (or full model), its tokenizer, the probe's logits and the spec; the folder they went to."""
    artifact_dir = run_dir / ("adapter" if spec.method.is_peft else "model")
    main = is_main_process()  # several processes (training.num_gpus): rank 0 writes, the others only train
    if uses_fsdp(spec):
        trainer.save_model(str(artifact_dir))  # every process: the shards gathered, rank 0 writes safetensors
        record_probe(model, tokenizer, run_dir, write=main)  # a sharded forward needs every process too
    elif main:
        method.save(model, artifact_dir)  # PiSSA/OLoRA: converted to apply to the unchanged base
        record_probe(model, tokenizer, run_dir)  # final logits on a fixed input, to check exports against
    if main:
        tokenizer.save_pretrained(artifact_dir)
        (run_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False))
        log.info("saved %s to %s", "adapter" if spec.method.is_peft else "model", artifact_dir)
    return artifact_dir


def _evaluate_generation(
    spec: RunSpec, model: Any, tokenizer: Any, eval_set: Any | None, steps: int, reporter: Reporter, *, cancelled: bool
) -> None:
    """Exact match, BLEU, ROUGE-L on held-out prompts, by rank 0 (skipped for a model sharded by FSDP)."""
    if not is_main_process():
        return
    if uses_fsdp(spec) and spec.training.eval_generation_samples:
        log.info("generation metrics skipped: the model is sharded across processes (training.distributed=fsdp)")
        return
    if cancelled:
        return
    report_generation_metrics(
        model,
        tokenizer,
        eval_set,
        samples=spec.training.eval_generation_samples,
        max_new_tokens=spec.training.eval_max_new_tokens,
        step=steps,
        reporter=reporter,
    )


def _longest(*datasets: Any) -> int | None:
    """The longest tokenized sample (cut at max_length) the run trains or evaluates on: read from the Arrow table
    under the dataset (the rows a selection or filter left out included: an upper bound, never a guess)."""
    import pyarrow.compute as pc

    lengths = [
        pc.max(pc.list_value_length(d.data.column("input_ids"))).as_py()
        for d in datasets
        if d is not None and len(d) and "input_ids" in d.column_names
    ]
    return max((int(n) for n in lengths if n is not None), default=None)


def _record_memory_estimate(
    spec: RunSpec,
    method: MethodSpec,
    reporter: Reporter,
    stored: Mapping[str, Any] | None,
    longest: int | None,
    kernels: Kernels,
) -> None:
    """details.memory_estimate for this device when the submit-time one is missing, or made with less than this
    worker knows (the tokenized data's longest sample, the kernels planned here); never fails the run."""
    try:
        estimate = estimate_at_start(
            spec, method, stored, longest=longest, liger=kernels.liger, attention=kernels.attention
        )
    except Exception as exc:
        log.info("no memory estimate: %s", (str(exc).splitlines() or [type(exc).__name__])[0][:300])
        return
    if estimate is not None:
        reporter.details({"memory_estimate": estimate})


def prepare_data(spec: RunSpec, tokenizer: Any, reporter: Reporter | None = None) -> tuple[Any, Any | None]:
    """Rows → tokenized samples under the spec's format and template (see formats.py), split for evaluation."""
    max_length = spec.training.max_length
    prepared = prepare_dataset(spec.dataset, tokenizer, max_length, model_label=repr(spec.model), log=log)
    if reporter is not None:
        lengths = prepared.tokenized["full_length"]
        truncated = sum(1 for length in lengths if length > max_length)
        # the longest sample before the cut: the memory estimate's length (runspec.memory), this run's and later ones'
        longest = max(lengths, default=0)
        reporter.details({"dataset": {**prepared.facts, "truncated": truncated, "longest_tokens": longest}})
    tokenized = drop_unlearned(prepared.tokenized)
    if len(tokenized) == 0:
        raise TrainingError(
            f"no sample of dataset {spec.dataset.source!r} has a response within max_length="
            f"{spec.training.max_length} tokens; raise training.max_length"
        )
    return split_eval(tokenized, spec.dataset.eval_fraction, spec.training.seed)


def resolved_peft_config(model: Any) -> dict[str, Any] | None:
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    config = next(iter(configs.values()))
    return json.loads(json.dumps(config.to_dict(), default=_jsonable))


def _checkpointing_argument(on: bool) -> dict[str, Any]:
    return {CHECKPOINTING_ARGUMENT: on}


def training_arguments(
    spec: RunSpec,
    run_dir: Path,
    *,
    has_eval: bool,
    batching: Batching | None = None,
    kernels: Kernels | None = None,
) -> TrainingArguments:
    """`batching`: what plan_batching chose for the loaded model; without it, the spec's grouping, no packing.
    `kernels`: what plan_kernels chose; without it, no Liger kernels. Mixed precision (autocast) as
    runspec.precision decides: none for fp32 and for pure_bf16, whose weights are bf16 already."""
    t, t_keep = spec.training, spec.placement.keep_checkpoints
    if batching is None:
        batching = Batching(group_by_length=t.group_by_length, packing=False, reason="not planned")
    cuda = has_cuda()
    dtypes = run_dtypes(spec)
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_interval(spec),
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=max(1, 2 if t_keep is None else t_keep),  # placement.keep_checkpoints, the worker's default
        report_to=report_to(spec, run_dir),
        disable_tqdm=True,
        # A packed batch has no padding and no attention mask: every token counts.
        include_num_input_tokens_seen="all" if batching.packing else "non_padding",
        train_sampling_strategy=batching.sampling_strategy(),
        **_checkpointing_argument(t.gradient_checkpointing and not uses_fsdp(spec)),  # FSDP: its own way
        bf16=dtypes.autocast and dtypes.compute == "bfloat16",
        fp16=dtypes.autocast and dtypes.compute == "float16",
        use_liger_kernel=bool(kernels and kernels.liger),
        use_cpu=not cuda,
        optim=t.optim,
        label_names=["labels"],
        dataloader_num_workers=0,
        **trainer_arguments(spec),  # FSDP on several processes (DDP needs nothing)
    )


def _describe_dtypes(recorded: Mapping[str, Any]) -> str:
    loaded = recorded["loaded"]
    frozen = ", ".join(sorted(loaded["frozen_params"])) or "none"
    trainable = ", ".join(sorted(loaded["trainable_params"])) or "none"
    mode = "autocast" if recorded["autocast"] else "no autocast"
    return f"compute {recorded['compute']} ({mode}), frozen weights {frozen}, trainable {trainable}"


def eval_interval(spec: RunSpec) -> int:
    return spec.training.eval_steps or max(1, spec.training.max_steps // 5)


def _needs_final_eval(trainer: Trainer) -> bool:
    return trainer.state.global_step % int(trainer.args.eval_steps or 1) != 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


class _ReporterLogHandler(logging.Handler):
    def __init__(self, reporter: Reporter) -> None:
        super().__init__(logging.INFO)
        self.reporter = reporter
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
            self.reporter.log(prefix + self.format(record))
        except Exception:  # a log line must never break training
            self.handleError(record)


class _forward_logs_to:
    """Send our INFO lines and the ML libraries' warnings to the run's log while training."""

    def __init__(self, reporter: Reporter) -> None:
        self.handler = _ReporterLogHandler(reporter)
        self.warnings_handler = _ReporterLogHandler(reporter)
        self.warnings_handler.setLevel(logging.WARNING)

    def __enter__(self) -> None:
        log.setLevel(logging.INFO)
        log.addHandler(self.handler)
        for name in ("transformers", "peft", "datasets"):
            logging.getLogger(name).addHandler(self.warnings_handler)

    def __exit__(self, *exc_info: object) -> None:
        log.removeHandler(self.handler)
        for name in ("transformers", "peft", "datasets"):
            logging.getLogger(name).removeHandler(self.warnings_handler)
