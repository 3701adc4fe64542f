"""The fast path (``delta_factors``: one ``addmm``, one dropout draw per shared input, a cheaper CPU dropout
kernel) computes what the reference path (``delta``, one ``nn.Dropout`` per wrapper) computes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import harness.adapter as adapter_module
from harness import AdapterConfig, AdapterLinear, attach
from harness.adapter import drop_positions, sparse_dropout
from tests.conftest import TINY_TARGETS, batch, perturb, tiny_llama


def outputs_and_grads(adapter, fast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, and the gradients of every trainable tensor and of the input embeddings."""
    adapter.use_fast_path(fast)
    model = adapter.model
    captured = {}
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: captured.setdefault("embeds", o.requires_grad_())
    )
    try:
        out = model(**batch(size=3, length=10))
    finally:
        hook.remove()
    out.loss.backward()
    names = {id(p): n for n, p in model.named_parameters()}
    grads = {names[id(p)]: p.grad.clone() for p in adapter.trainable_parameters() if p.grad is not None}
    grads["embeds"] = captured["embeds"].grad.clone()
    model.zero_grad(set_to_none=True)
    return out.logits.detach(), grads


@pytest.mark.parametrize("mode", ["dropout 0", "eval"])
def test_fast_path_equals_reference_outputs_and_gradients(method, mode):
    dropout = 0.0 if mode == "dropout 0" else 0.3  # eval: dropout is off whatever p is
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=dropout, reducer=None)
    perturb(adapter)
    adapter.model.train(mode != "eval")
    assert not any(layer.fast_path for layer in adapter.layers.values())  # off by default
    adapter.use_fast_path(True)
    assert all(layer.fast_path for layer in adapter.layers.values())  # every built-in method offers it
    ref_logits, ref_grads = outputs_and_grads(adapter, fast=False)
    logits, grads = outputs_and_grads(adapter, fast=True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 1
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_fast_path_keeps_the_reducers_frozen_heads_frozen(method):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.0, k=2, selection="random")
    adapter.use_fast_path(True)  # what this file tests (off by default)
    perturb(adapter)
    adapter.reducer.select()
    ref_logits, ref_grads = outputs_and_grads(adapter, fast=False)
    logits, grads = outputs_and_grads(adapter, fast=True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()  # the paused heads get no gradient on either path


def test_fast_path_on_a_bf16_base_keeps_fp32_adapters_and_bf16_outputs(method):
    adapter = attach(tiny_llama(dtype=torch.bfloat16), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    perturb(adapter)
    ref_logits, ref_grads = outputs_and_grads(adapter, fast=False)
    logits, grads = outputs_and_grads(adapter, fast=True)
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in adapter.trainable_parameters())
    assert all(grads[n].dtype == torch.float32 for n in grads if n != "embeds")
    torch.testing.assert_close(logits, ref_logits, atol=0.05, rtol=0.02)


def test_wrappers_that_read_one_tensor_share_one_dropout_draw():
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.5)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    adapter.model.train()
    seen: dict[str, torch.Tensor] = {}
    for name, layer in adapter.layers.items():
        short = name.split(".")[-1]
        original = layer.delta_factors
        layer.delta_factors = lambda x, xd, short=short, original=original: (
            seen.setdefault(short, xd) is not None and original(x, xd)
        )
        if name.startswith("model.layers.1."):
            break
    adapter.model(**batch())
    assert seen["q_proj"] is seen["k_proj"] is seen["v_proj"]  # one draw for the three readers of x
    assert seen["up_proj"] is not seen["q_proj"] and seen["down_proj"] is not seen["up_proj"]
    dropped = (seen["q_proj"] == 0).float().mean().item()
    assert 0.35 < dropped < 0.65
    # the same wrapper reading the same tensor twice draws a new mask
    q = adapter.layers["model.layers.0.self_attn.q_proj"]
    x = torch.randn(2, 6, 32)
    first, second = q._input.get(q, x, torch.float32)[1], q._input.get(q, x, torch.float32)[1]
    assert not torch.equal(first, second)
    # no reuse after an in-place change of the input
    k = adapter.layers["model.layers.0.self_attn.k_proj"]
    x.add_(1.0)
    assert q._input.get(k, x, torch.float32)[1] is not second


