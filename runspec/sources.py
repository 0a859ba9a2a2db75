"""Where a run's model and dataset may come from: a Hugging Face hub id, or a local path inside the data roots.

Pure Python (no torch, no network), so the web process checks a spec when it is submitted and the worker
checks it again before it reads anything. The rules:

* A URL is never fetched: `https://…`, `hf://…`, `file://…` are refused (a hub repository is named by its id).
* A local path must resolve, after `~` and symlinks, inside one of the data roots; every file of a model
  folder must too (a symlink inside the folder cannot point out of it).
* A model folder whose config asks for custom code (`auto_map` in config.json or tokenizer_config.json) is
  refused: tunedeck never runs code shipped with a model folder. Custom code runs only for hub ids on the
  remote-code allowlist, each pinned to a commit.
* Backslashes and glob characters are refused in local paths (the datasets library expands globs).
* A dataset named like one of the loaders built into the `datasets` library (`json`, `csv`, `text`, `parquet`,
  ...) is refused: `load_dataset("json")` is not a hub repository, it reads every matching file of the worker's
  current folder. A hub source is only ever loaded as a hub repository; a local file only with explicit
  `data_files` (see worker/training/data.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: File types a local dataset may have (the `datasets` builder for each).
DATASET_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
#: Files of a model folder whose `auto_map` would make transformers import code from the folder.
CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
#: Names ending so are files (refused as datasets with their type named), never hub ids.
OTHER_FILE_SUFFIXES = (
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".txt", ".tsv", ".xlsx", ".arrow",
    ".pkl", ".pickle", ".pt", ".pth", ".bin", ".safetensors", ".py", ".sh",
)  # fmt: skip
#: The `datasets` library's packaged builders (datasets.packaged_modules, 5.x, plus older names): as a "hub id" each
#: would load files from the worker's current folder. The worker also refuses whatever its installed datasets has.
PACKAGED_DATASET_BUILDERS = frozenset(
    {
        "arrow", "audiofolder", "cache", "conll", "csv", "eval", "fasta", "fastq", "folder_based_builder",
        "genbank", "generator", "harbor", "hdf5", "iceberg", "imagefolder", "json", "lance", "meshfolder", "mmcif",
        "niftifolder", "numpy", "pandas", "parquet", "pdb", "pdffolder", "spark", "sql", "text", "tsfile",
        "videofolder", "vortex", "webdataset", "xml",
    }
)  # fmt: skip
CONFIG_MAX_BYTES = 8 * 2**20
MODEL_FOLDER_MAX_ENTRIES = 10_000

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|[^\\/])")
_HUB_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_GLOB = frozenset("*?[]{}")
_HUB_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/(?:datasets/)?([^/?#]+(?:/[^/?#]+)?)")


class SourceRefused(ValueError):
    """A model or dataset source that tunedeck will not read. `field` is the spec path it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ResolvedSource:
    kind: Literal["hub", "local"]
    #: The hub id, or the resolved absolute path (load from this, not from what the user typed).
    location: str
    #: A pinned hub commit (only for allow-listed remote code).
    revision: str | None = None
    #: True only for a hub id on the remote-code allowlist.
    trust_remote_code: bool = False


