"""A worker never forks a pool process while one of its threads is inside SQLite (worker/fork_safety.py).

Run in a child interpreter, so the at-fork hooks are not installed in the test process itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from harness.stack import ROOT

SCRIPT = textwrap.dedent(
    """
    import os, threading, time
    from worker import fork_safety
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    fork_safety.install()
    fork_safety.install()  # idempotent
    assert all(getattr(getattr(kombu_sqlalchemy.Channel, name), "__fork_guarded__", False)
               for name in fork_safety.KOMBU_METHODS)

    inside, leave, forked = threading.Event(), threading.Event(), threading.Event()

    def in_sqlite():
        with fork_safety.GUARD:  # as the heartbeat thread or the broker poll holds it
            inside.set()
            leave.wait()

    def fork_a_child():
        pid = os.fork()
        if pid == 0:
            with fork_safety.GUARD:  # the child starts with the guard free
                os._exit(0)
        os.waitpid(pid, 0)
        forked.set()

    holder = threading.Thread(target=in_sqlite)
    holder.start()
    inside.wait()
    forker = threading.Thread(target=fork_a_child)
    forker.start()
    assert not forked.wait(1.0), "forked while another thread was inside SQLite"
    leave.set()
    assert forked.wait(30), "the fork never happened"
    holder.join()
    forker.join()
    print("ok")
    """
)


def test_fork_waits_until_no_thread_is_inside_sqlite() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
