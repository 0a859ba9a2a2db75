"""Telling a local path from a hub id."""

from __future__ import annotations


def looks_like_local_path(source: str) -> bool:
    """A string that can only be meant as a path (a hub id is "name" or "org/name")."""
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source.count("/") > 1
        or source.endswith((".json", ".jsonl", ".csv", ".parquet"))
    )
