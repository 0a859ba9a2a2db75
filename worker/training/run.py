"""Train one run: load the base model and data, let the method build the trainable model, run the Trainer."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from runspec import RunSpec
from worker.training.callbacks import ReporterCallback
from worker.training.data import load_rows, split_eval, tokenize_alpaca
from worker.training.errors import TrainingError
from worker.training.reporter import Reporter
from worker.training.resources import device_description, has_cuda
from worker.training.sources import looks_like_local_path

log = logging.getLogger("tunedeck.training")


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


def train(spec: RunSpec, run_dir: Path, reporter: Reporter) -> TrainingResult:
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _forward_logs_to(reporter):
        set_seed(spec.training.seed)
        reporter.details(device_description())

        log.info("loading tokenizer and model %s", spec.model)
        tokenizer = load_tokenizer(spec.model)
        train_set, eval_set = prepare_data(spec, tokenizer)
        reporter.details({"train_samples": len(train_set), "eval_samples": len(eval_set) if eval_set else 0})
        log.info("data: %d training samples, %d held out", len(train_set), len(eval_set) if eval_set else 0)

        model = spec.method.build(load_base_model(spec), tokenizer)
        trainable, total = count_parameters(model)
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

        callback = ReporterCallback(reporter)
        trainer = Trainer(
            model=model,
            args=training_arguments(spec, run_dir, has_eval=eval_set is not None),
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)  # our callback writes the log
        log.info("training for %d steps", spec.training.max_steps)
        trainer.train()
        steps = trainer.state.global_step
        if eval_set is not None and not callback.cancelled and _needs_final_eval(trainer):
            trainer.evaluate()

        artifact_dir = run_dir / ("adapter" if spec.method.is_peft else "model")
        model.save_pretrained(artifact_dir)
        tokenizer.save_pretrained(artifact_dir)
        (run_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False))
        log.info("saved %s to %s", "adapter" if spec.method.is_peft else "model", artifact_dir)

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


def load_tokenizer(model_source: str) -> Any:
    check_model_source(model_source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_source, trust_remote_code=False)
    except Exception as exc:
        raise TrainingError(model_load_error(model_source, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(spec: RunSpec) -> Any:
    kwargs: dict[str, Any] = {"trust_remote_code": False, "dtype": torch.float32}
    kwargs.update(spec.method.model_load_kwargs())
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.model, **kwargs)
    except Exception as exc:
        raise TrainingError(model_load_error(spec.model, exc)) from exc
    if spec.training.gradient_checkpointing:
        model.config.use_cache = False
    return model


def prepare_data(spec: RunSpec, tokenizer: Any) -> tuple[Any, Any | None]:
    rows = load_rows(spec.dataset)
    tokenized = tokenize_alpaca(rows, tokenizer, spec.training.max_length)
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


def training_arguments(spec: RunSpec, run_dir: Path, *, has_eval: bool) -> TrainingArguments:
    t = spec.training
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
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=bf16,
        fp16=t.precision == "fp16",
        use_cpu=not cuda,
        optim="adamw_torch",
        label_names=["labels"],
        dataloader_num_workers=0,
    )


def eval_interval(spec: RunSpec) -> int:
    return spec.training.eval_steps or max(1, spec.training.max_steps // 5)


def _needs_final_eval(trainer: Trainer) -> bool:
    return trainer.state.global_step % int(trainer.args.eval_steps or 1) != 0


def check_model_source(source: str) -> None:
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TrainingError(f"model folder {source!r} has no config.json; is it a transformers model folder?")
    elif looks_like_local_path(source):
        raise TrainingError(f"model path {source!r} does not exist")


def model_load_error(source: str, exc: BaseException) -> str:
    reason = (str(exc).strip() or type(exc).__name__).splitlines()[0][:500]
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
