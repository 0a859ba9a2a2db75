"""Resumable checkpoints the worker writes itself, and how a later attempt finds the last complete one.

The Trainer writes `checkpoint-N/` (weights as safetensors, optimizer, scheduler and RNG state, trainer state)
every `training.save_steps` steps. A checkpoint counts only once this callback has written its marker, after
every file of it is on disk: a process killed halfway through a save leaves a folder without a marker, which
`last_complete_checkpoint` never picks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.distributed import barrier, is_main_process

#: Written last into a checkpoint folder: the step and the size of every file it holds.
MARKER = "tunedeck-complete.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
#: Trainer files a resumable checkpoint needs besides the weights.
REQUIRED_FILES = ("trainer_state.json", "scheduler.pt")
#: The optimizer's state: optimizer.pt, or optimizer.bin from an FSDP run (accelerate's gathered optimizer state).
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _step_of(path: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """True when the folder's marker is there, names its step, and every file it lists has the listed size."""
    try:
        marker = json.loads((path / MARKER).read_text())
        files: dict[str, int] = marker["files"]
        if marker.get("step") != _step_of(path):
            return False
        if not all(name in files for name in REQUIRED_FILES) or not any(name in files for name in WEIGHT_FILES):
            return False
        if not any(name in files for name in OPTIMIZER_FILES):
            return False
        return all((path / name).is_file() and (path / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in the run's own folder, or None."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return None
    found = [(step, path) for path in root.iterdir() if (step := _step_of(path)) is not None and path.is_dir()]
    for _, path in sorted(found, reverse=True):
        if is_complete(path):
            return path
    return None


def discard_checkpoints_after(run_dir: Path, step: int) -> list[Path]:
    """Remove checkpoint folders newer than `step` (left by an attempt that died): a resumed run rewrites them."""
    root = checkpoints_dir(run_dir)
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            path_step = _step_of(path)
            if path_step is not None and path_step > step and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def mark_complete(path: Path, step: int) -> None:
    """Flush every file of the checkpoint to disk, then write the marker atomically (temp file, rename, fsync)."""
    files: dict[str, int] = {}
    for file in sorted(path.iterdir()):
        if file.is_file() and file.name != MARKER and not file.name.startswith(f".{MARKER}"):
            _fsync(file)
            files[file.name] = file.stat().st_size
    tmp = path / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync(tmp)
    os.replace(tmp, path / MARKER)
    _fsync_dir(path)


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointMarkerCallback(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written it; unmarks a folder about to be rewritten.

    Must come after any callback that asks for a save in `on_step_end` (the cancel path does)."""

    def __init__(self) -> None:
        self.last_marked: Path | None = None

    def _folder(self, args: TrainingArguments, state: TrainerState) -> Path:
        return Path(args.output_dir or ".") / f"checkpoint-{state.global_step}"

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if control.should_save and is_main_process():
            # A folder of the same step left by an earlier attempt is about to be overwritten file by file.
            (self._folder(args, state) / MARKER).unlink(missing_ok=True)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # Several processes (training.num_gpus): each writes its own RNG state (and, under FSDP, joins the gathered
        # save); wait for all of them, then rank 0 alone writes the marker.
        barrier()
        if not is_main_process():
            return
        folder = self._folder(args, state)
        if folder.is_dir():
            mark_complete(folder, state.global_step)
            self.last_marked = folder
