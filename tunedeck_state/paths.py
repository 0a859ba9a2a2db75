"""Safe path handling: user-supplied names never escape the folder they are meant for.

* `safe_join(base, *parts)`: a path below `base` built from untrusted parts (an artifact's relative path, an
  upload's name), refused when it would leave `base` (`..`, absolute parts, symlinks pointing out, NUL).
* `run_dir(settings, run_id)`: the one place a run's folder is derived (from its id, never from its name).
* `extract_zip(...)`: unpack an archive below a folder, refusing links, absolute or `..` members, and bombs.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from runspec.sources import is_inside
from tunedeck_state.settings import Settings


class PathOutside(ValueError):
    """A user-supplied path that would leave the folder it belongs to."""


def safe_join(base: Path, *parts: str) -> Path:
    """`base / parts…`, resolved (symlinks followed), guaranteed to be `base` itself or below it."""
    root = Path(base).resolve()
    relative = PurePosixPath()
    for part in parts:
        if not isinstance(part, str) or "\x00" in part or "\\" in part:
            raise PathOutside(f"{part!r} is not an acceptable path part")
        piece = PurePosixPath(part)
        if piece.is_absolute():
            raise PathOutside(f"{part!r} is absolute; give a path relative to the folder")
        relative = relative / piece
    if any(p == ".." for p in relative.parts):
        raise PathOutside(f"{relative!s} climbs out of the folder ('..')")
    candidate = (root / relative).resolve()
    if not is_inside(candidate, root):
        raise PathOutside(f"{relative!s} resolves outside the folder (through a link)")
    return candidate


def run_dir(settings: Settings, run_id: int) -> Path:
    """A run's folder: data/runs/run-<id>. Names and specs never take part in it."""
    if not isinstance(run_id, int) or isinstance(run_id, bool) or run_id < 1:
        raise PathOutside(f"{run_id!r} is not a run id")
    return safe_join(settings.runs_dir, f"run-{run_id}")


def run_artifact(settings: Settings, run_id: int, relative: str) -> Path:
    """A file of a run's folder named by the user (a download): refused when it would leave the folder."""
    folder = run_dir(settings, run_id)
    path = safe_join(folder, relative)
    if path == folder:
        raise PathOutside("name a file inside the run's folder")
    return path


def extract_zip(
    archive: Path, destination: Path, *, max_members: int = 10_000, max_total_bytes: int = 2 * 2**30
) -> list[Path]:
    """Unpack `archive` below `destination`; refuse symlinks, absolute or climbing names, and oversize content."""
    destination.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        if len(members) > max_members:
            raise PathOutside(f"the archive has {len(members)} entries; at most {max_members} are accepted")
        total = 0
        planned: list[tuple[zipfile.ZipInfo, Path]] = []
        for member in members:
            mode = member.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise PathOutside(f"the archive holds a symbolic link ({member.filename}); links are not accepted")
            if member.filename.startswith("/") or member.filename[1:3] == ":\\":
                raise PathOutside(f"the archive holds an absolute name ({member.filename})")
            target = safe_join(destination, member.filename)
            total += member.file_size
            if total > max_total_bytes:
                raise PathOutside(f"the archive unpacks to more than {max_total_bytes} bytes")
            planned.append((member, target))
        written: list[Path] = []
        for member, target in planned:
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, open(target, "wb") as sink:
                remaining = member.file_size
                while chunk := source.read(min(2**20, remaining + 1)):
                    remaining -= len(chunk)
                    if remaining < 0:
                        raise PathOutside(f"{member.filename} is larger than the archive says")
                    sink.write(chunk)
            written.append(target)
        return written
