"""Tiny seeded models and the method table every parametrised test runs over."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness import METHODS

ALL_METHODS = sorted(METHODS.names())
TINY_TARGETS = "q_proj,k_proj,v_proj,up_proj,down_proj"


def tiny_llama(seed: int = 0, layers: int = 4, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def batch(seed: int = 0, size: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (size, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def perturb(adapter, seed: int = 1, scale: float = 0.1) -> None:
    """Give every adapter tensor random values, so tests do not pass because B is still zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)


@pytest.fixture(params=ALL_METHODS)
def method(request) -> str:
    return request.param
