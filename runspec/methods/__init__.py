"""The method registry: one module per method family. Adding a method means adding its module and
listing its spec class in `METHOD_SPECS` and `AnyMethod` below."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from runspec.methods.base import MethodSpec
from runspec.methods.full import FullSpec
from runspec.methods.lora import LoraSpec

METHOD_SPECS: tuple[type[MethodSpec], ...] = (FullSpec, LoraSpec)

AnyMethod = Annotated[FullSpec | LoraSpec, Field(discriminator="name")]

METHODS: dict[str, type[MethodSpec]] = {cls.model_fields["name"].default: cls for cls in METHOD_SPECS}

__all__ = ["METHODS", "METHOD_SPECS", "AnyMethod", "MethodSpec"]
