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
        value = values.get(name, prop.get("default"))
        if kind == "list" and isinstance(value, list):
            value = LIST_SEPARATOR.join(str(v) for v in value)
        if isinstance(value, Mapping):  # a column mapping: "field=column, ..." (the spec parses it back)
            value = f"{LIST_SEPARATOR} ".join(f"{k}={v}" for k, v in value.items())
        fields.append(
            FormField(
                path=f"{prefix}.{name}",
                label=name,
                kind=kind,
                value="" if value is None else value,
                help=prop.get("description", ""),
                options=options,
                step=step,
                minimum=_bound(prop, "minimum", "exclusiveMinimum"),
                maximum=_bound(prop, "maximum", "exclusiveMaximum"),
            )
        )
    return fields


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


def sections(values: Mapping[str, Any]) -> dict[str, Any]:
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
