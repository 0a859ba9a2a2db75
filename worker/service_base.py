"""The base of every service task (the requests the web process waits for: tunedeck_jobs/rpc.py).

A request whose caller gave up (rpc.revoke marks it REVOKED in the result backend) is not started; the answer
would go unread. A task past its soft time limit (the caller's timeout) answers that it ran out of time instead
of failing with a traceback. Both answer {"ok": false, "error": ...}, like any other refusal."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from tunedeck_jobs.rpc import was_revoked

log = logging.getLogger(__name__)


class ServiceTask(Task):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = getattr(self.request, "id", None)
        if was_revoked(task_id):
            log.info("service task %s %s skipped: its caller stopped waiting", self.name, task_id)
            return {"ok": False, "error": "the caller stopped waiting for this request"}
        try:
            return super().__call__(*args, **kwargs)
        except SoftTimeLimitExceeded:
            log.info("service task %s %s stopped at its time limit", self.name, task_id)
            return {"ok": False, "error": "the request ran past the time its caller waits; nobody reads the answer"}
