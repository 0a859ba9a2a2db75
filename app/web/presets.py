"""Starting points for the new-run form, taken from the course: each fills in a model, a method and the
training settings the course uses with it (GET /runs/new?preset=KEY)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runspec.methods.prompt_tuning import COURSE_PROMPT

BLOOM_389M = "Langboat/bloom-389m-zh"
BLOOM_1B4 = "Langboat/bloom-1b4-zh"


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    values: dict[str, Any]  # a partial run spec, merged over the form's defaults


PRESETS: dict[str, Preset] = {
    preset.key: preset
    for preset in (
        Preset(
            "lora-bloom-389m",
            "LoRA on bloom-389m-zh",
            {
                "model": BLOOM_389M,
                "method": {"name": "lora", "r": 8, "lora_alpha": 32, "target_modules": ["query_key_value"]},
                "training": {"learning_rate": 2e-4, "gradient_accumulation_steps": 4},
            },
        ),
        Preset(
            "qlora-bloom-1b4",
            "QLoRA on bloom-1b4-zh",
            {
                "model": BLOOM_1B4,
                "method": {
                    "name": "qlora",
                    "r": 8,
                    "lora_alpha": 32,
                    "target_modules": ["query_key_value"],
                    "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": True,
                },
                "training": {
                    "learning_rate": 2e-4,
                    "gradient_accumulation_steps": 4,
                    "gradient_checkpointing": True,
                    "optim": "paged_adamw_32bit",
                },
            },
        ),
        Preset(
            "prompt-tuning",
            "Prompt tuning",
            {
                "model": BLOOM_389M,
                "method": {
                    "name": "prompt_tuning",
                    "num_virtual_tokens": 10,
                    "prompt_tuning_init": "TEXT",
                    "prompt_tuning_init_text": COURSE_PROMPT,
                },
                "training": {"learning_rate": 1e-2},
            },
        ),
        Preset(
            "p-tuning-v2",
            "P-Tuning v2",
            {
                "model": BLOOM_389M,
                "method": {"name": "p_tuning_v2", "num_virtual_tokens": 10},
                "training": {"learning_rate": 1e-2},
            },
        ),
        Preset(
            "full",
            "Full fine-tuning",
            {
                "model": BLOOM_389M,
                "method": {"name": "full"},
                "training": {"learning_rate": 2e-5, "gradient_accumulation_steps": 4},
            },
        ),
    )
}


def apply_preset(values: dict[str, Any], preset: Preset, keep_model: bool = False) -> dict[str, Any]:
    """The form's values with the preset's over them; `keep_model` keeps the model already there (the demo's,
    offline, where the course's hub models cannot be read)."""
    merged = {**values, "method": dict(preset.values["method"])}
    if not keep_model:
        merged["model"] = preset.values["model"]
    merged["training"] = {**(values.get("training") or {}), **preset.values.get("training", {})}
    return merged
