"""LoRA-FA (Zhang et al., 2023): LoRA with A frozen at its random init; only B trains.

Because A needs no gradient, autograd saves only the r-dimensional ``A x`` for B's gradient, never the
full layer input (the point of the method: activation memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.adapter import SharedTensors, Site
from harness.config import AdapterConfig
from harness.registry import METHODS
from methods.lora import LoraLinear


@dataclass(frozen=True)
class LoraFaConfig(AdapterConfig):
    pass


@METHODS.register("lora_fa")
class LoraFaLinear(LoraLinear):
    config_cls = LoraFaConfig
    ignored_options = ("heads",)  # one B: --heads leaves its runs (and run ids) alone

    def __init__(self, base: nn.Linear, config: AdapterConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__(base, config, site, shared)
        self.lora_A.requires_grad_(False)
