"""Train one run: load the base model and data, let the method build the trainable model, run the Trainer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from runspec import RunSpec
from runspec.sources import ResolvedSource
from worker.training.batching import Batching, plan_batching, plan_supervised_logits
from worker.training.callbacks import ReporterCallback
from worker.training.checkpoints import CheckpointMarkerCallback
from worker.training.data import prepare_dataset, split_eval
from worker.training.distributed import check_processes, describe, is_main_process, trainer_arguments, uses_fsdp
from worker.training.environment import report_to, run_environment
from worker.training.errors import TrainingError, first_line
from worker.training.evaluate import report_generation_metrics
from worker.training.formats import drop_unlearned
from worker.training.memory import MemoryProbe, estimate_at_start
from worker.training.method_check import build_method, check_device_needs, first_step_failure
from worker.training.oom import describe_out_of_memory, free_memory, is_out_of_memory
from worker.training.probe import record_probe
from worker.training.reporter import Reporter
from worker.training.resources import device_description, has_cuda
from worker.training.sources import model_load_kwargs, remote_code_kwargs, resolve_model

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
        reporter.details(device_description())
        check_device_needs(spec)  # a paged optimizer on a CPU-only worker: fail before loading anything
        check_processes(spec)  # training.num_gpus processes (torchrun), FSDP only on CUDA
        reporter.details(run_environment(spec))

        log.info("loading tokenizer and model %s", spec.model)
        tokenizer = load_tokenizer(spec.model)
        train_set, eval_set = prepare_data(spec, tokenizer, reporter)
        reporter.details({"train_samples": len(train_set), "eval_samples": len(eval_set) if eval_set else 0})
        log.info("data: %d training samples, %d held out", len(train_set), len(eval_set) if eval_set else 0)

        method = spec.method.resolved(spec.training)  # e.g. AdaLoRA's total_step from training.max_steps
        base_model = load_base_model(spec)
        batching = plan_batching(spec, method, base_model)  # packing is checked on the base model itself
        log.info(
            "batches: %s, %s",
            "grouped by length" if batching.group_by_length else "in random order",
            "packed" if batching.packing else f"padded ({batching.reason})",
        )
        model = build_method(method, base_model, tokenizer)  # target modules checked: readable refusal
        batching = plan_supervised_logits(spec, batching, model)  # checked on the wrapped model: virtual tokens
        reporter.details({"batching": batching.details()})
        log.info("logits: %s", batching.logits_reason)
        trainable, total = count_parameters(model)
        facts.update(trainable_params=trainable, total_params=total)
        reporter.details(
            {
                "trainable_params": trainable,
                "total_params": total,
                "trainable_percent": 100.0 * trainable / total if total else 0.0,
                "peft_config": resolved_peft_config(model),
            }
        )
        log.info(
            "trainable params: %d || all params: %d || trainable%%: %.4f",
            trainable,
            total,
            100.0 * trainable / total if total else 0.0,
        )

        _record_memory_estimate(spec, method, reporter, memory_estimate)
        # Bytes of parameters, gradients, optimizer state after the first step; peak memory at the end.
        memory_probe = MemoryProbe(lambda measured: reporter.details({"memory_measured": measured}))
        callback = ReporterCallback(reporter)
        trainer = Trainer(
            model=model,
            args=training_arguments(spec, run_dir, has_eval=eval_set is not None, batching=batching),
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=batching.collator(tokenizer),
            # The marker callback comes last: it must see a save the reporter asks for on cancel.
            callbacks=[
                callback,
                memory_probe,
                *method.trainer_callbacks(),
                *extra_callbacks,
                CheckpointMarkerCallback(),
            ],
        )
        trainer.remove_callback(PrinterCallback)  # our callback writes the log
        distributed = describe(spec)  # several processes (torchrun): rank 0 reports, saves and evaluates generation
        if distributed:
            reporter.details({"distributed": distributed})
            log.info("data parallel: %(processes)d processes (%(strategy)s over %(backend)s)", distributed)
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
        steps = trainer.state.global_step
        if eval_set is not None and not callback.cancelled and _needs_final_eval(trainer):
            trainer.evaluate()

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
        if uses_fsdp(spec) and main and spec.training.eval_generation_samples:
            log.info("generation metrics skipped: the model is sharded across processes (training.distributed=fsdp)")
        elif main and not callback.cancelled:  # exact match, BLEU, ROUGE-L on held-out prompts
            report_generation_metrics(
                model,
                tokenizer,
                eval_set,
                samples=spec.training.eval_generation_samples,
                max_new_tokens=spec.training.eval_max_new_tokens,
                step=steps,
                reporter=reporter,
            )

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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _record_memory_estimate(spec: RunSpec, method: Any, reporter: Reporter, stored: Mapping[str, Any] | None) -> None:
    """details.memory_estimate for this device when the submit-time one is missing; never fails the run."""
    try:
        estimate = estimate_at_start(spec, method, stored)
    except Exception as exc:
        log.info("no memory estimate: %s", (str(exc).splitlines() or [type(exc).__name__])[0][:300])
        return
    if estimate is not None:
        reporter.details({"memory_estimate": estimate})


def load_tokenizer(model_source: str) -> Any:
    resolved = check_model_source(model_source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, **remote_code_kwargs(resolved))
    except Exception as exc:
        folder = Path(model_source).expanduser()
        if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise TrainingError(
                f"model folder {model_source!r} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); "
                "save it next to the weights with tokenizer.save_pretrained(folder)"
            ) from exc
        raise TrainingError(model_load_error(model_source, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(spec: RunSpec) -> Any:
    resolved = check_model_source(spec.model)
    if resolved.kind == "local" and not any(Path(resolved.location).glob("*.safetensors")):
        raise TrainingError(
            f"model folder {spec.model!r} has no .safetensors weights; tunedeck reads weights only from safetensors "
            "files (a .bin or .pt file is a pickle, which can run code when loaded). Re-save the model with "
            "save_pretrained (safetensors is the default)."
        )
    # safetensors only (never a pickle), trust_remote_code only for an allow-listed hub id at its pinned commit
    kwargs: dict[str, Any] = {**model_load_kwargs(resolved), "dtype": torch.float32}
    kwargs.update(spec.method.model_load_kwargs())
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.location, **kwargs)
    except Exception as exc:
        raise TrainingError(model_load_error(spec.model, exc)) from exc
    if spec.training.gradient_checkpointing:
        model.config.use_cache = False
    return model


def prepare_data(spec: RunSpec, tokenizer: Any, reporter: Reporter | None = None) -> tuple[Any, Any | None]:
    """Rows → tokenized samples under the spec's format and template (see formats.py), split for evaluation."""
    max_length = spec.training.max_length
    prepared = prepare_dataset(spec.dataset, tokenizer, max_length, model_label=repr(spec.model), log=log)
    if reporter is not None:
        truncated = sum(1 for length in prepared.tokenized["full_length"] if length > max_length)
        reporter.details({"dataset": {**prepared.facts, "truncated": truncated}})
    tokenized = drop_unlearned(prepared.tokenized)
    if len(tokenized) == 0:
        raise TrainingError(
            f"no sample of dataset {spec.dataset.source!r} has a response within max_length="
            f"{spec.training.max_length} tokens; raise training.max_length"
        )
    return split_eval(tokenized, spec.dataset.eval_fraction, spec.training.seed)