@dataclass(frozen=True)
class SourcePolicy:
    """What a process may read: local paths under `data_roots`; custom code only for `remote_code` ids."""

    data_roots: tuple[Path, ...]
    #: hub model id → the commit its custom code is pinned to
    remote_code: Mapping[str, str] = field(default_factory=dict)
    #: relative paths are taken relative to this folder (default: the current directory)
    base_dir: Path | None = None

    @classmethod
    def default(cls) -> SourcePolicy:
        """The policy of a process started without settings: only the current folder."""
        return cls(data_roots=(Path.cwd(),))

    def roots(self) -> tuple[Path, ...]:
        return tuple(Path(root).expanduser().resolve() for root in self.data_roots)

    def describe_roots(self) -> str:
        return ", ".join(str(root) for root in self.roots()) or "(none configured)"

    # -- models --------------------------------------------------------------------------------------
    def resolve_model(self, source: str, field: str = "model") -> ResolvedSource:
        if _is_hub_candidate(source) and not self._exists_relative(source):
            revision = self.remote_code.get(source)
            return ResolvedSource("hub", source, revision=revision, trust_remote_code=revision is not None)
        path = self._local_path(source, field)
        if not path.exists():
            raise SourceRefused(field, f"model folder {source!r} does not exist")
        if not path.is_dir():
            raise SourceRefused(field, f"{source!r} is a file; give a model folder (config.json and weights)")
        if not (path / "config.json").is_file():
            raise SourceRefused(field, f"model folder {source!r} has no config.json; is it a transformers model?")
        self._check_folder_stays_inside(path, source, field)
        for name in CODE_MAP_FILES:
            if _asks_for_custom_code(path / name):
                raise SourceRefused(
                    field,
                    f"model folder {source!r} asks to run its own code ('auto_map' in {name}); tunedeck never runs "
                    "code from a model folder. Use a model whose architecture transformers ships, or a hub id "
                    "on TUNEDECK_REMOTE_CODE_ALLOWLIST pinned to a commit (org/name@<40-hex commit>).",
                )
        return ResolvedSource("local", str(path))

    # -- datasets ------------------------------------------------------------------------------------
    def resolve_dataset(self, source: str, field: str = "dataset.source") -> ResolvedSource:
        refuse_packaged_builder(source, field)
        if _is_hub_candidate(source) and not self._exists_relative(source):
            return ResolvedSource("hub", source)
        path = self._local_path(source, field)
        suffix = path.suffix.lower()
        if suffix not in DATASET_FILE_BUILDERS:
            raise SourceRefused(
                field,
                f"{source!r} has the unsupported file type {suffix or '(none)'!r}; give a "
                f"{', '.join(sorted(DATASET_FILE_BUILDERS))} file or a hub dataset id",
            )
        if not path.exists():
            raise SourceRefused(field, f"dataset file {source!r} does not exist")
        if not path.is_file():
            raise SourceRefused(field, f"{source!r} is not a regular file")
        return ResolvedSource("local", str(path))

    # -- helpers -------------------------------------------------------------------------------------
    def _base(self) -> Path:
        return self.base_dir or Path.cwd()

    def _exists_relative(self, source: str) -> bool:
        try:
            return (self._base() / source).exists()
        except (OSError, ValueError):
            return False

    def _local_path(self, source: str, field: str) -> Path:
        _refuse_urls(source, field)
        if "\x00" in source or any(ord(ch) < 32 for ch in source):
            raise SourceRefused(field, "must not contain control characters")
        if "\\" in source:
            raise SourceRefused(field, f"{source!r} contains a backslash; write local paths with '/'")
        if any(ch in _GLOB for ch in source):
            raise SourceRefused(field, f"{source!r} contains a wildcard character (one of {''.join(sorted(_GLOB))})")
        if not looks_like_local_path(source) and not is_hub_id(source) and not self._exists_relative(source):
            raise SourceRefused(
                field,
                f"{source!r} is neither a Hugging Face hub id (name or org/name) nor an existing local path",
            )
        try:
            path = Path(source).expanduser()
            if not path.is_absolute():
                path = self._base() / path
            resolved = path.resolve(strict=False)
        except (OSError, RuntimeError, ValueError) as exc:
            raise SourceRefused(field, f"{source!r} is not a usable path ({exc})") from None
        if not any(is_inside(resolved, root) for root in self.roots()):
            raise SourceRefused(
                field,
                f"{source!r} is outside the data roots ({self.describe_roots()}); move it under one of them or "
                "add its folder to TUNEDECK_DATA_ROOTS",
            )
        return resolved

    def _check_folder_stays_inside(self, folder: Path, source: str, field: str) -> None:
        roots = self.roots()
        for count, (dirpath, dirnames, filenames) in enumerate(os.walk(folder, followlinks=False)):
            for name in [*dirnames, *filenames]:
                entry = Path(dirpath) / name
                if entry.is_symlink() and not any(is_inside(entry.resolve(), root) for root in roots):
                    raise SourceRefused(
                        field,
                        f"model folder {source!r} holds {entry.relative_to(folder)}, a link that points outside "
                        "the data roots",
                    )
            if count > MODEL_FOLDER_MAX_ENTRIES:
                raise SourceRefused(field, f"model folder {source!r} has too many subfolders")


