"""ShareLoRA (Song et al., 2024): one A per module type shared by all L layers, a B per layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.adapter import AdapterLinear
from harness.config import AdapterConfig
from harness.registry import METHODS
from methods.lora import LoraLinear


class SharedA(AdapterLinear):
    """Mixin: ``lora_A`` is the module type's one shared tensor (lives in ``lora_shared``, counted once)."""

    train_shared_a = True

    def init_a(self, config: AdapterConfig) -> None:
        trainable = getattr(config, "train_shared_a", True)
        self.shared_param("lora_A", config.r, self.site.d_in, init="kaiming", trainable=trainable)

    @property
    def lora_A(self) -> nn.Parameter:
        return self._shared.lora_A[self.site.group]


@dataclass(frozen=True)
class ShareLoraConfig(AdapterConfig):
    pass


@METHODS.register("sharelora")
class ShareLoraLinear(SharedA, LoraLinear):
    config_cls = ShareLoraConfig
    ignored_options = ("heads",)  # one B: --heads leaves its runs (and run ids) alone
