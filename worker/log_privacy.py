"""What a worker's log says about a task's result: its id, name, run time and size, never its contents.

Celery logs every successful task at INFO with the repr of its return value (`celery.app.trace.LOG_SUCCESS`), so
completions, prompts and dataset preview rows would land in the log. A filter on that logger replaces the value
with a summary (whether it answered ok, its keys, its size). Installed when the worker imports its task modules
(worker/signals.py), before the pool forks, so every pool process has it."""

from __future__ import annotations

import logging

TRACE_LOGGER = "celery.app.trace"


class ResultSummary(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and "return_value" in args:
            # LOG_SUCCESS's context: the repr Celery made of the result. Its size is what the log keeps.
            summary = {**args, "return_value": _summary_of_repr(str(args["return_value"]))}
            record.args = summary
            if isinstance(getattr(record, "data", None), dict):
                record.data = summary
        return True


def _summary_of_repr(text: str) -> str:
    if text.startswith("{'ok': True") or text.startswith("{'ok': False"):
        ok = "ok=True" if text.startswith("{'ok': True") else "ok=False"
        return f"<{ok}; {len(text)} characters>"
    if text in ("None", "True", "False") or text.lstrip("-").replace(".", "", 1).isdigit():
        return text
    return f"<{len(text)} characters>"


def install() -> None:
    logger = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(f, ResultSummary) for f in logger.filters):
        logger.addFilter(ResultSummary())
