"""The data, the models and the machine of the training benchmarks: what both sides train on."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / ".cache" / "bench-train"
LEARNING_RATES = {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3, "prompt_tuning": 3e-2}
EVAL_ROWS = 64
SEED = 42


@dataclass
class Setup:
    device: str
    model_dir: Path
    train_path: Path
    eval_path: Path
    model_label: str
    batch_size: int
    max_length: int
    steps: int
    train_rows: int
    lengths: list[int] = field(default_factory=list)


@dataclass
class Measured:
    method: str
    variant: str
    rep: int
    seed: int
    step_seconds: list[float]
    real_tokens: int
    computed_tokens: int
    eval_loss: float | None
    peak_bytes: int | None
    #: torch.cuda.max_memory_reserved (the caching allocator's blocks), on a GPU
    reserved_bytes: int | None = None
    #: wall time of the whole call minus the timed steps: loading, tokenizing, saving, evaluating
    outside_seconds: float = 0.0
    #: the dashboard's background writer (DatabaseReporter.flush): how often it wrote, and its CPU seconds
    flushes: int = 0
    flush_cpu_seconds: float = 0.0
    trainable: int | None = None
    batching: dict[str, Any] | None = None
    #: tunedeck's runs: the run's details (memory_estimate, memory_measured, dtypes, kernels, batching)
    details: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds


def prepare(device: str, steps: int, batch_size: int, max_length: int, hidden: int, layers: int) -> Setup:
    """The tokenizer and model (tiny Bloom on the CPU, a course-sized one on a GPU) and the data files."""
    from tunedeck_demo.demo_assets import prepare_demo_assets

    assets = prepare_demo_assets(CACHE, arch="bloom", hidden_size=hidden, num_layers=layers, num_heads=4)
    model_dir, label = assets.model_dir, f"Bloom hidden {hidden}, {layers} layers, 4 heads (random init)"
    if device == "cuda":
        model_dir, label = course_model(CACHE / "tokenizer")
    train_rows = 4 * batch_size * min(steps, 50)
    train_path, eval_path = write_data(train_rows)
    return Setup(device, model_dir, train_path, eval_path, label, batch_size, max_length, steps, train_rows)


def write_data(train_rows: int) -> tuple[Path, Path]:
    """`train_rows` alpaca rows (lengths varying like real instruction data) and EVAL_ROWS held-out ones, as JSONL
    files under the cache (rewritten only when they differ)."""
    from tunedeck_demo.demo_data import generate_instruction_records

    rows = generate_instruction_records(train_rows + EVAL_ROWS, seed=1)
    data_dir = CACHE / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = data_dir / f"instructions-{train_rows}.jsonl", data_dir / "instructions-eval.jsonl"
    for path, part in ((train_path, rows[:train_rows]), (eval_path, rows[train_rows:])):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return train_path, eval_path


def course_model(tokenizer_dir: Path) -> tuple[Path, str]:
    """bloom-389m-zh's architecture (bench/configs), random init, with the demo tokenizer (its ids fit)."""
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig, PreTrainedTokenizerFast

    target = CACHE / "models" / "bloom-389m-zh-random"
    if (target / ".complete").exists():
        return target, "bloom-389m-zh architecture (random init)"
    config_dict = json.loads((ROOT / "bench" / "configs" / "bloom-389m-zh.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = BloomConfig(**{k: v for k, v in config_dict.items() if not k.startswith("_")})
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / ".complete").write_text("{}\n")
    return target, "bloom-389m-zh architecture (random init)"


def machine(device: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load": os.getloadavg(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
