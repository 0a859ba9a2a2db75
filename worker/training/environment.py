"""What a run records about where it ran (package versions, GPU, git commit, seed, hashes) and which
experiment trackers it also reports to (`training.report_to`)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from runspec import RunSpec
from worker.training.errors import TrainingError

PACKAGES = (
    "tunedeck",
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "tokenizers",
    "safetensors",
    "bitsandbytes",
    "huggingface_hub",
)
#: report_to name → (the transformers check, the package to install)
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
REPO_ROOT = Path(__file__).resolve().parents[2]
_USER_TENSORBOARD_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(root: Path = REPO_ROOT) -> dict[str, Any] | None:
    """The commit of the tunedeck checkout this worker runs from (None outside a git checkout)."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def gpus() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        {"name": torch.cuda.get_device_name(i), "memory_bytes": torch.cuda.get_device_properties(i).total_memory}
        for i in range(torch.cuda.device_count())
    ]


def run_environment(spec: RunSpec) -> dict[str, Any]:
    """Recorded into run.details at the start of training."""
    import torch

    return {
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
            "cuda": torch.version.cuda,
            "gpus": gpus(),
            "git": git_commit(),
        },
        "seed": spec.training.seed,
        "spec_hash": spec.spec_hash(),
    }


def report_to(spec: RunSpec, run_dir: Path) -> list[str]:
    """`training.report_to` for TrainingArguments, refused with a reason when a tracker's package is missing."""
    from transformers.integrations import integration_utils

    checks = {
        "tensorboard": integration_utils.is_tensorboard_available,
        "mlflow": integration_utils.is_mlflow_available,
        "wandb": integration_utils.is_wandb_available,
    }
    wanted: list[str] = list(dict.fromkeys(spec.training.report_to))
    missing = [name for name in wanted if not checks[name]()]
    if missing:
        packages = " ".join(TRACKERS[name] for name in missing)
        raise TrainingError(
            f"training.report_to asks for {', '.join(missing)}, but this worker does not have "
            f"{'that package' if len(missing) == 1 else 'those packages'} installed; `pip install {packages}` on "
            "the worker, or remove it from training.report_to"
        )
    if "tensorboard" in wanted and _USER_TENSORBOARD_DIR is None:
        # transformers reads the folder from this variable; one training per worker process, so it is ours.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    return wanted
