"""MoSLoRA (Wu et al., 2024): ``Δ(x) = B M A drop(x)`` with a trainable r x r mixer M.

The mixer starts Kaiming-uniform (paper default) or orthogonal; a zero mixer makes every gradient
zero at B = 0, so it never trains (MoSLoRA §3.2) — kept as an option to show exactly that.
The fast path multiplies ``B M`` first (d_out x r x r FLOPs a step, not r x r per token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from harness.adapter import SharedTensors, Site
from harness.config import AdapterConfig
from harness.registry import METHODS
from methods.lora import LoraLinear


@dataclass(frozen=True)
class MosLoraConfig(AdapterConfig):
    mixer_init: str = "kaiming"

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"mixer_init": ("kaiming", "orthogonal", "zeros")}


@METHODS.register("moslora")
class MosLoraLinear(LoraLinear):
    autocast_input = True  # x only meets the dropout and matmuls: read in autocast's dtype under autocast
    config_cls = MosLoraConfig
    ignored_options = ("heads",)  # one B: --heads leaves its runs (and run ids) alone

    def __init__(self, base: nn.Linear, config: MosLoraConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__(base, config, site, shared)
        self.lora_M = self.new_param(config.r, config.r, init=config.mixer_init)

    def delta(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_M), self.lora_B)

    def factors_from(self, z: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        # (B M) is d_out x r: one small matmul per step instead of an r x r one per token
        return z, self.lora_B @ self.lora_M

    def delta_weight(self) -> Tensor:
        return self.lora_B @ self.lora_M @ self.lora_A
