"""What the spec says of particular methods: peft parity, sharing, frozen A, mixer, routers."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from harness import attach
from tests.conftest import BUILT_IN_METHODS, TINY_TARGETS, assert_lora_matches_peft, batch, perturb, tiny_llama


def test_lora_matches_peft_outputs_and_gradients():
    ours = attach(tiny_llama(), "lora", targets=TINY_TARGETS, r=4, alpha=8, dropout=0.0)
    perturb(ours)
    ref = get_peft_model(
        tiny_llama(), PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TINY_TARGETS.split(","))
    )
    assert_lora_matches_peft(ours, ref)
    assert ours.num_trainable_params == ref.get_nb_trainable_parameters()[0]


def test_shared_a_is_one_tensor_counted_once_with_gradient_from_every_layer():
    for method in ("sharelora", "effilora"):
        adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, reducer=None)
        q_layers = [layer for name, layer in adapter.layers.items() if name.endswith("q_proj")]
        assert len(q_layers) == 4
        shared = q_layers[0].lora_A
        assert all(layer.lora_A is shared for layer in q_layers)
        assert len({layer.lora_A.untyped_storage().data_ptr() for layer in q_layers}) == 1
        assert sum(1 for p in adapter.trainable_parameters() if p is shared) == 1
        per_layer_grads = []
        for layer in q_layers:  # gradient of a loss that reads only this layer's adapter output
            perturb(adapter)
            shared.grad = None
            captured = {}
            handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("y", o))
            adapter.model(**batch())
            handle.remove()
            captured["y"].sum().backward(inputs=[shared])
            per_layer_grads.append(shared.grad.abs().sum().item())
        assert all(g > 0 for g in per_layer_grads), per_layer_grads


def test_an_mlp_lists_two_linears_are_two_module_types_and_a_hybrid_models_layers_stay_layers():
    """From a review (the layer of a target in a numbered list): the two linears of an ``nn.Sequential`` MLP
    (``mlp.0``, ``mlp.2``) were one module type, ``mlp``, so ShareLoRA shared one A between them where their input
    widths agree; each is a type of its own (a list holding one linear, diffusers' ``to_out``, keeps its name). Both
    are in their block's layer, and the layers of a list of blocks of two classes (a hybrid model's) are layers."""
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.to_out = nn.Linear(8, 8), nn.ModuleList([nn.Linear(8, 8), nn.Dropout(0.0)])

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.mlp = Attention(), nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

    class Other(Block):  # another kind of layer in the same list (Mamba beside attention)
        pass

    model = nn.Module()
    model.layers = nn.ModuleList([Block(), Other()])
    adapter = attach(model, "sharelora", targets="q_proj,to_out.0,mlp.0,mlp.2", r=2, reducer=None)
    assert list(adapter.layer_groups) == ["layers.0", "layers.1"]
    assert [w.site.type for w in adapter.layer_groups["layers.0"]] == ["q_proj", "to_out", "mlp_0", "mlp_2"]
    assert sorted(adapter.model.lora_shared.lora_A) == ["mlp_0_8", "mlp_2_8", "q_proj_8", "to_out_8"]


def test_an_adapter_whose_shared_tensors_were_grouped_by_older_code_is_told_so(tmp_path, monkeypatch):
    """From a review: a ShareLoRA adapter saved before 2026-12-06 shared one A between an ``nn.Sequential``'s
    ``mlp.0`` and ``mlp.2`` (one module type, ``mlp``); loading it now said only that the state did not fit (missing
    ``lora_shared.lora_A.mlp_0_8``, unexpected ``...mlp_8``). Where only shared tensors' names differ the message says
    older code may have named them so; where a layer's own tensors differ (another model) it does not."""
    from torch import nn

    from harness import load_adapter
    from harness.adapter import Site

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

    def model(blocks: int = 2) -> nn.Module:
        torch.manual_seed(0)
        m = nn.Module()
        m.layers = nn.ModuleList([Block() for _ in range(blocks)])
        return m

    real = Site.of
    monkeypatch.setattr(Site, "of", classmethod(lambda cls, name, linear, m=None: real.__func__(cls, name, linear)))
    attach(model(), "sharelora", targets="mlp.0,mlp.2", r=2).save(tmp_path)  # the types before 2026-12-06: "mlp"
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"unexpected \['lora_shared\.lora_A\.mlp_8'\] \(only shared .*older harness"):
        load_adapter(model(), tmp_path)
    attach(model(), "sharelora", targets="mlp.0,mlp.2", r=2).save(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit this model: missing \['layers\.2\.[^(]*$"):
        load_adapter(model(blocks=3), tmp_path)  # a layer's own tensors missing: no word of older code
    # a re-review: a model of another width differs in its shared tensors' names only too: no word of older code
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(hidden: int) -> LlamaForCausalLM:
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))  # fmt: skip

    attach(llama(32), "sharelora", targets="q_proj,v_proj", r=2).save(tmp_path / "w")
    with pytest.raises(ValueError, match=r"does not fit this model: missing \['lora_shared[^(]*$"):
        load_adapter(llama(48), tmp_path / "w")


