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
    worker_process = _start_local_worker() if worker else None
    try:
        uvicorn.run(
            "app.web.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            log_level="info",
        )
    finally:
        if worker_process is not None:
            worker_process.terminate()
            try:
                worker_process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker_process.kill()


def _start_local_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=os.environ.copy())


@cli.command("worker")
def run_worker(
    concurrency: Annotated[int | None, typer.Option(help="Trainings at a time (default from settings).")] = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker that trains queued runs (any machine that reaches the database and broker)."""
    settings = get_settings()
    if settings.hub_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from worker.celery_app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            "--hostname=tunedeck@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


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
