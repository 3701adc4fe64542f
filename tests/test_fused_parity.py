"""The fast path (``delta_factors``: one ``addmm``, one dropout draw per shared input, a cheaper CPU dropout
kernel) computes what the reference path (``delta``, one ``nn.Dropout`` per wrapper) computes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import harness.fastpath as fastpath
from harness import METHODS, attach
from harness.fastpath import drop_positions, sparse_dropout
from methods.effilora import EffiLoraLinear
from methods.lora import LoraLinear
from tests.conftest import ALL_METHODS, TINY_TARGETS, DeltaOnlyLinear, batch, perturb, tiny_llama

FAST_METHODS = [m for m in ALL_METHODS if METHODS.get(m).offers_fast_path()]


@pytest.fixture(params=FAST_METHODS)
def method(request) -> str:
    """The registered methods that define a fast path (optional for a plugin: one without it is skipped here)."""
    return request.param


BUILT_IN = ("effilora", "hydralora", "lora", "lora_fa", "moslora", "sharelora")


def test_every_built_in_method_offers_the_fast_path():
    """The six built-ins by name: a method a user adds under methods/ (README, "Adding a method") need not
    define one (this file then skips it), and was failed here by its module's name (a review)."""
    assert {m for m in BUILT_IN if METHODS.get(m).offers_fast_path()} == set(BUILT_IN)


def outputs_and_grads(adapter, fast: bool, autocast: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, and the gradients of every trainable tensor and of the input embeddings (copied to the CPU),
    from one forward and backward on the model's device (under bf16 autocast if ``autocast``)."""
    adapter.use_fast_path(fast and adapter.method_cls.offers_fast_path())
    model = adapter.model
    device = next(model.parameters()).device
    captured = {}
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: captured.setdefault("embeds", o.requires_grad_())
    )
    inputs = {k: v.to(device) for k, v in batch(size=3, length=10).items()}
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(**inputs)
    finally:
        hook.remove()
    out.loss.backward()
    names = {id(p): n for n, p in model.named_parameters()}
    grads = {names[id(p)]: p.grad.to("cpu", copy=True) for p in adapter.trainable_parameters() if p.grad is not None}
    grads["embeds"] = captured["embeds"].grad.to("cpu", copy=True)
    model.zero_grad(set_to_none=True)
    return out.logits.detach().to("cpu", copy=True), grads


@pytest.mark.parametrize("mode", ["dropout 0", "eval"])
def test_fast_path_equals_reference_outputs_and_gradients(method, mode):
    dropout = 0.0 if mode == "dropout 0" else 0.3  # eval: dropout is off whatever p is
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=dropout, reducer=None)
    perturb(adapter)
    adapter.model.train(mode != "eval")
    assert not any(layer.fast_path for layer in adapter.layers.values())  # off by default
    adapter.use_fast_path(True)
    assert all(layer.fast_path for layer in adapter.layers.values())
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
    names = {id(p): n for n, p in adapter.model.named_parameters()}
    reducer = adapter.reducer
    paused = {names[id(p)] for i, heads in enumerate(reducer.heads) if i not in reducer.selected for p in heads}
    assert paused and len(reducer.selected) == 2  # k=2 of the tiny model's layers train this step
    expected = {names[id(p)] for p in adapter.trainable_parameters()} - paused | {"embeds"}
    assert grads.keys() == ref_grads.keys() == expected  # the paused heads get no gradient on either path
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_fast_path_on_a_bf16_base_keeps_fp32_adapters_and_bf16_outputs(method):
    check_bf16_base(method)


class GatedLoraLinear(LoraLinear):
    """A plugin whose own ``delta_factors`` reads the undropped input too (a gate, as a router does)."""

    name = "gated_lora"

    def gate_of(self, x):
        return torch.sigmoid(F.linear(x, self.lora_A).mean(-1, keepdim=True))

    def delta(self, x):
        return super().delta(x) * self.gate_of(x)

    def delta_factors(self, x, x_drop):
        return F.linear(x_drop, self.lora_A) * self.gate_of(x), self.lora_B


def test_a_plugins_own_delta_factors_on_a_bf16_base_reads_the_converted_input():
    """A plugin's ``delta_factors`` (not the fused route) gets both inputs converted to its fp32 weights' dtype (a
    mutation test: given the bf16 input itself as x, nothing failed)."""
    check_bf16_base(GatedLoraLinear)


def check_bf16_base(method) -> None:
    adapter = attach(tiny_llama(dtype=torch.bfloat16), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    perturb(adapter)
    ref_logits, ref_grads = outputs_and_grads(adapter, fast=False)
    logits, grads = outputs_and_grads(adapter, fast=True)
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in adapter.trainable_parameters())
    assert all(grads[n].dtype == torch.float32 for n in grads if n != "embeds")
    # the two paths round differently in bf16 (logits ~2e-3, gradients up to 2% of their largest on CPUs
    # without AVX-512); a 10% error in the adapter's share moves the logits ~4e-2
    torch.testing.assert_close(logits, ref_logits, atol=4e-3, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name].float(), ref_grads[name].float(), atol=0.04 * scale, rtol=0, msg=name)


def test_fast_path_trains_a_bf16_base_with_dropout_on_a_cpu(method, monkeypatch):
    """From a review: with a 16-bit base, dropout on and the sparse kernel's fused node (2-D rows), the delta was
    added to the 3-D base output unreshaped: a shape error for every batch of more than one row."""
    monkeypatch.setattr(fastpath, "SPARSE_DROPOUT_MIN", 1)  # the sparse kernel at this small size, as at real ones
    adapter = attach(tiny_llama(dtype=torch.bfloat16), method, targets=TINY_TARGETS, dropout=0.1, reducer=None)
    perturb(adapter)
    adapter.use_fast_path(True)
    adapter.model.train()
    inputs = batch()
    out = adapter.model(**inputs)
    assert out.logits.shape == (*inputs["input_ids"].shape, adapter.model.config.vocab_size)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter.trainable_parameters())


def record_projections(monkeypatch) -> list[tuple[list[str], torch.Tensor]]:
    """Every first-matmul call of the fast path: the wrappers it served (type names) and its dropout draw
    (the dropped input, or the sparse kernel's dropped positions)."""
    calls: list[tuple[list[str], torch.Tensor]] = []
    original = fastpath._project

    def spy(layers, xa, xd, pos=None, p=0.0, fuse=False):
        calls.append(([layer.site.type for layer in layers], xd if pos is None else pos))
        return original(layers, xa, xd, pos, p, fuse=fuse)

    monkeypatch.setattr(fastpath, "_project", spy)
    return calls


