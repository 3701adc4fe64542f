"""HydraLoRA (Tian et al., 2024): one A and m B heads per layer, mixed by a token-wise softmax router.

``Δ(x) = Σ_i w_i(x) B_i A drop(x)`` with ``w = softmax(G x)``, ``G ∈ R^{m x d_in}``: the router reads ``x``
before dropout, as in HydraLoRA's code. The m heads are
stored side by side in one ``lora_B`` of shape ``d_out x (m·r)`` (head i = columns ``i·r:(i+1)·r``),
so the weighted sum is one matmul over the router-weighted copies of ``A x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.adapter import AdapterLinear, SharedTensors, Site
from harness.config import AdapterConfig
from harness.registry import METHODS


def mix_heads(weights: Tensor, z: Tensor) -> Tensor:
    """``(..., m)`` router weights and ``(..., r)`` -> ``(..., m·r)`` so that ``B_cat @ out = Σ w_i B_i z``."""
    return (weights.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)


@dataclass(frozen=True)
class HydraLoraConfig(AdapterConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads < 2:  # softmax over one logit is 1: a router that never learns, counted as trained
            raise ValueError(
                f"hydralora needs heads >= 2 (got {self.heads}): with one head it is LoRA with a router that never "
                "learns; run lora for one B, or give hydralora two heads or more"
            )


@METHODS.register("hydralora")
class HydraLoraLinear(AdapterLinear):
    autocast_input = True  # x only meets the dropout and matmuls: read in autocast's dtype under autocast
    delta_helpers = ("router_weights",)  # factors_from computes the router itself
    config_cls = HydraLoraConfig
    mergeable = False

    def __init__(self, base: nn.Linear, config: AdapterConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__(base, config, site, shared)
        self.lora_A = self.new_param(config.r, site.d_in, init="kaiming")
        self.lora_B = self.new_param(site.d_out, config.heads * config.r)
        self.lora_router = self.new_param(config.heads, site.d_in, init="kaiming")

    def router_weights(self, x: Tensor) -> Tensor:
        return torch.softmax(F.linear(x, self.lora_router), dim=-1)

    def delta(self, x: Tensor) -> Tensor:
        # the router reads the input before dropout (HydraLoRA's own code); dropout is on the A path only
        weights = self.router_weights(x)
        return F.linear(mix_heads(weights, F.linear(self.lora_dropout(x), self.lora_A)), self.lora_B)

    def input_weights(self) -> tuple[Tensor, Tensor | None]:
        return self.lora_A, self.lora_router  # A reads drop(x), the router x

    def factors_from(self, z: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        return mix_heads(torch.softmax(g, dim=-1), z), self.lora_B

    def reducer_parameters(self) -> list[nn.Parameter]:
        return [self.lora_B, self.lora_router]
