from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are refused, so a typo such as `learnig_rate` is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
