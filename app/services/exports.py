"""Exports of a run's result: the adapter (PEFT format), the full model, or the merged model, as a zip with a
generated model card, or pushed to the Hugging Face hub with a token the user gives for that one push.

Every file comes from inside the run's own folder (resolved, links included): a download cannot reach
anything else. The merged model is made by the inference flow (POST /api/runs/{id}/merge, on a worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.services.inference import merged_dir
from runspec import METHODS
from runspec.sources import is_hub_id
from tunedeck_state import __version__
from tunedeck_state.models import Run, RunStatus

Kind = Literal["adapter", "model", "merged"]
KINDS: tuple[Kind, ...] = ("adapter", "model", "merged")
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "adapter": ("adapter_config.json", "adapter_model.safetensors"),
    "model": ("config.json",),
    "merged": ("config.json",),
}
#: Already compressed: stored as they are in the zip.
STORED_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".model")
CARD_NAME = "README.md"
#: Built archives, kept in the run's folder (they go with it) and never exported themselves.
CACHE_DIRNAME = ".exports"
_build_locks: dict[tuple[str, str], threading.Lock] = {}
_build_locks_guard = threading.Lock()


class ExportRefused(ValueError):
    """This export is not available for the run; the message says why (HTTP 409)."""


class HubPushFailed(RuntimeError):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def run_dir(runs_dir: Path, run: Run) -> Path:
    return (runs_dir / f"run-{run.id}").resolve()


def is_peft(run: Run) -> bool:
    method = (run.spec or {}).get("method") or {}
    cls = METHODS.get(str(method.get("name", run.method)))
    return bool(cls.is_peft) if cls is not None else run.method != "full"


def available_kinds(run: Run) -> list[Kind]:
    if not run.artifact_dir or run.status not in (RunStatus.succeeded, RunStatus.cancelled, RunStatus.pruned):
        return []
    if not is_peft(run):
        return ["model"]
    return ["adapter", "merged"] if merged_dir(run) else ["adapter"]


def export_folder(runs_dir: Path, run: Run, kind: Kind) -> Path:
    """The folder to export, resolved and checked to lie inside the run's folder."""
    if kind not in KINDS:
        raise ExportRefused(f"unknown export {kind!r}; choose adapter, model or merged")
    if run.status not in (RunStatus.succeeded, RunStatus.cancelled, RunStatus.pruned) or not run.artifact_dir:
        raise ExportRefused(f"run {run.id} is {run.status} and has saved no result to export")
    peft = is_peft(run)
    if kind == "adapter" and not peft:
        raise ExportRefused(f"run {run.id} is a full fine-tune: it has no adapter; export its model")
    if kind == "model" and peft:
        raise ExportRefused(
            f"run {run.id} trained an adapter ({run.method}); export the adapter, or merge it into its base "
            f"(POST /api/runs/{run.id}/merge) and export the merged model"
        )
    if kind == "merged":
        if not peft:
            raise ExportRefused(f"run {run.id} is a full fine-tune: its model is already whole; export the model")
        # A merge made before the run was resumed and retrained is stale: merged_dir() ignores it.
        merged = merged_dir(run)
        if not merged:
            raise ExportRefused(
                f"run {run.id} has no merged model yet: merge it first (the Merge button on the run page, or "
                f"POST /api/runs/{run.id}/merge; it runs on a worker), then download"
            )
        folder = Path(str(merged))
    else:
        folder = Path(run.artifact_dir)
    base = run_dir(runs_dir, run)
    resolved = folder.resolve()
    if not resolved.is_relative_to(base):
        raise ExportRefused(f"run {run.id}'s {kind} folder is outside the run's own folder; it is not exported")
    missing = [name for name in REQUIRED_FILES[kind] if not (resolved / name).is_file()]
    if not resolved.is_dir():
        raise ExportRefused(f"run {run.id}'s {kind} folder does not exist any more")
    if missing:
        raise ExportRefused(f"run {run.id}'s {kind} folder lacks {', '.join(missing)}")
    return resolved


