"""What an estimate gives back: its lines (one per component, with the formula behind it) and the whole `Estimate`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Line:
    key: str
    label: str
    bytes: int  # the component's full size
    formula: str
    peak_bytes: int = 0  # how much of it is resident at the peak
    parts: tuple[Line, ...] = ()


@dataclass(frozen=True)
class Suggestion:
    change: str
    patch: dict[str, Any]
    total_bytes: int


@dataclass(frozen=True)
class Estimate:
    model: str
    method: str
    device: str
    precision: str
    batch_size: int
    seq_len: int
    lines: tuple[Line, ...]
    peak_phase: str
    allocated_peak_bytes: int  # what torch.cuda.max_memory_allocated should show (no overhead)
    total_peak_bytes: int  # plus framework overhead: what the device must hold
    trainable_params: int
    total_params: int
    device_memory_bytes: int | None = None
    device_source: str | None = None
    fits: bool | None = None
    headroom_bytes: int | None = None
    notes: tuple[str, ...] = ()
    suggestion: Suggestion | None = None
    #: the dtypes counted (runspec.precision's ResolvedDtypes.details()) and the kernels assumed
    dtypes: dict[str, Any] | None = None
    kernels: dict[str, Any] | None = None
    #: where seq_len comes from: training.max_length, or the longest batch of the dataset's token counts
    seq_len_source: str | None = None
    #: tokens per sample before a prompt method's virtual tokens (seq_len includes them)
    sample_len: int = 0

    def line(self, key: str) -> Line:
        for line in self.lines:
            if line.key == key:
                return line
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
