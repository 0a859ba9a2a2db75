"""Inference with a run's result (the course's "模型推理"), and merging a LoRA-family adapter into its base.

Prompts go through the training template (`data.format_prompt`), so the model sees what it learned on;
only the generated continuation is returned. Loaded models stay in a small LRU cache in the worker
process, so repeated prompts to the same run skip the load.
"""

from __future__ import annotations

import gc
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM

from runspec.inference import GenerationSettings, Prompt
from worker.training.data import format_prompt
from worker.training.errors import TrainingError, first_line
from worker.training.loading import load_tokenizer, model_load_error, resolve_model
from worker.training.resources import has_cuda

Kind = Literal["adapter", "full", "base", "merged"]
#: How a prompt is framed, as the run's data was: the course's "Human: …\n\nAssistant: " (`course`), the
#: tokenizer's chat template (`chat`), or the bare text for runs trained on plain text (`plain`).
Template = Literal["course", "chat", "plain"]
DEFAULT_CACHE_SIZE = 2
#: Prompts decoded together (greedy): one forward pass per new token for the whole batch.
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class ModelSource:
    """Which weights to load. `adapter`: `model` is the base and `adapter_dir` the peft adapter on it;
    `full`, `base` and `merged`: `model` is a complete causal-LM folder (or hub id for `base`)."""

    kind: Kind
    model: str
    adapter_dir: str | None = None
    #: Extra `from_pretrained` arguments for the base (a QLoRA adapter runs on its 4-bit base).
    load_kwargs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: Distinguishes bases loaded with different load_kwargs in the cache.
    load_key: str = ""
    #: The run the weights belong to ("<id>@<created_at>"): a folder path alone could name a deleted run's.
    owner: str = ""

    def cache_key(self) -> tuple[Any, ...]:
        fingerprint = _fingerprint(self.adapter_or_model)
        return (self.kind, self.model, self.adapter_dir, self.load_key, self.owner, fingerprint)

    @property
    def adapter_or_model(self) -> str:
        return self.adapter_dir or self.model


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    load_seconds: float


@dataclass(frozen=True)
class Completion:
    prompt: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    #: "stop" when the model ended with its end-of-sequence token, "length" when max_new_tokens cut it.
    finish_reason: str


class ModelCache:
    """The last few loaded models, least recently used evicted first."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE) -> None:
        self.size = size
        self._models: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.loads = 0

    def get(self, source: ModelSource) -> tuple[LoadedModel, bool]:
        """The loaded model and whether it came from the cache."""
        key = source.cache_key()
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                self.hits += 1
                return self._models[key], True
            while self._models and len(self._models) >= max(1, self.size):
                self._models.popitem(last=False)
                _release_memory()
            loaded = load_model(source)
            self.loads += 1
            self._models[key] = loaded
            return loaded, False

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            _release_memory()


_cache = ModelCache()


def model_cache(size: int | None = None) -> ModelCache:
    """The process's cache; `size` (when given) changes how many models it keeps."""
    if size is not None:
        _cache.size = size
    return _cache


def _fingerprint(path: str) -> int:
    """Changes when the files of a saved folder are rewritten (a re-merge, a retrained run)."""
    folder = Path(path)
    if not folder.is_dir():
        return 0
    return max((p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()), default=0)


def _release_memory() -> None:
    gc.collect()
    if has_cuda():
        torch.cuda.empty_cache()


def _inference_dtype() -> torch.dtype:
    if has_cuda():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(source: ModelSource) -> LoadedModel:
    started = time.perf_counter()
    if source.adapter_dir is not None:
        _check_folder(source.adapter_dir, "adapter_config.json", "adapter")
    elif source.kind != "base":
        _check_folder(source.model, "config.json", "model")
    resolve_model(source.model)
    tokenizer = _load_tokenizer(source.adapter_or_model)
    kwargs: dict[str, Any] = {
        "trust_remote_code": False,
        "use_safetensors": True,  # never a pickled weights file
        "dtype": _inference_dtype(),
        **source.load_kwargs,
    }
    quantized = "quantization_config" in source.load_kwargs
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source.model, **kwargs)
    except Exception as exc:
        raise TrainingError(model_load_error(source.model, exc)) from exc
    if source.adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, source.adapter_dir)
        except Exception as exc:
            reason = first_line(exc)
            raise TrainingError(f"could not load the adapter in {source.adapter_dir!r}: {reason}") from exc
    device = "cuda" if has_cuda() else "cpu"
    if not quantized:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, load_seconds=time.perf_counter() - started)


def _load_tokenizer(source: str) -> Any:
    """The tokenizer saved with the run (an adapter folder has no config.json, so no model check here)."""
    if not Path(source).is_dir():
        return load_tokenizer(source)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        reason = first_line(exc)
        raise TrainingError(f"could not load the tokenizer saved in {source!r}: {reason}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_folder(folder: str, marker: str, what: str) -> None:
    path = Path(folder)
    if not path.is_dir():
        raise TrainingError(f"the run's {what} folder {folder!r} does not exist any more")
    if not (path / marker).is_file():
        raise TrainingError(f"the run's {what} folder {folder!r} has no {marker}")


def prompt_text(prompt: Prompt, tokenizer: Any, template: Template = "course") -> str:
    """The prompt as training framed it."""
    if template == "plain":
        return "\n".join(part for part in (prompt.instruction, prompt.input) if part)
    if template == "chat":
        content = "\n".join([prompt.instruction, prompt.input]).strip()
        try:
            return str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
                )
            )
        except Exception as exc:
            reason = first_line(exc, 300)
            raise TrainingError(f"the tokenizer's chat template could not render the prompt: {reason}") from exc
    return format_prompt(prompt.instruction, prompt.input)