def export_files(folder: Path, base: Path) -> Iterator[tuple[str, Path]]:
    """(name in the export, file) for every file of the folder that resolves inside `base`; links out are skipped."""
    cache = base / CACHE_DIRNAME
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(
            d for d in dirnames if (Path(dirpath) / d).resolve().is_relative_to(folder) and d != CACHE_DIRNAME
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            resolved = path.resolve()
            if not resolved.is_relative_to(base) or not resolved.is_file() or resolved.is_relative_to(cache):
                continue
            arcname = path.relative_to(folder).as_posix()
            if arcname == CARD_NAME:
                continue  # peft writes a template card; ours replaces it
            yield arcname, resolved


def write_zip(target: Path, folder: Path, base: Path, card: str, files: list[tuple[str, Path]] | None = None) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        archive.writestr(CARD_NAME, card)
        for arcname, path in files if files is not None else export_files(folder, base):
            method = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            archive.write(path, arcname, compress_type=method)


def cached_zip(folder: Path, base: Path, kind: Kind, card: str) -> Path:
    """The export's zip, built once and kept under the run's folder (`.exports/`) until what it holds changes.

    Its name carries a digest of the card and of every file's name, size and modification time, so a retrained
    or re-merged result gets a new archive (the older one is removed). One lock per run folder and kind: any
    number of simultaneous downloads build it once and then stream the same file."""
    files = list(export_files(folder, base))
    digest = hashlib.sha256(card.encode())
    for arcname, path in files:
        info = path.stat()
        digest.update(f"\0{arcname}\0{info.st_size}\0{info.st_mtime_ns}".encode())
    cache = base / CACHE_DIRNAME
    target = cache / f"{kind}-{digest.hexdigest()[:24]}.zip"
    with _build_locks_guard:
        lock = _build_locks.setdefault((str(base), kind), threading.Lock())
    with lock:
        if target.is_file():
            return target
        cache.mkdir(exist_ok=True)
        partial = cache / f".{kind}-{uuid.uuid4().hex}.partial"
        try:
            write_zip(partial, folder, base, card, files)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        for older in cache.glob(f"{kind}-*.zip"):
            if older != target:
                older.unlink(missing_ok=True)
    return target


def zip_name(run: Run, kind: Kind) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in run.name).strip("-.") or "run"
    return f"tunedeck-run-{run.id}-{safe}-{kind}.zip"


# -- model card ------------------------------------------------------------------------------------------


def model_card(run: Run, kind: Kind) -> str:
    spec = run.spec or {}
    dataset = spec.get("dataset") or {}
    method = spec.get("method") or {}
    details = run.details or {}
    data_facts = details.get("dataset") or {}
    environment = details.get("environment") or {}
    metadata: dict[str, Any] = {
        "library_name": "peft" if kind == "adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["tunedeck", str(method.get("name", run.method)), kind],
    }
    if is_hub_id(run.model):
        metadata["base_model"] = run.model
    if is_hub_id(str(dataset.get("source", ""))):
        metadata["datasets"] = [dataset["source"]]
    what = {
        "adapter": f"a {method.get('name', run.method)} adapter (PEFT format) for",
        "model": "a full fine-tune of",
        "merged": f"{run.model} with its {method.get('name', run.method)} adapter merged in (a plain model), from",
    }[kind]
    lines = [
        "---",
        *_yaml_lines(metadata),
        "---",
        "",
        f"# {run.name}",
        "",
        f"This is {what} `{run.model}`, trained by tunedeck {__version__} (run #{run.id}).",
        "",
        "## Data",
        "",
        f"- source: `{dataset.get('source', '')}`"
        + (
            f" (config `{dataset['config']}`, split `{dataset.get('split', 'train')}`)" if dataset.get("config") else ""
        ),
        f"- format: {dataset.get('format', 'alpaca')}, prompt template: {dataset.get('template', 'course')}"
        + (f", columns: {json.dumps(dataset['columns'])}" if dataset.get("columns") else ""),
    ]
    if data_facts.get("rows") is not None:
        lines.append(
            f"- rows: {data_facts['rows']}"
            + (f", cut at max_length: {data_facts['truncated']}" if "truncated" in data_facts else "")
        )
    if data_facts.get("sha256"):
        lines.append(f"- sha256 of the file: `{data_facts['sha256']}`")
    lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
    for label, value in (
        ("steps", f"{run.step} / {run.max_steps}"),
        ("final train loss", _number(run.final_train_loss)),
        ("final eval loss", _number(run.final_eval_loss)),
        ("trainable parameters", _count(run.trainable_params, run.total_params)),
        ("wall time", f"{run.wall_time_seconds:.0f} s" if run.wall_time_seconds else "–"),
        ("seed", str(details.get("seed", (spec.get("training") or {}).get("seed", "–")))),
        ("spec hash", f"`{run.spec_hash}`"),
    ):
        lines.append(f"| {label} | {value} |")
    lines += ["", "## Use it", "", "```python", *_usage(run, kind), "```", ""]
    lines += [
        "The prompt format it learned: " + _template_note(dataset),
        "",
        "## Run spec",
        "",
        "```json",
        json.dumps(spec, indent=2, ensure_ascii=False),
        "```",
    ]
    packages = environment.get("packages") or {}
    if packages:
        lines += ["", "## Environment", ""]
        lines += [f"- {name} {version}" for name, version in packages.items() if version]
        git = environment.get("git") or {}
        if git.get("commit"):
            lines.append(f"- tunedeck commit {git['commit']}" + (" (with local changes)" if git.get("dirty") else ""))
        for gpu in environment.get("gpus") or []:
            lines.append(f"- GPU: {gpu.get('name')}")
    return "\n".join(lines) + "\n"