def test_lora_fa_a_never_changes_and_input_is_not_kept():
    adapter = attach(tiny_llama(), "lora_fa", targets=TINY_TARGETS, dropout=0.0)
    a_before = {n: layer.lora_A.clone() for n, layer in adapter.layers.items()}
    opt = torch.optim.AdamW(adapter.param_groups(lr=1e-2))
    for _ in range(3):
        adapter.model(**batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(layer.lora_A, a_before[n]) for n, layer in adapter.layers.items())
    # What autograd saves on the adapter path: LoRA keeps x (d_in wide) for dA; LoRA-FA only A x (r wide).
    for method, keeps_input in (("lora", True), ("lora_fa", False)):
        adapter = attach(tiny_llama(), method, targets="up_proj", r=4, dropout=0.0)
        layer = adapter.layers["model.layers.0.mlp.up_proj"]
        x = torch.randn(2, 5, layer.site.d_in, requires_grad=True)
        saved: list[int] = []  # element counts (autograd saves flattened views)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            layer.delta(x)
        assert (x.numel() in saved) == keeps_input, (method, saved)
        assert 2 * 5 * 4 in saved  # z = A x, what dB needs


def test_moslora_zero_mixer_never_trains_default_does():
    for mixer_init, should_train in (("zeros", False), ("kaiming", True), ("orthogonal", True)):
        adapter = attach(tiny_llama(), "moslora", targets=TINY_TARGETS, mixer_init=mixer_init, dropout=0.0)
        before = {n: t.clone() for n, t in adapter.state_dict().items()}
        opt = torch.optim.SGD(adapter.param_groups(lr=0.5))
        for _ in range(3):
            adapter.model(**batch()).loss.backward()
            opt.step()
            opt.zero_grad()
        moved = any(not torch.equal(before[n], t) for n, t in adapter.state_dict().items())
        assert moved == should_train, mixer_init


def test_router_weights_sum_to_one_and_effilora_reads_the_subspace():
    x = torch.randn(3, 7, 32)
    for method in ("hydralora", "effilora"):
        adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, heads=4)
        perturb(adapter)
        layer = adapter.layers["model.layers.1.mlp.up_proj"]
        z = torch.nn.functional.linear(x, layer.lora_A)
        w = layer.router_weights(x) if method == "hydralora" else layer.router_weights(x, z)
        assert w.shape == (3, 7, 4)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 7))
        width = layer.lora_router.shape[1]
        assert width == (layer.site.d_in if method == "hydralora" else adapter.config.r)
        # Δ(x) is the router-weighted sum of the heads, head i = columns i*r:(i+1)*r of lora_B
        r = adapter.config.r
        heads = [layer.lora_B[:, i * r : (i + 1) * r] for i in range(4)]
        expected = sum(w[..., i : i + 1] * (z @ heads[i].T) for i in range(4))
        torch.testing.assert_close(layer.delta(x), expected, atol=1e-5, rtol=1e-5)


def test_hydralora_with_one_head_is_refused_saying_to_run_lora():
    """From a review: with one head HydraLoRA's softmax over one logit is 1, so its router counted as trained and
    never got a gradient; it is refused (EffiLoRA's m=1 has no router and merges, as its spec says)."""
    with pytest.raises(ValueError, match=r"hydralora needs heads >= 2 \(got 1\): .*run lora for one B"):
        attach(tiny_llama(), "hydralora", targets="q_proj", heads=1)


