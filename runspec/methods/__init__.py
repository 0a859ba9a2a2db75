"""The method registry: one module per method family. Adding a method means adding its module and
listing its spec class in `METHOD_SPECS` and `AnyMethod` below."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from runspec.methods.adalora import AdaLoraSpec
from runspec.methods.base import MethodNotApplicable, MethodSpec
from runspec.methods.full import FullSpec
from runspec.methods.ia3 import IA3Spec
from runspec.methods.lora import LoraSpec
from runspec.methods.lycoris import LoHaSpec, LoKrSpec
from runspec.methods.oft import OftSpec
from runspec.methods.p_tuning import PTuningSpec
from runspec.methods.prefix_tuning import PrefixTuningSpec, PTuningV2Spec
from runspec.methods.prompt_tuning import PromptTuningSpec
from runspec.methods.qlora import QLoraSpec
from runspec.methods.vera import VeraSpec

METHOD_SPECS: tuple[type[MethodSpec], ...] = (
    FullSpec,
    LoraSpec,
    QLoraSpec,
    PromptTuningSpec,
    PrefixTuningSpec,
    PTuningSpec,
    PTuningV2Spec,
    IA3Spec,
    AdaLoraSpec,
    LoHaSpec,
    LoKrSpec,
    VeraSpec,
    OftSpec,
)

AnyMethod = Annotated[
    FullSpec
    | LoraSpec
    | QLoraSpec
    | PromptTuningSpec
    | PrefixTuningSpec
    | PTuningSpec
    | PTuningV2Spec
    | IA3Spec
    | AdaLoraSpec
    | LoHaSpec
    | LoKrSpec
    | VeraSpec
    | OftSpec,
    Field(discriminator="name"),
]

METHODS: dict[str, type[MethodSpec]] = {cls.model_fields["name"].default: cls for cls in METHOD_SPECS}

__all__ = ["METHODS", "METHOD_SPECS", "AnyMethod", "MethodNotApplicable", "MethodSpec"]
