"""Properties every registered method must have (one row per method, many short tests)."""

from __future__ import annotations

import pytest
import torch

from harness import METHODS, AdapterLinear, attach, load_adapter
from harness.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SHARED
from harness.config import config_from_dict, make_config
from methods.lora import LoraLinear
from tests.conftest import TINY_TARGETS, assert_lora_matches_peft, batch, perturb, tiny_llama


def test_step_zero_equals_base(method):
    base = tiny_llama()
    expected = base(**batch()).logits
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    assert torch.equal(adapter.model(**batch()).logits, expected)


def test_only_adapter_tensors_train(method):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    trainable = {id(p) for p in adapter.trainable_parameters()}
    named = {id(p): n for n, p in adapter.model.named_parameters()}
    assert trainable, "a method must train something"
    assert all("lora_" in named[i] for i in trainable)
    assert adapter.num_trainable_params == sum(p.numel() for p in adapter.trainable_parameters())
    assert adapter.num_total_params == adapter.num_base_params + adapter.num_adapter_params
    assert adapter.num_base_params == sum(p.numel() for p in tiny_llama().parameters())
    assert adapter.percent_trainable == pytest.approx(100 * adapter.num_trainable_params / adapter.num_base_params)


def test_training_step_moves_trainable_tensors(method):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.0, reducer=None)
    before = {n: t.clone() for n, t in adapter.state_dict().items()}
    opt = torch.optim.AdamW(adapter.param_groups(lr=1e-2))
    adapter.model.train()
    for _ in range(2):  # step 1 moves B off zero; step 2 moves what sits behind B
        adapter.model(**batch()).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = adapter.state_dict()
    trainable_ids = {id(p) for p in adapter.trainable_parameters()}
    state_params = {n: p for n, p in adapter.model.named_parameters() if n in after}
    for name, p in state_params.items():
        changed = not torch.equal(before[name], after[name])
        assert changed == (id(p) in trainable_ids), name


def test_save_load_round_trip_is_bit_exact(method, tmp_path):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    perturb(adapter)
    adapter.save(tmp_path)
    assert (tmp_path / ADAPTER_WEIGHTS).is_file() and (tmp_path / ADAPTER_CONFIG).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    fresh = tiny_llama()
    torch.manual_seed(12345)  # from a review: tiny_llama seeds 0, so tensors attach draws came out equal by chance
    loaded = load_adapter(fresh, tmp_path)
    assert loaded.method == method and loaded.config == adapter.config
    original, restored = adapter.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert torch.equal(adapter.model(**batch()).logits, loaded.model(**batch()).logits)