def test_wrappers_that_read_one_tensor_share_one_dropout_draw(method, monkeypatch):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.5, reducer=None)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    adapter.model.train()
    calls = record_projections(monkeypatch)
    adapter.model(**batch())
    first_layer = calls[: len(TINY_TARGETS.split(","))]  # the first forward: every wrapper alone, sharing the draw
    seen = {types[0]: xd for types, xd in first_layer}
    assert seen["q_proj"] is seen["k_proj"] is seen["v_proj"]  # one draw for the three readers of x
    assert seen["up_proj"] is not seen["q_proj"] and seen["down_proj"] is not seen["up_proj"]
    # bases fused in (a CPU): the draw is dropped positions whatever the size, so the backward can mask
    assert 0.35 < seen["q_proj"].numel() / batch()["input_ids"].numel() / 32 < 0.65
    monkeypatch.setattr(fastpath, "FUSE_BASE", False)  # unfused, a small tensor: nn.Dropout's dense draw
    calls.clear()
    adapter.model(**batch())
    assert [types for types, _ in calls[:3]] == [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]
    assert 0.35 < (calls[0][1] == 0).float().mean().item() < 0.65
    # the same wrapper reading the same tensor twice draws a new mask
    q = adapter.layers["model.layers.0.self_attn.q_proj"]
    x = torch.randn(2, 6, 32)
    first, second = q._input.get(q, x, torch.float32)[1], q._input.get(q, x, torch.float32)[1]
    assert not torch.equal(first, second)
    # no reuse after an in-place change of the input
    k = adapter.layers["model.layers.0.self_attn.k_proj"]
    x.add_(1.0)
    assert q._input.get(k, x, torch.float32)[1] is not second


def test_siblings_learnt_from_one_forward_share_one_first_matmul(method, monkeypatch):
    """From the second forward on, q, k and v make their first matmul together: one call, same result."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    perturb(adapter)
    adapter.use_fast_path(True)
    adapter.model.train()
    calls = record_projections(monkeypatch)
    first = adapter.model(**batch()).logits
    per_wrapper = len(calls)
    calls.clear()
    second = adapter.model(**batch()).logits
    layers = len(adapter.layer_groups)
    assert per_wrapper == len(adapter.layers)
    assert sorted(calls[0][0]) == ["k_proj", "q_proj", "v_proj"]
    assert len(calls) == per_wrapper - 2 * layers  # q, k, v: one call instead of three, in every layer
    torch.testing.assert_close(second, first, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("frozen", [None, "drop", "raw"])
@pytest.mark.parametrize("dropped", [True, False])
@pytest.mark.parametrize("stack", [True, False])
@pytest.mark.parametrize("raw", [True, False])
def test_first_matmul_node_gradients_are_exact(raw, stack, dropped, frozen, monkeypatch):
    """The fused dropout + first matmul without bases (mask as positions, one input-gradient buffer; a
    router's rows stacked with A's without a mask, or in their own matmul) against
    autograd's numerical gradients, in float64, with either weight frozen (the Reducer pauses a router);
    and its values against the explicit masked input."""
    monkeypatch.setattr(fastpath, "STACK_RAW", stack)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    w_drop = torch.randn(4, 7, dtype=torch.float64, requires_grad=frozen != "drop")
    w_raw = torch.randn(2, 7, dtype=torch.float64, requires_grad=frozen != "raw") if raw else None
    pos = drop_positions(x.numel(), 0.3) if dropped else None
    fn = fastpath._FusedProjection.apply  # without bases: what a wrapper whose base is not fused in uses
    torch.autograd.gradcheck(
        lambda x, wd, *r: fn(x, pos, 0.3, wd, r[0] if r else None), (x, w_drop, *([w_raw] if raw else []))
    )
    mask = torch.ones(x.numel(), dtype=torch.float64).index_fill_(0, pos, 0.0).view_as(x) if dropped else 0.7
    out = fn(x, pos, 0.3, w_drop, w_raw)
    torch.testing.assert_close(out[0], F.linear(x * mask / 0.7, w_drop).reshape(-1, 4))
    if raw:
        torch.testing.assert_close(out[1], F.linear(x, w_raw).reshape(-1, 2))
        if frozen is None:
            out[1].sum().backward()  # only the router used: the drop rows get no gradient
            assert w_drop.grad is None and w_raw.grad is not None


@pytest.mark.parametrize("stack", [True, False])
@pytest.mark.parametrize("raw", [True, False])
def test_fused_projection_gradients_are_exact(raw, stack, monkeypatch):
    """The node that computes the frozen bases and the first adapter matmul together (one input-gradient
    buffer): autograd's numerical gradients in float64, for every input, a bias and a base that trains."""
    monkeypatch.setattr(fastpath, "STACK_RAW", stack)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    w_drop = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    w_raw = torch.randn(2, 7, dtype=torch.float64, requires_grad=True) if raw else None
    w1, b1 = torch.randn(6, 7, dtype=torch.float64, requires_grad=True), torch.randn(6, dtype=torch.float64)
    w2 = torch.randn(3, 7, dtype=torch.float64)  # frozen, no bias
    pos = drop_positions(x.numel(), 0.3)
    fn = fastpath._FusedProjection.apply
    b1.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda x, wd, w1, b1, *r: fn(x, pos, 0.3, wd, r[0] if r else None, w1, b1, w2, None),
        (x, w_drop, w1, b1, *([w_raw] if raw else [])),
    )
    out = fn(x, pos, 0.3, w_drop, w_raw, w1, b1, w2, None)
    mask = torch.ones(x.numel(), dtype=torch.float64).index_fill_(0, pos, 0.0).view_as(x)
    x2 = x.reshape(-1, 7)
    torch.testing.assert_close(out[0], F.linear(x2, w1, b1))
    torch.testing.assert_close(out[1], F.linear(x2, w2))
    torch.testing.assert_close(out[2], F.linear((x * mask / 0.7).reshape(-1, 7), w_drop))
    if raw:
        torch.testing.assert_close(out[3], F.linear(x2, w_raw))
    no_drop = fn(x, None, 0.0, w_drop, w_raw, w1, b1, w2, None)  # eval or p = 0: no mask
    torch.testing.assert_close(no_drop[2], F.linear(x2, w_drop))
    if raw:
        torch.testing.assert_close(no_drop[3], F.linear(x2, w_raw))
        torch.autograd.gradcheck(
            lambda x, wd, wr, w1: fn(x, None, 0.0, wd, wr, w1, b1, w2, None), (x, w_drop, w_raw, w1)
        )


