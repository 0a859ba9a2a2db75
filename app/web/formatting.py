"""Jinja filters for numbers people read: parameter counts, bytes, durations."""

from __future__ import annotations

from datetime import UTC, datetime

from jinja2 import Environment


def human_count(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def human_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def since(value: datetime | None) -> str:
    if value is None:
        return "–"
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return human_duration((datetime.now(UTC) - aware).total_seconds()) + " ago"


def register(env: Environment) -> None:
    env.filters.update(
        human_count=human_count,
        human_bytes=human_bytes,
        human_duration=human_duration,
        number=number,
        since=since,
    )