def test_a_methods_frozen_tensors_and_buffers_are_saved_and_loaded(tmp_path, monkeypatch):
    """From a review: only ``lora_*`` tensors were saved, though a method may keep a frozen tensor under another
    name or a buffer (a VeRA-style random basis, as the README allows): ``load_adapter`` drew them again from the
    random state, and the loaded adapter's outputs differed (0.52 here) with no missing key reported."""
    import torch.nn.functional as F

    from harness import AdapterLinear

    class FrozenBasis(AdapterLinear):
        rank_bounded = False

        def __init__(self, base, config, site, shared):
            super().__init__(base, config, site, shared)
            self.register_buffer("proj_A", torch.randn(config.r, site.d_in) / site.d_in**0.5)
            self.proj_B = torch.nn.Parameter(torch.randn(site.d_out, config.r) / config.r**0.5, requires_grad=False)
            self.lora_d = self.new_param(config.r, init="zeros")
            self.lora_b = self.new_param(site.d_out)

        def delta(self, x):
            return F.linear(F.linear(self.lora_dropout(x), self.proj_A) * self.lora_d, self.proj_B) * self.lora_b

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only
    METHODS.register("frozen_basis")(FrozenBasis)
    adapter = attach(tiny_llama(), "frozen_basis", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    assert any(k.endswith(".proj_A") for k in adapter.state_dict())
    assert any(k.endswith(".proj_B") for k in adapter.state_dict())
    assert not any(".base." in k for k in adapter.state_dict())
    adapter.save(tmp_path)
    fresh = tiny_llama()
    torch.manual_seed(123)
    loaded = load_adapter(fresh, tmp_path)
    assert torch.equal(adapter.model(**batch()).logits, loaded.model(**batch()).logits)
    # (a re-review) a state saved before these were (lora_* only) says so, not a bare "missing"
    lora_only = {k: v for k, v in adapter.state_dict().items() if "lora_" in k}
    with pytest.raises(ValueError, match=r"saved before the harness saved them .* delete it or use --force"):
        loaded.load_state_dict(lora_only)


class _Basis(AdapterLinear):
    """VeRA-like, as the reviewer's plugin: a frozen random basis A shared by a module type (``lora_shared``), a
    trainable d and B per layer. ``_SharedBasis`` reads A through a property, ``_AliasedBasis`` keeps it as an
    attribute (``self.vera_A = shared.get_or_create(...)``), ``_AliasedA`` is a naive ShareLoRA's lora_A."""

    rank_bounded = False

    def __init__(self, base, config, site, shared):
        super().__init__(base, config, site, shared)
        make = lambda: self.new_param(config.r, site.d_in, init="kaiming", trainable=False)  # noqa: E731
        self.keep(shared.get_or_create("lora_vera_A", site.group, make))
        self.lora_d = self.new_param(config.r)
        self.lora_B = self.new_param(site.d_out, config.r)

    def keep(self, basis: torch.nn.Parameter) -> None:
        pass

    def delta(self, x):
        z = torch.nn.functional.linear(self.lora_dropout(x), self.basis) * self.lora_d
        return torch.nn.functional.linear(z, self.lora_B)


class _SharedBasis(_Basis):
    @property
    def basis(self) -> torch.Tensor:
        return self._shared.lora_vera_A[self.site.group]


class _AliasedBasis(_Basis):
    def keep(self, basis):
        self.basis = basis


class _AliasedA(LoraLinear):
    def init_a(self, config):
        self.lora_A = self.shared_param("lora_A", config.r, self.site.d_in, init="kaiming")


@pytest.mark.parametrize("cls", [_SharedBasis, _AliasedBasis, _AliasedA])
def test_a_wrapper_that_keeps_a_shared_tensor_as_an_attribute_too_saves_and_loads(cls, tmp_path, monkeypatch):
    """From a review: a plugin wrapper that kept a shared tensor as an attribute (``self.vera_A =
    shared.get_or_create(...)``) registered it twice, on the wrapper and in ``lora_shared``: attach, counts,
    forward and merge worked, the run trained to its end, and then every save (and every resume) failed on a CPU with
    safetensors' "Some tensors share memory". ``save`` copies each tensor; a load fills both names alike."""
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only
    METHODS.register("shared_basis")(cls)
    adapter = attach(tiny_llama(), "shared_basis", targets="q_proj,v_proj", r=2, dropout=0.0)
    perturb(adapter)
    adapter.save(tmp_path)
    loaded = load_adapter(tiny_llama(), tmp_path)
    assert torch.equal(adapter.model(**batch()).logits, loaded.model(**batch()).logits)


def test_unload_gives_the_model_back_as_it_was(method):
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)  # a user's own freezing survives attach + unload
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = model(**batch()).logits
    adapter = attach(model, method, targets=TINY_TARGETS)
    perturb(adapter)
    if adapter.method_cls.is_mergeable(adapter.config):
        adapter.merge()  # unload() unmerges first
    assert adapter.unload() is model
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.allclose(p, weights[n], atol=1e-6) for n, p in model.named_parameters())
    assert sorted(n for n, _ in model.named_parameters()) == sorted(weights)
    assert torch.allclose(model(**batch()).logits, expected, atol=1e-5)
    attach(model, method, targets=TINY_TARGETS)  # a fresh model again


def test_a_failed_load_leaves_the_model_unwrapped(method, tmp_path):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    adapter.save(tmp_path)
    other = attach(tiny_llama(), method, targets=TINY_TARGETS, r=4)
    other.save(tmp_path / "r4")
    (tmp_path / "r4" / ADAPTER_CONFIG).write_bytes((tmp_path / ADAPTER_CONFIG).read_bytes())  # weights of r=4
    model = tiny_llama()
    names = sorted(n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="has shape"):
        load_adapter(model, tmp_path / "r4")
    assert sorted(n for n, _ in model.named_parameters()) == names
    assert all(p.requires_grad for p in model.parameters())
    assert load_adapter(model, tmp_path).method == method  # the right directory loads into the same model


def test_a_save_interrupted_between_its_two_files_is_refused_on_load(tmp_path, monkeypatch):
    """From a review: ``Adapter.save`` wrote the weights and adapter_config.json each atomically, not as a pair: a
    save interrupted between the two left new weights (alpha=64) beside the old config (alpha=8), and
    ``load_adapter`` loaded them with the old scaling, with no error. The weights file holds its config now, and a
    config file from another save is refused; a weights file from before (no such metadata) loads as before."""
    from safetensors.torch import load_file, save_file

    import harness.adapter_model as adapter_module

    old = attach(tiny_llama(layers=2), "lora", r=4, alpha=8, targets="q_proj")
    perturb(old)
    old.save(tmp_path)
    new = attach(tiny_llama(layers=2), "lora", r=4, alpha=64, targets="q_proj")
    perturb(new, seed=5)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter_module, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path)  # the new weights written, the config file still the old one
    monkeypatch.undo()
    model = tiny_llama(layers=2)
    torn = r"come from different saves \(the weights were saved with alpha=64, not 8;.*: save the adapter again$"
    with pytest.raises(ValueError, match=torn):
        load_adapter(model, tmp_path)
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())  # the model as it was given
    # weights of another rank beside the old config: the shape refusal says why too
    attach(tiny_llama(layers=2), "lora", r=2, alpha=8, targets="q_proj").save(tmp_path / "r2")
    (tmp_path / "r2" / ADAPTER_CONFIG).write_bytes((tmp_path / ADAPTER_CONFIG).read_bytes())
    with pytest.raises(
        ValueError, match=r"has shape .*; .* come from different saves \(the weights were saved with r=2"
    ):
        load_adapter(tiny_llama(layers=2), tmp_path / "r2")
    # the pair saved whole loads; a weights file saved before the fix (no config in its metadata) loads as before
    new.save(tmp_path)
    assert load_adapter(tiny_llama(layers=2), tmp_path).config.alpha == 64
    save_file(load_file(tmp_path / ADAPTER_WEIGHTS), tmp_path / ADAPTER_WEIGHTS, metadata={"method": "lora"})
    loaded = load_adapter(tiny_llama(layers=2), tmp_path)
    assert torch.equal(loaded.model(**batch()).logits, new.model(**batch()).logits)


