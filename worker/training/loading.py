"""Loading, the bottom of the training package: which models and datasets a worker may read, and reading them.

The web process checks a spec when it is submitted; the worker checks again before it reads anything, under
its own settings (`worker.tasks` installs them with `set_policy` when the worker starts). Code that calls
the training functions directly, as some tests do, gets `SourcePolicy.default()`: local paths under the
current folder only, no custom code.

Then the loaders every other module uses: tokenizer, base model, config, a model built on the meta device
(no weights, no memory), parameter counts and the readable reason a load failed. Nothing here imports the
rest of the package but its errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from runspec import RunSpec
from runspec.precision import ResolvedDtypes
from runspec.sources import ResolvedSource, SourcePolicy, SourceRefused, looks_like_local_path
from worker.training.errors import TrainingError, first_line

__all__ = [
    "build_on_meta",
    "count_parameters",
    "current_policy",
    "load_base_model",
    "load_config",
    "load_tokenizer",
    "looks_like_local_path",
    "model_load_error",
    "model_load_kwargs",
    "remote_code_kwargs",
    "resolve_dataset",
    "resolve_model",
    "set_policy",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")

_policy: SourcePolicy | None = None


# -- what may be read ---------------------------------------------------------------------------------------


def set_policy(policy: SourcePolicy) -> None:
    global _policy
    _policy = policy


def current_policy() -> SourcePolicy:
    return _policy or SourcePolicy.default()


def resolve_model(source: str, field: str = "model") -> ResolvedSource:
    """Where to read a model from: a hub id, or a model folder inside the worker's data roots that asks to run no
    code of its own. TrainingError otherwise (a URL, a path outside the roots or through a link out of them,
    auto_map)."""
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


# -- reading it -----------------------------------------------------------------------------------------------


def load_tokenizer(model_source: str) -> Any:
    resolved = resolve_model(model_source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, **remote_code_kwargs(resolved))
    except Exception as exc:
        folder = Path(model_source).expanduser()
        if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise TrainingError(
                f"model folder {model_source!r} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); "
                "save it next to the weights with tokenizer.save_pretrained(folder)"
            ) from exc
        raise TrainingError(model_load_error(model_source, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(spec: RunSpec, dtypes: ResolvedDtypes | None = None, attn_implementation: str | None = None) -> Any:
    """The base model, its weights in `dtypes.base` (runspec.precision; None: fp32) and, for QLoRA, de-quantized
    to `dtypes.quantized_compute`; `attn_implementation`: transformers' (None: its default for the model)."""
    resolved = resolve_model(spec.model)
    if resolved.kind == "local" and not any(Path(resolved.location).glob("*.safetensors")):
        raise TrainingError(
            f"model folder {spec.model!r} has no .safetensors weights; tunedeck reads weights only from safetensors "
            "files (a .bin or .pt file is a pickle, which can run code when loaded). Re-save the model with "
            "save_pretrained (safetensors is the default)."
        )
    # safetensors only (never a pickle), trust_remote_code only for an allow-listed hub id at its pinned commit
    dtype = getattr(torch, dtypes.base) if dtypes is not None else torch.float32
    kwargs: dict[str, Any] = {**model_load_kwargs(resolved), "dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    kwargs.update(spec.method.model_load_kwargs(dtypes))
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.location, **kwargs)
    except Exception as exc:
        raise TrainingError(model_load_error(spec.model, exc)) from exc
    if spec.training.gradient_checkpointing:
        model.config.use_cache = False
    return model


def load_config(model_source: str) -> Any:
    resolved = resolve_model(model_source)  # URL, outside the data roots, auto_map: refused
    try:
        return AutoConfig.from_pretrained(resolved.location, **remote_code_kwargs(resolved))
    except Exception as exc:
        raise TrainingError(model_load_error(model_source, exc)) from exc


def build_on_meta(config: Any, trust_remote_code: bool = False) -> Any:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def count_parameters(model: Any) -> tuple[int, int]:
    """Trainable and total parameters, counted as peft's print_trainable_parameters counts them."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def model_load_error(source: str, exc: BaseException) -> str:
    reason = first_line(exc).rstrip(" .:")
    if "trust_remote_code" in str(exc) or "custom code" in str(exc):
        return (
            f"model {source!r} needs its own code to load, which tunedeck does not run. Use a model whose "
            "architecture transformers ships, or ask the operator to add it to TUNEDECK_REMOTE_CODE_ALLOWLIST "
            "pinned to a commit (org/name@<40-hex commit>)."
        )
    if Path(source).expanduser().exists():
        return f"could not load model from {source!r}: {reason}"
    return (
        f"could not load model {source!r} from the Hugging Face hub: {reason}. "
        "Check the id and network access, or give a local folder."
    )
