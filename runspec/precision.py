"""Which dtypes a run trains in: one pure decision, shared by the worker (which loads the model in them) and the
memory estimate (which counts their bytes). No torch here: dtypes are named as torch names them.

* **compute** (`training.precision`): the dtype of the matmuls. auto: bf16 on a CUDA GPU that supports it, else
  fp32; bf16 and pure_bf16 are bf16 (on CPU too); fp16 is fp16.
* **base weights** (`training.base_dtype`): for every PEFT method the frozen base is loaded in the compute dtype
  (auto), or in fp32 (`fp32`, the behaviour before base_dtype existed). QLoRA's 4-bit layers de-quantize to the
  compute dtype; its other weights (embeddings, norms, head) are loaded in it. Full fine-tuning keeps fp32 master
  weights under autocast unless precision is pure_bf16, which loads and trains everything in bf16.
* **trainable parameters** and their optimizer states: fp32 for every PEFT method (peft's
  `autocast_adapter_dtype` casts 16-bit adapters up to fp32; prompt encoders and prefixes are created in fp32);
  for full fine-tuning they are the weights themselves (fp32, or bf16 with pure_bf16).
* **autocast**: whether the Trainer runs the forward pass under 16-bit autocast (bf16/fp16 mixed precision). Under
  autocast, weights stored in fp32 are cast to 16 bits for each matmul (the estimate's "weight copies"); weights
  stored in bf16 are not copied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from runspec.spec import RunSpec

Precision = Literal["auto", "fp32", "bf16", "fp16", "pure_bf16"]
BaseDtype = Literal["auto", "fp32"]
DtypeName = Literal["float32", "bfloat16", "float16"]
#: QLoRA's bnb_4bit_compute_dtype values.
QuantizedCompute = Literal["auto", "float32", "bfloat16", "float16"]

BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
_COMPUTE: dict[str, DtypeName] = {"fp32": "float32", "bf16": "bfloat16", "pure_bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class ResolvedDtypes:
    """The dtypes one run uses on one device (torch's names: float32, bfloat16, float16)."""

    #: the dtype the matmuls run in (autocast's, or the weights' own when there is no autocast)
    compute: DtypeName
    #: the dtype the base model's weights are loaded and kept in (QLoRA: its layers that are not quantized)
    base: DtypeName
    #: trainable parameters, their gradients and their optimizer states (full fine-tuning: the weights themselves)
    trainable: DtypeName
    #: the Trainer's mixed precision: the forward runs under 16-bit autocast
    autocast: bool
    #: QLoRA only: the dtype its 4-bit weights are de-quantized to for each matmul (None for other methods)
    quantized_compute: DtypeName | None = None
    #: full fine-tuning in mixed precision: fp32 weights (the master copy), updated in fp32, cast for each matmul
    master_weights: bool = False

    @property
    def base_bytes(self) -> int:
        return BYTES[self.base]

    @property
    def trainable_bytes(self) -> int:
        return BYTES[self.trainable]

    def details(self) -> dict[str, Any]:
        """What run.details["dtypes"] records."""
        return asdict(self)


def resolve_dtypes(
    method: str,
    precision: str = "auto",
    base_dtype: str = "auto",
    *,
    cuda: bool,
    bf16_supported: bool = True,
    quantized_compute: str = "auto",
) -> ResolvedDtypes:
    """The dtypes of a run of `method` (a method name: "full" is full fine-tuning, "qlora" quantizes the base,
    every other name is a PEFT method on a frozen base) with `training.precision` and `training.base_dtype`, on a
    worker with (`cuda`) or without a CUDA GPU; `bf16_supported`: whether that GPU computes in bf16 (Ampere or
    newer). `quantized_compute`: QLoRA's `bnb_4bit_compute_dtype` (auto follows the compute dtype)."""
    full = method == "full"
    if precision == "auto":
        compute: DtypeName = "bfloat16" if cuda and bf16_supported else "float32"
    else:
        compute = _COMPUTE[precision]
    autocast = compute != "float32" and precision != "pure_bf16"
    if full:
        base: DtypeName = "bfloat16" if precision == "pure_bf16" else "float32"
        trainable: DtypeName = base
    else:
        base = "float32" if base_dtype == "fp32" else compute
        trainable = "float32"
    quantized: DtypeName | None = None
    if method == "qlora":
        quantized = _quantized_compute(quantized_compute, compute, base_dtype, cuda=cuda, bf16_supported=bf16_supported)
    return ResolvedDtypes(
        compute=compute,
        base=base,
        trainable=trainable,
        autocast=autocast,
        quantized_compute=quantized,
        master_weights=full and trainable == "float32" and compute != "float32",
    )


def resolve_spec_dtypes(spec: RunSpec, *, cuda: bool, bf16_supported: bool = True) -> ResolvedDtypes:
    """`resolve_dtypes` for a run spec."""
    return resolve_dtypes(
        spec.method.name,
        spec.training.precision,
        spec.training.base_dtype,
        cuda=cuda,
        bf16_supported=bf16_supported,
        quantized_compute=str(getattr(spec.method, "bnb_4bit_compute_dtype", "auto")),
    )


def _quantized_compute(
    setting: str, compute: DtypeName, base_dtype: str, *, cuda: bool, bf16_supported: bool
) -> DtypeName:
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if base_dtype == "auto" and compute != "float32":
        return compute
    # base_dtype=fp32 (or fp32 compute): bf16 on a GPU that has it, else fp16 on a GPU, fp32 on a CPU
    if cuda:
        return "bfloat16" if bf16_supported else "float16"
    return "float32"
