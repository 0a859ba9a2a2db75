"""Whether this worker reaches the Hugging Face hub, asked once and remembered, so hub ids fail fast offline.

Without this a hub lookup on a machine without internet waits through the hub client's timeouts and retries while
the web gives up with "no worker answered". Here the first lookup sends one short request to the hub; when it fails
the worker remembers that for OFFLINE_MEMORY_SECONDS and every hub id is refused at once with what happened and
the way out. With HF_HUB_OFFLINE set nothing is asked: the libraries read only their cache and say so themselves.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from worker.training.errors import TrainingError

#: How long an unreachable hub is remembered (per worker process).
OFFLINE_MEMORY_SECONDS = 300.0
#: How long a reachable hub is remembered before the next look.
ONLINE_MEMORY_SECONDS = 60.0
#: The one short try.
PROBE_TIMEOUT_SECONDS = 3.0

_lock = threading.Lock()
_state: dict[str, float | str] = {"offline_until": 0.0, "online_until": 0.0, "reason": ""}


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def unreachable_message(source: str, reason: str) -> str:
    worker = os.environ.get("TUNEDECK_WORKER_NAME") or socket.gethostname()
    return (
        f"the Hugging Face hub ({endpoint()}) is unreachable from worker {worker} ({reason}), so {source!r} cannot "
        "be read from it; use a local model folder or dataset file inside the data roots, or set HF_HUB_OFFLINE=1 "
        "(TUNEDECK_HUB_OFFLINE=1) on the worker to use only what it has cached"
    )


def require_reachable(source: str) -> None:
    """TrainingError at once when the hub is (remembered as) unreachable; else return (a short probe at most)."""
    if offline_mode():
        return
    with _lock:
        now = time.monotonic()
        if now < float(_state["offline_until"]):
            raise TrainingError(unreachable_message(source, str(_state["reason"])))
        if now < float(_state["online_until"]):
            return
        reason = _probe()
        now = time.monotonic()
        if reason is None:
            _state.update(online_until=now + ONLINE_MEMORY_SECONDS, offline_until=0.0, reason="")
            return
        _state.update(offline_until=now + OFFLINE_MEMORY_SECONDS, online_until=0.0, reason=reason)
    raise TrainingError(unreachable_message(source, reason))


def forget() -> None:
    """Ask again at the next lookup (tests, or after the network came back)."""
    with _lock:
        _state.update(offline_until=0.0, online_until=0.0, reason="")


def _probe() -> str | None:
    """None when the hub answers anything at all; else why not."""
    import httpx

    try:
        httpx.head(endpoint(), timeout=PROBE_TIMEOUT_SECONDS, follow_redirects=False)
    except httpx.TimeoutException:
        return f"no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {str(exc)[:200] or 'no connection'}"
    return None
