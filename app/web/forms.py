"""The new-run form, generated from the run spec's pydantic models.

Field names are dotted spec paths ("training.learning_rate", "method.r"), so a form post maps onto the same
RunSpec the API takes, and validation errors point at the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

LIST_SEPARATOR = ","


@dataclass(frozen=True)
class FormField:
    path: str  # dotted spec path, also the input's name
    label: str
    kind: str  # "number", "text", "checkbox", "select", "list"
    value: Any
    help: str = ""
    options: tuple[str, ...] = ()
    step: str = "any"
    minimum: float | None = None
    maximum: float | None = None
    changed: bool = False  # the value is not the field's default


@dataclass(frozen=True)
class FormSection:
    """A collapsed part of the form (a <details>), open when one of its fields is changed or has an error."""

    key: str  # "dataset", "method", "training", "placement"
    title: str
    fields: list[FormField]
    open: bool


def fields_for(
    model: type[BaseModel],
    prefix: str,
    values: Mapping[str, Any] | None = None,
    skip: frozenset[str] = frozenset({"name"}),
) -> list[FormField]:
    """One FormField per field of `model`, with current values taken from `values` (else the default)."""
    schema = model.model_json_schema()
    values = values or {}
    fields = []
    for name, prop in schema.get("properties", {}).items():
        if name in skip:
            continue
        kind, options, step = _kind(prop)
        value = _shown(kind, values.get(name, prop.get("default")))
        fields.append(
            FormField(
                path=f"{prefix}.{name}",
                label=name,
                kind=kind,
                value=value,
                changed=not _same(kind, value, _shown(kind, prop.get("default"))),
                help=prop.get("description", ""),
                options=options,
                step=step,
                minimum=_bound(prop, "minimum", "exclusiveMinimum"),
                maximum=_bound(prop, "maximum", "exclusiveMaximum"),
            )
        )
    return fields


def _shown(kind: str, value: Any) -> Any:
    """A value as its input shows it: lists and column mappings as text, None as empty."""
    if kind == "list" and isinstance(value, list):
        value = LIST_SEPARATOR.join(str(v) for v in value)
    if isinstance(value, Mapping):  # a column mapping: "field=column, ..." (the spec parses it back)
        value = f"{LIST_SEPARATOR} ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else value


def _same(kind: str, value: Any, default: Any) -> bool:
    """Whether a shown value is the default: numbers by value ("2e-4" is 0.0002), checkboxes by truth,
    lists without the spaces around their commas, the rest as text."""
    if kind == "checkbox":
        return _truthy(value) == _truthy(default)
    if kind == "number" and value != "" and default != "":
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return False
    if kind == "list":
        return _items(value) == _items(default)
    return str(value).strip() == str(default).strip()


def _truthy(value: Any) -> bool:
    return str(value).lower() in {"on", "true", "1"} if isinstance(value, str) else bool(value)


def _items(value: Any) -> list[str]:
    return [item.strip() for item in str(value).split(LIST_SEPARATOR) if item.strip()]


def split_main(fields: list[FormField], main: tuple[str, ...]) -> tuple[list[FormField], list[FormField]]:
    """(the main fields in `main`'s order, every other field in the model's order)."""
    by_label = {f.label: f for f in fields}
    return [by_label[name] for name in main if name in by_label], [f for f in fields if f.label not in main]


def section(key: str, title: str, fields: list[FormField], errors: Mapping[str, str]) -> FormSection:
    """A section, open when a field in it is not the default or has an error (an error on the whole part,
    such as dataset columns that do not fit the format, opens it too)."""
    paths = {f.path for f in fields}
    invalid = key in errors or any(path in paths for path in errors)
    return FormSection(key, title, fields, open=invalid or any(f.changed for f in fields))


def _kind(prop: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    variants = prop.get("anyOf", [prop])
    for variant in variants:
        if "enum" in variant:
            return "select", tuple(str(v) for v in variant["enum"]), "any"
        if "const" in variant:
            return "select", (str(variant["const"]),), "any"
        kind = variant.get("type")
        if kind == "boolean":
            return "checkbox", (), "any"
        if kind == "integer":
            return "number", (), "1"
        if kind == "number":
            return "number", (), "any"
        if kind == "array":
            return "list", (), "any"
    return "text", (), "any"


def _bound(prop: dict[str, Any], inclusive: str, exclusive: str) -> float | None:
    for variant in prop.get("anyOf", [prop]):
        if inclusive in variant:
            return float(variant[inclusive])
        if exclusive in variant:
            return float(variant[exclusive])
    return None


class FormConflict(ValueError):
    """Two form fields that cannot both be: `training=x` and `training.max_steps=5` (a value and a group)."""

    def __init__(self, field: str, child: str) -> None:
        self.field = field
        super().__init__(
            f"sent both as a value ({field}) and as a group of fields ({child}): send either {field} or its "
            f"fields {field}.*, not both"
        )


def spec_from_form(form: Mapping[str, Any], list_fields: frozenset[str], bool_fields: frozenset[str]) -> dict:
    """Nest dotted form fields into a spec dict. Empty inputs are left out, so the spec's defaults apply.

    Raises FormConflict when one name is both a value and the parent of another field (`name=a&name.x=b`)."""
    spec: dict[str, Any] = {}
    for path in bool_fields:
        _set(spec, path, path in form and str(form[path]).lower() in {"on", "true", "1"})
    for path, raw in form.items():
        if path in bool_fields or path.startswith("_"):
            continue
        value = str(raw).strip()
        if value == "":
            continue
        if path in list_fields:
            _set(spec, path, [item.strip() for item in value.split(LIST_SEPARATOR) if item.strip()])
        else:
            _set(spec, path, value)
    return spec


def _set(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = spec
    for depth, part in enumerate(parents, start=1):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FormConflict(".".join(parents[:depth]), path)
        node = child
    if isinstance(node.get(leaf), dict):
        raise FormConflict(path, _first_leaf(path, node[leaf]))
    node[leaf] = value


def _first_leaf(path: str, group: dict[str, Any]) -> str:
    key, value = next(iter(group.items()))
    return _first_leaf(f"{path}.{key}", value) if isinstance(value, dict) and value else f"{path}.{key}"


def shown_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values as the form shows them again: a group field that came as a plain value (`method=x`) is shown
    as an empty group, and a value field that came as a group as empty (its error says what was wrong)."""
    shown = dict(values)
    for key in ("dataset", "method", "training", "placement"):
        if key in shown and not isinstance(shown[key], dict):
            shown[key] = {}
    for key in ("name", "model"):
        if isinstance(shown.get(key), dict):
            shown[key] = ""
    return shown