@pytest.mark.parametrize("base", [False, True], ids=["no base", "base"])
@pytest.mark.parametrize("dropped", [True, False], ids=["mask", "no mask"])
def test_fused_projection_gradients_of_all_its_outputs_at_once_are_exact(dropped, base, monkeypatch):
    """From a mutation test: gradcheck differentiates one output at a time (the others' gradients are None), so the
    backward that takes A's and a router's gradients together (one matmul over the stacked weights, which must
    not be taken with a mask) was never run; here the loss is made of every output of one call."""
    monkeypatch.setattr(fastpath, "STACK_RAW", True)
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    w_drop = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    w_raw = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    bases = (torch.randn(6, 7, dtype=torch.float64), None) if base else ()
    weights = [torch.randn(15, k, dtype=torch.float64) for k in ((6,) if base else ()) + (4, 2)]
    pos = drop_positions(x.numel(), 0.3) if dropped else None

    def loss(x, wd, wr):
        outs = fastpath._FusedProjection.apply(x, pos, 0.3, wd, wr, *bases)
        return sum((out * weight).sum() for out, weight in zip(outs, weights, strict=True))

    torch.autograd.gradcheck(loss, (x, w_drop, w_raw))


def test_fused_projection_gives_a_trainable_bias_of_a_frozen_base_its_gradient():
    """A base whose weight is frozen and whose bias trains (BitFit beside an adapter): the bias gets its gradient
    (a mutation reading the weight's flag for the bias survived every other test)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    w_drop = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    w1, b1 = torch.randn(6, 7, dtype=torch.float64), torch.randn(6, dtype=torch.float64, requires_grad=True)
    pos = drop_positions(x.numel(), 0.3)
    torch.autograd.gradcheck(
        lambda x, b1: fastpath._FusedProjection.apply(x, pos, 0.3, w_drop, None, w1, b1)[0], (x, b1)
    )
    fastpath._FusedProjection.apply(x, pos, 0.3, w_drop, None, w1, b1)[0].sum().backward()
    torch.testing.assert_close(b1.grad, torch.full_like(b1, 15.0))
    assert w1.grad is None


def test_the_fast_path_fuses_plain_cpu_bases_only(monkeypatch):
    """The bases are computed in the fused node for plain ``nn.Linear`` on a CPU; a hooked base, autocast or
    another dtype keep ``base(x)``, and the outputs are the same either way."""
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    adapter.use_fast_path(True)
    calls = []
    original = fastpath._FusedProjection.apply
    monkeypatch.setattr(fastpath._FusedProjection, "apply", lambda *a: calls.append(len(a)) or original(*a))
    expected = adapter.model(**batch()).logits
    assert len(calls) == len(adapter.layers)  # the first forward: every wrapper alone, its base fused in
    calls.clear()
    torch.testing.assert_close(adapter.model(**batch()).logits, expected, atol=1e-6, rtol=1e-6)
    assert len(calls) == len(adapter.layers) - 2 * len(adapter.layer_groups)  # q, k, v: one node
    q = adapter.layers["model.layers.0.self_attn.q_proj"]
    handle = q.base.register_forward_hook(lambda m, i, o: None)
    calls.clear()
    torch.testing.assert_close(adapter.model(**batch()).logits, expected, atol=1e-6, rtol=1e-6)
    assert len(calls) == len(adapter.layers) - 2 * len(adapter.layer_groups) - 1  # layer 0's q, k, v: not fused
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calls.clear()
        adapter.model(**batch())
        assert calls == []
    bf16 = attach(tiny_llama(dtype=torch.bfloat16), "lora", targets=TINY_TARGETS, dropout=0.0)
    bf16.use_fast_path(True)
    calls.clear()
    bf16.model(**batch())
    assert calls == []  # a bf16 base with fp32 adapters: base(x), as before


def training_fast(method: str, dropout: float):
    """A tiny Llama with ``method`` on its fast path in training mode, its groups learnt (one forward)."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=dropout, reducer=None)
    perturb(adapter)
    adapter.use_fast_path(True)
    adapter.model.train()
    adapter.model(**batch())  # learn the groups
    return adapter


def assert_same_outputs_and_grads(first, second) -> None:
    """Two ``outputs_and_grads`` results equal within fp32 rounding."""
    (logits, grads), (ref_logits, ref_grads) = first, second
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("node", ["siblings", "bases"])
def test_fused_nodes_change_no_output_or_gradient_under_dropout(method, node, monkeypatch):
    """With dropout on and one draw (a seed): the stacked first matmul of q, k, v against one call per
    wrapper ("siblings"), and the bases computed in that node against ``base(x)`` ("bases")."""
    monkeypatch.setattr(fastpath, "SPARSE_DROPOUT_MIN", 1)  # positions on every path
    adapter = training_fast(method, dropout=0.3)
    results = []
    for fused in (True, False):
        if not fused and node == "siblings":
            monkeypatch.setattr(fastpath, "_fusable_now", lambda layer: False)
        elif not fused:
            monkeypatch.setattr(fastpath, "FUSE_BASE", False)
        torch.manual_seed(3)
        results.append(outputs_and_grads(adapter, fast=True))
    assert_same_outputs_and_grads(*results)


@pytest.mark.parametrize("fuse_base", [True, False])
def test_a_router_in_one_matmul_with_a_changes_no_output_or_gradient(method, fuse_base, monkeypatch):
    """Without a mask (p = 0), a router that reads x (HydraLoRA's) in one matmul with A, forward and
    backward (``STACK_RAW``), against its own matmul: the same outputs and gradients."""
    monkeypatch.setattr(fastpath, "FUSE_BASE", fuse_base)
    adapter = training_fast(method, dropout=0.0)
    calls = []
    original = fastpath._FusedProjection.apply
    monkeypatch.setattr(fastpath._FusedProjection, "apply", lambda *a: calls.append(a[4] is not None) or original(*a))
    results = []
    for stack in (True, False):
        monkeypatch.setattr(fastpath, "STACK_RAW", stack)
        results.append(outputs_and_grads(adapter, fast=True))
    assert_same_outputs_and_grads(*results)
    routed = any(layer.input_weights()[1] is not None for layer in adapter.layers.values())
    assert any(calls) == (fuse_base and routed)  # else the stacked matmul is made outside the node