def test_effilora_hidden_router_and_single_b():
    hidden = attach(tiny_llama(), "effilora", targets="q_proj", router_input="hidden")
    assert hidden.layers["model.layers.0.self_attn.q_proj"].lora_router.shape == (4, 32)
    single = attach(tiny_llama(), "effilora", targets="q_proj", heads=1)
    assert not hasattr(single.layers["model.layers.0.self_attn.q_proj"], "lora_router")
    assert single.method_cls.is_mergeable(single.config)
    frozen_a = attach(tiny_llama(), "effilora", targets="q_proj", train_shared_a=False)
    assert all(
        p is not frozen_a.layers["model.layers.0.self_attn.q_proj"].lora_A for p in frozen_a.trainable_parameters()
    )


@pytest.mark.parametrize("method", BUILT_IN_METHODS)
def test_a_routers_and_mixers_start_kaiming_uniform_and_b_at_zero(method):
    """Spec, "Initialisation": A Kaiming-uniform (a=sqrt(5)), i.e. uniform on +-1/sqrt(fan_in); B zeros; MoSLoRA's
    mixer and every router Kaiming-uniform. Only "B = 0" was pinned: a ``randn`` A passed every test.
    From a review: it ran over the plugins too, whose initialisation is their own (a VeRA-style method's 1-D
    ``lora_`` scales failed it); the spec prescribes the built-ins' only."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    kinds: dict[tuple[str, int], list[torch.Tensor]] = {}
    for name, t in adapter.model.named_parameters():
        if "lora_" not in name:
            continue
        if name.endswith("lora_B"):
            assert not t.any(), name
            continue
        bound = 1 / math.sqrt(t.shape[1])
        assert t.abs().max() <= bound, (name, float(t.abs().max()), bound)
        kinds.setdefault((name.rsplit(".", 1)[-1] if "lora_shared" not in name else "shared A", t.shape[1]), []).append(
            t
        )
    assert kinds, "a method with no A, router or mixer"
    for (kind, fan_in), tensors in kinds.items():
        values = torch.cat([t.detach().flatten() for t in tensors])
        std = 1 / math.sqrt(3 * fan_in)  # of U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert abs(values.std().item() / std - 1) < 0.1 and abs(values.mean().item()) < 0.3 * std, kind


@pytest.mark.parametrize(("method", "options"), [("hydralora", {}), ("effilora", {"router_input": "hidden"})])
def test_a_router_on_the_input_reads_it_before_the_dropout(method, options):
    """Spec: HydraLoRA's ``w = softmax(G x)``, the dropout on the adapter path only (EffiLoRA's hidden router as
    HydraLoRA's). Every other test ran at dropout 0 or in eval mode, where x = drop(x): a router reading drop(x)
    passed them all."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, heads=4, dropout=0.5, **options)
    perturb(adapter)
    adapter.model.train()
    layer = adapter.layers["model.layers.1.mlp.up_proj"]
    x = torch.randn(3, 7, 32)
    torch.manual_seed(5)
    got = layer.delta(x)
    torch.manual_seed(5)
    dropped = layer.lora_dropout(x)  # the same draw
    assert not torch.equal(dropped, x)
    z = torch.nn.functional.linear(dropped, layer.lora_A)
    r = adapter.config.r
    heads = [layer.lora_B[:, i * r : (i + 1) * r] for i in range(4)]

    def mixed(router_input: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(torch.nn.functional.linear(router_input, layer.lora_router), dim=-1)
        return sum(w[..., i : i + 1] * (z @ heads[i].T) for i in range(4))

    torch.testing.assert_close(got, mixed(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, mixed(dropped), atol=1e-4)  # the test tells the two apart


def test_effilora_with_one_b_merges_into_the_base_weight():
    """Spec table: EffiLoRA merges "yes when m=1". The merge test ran at the default m=4 (a refusal only)."""
    adapter = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, heads=1, reducer=None)
    perturb(adapter)
    unmerged = adapter.model(**batch()).logits
    layer = adapter.layers["model.layers.2.self_attn.v_proj"]
    before = layer.base.weight.detach().clone()
    adapter.merge()
    expected = before + layer.scaling * (layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(layer.base.weight.detach(), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(layer.base.weight, before)
    torch.testing.assert_close(adapter.model(**batch()).logits, unmerged, atol=1e-5, rtol=1e-5)
    adapter.unmerge()
    torch.testing.assert_close(layer.base.weight.detach(), before, atol=1e-6, rtol=0)
    torch.testing.assert_close(adapter.model(**batch()).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_a_switch_that_is_not_a_bool_is_refused_naming_it():
    """From a review: ``train_shared_a=0`` failed in torch ("requires_grad ... must be bool"); a method's own bool
    option is refused naming it, and the command line's words (``--option train_shared_a=false``) still parse."""
    for value in (0, 1, None):
        with pytest.raises(ValueError, match=rf"option train_shared_a must be True or False \(got {value!r}"):
            attach(tiny_llama(), "effilora", targets="q_proj", train_shared_a=value)
    assert attach(tiny_llama(), "effilora", targets="q_proj", train_shared_a="false").config.train_shared_a is False


def test_effilora_with_heads_says_it_merges_with_one_b_and_hydralora_that_it_never_merges():
    """From a review: merge() of EffiLoRA with heads > 1 said "its Δ is input-dependent, or it has no delta_weight of
    its own delta", not how to make it mergeable: heads=1 (read off ``is_mergeable``, not named for EffiLoRA)."""
    routed = attach(tiny_llama(), "effilora", targets="q_proj", heads=2)
    with pytest.raises(
        ValueError, match=r"cannot be merged into W: .*input-dependent at heads=2; it merges with heads=1"
    ):
        routed.merge()
    with pytest.raises(ValueError, match=r"mergeable = False\); keep the adapter unmerged"):
        attach(tiny_llama(), "hydralora", targets="q_proj").merge()


def test_a_shared_tensor_is_made_once_per_kind_and_group():
    """``SharedTensors.get_or_create`` makes a tensor the first time only: every later wrapper of the group gets that
    one, and the seeded draws of its init happen once (ShareLoRA's A is the same tensor, at the same values, as with
    one wrapper). A mutation test found it unpinned: making it anew for every wrapper (the table keeping the last)
    passed every test, while each extra kaiming draw moved the RNG, changing every seeded init that follows."""
    from torch import nn

    from harness.adapter import SharedTensors

    shared, made = SharedTensors(), []

    def make() -> nn.Parameter:
        made.append(1)
        return nn.Parameter(torch.randn(2, 3))

    first = shared.get_or_create("lora_A", "q_proj_3", make)
    assert shared.get_or_create("lora_A", "q_proj_3", make) is first and len(made) == 1
    assert shared.get_or_create("lora_A", "k_proj_3", make) is not first and len(made) == 2
    small, big = tiny_llama(layers=1), tiny_llama(layers=4)
    torch.manual_seed(0)
    one = attach(small, "sharelora", targets="q_proj", r=2).model.lora_shared.lora_A["q_proj_32"]
    torch.manual_seed(0)
    four = attach(big, "sharelora", targets="q_proj", r=2).model.lora_shared.lora_A["q_proj_32"]
    torch.testing.assert_close(four, one)


def test_the_layer_of_a_target_in_nested_lists_of_one_class_is_the_deepest():
    """``Site.of``'s rule (``_layer_of``): the layer is the deepest numbered module above the linear in a list of one
    class: the blocks of a model's stages (``stages.0.blocks.1``), not the stage. A mutation test found only one level
    of lists in the tests: taking the outermost (``same[0]``) passed them all, and put a stage's blocks into one
    layer for the Reducer."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

    class Stage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

    model = nn.Module()
    model.stages = nn.ModuleList([Stage(), Stage()])
    adapter = attach(model, "lora", targets="fc", r=2, reducer=None)
    assert list(adapter.layer_groups) == [
        "stages.0.blocks.0",
        "stages.0.blocks.1",
        "stages.1.blocks.0",
        "stages.1.blocks.1",
    ]


def test_a_numbered_list_of_steps_outside_any_list_of_layers_is_no_layer():
    """``_layer_of``: an index into a list of steps of several classes, not all holding modules (diffusers'
    ``ff.net``: GEGLU, Dropout, Linear), is no layer: a model that is one such feed-forward is one layer ('').
    A mutation test found it unpinned: ``any`` for ``all`` (a list counted as blocks where one step holds modules)
    passed every test and made ``ff.net.0`` a layer of its own beside ``''``."""
    from torch import nn

    class GEGLU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 16)

        def forward(self, x):
            a, b = self.proj(x).chunk(2, dim=-1)
            return a * torch.nn.functional.gelu(b)

    model = nn.Module()
    model.ff = nn.Module()
    model.ff.net = nn.ModuleList([GEGLU(), nn.Dropout(0.0), nn.Linear(8, 8)])
    adapter = attach(model, "lora", targets="net.0.proj,net.2", r=2, reducer=None)
    assert list(adapter.layer_groups) == [""]
    assert [w.site.layer for w in adapter.layers.values()] == ["", ""]
