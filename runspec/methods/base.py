"""What every fine-tuning method declares: its parameters (a pydantic model) and how it builds the model.

A method module subclasses `MethodSpec`, gives `name` a Literal (the union's discriminator), declares its
parameters with peft's own names, bounds and help text, and implements `build`. Everything that needs the ML
stack (peft, transformers, torch) is imported inside the methods, so the web process can validate specs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, StringConstraints

from runspec.base import StrictModel
from runspec.memory.facts import ModelFacts, RunShape
from runspec.memory.method_terms import MethodMemory, default_method_memory

if TYPE_CHECKING:
    from runspec.precision import ResolvedDtypes
    from runspec.spec import TrainingSpec


class MethodNotApplicable(ValueError):
    """The method cannot be applied to this model (an architecture or layer type it does not support)."""


class MethodSpec(StrictModel):
    """Base of one method family's spec. Subclasses set `name` to a Literal, which discriminates the union."""

    name: str
    label: ClassVar[str]
    summary: ClassVar[str]
    #: What the method trains, in a few words (the README's methods table and GET /api/methods).
    trains: ClassVar[str] = ""
    #: True when training touches only added parameters (peft); False for full fine-tuning.
    is_peft: ClassVar[bool] = True
    #: True for prompt-learning methods (virtual tokens before every sample, or prefixes in the attention cache):
    #: such a model cannot train on packed rows of several samples (training.packing).
    prompt_learning: ClassVar[bool] = False
    #: True when the method cannot run without a CUDA device.
    requires_cuda: ClassVar[bool] = False
    #: Fields that name modules of the model (peft's suffix matching); checked against the model's real names.
    module_fields: ClassVar[tuple[str, ...]] = ()
    #: The parameters the new-run form shows beside the method select; the others go in "method details".
    main_fields: ClassVar[tuple[str, ...]] = ()

    def model_load_kwargs(self, dtypes: ResolvedDtypes | None = None) -> dict[str, Any]:
        """Extra keyword arguments for `AutoModelForCausalLM.from_pretrained` (quantization). `dtypes`: the run's
        (runspec.precision), for the compute dtype a quantized base de-quantizes to; None: the method's own rule."""
        return {}

    def resolved(self, training: TrainingSpec) -> MethodSpec:
        """This method with values that follow from the training settings filled in (e.g. AdaLoRA's total_step).

        Stored specs keep the user's values; the worker builds from the resolved copy."""
        return self

    def check_training(self, training: TrainingSpec) -> None:
        """Raise ValueError (naming the fields) when this method cannot train with these settings."""

    def build(self, model: Any, tokenizer: Any) -> Any:
        """Turn the loaded base model into the model the Trainer trains. Imports peft lazily.

        `tokenizer` is the run's tokenizer, or None when only counting parameters on the meta device."""
        raise NotImplementedError

    def trainer_callbacks(self) -> list[Any]:
        """transformers TrainerCallbacks the method needs while training (e.g. AdaLoRA's budget allocation)."""
        return []

    def save(self, model: Any, directory: Path) -> None:
        """Save what training produced (the adapter, or the whole model) so `from_pretrained` reloads it."""
        model.save_pretrained(directory)

    def key_params(self) -> dict[str, Any]:
        """The parameters a comparison table shows for this method (everything but the name)."""
        return self.model_dump(exclude={"name"})

    def memory(self, model: ModelFacts, run: RunShape) -> MethodMemory:
        """Optional hook for the memory estimate (runspec/memory/): activations this method keeps beyond the
        base model's, and notes. Parameter counts come from the built model; the default covers adapters
        beside linear layers (one input copy each) and nothing for other methods."""
        return default_method_memory(self.label, model, run)


#: One module name as peft's target_modules matches it: a leaf name ("q_proj") or a dotted suffix ("mlp.c_proj").
ModuleName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[\w.-]+$")
]

#: peft's shorthand for every linear layer but the output head (as the QLoRA paper trains).
ALL_LINEAR = "all-linear"


def _check_module_list(modules: list[str]) -> list[str]:
    if len(set(modules)) != len(modules):
        raise ValueError("lists a module twice")
    if ALL_LINEAR in (m.lower() for m in modules) and len(modules) > 1:
        raise ValueError(f"{ALL_LINEAR} already selects every linear layer; give it alone")
    return modules


#: A list of module names (checked against the model's real names before the run is queued).
ModuleList = Annotated[list[ModuleName], AfterValidator(_check_module_list)]

#: peft's per-architecture defaults for LoRA-style methods (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
LORA_DEFAULT_TARGETS = "Bloom query_key_value, Llama/Qwen2/Mistral q_proj,v_proj, GPT-2 c_attn"


def target_modules_help(what: str = "Layers to adapt.", defaults: str = LORA_DEFAULT_TARGETS) -> str:
    return (
        f"{what} Module names as peft matches them (a name, or a dotted suffix such as mlp.down_proj), "
        f"comma-separated; {ALL_LINEAR} for every linear layer. Empty: peft's default for the architecture "
        f"({defaults})."
    )


def peft_targets(modules: list[str] | None) -> list[str] | str | None:
    """The value for a peft config's target_modules: None (peft's default), the all-linear shorthand, or names."""
    if not modules:
        return None
    if [m.lower() for m in modules] == [ALL_LINEAR]:
        return ALL_LINEAR
    return list(modules)