def test_a_state_with_one_badly_shaped_tensor_changes_nothing():
    """From a review: ``load_state_dict`` checked each tensor's shape as it copied it, so a state whose last tensor
    had the wrong shape was refused after the tensors before it were copied into the live adapter (7 of 8)."""
    adapter = attach(tiny_llama(layers=2), "lora", r=4, targets="q_proj,up_proj")
    perturb(adapter)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in before.items()}
    last = list(state)[-1]
    state[last] = torch.ones(state[last].shape[0] + 1, state[last].shape[1])
    with pytest.raises(ValueError, match=rf"adapter tensor {last} has shape"):
        adapter.load_state_dict(state)
    after = adapter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_wrapper_that_fails_part_way_leaves_the_model_as_it_was(method, monkeypatch):
    """From a review: a wrapper whose constructor raised part-way (out of memory making its tensors) left the model
    half-wrapped and every parameter frozen, and a retry was refused ("already has an adapter"). attach undoes the
    wrappers made so far and the freezing, and lets the error through."""
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)  # a user's own freezing survives the failed attach
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cls, calls = METHODS.get(method), []
    real = cls.new_param

    def flaky(self, *shape, **kw):
        calls.append(shape)
        if len(calls) == 5:  # after the first wrappers are in place
            raise torch.cuda.OutOfMemoryError("simulated: no memory for a wrapper's tensor")
        return real(self, *shape, **kw)

    monkeypatch.setattr(cls, "new_param", flaky)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="simulated"):
        attach(model, method, targets=TINY_TARGETS)
    monkeypatch.undo()
    assert not any(isinstance(m, AdapterLinear) for m in model.modules()) and not hasattr(model, SHARED)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert len(attach(model, method, targets=TINY_TARGETS, r=4).layers) == 20  # the retry


def test_state_dict_counts_shared_tensors_once(method):
    """From a review: this took every saved tensor for a ``lora_`` one, so a VeRA-style method (a frozen basis kept
    as buffers, which the README allows: saved with the adapter, counted as the base's) failed it. The ``lora_``
    tensors are the adapter's parameters, each saved once (a shared A under one name); beside them the state holds
    the wrappers' own buffers and frozen tensors, and nothing of their bases."""
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    state = adapter.state_dict()
    lora = [t for k, t in state.items() if "lora_" in k]
    assert sum(t.numel() for t in lora) == adapter.num_adapter_params
    storages = [t.untyped_storage().data_ptr() for t in lora]
    assert len(storages) == len(set(storages))
    kept = {
        f"{name}.{n}"
        for name, layer in adapter.layers.items()
        for n in [n for n, _ in layer.named_buffers()] + [n for n, _ in layer.named_parameters()]
        if "lora_" not in n and not n.startswith("base.")
    }
    assert {k for k in state if "lora_" not in k} == kept