def test_fast_path_runs_in_inference_mode(method):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.1)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    perturb(adapter)
    expected = adapter.model(**batch()).logits
    with torch.inference_mode():
        torch.testing.assert_close(adapter.model(**batch()).logits, expected)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_cpu_dropout_kernel_has_the_bernoulli_distribution(p):
    torch.manual_seed(0)
    n = 400_000
    pos = drop_positions(n, p)
    assert pos.dtype == torch.long and bool((pos[1:] > pos[:-1]).all()) and 0 <= int(pos[0]) and int(pos[-1]) < n
    sd = math.sqrt(n * p * (1 - p))
    assert abs(len(pos) - n * p) < 5 * sd  # the count: Binomial(n, p)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos] = True
    pairs = (mask[:-1] & mask[1:]).float().mean().item()  # neighbours are independent: P(both) = p^2
    assert abs(pairs - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
    halves = mask.view(2, -1).float().mean(1)  # no drift along the tensor
    assert (halves - p).abs().max().item() < 5 * math.sqrt(p * (1 - p) / (n / 2))
    # the layer: survivors scaled by 1/(1-p), gradient through the same mask
    drop = torch.nn.Dropout(p).train()
    x = torch.ones(n // 1000, 1000, requires_grad=True)
    y = sparse_dropout(drop, x)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sd / n
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    # eval, p = 0 and nn.Identity return the input itself
    assert sparse_dropout(drop.eval(), x) is x and sparse_dropout(torch.nn.Dropout(0.0).train(), x) is x
    assert sparse_dropout(torch.nn.Identity(), x) is x


def test_cpu_dropout_kernel_is_reproducible_and_handles_any_shape(monkeypatch):
    monkeypatch.setattr(adapter_module, "SPARSE_DROPOUT_MIN", 1)  # the sparse kernel even for tiny tensors
    drop = torch.nn.Dropout(0.5).train()
    torch.manual_seed(3)
    a = sparse_dropout(drop, torch.ones(4, 5))
    torch.manual_seed(3)
    assert torch.equal(a, sparse_dropout(drop, torch.ones(4, 5)))
    for n in (1, 2, 7):
        assert sparse_dropout(drop, torch.ones(n)).shape == (n,)
    assert sparse_dropout(drop, torch.ones(0, 3)).shape == (0, 3)
    x = torch.ones(6, 8, requires_grad=True)
    y = sparse_dropout(drop, x[:, ::2])  # not contiguous
    y.sum().backward()
    assert y.shape == (6, 4) and torch.equal(x.grad[:, ::2], (y != 0).float() * 2) and not x.grad[:, 1::2].any()


def test_delta_keeps_nn_dropouts_own_draw():
    """The reference path is today's: ``delta`` draws ``nn.Dropout``'s mask (tests may seed and redraw it)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=4, dropout=0.5)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    layer = next(iter(adapter.layers.values())).train()
    perturb(adapter)
    x = torch.randn(2, 5, layer.site.d_in)
    torch.manual_seed(5)
    actual = layer.delta(x)
    torch.manual_seed(5)
    expected = F.linear(F.linear(F.dropout(x, 0.5, True), layer.lora_A), layer.lora_B)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_fa_fast_path_still_does_not_keep_the_input(dropout, monkeypatch):
    monkeypatch.setattr(adapter_module, "SPARSE_DROPOUT_MIN", 1)  # its mask is indices, not an input-sized tensor
    for method, keeps_input in (("lora", True), ("lora_fa", False)):
        adapter = attach(tiny_llama(), method, targets="up_proj", r=4, dropout=dropout)
        adapter.use_fast_path(True)  # what this file tests (off by default)
        adapter.model.train()
        layer = adapter.layers["model.layers.0.mlp.up_proj"]
        x = torch.randn(2, 5, layer.site.d_in, requires_grad=True)
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            layer(x)
        assert (x.numel() in saved) == keeps_input, (method, saved)


@dataclass(frozen=True)
class DeltaOnlyConfig(AdapterConfig):
    pass


class DeltaOnlyLinear(AdapterLinear):
    """A plugin as the README shows it: ``delta`` only, no fast path."""

    name = "delta_only"
    config_cls = DeltaOnlyConfig

    def __init__(self, base, config, site, shared):
        super().__init__(base, config, site, shared)
        self.lora_A = self.new_param(config.r, site.d_in, init="kaiming")
        self.lora_B = self.new_param(site.d_out, config.r)

    def delta(self, x):
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)


def test_a_plugin_with_only_delta_keeps_the_reference_path_and_its_own_dropout():
    adapter = attach(tiny_llama(), DeltaOnlyLinear, targets=TINY_TARGETS, dropout=0.0)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    lora = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.0)
    assert not any(layer.fast_path for layer in adapter.layers.values())
    perturb(adapter)
    perturb(lora)
    logits, grads = outputs_and_grads(adapter, fast=True)
    lora_logits, lora_grads = outputs_and_grads(lora, fast=False)
    assert not any(layer.fast_path for layer in adapter.layers.values())  # use_fast_path cannot turn it on
    torch.testing.assert_close(logits, lora_logits, atol=1e-6, rtol=0)
    assert sorted(grads) == sorted(lora_grads)
    with_dropout = attach(tiny_llama(), DeltaOnlyLinear, targets=TINY_TARGETS, dropout=0.1)
    with_dropout.model.train()
    out = with_dropout.model(**batch())
    out.loss.backward()
    assert all(p.grad is not None for p in with_dropout.trainable_parameters())


def test_the_shared_input_dies_with_its_tensor():
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.5)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    adapter.model.train()
    q = adapter.layers["model.layers.0.self_attn.q_proj"]
    x = torch.randn(2, 6, 32)
    q(x)
    assert q._input._entry is not None and q._input._entry[3] is None  # x itself is never held
    del x
    assert q._input._entry is None  # its dropout output is released with it
