"""Shared storage: the web server and every training worker must see the same data directory (run folders with
adapters, checkpoints and logs; uploads), since the server reads what workers write (exports, generation, model
cards). tunedeck's choice for workers on other machines is a shared filesystem (NFS, a cloud file share) mounted
at the same TUNEDECK_DATA_DIR path everywhere; nothing is copied back.

The server writes a random identity into the data directory; each worker reports the identity it reads there in
its heartbeat, and the Workers page and GET /api/workers flag a worker that does not see the same directory
(`shared_storage: false`) before its runs' adapters go missing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from tunedeck_state.settings import Settings, get_settings

MARKER = ".tunedeck-storage-id"


def marker_path(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).resolved_data_dir / MARKER


def read_storage_id(settings: Settings | None = None) -> str | None:
    """The identity of the data directory as this process sees it (None when no server has written one yet)."""
    try:
        return marker_path(settings).read_text().strip() or None
    except OSError:
        return None


def server_storage_id(settings: Settings | None = None) -> str | None:
    """The identity of the server's data directory, written on first use (atomically: concurrent servers agree)."""
    found = read_storage_id(settings)
    if found:
        return found
    path = marker_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{MARKER}.{os.getpid()}.{uuid.uuid4().hex}")
        temporary.write_text(uuid.uuid4().hex)
        try:
            os.link(temporary, path)  # fails if another process created it first; then theirs wins
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()
    except OSError:
        return None
    return read_storage_id(settings)
