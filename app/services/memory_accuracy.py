"""How far the memory estimate has been off, per GPU type: the closed loop of the estimate.

Every GPU run stores its estimate (`details.memory_estimate`) and what it really used (`details.memory_measured`:
torch.cuda.max_memory_reserved, beside the GPU's name in `details.gpu`); runspec.memory.measured.reserved_ratio
is measured / estimated. Here the ratios of past succeeded runs are summarised per GPU type, for the Workers page
and for the estimate shown before a launch on that GPU type.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from runspec.memory.measured import reserved_ratio
from tunedeck_state.models import Run, RunStatus

#: Finished runs read (newest first).
RECENT_RUNS = 500


@dataclass(frozen=True)
class GpuAccuracy:
    gpu: str
    runs: int
    #: measured / estimated: the median, and the range, over the runs
    median: float
    low: float
    high: float

    def summary(self) -> str:
        spread = f", {self.low:.2f}–{self.high:.2f}×" if self.runs > 1 else ""
        return f"{self.median:.2f}× the estimate (median of {self.runs} run{'s' if self.runs != 1 else ''}{spread})"

    def note(self) -> str:
        """For the estimate shown before a launch on this GPU type."""
        direction = "more than" if self.median > 1 else "less than"
        off = abs(self.median - 1)
        if off < 0.005:
            return f"On {self.gpu}, past runs used what their estimates said: {self.summary()}."
        return (
            f"On {self.gpu}, past runs used {off:.0%} {direction} their estimates: measured "
            f"torch.cuda.max_memory_reserved was {self.summary()}."
        )


def accuracy_by_gpu(session: Session, limit: int = RECENT_RUNS) -> list[GpuAccuracy]:
    """measured / estimated per GPU type over the last `limit` succeeded runs that trained on a GPU."""
    rows = session.scalars(
        select(Run.details).where(Run.status == RunStatus.succeeded.value).order_by(Run.id.desc()).limit(limit)
    )
    ratios: dict[str, list[float]] = {}
    for details in rows:
        details = details or {}
        ratio = reserved_ratio(details.get("memory_estimate"), details.get("memory_measured"))
        gpu = details.get("gpu_name") or details.get("gpu")
        if ratio is not None and gpu:
            ratios.setdefault(str(gpu), []).append(ratio)
    return [
        GpuAccuracy(gpu, len(values), statistics.median(values), min(values), max(values))
        for gpu, values in sorted(ratios.items())
    ]


def accuracy_on(session: Session, gpu: str) -> GpuAccuracy | None:
    return next((found for found in accuracy_by_gpu(session) if found.gpu == gpu), None)
