"""Benchmark: training throughput of tunedeck's worker against the course's hand-written recipe.

The baseline is what a user writes by hand following the course: load the model and tokenizer, tokenize with
the course's `process_func` (the "Human: …\\n\\nAssistant: " template, prompt labels -100, cut at max_length),
`DataCollatorForSeq2Seq(padding=True)`, transformers' `Trainer` (peft for LoRA and prompt tuning). tunedeck runs
the same model, data, batch size, steps, learning rate and seed through `worker.training.loop.train`, reporting
through the real `DatabaseReporter` into a scratch SQLite database (the dashboard's path), in two variants:

* **same settings**: `training.group_by_length=false`, `training.packing=off`,
  `training.supervised_logits_only=false` (the recipe's batching, every position projected onto the vocabulary);
* **tuned defaults**: the spec's defaults (length-grouped batches; packing where `auto` chooses it; logits only
  at the positions whose next token is learned).

The bench first checks that the recipe's tokenization and the worker's give identical samples. Every training is
timed by one callback class: the duration of every optimizer step (from the end of the one before, so fetching
and collating the batch and every callback and log are inside; the final checkpoint save and the held-out
evaluation are outside), and the real (attention-mask) and computed tokens of the batches trained. On a CPU the
three variants of a repetition train side by side in threads taking turns (`--steps-per-turn`, default one step;
one computes while the others wait, each dashboard writer writes only in its own run's turn, and the order of a
round alternates so that each variant follows each of the others equally often), so they meet the same load:
the development machine is shared, and whole runs of identical work alone varied tenfold.
`--no-side-by-side` runs them one after the other in rotating order (the default on a GPU, so that peak memory is
each variant's own). Tokens/s is the median over the timed repetitions (all at seed 42), ratios the median of the
ratios within each repetition. More seeds (`--loss-seeds`) give the held-out loss's spread: per learned token on
64 rows never trained on, computed after training by the same code for every variant.

Data: `tunedeck_demo.demo_data.generate_instruction_records` (alpaca rows whose lengths vary like real
instruction data), 4 × batch × steps rows, so a run is exactly one of transformers' length-grouping mega-batches
(here `steps` batches; on real data sets it is 50 batches, a wider window that groups better).

    .venv/bin/python -m bench.train_vs_recipe [--reps 3] [--loss-seeds 1] [--steps 16] [--steps-per-turn 1]
        [--methods full,lora,prompt_tuning] [--device cpu|cuda] [--[no-]side-by-side] [--write [BENCHMARKS.md]]

`--device cuda` (the default where a GPU is present) trains a course-sized Bloom (bench/configs/bloom-389m-zh.json,
random initialisation, the demo tokenizer) for 50 steps in bf16 autocast and also reports peak memory
(`torch.cuda.max_memory_allocated`); `--reps 2` keeps it to a few minutes on one H100. `--write` replaces this
device's part of the section in the markdown file.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.train.recipe import check_same_samples, eval_batches, process_func, run_baseline
from bench.train.setup import ROOT, SEED, Measured, Setup, machine, prepare
from bench.train.tables import BF16, FP32, VARIANT_LABELS, VARIANTS, figures, render, summarize, write_device_part
from bench.train.timing import Turns, side_by_side
from bench.train.tunedeck import ScratchDatabase, accounted_writers, run_tunedeck

# -- the benchmark ------------------------------------------------------------------------------------------


def length_facts(setup: Setup) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    rows = [json.loads(line) for line in setup.train_path.read_text(encoding="utf-8").splitlines() if line]
    process = process_func(tokenizer, 10**9)
    full = sorted(len(process(row)["input_ids"]) for row in rows)
    cut = [min(n, setup.max_length) for n in full]

    def q(p: float) -> int:
        return sorted(cut)[round(p * (len(cut) - 1))]

    return {
        "rows": len(rows),
        "mean": statistics.mean(cut),
        "quantiles": {f"p{int(p * 100)}": q(p) for p in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "min": cut and min(cut),
        "max_before_cut": full[-1],
        "truncated_share": sum(1 for n in full if n > setup.max_length) / len(full),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = args.steps or (50 if device == "cuda" else 16)
    setup = prepare(device, steps, args.batch_size, args.max_length, args.hidden, args.layers)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    facts = length_facts(setup)
    check_same_samples(setup)
    print(
        f"model: {setup.model_label}; data: {facts['rows']} rows, tokens p10/p25/p50/p75/p90 "
        f"{'/'.join(str(v) for v in facts['quantiles'].values())}, mean {facts['mean']:.0f}, "
        f"{facts['truncated_share']:.0%} cut at {setup.max_length}; batch {setup.batch_size}, {steps} steps, "
        f"{args.reps} timed repetitions + {args.loss_seeds} more seed(s) for the loss, device {device}",
        flush=True,
    )
    evals = eval_batches(setup, AutoTokenizer.from_pretrained(setup.model_dir))
    side = args.side_by_side if args.side_by_side is not None else device == "cpu"
    # Timed repetitions all use SEED (identical work, so each step's fastest repetition is the least disturbed);
    # the held-out loss is computed in the first. More seeds give the loss's spread.
    schedule = [(rep, SEED, VARIANTS, rep == 0) for rep in range(args.reps)]
    schedule += [(args.reps + i, SEED + 1 + i, ("baseline", "tuned"), True) for i in range(args.loss_seeds)]
    bf16 = device == "cpu" and args.bf16
    if bf16:  # one after the other (see BF16), the order alternating from round to round
        schedule += [
            (len(schedule) + i, SEED + i, (BF16, FP32) if i % 2 else (FP32, BF16), True)
            for i in range(args.loss_seeds + 1)
        ]
    started = time.perf_counter()
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="tunedeck-bench-train-") as scratch, accounted_writers():
        work = Path(scratch)
        database = ScratchDatabase(work / "data")

        def job(method: str, variant: str, seed: int, held_out: Any) -> Any:
            def run_one(turns: Turns | None) -> Measured:
                if variant == "baseline":
                    return run_baseline(setup, method, seed, work, held_out, turns)
                if variant == BF16:
                    bf16_training = {"precision": "bf16"}
                    return run_tunedeck(
                        setup, method, BF16, seed, work, held_out, database, turns, training_fields=bf16_training
                    )
                return run_tunedeck(setup, method, variant, seed, work, held_out, database, turns)

            return run_one

        for rep, seed, variants, evaluate in schedule:
            for m_index, method in enumerate(methods):
                held_out = evals if evaluate else None
                # side by side, one step each in turn (set up in a fixed order: the seeding stays identical)
                if side and BF16 not in variants:
                    jobs = {v: job(method, v, seed, held_out) for v in variants}
                    done = side_by_side(jobs, Turns(list(variants), args.steps_per_turn))
                    measured_list = [done[v] for v in variants]
                else:  # one after the other, the order rotated so that drift falls on every variant alike
                    shift = 0 if BF16 in variants else (rep + m_index) % len(variants)
                    measured_list = [job(method, v, seed, held_out)(None) for v in variants[shift:] + variants[:shift]]
                for measured in measured_list:
                    measured.rep = rep
                    results.append(measured)
                    loss = "" if measured.eval_loss is None else f", held-out loss {measured.eval_loss:.4f}"
                    peak = f", peak {measured.peak_bytes / 2**30:.2f} GiB" if measured.peak_bytes else ""
                    print(
                        f"  rep {rep} seed {seed} {method:<13} {VARIANT_LABELS[measured.variant]:<25} "
                        f"{measured.tokens_per_second:8.0f} real tok/s ({measured.real_tokens} real / "
                        f"{measured.computed_tokens} computed tokens in {measured.seconds:.2f} s; "
                        f"{measured.outside_seconds:.1f} s around it{loss}{peak})",
                        flush=True,
                    )
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
    elapsed = time.perf_counter() - started
    return {
        "setup": setup,
        "facts": facts,
        "results": results,
        "methods": methods,
        "elapsed": elapsed,
        "reps": args.reps,
        "loss_seeds": args.loss_seeds,
        "side_by_side": side,
        "steps_per_turn": args.steps_per_turn,
        "bf16": bf16,
        "machine": machine(device),
    }


def main(argv: list[str] | None = None) -> list[Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (all at seed 42)")
    parser.add_argument("--loss-seeds", type=int, default=1, help="more seeds for the held-out loss's spread")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per training (0: 16 on CPU, 50 on GPU)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--methods", default="full,lora,prompt_tuning")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--side-by-side",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train a repetition's variants in threads taking one step each in turn (default: on a CPU)",
    )
    parser.add_argument("--steps-per-turn", type=int, default=1, help="side by side: steps a variant takes per turn")
    parser.add_argument("--hidden", type=int, default=256, help="CPU model: hidden size of the tiny Bloom")
    parser.add_argument("--layers", type=int, default=4, help="CPU model: layers of the tiny Bloom")
    parser.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=ROOT / "BENCHMARKS.md",
        help="replace this device's part of the section in BENCHMARKS.md (or the file given)",
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a CPU, also train the tuned defaults in bf16 in the held-out-loss rounds (default: on)",
    )
    parser.add_argument("--json", type=Path, help="also dump the raw measurements here")
    args = parser.parse_args(argv)
    report = run(args)
    summary = summarize(report)
    text = render(report, summary)
    print(text, flush=True)
    if args.json:
        raw = [vars(r) for r in report["results"]]
        args.json.write_text(json.dumps({"facts": report["facts"], "results": raw}, indent=1, default=str))
    if args.write:
        write_device_part(args.write, report["setup"].device, text)
        print(f"wrote {args.write}", flush=True)
    return figures(report, summary)


if __name__ == "__main__":
    main(sys.argv[1:])