def test_merge_matches_unmerged_or_refuses(method):
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS)
    perturb(adapter)
    unmerged = adapter.model(**batch()).logits
    if not adapter.method_cls.is_mergeable(adapter.config):
        with pytest.raises(ValueError, match="cannot be merged"):
            adapter.merge()
        return
    adapter.merge()
    torch.testing.assert_close(adapter.model(**batch()).logits, unmerged, atol=1e-5, rtol=1e-5)
    adapter.unmerge()
    torch.testing.assert_close(adapter.model(**batch()).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_merge_refuses_a_tied_or_quantised_weight_and_changes_nothing(method):
    """From a review of own models: merging into a tied lm_head changed the input embeddings too (the logits moved
    by 42), and into an int8 layer added Δ to the integers, blind to their scale; both silently."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not METHODS.get(method).is_mergeable(METHODS.get(method).config_cls()):
        pytest.skip("the method does not merge at its defaults")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    tied = LlamaForCausalLM(config).eval()
    embeddings = tied.get_input_embeddings().weight.detach().clone()
    adapter = attach(tied, method, targets="lm_head")
    perturb(adapter)
    with pytest.raises(ValueError, match="cannot merge into lm_head: its weight is tied to another parameter"):
        adapter.merge()
    assert torch.equal(tied.get_input_embeddings().weight, embeddings)
    assert not any(layer.merged for layer in adapter.layers.values())

    class Int8Linear(torch.nn.Linear):  # how a quantised layer looks to attach: an nn.Linear with int weights
        def __init__(self, d_in: int, d_out: int) -> None:
            super().__init__(d_in, d_out, bias=False)
            self.weight = torch.nn.Parameter(torch.ones(d_out, d_in, dtype=torch.int8), requires_grad=False)

    model = torch.nn.Sequential()
    model.add_module("q_proj", Int8Linear(16, 16))
    adapter = attach(model, method, targets="q_proj")
    perturb(adapter)
    with pytest.raises(
        ValueError, match=r"cannot merge into q_proj: its weight is torch.int8 \(a quantised Int8Linear\)"
    ):
        adapter.merge()
    assert torch.equal(model.q_proj.base.weight, torch.ones(16, 16, dtype=torch.int8))


def tiny_gpt2(seed: int = 0):
    """A 2-layer GPT-2: its c_attn (q, k and v fused), c_proj and c_fc are transformers' Conv1D, whose weight is
    stored transposed (in x out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


GPT2_TARGETS = "c_attn,c_proj,c_fc"


def test_gpt2s_conv1d_layers_are_adapted_trained_and_merged(method):
    """From a review of own models: GPT-2-style models (Conv1D layers) could not be adapted at all. Every method
    wraps them as it wraps nn.Linear: step zero is the base model, the adapter trains, and a merge (the weight is
    stored transposed) gives the unmerged outputs."""
    base = tiny_gpt2()(**batch()).logits
    adapter = attach(tiny_gpt2(), method, targets=GPT2_TARGETS)
    assert len(adapter.layers) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    sites = {
        name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]: layer.site for name, layer in adapter.layers.items()
    }
    assert (sites["attn.c_attn"].d_in, sites["attn.c_attn"].d_out) == (16, 48)  # in x out: (nx, nf)
    assert (sites["mlp.c_proj"].d_in, sites["mlp.c_proj"].d_out) == (64, 16)
    assert torch.equal(adapter.model(**batch()).logits, base)
    perturb(adapter)
    adapter.model.train()
    out = adapter.model(**batch())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.trainable_parameters())
    adapter.model.eval()
    with torch.no_grad():
        unmerged = adapter.model(**batch()).logits
    assert not torch.allclose(unmerged, base)
    if not adapter.method_cls.is_mergeable(adapter.config):
        return
    adapter.merge()
    with torch.no_grad():
        torch.testing.assert_close(adapter.model(**batch()).logits, unmerged, atol=1e-5, rtol=1e-5)
    model = adapter.unload()
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


