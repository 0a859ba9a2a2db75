"""The memory estimate against what training really allocates (issue: "Accuracy we hold ourselves to").

On one GPU: Bloom models of the course's sizes (bloom-389m-zh, bloom-800m-zh, bloom-1b4-zh; configs in
bench/configs/, written out from their published sizes, random initialisation) × full fine-tuning, LoRA and
QLoRA × two sequence lengths × with and without gradient checkpointing. Each cell builds the model as the worker
does (worker.training: the method's build, its TrainingArguments, the Trainer), trains a few optimizer steps on
random token ids of exactly max_length tokens and compares `torch.cuda.max_memory_allocated` with the estimate's
allocated peak (runspec.memory; the framework-overhead line is outside PyTorch's counters and compared with
NVML instead when pynvml is installed).

    python -m bench.gpu_memory                        # the GPU matrix (about 5 minutes on one H100)
    python -m bench.gpu_memory --write BENCHMARKS.md  # and put the table into BENCHMARKS.md
    python -m bench.gpu_memory --cpu-smoke            # no GPU: a tiny Bloom, 2 steps, peak tracked on the CPU

On a CPU the peak comes from worker.training.memory_measured.LivePeak, which follows every tensor storage allocated
while training (a dispatch mode and weak references): the quantity max_memory_allocated counts, for the CPU. It does not
see temporaries inside custom kernels (bitsandbytes de-quantizing a 4-bit weight), which a GPU's counter does.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bench" / "configs"
SIZES = ("bloom-389m-zh", "bloom-800m-zh", "bloom-1b4-zh")
METHODS = ("full", "lora", "qlora")
GPU_LENGTHS = (256, 1024)
GPU_BATCH = 4
GPU_STEPS = 3  # the peak comes from step 2 on, when the optimizer state exists
TIME_BUDGET_SECONDS = 470  # the whole matrix must finish within 8 minutes on one H100
SMOKE_CONFIG = {
    "architectures": ["BloomForCausalLM"],
    "model_type": "bloom",
    "vocab_size": 512,
    "hidden_size": 64,
    "n_layer": 2,
    "n_head": 4,
    "tie_word_embeddings": True,
}
SMOKE_LENGTHS = (32, 64)
MARK_START = "<!-- gpu-memory:start -->"
MARK_END = "<!-- gpu-memory:end -->"


@dataclass
class Cell:
    size: str
    method: str
    seq_len: int
    checkpointing: bool
    estimate_bytes: int = 0
    total_bytes: int = 0
    measured_bytes: int | None = None
    reserved_bytes: int | None = None
    nvml_bytes: int | None = None
    peak_phase: str = ""
    error: str | None = None
    seconds: float = 0.0

    @property
    def error_percent(self) -> float | None:
        if not self.measured_bytes:
            return None
        return 100.0 * (self.estimate_bytes - self.measured_bytes) / self.measured_bytes


def load_config(name: str) -> dict[str, Any]:
    return dict(json.loads((CONFIGS / f"{name}.json").read_text()))


def _spec(size: str, method: str, seq_len: int, checkpointing: bool, batch: int, steps: int, model_dir: Path) -> Any:
    from runspec import RunSpec

    return RunSpec.model_validate(
        {
            "name": f"{size}-{method}-{seq_len}{'-gc' if checkpointing else ''}",
            "model": str(model_dir),
            "method": {"name": method},
            "training": {
                "max_steps": steps,
                "batch_size": batch,
                "max_length": seq_len,
                "gradient_checkpointing": checkpointing,
                "logging_steps": 1,
                "eval_generation_samples": 0,
                "save_steps": 1_000_000,
            },
        }
    )


def _dataset(vocab: int, seq_len: int, rows: int) -> Any:
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (rows, seq_len), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len] * rows, "labels": ids})


def _saved_checkpoint(config: Any, directory: Path) -> Path:
    """A random-init checkpoint on disk, for methods that load through from_pretrained (4-bit QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not (directory / "config.json").is_file():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is fast on the GPU
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
        model.save_pretrained(directory)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return directory


def _saved_checkpoint_if_needed(spec: Any, config: Any, directory: Path) -> None:
    if "quantization_config" in spec.method.model_load_kwargs():
        _saved_checkpoint(config, directory)


def _build(spec: Any, config: Any, device: str, checkpoint_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from worker.training.method_fit import build_method

    method = spec.method.resolved(spec.training)
    load_kwargs = method.model_load_kwargs()
    if "quantization_config" in load_kwargs:
        directory = _saved_checkpoint(config, checkpoint_dir)
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=torch.float32,
            device_map={"": device if device == "cpu" else 0},
            **load_kwargs,
        )
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec.training.gradient_checkpointing:
        model.config.use_cache = False
    return build_method(method, model, None)


def run_cell(cell: Cell, config_dict: dict[str, Any], device: str, batch: int, steps: int, work: Path) -> Cell:
    import torch
    from transformers import AutoConfig, PrinterCallback, Trainer, default_data_collator

    from runspec.memory.estimate import estimate_memory
    from worker.training.loop import training_arguments
    from worker.training.memory_measured import MemoryProbe
    from worker.training.memory_profile import memory_profile

    started = time.perf_counter()
    config = AutoConfig.for_model(**config_dict)
    model_dir = work / cell.size
    model_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(model_dir)
    spec = _spec(cell.size, cell.method, cell.seq_len, cell.checkpointing, batch, steps, model_dir)
    profile = memory_profile(config, spec.method.resolved(spec.training))
    estimate = estimate_memory(spec, profile, device=device)
    cell.estimate_bytes = estimate.allocated_peak_bytes
    cell.total_bytes = estimate.total_peak_bytes
    cell.peak_phase = estimate.peak_phase

    baseline = 0
    if device == "cuda":
        _saved_checkpoint_if_needed(spec, config, work / f"{cell.size}-checkpoint")
        gc.collect()
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated()  # whatever an earlier cell left behind is not this cell's
    model = _build(spec, config, device, work / f"{cell.size}-checkpoint")
    run_dir = work / "runs" / spec.name
    trainer = Trainer(
        model=model,
        args=training_arguments(spec, run_dir, has_eval=False),
        train_dataset=_dataset(int(config.vocab_size), cell.seq_len, batch * steps),
        data_collator=default_data_collator,
        callbacks=[MemoryProbe(lambda measured: None)],
    )
    trainer.remove_callback(PrinterCallback)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        torch.cuda.synchronize()
        cell.measured_bytes = int(torch.cuda.max_memory_allocated()) - baseline
        cell.reserved_bytes = int(torch.cuda.max_memory_reserved())
        from worker.training.memory_measured import nvml_used_bytes

        cell.nvml_bytes = nvml_used_bytes()
    else:
        from worker.training.memory_measured import LivePeak

        tracker = LivePeak()
        tracker.track_module(model)
        with tracker:
            trainer.train()
        cell.measured_bytes = tracker.peak
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    cell.seconds = time.perf_counter() - started
    return cell


def human(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def table(cells: list[Cell], device_label: str) -> str:
    rows = [
        f"Device: {device_label}. Estimate: runspec.memory's allocated peak (no framework overhead); measured: "
        + (
            "torch.cuda.max_memory_allocated"
            if "CPU" not in device_label
            else "the peak of all live tensor storages on the CPU (worker.training.memory_measured.LivePeak)"
        )
        + ".",
        "",
        "| model | method | seq | grad. ckpt | estimate | measured | error | peak phase (estimate) | "
        "est. with overhead | reserved | NVML |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        error = "–" if c.error_percent is None else f"{c.error_percent:+.1f}%"
        if c.error:
            error = f"failed: {c.error[:80]}"
        rows.append(
            f"| {c.size} | {c.method} | {c.seq_len} | {'yes' if c.checkpointing else 'no'} | "
            f"{human(c.estimate_bytes)} | {human(c.measured_bytes)} | {error} | {c.peak_phase} | "
            f"{human(c.total_bytes)} | {human(c.reserved_bytes)} | {human(c.nvml_bytes)} |"
        )
    errors = [abs(c.error_percent) for c in cells if c.error_percent is not None]
    if errors:
        rows += ["", f"Largest error: {max(errors):.1f}% over {len(errors)} cells (target: within 10%)."]
    return "\n".join(rows)


def write_section(path: Path, body: str) -> None:
    """Replace the marked GPU-memory section of `path` (created with a heading if absent)."""
    section = f"{MARK_START}\n{body}\n{MARK_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_START in text and MARK_END in text:
        text = re.sub(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Memory estimate vs measurement (GPU)\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny Bloom on the CPU, 2 steps (CI)")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lengths", help=f"sequence lengths (default {GPU_LENGTHS}; smoke: {SMOKE_LENGTHS})")
    parser.add_argument("--batch", type=int, default=GPU_BATCH)
    parser.add_argument("--steps", type=int, default=GPU_STEPS)
    parser.add_argument("--budget", type=float, default=TIME_BUDGET_SECONDS, help="stop starting cells after this")
    parser.add_argument("--write", type=Path, help="put the table into this markdown file (GPU runs)")
    parser.add_argument("--json", type=Path, help="also write the cells as JSON")
    args = parser.parse_args(argv)

    import torch

    if args.cpu_smoke:
        device, device_label = "cpu", "CPU (smoke mode: tiny Bloom, 2 steps)"
        sizes: list[tuple[str, dict[str, Any]]] = [("tiny-bloom", SMOKE_CONFIG)]
        lengths = [int(n) for n in (args.lengths or ",".join(map(str, SMOKE_LENGTHS))).split(",")]
        batch, steps = 2, 2  # step 2: the optimizer state exists, as in a real run
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-smoke, or on a GPU machine", file=sys.stderr)
            return 2
        device = "cuda"
        device_label = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        sizes = [(name, load_config(name)) for name in args.sizes.split(",") if name]
        lengths = [int(n) for n in (args.lengths or ",".join(map(str, GPU_LENGTHS))).split(",")]
        batch, steps = args.batch, args.steps
    methods = [m for m in args.methods.split(",") if m]

    started = time.perf_counter()
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="tunedeck-gpu-memory-") as tmp:
        work = Path(tmp)
        for size, config in sizes:
            for method in methods:
                for seq_len in lengths:
                    for checkpointing in (False, True):
                        cell = Cell(size, method, seq_len, checkpointing)
                        cells.append(cell)
                        if time.perf_counter() - started > args.budget:
                            cell.error = "skipped: time budget spent"
                            continue
                        try:
                            run_cell(cell, config, device, batch, steps, work)
                        except Exception as exc:  # one failing cell must not lose the others
                            cell.error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                            if device == "cuda":
                                gc.collect()
                                torch.cuda.empty_cache()
                        print(
                            f"{size} {method} seq={seq_len} gc={checkpointing}: estimate {human(cell.estimate_bytes)}"
                            f" measured {human(cell.measured_bytes)} "
                            + (f"{cell.error_percent:+.1f}%" if cell.error_percent is not None else cell.error or "")
                            + f" ({cell.seconds:.1f} s)",
                            flush=True,
                        )
    body = table(cells, device_label)
    body += f"\n\nbatch {batch}, {steps} optimizer step(s) per cell, {time.perf_counter() - started:.0f} s in all."
    print()
    print(body)
    if args.json:
        args.json.write_text(json.dumps([{**c.__dict__, "error_percent": c.error_percent} for c in cells], indent=1))
    if args.write and not args.cpu_smoke:
        write_section(args.write, body)
        print(f"\nwrote {args.write}")
    failed = [c for c in cells if c.error and not c.error.startswith("skipped")]
    return 1 if failed or any(c.measured_bytes is None for c in cells if not c.error) else 0


if __name__ == "__main__":
    sys.exit(main())
