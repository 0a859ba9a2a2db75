"""Which models and datasets a worker may read, and how: the worker's own check of a spec's sources.

The web process checks a spec when it is submitted; the worker checks again before it reads anything, under
its own settings (`worker.tasks` installs them with `set_policy` when the worker starts). Code that calls
the training functions directly, as some tests do, gets `SourcePolicy.default()`: local paths under the
current folder only, no custom code.
"""

from __future__ import annotations

from typing import Any

from runspec.sources import ResolvedSource, SourcePolicy, SourceRefused, looks_like_local_path
from worker.training.errors import TrainingError

__all__ = ["current_policy", "looks_like_local_path", "model_load_kwargs", "resolve_dataset", "resolve_model"]

_policy: SourcePolicy | None = None


def set_policy(policy: SourcePolicy) -> None:
    global _policy
    _policy = policy


def current_policy() -> SourcePolicy:
    return _policy or SourcePolicy.default()


def resolve_model(source: str, field: str = "model") -> ResolvedSource:
    """A hub id or a local model folder inside the data roots that asks for no custom code; else TrainingError."""
    try:
        return current_policy().resolve_model(source, field)
    except SourceRefused as exc:
        raise TrainingError(str(exc)) from None


def resolve_dataset(source: str, field: str = "dataset.source") -> ResolvedSource:
    """A hub dataset id or a local data file inside the data roots; else TrainingError."""
    try:
        return current_policy().resolve_dataset(source, field)
    except SourceRefused as exc:
        raise TrainingError(str(exc)) from None


def remote_code_kwargs(resolved: ResolvedSource) -> dict[str, Any]:
    """`trust_remote_code` (False unless allow-listed) and, when allow-listed, the pinned revision."""
    kwargs: dict[str, Any] = {"trust_remote_code": resolved.trust_remote_code}
    if resolved.trust_remote_code and resolved.revision:
        kwargs["revision"] = resolved.revision
    return kwargs


def model_load_kwargs(resolved: ResolvedSource) -> dict[str, Any]:
    """For `from_pretrained` of weights: safetensors only (no pickle), remote code as the policy says."""
    return {**remote_code_kwargs(resolved), "use_safetensors": True}