def test_gpt2s_conv1d_layers_on_the_fast_path_compute_what_the_plain_path_does(method):
    """The fast path (one product over an input its readers share) on Conv1D bases, which it does not fuse."""
    if not METHODS.get(method).offers_fast_path():
        pytest.skip("the method has no fast path")
    adapter = attach(tiny_gpt2(), method, targets=GPT2_TARGETS, dropout=0.0, reducer=None)
    perturb(adapter)
    adapter.model.train()
    results = []
    for fast in (False, True):
        adapter.use_fast_path(fast)
        out = adapter.model(**batch())
        grads = torch.autograd.grad(out.loss, adapter.trainable_parameters())
        results.append((out.logits.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for fast, plain in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_lora_on_gpt2_matches_peft_with_fan_in_fan_out():
    """Against peft's LoRA on the same Conv1D layers (``fan_in_fan_out=True``, as peft needs for them): the same
    outputs, gradients and merged weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    ours = attach(tiny_gpt2(), "lora", targets=GPT2_TARGETS, r=4, alpha=8, dropout=0.0)
    perturb(ours)
    config = PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=GPT2_TARGETS.split(","),
                            fan_in_fan_out=True)  # fmt: skip
    ref = get_peft_model(tiny_gpt2(), config)
    assert_lora_matches_peft(ours, ref)
    ours.merge()
    merged = ref.merge_and_unload()
    for name, layer in ours.layers.items():
        torch.testing.assert_close(layer.base.weight, merged.get_submodule(name).weight, atol=1e-6, rtol=0)


def test_a_wrapper_reads_its_bases_weight_bias_and_widths_through(method):
    """From a review: a wrapper did not expose its base's weight, bias, in_features and out_features, so model code
    reading them (transformers' ergo reads ``self.o_proj.weight.dtype``, GPT-Neo's flash attention too) failed once
    wrapped. They read through to the base, a Conv1D's widths as the linear's (its weight is stored in x out), and
    are no tensors of the wrapper's own: parameters, adapter state and counts are as before (a later review: the
    state also holds a method's own buffers, a VeRA-style basis, which this once refused)."""

    class ReadsWeight(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.o_proj = torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.o_proj(x.to(self.o_proj.weight.dtype))

    adapter = attach(ReadsWeight(), method, targets="o_proj", r=2, reducer=None)
    assert adapter.model(torch.ones(3, 8, dtype=torch.float64)).shape == (3, 4)
    layer = adapter.layers["o_proj"]
    assert layer.weight is layer.base.weight and layer.bias is layer.base.bias
    assert (layer.in_features, layer.out_features) == (8, 4)
    assert all(n.startswith("base.") or "lora_" in n for n, _ in layer.named_parameters())
    buffers = {f"o_proj.{n}" for n, _ in layer.named_buffers() if not n.startswith("base.")}  # a VeRA basis's
    assert all("lora_" in n or n in buffers for n in adapter.state_dict())
    lora = sum(p.numel() for n, p in adapter.model.named_parameters() if "lora_" in n)
    assert adapter.num_adapter_params == lora and adapter.num_base_params == 8 * 4 + 4
    gpt2 = attach(tiny_gpt2(), method, targets=GPT2_TARGETS)
    c_attn = gpt2.layers["transformer.h.0.attn.c_attn"]
    assert (c_attn.in_features, c_attn.out_features) == (16, 48) and c_attn.weight.shape == (16, 48)
    assert c_attn.bias is c_attn.base.bias


def test_a_plugin_that_sets_its_own_in_features_attaches():
    """From a review: ``in_features``/``out_features`` were read-only properties, so a plugin wrapper in peft's style
    that sets ``self.in_features`` in its ``__init__`` (peft's LoraLayer does) failed in attach ("has no setter"). The
    base's are read only where the wrapper has none of its own: the plugin's value wins, ``weight`` still reads
    through."""

    class Widths(AdapterLinear):
        def __init__(self, base, config, site, shared) -> None:
            super().__init__(base, config, site, shared)
            self.in_features, self.out_features = site.d_in + 1, site.d_out  # its own (+1: told apart from the base's)
            self.lora_A = self.new_param(config.r, site.d_in, init="kaiming")
            self.lora_B = self.new_param(self.out_features, config.r)

        def delta(self, x: torch.Tensor) -> torch.Tensor:
            return self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T

    Widths.name = "widths"
    adapter = attach(tiny_llama(), Widths, targets="q_proj", r=2, reducer=None)
    layer = adapter.layers["model.layers.0.self_attn.q_proj"]
    assert (layer.in_features, layer.out_features) == (layer.site.d_in + 1, layer.site.d_out)
    assert layer.weight is layer.base.weight and layer.bias is layer.base.bias
    adapter.model(**batch()).loss.backward()


def test_a_plugin_that_registers_a_buffer_named_bias_attaches_and_reads_its_own():
    """From a review: ``weight``/``bias`` were read-only properties of the wrapper, so a plugin that registers a tensor
    of its own under one of those names (a buffer ``bias`` added to its update) failed in attach. Its own tensor wins
    where it has one (and is saved with the adapter, as a buffer); the base's ``weight`` still reads through."""

    class Shifted(AdapterLinear):
        def __init__(self, base, config, site, shared) -> None:
            super().__init__(base, config, site, shared)
            self.register_buffer("bias", torch.full((site.d_out,), 0.5))
            self.lora_A = self.new_param(config.r, site.d_in, init="kaiming")
            self.lora_B = self.new_param(site.d_out, config.r)

        def delta(self, x: torch.Tensor) -> torch.Tensor:
            return self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T + self.bias

    Shifted.name = "shifted"
    adapter = attach(tiny_llama(), Shifted, targets="q_proj", r=2, reducer=None)
    layer = adapter.layers["model.layers.0.self_attn.q_proj"]
    assert layer.bias is layer._buffers["bias"] and layer.bias is not layer.base.bias
    assert layer.weight is layer.base.weight and (layer.in_features, layer.out_features) == (32, 32)
    assert "model.layers.0.self_attn.q_proj.bias" in adapter.state_dict()
    adapter.model(**batch()).loss.backward()


def test_a_target_that_names_another_kind_of_layer_says_so():
    """From a review of own models: --targets naming modules that are not linear layers said only that it matched
    no linear layer; it names what they are."""
    with pytest.raises(
        ValueError, match=r"matches no linear layer; the model's linear layers: c_attn, c_fc, c_proj, lm_head$"
    ):
        attach(tiny_gpt2(), "lora", targets="q_proj")  # no such module at all: no sentence about it
    with pytest.raises(ValueError, match=r"it names LlamaAttention modules, .*adapted; name the linear layers"):
        attach(tiny_llama(), "lora", targets="self_attn")

    class Conv1D(torch.nn.Module):  # a model's own copy of GPT-2's layer (remote code), not transformers' class
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(8, 8))

    model = torch.nn.Sequential()
    model.add_module("c_attn", Conv1D())
    with pytest.raises(ValueError, match=r"layers: none \(it names Conv1D modules; of the Conv1D layers \((tests\.)?test_methods\.Conv1D\) "
                                         r"transformers' own \(transformers\.pytorch_utils\.Conv1D\) is adapted.*weight\.T"):  # fmt: skip
        attach(model, "lora", targets="c_attn")


def test_a_target_naming_a_list_or_a_convolution_is_told_what_to_name():
    """From a review: a target naming a list of steps (diffusers' ``to_out``, ``ff.net``) was told the model's linear
    layers were ``to_out`` and ``net``, names that are refused; the message lists names that work (``to_out.0``,
    ``net.2``), and for a convolution (``conv_in``) says that convolutions are not adapted, not to name the linear
    layers inside it."""

    class GEGLU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 32)

    block, ff = torch.nn.Module(), torch.nn.Module()
    block.to_out = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Dropout(0.0)])
    ff.net = torch.nn.ModuleList([GEGLU(), torch.nn.Dropout(0.0), torch.nn.Linear(16, 8)])
    block.ff, block.conv_in = ff, torch.nn.Conv2d(4, 8, 3)
    listed = r"target '\w+' matches no linear layer; the model's linear layers: net\.2, proj, to_out\.0 "
    with pytest.raises(ValueError, match=listed + r"\(it names ModuleList modules, .*inside them: to_out\.0\)$"):
        attach(block, "lora", targets="to_out", r=2)
    with pytest.raises(ValueError, match=listed + r"\(it names ModuleList modules, .*inside them: net\.2, proj\)$"):
        attach(block, "lora", targets="net", r=2)
    with pytest.raises(ValueError, match=listed + r"\(it names Conv2d modules: convolutions are not adapted, .*list"):
        attach(block, "lora", targets="conv_in", r=2)
    adapter = attach(block, "lora", targets="to_out.0,net.2,proj", r=2)  # the names listed work
    assert list(adapter.layers) == ["to_out.0", "ff.net.0.proj", "ff.net.2"]