class _Products(TorchDispatchMode):
    """The output shapes of every 2-D matrix product run under it (a linear's forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("mode", ["dropout 0", "eval"])
@pytest.mark.parametrize(("method", "options"), [("hydralora", {}), ("effilora", {"router_input": "hidden"})])
def test_a_router_the_reducer_froze_gets_no_weight_gradient_beside_a_training_a(method, options, mode, monkeypatch):
    """From a review: without a mask and with the bases not fused in (a GPU, or ``FUSE_BASE`` off), a router
    that reads x was stacked with A in one matmul even where the Reducer had frozen it and A still trained, so
    the backward computed the router rows' weight gradient and threw it away (the spec: no weight gradient
    for frozen parts). Now only the trained layers' routers are in a weight-gradient product, the step
    counts as many FLOPs as with every router in its own matmul, and outputs and gradients are unchanged."""
    monkeypatch.setattr(fastpath, "FUSE_BASE", False)
    dropout = 0.0 if mode == "dropout 0" else 0.3  # eval: no mask whatever p is
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=dropout, k=1, selection="random", **options)
    perturb(adapter)
    adapter.model.train(mode != "eval")
    reducer = adapter.reducer
    reducer.select()
    assert len(reducer.selected) == 1 < reducer.num_layers
    ref = outputs_and_grads(adapter, fast=False)
    outputs_and_grads(adapter, fast=True)  # learn the groups: q, k and v make one first matmul
    products, flops = {}, {}
    for stack in (False, True):  # every router in its own matmul, then stacked with A where both train
        monkeypatch.setattr(fastpath, "STACK_RAW", stack)
        loss = adapter.model(**batch(size=3, length=10)).loss
        products[stack], counter = _Products(), FlopCounterMode(display=False)
        with counter, products[stack]:
            loss.backward()
        adapter.model.zero_grad(set_to_none=True)
        flops[stack] = counter.get_total_flops()
    qkv = [
        adapter.layers[f"model.layers.0.self_attn.{name}"].input_weights() for name in ("q_proj", "k_proj", "v_proj")
    ]
    rows = sum(a.shape[0] + router.shape[0] for a, router in qkv)  # one layer's q, k, v: A's and routers' rows
    assert rows != 3 * 10  # not a token count: the weight gradient of the stack, (rows, d_in), and nothing else
    assert products[True].shapes.count((rows, 32)) == len(reducer.selected)  # a frozen layer's routers: in none
    assert flops[True] == flops[False]
    assert_same_outputs_and_grads(outputs_and_grads(adapter, fast=True), ref)
    frozen = [p for i, heads in enumerate(reducer.heads) if i not in reducer.selected for p in heads]
    assert frozen and all(p.grad is None for p in frozen)


def test_a_sibling_that_does_not_come_computes_its_own(monkeypatch):
    """A learnt group is a guess: a wrapper suppressed to 0 this time is skipped, one that reads another
    tensor gets its own matmul; the outputs stay those of the reference path."""
    adapter = attach(tiny_llama(), "hydralora", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    adapter.use_fast_path(True)
    adapter.model(**batch())  # learn the groups
    k = adapter.layers["model.layers.0.self_attn.k_proj"]
    k.gate = 0.0
    calls = record_projections(monkeypatch)
    fast = adapter.model(**batch()).logits
    assert sorted(calls[0][0]) == ["q_proj", "v_proj"]
    adapter.use_fast_path(False)
    torch.testing.assert_close(fast, adapter.model(**batch()).logits, atol=1e-6, rtol=1e-6)
    q = adapter.layers["model.layers.0.self_attn.q_proj"]
    adapter.use_fast_path(True)
    x, other = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    y_q, z_q, g_q = q._input.project(q, x, torch.float32)  # q starts a group [q, v] ...
    v = adapter.layers["model.layers.0.self_attn.v_proj"]
    y_v, z_v, g_v = v._input.project(v, other, torch.float32)  # ... but v reads another tensor
    torch.testing.assert_close(y_v, F.linear(other, v.base.weight).flatten(0, 1))  # the base, fused in
    torch.testing.assert_close(y_q, F.linear(x, q.base.weight).flatten(0, 1))
    torch.testing.assert_close(z_v, F.linear(other, v.lora_A).flatten(0, 1))
    torch.testing.assert_close(g_v, F.linear(other, v.lora_router).flatten(0, 1))
    torch.testing.assert_close(z_q, F.linear(x, q.lora_A).flatten(0, 1))


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


def test_cpu_dropout_kernel_drops_every_position_at_p():
    """Each position, the first and the last included, is dropped with probability p (a mutation test: positions
    shifted by one, or the last cut off, kept the count and the neighbours' statistics above)."""
    torch.manual_seed(0)
    n, p, trials = 8, 0.3, 4000
    counts = torch.zeros(n)
    for _ in range(trials):
        counts[drop_positions(n, p)] += 1
    assert ((counts / trials - p).abs() < 5 * math.sqrt(p * (1 - p) / trials)).all(), counts / trials


def test_cpu_dropout_kernel_is_reproducible_and_handles_any_shape(monkeypatch):
    monkeypatch.setattr(fastpath, "SPARSE_DROPOUT_MIN", 1)  # the sparse kernel even for tiny tensors
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
    monkeypatch.setattr(fastpath, "SPARSE_DROPOUT_MIN", 1)  # its mask is indices, not an input-sized tensor
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


def test_a_plugin_with_only_delta_keeps_the_reference_path_and_its_own_dropout():
    adapter = attach(tiny_llama(), DeltaOnlyLinear, targets=TINY_TARGETS, dropout=0.0)
    with pytest.warns(UserWarning, match="'delta_only' has no fast path: every wrapper computes its own delta"):
        adapter.use_fast_path(True)  # said, not silently ignored (a review)
    lora = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.0)
    assert not any(layer.fast_path for layer in adapter.layers.values())
    perturb(adapter)
    perturb(lora)
    logits, grads = outputs_and_grads(adapter, fast=True)
    lora_logits, lora_grads = outputs_and_grads(lora, fast=False)
    assert not any(layer.fast_path for layer in adapter.layers.values())  # use_fast_path cannot turn it on
    torch.testing.assert_close(logits, lora_logits, atol=1e-6, rtol=0)
    assert sorted(grads) == sorted(lora_grads) and len(grads) > 1
    for name, grad in grads.items():  # the values, not only the names
        torch.testing.assert_close(grad, lora_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    with_dropout = attach(tiny_llama(), DeltaOnlyLinear, targets=TINY_TARGETS, dropout=0.1)
    with_dropout.model.train()
    out = with_dropout.model(**batch())
    out.loss.backward()
    assert all(p.grad is not None for p in with_dropout.trainable_parameters())


class ScaledLoraLinear(LoraLinear):
    """A plugin that subclasses a built-in and overrides only ``delta``: LoRA's fast path and ``delta_weight``
    compute LoRA's Δ, not this one."""

    name = "scaled_lora"

    def delta(self, x):
        return 3.0 * super().delta(x)


class ScaledEffiLoraLinear(EffiLoraLinear):
    """The same on EffiLoRA, whose single-head form (heads=1) merges."""

    name = "scaled_effilora"

    def delta(self, x):
        return 3.0 * super().delta(x)


@pytest.mark.parametrize(("plugin", "options"), [(ScaledLoraLinear, {}), (ScaledEffiLoraLinear, {"heads": 1})])
def test_a_plugin_that_overrides_only_delta_of_a_built_in_gets_neither_its_fast_path_nor_its_merge(plugin, options):
    adapter = attach(tiny_llama(), plugin, targets=TINY_TARGETS, dropout=0.0, **options)
    perturb(adapter)
    reference, _ = outputs_and_grads(adapter, fast=False)
    with pytest.warns(UserWarning, match="overrides delta below its fast path"):
        adapter.use_fast_path(True)
    assert not any(layer.fast_path for layer in adapter.layers.values())
    torch.testing.assert_close(outputs_and_grads(adapter, fast=False)[0], reference)
    assert not plugin.is_mergeable(adapter.config) and plugin.__mro__[1].is_mergeable(adapter.config)
    with pytest.raises(ValueError, match="no delta_weight of its own delta"):
        adapter.merge()


class TripledLoraLinear(LoraLinear):
    """A plugin that subclasses a built-in with its own ``delta`` and its own fast path, ``delta_factors``."""

    name = "tripled_lora"

    def delta(self, x):
        return 3.0 * super().delta(x)

    def delta_factors(self, x, x_drop):
        return 3.0 * F.linear(x_drop, self.lora_A), self.lora_B


def test_a_plugin_with_its_own_delta_factors_below_a_built_in_runs_it_on_the_fast_path():
    """From a review: the fast path took the fused route of the built-in's ``input_weights``/``factors_from``
    (inherited, above the plugin's ``delta``) and never called the plugin's ``delta_factors``: it trained plain
    LoRA's Δ under the plugin's name, without a word. The fused route is taken only where it follows ``delta``."""
    adapter = attach(tiny_llama(), TripledLoraLinear, targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    assert TripledLoraLinear.offers_fast_path() and not adapter.layers[next(iter(adapter.layers))].fuses_input
    reference, ref_grads = outputs_and_grads(adapter, fast=False)
    fast, fast_grads = outputs_and_grads(adapter, fast=True)
    assert all(layer.fast_path for layer in adapter.layers.values())
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_base_with_hooks_or_a_patched_forward_is_not_fused_in():
    """From a review: the fused CPU node computed a base linear that had a backward hook (never fired) or a
    forward patched on it (accelerate's offloading: its hook's output dropped); such a base keeps ``base(x)``."""
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    reference, _ = outputs_and_grads(adapter, fast=False)
    layers = list(adapter.layers.values())
    fired = []
    layers[0].base.register_full_backward_hook(lambda module, grad_in, grad_out: fired.append(1))
    halved = layers[1].base
    plain = halved.forward
    halved.forward = lambda x: plain(x) * 0.5  # as accelerate's add_hook_to_module patches it
    expected, _ = outputs_and_grads(adapter, fast=False)
    assert not torch.allclose(expected, reference) and len(fired) == 1
    fast, _ = outputs_and_grads(adapter, fast=True)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-4)
    assert len(fired) == 2  # the fast path's backward reached the hooked base too


class _Doubled(torch.nn.Linear):
    """A ``nn.Linear`` subclass with a forward of its own (as a quantised linear, bitsandbytes', has)."""

    def forward(self, x):
        return super().forward(x) * 2.0


def _halve_output(module, args, output):
    return output * 0.5


@pytest.mark.parametrize("case", ["subclass", "hook on k", "global hook"])
def test_a_base_that_is_not_a_plain_linear_is_computed_by_itself_in_any_group(case):
    """From a mutation test: nothing pinned that a group fuses in only plain ``nn.Linear`` bases: a subclass with
    its own forward (``isinstance`` would take it), a hook on a base that is not its group's first reader (k of
    q, k, v: only the first reader was checked) or a global module hook (``register_module_forward_hook``)
    would be skipped by the fused node, its output silently the plain linear's."""
    model = tiny_llama()
    if case == "subclass":
        for block in model.model.layers:
            plain = block.self_attn.k_proj
            block.self_attn.k_proj = _Doubled(plain.in_features, plain.out_features, bias=False)
            block.self_attn.k_proj.weight.data.copy_(plain.weight.data)
    adapter = attach(model, "lora", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    reference, _ = outputs_and_grads(adapter, fast=False)
    handles = []
    if case == "hook on k":
        handles = [
            adapter.layers[f"model.layers.{i}.self_attn.k_proj"].base.register_forward_hook(_halve_output)
            for i in range(4)
        ]
    elif case == "global hook":
        bases = {id(layer.base) for layer in adapter.layers.values()}
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: output * 0.5 if id(module) in bases else None
        )
        handles = [hook]
    try:
        expected, expected_grads = outputs_and_grads(adapter, fast=False)
        if case != "subclass":
            assert not torch.allclose(expected, reference)  # the hook changes the output
        outputs_and_grads(adapter, fast=True)  # the groups (q, k, v; up) are learnt from this forward
        fast, fast_grads = outputs_and_grads(adapter, fast=True)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-4)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_fast_path_takes_an_empty_input(method):
    """No tokens (an empty micro-batch's slice): the sparse dropout draws nothing instead of failing."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.1)
    adapter.use_fast_path(True)
    adapter.model.train()
    for layer in adapter.layers.values():
        out = layer(torch.randn(0, layer.base.in_features))
        assert out.shape == (0, layer.base.out_features)


def test_weights_are_not_loaded_into_a_merged_adapter(method):
    try:
        adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.0, heads=1)  # one head: EffiLoRA merges
    except ValueError as exc:  # a method that takes two heads or more (hydralora)
        pytest.skip(f"{method} at heads=1: {exc}")
    if not adapter.method_cls.is_mergeable(adapter.config):
        pytest.skip(f"{method} at these settings cannot merge")
    perturb(adapter)
    state = {k: v.clone() for k, v in adapter.state_dict().items()}
    adapter.merge()
    with pytest.raises(ValueError, match="call unmerge\\(\\) before loading"):
        adapter.load_state_dict(state)


@pytest.mark.parametrize("sparse_min", [None, 1], ids=["default", "sparse kernel's size"])
def test_the_fast_path_trains_under_cpu_bf16_autocast(sparse_min, monkeypatch):
    """Under autocast ``nn.Dropout`` drops, never the sparse kernel (its nodes keep one dtype): at the default
    size limit this batch is under it anyway, so the limit is also lowered to one element (a mutation test)."""
    if sparse_min is not None:
        monkeypatch.setattr(fastpath, "SPARSE_DROPOUT_MIN", sparse_min)
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.1)
    adapter.use_fast_path(True)
    adapter.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapter.model(**batch(size=2, length=64))  # large enough for the sparse kernel without autocast
    out.loss.backward()
    assert all(p.grad is not None for p in adapter.trainable_parameters())


@pytest.mark.parametrize(("dropout", "train"), [(0.5, True), (0.0, True), (0.5, False)], ids=["drop", "p=0", "eval"])
def test_the_shared_input_dies_with_its_tensor(method, dropout, train):
    """Without a draw (p = 0, eval) the dropout returns x itself, which the entry must not hold either."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=dropout, reducer=None)
    adapter.use_fast_path(True)  # what this file tests (off by default)
    adapter.model.train(train)
    q = adapter.layers["model.layers.0.self_attn.q_proj"]
    x = torch.randn(2, 6, 32)
    q(x)
    assert q._input._entry is not None and q._input._entry.xa is None  # x itself is never held
    del x
    assert q._input._entry is None  # its dropout output is released with it


