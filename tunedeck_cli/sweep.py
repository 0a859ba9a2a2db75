"""`tunedeck sweep sweep.yaml [--wait]`: submit a sweep through the REST API, follow it, print the comparison.

The YAML file holds the body of `POST /api/sweeps` (name, base, grid and/or overrides, rerun). Talks to the
server with tunedeck_cli.client only (httpx), so it runs anywhere and never imports the ML stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tunedeck_cli.client import ApiError, TunedeckClient, Unreachable

#: Columns of the printed comparison: (key, header, format).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "#", "int"),
    ("name", "run", "str"),
    ("status", "status", "str"),
    ("method", "method", "str"),
    ("varies", "varies", "str"),
    ("trainable_params", "trainable", "count"),
    ("trainable_percent", "%", "pct"),
    ("final_train_loss", "train loss", "f4"),
    ("best_eval_loss", "best eval", "f4"),
    ("eval_perplexity", "ppl", "f2"),
    ("gen_exact_match", "EM", "f3"),
    ("gen_bleu", "BLEU", "f2"),
    ("gen_rouge_l", "ROUGE-L", "f3"),
    ("peak_memory_measured", "peak mem", "bytes"),
    ("tokens_per_second", "tok/s", "f0"),
    ("wall_time_seconds", "wall s", "f1"),
)


def varies(comparison: dict[str, Any]) -> dict[int, str]:
    """Per run, the config values that tell it apart: diff fields with two values or more (method.name is
    its own column; a field only one method has goes without saying)."""
    rows = comparison["diff"]["rows"]
    fields = [
        f
        for f in comparison["diff"]["fields"]
        if f != "method.name" and len({repr(r["values"].get(f)) for r in rows if r["values"].get(f) is not None}) > 1
    ]
    return {
        r["run_id"]: " ".join(
            f"{f.rsplit('.', 1)[-1]}={fmt_value(r['values'][f])}" for f in fields if r["values"].get(f) is not None
        )
        for r in rows
    }


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return str(value)


class SweepFileError(ValueError):
    pass


def load_sweep_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepFileError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(body, dict):
        raise SweepFileError(f"{path} must hold a mapping: name, base, grid and/or overrides")
    return body


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "count":
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.2f}{unit}"
        return f"{value:.0f}"
    if kind == "bytes":
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.1f} {unit}"
        return f"{value:.0f} B"
    if kind == "pct":
        return f"{value:.3g}"
    if kind.startswith("f"):
        return f"{value:.{int(kind[1:])}f}"
    return str(value)


def progress_table(sweep: dict[str, Any]) -> Table:
    table = Table(
        title=f"sweep #{sweep['id']} {sweep['name']}: {sweep['state']} ({sweep['progress'] * 100:.0f}%)",
        title_justify="left",
    )
    for header in ("#", "run", "status", "step", "train loss", "eval loss", ""):
        table.add_column(header, justify="right" if header in ("#", "step", "train loss", "eval loss") else "left")
    for run in sweep["runs"]:
        table.add_row(
            str(run["id"]),
            run["name"],
            run["status"],
            f"{run['step']}/{run['max_steps']}",
            fmt(run["final_train_loss"], "f4"),
            fmt(run["final_eval_loss"], "f4"),
            "reused" if run["reused"] else "",
        )
    return table


def comparison_table(comparison: dict[str, Any]) -> Table:
    labels = varies(comparison)
    rows = [{**row, "varies": labels.get(row["id"], "")} for row in comparison["table"]]
    columns = [
        c
        for c in TABLE_COLUMNS
        if c[0] != "status" or any(row["status"] != "succeeded" for row in rows)  # only when something is off
    ]
    table = Table(title="comparison", title_justify="left")
    for key, header, kind in columns:
        table.add_column(
            header,
            justify="left" if kind == "str" else "right",
            no_wrap=kind != "str" or key == "id",
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(fmt(row.get(key), kind) for key, _, kind in columns))
    return table


def run_sweep_command(
    file: Path, *, url: str, token: str | None, wait: bool, rerun: bool, poll_seconds: float = 2.0
) -> int:
    """Returns the exit status: 0 when the sweep was launched (and, with wait, every run succeeded)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    try:
        body = load_sweep_file(file)
    except SweepFileError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if rerun:
        body["rerun"] = True
    with TunedeckClient(url, token=token) as client:
        try:
            sweep = client.create_sweep(body)
        except (ApiError, Unreachable) as exc:
            console.print(f"[red]sweep not launched:[/red] {getattr(exc, 'message', exc)}")
            return 2
        reused = sum(1 for run in sweep["runs"] if run["reused"])
        if sweep.get("max_runs"):  # random / tpe: trials are asked as runs end
            launched = f"{sweep['strategy']} search of {sweep['max_runs']} trials, {sweep['total']} queued"
        else:
            launched = f"{sweep['total']} runs ({reused} reused)"
        console.print(f"sweep #{sweep['id']} {sweep['name']!r}: {launched} · {client.url}{sweep['page_url']}")
        if not wait:
            return 0
        try:
            sweep = _follow(console, client, sweep["id"], poll_seconds)
            comparison = client.compare(sweep_id=sweep["id"])
        except (ApiError, Unreachable) as exc:
            console.print(f"[red]error:[/red] {getattr(exc, 'message', exc)}")
            return 2
    console.print(comparison_table(comparison))
    base = url.rstrip("/")
    console.print(
        f"compare: {base}/compare?sweep_id={sweep['id']} · CSV: {base}/api/compare?sweep_id={sweep['id']}&format=csv"
    )
    return 0 if sweep["state"] == "succeeded" else 1


def _follow(console: Console, client: TunedeckClient, sweep_id: int, poll_seconds: float) -> dict[str, Any]:
    """A live progress table on a terminal; one line per change of a run's status otherwise."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=2) as live:
            return client.wait_for_sweep(
                sweep_id, poll_seconds=poll_seconds, on_update=lambda s: live.update(progress_table(s))
            )
    seen: dict[int, str] = {}

    def print_changes(sweep: dict[str, Any]) -> None:
        for run in sweep["runs"]:
            if seen.get(run["id"]) != run["status"]:
                seen[run["id"]] = run["status"]
                console.print(f"run {run['id']} {run['name']}: {run['status']} ({run['step']}/{run['max_steps']})")

    sweep = client.wait_for_sweep(sweep_id, poll_seconds=poll_seconds, on_update=print_changes)
    console.print(progress_table(sweep))
    return sweep