def refuse_packaged_builder(source: str, field: str = "dataset.source", builders: frozenset[str] = frozenset()) -> None:
    """SourceRefused for the name of a loader built into `datasets` (or one of `builders`, the worker's own list)."""
    if source.strip().lower() not in PACKAGED_DATASET_BUILDERS | builders:
        return
    raise SourceRefused(
        field,
        f"{source!r} is the name of a loader built into the datasets library, not a hub dataset: it would read "
        "whatever files lie in the worker's current folder. Give a hub dataset id (org/name) or a local "
        f"{', '.join(sorted(set(DATASET_FILE_BUILDERS)))} file inside the data roots",
    )


def is_inside(path: Path, root: Path) -> bool:
    """True when `path` (already resolved) is `root` or below it."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def is_hub_id(source: str) -> bool:
    """`name` or `org/name` as the Hugging Face hub spells repository ids."""
    parts = source.split("/")
    if len(parts) > 2 or not all(_HUB_PART.match(part) for part in parts):
        return False
    return ".." not in source and "--" not in source and not source.endswith(".git")


def _is_hub_candidate(source: str) -> bool:
    return is_hub_id(source) and not looks_like_local_path(source)


def looks_like_local_path(source: str) -> bool:
    """A string that can only be meant as a path (a hub id is "name" or "org/name")."""
    return (
        source.startswith(("/", "./", "../", "~", "\\", "."))
        or source in {".", ".."}
        or source.count("/") > 1
        or source.lower().endswith((*DATASET_FILE_BUILDERS, *OTHER_FILE_SUFFIXES))
    )


def _refuse_urls(source: str, field: str) -> None:
    if not _URL.match(source):
        return
    hub = _HUB_URL.match(source)
    hint = f"; use the hub id {hub.group(1)!r} instead" if hub else ""
    raise SourceRefused(
        field,
        f"{source!r} is a URL; tunedeck fetches nothing from arbitrary addresses. Give a Hugging Face hub id "
        f"(name or org/name) or a local path inside the data roots{hint}",
    )


def _asks_for_custom_code(config_file: Path) -> bool:
    if not config_file.is_file():
        return False
    try:
        if config_file.stat().st_size > CONFIG_MAX_BYTES:
            return True  # no real config is this large; refuse rather than read it
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # not ours to judge; loading it will fail with its own reason
    return isinstance(data, dict) and bool(data.get("auto_map"))


def parse_remote_code_allowlist(value: str) -> dict[str, str]:
    """'org/name@<commit>,org2/name2@<commit>' → {id: commit}. Each entry must be pinned to a full commit hash."""
    allowed: dict[str, str] = {}
    for raw in re.split(r"[,\s]+", value.strip()):
        if not raw:
            continue
        model_id, sep, revision = raw.partition("@")
        if not sep or not _COMMIT.match(revision):
            raise ValueError(
                f"remote-code allowlist entry {raw!r} must be org/name@<40-hex commit> (a pinned revision, not "
                "a branch or tag)"
            )
        if not is_hub_id(model_id):
            raise ValueError(f"remote-code allowlist entry {raw!r}: {model_id!r} is not a hub id")
        allowed[model_id] = revision
    return allowed


def check_spec_sources(model: str, dataset: str, policy: SourcePolicy) -> list[SourceRefused]:
    """Every refusal for a spec's model and dataset (empty when both are acceptable)."""
    problems: list[SourceRefused] = []
    try:
        policy.resolve_model(model, "model")
    except SourceRefused as exc:
        problems.append(exc)
    try:
        policy.resolve_dataset(dataset, "dataset.source")
    except SourceRefused as exc:
        problems.append(exc)
    return problems
