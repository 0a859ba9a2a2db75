"""Does a method fit a model? Its module names checked against the model's own, then the method built for real.

Used twice with the same messages: by the service task the web process calls before it queues a run (on the meta
device: no weights, no memory), and by the training itself before its first step, so a run that was queued
without the check (no service worker answered in time) fails at once with the same reason.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from runspec import MethodSpec, RunSpec, TrainingSpec
from runspec.methods import MethodNotApplicable
from runspec.methods.base import ALL_LINEAR, peft_targets
from runspec.spec import CUDA_ONLY_OPTIMIZERS
from worker.training.errors import TrainingError, first_line
from worker.training.loading import build_on_meta, load_config, resolve_model
from worker.training.oom import is_out_of_memory
from worker.training.resources import has_cuda

log = logging.getLogger("tunedeck.training")

#: Most names listed in one message.
MAX_LISTED = 60


class MethodRefused(TrainingError):
    """The method cannot be applied to this model. `problems`: {dotted spec field: message}."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems.items()))
        self.problems = problems


def model_type(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def module_names(model: Any) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def matches(name: str, wanted: str) -> bool:
    """peft's rule for a target_modules entry: the full dotted name, or a dotted suffix of it."""
    return name == wanted or name.endswith("." + wanted)


def linear_layer_names(model: Any) -> list[str]:
    """Distinct last parts of the names of linear layers (nn.Linear and subclasses such as Linear4bit, Conv1D)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D")
        }
    )


def leaf_names(model: Any) -> list[str]:
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and not any(module.children())}
    )


def existing_modules_hint(model: Any) -> str:
    linear = linear_layer_names(model)
    others = [name for name in leaf_names(model) if name not in linear]
    hint = f"its linear layers are {_listed(linear)}"
    if others:
        hint += f"; its other layers: {_listed(others)}"
    return hint


def module_problems(model: Any, method: MethodSpec) -> dict[str, str]:
    """{"method.<field>": message} for every listed module name that matches no module of the model."""
    names = module_names(model)
    problems: dict[str, str] = {}
    for field in method.module_fields:
        wanted = getattr(method, field, None)
        if not wanted or peft_targets(wanted) == ALL_LINEAR:
            continue
        missing = [entry for entry in wanted if not any(matches(name, entry) for name in names)]
        if missing:
            what = "matches no module" if len(missing) == 1 else "match no module"
            problems[f"method.{field}"] = (
                f"{', '.join(missing)} {what} of this {model_type(model)} model; {existing_modules_hint(model)}"
            )
    return problems


def build_method(method: MethodSpec, model: Any, tokenizer: Any) -> Any:
    """`method.build(model, tokenizer)`, or MethodRefused saying which field is wrong and what the model offers."""
    problems = module_problems(model, method)
    if problems:
        raise MethodRefused(problems)
    kind = model_type(model)
    try:
        return method.build(model, tokenizer)
    except TrainingError:
        raise
    except MethodNotApplicable as exc:
        raise MethodRefused({"method": f"{method.label} cannot be applied to this {kind} model: {exc}"}) from exc
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        log.info("building %s failed", method.name, exc_info=True)
        reason = _first_line(exc)
        if "target_modules" in reason or "Target module" in reason or type(exc).__name__ == "NoMatchingPeftModuleError":
            field = "method.target_modules"
            if method.module_fields and not getattr(method, "target_modules", None):
                reason += " (peft has no default target modules for this architecture: give target_modules)"
            message = f"{method.label} cannot be applied to this {kind} model: {reason}; {existing_modules_hint(model)}"
        else:
            field = "method"
            message = f"{method.label} cannot be applied to this {kind} model: {reason}"
        raise MethodRefused({field: message}) from exc


def check_device_needs(spec: RunSpec) -> None:
    """Fail at once, before loading anything, when the run needs a CUDA device this worker does not have."""
    if has_cuda():
        return
    if spec.training.optim in CUDA_ONLY_OPTIMIZERS:
        raise TrainingError(
            f"training.optim={spec.training.optim} needs a CUDA GPU (a paged optimizer pages its state between GPU "
            "and CPU memory) and this worker has none; choose adamw_torch or adamw_8bit, or run on a GPU worker"
        )
    if spec.method.requires_cuda:
        raise TrainingError(
            f"method {spec.method.name} ({spec.method.label}) needs a CUDA GPU and this worker has none; "
            "run it on a GPU worker"
        )


def first_step_failure(exc: BaseException, method: MethodSpec, model: Any) -> TrainingError | None:
    """A readable TrainingError for an exception raised before the first optimizer step finished: the method
    and model do not work together (e.g. a cache format peft's prefix tuning cannot extend). None for errors
    that explain themselves (TrainingError, out of memory)."""
    if isinstance(exc, TrainingError) or is_out_of_memory(exc):
        return None
    log.error("the first training step failed", exc_info=exc)
    return TrainingError(
        f"the first training step of {method.label} on this {model_type(model)} model failed, so this method "
        f"cannot train this model: {type(exc).__name__}: {_first_line(exc)}"
    )


def check_method(model_source: str, method: MethodSpec, training: TrainingSpec | None = None) -> dict[str, Any]:
    """The service task's answer: {"checked": True, "problems": {...}}, or {"checked": False, "reason": ...} when
    the model's config cannot be read here (the training reports that itself; the submit is not blocked)."""
    if not method.is_peft:
        return {"checked": True, "problems": {}}
    try:
        config = load_config(model_source)
        model = build_on_meta(config, trust_remote_code=resolve_model(model_source).trust_remote_code)
    except Exception as exc:  # unreadable here (or not buildable on the meta device): the training will tell
        return {"checked": False, "reason": f"{type(exc).__name__}: {_first_line(exc)}", "problems": {}}
    resolved = method.resolved(training or TrainingSpec())
    try:
        with torch.device("meta"):
            build_method(resolved, model, None)
    except MethodRefused as exc:
        if "meta" in str(exc.__cause__ or "").lower():  # the meta device, not the method, could not do something
            return {"checked": False, "reason": str(exc), "problems": {}}
        return {"checked": True, "problems": exc.problems}
    except TrainingError as exc:
        return {"checked": False, "reason": str(exc), "problems": {}}
    return {"checked": True, "problems": {}}


def _listed(names: list[str]) -> str:
    if len(names) > MAX_LISTED:
        return ", ".join(names[:MAX_LISTED]) + f", … ({len(names) - MAX_LISTED} more)"
    return ", ".join(names) or "(none)"


def _first_line(exc: BaseException) -> str:
    return first_line(exc).rstrip(" .:")
