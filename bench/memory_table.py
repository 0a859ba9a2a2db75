"""The README's memory table: the course's Bloom models × full / LoRA / QLoRA / prompt tuning, from the estimator.

    python -m bench.memory_table                 # print the table (markdown)
    python -m bench.memory_table --write README.md

Offline: the configs are bench/configs/*.json (written out from the models' published sizes); each model is
built on the meta device by the worker's profiler (worker/training/memory_profile.py) and runspec.memory does the
rest, exactly as POST /api/estimate does for a GPU worker (device "cuda", bf16 autocast, AdamW).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bench" / "configs"
SIZES = ("bloom-389m-zh", "bloom-800m-zh", "bloom-1b4-zh")
METHODS = (("full", "full"), ("lora", "LoRA r=8"), ("qlora", "QLoRA r=8"), ("prompt_tuning", "prompt tuning n=8"))
BATCH, LENGTH = 4, 512
MARK_START = "<!-- memory-table:start -->"
MARK_END = "<!-- memory-table:end -->"
COLUMNS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer", "AdamW state"),
    ("mixed_precision", "bf16 weight copies"),
    ("activations", "activations"),
    ("logits", "logits"),
    ("overhead", "overhead"),
)


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def build_table() -> str:
    from transformers import AutoConfig

    from runspec import RunSpec
    from runspec.memory.estimate import estimate_memory
    from worker.training.memory_profile import memory_profile

    header = [
        "model",
        "method",
        "trainable",
        *(label for _, label in COLUMNS),
        "peak (allocated)",
        "peak + overhead",
        "peak at",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for size in SIZES:
        config = AutoConfig.for_model(**json.loads((CONFIGS / f"{size}.json").read_text()))
        for method, label in METHODS:
            spec = RunSpec.model_validate(
                {
                    "name": f"{size}-{method}",
                    "model": f"Langboat/{size}",
                    "method": {"name": method},
                    "training": {"batch_size": BATCH, "max_length": LENGTH},
                }
            )
            profile = memory_profile(config, spec.method.resolved(spec.training))
            estimate = estimate_memory(spec, profile, device="cuda")
            lines = {line.key: line for line in estimate.lines}
            cells = [gib(lines[key].bytes) if key in lines else "–" for key, _ in COLUMNS]
            trainable = estimate.trainable_params
            rows.append(
                f"| {size} | {label} | {trainable / 1e6:,.2f} M | "
                + " | ".join(cells)
                + f" | **{gib(estimate.allocated_peak_bytes)}** | {gib(estimate.total_peak_bytes)} | "
                + f"{estimate.peak_phase} |"
            )
    notes = [
        "",
        f"GiB; batch {BATCH} × {LENGTH} tokens, bf16 autocast on one CUDA GPU (the PEFT methods' frozen base "
        "loaded in bf16, full fine-tuning with fp32 master weights; Bloom has no Liger kernels), "
        "fused AdamW (`training.optim` default, which updates in place), "
        "no gradient checkpointing. The components are their full sizes and are not all resident at once: "
        "gradients are allocated during backward while activations are freed, so the peak is the largest moment "
        "(*peak at*; see `runspec/memory/`). Prompt tuning adds its 8 virtual tokens to every sample "
        f"({LENGTH + 8} tokens).",
    ]
    return "\n".join(rows + notes)


def write_section(path: Path, body: str) -> None:
    text = path.read_text()
    section = f"{MARK_START}\n{body}\n{MARK_END}"
    if MARK_START not in text or MARK_END not in text:
        raise SystemExit(f"{path} has no {MARK_START} … {MARK_END} section to replace")
    path.write_text(re.sub(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), lambda _: section, text, flags=re.S))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="replace the marked section of this markdown file")
    args = parser.parse_args(argv)
    body = build_table()
    print(body)
    if args.write:
        write_section(args.write, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
