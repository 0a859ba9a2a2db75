"""Settings that only make sense together, checked when a worker (or the server with its workers) starts.

A bad combination is refused with a message naming the settings and the fix, instead of failing later in
ways that are hard to trace (healthy runs marked lost, a long training delivered to a second worker).
"""

from __future__ import annotations

from tunedeck_state.settings import Settings

#: Missed heartbeats tolerated before a run is declared lost.
MISSED_HEARTBEATS = 3


def heartbeat_interval(settings: Settings) -> float:
    """How often a training run writes its heartbeat (with its metrics)."""
    return min(settings.metric_flush_seconds, settings.heartbeat_seconds)


def worker_settings_problems(settings: Settings) -> list[str]:
    problems = []
    interval = heartbeat_interval(settings)
    if settings.heartbeat_timeout_seconds < MISSED_HEARTBEATS * interval:
        problems.append(
            f"TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS={settings.heartbeat_timeout_seconds:g} allows fewer than "
            f"{MISSED_HEARTBEATS} heartbeats (one every {interval:g} s: the smaller of "
            "TUNEDECK_METRIC_FLUSH_SECONDS and TUNEDECK_HEARTBEAT_SECONDS), so healthy runs would be marked lost; "
            f"set it to at least {MISSED_HEARTBEATS * interval:g}."
        )
    if not settings.uses_embedded_broker and (settings.broker_url or "").startswith(("redis://", "rediss://")):
        if settings.broker_visibility_timeout_seconds <= settings.training_time_limit_seconds:
            problems.append(
                f"TUNEDECK_BROKER_VISIBILITY_TIMEOUT_SECONDS={settings.broker_visibility_timeout_seconds:g} is not "
                f"longer than TUNEDECK_TRAINING_TIME_LIMIT_SECONDS={settings.training_time_limit_seconds:g}: Redis "
                "would hand a training that is still running to a second worker. Raise the visibility timeout "
                "above the time limit (or lower the limit)."
            )
        if settings.broker_visibility_timeout_seconds <= settings.heartbeat_timeout_seconds:
            problems.append(
                f"TUNEDECK_BROKER_VISIBILITY_TIMEOUT_SECONDS={settings.broker_visibility_timeout_seconds:g} is not "
                f"longer than TUNEDECK_HEARTBEAT_TIMEOUT_SECONDS={settings.heartbeat_timeout_seconds:g}: a lost "
                "worker's task would be delivered again before its run is declared lost."
            )
    return problems


def api_token_problem(token: str | None) -> str | None:
    """Why `tunedeck serve` refuses this TUNEDECK_API_TOKEN before it listens, or None. A token is compared exactly
    (hmac.compare_digest, nothing stripped), so whitespace around it, or a token of only whitespace or with
    control characters, is a mistake in the environment file, not a password."""
    if token is None or token == "":
        return None
    if not token.strip():
        return (
            f"TUNEDECK_API_TOKEN is {len(token)} whitespace characters and nothing else; set a real token, for "
            "example the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if token != token.strip():
        return (
            "TUNEDECK_API_TOKEN starts or ends with whitespace (a space, a tab or a newline, often from an "
            "environment file); tokens are compared exactly, so remove it"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in token):
        return "TUNEDECK_API_TOKEN contains a control character; use printable characters only"
    return None


def refusal_message(problems: list[str]) -> str:
    return "refusing to start: the worker settings do not fit together:\n" + "\n".join(f"- {p}" for p in problems)