def test_a_target_naming_modules_without_a_linear_or_a_list_of_blocks_steps_is_told_what_to_name():
    """From a review: a target naming modules that hold no linear layer (``embed_tokens``, ``input_layernorm``) was
    told to "name the linear layers inside them"; it is told they hold none. And an ``nn.Sequential`` straight in a
    list of blocks had its linears listed as ``0.0, 0.2, 1.0, ...``, names that each target one block's linear alone
    (``0.0``: block 0's first): no shorter name targets them in every block, so the list gives their full names."""
    with pytest.raises(ValueError, match=r"it names Embedding modules, .*; they hold no linear layer to adapt: name"):
        attach(tiny_llama(), "lora", targets="embed_tokens", r=2)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(
        [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 8)) for _ in range(3)]
    )
    names = [f"blocks.{i}.{j}" for i in range(3) for j in (0, 2)]
    with pytest.raises(ValueError, match=rf"the model's linear layers: {', '.join(names)}$") as refused:
        attach(model, "lora", targets="mlp", r=2)
    with pytest.raises(ValueError, match=rf"inside them: {', '.join(names)}\)$"):
        attach(model, "lora", targets="blocks", r=2)
    listed = str(refused.value).split("linear layers: ")[1].split(", ")
    assert list(attach(model, "lora", targets=",".join(listed), r=2).layers) == names  # the names listed: each one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_forward_and_backward(method, dtype):
    adapter = attach(tiny_llama(dtype=dtype), method, targets=TINY_TARGETS, reducer=None)
    perturb(adapter)
    out = adapter.model(**batch())
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in adapter.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bf16_close_to_fp32(method):
    adapter32 = attach(tiny_llama(), method, targets=TINY_TARGETS)
    perturb(adapter32)
    adapter16 = attach(tiny_llama(dtype=torch.bfloat16), method, targets=TINY_TARGETS)
    adapter16.load_state_dict(adapter32.state_dict())
    torch.testing.assert_close(
        adapter16.model(**batch()).logits.float(), adapter32.model(**batch()).logits, atol=0.015, rtol=0
    )  # bf16 rounding is <= 0.007 here (logits up to 0.44); a 10% error in the adapter's scale is >= 0.04


def test_unknown_option_names_the_valid_ones(method):
    with pytest.raises(ValueError, match=r"unknown option 'rnak'.*did you mean 'rank'.*available: .*alpha"):
        attach(tiny_llama(), method, rnak=4)


def test_target_that_matches_nothing_lists_linear_names(method):
    with pytest.raises(ValueError, match=r"target 'qproj' matches no linear layer.*q_proj.*v_proj"):
        attach(tiny_llama(), method, targets="q_proj,qproj")


