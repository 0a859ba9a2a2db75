"""The new-run form's layout (app/web/forms.py: run_form_layout): which fields are essentials, which section each
other field lands in, and when a section opens by itself. No stack needed: the layout is derived from the spec."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field

from app.web.forms import RunFormLayout, run_form_layout
from app.web.presets import PRESETS, apply_preset
from runspec import METHODS, DatasetSpec, PlacementSpec, RunSpec, TrainingSpec


def _layout(values: dict[str, Any] | None = None, errors: dict[str, str] | None = None, **models: Any) -> RunFormLayout:
    values = values or {}
    method = METHODS[(values.get("method") or {}).get("name", "lora")]
    return run_form_layout(
        values,
        errors or {},
        models.get("method", method),
        models.get("dataset", DatasetSpec),
        models.get("training", TrainingSpec),
        models.get("placement", PlacementSpec),
    )


def _sections(layout: RunFormLayout) -> dict[str, Any]:
    return {s.key: s for s in [layout.method_details, *layout.sections]}


def test_essentials_first_everything_else_in_closed_sections() -> None:
    layout = _layout()
    assert [f.path for f in layout.training_main] == [
        "training.max_steps",
        "training.learning_rate",
        "training.batch_size",
        "training.max_length",
    ]
    assert [f.path for f in layout.method_main] == ["method.r", "method.lora_alpha", "method.target_modules"]
    assert [f.path for f in layout.dataset_main] == ["dataset.source"]
    sections = _sections(layout)
    assert list(sections) == ["method", "dataset", "training", "placement"]
    assert not any(s.open for s in sections.values()), "defaults keep every section closed"
    # Every spec field is shown exactly once.
    shown = [f.path for f in layout.dataset_main + layout.method_main + layout.training_main]
    shown += [f.path for s in sections.values() for f in s.fields]
    expected = [f"dataset.{n}" for n in DatasetSpec.model_fields] + [f"training.{n}" for n in TrainingSpec.model_fields]
    expected += [f"method.{n}" for n in METHODS["lora"].model_fields if n != "name"]
    expected += [f"placement.{n}" for n in PlacementSpec.model_fields]
    assert sorted(shown) == sorted(expected)
    assert "training.warmup_steps" in {f.path for f in sections["training"].fields}
    assert "method.lora_dropout" in {f.path for f in sections["method"].fields}


def test_a_new_training_field_lands_in_training_details() -> None:
    class NewTraining(TrainingSpec):
        liger_kernel: bool = Field(False, description="a field the form does not know")
        attn_implementation: str = "auto"

    layout = _layout(training=NewTraining)
    training = _sections(layout)["training"]
    assert {"training.liger_kernel", "training.attn_implementation"} <= {f.path for f in training.fields}
    assert not training.open
    changed = _sections(_layout({"training": {"liger_kernel": True}}, training=NewTraining))
    assert changed["training"].open and not changed["dataset"].open


@pytest.mark.parametrize(
    ("values", "opened"),
    [
        ({"training": {"learning_rate": "0.001"}}, set()),  # an essential: no section opens
        ({"training": {"warmup_steps": "10"}}, {"training"}),
        ({"training": {"warmup_steps": "0", "weight_decay": "0.0"}}, set()),  # typed, but the defaults
        ({"training": {"gradient_checkpointing": True}}, {"training"}),
        ({"training": {"group_by_length": False}}, {"training"}),  # a checkbox unticked that is on by default
        ({"dataset": {"eval_fraction": "0.1"}}, {"dataset"}),
        ({"dataset": {"eval_fraction": "5e-2"}}, set()),  # the default, written otherwise
        ({"method": {"name": "lora", "lora_dropout": "0.1"}}, {"method"}),
        ({"method": {"name": "lora", "r": "32"}}, set()),
        ({"placement": {"priority": "7"}}, {"placement"}),
        ({"dataset": {"columns": {"instruction": "prompt"}}}, {"dataset"}),
    ],
)
def test_a_section_opens_when_a_value_is_not_the_default(values: dict[str, Any], opened: set[str]) -> None:
    assert {key for key, s in _sections(_layout(values)).items() if s.open} == opened


@pytest.mark.parametrize(
    ("errors", "opened"),
    [
        ({"training.warmup_steps": "bad"}, {"training"}),
        ({"training.max_steps": "bad"}, set()),  # an essential: shown already
        ({"dataset": "the text format is learned as it is"}, {"dataset"}),  # an error on the whole part
        ({"method.lora_dropout": "bad", "placement.worker": "bad"}, {"method", "placement"}),
    ],
)
def test_a_section_with_an_error_opens(errors: dict[str, str], opened: set[str]) -> None:
    assert {key for key, s in _sections(_layout(errors=errors)).items() if s.open} == opened


def test_a_cloned_default_spec_keeps_the_sections_closed() -> None:
    spec = RunSpec(name="x").model_dump(mode="json")
    assert not any(s.open for s in _sections(_layout(spec)).values())


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_real_main_fields(name: str) -> None:
    cls = METHODS[name]
    assert cls.main_fields, f"{name} declares no main_fields"
    assert set(cls.main_fields) <= set(cls.model_fields) - {"name"}, f"{name}: unknown main_fields"
    layout = _layout({"method": {"name": name}})
    assert [f.label for f in layout.method_main] == list(cls.main_fields)
    assert {f.label for f in layout.method_details.fields} == set(cls.model_fields) - {"name", *cls.main_fields}


@pytest.mark.parametrize("key", list(PRESETS))
def test_presets_are_valid_specs(key: str) -> None:
    values = apply_preset({"name": key, "dataset": {"source": "data.jsonl"}}, PRESETS[key])
    spec = RunSpec.model_validate(values)
    assert spec.model == PRESETS[key].values["model"]
    kept = apply_preset({"name": key, "model": "/demo/model"}, PRESETS[key], keep_model=True)
    assert RunSpec.model_validate(kept).model == "/demo/model"