def test_a_model_saved_or_copied_after_a_fast_forward_carries_no_cache(method):
    """``torch.save(model)`` and ``copy.deepcopy`` while a forward's graph is alive: the shared input is a cache
    (weak references, the groups learnt), not state; copies start empty (a mutation test: pickling it failed)."""
    import copy
    import io

    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.1, reducer=None)
    adapter.use_fast_path(True)
    adapter.model.train()
    out = adapter.model(**batch())
    out = adapter.model(**batch())  # the groups learnt
    name = "model.layers.0.self_attn.q_proj"
    x = torch.randn(2, 6, 32)
    adapter.layers[name](x)  # an entry alive
    assert adapter.layers[name]._input._entry is not None and adapter.layers[name]._input._groups
    buffer = io.BytesIO()
    torch.save(adapter.model, buffer)
    buffer.seek(0)
    for model in (torch.load(buffer, weights_only=False), copy.deepcopy(adapter.model)):
        cache = dict(model.named_modules())[name]._input
        assert cache is not adapter.layers[name]._input
        assert cache._entry is None and not cache._groups and not cache._learning
    out.loss.backward()


def test_a_sibling_reading_the_tensor_in_another_grad_mode_or_training_mode_draws_its_own(method):
    """The shared input is keyed by grad mode and training mode too (a mutation test: without grad mode in the
    key, k took the first matmul q had made under ``no_grad``, and its A got no gradient)."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.3, reducer=None)
    perturb(adapter)
    adapter.use_fast_path(True)
    adapter.model.train()
    for _ in range(2):
        adapter.model(**batch())  # the groups (q, k, v) learnt
    q, k = (adapter.layers[f"model.layers.0.self_attn.{name}_proj"] for name in "qk")
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        q(x)  # the first reader, without gradients
    k(x).sum().backward()
    assert all(t.grad is not None for t in k.parameters() if t.requires_grad)
    k.eval()  # one x read by q in training, then by k in eval: k's input is not dropped
    expected = k(x.clone())
    q(x)
    torch.testing.assert_close(k(x), expected)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_the_fast_path_trains_under_activation_checkpointing(method, dropout, reentrant):
    """Recomputation replays the forward inside the backward: it must save the same tensors and draw the same
    dropout (it grouped differently on the first step, when the siblings were learnt during that forward,
    and non-reentrant checkpointing stopped). Two steps, each equal to the same steps without checkpointing."""

    def two_steps(checkpointing: bool) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=dropout, reducer=None)
        perturb(adapter)
        adapter.model.train()
        if checkpointing:
            adapter.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        torch.manual_seed(7)
        return [outputs_and_grads(adapter, fast=True) for _ in range(2)]

    reference = two_steps(checkpointing=False)
    for (logits, grads), (ref_logits, ref_grads) in zip(two_steps(checkpointing=True), reference, strict=True):
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        assert grads.keys() == ref_grads.keys() and len(grads) > 1
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


# -- under autocast (a GPU run: bf16 base, fp32 adapters), the adapters read their input as it comes ------------
class _UpcastCopies(TorchDispatchMode):
    """Counts conversions to fp32 of activation-shaped tensors (leading dims ``lead``)."""

    def __init__(self, lead: tuple[int, int]) -> None:
        super().__init__()
        self.lead, self.count = lead, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and out.dtype == torch.float32 and out.shape[:2] == self.lead:
            self.count += 1
        return out


def _autocast_step(model, adapter=None) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Logits, gradients and the fp32 copies of activations in one bf16-autocast forward and backward (the
    gradient carried down to the input embeddings, so that a bare model has one too)."""
    copies = _UpcastCopies((3, 10))
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_())
    with copies, torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch(size=3, length=10))
    with copies:
        out.loss.backward()
    hook.remove()
    names = {id(p): n for n, p in model.named_parameters()}
    params = adapter.trainable_parameters() if adapter is not None else []
    return out.logits.detach(), {names[id(p)]: p.grad.clone() for p in params}, copies.count


