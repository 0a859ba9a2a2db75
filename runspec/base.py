from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


class StrictModel(BaseModel):
    """Unknown fields are refused, so a typo such as `learnig_rate` is an error, not a silent default.

    A boolean where a number is expected is refused too (pydantic would read `true` as 1); numbers written as
    strings are still read, since HTML forms send nothing else."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        wrong = [k for k, v in data.items() if isinstance(v, bool) and k in fields and _numeric(fields[k].annotation)]
        # As the strings "true"/"false" they fail the field's own number parsing: the error names the field.
        return {**data, **{key: str(data[key]).lower() for key in wrong}} if wrong else data


def _numeric(annotation: Any) -> bool:
    """int, float, or an optional of them."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return bool(members) and all(arg in (int, float) for arg in members)
    return False