def count_parameters(model: Any) -> tuple[int, int]:
    """Trainable and total parameters, counted as peft's print_trainable_parameters counts them."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def resolved_peft_config(model: Any) -> dict[str, Any] | None:
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    config = next(iter(configs.values()))
    return json.loads(json.dumps(config.to_dict(), default=_jsonable))


def training_arguments(
    spec: RunSpec, run_dir: Path, *, has_eval: bool, batching: Batching | None = None
) -> TrainingArguments:
    """`batching`: what plan_batching chose for the loaded model; without it, the spec's grouping, no packing."""
    t = spec.training
    if batching is None:
        batching = Batching(group_by_length=t.group_by_length, packing=False, reason="not planned")
    cuda = has_cuda()
    bf16 = t.precision == "bf16" or (t.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
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
        save_total_limit=2,  # the newest may be half-written when the process dies: keep the one before it
        report_to=report_to(spec, run_dir),
        disable_tqdm=True,
        # A packed batch has no padding and no attention mask: every token counts.
        include_num_input_tokens_seen="all" if batching.packing else "non_padding",
        train_sampling_strategy=batching.sampling_strategy(),
        **{CHECKPOINTING_ARGUMENT: t.gradient_checkpointing and not uses_fsdp(spec)},  # FSDP: its own way
        bf16=bf16,
        fp16=t.precision == "fp16",
        use_cpu=not cuda,
        optim=t.optim,
        label_names=["labels"],
        dataloader_num_workers=0,
        **trainer_arguments(spec),  # FSDP on several processes (DDP needs nothing)
    )


def eval_interval(spec: RunSpec) -> int:
    return spec.training.eval_steps or max(1, spec.training.max_steps // 5)


def _needs_final_eval(trainer: Trainer) -> bool:
    return trainer.state.global_step % int(trainer.args.eval_steps or 1) != 0


def check_model_source(source: str) -> ResolvedSource:
    """A hub id, or a model folder inside the worker's data roots that asks to run no code of its own.

    TrainingError otherwise (a URL, a path outside the roots or through a link out of them, auto_map)."""
    return resolve_model(source)


def model_load_error(source: str, exc: BaseException) -> str:
    reason = first_line(exc).rstrip(" .:")
    if "trust_remote_code" in str(exc) or "custom code" in str(exc):
        return (
            f"model {source!r} needs its own code to load, which tunedeck does not run. Use a model whose "
            "architecture transformers ships, or ask the operator to add it to TUNEDECK_REMOTE_CODE_ALLOWLIST "
            "pinned to a commit (org/name@<40-hex commit>)."
        )
    if Path(source).expanduser().exists():
        return f"could not load model from {source!r}: {reason}"
    return (
        f"could not load model {source!r} from the Hugging Face hub: {reason}. "
        "Check the id and network access, or give a local folder."
    )


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
