"""The `tunedeck` command: serve, worker, db upgrade, demo."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunedeck_state.settings import get_settings

cli = typer.Typer(help="tunedeck: fine-tune causal language models and compare the runs.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
demo_cli = typer.Typer(help="The offline demo: a tiny model, bundled data, demo runs.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
disk_cli = typer.Typer(help="What the runs' folders hold on disk.", no_args_is_help=True)
cli.add_typer(demo_cli, name="demo")
cli.add_typer(disk_cli, name="disk")


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from tunedeck_state.migrate import upgrade_database

    upgrade_database(revision)
    typer.echo(f"database at {revision}: {get_settings().resolved_database_url}")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Start a local worker alongside.")] = True,
    demo: Annotated[bool, typer.Option(help="Launch the demo runs if the database has no runs.")] = False,
) -> None:
    """Run the dashboard and REST API (and, by default, one local worker)."""
    import uvicorn

    from app.web.security import bind_refusal
    from tunedeck_state.migrate import upgrade_database
    from tunedeck_state.settings_checks import api_token_problem

    settings = get_settings()
    host = host or settings.host
    refusal = api_token_problem(settings.api_token) or bind_refusal(host, settings.api_token)
    if refusal:
        typer.echo(f"tunedeck serve: {refusal}", err=True)
        raise typer.Exit(2)
    _refuse_bad_worker_settings("serve")  # the server reaps lost runs with the same heartbeat settings
    upgrade_database()
    if demo:
        from app.services.demo import launch_demo_runs

        # The new-run form starts from the demo's model and data (the web process reads it from its settings).
        os.environ["TUNEDECK_DEMO"] = "1"
        get_settings.cache_clear()
        settings = get_settings()
        _ensure_demo_prepared(settings)

        launched = launch_demo_runs(settings)
        if launched:
            typer.echo(f"launched {launched} demo runs")
    # One process trains (one run at a time), one generates (and answers quick calls when free), one answers only
    # the quick calls (estimates, inspections, method and dataset checks), so a long generation never holds them.
    # uvicorn re-raises the SIGTERM it shut down on (docker stop, systemd): as SystemExit, so the workers stop too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    worker_processes: list[subprocess.Popen[bytes]] = []
    try:
        if worker:
            worker_processes = [_start_local_worker(q) for q in ("training", "service", "quick")]
        uvicorn.run(
            "app.web.app:create_app",
            factory=True,
            host=host,
            port=port or settings.port,
            log_level="info",
        )
    finally:
        stop_workers(worker_processes)


#: How long the local workers get to stop by themselves (Celery's warm shutdown) before they are killed.
WORKER_STOP_SECONDS = 10.0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_workers(processes: list[subprocess.Popen[bytes]], grace: float = WORKER_STOP_SECONDS) -> None:
    """SIGTERM to each worker (Celery finishes or hands back what it holds), then SIGKILL to whatever of each
    worker's process tree is left after `grace`: a training still running in a pool process is killed with it, and
    its run ends as a lost worker's does (failed once its heartbeat is old, or retried: docs/faults-and-recovery.md)."""
    import time

    import psutil

    trees: list[psutil.Process] = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            trees += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in trees:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.NoSuchProcess:
            pass
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _start_local_worker(queues: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tunedeck_cli.main", "worker", "--queues", queues],
        env=os.environ.copy(),
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `tunedeck serve` dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@cli.command("worker")
def run_worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Tasks at a time (default: one training per GPU, else TUNEDECK_WORKER_CONCURRENCY)."),
    ] = None,
    queues: Annotated[
        str,
        typer.Option(
            help="Comma-separated: training, service (generation, and quick calls when free), quick (estimates, "
            "inspections, method and dataset checks only)."
        ),
    ] = "training,service",
    name: Annotated[
        str | None,
        typer.Option(
            help="Worker name, unique per worker (default: TUNEDECK_WORKER_NAME, else <queues>@<host>); "
            "a name without @ gets @<host>."
        ),
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="GPU indices this worker uses, e.g. 0,1 (default: all; CUDA_VISIBLE_DEVICES).")
    ] = None,
    multi_gpu: Annotated[
        bool,
        typer.Option(
            "--multi-gpu",
            help="Train one run at a time on several GPUs of this machine (runs with training.num_gpus > 1, "
            "launched with torchrun); such a worker takes no single-GPU run.",
        ),
    ] = False,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker (any machine that reaches the database and the broker).

    A training worker declares its GPUs and the memory it offers a run, and consumes the queues of the runs that fit
    (tunedeck_jobs/placement.py): one training per GPU at a time, each pinned to its GPU; with --multi-gpu, one run
    at a time on all its GPUs."""
    import socket

    settings = get_settings()
    _refuse_bad_worker_settings("worker")
    if settings.hub_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    from tunedeck_jobs.celery_app import celery_app
    from tunedeck_jobs.names import QUEUES, consumed_queues
    from worker import capacity

    names = [item.strip() for item in queues.split(",") if item.strip()]
    unknown = [item for item in names if item not in QUEUES]
    if unknown or not names:
        raise typer.BadParameter(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}", param_hint="--queues")
    hostname = name or settings.worker_name or "+".join(names)
    if "@" not in hostname:
        hostname = f"{hostname}@{socket.gethostname()}"
    training = "training" in names
    try:
        declared = capacity.declare(
            hostname, training=training, runs_per_gpu=settings.worker_runs_per_gpu, multi_gpu=multi_gpu
        )
    except capacity.MultiGpuRefused as exc:
        typer.echo(f"tunedeck worker: {exc}", err=True)
        raise typer.Exit(2) from None
    consumed = list(dict.fromkeys(q for item in names if item != "training" for q in consumed_queues(item)))
    consumed += declared.queues
    if multi_gpu:
        concurrency = 1  # one run at a time, on all the worker's GPUs
    if concurrency is None:
        explicit = "worker_concurrency" in settings.model_fields_set
        per_gpu = len(declared.gpus) * settings.worker_runs_per_gpu
        concurrency = per_gpu if training and declared.gpus and not explicit else settings.worker_concurrency
    declared.concurrency = concurrency
    if declared.gpus:
        typer.echo(
            f"tunedeck worker {hostname}: {len(declared.gpus)} GPU(s) ({declared.gpu_name}), "
            f"{(declared.capacity_bytes or 0) / 2**30:.2f} GiB offered per "
            f"{'GPU, one run on up to all of them at a time' if multi_gpu else 'run'}, concurrency {concurrency}"
        )
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        f"--queues={','.join(consumed)}",
        f"--hostname={hostname}",
        "--without-gossip",
        "--without-mingle",
    ]
    if training:
        # A fresh pool process per training: memory held by one run never leaks into the next.
        argv.append("--max-tasks-per-child=1")
    celery_app.worker_main(argv)


def _refuse_bad_worker_settings(command: str) -> None:
    from tunedeck_state.settings_checks import refusal_message, worker_settings_problems

    problems = worker_settings_problems(get_settings())
    if problems:
        typer.echo(f"tunedeck {command}: {refusal_message(problems)}", err=True)
        raise typer.Exit(2)


@cli.command("sweep")
def sweep(
    file: Annotated[Path, typer.Argument(help="YAML with the body of POST /api/sweeps: name, base, grid, overrides.")],
    wait: Annotated[bool, typer.Option(help="Follow the runs until done, then print the comparison table.")] = False,
    url: Annotated[str | None, typer.Option(help="The server (default http://HOST:PORT from settings).")] = None,
    token: Annotated[str | None, typer.Option(help="API token (default TUNEDECK_API_TOKEN).")] = None,
    rerun: Annotated[bool, typer.Option(help="Train again runs identical to ones that already succeeded.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks.", min=0.2)] = 2.0,
) -> None:
    """Launch a sweep through the REST API; with --wait, show live progress and then the comparison."""
    from tunedeck_cli.sweep import run_sweep_command

    settings = get_settings()
    server = url or os.environ.get("TUNEDECK_URL") or f"http://{settings.host}:{settings.port}"
    status = run_sweep_command(
        file, url=server, token=token or settings.api_token, wait=wait, rerun=rerun, poll_seconds=poll
    )
    raise typer.Exit(status)


@cli.command("wait")
def wait(
    run_ids: Annotated[list[int], typer.Argument(help="Run ids to follow.")],
    url: Annotated[str | None, typer.Option(help="The server (default http://HOST:PORT from settings).")] = None,
    token: Annotated[str | None, typer.Option(help="API token (default TUNEDECK_API_TOKEN).")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks.", min=0.2)] = 2.0,
) -> None:
    """Follow runs with progress bars until they finish; exit 0 only if all succeeded."""
    from tunedeck_cli.wait import wait_for_runs

    settings = get_settings()
    server = url or os.environ.get("TUNEDECK_URL") or f"http://{settings.host}:{settings.port}"
    raise typer.Exit(wait_for_runs(run_ids, url=server, token=token or settings.api_token, poll_seconds=poll))


@disk_cli.command("refresh")
def disk_refresh(
    run_ids: Annotated[list[int] | None, typer.Argument(help="The runs to measure (default: every run).")] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Only finished runs that have no size yet.")] = False,
) -> None:
    """Measure the runs' folders again and store their sizes (disk_bytes): after files were added or removed
    outside tunedeck. The server fills in missing sizes by itself when it starts."""
    from app.web.formatting import human_bytes
    from tunedeck_state.db import session_scope
    from tunedeck_state.disk import refresh_disk_bytes

    with session_scope() as session:
        changed = refresh_disk_bytes(session, get_settings(), run_ids=run_ids or (), missing_only=missing)
    for item in changed:
        before = "none" if item.before is None else human_bytes(item.before)
        typer.echo(f"run {item.run_id}: {before} -> {human_bytes(item.after)}")
    typer.echo(f"{len(changed)} run{'s' if len(changed) != 1 else ''} changed")


@demo_cli.command("prepare")
def demo_prepare() -> None:
    """Build the tiny demo model and dataset under the data directory and pre-train the model on the bundled
    tasks (about a minute on two free cores; cached by a hash of the model, data and settings: then instant)."""
    from tunedeck_demo.demo_assets import prepare_demo_assets
    from tunedeck_demo.pretrain import pretrain_demo_model

    assets = prepare_demo_assets(get_settings().demo_dir)
    model_dir = pretrain_demo_model(assets.model_dir, log=typer.echo)
    typer.echo(f"demo model: {model_dir}\ndemo data: {assets.dataset_path}")


def _ensure_demo_prepared(settings: Any) -> None:
    """`serve --demo` on a data directory without the pre-trained demo model: prepare it first, in a child
    process (the web process never imports torch)."""
    from app.services.demo import DEMO_MODEL_DIRNAME

    if (settings.demo_dir / DEMO_MODEL_DIRNAME / ".complete").is_file():
        return
    typer.echo("the demo model is not prepared yet: running `tunedeck demo prepare` (a minute or two)")
    subprocess.run([sys.executable, "-m", "tunedeck_cli.main", "demo", "prepare"], env=os.environ.copy(), check=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
