"""QLoRA: LoRA on a base model loaded in 4 bit through bitsandbytes (NF4 or FP4, optional double quantization).

The frozen base is stored quantized and de-quantized block by block to `bnb_4bit_compute_dtype` in each forward
pass; only the LoRA matrices are trained, in full precision (fp32). The base's other weights (embeddings, norms,
head) are kept in the dtype they were loaded in: the compute dtype (training.base_dtype=auto) or fp32.
bitsandbytes runs 4-bit layers on the CPU as well as on CUDA.
Paged optimizers (training.optim = paged_adamw_8bit / paged_adamw_32bit) complete the QLoRA recipe on a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from runspec.methods.lora import LoraFamilySpec

if TYPE_CHECKING:
    from runspec.precision import ResolvedDtypes


class QLoraSpec(LoraFamilySpec):
    name: Literal["qlora"] = "qlora"
    label = "QLoRA"
    summary = "LoRA on a base quantized to 4 bit (bitsandbytes NF4, double quantization): the least memory."
    main_fields = ("r", "lora_alpha", "target_modules", "bnb_4bit_quant_type")

    init_lora_weights: Literal["gaussian", "default"] = Field(
        "gaussian", description="gaussian: A ~ N(0, 1/r), B = 0; default: peft's Kaiming-uniform A, B = 0."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="nf4: 4-bit NormalFloat (optimal for normally distributed weights); fp4: 4-bit float."
    )
    bnb_4bit_use_double_quant: bool = Field(
        True, description="Double quantization: also quantize the per-block scaling constants (saves ~0.4 bit/param)."
    )
    bnb_4bit_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the 4-bit weights are de-quantized to for each matmul. "
        "auto: the compute dtype (training.precision: bfloat16 on a GPU that supports it, float32 on a CPU unless "
        "precision is bf16); float16 on a GPU without bf16. With training.base_dtype=fp32: bfloat16 on a GPU that "
        "supports it, else float16 on a GPU, float32 on a CPU.",
    )

    def lora_init(self) -> bool | str:
        return True if self.init_lora_weights == "default" else self.init_lora_weights

    def compute_dtype(self) -> Any:
        import torch

        if self.bnb_4bit_compute_dtype != "auto":
            return getattr(torch, self.bnb_4bit_compute_dtype)
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    def model_load_kwargs(self, dtypes: ResolvedDtypes | None = None) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        compute = getattr(torch, dtypes.quantized_compute) if dtypes and dtypes.quantized_compute else None

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.bnb_4bit_quant_type,
                bnb_4bit_use_double_quant=self.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=compute or self.compute_dtype(),
            )
        }

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model, prepare_model_for_kbit_training

        # Gradient checkpointing follows training.gradient_checkpointing: the Trainer turns it on (non-reentrant),
        # so it is not forced here as the QLoRA scripts do. prepare_model_for_kbit_training would also cast every
        # 16-bit weight that is not quantized (embeddings, norms, head) up to fp32; the base's other weights stay in
        # the dtype training.base_dtype loaded them in (the compute dtype), so only its freezing is wanted here.
        if _weights_are_fp32(model):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            model.requires_grad_(False)
        keep_training_layout(model)
        return get_peft_model(model, self.peft_config())


def _weights_are_fp32(model: Any) -> bool:
    """Every weight that is not 4-bit is fp32 (training.base_dtype=fp32, or fp32 compute on a CPU)."""
    import torch

    return all(not p.dtype.is_floating_point or p.dtype == torch.float32 for p in model.parameters())


def keep_training_layout(model: Any) -> None:
    """Keep bitsandbytes from repacking 4-bit weights for its CPU inference kernel (AVX512-BF16).

    bitsandbytes repacks a Linear4bit's weight in place the first time it runs in eval mode on such a CPU; training
    steps after that (the Trainer evaluates between them) then fail in the repacked layout's in-place bias add."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