def errors_by_field(exc: ValidationError) -> dict[str, str]:
    """{dotted path: message}, with the discriminator tag dropped from union paths (method.lora.r → method.r)."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if len(loc) >= 2 and loc[0] == "method":
            loc = [loc[0], *loc[2:]] if len(loc) > 2 else loc[:1]
        errors.setdefault(".".join(loc) or "spec", error["msg"])
    return errors


@dataclass(frozen=True)
class RunFormLayout:
    """The new-run form: the essentials open, every other field in a collapsed section.

    Which fields are essential is declared on the spec models (`main_fields`: TrainingSpec's, DatasetSpec's and
    each method's), so a field added to the spec lands in its part's details section without touching the form."""

    dataset_main: list[FormField]
    method_main: list[FormField]
    training_main: list[FormField]
    method_details: FormSection
    sections: list[FormSection]  # dataset details, training details, placement (method details sit in its block)


def run_form_layout(
    values: Mapping[str, Any],
    errors: Mapping[str, str],
    method: type[BaseModel],
    dataset: type[BaseModel],
    training: type[BaseModel],
    placement: type[BaseModel],
) -> RunFormLayout:
    def part(model: type[BaseModel], prefix: str) -> tuple[list[FormField], list[FormField]]:
        fields = fields_for(model, prefix, values.get(prefix), skip=frozenset({"name"}))
        return split_main(fields, getattr(model, "main_fields", ()))

    dataset_main, dataset_rest = part(dataset, "dataset")
    method_main, method_rest = part(method, "method")
    training_main, training_rest = part(training, "training")
    placement_main, placement_rest = part(placement, "placement")
    return RunFormLayout(
        dataset_main=dataset_main,
        method_main=method_main,
        training_main=training_main,
        method_details=section("method", "Method details", method_rest, errors),
        sections=[
            section("dataset", "Dataset details", dataset_rest, errors),
            section("training", "Training details", training_rest, errors),
            section("placement", "Placement", placement_main + placement_rest, errors),
        ],
    )
