"""LoRA (Hu et al., 2022): ``Δ(x) = B A drop(x)``, A Kaiming-uniform, B zeros."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from harness.adapter import AdapterLinear, SharedTensors, Site
from harness.config import AdapterConfig
from harness.registry import METHODS


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    pass


@METHODS.register("lora")
class LoraLinear(AdapterLinear):
    autocast_input = True  # x only meets the dropout and matmuls: read in autocast's dtype under autocast
    config_cls = LoraConfig
    ignored_options = ("heads",)  # one B: --heads leaves its runs (and run ids) alone

    def __init__(self, base: nn.Linear, config: AdapterConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__(base, config, site, shared)
        self.init_a(config)
        self.lora_B = self.new_param(site.d_out, config.r)

    def init_a(self, config: AdapterConfig) -> None:
        self.lora_A = self.new_param(config.r, self.site.d_in, init="kaiming")

    def delta(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    def input_weights(self) -> tuple[Tensor, Tensor | None]:
        return self.lora_A, None

    def factors_from(self, z: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        return z, self.lora_B

    def delta_weight(self) -> Tensor:
        return self.lora_B @ self.lora_A

    def reducer_parameters(self) -> list[nn.Parameter]:
        return [self.lora_B]
