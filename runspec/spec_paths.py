"""Dotted paths into run specs ("method.r", "training.learning_rate"): read, set, flatten, override.

Pure functions on plain dicts, shared by sweeps (expanding a grid; a search trial in tunedeck_state.search) and
comparisons (config diff, swept parameters).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

METHOD_NAME = "method.name"
#: Paths that never count as a difference between runs: a label.
IGNORED_PATHS = frozenset({"name"})


def flatten(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"method": {"name": "lora", "r": 8}} → {"method.name": "lora", "method.r": 8}. Lists are leaves."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def get_path(spec: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def flat_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys and nested dicts alike, as dotted leaves: {"method": {"name": "full"}} → {"method.name": ...}."""
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{key}."))
        else:
            flat[str(key)] = value
    return flat


def apply_changes(spec: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with `changes` (dotted leaves) applied. A change of method.name replaces the whole
    method block first, so the new method starts from its own defaults rather than the old method's fields."""
    result = copy.deepcopy(dict(spec))
    flat = flat_changes(changes)
    if METHOD_NAME in flat:
        current = get_path(result, METHOD_NAME)
        if current != flat[METHOD_NAME] or not isinstance(result.get("method"), dict):
            result["method"] = {"name": flat[METHOD_NAME]}
    for path, value in flat.items():
        set_path(result, path, value)
    return result


def differing_paths(flat_specs: Iterable[Mapping[str, Any]], ignore: Iterable[str] = IGNORED_PATHS) -> list[str]:
    """Paths whose value is not the same in every spec, in first-seen order. A missing path and a null value
    count as the same (a method without a field and one with the field empty do not differ there)."""
    specs = list(flat_specs)
    ignored = set(ignore)
    order: dict[str, None] = {}
    for flat in specs:
        for path in flat:
            if path not in ignored:
                order.setdefault(path, None)
    missing = object()
    differing = []
    for path in order:
        values = [missing if flat.get(path) is None else flat[path] for flat in specs]
        first = values[0]
        if any((value is missing) != (first is missing) or value != first for value in values[1:]):
            differing.append(path)
    return differing


def short_label(path: str) -> str:
    """The last part of a dotted path: "method.r" → "r"."""
    return path.rsplit(".", 1)[-1]


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(format_value(v) for v in value) or "[]"
    if value is None:
        return "none"
    return str(value)