def test_regex_targets(method):
    adapter = attach(tiny_llama(), method, targets=r".*\.layers\.[01]\.self_attn\.(q|v)_proj")
    assert sorted(adapter.layers) == [f"model.layers.{i}.self_attn.{t}_proj" for i in (0, 1) for t in "qv"]


def test_attaching_twice_is_refused(method):
    model = tiny_llama()
    attach(model, method, targets=TINY_TARGETS)
    with pytest.raises(ValueError, match="already has an adapter"):
        attach(model, method, targets=TINY_TARGETS)


def test_a_peft_adapter_folder_is_refused_in_one_line(tmp_path):
    """From a review: peft names its files as ours (adapter_model.safetensors, adapter_config.json), and
    ``load_adapter`` on its folder raised a bare ``KeyError('method')``."""
    from peft import LoraConfig, get_peft_model

    get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path)
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"was not written by Adapter\.save\(\).*load it with peft's PeftModel"):
        load_adapter(model, tmp_path)
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())


def test_a_target_name_matches_a_whole_module_name_not_the_end_of_a_longer_one():
    """From a mutation test (adapter_model.py:436, suffix match without the dot): target v_proj also wrapped a kv_proj."""
    from torch import nn

    from harness.adapter_model import find_targets

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.v_proj, self.kv_proj = nn.Linear(8, 8), nn.Linear(8, 8)

    model = nn.Sequential(Block(), Block())
    assert find_targets(model, ("v_proj",)) == ["0.v_proj", "1.v_proj"]
    with pytest.raises(ValueError, match=r"target 'proj' matches no linear layer"):
        find_targets(model, ("proj",))


def test_a_meta_device_adapter_is_refused_by_save_and_load(method, tmp_path):
    """From a review: ``load_adapter`` into a model whose tensors are on the meta device succeeded and copied nothing
    (``copy_`` into meta is a no-op: the weights silently dropped), and ``save`` of a meta adapter raised torch's
    "Cannot copy out of meta tensor" and left an empty folder. Both are refused, saying to materialise the weights;
    attach on meta stays allowed (FLOP counting)."""
    attach(tiny_llama(), method, targets=TINY_TARGETS).save(tmp_path / "real")
    with torch.device("meta"):
        model = tiny_llama()
    adapter = attach(model, method, targets=TINY_TARGETS)
    assert adapter.num_trainable_params > 0
    with pytest.raises(ValueError, match=r"cannot save this adapter: .* on the meta device.*to_empty"):
        adapter.save(tmp_path / "meta")
    assert not (tmp_path / "meta").exists()
    with pytest.raises(ValueError, match=r"cannot load weights into this adapter: .* on the meta device.*to_empty"):
        adapter.load_state_dict(attach(tiny_llama(), method, targets=TINY_TARGETS).state_dict())
    with torch.device("meta"):
        model = tiny_llama()
    with pytest.raises(ValueError, match=r"on the meta device"):
        load_adapter(model, tmp_path / "real")
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())  # taken off again


