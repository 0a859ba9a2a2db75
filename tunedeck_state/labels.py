"""Tags: short labels on runs and sweeps, stored as a JSON list, and the condition that finds a tag's records.

A tag is 1-32 letters, digits or `_ . : + -` (any script's letters: 微调 is a tag). It holds no quotes, spaces or
wildcards, so its JSON text ("tag", as the column stores it) is found as a plain substring of the column's text on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Text, cast

TAG_PATTERN = r"^[\w.:+-]{1,32}$"
TAG_RULE = "1-32 letters, digits or _ . : + - (no spaces)"
MAX_TAGS = 20
NOTES_MAX = 10_000
_TAG = re.compile(TAG_PATTERN)


def tag_problem(tag: str) -> str | None:
    """Why `tag` is not a tag (None when it is one)."""
    if not isinstance(tag, str) or not _TAG.match(tag) or "\n" in tag:
        return f"{str(tag)[:40]!r} is not a tag: use {TAG_RULE}"
    return None


def clean_tags(tags: Iterable[str]) -> list[str]:
    """Stripped, each once, in the order given; ValueError naming the first bad one or too many."""
    cleaned: list[str] = []
    for raw in tags:
        tag = raw.strip() if isinstance(raw, str) else raw
        problem = tag_problem(tag)
        if problem:
            raise ValueError(problem)
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    return cleaned


def has_tag(column: Any, tag: str) -> ColumnElement[bool]:
    """`column` (a JSON list of tags) holds `tag`."""
    return cast(column, Text).contains(json.dumps(tag), autoescape=True)
