"""Dotted spec paths live in runspec.spec_paths (the search in tunedeck_state uses them too); the names here stay."""

from runspec.spec_paths import (
    IGNORED_PATHS,
    METHOD_NAME,
    apply_changes,
    differing_paths,
    flat_changes,
    flatten,
    format_value,
    get_path,
    set_path,
    short_label,
)

__all__ = [
    "IGNORED_PATHS",
    "METHOD_NAME",
    "apply_changes",
    "differing_paths",
    "flat_changes",
    "flatten",
    "format_value",
    "get_path",
    "set_path",
    "short_label",
]