def _bf16_adapter(method: str, fast: bool):
    adapter = attach(tiny_llama(dtype=torch.bfloat16), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    perturb(adapter)
    adapter.model.train()
    adapter.use_fast_path(fast)
    return adapter


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_under_autocast_the_adapters_make_no_fp32_copy_of_their_input(method, fast, monkeypatch):
    adapter = _bf16_adapter(method, fast)
    if not next(iter(adapter.layers.values()))._autocast_input:
        pytest.skip(f"{method} reads its input in its weights' dtype under autocast (autocast_input False)")
    *_, base_copies = _autocast_step(tiny_llama(dtype=torch.bfloat16).train().requires_grad_(False))
    *_, copies = _autocast_step(adapter.model)
    assert copies == base_copies  # the base model's own (RMSNorm, the logits), none of the adapters'
    owner = next(k for k in METHODS.get(method).__mro__ if "autocast_input" in k.__dict__)
    monkeypatch.setattr(owner, "autocast_input", False)  # as before: x copied to fp32, cast back by autocast
    *_, before = _autocast_step(_bf16_adapter(method, fast).model)
    assert before > copies  # what the test sees when the input is copied


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_under_autocast_reading_the_input_as_it_comes_changes_only_rounding(method, fast, monkeypatch):
    adapter = _bf16_adapter(method, fast)
    logits, grads, _ = _autocast_step(adapter.model, adapter)
    owner = next(k for k in METHODS.get(method).__mro__ if "autocast_input" in k.__dict__)
    monkeypatch.setattr(owner, "autocast_input", False)
    old = _bf16_adapter(method, fast)
    old_logits, old_grads, _ = _autocast_step(old.model, old)
    assert torch.equal(logits, old_logits)  # the matmuls see the same bf16 operands
    exact = attach(tiny_llama(dtype=torch.bfloat16).float(), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    exact.load_state_dict(adapter.state_dict())
    exact.model.train()
    exact.model(**batch(size=3, length=10)).loss.backward()
    names = {id(p): n for n, p in exact.model.named_parameters()}
    exact_grads = {names[id(p)]: p.grad for p in exact.trainable_parameters()}
    assert grads.keys() == old_grads.keys() == exact_grads.keys() and grads
    errors, old_errors = (
        [(g[n] - exact_grads[n]).norm() / exact_grads[n].norm() for n in g] for g in (grads, old_grads)
    )
    # the input's gradient summed in bf16 instead of fp32 (q, k and v's parts): bf16 rounding, no worse on average
    assert max(errors) < 5e-2 and sum(errors) < 1.1 * sum(old_errors), (max(errors), sum(errors), sum(old_errors))


def test_a_subclass_that_overrides_delta_does_not_inherit_autocast_input():
    class Doubled(LoraLinear):  # arithmetic on x that autocast would leave in bf16
        def delta(self, x):  # noqa: ANN001, ANN202
            return super().delta(x * 2.0)

    adapter = attach(tiny_llama(), Doubled, targets=TINY_TARGETS)
    assert not any(layer._autocast_input for layer in adapter.layers.values())
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS)
    assert all(layer._autocast_input for layer in adapter.layers.values())


def _fixed_dropout(input, p=0.5, training=True, inplace=False):  # noqa: A002, ANN001, ANN202 - F.dropout's signature
    """``F.dropout`` with a mask fixed by position (every third element dropped): two paths that draw their
    masks differently get the same one, so their values can be compared."""
    if not training or p == 0.0:
        return input
    keep = torch.arange(input.numel(), device=input.device).reshape(input.shape) % 3 != 0
    return input * keep / (1.0 - p)


def test_under_cpu_bf16_autocast_with_dropout_the_fast_path_computes_what_the_reference_does(method, monkeypatch):
    """Under autocast the fast path drops with ``nn.Dropout`` once for q, k and v (not its sparse kernel): with
    one fixed mask for both paths, outputs and gradients agree within bf16 rounding (at dropout 0, where the two
    are equal in fp32, they differ by 0.6-0.9% in the logits and 2-3.5% in the gradients under bf16 autocast;
    here by 0.7-1.1% and 2-5%), while a mask missed in the backward, applied twice or scaled wrongly would
    differ by tens of percent (the outputs without the mask differ by 45-100%)."""
    monkeypatch.setattr(torch.nn.functional, "dropout", _fixed_dropout)
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.3, reducer=None)
    perturb(adapter)
    adapter.model.train()
    ref_logits, ref_grads = outputs_and_grads(adapter, fast=False, autocast=True)
    logits, grads = outputs_and_grads(adapter, fast=True, autocast=True)
    error = float((logits.float() - ref_logits.float()).norm() / ref_logits.float().norm())
    assert error < 2e-2
    assert grads.keys() == ref_grads.keys() and len(grads) > 1
    errors = {n: float((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()) for n in grads}
    assert max(errors.values()) < 1e-1, errors
    adapter.model.eval()  # and the mask is what made the difference: without it, the outputs move
    plain, _ = outputs_and_grads(adapter, fast=True, autocast=True)
    assert float((plain.float() - ref_logits.float()).norm() / ref_logits.float().norm()) > 20 * error


class SharpHydraLinear(METHODS.get("hydralora")):
    name = "sharp_hydra"

    def router_weights(self, x):
        return torch.softmax(F.linear(x, self.lora_router) / 0.25, dim=-1)


class SharpEffiLinear(EffiLoraLinear):
    name = "sharp_effi"

    def router_weights(self, x, z):
        return torch.softmax(F.linear(z, self.lora_router) / 0.25, dim=-1)


@pytest.mark.parametrize("cls", [SharpHydraLinear, SharpEffiLinear], ids=["hydralora", "effilora"])
def test_a_plugin_overriding_only_the_router_is_not_given_the_built_ins_fast_path(cls):
    """From a review: a subclass of HydraLoRA or EffiLoRA that overrode only ``router_weights`` (which ``delta``
    calls) kept the built-in's fast path, whose ``factors_from`` builds the router itself: ``--fast-path`` trained
    the built-in's router under the plugin's name (logits 0.66 apart), and ``harness bench`` timed it."""
    assert METHODS.get("hydralora").offers_fast_path() and EffiLoraLinear.offers_fast_path()
    assert not cls.offers_fast_path()
    adapter = attach(tiny_llama(), cls, targets=TINY_TARGETS, dropout=0.0, heads=2)
    perturb(adapter)
    assert not any(layer.fuses_input for layer in adapter.layers.values())


def test_a_plugin_overriding_only_effiloras_router_keeps_merge_and_the_fast_path_at_one_head(monkeypatch):
    """From a review: ``delta_helpers`` was read per class, so a subclass of EffiLoRA that overrode only
    ``router_weights`` lost merge and the fast path at ``heads=1`` too, where no router runs and the built-in's
    ``delta_weight`` and ``factors_from`` compute the plugin's Δ. At two heads it still gets neither."""
    single = attach(tiny_llama(), SharpEffiLinear, targets=TINY_TARGETS, dropout=0.0, heads=1)
    perturb(single)
    assert SharpEffiLinear.is_mergeable(single.config) and all(layer.fuses_input for layer in single.layers.values())
    assert SharpEffiLinear.offers_fast_path(single.config) and not SharpEffiLinear.offers_fast_path()
    reference, _ = outputs_and_grads(single, fast=False)
    fused = []
    for layer in single.layers.values():
        plain = layer.factors_from
        monkeypatch.setattr(layer, "factors_from", lambda z, g, plain=plain: fused.append(1) or plain(z, g))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # use_fast_path asks with the adapter's config: no "fast path is off" warning
        single.use_fast_path(True)
    with torch.no_grad():
        fast = single.model(**batch(size=3, length=10)).logits
    assert len(fused) == len(single.layers)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)
    single.merge()
    with torch.no_grad():
        torch.testing.assert_close(single.model(**batch(size=3, length=10)).logits, reference, atol=1e-5, rtol=1e-4)

    routed = attach(tiny_llama(), SharpEffiLinear, targets=TINY_TARGETS, dropout=0.0, heads=2)
    assert not SharpEffiLinear.offers_fast_path(routed.config) and not SharpEffiLinear.is_mergeable(routed.config)
    assert EffiLoraLinear.offers_fast_path(routed.config)
    assert not any(layer.fuses_input for layer in routed.layers.values())
    with pytest.raises(ValueError, match="cannot be merged"):
        routed.merge()


