"""Submit-time check that the method fits the model: its target modules exist, the architecture takes it.

The web process cannot import torch, so a service worker answers (`tunedeck.service.check_method`: the model is
built from its config on the meta device, without weights, and the method applied to it). When no worker answers
in time the run is queued anyway: the training checks the same at its start and fails at once with the same
message. After a check went unanswered (a deployment without a service worker), later submits only take a quick
look until a worker answers again, so they are not held up each time.
"""

from __future__ import annotations

import logging
import threading

from runspec import RunSpec
from tunedeck_jobs.names import CHECK_METHOD_TASK
from tunedeck_jobs.rpc import ask
from tunedeck_state.settings import get_settings
from tunedeck_state.source_checks import SpecRefused

#: How long a submit waits while the last check went unanswered.
QUICK_LOOK_SECONDS = 3.0

log = logging.getLogger(__name__)
_unanswered = threading.Event()  # set while the last check got no answer in time


def check_method_fits_model(spec: RunSpec, timeout: float | None = None) -> bool:
    """Raise SpecRefused ({method field: message listing the names the model has}) when a worker finds the method
    cannot be applied to the model. Returns quietly when it fits, or when the check could not be made: False when
    no worker answered (a batch then asks no more for that model), else True."""
    if not spec.method.is_peft:
        return True
    timeout = get_settings().method_check_timeout_seconds if timeout is None else timeout
    if timeout <= 0:
        return True
    if _unanswered.is_set():
        timeout = min(timeout, QUICK_LOOK_SECONDS)
    args = [spec.model, spec.method.model_dump(mode="json"), spec.training.model_dump(mode="json")]
    try:
        answer = ask(CHECK_METHOD_TASK, *args, timeout=timeout)
    except Exception as exc:  # broker or result backend unreachable: queueing reports the broker itself
        log.warning("method not checked before queueing: %s: %s", type(exc).__name__, exc)
        return False
    if answer is None:
        _unanswered.set()
        log.warning("method not checked before queueing: no worker answered within %.1f s", timeout)
        return False
    _unanswered.clear()
    if not answer.get("ok") or not answer.get("checked"):
        log.info("method not checked before queueing: %s", answer.get("reason") or answer.get("error"))
        return True
    problems = answer.get("problems") or {}
    if problems:
        raise SpecRefused([(str(field), str(message)) for field, message in problems.items()])
    return True
