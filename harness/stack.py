"""A real tunedeck stack for tests: `tunedeck serve --no-worker` and `tunedeck worker` as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FINAL_STATUSES = {"succeeded", "failed", "cancelled", "pruned"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_env(data_dir: Path, database_url: str | None = None, broker_url: str | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEDECK_")}
    env.update(
        TUNEDECK_DATA_DIR=str(data_dir),
        TUNEDECK_METRIC_FLUSH_SECONDS="0.3",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["TUNEDECK_DATABASE_URL"] = database_url
    if broker_url:
        env["TUNEDECK_BROKER_URL"] = broker_url
    env.update(extra)
    return env


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120)

    def start_server(self) -> None:
        log = open(self.data_dir / f"server-{self.port}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.server = subprocess.Popen(
            [sys.executable, "-m", "tunedeck_cli.main", "serve", "--no-worker", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited: see {log.name}")
            try:
                if httpx.get(f"{self.base_url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy within 60 s")

    def start_worker(
        self,
        queues: str = "training",
        *,
        worker_args: tuple[str, ...] = (),
        cwd: Path | None = None,
        **extra_env: str,
    ) -> subprocess.Popen[bytes]:
        """`tunedeck worker --queues QUEUES [worker_args...]` with extra TUNEDECK_* settings, started in `cwd`
        (default: the repository, which is then also on its import path)."""
        log = open(self.data_dir / f"worker-{len(self.workers)}-{queues}.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunedeck_cli.main",
                "worker",
                "--loglevel",
                "INFO",
                "--queues",
                queues,
                *worker_args,
            ],
            cwd=cwd or ROOT,
            env={**self.env, "PYTHONPATH": _python_path(self.env), **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for process in [*self.workers, self.server]:
            if process is not None and process.poll() is None:
                _terminate(process)

    def wait_for_run(self, run_id: int, timeout: float = 240) -> dict[str, Any]:
        with self.client() as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                run = client.get(f"/api/runs/{run_id}").json()
                if run["status"] in FINAL_STATUSES:
                    return run
                time.sleep(0.5)
        raise TimeoutError(f"run {run_id} not finished after {timeout} s: {run['status']} at step {run['step']}")

    def train(self, spec: dict[str, Any], status: str = "succeeded", timeout: float = 240) -> dict[str, Any]:
        """Submit a run through the API, wait for it to end, and check it ended as `status`."""
        with self.client() as client:
            response = client.post("/api/runs", json=spec)
        assert response.status_code == 201, response.text
        run = self.wait_for_run(response.json()["id"], timeout=timeout)
        assert run["status"] == status, run["error"]
        return run


def running_stack(data_dir: Path, env: dict[str, str]) -> Iterator[Stack]:
    """A server with one training and one service worker, as `tunedeck serve` starts them; stopped at the end."""
    stack = Stack(data_dir=data_dir, env=env)
    try:
        stack.start_server()
        stack.start_worker("training")
        stack.start_worker("service")
        yield stack
    finally:
        stack.stop()


def _python_path(env: dict[str, str]) -> str:
    """The repository first on the import path, so a worker started in another folder runs this checkout."""
    return os.pathsep.join([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])


def _terminate(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM) if _own_group(process) else process.terminate()
        process.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL) if _own_group(process) else process.kill()


def _own_group(process: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False
