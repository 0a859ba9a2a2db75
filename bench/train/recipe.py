"""The recipe a user writes by hand: the course's tokenization (`process_func`), `DataCollatorForSeq2Seq`,
transformers' `Trainer` and peft, with the plain defaults (random batch order)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.train.setup import LEARNING_RATES, Measured, Setup
from bench.train.timing import Turns, make_probe, measurement


def process_func(tokenizer: Any, max_length: int) -> Any:
    """The course's tokenization, as a user writes it."""

    def process(example: dict[str, Any]) -> dict[str, list[int]]:
        instruction = tokenizer(
            "\n".join(["Human: " + example["instruction"], example["input"]]).strip() + "\n\nAssistant: "
        )
        response = tokenizer(example["output"] + tokenizer.eos_token)
        input_ids = instruction["input_ids"] + response["input_ids"]
        attention_mask = instruction["attention_mask"] + response["attention_mask"]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"]
        if len(input_ids) > max_length:
            input_ids, attention_mask, labels = (x[:max_length] for x in (input_ids, attention_mask, labels))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    return process


def tokenized(path: Path, tokenizer: Any, max_length: int) -> Any:
    import datasets

    rows = datasets.load_dataset("json", data_files=str(path), split="train")
    return rows.map(process_func(tokenizer, max_length), remove_columns=rows.column_names)


def check_same_samples(setup: Setup) -> None:
    """The recipe's tokenization and the worker's give the same samples (same ids, same masked labels)."""
    from transformers import AutoTokenizer

    from runspec import RunSpec
    from worker.training.loop import prepare_data

    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    spec = RunSpec.model_validate(
        {
            "name": "check",
            "model": str(setup.model_dir),
            "dataset": {"source": str(setup.train_path), "eval_fraction": 0},
            "training": {"max_length": setup.max_length},
        }
    )
    worker_set, _ = prepare_data(spec, tokenizer)
    recipe_set = tokenized(setup.train_path, tokenizer, setup.max_length)
    for column in ("input_ids", "labels"):
        if worker_set[column] != recipe_set[column]:
            raise SystemExit(f"the recipe's and the worker's {column} differ: the comparison would not be fair")


def eval_batches(setup: Setup, tokenizer: Any) -> list[dict[str, Any]]:
    from transformers import DataCollatorForSeq2Seq

    data = tokenized(setup.eval_path, tokenizer, setup.max_length)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True)
    rows = [data[i] for i in range(len(data))]
    return [dict(collate(rows[i : i + setup.batch_size])) for i in range(0, len(rows), setup.batch_size)]


_TOKENIZED: dict[tuple[str, int], Any] = {}


@dataclass(frozen=True)
class RecipeOptions:
    """How the recipe loads and trains. The defaults are the course's (fp32 load, the model's own attention, LoRA
    on Bloom's query_key_value); the GPU bench's plain recipe loads a PEFT method's base in bf16 with sdpa."""

    #: the base's dtype for PEFT methods (full fine-tuning loads fp32 master weights and trains under autocast)
    peft_dtype: str = "float32"
    attn_implementation: str | None = None
    #: LoRA's targets; None: peft's default for the architecture
    target_modules: tuple[str, ...] | None = ("query_key_value",)
    lora_r: int | None = None
    #: measure peaks from the start of training (False: a caller measures several trainings together)
    reset_peak: bool = True


COURSE = RecipeOptions()


def run_baseline(
    setup: Setup,
    method: str,
    seed: int,
    work: Path,
    evals: list[dict[str, Any]] | None,
    turns: Turns | None = None,
    options: RecipeOptions = COURSE,
) -> Measured:
    """The recipe, written out by hand: the course's (full, LoRA, prompt tuning), and QLoRA as its scripts do it
    (NF4 with double quantization, prepare_model_for_kbit_training, LoRA)."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from runspec.methods.lora import LoraSpec
    from runspec.methods.prompt_tuning import PromptTuningSpec

    if turns is not None:
        turns.start("baseline")
    began = time.perf_counter()
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    key = (str(setup.train_path), setup.max_length)
    if key not in _TOKENIZED:  # a user tokenizes once per session too
        _TOKENIZED[key] = tokenized(setup.train_path, tokenizer, setup.max_length)
    bf16 = setup.device == "cuda"
    load: dict[str, Any] = {"dtype": torch.float32 if method == "full" else getattr(torch, options.peft_dtype)}
    if options.attn_implementation:
        load["attn_implementation"] = options.attn_implementation
    if method == "qlora":
        load["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(setup.model_dir, **load)
    if method in ("lora", "qlora"):
        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lora = LoraSpec()  # the same parameter values as tunedeck's defaults, written as the course writes them
        config: Any = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            target_modules=list(options.target_modules) if options.target_modules else None,
            r=options.lora_r or lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            init_lora_weights="gaussian",
        )
        model = get_peft_model(model, config)
    elif method == "prompt_tuning":
        virtual = PromptTuningSpec().num_virtual_tokens
        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual))
    args = TrainingArguments(
        output_dir=str(work / f"baseline-{threading.get_ident()}"),
        per_device_train_batch_size=setup.batch_size,
        max_steps=setup.steps,
        learning_rate=LEARNING_RATES[method],
        logging_steps=10,
        seed=seed,
        report_to="none",
        disable_tqdm=True,
        bf16=bf16,
        use_cpu=setup.device == "cpu",
    )
    probe = make_probe(evals, setup.device, turns, "baseline", reset_peak=options.reset_peak)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_TOKENIZED[key],
        data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True),
        callbacks=[probe],
    )
    trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return measurement(method, "baseline", seed, probe, time.perf_counter() - began, trainable, None)
