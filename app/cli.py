"""The `tunedeck` command: serve, worker, db upgrade, demo."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from app.settings import get_settings

cli = typer.Typer(help="tunedeck: fine-tune causal language models and compare the runs.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
demo_cli = typer.Typer(help="The offline demo: a tiny model, bundled data, demo runs.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(demo_cli, name="demo")


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from app.migrate import upgrade_database

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

    from app.migrate import upgrade_database

    settings = get_settings()
    upgrade_database()
    if demo:
        from app.services.demo import launch_demo_runs

        launched = launch_demo_runs(settings)
        if launched:
            typer.echo(f"launched {launched} demo runs")
    # One process trains (one run at a time), one answers quick requests (inspect, generate) meanwhile.
    worker_processes = [_start_local_worker("training"), _start_local_worker("service")] if worker else []
    try:
        uvicorn.run(
            "app.web.app:create_app",
            factory=True,
            host=host or settings.host,
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
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", queues], env=os.environ.copy())


@cli.command("worker")
def run_worker(
    concurrency: Annotated[int | None, typer.Option(help="Tasks at a time (default from settings).")] = None,
    queues: Annotated[str, typer.Option(help="Comma-separated: training, service.")] = "training,service",
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker (any machine that reaches the database and the broker)."""
    settings = get_settings()
    if settings.hub_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from worker.celery_app import QUEUES, celery_app

    names = [name.strip() for name in queues.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUES]
    if unknown or not names:
        raise typer.BadParameter(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}", param_hint="--queues")
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={','.join(QUEUES[name] for name in names)}",
        f"--hostname={'+'.join(names)}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if "training" in names:
        # A fresh pool process per training: memory held by one run never leaks into the next.
        argv.append("--max-tasks-per-child=1")
    celery_app.worker_main(argv)


@demo_cli.command("prepare")
def demo_prepare() -> None:
    """Build the tiny demo model and dataset under the data directory (once)."""
    from worker.training.demo_assets import prepare_demo_assets

    assets = prepare_demo_assets(get_settings().demo_dir)
    typer.echo(f"demo model: {assets.model_dir}\ndemo data: {assets.dataset_path}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
