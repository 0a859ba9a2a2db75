"""The new-sweep form: its posted fields read back into the values that re-render it, and those values into the
SweepRequest that `POST /api/sweeps` takes (so the API's validation is the form's), with each problem placed
next to the form field it is about.

Strategy grid: rows of (field, comma-separated values). Strategy random / tpe: rows of space entries (field, type
int / float / choice, low, high, log or choices), the budget, the objective and the pruner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from app.services import sweeps as sweep_service
from app.services.sweeps import SweepInvalid, SweepRequest
from runspec import METHODS, DatasetSpec, TrainingSpec
from tunedeck_state.search.space import OBJECTIVE_METRICS, PRUNERS, STRATEGIES

VARY_ROWS = 4
SPACE_ROWS = 4
SPACE_TYPES = ("int", "float", "choice")
TRUE = {"on", "true", "1"}


def _leaf_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Fields a sweep can vary from a form: scalars (numbers, strings, booleans, choices), not lists."""
    paths = []
    for name, prop in model.model_json_schema().get("properties", {}).items():
        variants = prop.get("anyOf", [prop])
        if any(v.get("type") in ("array", "object") or "$ref" in v for v in variants):
            continue
        paths.append(f"{prefix}.{name}")
    return paths


def vary_options() -> list[str]:
    options = ["method.name"]
    for cls in METHODS.values():
        options += [p for p in _leaf_paths(cls, "method") if p not in options]
    options += _leaf_paths(TrainingSpec, "training")
    options += [p for p in _leaf_paths(DatasetSpec, "dataset") if p != "dataset.source"]
    return options


def parse_values(raw: str) -> list[Any]:
    """ "1, 2, 4" → [1, 2, 4]; "1e-4, 3e-4" → floats; "lora, full" → strings; true/false → booleans."""
    values = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = json.loads(part)
        except ValueError:
            value = part
        values.append(value if isinstance(value, int | float | str | bool) else part)
    return values


def _number(raw: str) -> Any:
    """A bound as typed: a number when it reads as one, else the text (which the validation then names)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, int | float) and not isinstance(value, bool) else raw


def _rows(form: Mapping[str, Any], prefix: str, keys: Sequence[str], shown: int) -> list[dict[str, str]]:
    rows = []
    for i in range(shown * 4):
        if not any(f"{prefix}-{i}-{key}" in form for key in keys):
            continue
        rows.append({key: str(form.get(f"{prefix}-{i}-{key}", "")).strip() for key in keys})
    return rows


def form_values(form: Mapping[str, Any]) -> dict[str, Any]:
    """The posted fields, as the template shows them again."""
    space = _rows(form, "space", ("path", "type", "low", "high", "log", "choices"), SPACE_ROWS)
    for row in space:
        row["log"] = "on" if row["log"].lower() in TRUE else ""
    return {
        "name": str(form.get("name", "")).strip(),
        "base": str(form.get("base", "")),
        "rerun": str(form.get("rerun", "")).lower() in TRUE,
        "strategy": str(form.get("strategy", "grid")),  # an unknown one is refused by the request's validation
        "vary": _rows(form, "vary", ("path", "values"), VARY_ROWS),
        "space": space,
        "max_runs": str(form.get("max_runs", "")).strip(),
        "max_concurrent": str(form.get("max_concurrent", "")).strip(),
        "gpu_hours": str(form.get("gpu_hours", "")).strip(),
        "objective_metric": str(form.get("objective_metric", "best_eval_loss")),
        "objective_direction": str(form.get("objective_direction", "minimize")),
        "pruner": str(form.get("pruner", "")),
        "seed": str(form.get("seed", "")).strip(),
    }


def _problem(field: str, msg: str) -> dict[str, Any]:
    return {"run_index": None, "run_name": None, "field": field, "msg": msg}


def _base(text: str, problems: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        base = json.loads(text or "{}")
        if not isinstance(base, dict):
            raise ValueError("the base spec must be a JSON object")
    except ValueError as exc:
        problems.append(_problem("base", f"not valid JSON: {exc}"))
        return {}
    except RecursionError:  # json.loads of "[[[[…" thousands deep
        problems.append(_problem("base", sweep_service.TOO_DEEP))
        return {}
    return base


def _grid(rows: Sequence[Mapping[str, str]], problems: list[dict[str, Any]]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for row in rows:
        if not row["path"] and not row["values"]:
            continue
        if not row["path"]:
            problems.append(_problem("vary", "choose a field to vary"))
            continue
        parsed = parse_values(row["values"])
        if not parsed:
            problems.append(_problem(row["path"], "give comma-separated values"))
            continue
        if row["path"] in grid:
            problems.append(_problem(row["path"], "is listed twice"))
        grid[row["path"]] = parsed
    return grid


def _space(rows: Sequence[Mapping[str, str]], problems: list[dict[str, Any]]) -> dict[str, Any]:
    """Space rows → the API's space: a range {"type", "low", "high", "log"} or a list of choices."""
    space: dict[str, Any] = {}
    for i, row in enumerate(rows):
        filled = row["low"] or row["high"] or row["choices"]
        if not row["path"] and not filled:
            continue
        if not row["path"]:
            problems.append(_problem("space", "choose a field to search"))
            continue
        field = f"space.{row['path']}"
        if row["path"] in space:
            problems.append({**_problem(field, "is listed twice"), "anchor": f"space-{i}"})
            continue
        if row["type"] == "choice":
            space[row["path"]] = parse_values(row["choices"])  # [] is refused by the API's check: "no choices"
            continue
        entry: dict[str, Any] = {"type": row["type"], "log": row.get("log") == "on"}
        for bound in ("low", "high"):
            if row[bound]:
                entry[bound] = _number(row[bound])
        space[row["path"]] = entry
    return space


