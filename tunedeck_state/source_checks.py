"""Submit-time checks of a spec's model and dataset sources (pure path checks; no torch, no network).

The worker checks again before it reads anything (its own data roots may differ); this check gives the user
a 422 naming the field at once instead of a failed run later.
"""

from __future__ import annotations

from runspec import RunSpec
from runspec.sources import SourceRefused, check_spec_sources
from tunedeck_state.settings import Settings, get_settings


class SpecRefused(ValueError):
    """A spec that validates but asks for something tunedeck will not do. `problems`: (dotted field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems

    def as_validation_errors(self) -> list[dict[str, object]]:
        """The shape of FastAPI's RequestValidationError entries, so one handler answers both."""
        return [
            {"loc": ("body", *field.split(".")), "msg": message, "type": "value_error.source", "input": None}
            for field, message in self.problems
        ]


def check_sources(spec: RunSpec, settings: Settings | None = None) -> None:
    """Raise SpecRefused when the model or dataset is a URL, outside the data roots, or asks for custom code."""
    settings = settings or get_settings()
    problems: list[SourceRefused] = check_spec_sources(spec.model, spec.dataset.source, settings.source_policy())
    if problems:
        raise SpecRefused([(p.field, p.message) for p in problems])


def check_model_source(model: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    try:
        settings.source_policy().resolve_model(model, "model")
    except SourceRefused as exc:
        raise SpecRefused([(exc.field, exc.message)]) from None
