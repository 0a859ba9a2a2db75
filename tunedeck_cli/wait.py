"""`tunedeck wait RUN_ID...`: follow runs with progress bars (step / max_steps, the server's ETA) until done."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from tunedeck_cli.client import ApiError, TunedeckClient, Unreachable


def _eta(run: dict[str, Any]) -> str:
    seconds = run.get("eta_seconds")
    if run["status"] != "running" or seconds is None:
        return run["status"]
    minutes, secs = divmod(int(seconds), 60)
    return f"ETA {minutes}:{secs:02d}" if minutes < 60 else f"ETA {minutes // 60}h{minutes % 60:02d}"


def wait_for_runs(run_ids: list[int], *, url: str, token: str | None, poll_seconds: float) -> int:
    """Exit status: 0 when every run succeeded, 1 when one failed or was cancelled, 2 when the server refused."""
    console = Console(stderr=True)
    try:
        with (
            TunedeckClient(url, token=token) as client,
            Progress(
                TextColumn("[bold]#{task.fields[run_id]}[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[eta]}"),
                console=console,
                transient=False,
            ) as progress,
        ):
            finals = []
            for run_id in run_ids:
                first = client.get_run(run_id)
                task: TaskID = progress.add_task(
                    first["name"], total=first["max_steps"] or None, run_id=run_id, eta=_eta(first)
                )

                def update(run: dict[str, Any], task: TaskID = task) -> None:
                    progress.update(task, completed=run["step"], total=run["max_steps"] or None, eta=_eta(run))

                finals.append(client.wait_for_run(run_id, poll_seconds=poll_seconds, on_update=update))
    except (ApiError, Unreachable) as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    for run in finals:
        line = f"run #{run['id']} {run['name']}: {run['status']}"
        if run.get("error"):
            line += f": {run['error']}"
        console.print(line)
    return 0 if all(run["status"] == "succeeded" for run in finals) else 1
