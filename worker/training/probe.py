"""The run's final logits on a fixed probe input, saved beside its artifacts (probe.safetensors).

Anyone loading the exported adapter or model elsewhere can check they get the same model: feed
`input_ids` and compare with `logits`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from worker.training.modes import evaluating

PROBE_FILE = "probe.safetensors"
PROBE_TEXT = "Human: Translate to English: 苹果\n\nAssistant: "


def record_probe(model: Any, tokenizer: Any, run_dir: Path, *, write: bool = True) -> Path:
    """`write=False`: run the forward only (a process of a sharded multi-GPU run that is not rank 0)."""
    input_ids = tokenizer(PROBE_TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    with evaluating(model), torch.no_grad():
        logits = model(input_ids=input_ids.to(device)).logits.float().cpu()
    path = run_dir / PROBE_FILE
    if not write:
        return path
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous()}, str(path), {"text": PROBE_TEXT})
    return path
