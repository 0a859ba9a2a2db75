"""The `tunedeck` command: serve, worker, db upgrade, demo."""

from __future__ import annotations

import os
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
cli.add_typer(demo_cli, name="demo")


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

    settings = get_settings()
    host = host or settings.host
    refusal = bind_refusal(host, settings.api_token)
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
    # One process trains (one run at a time), one answers quick requests (inspect, generate) meanwhile.
    worker_processes = [_start_local_worker("training"), _start_local_worker("service")] if worker else []
    try:
        uvicorn.run(
            "app.web.app:create_app",
            factory=True,
            host=host,
            port=port or settings.port,
            log_level="info",
        )
    finally:
        for process in worker_processes:
            process.terminate()
        for process in worker_processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _start_local_worker(queues: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tunedeck_cli.main", "worker", "--queues", queues], env=os.environ.copy()
    )


@cli.command("worker")
def run_worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Tasks at a time (default: one training per GPU, else TUNEDECK_WORKER_CONCURRENCY)."),
    ] = None,
    queues: Annotated[str, typer.Option(help="Comma-separated: training, service.")] = "training,service",
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
    from tunedeck_jobs.names import QUEUES
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
    consumed = [QUEUES[item] for item in names if item != "training"] + declared.queues
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


@demo_cli.command("prepare")
def demo_prepare() -> None:
    """Build the tiny demo model and dataset under the data directory and pre-train the model on the bundled
    tasks (a few minutes on two cores; cached by a hash of the model, data and settings: then instant)."""
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
    typer.echo("the demo model is not prepared yet: running `tunedeck demo prepare` (a few minutes)")
    subprocess.run([sys.executable, "-m", "tunedeck_cli.main", "demo", "prepare"], env=os.environ.copy(), check=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
