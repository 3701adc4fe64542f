"""EffiLoRA: shared A per module type, m routed B heads per layer, the Reducer on by default.

As ShareLoRA, one A per module type serves every layer; each layer has m B heads and a router on
``z = A x``.

``Δ(x) = Σ_i w_i(z) B_i z``, ``z = A_t drop(x)``, ``w = softmax(W_g^T z)`` with ``W_g ∈ R^{r x m}``
(§3.1; stored transposed as ``lora_router`` of shape ``m x r``). ``router_input="hidden"`` reads
``x`` (before dropout) instead. With ``heads=1`` there is no router and the method merges ("EffiLoRA (Single B)").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.adapter import AdapterLinear, SharedTensors, Site
from harness.config import AdapterConfig, ReducerConfig
from harness.registry import METHODS
from methods.hydralora import mix_heads
from methods.sharelora import SharedA


@dataclass(frozen=True)
class EffiLoraConfig(AdapterConfig):
    router_input: str = "subspace"
    train_shared_a: bool = True
    reducer: ReducerConfig | None = field(default_factory=ReducerConfig)

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"router_input": ("subspace", "hidden")}


@METHODS.register("effilora")
class EffiLoraLinear(SharedA, AdapterLinear):
    autocast_input = True  # x only meets the dropout and matmuls: read in autocast's dtype under autocast
    delta_helpers = ("router_weights",)  # factors_from computes the router itself
    config_cls = EffiLoraConfig

    def __init__(self, base: nn.Linear, config: EffiLoraConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__(base, config, site, shared)
        self.init_a(config)
        self.heads = config.heads
        self.router_input = config.router_input
        self.lora_B = self.new_param(site.d_out, config.heads * config.r)
        if config.heads > 1:
            width = config.r if config.router_input == "subspace" else site.d_in
            self.lora_router = self.new_param(config.heads, width, init="kaiming")

    @classmethod
    def is_mergeable(cls, config: AdapterConfig) -> bool:
        return config.heads == 1 and super().is_mergeable(config)  # a plugin's own delta: not this delta_weight

    @classmethod
    def delta_helpers_for(cls, config: AdapterConfig) -> tuple[str, ...]:
        # one head runs no router: a plugin overriding only router_weights keeps merge and the fast path there
        helpers = super().delta_helpers_for(config)
        return tuple(h for h in helpers if h != "router_weights") if config.heads == 1 else helpers

    def router_weights(self, x: Tensor, z: Tensor) -> Tensor:
        return torch.softmax(F.linear(z if self.router_input == "subspace" else x, self.lora_router), dim=-1)

    def delta(self, x: Tensor) -> Tensor:
        z = F.linear(self.lora_dropout(x), self.lora_A)
        if self.heads > 1:  # router_input="hidden" reads x before dropout, as HydraLoRA's router does
            z = mix_heads(self.router_weights(x, z), z)
        return F.linear(z, self.lora_B)

    def input_weights(self) -> tuple[Tensor, Tensor | None]:
        hidden = self.heads > 1 and self.router_input == "hidden"
        return self.lora_A, (self.lora_router if hidden else None)

    def factors_from(self, z: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.heads > 1:
            logits = F.linear(z, self.lora_router) if self.router_input == "subspace" else g
            z = mix_heads(torch.softmax(logits, dim=-1), z)
        return z, self.lora_B

    def delta_weight(self) -> Tensor:
        return self.lora_B @ self.lora_A

    def reducer_parameters(self) -> list[nn.Parameter]:
        return [self.lora_B] + ([self.lora_router] if self.heads > 1 else [])