class GenerationStopped(TrainingError):
    """The request was given up on (its caller stopped waiting) while the worker generated."""


class _StopWhen:
    """A transformers stopping criterion: every sequence ends when `should_stop()` says so (asked at most every
    CHECK_SECONDS, since it may read the result backend)."""

    CHECK_SECONDS = 0.5

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.stopped = False
        self._next_check = time.monotonic() + self.CHECK_SECONDS

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if not self.stopped and now >= self._next_check:
            self._next_check = now + self.CHECK_SECONDS
            self.stopped = bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


def generate(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
    template: Template = "course",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: Callable[[], bool] | None = None,
) -> list[Completion]:
    """One completion per prompt. Greedy decoding batches prompts of one request (`batch_size` at a time, left
    padded, masked), so the same request gives the same completions every time. Sampling with a seed decodes each
    prompt on its own, so each starts from the seed and repeats. `should_stop` (asked between tokens) ends the
    request early with GenerationStopped: its caller gave up."""
    tokenizer, model = loaded.tokenizer, loaded.model
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    options: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
    }
    if settings.do_sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        # A checkpoint's generation_config may ask for sampling; greedy must not carry its flags along.
        options.update(temperature=None, top_p=None, top_k=None)
    stop = _StopWhen(should_stop) if should_stop is not None else None
    if stop is not None:
        from transformers import StoppingCriteriaList

        options["stopping_criteria"] = StoppingCriteriaList([stop])

    texts = [prompt_text(prompt, tokenizer, template) for prompt in prompts]
    # The chat template writes its own special tokens; the course template has none, as in training.
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    per_batch = 1 if settings.do_sample and settings.seed is not None else max(1, batch_size)
    # Prompts of similar length together: less padding.
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: dict[int, Completion] = {}
    for first in range(0, len(order), per_batch):
        if stop is not None and (stop.stopped or stop.should_stop()):
            raise GenerationStopped("generation stopped: the caller gave up waiting")
        batch = order[first : first + per_batch]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
        if settings.do_sample and settings.seed is not None:
            torch.manual_seed(settings.seed)
            if has_cuda():
                torch.cuda.manual_seed_all(settings.seed)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(loaded.device), attention_mask=attention.to(loaded.device), **options
            )
        if stop is not None and stop.stopped:
            raise GenerationStopped("generation stopped: the caller gave up waiting")
        for row, index in enumerate(batch):
            new_list = output[row][width:].tolist()
            stopped = eos_id is not None and eos_id in new_list
            if stopped:  # a row that ended before the longest of its batch is padded after its eos: cut there
                new_list = new_list[: new_list.index(eos_id)]
            results[index] = Completion(
                prompt=texts[index],
                completion=tokenizer.decode(new_list, skip_special_tokens=True),
                prompt_tokens=len(encoded[index]),
                completion_tokens=len(new_list) + (1 if stopped else 0),
                finish_reason="stop" if stopped else "length",
            )
    return [results[i] for i in range(len(texts))]


# -- merging ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeResult:
    merged_dir: Path
    total_params: int
    base_params: int
    dtype: str
    seconds: float


def merge_adapter(base_model: str, adapter_dir: str | Path, out_dir: Path) -> MergeResult:
    """Fold the adapter's update into the base weights (W0 + BA for LoRA) with `merge_and_unload`, and save
    the plain model (safetensors) with the run's tokenizer. The merged model has exactly the base's
    parameters, so it answers as fast as the base did: the bypass is gone.

    The base is loaded in float32 without quantization (also for QLoRA), merged, and saved in the base
    checkpoint's own dtype. The folder is written beside `out_dir` and renamed into place when complete."""
    from peft import PeftModel

    started = time.perf_counter()
    _check_folder(str(adapter_dir), "adapter_config.json", "adapter")
    resolve_model(base_model)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_model, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:
        raise TrainingError(model_load_error(base_model, exc)) from exc
    saved_dtype = getattr(model.config, "dtype", None)
    base_params = model.num_parameters()
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as exc:
        reason = first_line(exc)
        raise TrainingError(f"could not load the adapter in {str(adapter_dir)!r}: {reason}") from exc
    config = peft_model.active_peft_config
    kind = getattr(config.peft_type, "value", config.peft_type)
    if config.is_prompt_learning:
        raise TrainingError(
            f"a {kind} adapter cannot be merged: it adds virtual tokens to the input, "
            "not a weight update; use the adapter as it is"
        )
    try:
        merged = peft_model.merge_and_unload()
    except Exception as exc:
        reason = first_line(exc)
        raise TrainingError(f"peft could not merge this {kind} adapter: {reason}") from exc
    if isinstance(saved_dtype, torch.dtype) and saved_dtype != torch.float32:
        merged.to(saved_dtype)

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)
    _load_tokenizer(str(adapter_dir)).save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    return MergeResult(
        merged_dir=out_dir,
        total_params=merged.num_parameters(),
        base_params=base_params,
        dtype=dtype,
        seconds=time.perf_counter() - started,
    )