def _logits(adapter) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(**batch()).logits


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("method", [*BUILT_IN, TripledLoraLinear], ids=lambda m: getattr(m, "name", m))
def test_a_gate_scales_the_adapter_output_as_the_scaling_does(method, fast):
    """The Reducer suppresses a layer by lowering its ``gate`` (``suppression``, 0.25 by default), which multiplies
    the adapter output as ``scaling`` does, on the reference path, the fused fast path (the built-ins) and the
    unfused fast path (a plugin's own ``delta_factors``). A mutation test found nothing pinned it: a forward that
    ignored the gate (``scale = self.scaling``) on any of the three routes passed every test, and the Reducer's
    trials would then have suppressed nothing."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    adapter.use_fast_path(fast)
    full = _logits(adapter)
    for layer in adapter.layers.values():
        layer.gate = 0.25
    gated = _logits(adapter)
    for layer in adapter.layers.values():
        layer.gate, layer.scaling = 1.0, layer.scaling * 0.25
    scaled = _logits(adapter)
    assert not torch.allclose(gated, full, atol=1e-4)
    torch.testing.assert_close(gated, scaled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_a_layer_at_gate_zero_computes_no_adapter_flops(fast):
    """Gate 0 (a layer the Reducer suppresses fully; the FLOPs recount zeroes the gates of the forward's skipped
    layers) runs the base alone: the forward counts the base model's FLOPs, not the adapter's matmuls times zero.
    A mutation test found it unpinned: dropping the ``gate == 0.0`` shortcut in ``AdapterLinear.forward`` kept the
    outputs and passed every test, while every suppressed layer's adapter FLOPs were counted (and spent)."""
    base_flops = FlopCounterMode(display=False)
    with base_flops, torch.no_grad():
        tiny_llama()(**batch())
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    adapter.use_fast_path(fast)
    for layer in adapter.layers.values():
        layer.gate = 0.0
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = adapter.model(**batch()).logits
    torch.testing.assert_close(out, tiny_llama()(**batch()).logits.detach())
    assert counter.get_total_flops() == base_flops.get_total_flops()


