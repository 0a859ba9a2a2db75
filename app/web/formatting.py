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


def scientific(value: float | None, digits: int = 2) -> str:
    """Small numbers such as learning rates: 2.00e-04 rather than 0.0002."""
    return "–" if value is None else f"{value:.{digits}e}"


def percent(value: float | None) -> str:
    """Three significant digits: 100%, 12.3%, 0.0421%."""
    if value is None:
        return "–"
    if value >= 99.995:
        return "100%"
    return f"{value:.3g}%"


def short_source(value: str | None) -> str:
    """A hub id as it is; a local path as its last part, the folder or file name (the full path goes in a title)."""
    if not value:
        return "–"
    parts = [part for part in value.replace("\\", "/").split("/") if part]
    if value.startswith(("/", "~", ".")) and len(parts) > 1:
        return "…/" + parts[-1]
    return value


def since(value: datetime | None) -> str:
    if value is None:
        return "–"
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    seconds = max(0.0, (datetime.now(UTC) - aware).total_seconds())
    # One unit is enough for "when": 40s ago, 13 min ago, 5 h ago, 3 days ago, then the date.
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    if seconds < 7 * 86400:
        days = int(seconds // 86400)
        return f"{days} day{'s' if days != 1 else ''} ago"
    return aware.strftime("%Y-%m-%d")


def register(env: Environment) -> None:
    env.filters.update(
        human_count=human_count,
        human_bytes=human_bytes,
        human_duration=human_duration,
        number=number,
        scientific=scientific,
        percent=percent,
        short_source=short_source,
        since=since,
    )