def _usage(run: Run, kind: Kind) -> list[str]:
    if kind == "adapter":
        return [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{run.model}")',
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
    ]


def _template_note(dataset: dict[str, Any]) -> str:
    if dataset.get("format") == "text":
        return "plain text (continued pre-training)."
    if dataset.get("template") == "chat":
        return "the tokenizer's chat template (`tokenizer.apply_chat_template`)."
    return '`"Human: " + instruction + "\\n" + input + "\\n\\nAssistant: "`, the answer followed by EOS.'


def _yaml_lines(metadata: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in metadata.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(item, ensure_ascii=False)}" for item in value]
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return lines


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _count(trainable: int | None, total: int | None) -> str:
    if trainable is None:
        return "–"
    return f"{trainable:,}" + (f" of {total:,} ({100 * trainable / total:.3f}%)" if total else "")


# -- hub -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_url: str
    files: int


def push_to_hub(
    folder: Path,
    base: Path,
    card: str,
    *,
    repo_id: str,
    token: str,
    private: bool,
    endpoint: str | None,
    commit_message: str,
) -> PushResult:
    """Create the repository if needed and commit the export to it. The token is used for this call only."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token, library_name="tunedeck", library_version=__version__)
    operations = [CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode())]
    operations += [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in export_files(folder, base)
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=commit_message)
    except OfflineModeIsEnabled:
        raise HubPushFailed(
            "this server runs with HF_HUB_OFFLINE set, so it cannot reach the hub; unset it to push"
        ) from None
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        reason = _scrub(str(exc).splitlines()[0][:300], token)
        if code in (401, 403):
            raise HubPushFailed(f"the hub refused the token for {repo_id} ({code}): {reason}", code) from None
        raise HubPushFailed(f"the hub answered {code}: {reason}", code) from None
    except _transport_errors() as exc:  # unreachable, refused, timed out: not a hub answer (502 upstream)
        where = endpoint or "https://huggingface.co"
        raise HubPushFailed(
            f"could not reach the hub at {where} ({type(exc).__name__}: {_scrub(str(exc)[:200], token)}); check "
            "this server's network access (or TUNEDECK_HUB_ENDPOINT) and push again"
        ) from None
    except _http_errors() as exc:
        raise HubPushFailed(f"could not push to the hub: {_scrub(str(exc)[:300], token)}") from None
    return PushResult(repo_id=repo_id, commit_url=str(info.commit_url), files=len(operations))


def _http_clients() -> list[Any]:
    """The HTTP client modules huggingface_hub may use (httpx; httpx2 in its newer releases)."""
    import importlib

    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def _transport_errors() -> tuple[type[BaseException], ...]:
    return tuple(module.TransportError for module in _http_clients())


def _http_errors() -> tuple[type[BaseException], ...]:
    return (OSError, ValueError, *(module.HTTPError for module in _http_clients()))


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