class DoubledTripledLoraLinear(TripledLoraLinear):
    """A plugin on a plugin: its own ``delta`` below ``TripledLoraLinear``'s own ``delta_factors`` (3 B A x)."""

    name = "doubled_tripled_lora"

    def delta(self, x):
        return 2.0 * LoraLinear.delta(self, x)


def test_a_plugin_overriding_only_delta_below_an_own_delta_factors_does_not_get_that_fast_path():
    """``offers_fast_path`` counts a ``delta_factors`` only where it is defined where ``delta`` is or below it. The
    existing tests subclass built-ins, none of which defines ``delta_factors`` (they fuse through ``input_weights``),
    so a mutation test found that check unpinned: ``offers_fast_path`` without ``follows_delta("delta_factors")``
    passed every test while this plugin trained ``TripledLoraLinear``'s 3 B A x on the fast path, not its own 2 B A x."""
    assert TripledLoraLinear.offers_fast_path() and not DoubledTripledLoraLinear.offers_fast_path()
    adapter = attach(tiny_llama(), DoubledTripledLoraLinear, targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    reference = _logits(adapter)
    with pytest.warns(UserWarning, match="overrides delta below its fast path"):
        adapter.use_fast_path(True)
    assert not any(layer.fast_path for layer in adapter.layers.values())
    torch.testing.assert_close(_logits(adapter), reference)


def test_effilora_with_one_b_and_a_hidden_router_option_runs_the_fast_path_as_the_plain_one():
    """EffiLoRA with ``heads=1`` has no router, whatever ``router_input`` says: the fast path must not look for one.
    The parity tests ran one head at the default (subspace) router input only: a mutation test found an
    ``input_weights`` that returned the hidden router whenever ``router_input == "hidden"`` (no ``heads > 1``)
    passed every test, though it fails on the first fast forward of that configuration."""
    adapter = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, heads=1, router_input="hidden", dropout=0.0)
    perturb(adapter)
    with torch.no_grad():
        adapter.use_fast_path(False)
        plain = adapter.model(**batch()).logits
        adapter.use_fast_path(True)
        fast = adapter.model(**batch()).logits
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
