"""`make bench-gpu`: tunedeck's training path against the plain recipe on one GPU, on models of real shapes.

Llama-3.2-1B, Qwen2.5-1.5B and bloom-1b4 shapes (configs written in bench/train/shapes.py, random init, saved once
under .cache/bench-train with the demo tokenizer: no download), for LoRA, QLoRA, full fine-tuning (the 1B only)
and prompt tuning. Each row trains N optimizer steps (default 30, batch 8, max_length 512) on the same bundled
instruction rows (tokenized by the demo tokenizer) twice, interleaved (the order alternates from row to row):

* **tunedeck**: `worker.training.loop.train` with the real database reporter (bench/train/tunedeck.py), at its
  defaults: the base in bf16 for PEFT methods, fp32 master weights for full, FlashAttention where installed,
  Liger's kernels where installed, length grouping or packing, logits only where learned;
* **recipe**: HF Trainer + peft as a user writes it (bench/train/recipe.py): a PEFT method's base loaded in bf16,
  sdpa attention (eager for Bloom, which has none), random batch order, padding to the batch's longest sample;
  full fine-tuning loads fp32 under bf16 autocast. Its QLoRA calls `prepare_model_for_kbit_training` as peft's
  QLoRA guide and the QLoRA scripts do, which casts every parameter left unquantized (embeddings, norms, the
  head) to fp32; tunedeck skips it over a 16-bit base (runspec/methods/qlora.py says why), so the QLoRA rows'
  ratios and memory include that choice, not only the training loop.

Printed and written (`--out`: gpu-train.json and gpu-train.md): real (non-pad) tokens/s over the steps after the
first three, the ratio tunedeck / recipe, MFU (4N FLOPs a token for a frozen base, 6N for full, N the matmul
parameters; the dense bf16 peak of the GPU by its name), `max_memory_allocated` and `max_memory_reserved` beside
the estimate (runspec.memory, the estimate the run made at its start; for the recipe, the estimate of tunedeck
with the recipe's settings), and whether TUNEDECK_WORKER_RUNS_PER_GPU=2 packs two LoRA runs on this GPU by their
estimates (worker/gpu_slots.py's rule: estimate + placement margin, twice, within the free memory) and what two of
them really hold when trained at once. About 5 minutes on one H100 or H200 (at most 8: rows past the budget are
skipped and say so).

    python -m bench.gpu_train [--out bench-results] [--steps 30] [--write BENCHMARKS.md]
    python -m bench.gpu_train --smoke --out /tmp/x   # no GPU: tiny shapes, 2 steps, CUDA-only parts skipped
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.train.recipe import RecipeOptions, run_baseline
from bench.train.setup import ROOT, SEED, Measured, Setup, machine, write_data
from bench.train.shapes import SHAPES, SMOKE_SHAPES, BuiltModel, bf16_peak, build, mfu
from bench.train.tunedeck import ScratchDatabase, run_tunedeck

SECTION = "gpu-train"
METHODS = ("lora", "qlora", "full", "prompt_tuning")
FULL_ONLY = ("llama-3.2-1b", "tiny-llama")  # full fine-tuning on the 1B shape only
WARMUP_STEPS = 3
BUDGET_SECONDS = 450  # rows not started by then are skipped: the whole command stays within 8 minutes
TARGET_LORA_RATIO = 1.3
TARGET_ESTIMATE_ERROR = 10.0  # percent, against max_memory_reserved
NO_CUDA = (
    "bench-gpu needs a CUDA GPU and torch.cuda.is_available() is False on this machine. "
    "`python -m bench.gpu_train --smoke` checks the script on a CPU (tiny shapes, 2 steps)."
)


@dataclass
class Row:
    shape: str
    method: str
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def ratio(self) -> float | None:
        t, r = (self.sides.get(k, {}).get("tokens_per_second") for k in ("tunedeck", "recipe"))
        return t / r if t and r else None


def _tokens_per_second(measured: Measured, warmup: int) -> float:
    """Real tokens over the steps after the first `warmup` (kernels compile, caches fill)."""
    steps = measured.step_seconds
    skip = min(warmup, max(0, len(steps) - 1))
    real_per_step = measured.real_tokens / max(1, len(steps))
    return real_per_step * (len(steps) - skip) / sum(steps[skip:])


def _estimate_for_recipe(model: BuiltModel, setup: Setup, method: str) -> dict[str, Any] | None:
    """runspec.memory's estimate for tunedeck run the recipe's way (no Liger, every position's logits, sdpa)."""
    from transformers import AutoConfig

    from runspec import RunSpec
    from runspec.memory.estimate import estimate_memory
    from worker.training.memory_profile import memory_profile

    training = {
        "batch_size": setup.batch_size,
        "max_length": setup.max_length,
        "liger_kernel": "off",
        "supervised_logits_only": False,
        "attn_implementation": "sdpa" if model.supports_sdpa else "eager",
    }
    spec = RunSpec.model_validate(
        {"name": "recipe", "model": str(model.path), "method": {"name": method}, "training": training}
    )
    config = AutoConfig.from_pretrained(model.path)
    config._attn_implementation = training["attn_implementation"]
    profile = memory_profile(config, spec.method)
    return estimate_memory(spec, profile, device=setup.device).to_dict()


def _side(measured: Measured, estimate: dict[str, Any] | None, model: BuiltModel, peak: float | None) -> dict[str, Any]:
    tps = _tokens_per_second(measured, WARMUP_STEPS)
    reserved_estimate = None
    error = None
    if estimate:
        from runspec.memory.units import ALLOCATOR_SLACK

        reserved_estimate = int(estimate["allocated_peak_bytes"] * (1 + ALLOCATOR_SLACK))
        if measured.reserved_bytes:
            error = 100.0 * (reserved_estimate - measured.reserved_bytes) / measured.reserved_bytes
    details = measured.details or {}
    return {
        "tokens_per_second": tps,
        "mfu": mfu(tps, model.matmul_params, measured.method == "full", peak),
        "real_tokens": measured.real_tokens,
        "computed_tokens": measured.computed_tokens,
        "steps": len(measured.step_seconds),
        "max_memory_allocated": measured.peak_bytes,
        "max_memory_reserved": measured.reserved_bytes,
        "estimate_allocated": estimate and estimate.get("allocated_peak_bytes"),
        "estimate_reserved": reserved_estimate,
        "estimate_total": estimate and estimate.get("total_peak_bytes"),
        "estimate_error_percent": error,
        "estimate_made_by": estimate and estimate.get("made_by"),
        "dtypes": details.get("dtypes"),
        "kernels": details.get("kernels"),
        "batching": details.get("batching"),
    }


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def run_row(row: Row, model: BuiltModel, setup: Setup, work: Path, database: ScratchDatabase, order: int) -> None:
    peak = bf16_peak(machine(setup.device).get("gpu", ""))
    options = RecipeOptions(
        peft_dtype="bfloat16" if setup.device == "cuda" else "float32",
        attn_implementation="sdpa" if model.supports_sdpa else None,
        target_modules=None,  # peft's default for the architecture, as tunedeck's LoRA
    )
    sides = ("tunedeck", "recipe") if order % 2 == 0 else ("recipe", "tunedeck")
    for side in sides:
        if side == "tunedeck":
            measured = run_tunedeck(
                setup,
                row.method,
                "tuned",
                SEED,
                work,
                None,
                database,
                training_fields={"save_steps": 10**6},
            )
            estimate = (measured.details or {}).get("memory_estimate")
        else:
            measured = run_baseline(setup, row.method, SEED, work, None, None, options)
            estimate = _estimate_for_recipe(model, setup, row.method)
        row.sides[side] = _side(measured, estimate, model, peak)
        _free_memory(setup.device)


def check_two_per_gpu(
    setup: Setup, model: BuiltModel, lora: Row, work: Path, database: ScratchDatabase
) -> dict[str, Any]:
    """TUNEDECK_WORKER_RUNS_PER_GPU=2: does gpu_slots' rule put two of these LoRA runs on this GPU (estimate +
    margin, twice, within the free memory), and what do two of them hold when they really train at once?"""
    if setup.device != "cuda":
        return {"skipped": "needs a CUDA GPU: runs per GPU share one GPU's memory (this is a CPU smoke run)"}
    import torch

    from tunedeck_jobs.placement import need_bytes
    from tunedeck_state.settings import get_settings

    estimate = {"total_peak_bytes": lora.sides.get("tunedeck", {}).get("estimate_total")}
    margin = get_settings().placement_margin_fraction
    need = need_bytes(estimate, margin)
    free, total = torch.cuda.mem_get_info()
    result: dict[str, Any] = {"need_bytes": need, "free_bytes": free, "total_bytes": total, "margin": margin}
    result["packs_by_estimate"] = bool(need and 2 * need <= free)
    torch.cuda.reset_peak_memory_stats()
    outcomes: dict[str, Any] = {}

    def one(name: str) -> None:
        try:
            run_tunedeck(
                setup,
                "lora",
                "tuned",
                SEED,
                work,
                None,
                database,
                reset_peak=False,
                training_fields={"save_steps": 10**6},
            )
            outcomes[name] = "succeeded"
        except BaseException as exc:
            outcomes[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"

    threads = [threading.Thread(target=one, args=(f"run {i + 1}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.update(
        outcomes=outcomes,
        together_max_allocated=int(torch.cuda.max_memory_allocated()),
        together_max_reserved=int(torch.cuda.max_memory_reserved()),
    )
    result["fits_together"] = all(v == "succeeded" for v in outcomes.values())
    _free_memory(setup.device)
    return result


def _gib(value: Any) -> str:
    return f"{value / 2**30:.2f}" if isinstance(value, int | float) and value else "–"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"CPU ({m['cpu']}), smoke run"
    lines = [
        f"{where}, {m['date']}; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}. "
        f"{report['steps']} steps of batch {report['batch_size']} at max_length {report['max_length']} per side; "
        f"tokens/s over the steps after the first {min(WARMUP_STEPS, max(0, report['steps'] - 1))}; "
        f"{report['elapsed']:.0f} s in all.",
        "",
        "| shape | method | recipe tok/s | tunedeck tok/s | ratio | MFU recipe / tunedeck | tunedeck allocated / "
        "reserved, GiB | estimate (reserved), GiB | error | recipe allocated / reserved | its estimate | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        if row["skipped"]:
            lines.append(f"| {row['shape']} | {row['method']} | skipped: {row['skipped']} |" + " |" * 9)
            continue
        t, r = row["sides"]["tunedeck"], row["sides"]["recipe"]

        def pct(side: dict[str, Any], key: str) -> str:
            return f"{side[key]:.1%}" if side.get(key) is not None else "n/a"

        def err(side: dict[str, Any]) -> str:
            return f"{side['estimate_error_percent']:+.1f}%" if side.get("estimate_error_percent") is not None else "–"

        ratio = f"**{row['ratio']:.2f}**" if row["ratio"] else "–"
        lines.append(
            f"| {row['shape']} | {row['method']} | {r['tokens_per_second']:,.0f} | {t['tokens_per_second']:,.0f} | "
            f"{ratio} | {pct(r, 'mfu')} / {pct(t, 'mfu')} | {_gib(t['max_memory_allocated'])} / "
            f"{_gib(t['max_memory_reserved'])} | {_gib(t['estimate_reserved'])} | {err(t)} | "
            f"{_gib(r['max_memory_allocated'])} / {_gib(r['max_memory_reserved'])} | "
            f"{_gib(r['estimate_reserved'])} | {err(r)} |"
        )
    pair = report["two_per_gpu"]
    lines.append("")
    if pair.get("skipped"):
        lines.append(f"TUNEDECK_WORKER_RUNS_PER_GPU=2: skipped ({pair['skipped']}).")
    else:
        lines.append(
            f"TUNEDECK_WORKER_RUNS_PER_GPU=2 with the {report['pair_shape']} LoRA run: each needs "
            f"{_gib(pair['need_bytes'])} GiB by its estimate (+{pair['margin']:.0%} margin), "
            f"{_gib(pair['free_bytes'])} GiB free: {'packs two' if pair['packs_by_estimate'] else 'does not pack two'}"
            f" by the estimates. Trained at once: {', '.join(f'{k} {v}' for k, v in pair['outcomes'].items())}; "
            f"together max_memory_allocated {_gib(pair['together_max_allocated'])} GiB, reserved "
            f"{_gib(pair['together_max_reserved'])} GiB."
        )
    lines += [
        "",
        "MFU: 4N FLOPs a real token for a frozen base (LoRA, QLoRA, prompt tuning), 6N for full fine-tuning, N the "
        "parameters in matmuls (lm_head once, input embeddings not), over the GPU's dense bf16 peak; attention's "
        "s² FLOPs and QLoRA's de-quantization are not counted. The estimate's reserved figure is its allocated "
        "peak plus the allocator slack (runspec.memory.units.ALLOCATOR_SLACK); error = (estimate − measured) / "
        "measured.",
    ]
    return "\n".join(lines)


def figures(report: dict[str, Any]) -> list[Any]:
    from bench.report import Figure

    out = []
    for row in report["rows"]:
        if row["skipped"]:
            continue
        name = f"GPU train {row['shape']} {row['method']}"
        target = TARGET_LORA_RATIO if row["method"] == "lora" and "1b" in row["shape"] else None
        out.append(Figure(f"{name}: tunedeck / recipe real tokens/s", row["ratio"], target, "×", True))
        error = row["sides"]["tunedeck"].get("estimate_error_percent")
        out.append(
            Figure(
                f"{name}: estimate vs max_memory_reserved, |error|",
                abs(error) if error is not None else None,
                TARGET_ESTIMATE_ERROR,
                "%",
                note="" if error is not None else "no CUDA counters",
            )
        )
    return out


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench-results"))
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per side (0: 30, smoke 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=0, help="0: 512, smoke 128")
    parser.add_argument("--shapes", default="", help="comma-separated (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: tiny shapes, 2 steps")
    parser.add_argument("--write", type=Path, nargs="?", const=ROOT / "BENCHMARKS.md", help="put the table there")
    parser.add_argument(
        "--record", type=Path, help="no training: render a gpu-train.json a GPU machine wrote (with --write: record it)"
    )
    args = parser.parse_args(argv)
    if args.record:
        return record(json.loads(args.record.read_text(encoding="utf-8")), args.write)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.smoke:
        print(NO_CUDA, file=sys.stderr, flush=True)
        return 2
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    chosen = [s.strip() for s in args.shapes.split(",") if s.strip()] or list(shapes)
    unknown = [s for s in chosen if s not in shapes]
    if unknown:
        print(f"unknown shape(s) {unknown}; choose from {', '.join(shapes)}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    steps = args.steps or (2 if args.smoke else 30)
    max_length = args.max_length or (128 if args.smoke else 512)
    started = time.perf_counter()
    train_path, eval_path = write_data(4 * args.batch_size * steps)
    rows: list[Row] = []
    pair: dict[str, Any] = {"skipped": "no LoRA row ran"}
    pair_shape = ""
    with tempfile.TemporaryDirectory(prefix="tunedeck-bench-gpu-") as scratch:
        work = Path(scratch)
        database = ScratchDatabase(work / "data")
        order = 0
        for shape in chosen:
            model_type, values = shapes[shape]
            model = build(shape, model_type, values, device)
            setup = Setup(device, model.path, train_path, eval_path, shape, args.batch_size, max_length, steps, 0)
            for method in methods:
                row = Row(shape, method)
                rows.append(row)
                if method == "full" and shape not in FULL_ONLY:
                    row.skipped = "full fine-tuning on the 1B shape only"
                elif time.perf_counter() - started > BUDGET_SECONDS:
                    row.skipped = f"past the {BUDGET_SECONDS} s budget"
                else:
                    print(f"== {shape} {method}", flush=True)
                    try:
                        run_row(row, model, setup, work, database, order)
                    except Exception as exc:  # one failing row must not hide the others
                        row.skipped = (
                            f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                        )
                        _free_memory(device)
                    order += 1
                    print(f"   {json.dumps({k: v.get('tokens_per_second') for k, v in row.sides.items()})}", flush=True)
            lora = next((r for r in rows if r.shape == shape and r.method == "lora" and not r.skipped), None)
            if lora is not None and not pair_shape:
                pair_shape = shape
                pair = check_two_per_gpu(setup, model, lora, work, database)
    report = {
        "machine": machine(device),
        "smoke": args.smoke,
        "steps": steps,
        "batch_size": args.batch_size,
        "max_length": max_length,
        "elapsed": time.perf_counter() - started,
        "rows": [vars(r) | {"ratio": r.ratio} for r in rows],
        "two_per_gpu": pair,
        "pair_shape": pair_shape,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-train.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu-train.md").write_text(f"## GPU training bench (`make bench-gpu`)\n\n{render(report)}\n")
    print(f"wrote {args.out / 'gpu-train.json'} and gpu-train.md", flush=True)
    return record(report, args.write)


def record(report: dict[str, Any], write: Path | None) -> list[Any]:
    """Print the table (and with `write`, put it in that file's section); the figures for `make bench`'s summary."""
    text = render(report)
    print(text, flush=True)
    if write:
        from bench.report import write_section

        write_section(SECTION, f"## Training on one GPU (`make bench-gpu`)\n\n{text}", write)
    return figures(report)


if __name__ == "__main__":
    result = main(sys.argv[1:])
    sys.exit(result if isinstance(result, int) else 0)
