"""OFT (Qiu et al. 2023): an orthogonal transform of each target layer's weights, learned in blocks.

The update rotates the pre-trained weight, W' = R·W with R block-diagonal and orthogonal (Cayley-parameterized),
which keeps the angles between neurons (the "hyperspherical energy") and so the pre-trained knowledge. peft
implements it for nn.Linear layers, not for the Conv1D layers of GPT-2 style models.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from runspec.methods.base import MethodSpec, ModuleList, peft_targets, target_modules_help


class OftSpec(MethodSpec):
    name: Literal["oft"] = "oft"
    label = "OFT"
    summary = "A learned block-diagonal orthogonal rotation of each target layer's weights."
    main_fields = ("oft_block_size", "r", "target_modules")
    trains = "the skew-symmetric parameters of one orthogonal block per oft_block_size inputs of each target layer"
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules",)

    oft_block_size: int = Field(
        32,
        ge=0,
        le=65_536,
        description="Size of each orthogonal block (peft rounds it to a divisor of each layer's input size). "
        "Give this or r (number of blocks), the other 0.",
    )
    r: int = Field(0, ge=0, le=65_536, description="Number of blocks per layer; 0 when oft_block_size is given.")
    target_modules: ModuleList | None = Field(
        None, description=target_modules_help("Linear layers to adapt (peft supports nn.Linear, not GPT-2's Conv1D).")
    )
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Multiplicative dropout on whole blocks, in [0, 1).")
    coft: bool = Field(False, description="Constrained OFT: keep R within eps of the identity.")
    eps: float = Field(6e-5, gt=0, description="The COFT constraint radius (used when coft is on).")
    block_share: bool = Field(False, description="Share one block's parameters across all blocks of a layer.")
    use_cayley_neumann: bool = Field(True, description="Approximate the Cayley transform's inverse (faster).")

    @model_validator(mode="before")
    @classmethod
    def _r_alone_means_no_block_size(cls, data: Any) -> Any:
        # {"r": 4} alone asks for 4 blocks: the block size follows from the layer (peft's rule).
        if isinstance(data, dict) and data.get("r") not in (None, 0, "0", "") and "oft_block_size" not in data:
            return {**data, "oft_block_size": 0}
        return data

    @model_validator(mode="after")
    def _blocks(self) -> OftSpec:
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ValueError(
                f"give exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}) as non-zero: "
                "r × oft_block_size is the layer's input size"
            )
        return self

    def peft_config(self) -> Any:
        from peft import OFTConfig, TaskType

        return OFTConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            oft_block_size=self.oft_block_size,
            target_modules=peft_targets(self.target_modules),
            module_dropout=self.module_dropout,
            coft=self.coft,
            eps=self.eps,
            block_share=self.block_share,
            use_cayley_neumann=self.use_cayley_neumann,
        )

    def build(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())