def test_an_unloaded_handle_refuses_what_reads_its_layers(method, tmp_path):
    """From a review: after ``unload()`` the handle was spent by its docstring only: ``save`` wrote an empty adapter
    over a good save (224 bytes, which then failed to load), a handle of an earlier attach saved the next attach's
    weights under its own config, and ``merge`` did nothing. Each is refused."""
    model = tiny_llama()
    adapter = attach(model, method, targets=TINY_TARGETS)
    perturb(adapter)
    adapter.save(tmp_path)
    saved = (tmp_path / ADAPTER_WEIGHTS).read_bytes()
    assert adapter.unload() is model
    again = attach(model, method, targets=TINY_TARGETS, alpha=64)  # the next attach: the old handle must not see it
    calls = {
        "save": lambda: adapter.save(tmp_path),
        "merge": adapter.merge,
        "unmerge": adapter.unmerge,
        "state_dict": adapter.state_dict,
        "load_state_dict": lambda: adapter.load_state_dict(again.state_dict()),
        "unload": adapter.unload,
        "trainable_parameters": adapter.trainable_parameters,
        "adapter_parameters": adapter.adapter_parameters,
        "on_step_begin": lambda: adapter.on_step_begin(0, None),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"this adapter was unloaded .*Adapter\.{name} .*attach again"):
            call()
    assert (tmp_path / ADAPTER_WEIGHTS).read_bytes() == saved
    assert load_adapter(tiny_llama(), tmp_path).method == method and adapter.unloaded
    assert all(model.get_submodule(name) is layer for name, layer in again.layers.items())  # left on by the refusals
    again.save(tmp_path / "again")
    assert load_adapter(tiny_llama(), tmp_path / "again").config.alpha == 64


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (dict(rank=8.0), r"rank r must be an integer \(got 8.0, a float\); give an int"),
        (dict(r=True), r"rank r must be an integer \(got True, a bool\)"),
        (dict(heads=2.0), r"heads must be an integer \(got 2.0, a float\)"),
        (dict(targets=None), r"option targets must be a string or a list of strings \(got None, a NoneType\)"),
        (dict(targets=5), r"option targets must be a string or a list of strings \(got 5, a int\)"),
        (dict(targets=["q_proj", 5]), r"option targets must be a string or a list of strings"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_naming_it(method, option, said):
    """From a review: through the Python API ``rank=8.0``, ``r=True`` and ``heads=2.0`` failed inside
    ``torch.empty`` with a TypeError, and ``targets=None`` (or 5) with "'NoneType' object is not iterable"; the
    command line's strings (``--option r=8``) are parsed to the field's type, as before."""
    with pytest.raises(ValueError, match=said):
        attach(tiny_llama(), method, **option)
    cls = METHODS.get(method)
    config = make_config(cls.config_cls, {"r": "8", "heads": "2", "targets": "q_proj,v_proj"}, method)
    assert (config.r, config.heads, config.targets) == (8, 2, ("q_proj", "v_proj"))
    listed = attach(tiny_llama(), method, targets=["q_proj", "v_proj"])
    assert listed.config.targets == ("q_proj", "v_proj")
    assert config_from_dict(cls.config_cls, listed.config.to_dict()) == listed.config  # as a saved config loads


def test_a_damaged_or_unknown_saved_adapter_is_refused_naming_the_file(method, tmp_path):
    """From a review: a truncated adapter_config.json raised a bare JSONDecodeError, a truncated weights file
    safetensors' "invalid header length", and a config with an option this harness has not (``rnak``) a TypeError
    "LoraConfig.__init__() got an unexpected keyword argument"; each is a ValueError naming the file and what to do."""
    import json

    attach(tiny_llama(), method, targets=TINY_TARGETS).save(tmp_path)
    weights, config = (tmp_path / ADAPTER_WEIGHTS).read_bytes(), (tmp_path / ADAPTER_CONFIG).read_text()
    model = tiny_llama()
    (tmp_path / ADAPTER_CONFIG).write_text(config[: len(config) // 2])
    with pytest.raises(ValueError, match=rf"{ADAPTER_CONFIG}' is not readable JSON .*damaged; save the adapter again"):
        load_adapter(model, tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_text(config)
    for cut in (4, len(weights) // 2):  # in the header's length, in the tensors
        (tmp_path / ADAPTER_WEIGHTS).write_bytes(weights[:cut])
        with pytest.raises(ValueError, match=rf"{ADAPTER_WEIGHTS}' is not a readable safetensors file .*save the"):
            load_adapter(model, tmp_path)
    (tmp_path / ADAPTER_WEIGHTS).write_bytes(weights)
    meta = json.loads(config)
    for where, key in ((meta["config"], "rnak"), (meta["config"].get("reducer") or meta["config"], "intervall")):
        where[key] = 8
        (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=rf"{ADAPTER_CONFIG}': unknown (reducer )?option '{key}' .*newer version"):
            load_adapter(model, tmp_path)
        del where[key]
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())


def _no_grad_logits(adapter) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(**batch()).logits


def test_merging_twice_adds_delta_once_and_one_unmerge_restores_the_base():
    """``Adapter.merge()`` called a second time (a notebook re-running a cell) leaves the weights as one merge does,
    and one ``unmerge()`` gives the base weights back. A mutation test found it unpinned: a wrapper's ``merge``
    without its ``if not self.merged`` guard added Δ twice and passed every test."""
    adapter = attach(tiny_llama(), "lora", targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    base_weights = {name: layer.base.weight.detach().clone() for name, layer in adapter.layers.items()}
    unmerged = _no_grad_logits(adapter)
    adapter.merge()
    adapter.merge()
    torch.testing.assert_close(_no_grad_logits(adapter), unmerged, atol=1e-5, rtol=1e-5)
    adapter.unmerge()
    for name, layer in adapter.layers.items():
        torch.testing.assert_close(layer.base.weight, base_weights[name], atol=1e-6, rtol=0, msg=name)


def test_a_method_that_sets_mergeable_false_is_not_merged_though_it_inherits_a_delta_weight():
    """``mergeable = False`` (README: a method whose Δ is input-dependent) refuses merge even where the class inherits
    a ``delta_weight`` (here LoRA's). The one built-in that sets it (HydraLoRA) defines no ``delta_weight``, so a
    mutation test found the flag unread by any test: ``is_mergeable`` without ``cls.mergeable`` passed them all."""

    class RoutedLora(LoraLinear):
        name = "routed_lora"
        mergeable = False

    adapter = attach(tiny_llama(), RoutedLora, targets=TINY_TARGETS, dropout=0.0)
    perturb(adapter)
    assert not RoutedLora.is_mergeable(adapter.config)
    with pytest.raises(ValueError, match="cannot be merged"):
        adapter.merge()
    assert not any(layer.merged for layer in adapter.layers.values())