def _search_fields(values: Mapping[str, Any], problems: list[dict[str, Any]]) -> dict[str, Any]:
    budget = {k: _number(values[k]) for k in ("max_runs", "max_concurrent", "gpu_hours") if values.get(k)}
    fields: dict[str, Any] = {
        "space": _space(values["space"], problems),
        "objective": {"metric": values["objective_metric"], "direction": values["objective_direction"]},
        "budget": budget or None,
        "pruner": values["pruner"] or None,
    }
    if values["seed"]:
        fields["seed"] = _number(values["seed"])
    return fields


def request_from_values(values: Mapping[str, Any]) -> SweepRequest:
    """The SweepRequest the form's values make, checked by its own validation. Raises SweepInvalid."""
    problems: list[dict[str, Any]] = []
    body: dict[str, Any] = {
        "name": values["name"],
        "base": _base(values["base"], problems),
        "rerun": values["rerun"],
        "strategy": values["strategy"],
    }
    if values["strategy"] == "grid":
        body["grid"] = _grid(values["vary"], problems)
    else:
        body.update(_search_fields(values, problems))
    if problems:
        raise SweepInvalid(problems)
    try:
        return SweepRequest.model_validate(body)
    except ValidationError as exc:
        raise SweepInvalid(
            [_problem(".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        ) from None


def _anchor(field: str, space_paths: Sequence[str]) -> str:
    """The form field a problem's field names: a space row (space-<i>), a section, or the field itself."""
    if field.startswith("space."):
        for i, path in enumerate(space_paths):
            if path and (field == f"space.{path}" or field.startswith(f"space.{path}.")):
                return f"space-{i}"
        return "space"
    for section in ("budget", "objective", "pruner", "space", "grid", "seed", "strategy"):
        if field == section or field.startswith(f"{section}."):
            return section
    return field


def field_errors(problems: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> dict[str, str]:
    """Problems that name no single run, by the form field shown next to them."""
    paths = [row["path"] for row in values.get("space") or []]
    errors: dict[str, list[str]] = {}
    for p in problems:
        if p.get("run_index") is not None:
            continue
        anchor = str(p.get("anchor") or _anchor(str(p["field"]), paths))
        detail = str(p["field"]).removeprefix(f"{anchor}.") if anchor in ("budget", "objective", "pruner") else ""
        errors.setdefault(anchor, []).append(f"{detail}: {p['msg']}" if detail and detail != anchor else p["msg"])
    return {anchor: "; ".join(msgs) for anchor, msgs in errors.items()}


def choices() -> dict[str, Any]:
    """The form's fixed options."""
    return {
        "strategies": STRATEGIES,
        "space_types": SPACE_TYPES,
        "objective_metrics": OBJECTIVE_METRICS,
        "pruners": PRUNERS,
    }
