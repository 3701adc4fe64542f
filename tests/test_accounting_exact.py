"""Issue 8, section 1: what a record says is exactly what ran (each test failed on the earlier code)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import harness.train as train_module
import tasks.lm as lm_module
from harness import METHODS, attach
from harness.accounting import step_flops
from harness.config import make_config
from harness.runner import build_specs
from harness.task import Example
from harness.train import TrainConfig, train
from methods.hydralora import mix_heads
from methods.lora import LoraLinear
from tasks.commonsense.scoring import continuation_ids
from tasks.lm import encode
from tests.conftest import ALL_METHODS, CharTokenizer, meta_of, text_recipe, tiny_llama

EXAMPLES = [Example(f"Q{i}: what is {i} plus one? A:", f" it is {i + 1}", "toy") for i in range(40)]
VAL = [Example("Q: what is 7 plus one? A:", " it is 8", "toy")] * 4
CONFIG = TrainConfig(
    steps=3, micro_batch_size=4, grad_accum=2, lr=5e-3, warmup_steps=0, cutoff_len=64, train_on_inputs=False
)


class BosTokenizer(CharTokenizer):
    """Adds a BOS token (id 2) unless told not to, as Llama-3's tokenizer does."""

    bos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = super().__call__(text)["input_ids"]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def test_training_and_scoring_tokenise_identically_with_a_bos_adding_tokenizer():
    tok = BosTokenizer()
    example = EXAMPLES[3]
    encoded = encode(tok, example, 64, train_on_inputs=False)
    context = tok(example.prompt, add_special_tokens=False)["input_ids"]
    scored = context + continuation_ids(tok, example.prompt, example.target)  # what choice/cloze feed the model
    assert encoded.input_ids[: len(scored)] == scored  # no BOS in training that scoring lacks
    supervised = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != -100]
    assert supervised[:-1] == continuation_ids(tok, example.prompt, example.target)  # + EOS


def _slow_validation(monkeypatch) -> None:
    """A fake clock for the loop: only no-grad loss calls (validation, Reducer rollouts) take time, 1 s
    each, so what each timer holds is exact whatever the machine's load."""
    now = [0.0]
    real = lm_module.loss_sum

    def slow(model, batch, keep, use_cache=False):
        if not torch.is_grad_enabled():
            now[0] += 1.0
        return real(model, batch, keep, use_cache)

    monkeypatch.setattr(lm_module, "loss_sum", slow)
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: now[0])


def test_final_validation_is_not_hook_time(monkeypatch, char_tokenizer):
    _slow_validation(monkeypatch)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    result = train(adapter.model, text_recipe(char_tokenizer, CONFIG), adapter, EXAMPLES, VAL, CONFIG, progress=False)
    assert result.hook_val_s == 0.0  # no Reducer: no hook validation at all
    assert result.final_val_s == 1.0  # the one validation batch, reported on its own
    assert result.train_s == 0.0 and result.final_val_loss is not None


def test_train_time_excludes_the_reducer_rollouts(monkeypatch, char_tokenizer):
    _slow_validation(monkeypatch)
    adapter = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=dict(k=2, interval=1))
    result = train(adapter.model, text_recipe(char_tokenizer, CONFIG), adapter, EXAMPLES, VAL, CONFIG, progress=False)
    rounds = len(adapter.reducer.trajectory)
    assert rounds == 2  # steps 1 and 2; none at step 0
    assert result.hook_val_s == rounds * 3  # 3 rollouts a round, 1 s each
    assert result.train_s == 0.0 and result.final_val_s == 1.0  # neither holds the rollouts


def test_flops_are_per_optimizer_step_with_each_micro_batch_kept():
    model = tiny_llama()
    config = make_config(METHODS.get("lora").config_cls, {"targets": "q_proj,v_proj", "r": 4}, "lora")
    recipe = text_recipe(CharTokenizer(), CONFIG)
    one = step_flops(meta_of(model), "lora", config, [[4, 20, 10]], recipe)
    two = step_flops(meta_of(model), "lora", config, [[4, 20, 10], [4, 12, 6]], recipe)
    assert two["micro_batches"][0] == one["micro_batches"][0]
    assert two["total"] == one["total"] + two["micro_batches"][1]["total"] > one["total"]
    assert two["adapter"] == sum(m["adapter"] for m in two["micro_batches"]) > 0
    # the step only (the runner's check before training that it can be counted): the same totals, no share
    step = step_flops(meta_of(model), "lora", config, [[4, 20, 10], [4, 12, 6]], recipe, adapter_share=False)
    assert step == {**two, "adapter": None, "micro_batches": [{**m, "adapter": None} for m in two["micro_batches"]]}


def test_two_micro_batches_on_the_fast_path_count_each_as_alone():
    model = tiny_llama()
    config = make_config(METHODS.get("hydralora").config_cls, {"targets": "q_proj,k_proj,v_proj", "r": 4}, "hydralora")
    recipe = text_recipe(CharTokenizer(), CONFIG)
    one = step_flops(meta_of(model), "hydralora", config, [[4, 12, 6]], recipe, fast_path=True)
    two = step_flops(meta_of(model), "hydralora", config, [[4, 20, 10], [4, 12, 6]], recipe, fast_path=True)
    assert two["micro_batches"][1] == one["micro_batches"][0]


FULL = {"targets": "q_proj,k_proj,v_proj,gate_proj,up_proj,down_proj", "r": 4, "dropout": 0.1, "reducer": None}


@pytest.mark.parametrize("fast", [False, True])
def test_lora_adapter_flops_are_exactly_its_products(fast):
    """Every wrapper: x·Aᵀ and h·Bᵀ forward, B's and A's gradients and h's, and x's gradient through A
    where x needs one (not layer 0's q, k and v, whose input comes from the frozen embeddings). The old
    per-module split counted layer 0's q/k/v backward twice on the reference path and missed part of the
    adapters' work on the fast path (q, k and v's first matmul made once, in one node for the three)."""
    model = tiny_llama()
    config = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    rows, tokens = 4, 20
    flops = step_flops(meta_of(model), "lora", config, [[rows, tokens, 10]], text_recipe(CharTokenizer(), CONFIG), fast)
    adapter = attach(tiny_llama(), "lora", config=config)
    expected = 0
    for name, layer in adapter.layers.items():
        d_in, d_out, n = layer.base.in_features, layer.base.out_features, 2 * rows * tokens * config.r
        input_grad = not (".layers.0." in f".{name}" and name.split(".")[-1] in ("q_proj", "k_proj", "v_proj"))
        expected += n * (2 * d_in + 3 * d_out) + (n * d_in if input_grad else 0)
    assert flops["adapter"] == expected


@pytest.mark.parametrize("method", ALL_METHODS)
def test_what_is_not_the_adapters_is_the_same_for_every_method_on_either_path(method):
    """The base's share of a step (total less the adapters') depends on the targets only, not on the method
    or the path (MoSLoRA's fast path computes fewer adapter FLOPs; its base share is the same)."""
    recipe, shape = text_recipe(CharTokenizer(), CONFIG), [[4, 20, 10]]
    lora = step_flops(
        meta_of(tiny_llama()), "lora", make_config(METHODS.get("lora").config_cls, FULL, "lora"), shape, recipe
    )
    config = make_config(METHODS.get(method).config_cls, FULL, method)
    for fast in (False, True):
        flops = step_flops(meta_of(tiny_llama()), method, config, shape, recipe, fast_path=fast)
        assert flops["total"] - flops["adapter"] == lora["total"] - lora["adapter"], (fast, flops, lora)
        assert flops["adapter"] > 0


def test_the_split_holds_with_the_reducer_freezing_heads_and_leaves_nothing_on_the_replica(monkeypatch):
    """With the Reducer's unselected heads frozen (as in a real step) the base's share is still LoRA's; the
    bypassed pass leaves no hook and no forward of its own on any wrapper (a plugin's own is put back)."""
    import harness.adapter as adapter_module
    from harness.adapter import AdapterLinear

    recipe, shape = text_recipe(CharTokenizer(), CONFIG), [[4, 20, 10]]
    lora_config = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    lora = step_flops(meta_of(tiny_llama()), "lora", lora_config, shape, recipe)
    ran = []

    def attach_with_own_forward(*args, **kwargs):  # a plugin whose wrapper sets a forward on its instance
        attached = real_attach(*args, **kwargs)
        first = next(iter(attached.layers.values()))
        first.forward = lambda x: ran.append(1) or AdapterLinear.forward(first, x)
        return attached

    real_attach = adapter_module.attach
    monkeypatch.setattr(adapter_module, "attach", attach_with_own_forward)  # step_flops imports it when it runs
    replica = meta_of(tiny_llama())
    config = make_config(METHODS.get("effilora").config_cls, dict(FULL, reducer={"k": 2, "interval": 1}), "effilora")
    flops = step_flops(replica, "effilora", config, shape, recipe)
    assert flops["total"] - flops["adapter"] == lora["total"] - lora["adapter"] and flops["adapter"] > 0
    wrappers = [m for m in replica.model.modules() if isinstance(m, AdapterLinear)]
    assert any(not p.requires_grad for m in wrappers for p in m.reducer_parameters())  # some heads frozen
    assert wrappers and not any(m._forward_hooks for m in wrappers)
    assert ["forward" in vars(m) for m in wrappers] == [True] + [False] * (len(wrappers) - 1) and ran


def test_a_reducers_step_is_counted_at_one_fixed_draw_whatever_the_seed_and_a_sweep_takes_the_same():
    """From a review: the Reducer's layers of a counted step were drawn from the run's random state, and with LoRA-FA
    the step's cost depends on the draw (the backward stops at the lowest trained layer): each seed counted another
    number (14,069,760 against 16,148,480 here), a sweep's later seeds took the first seed's from the cache, and
    recount_flops could rewrite it. The count now takes one draw from a generator of its own, named in the record."""
    import harness.runner as runner

    base = tiny_llama()

    class Task:
        def meta_replica(self, loaded):
            return meta_of(base)

    task = Task()
    recipe = text_recipe(CharTokenizer(), CONFIG)
    options = {"targets": "q_proj,v_proj,up_proj,down_proj", "r": 4, "reducer": {"k": 2, "selection": "random"}}
    config = make_config(METHODS.get("lora_fa").config_cls, options, "lora_fa")
    counts = set()
    for seed in (0, 1, 2, 3):  # as run_one: the run's seed set before the count; the Reducer draws from it
        torch.manual_seed(seed)
        alone = runner._count_flops(task, None, "lora_fa", config, [[4, 20, 10]], recipe, False)
        torch.manual_seed(seed)
        swept = runner._count_flops(task, None, "lora_fa", config, [[4, 20, 10]], recipe, False, ("one sweep",))
        assert swept == alone and alone["reducer_layers"] == swept["reducer_layers"]
        counts.add((alone["total"], tuple(alone["reducer_layers"])))
    assert len(counts) == 1
    from harness.bench_cost import flops as bench_flops  # harness bench counts at the same draw (a re-review)

    contender = SimpleNamespace(source="ours", method="lora_fa", config=config, fast_path=False, round_fn=None)
    bench = set()
    for seed in (0, 1, 2, 3):  # as bench does with --seed N
        torch.manual_seed(seed)
        bench.add(bench_flops(contender, base, SimpleNamespace(batch_size=4, seq_len=20))[0])
    assert len(bench) == 1
    torch.manual_seed(5)
    generator_state = torch.random.get_rng_state()
    runner._count_flops(task, None, "lora_fa", config, [[4, 20, 10]], recipe, False)
    assert torch.equal(torch.random.get_rng_state(), generator_state)  # the run's own random state untouched


def _call_q_again(replica, when=lambda: True) -> None:
    """After layer 0's attention, call its q_proj once more under no_grad (a second call of one wrapper in a
    step, the last one without a gradient), when ``when()`` says so."""
    layer = replica.model.model.layers[0]
    saved = {}
    layer.input_layernorm.register_forward_hook(lambda m, args, out: saved.__setitem__("x", out))

    def again(module, args, out):
        if when():
            with torch.no_grad():
                module.q_proj(saved["x"])

    layer.self_attn.register_forward_hook(again)


def test_each_call_of_a_wrapper_keeps_its_own_gradient_and_a_step_that_changes_is_refused():
    recipe, rows, tokens = text_recipe(CharTokenizer(), CONFIG), 4, 20
    config = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    once = step_flops(meta_of(tiny_llama()), "lora", config, [[rows, tokens, 10]], recipe)
    replica = meta_of(tiny_llama())
    _call_q_again(replica)
    twice = step_flops(replica, "lora", config, [[rows, tokens, 10]], recipe)
    d = tiny_llama().config.hidden_size  # q_proj: d x d
    # the extra call adds its forward only: the base's d x d product and the adapter's two rank-r products
    assert twice["total"] - twice["adapter"] == once["total"] - once["adapter"] + 2 * rows * tokens * d * d
    assert twice["adapter"] == once["adapter"] + 2 * rows * tokens * config.r * 2 * d
    calls = []
    replica = meta_of(tiny_llama())
    _call_q_again(replica, when=lambda: not calls.append(1) and len(calls) == 1)  # in the adapted pass only
    with pytest.raises(RuntimeError, match=r"called 2 times in the step and 1 times with the adapters bypassed"):
        step_flops(replica, "lora", config, [[rows, tokens, 10]], recipe)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_flops_are_counted_on_the_path_the_run_takes(method):
    """The meta replica's count equals FlopCounterMode's on a real CPU step through the same path: the fast
    path (fused first matmuls, base fused in on a CPU) or the reference path; MoSLoRA's fast path computes
    B·M once instead of M on every token, so its two paths differ."""
    from torch.utils.flop_counter import FlopCounterMode

    def eager() -> torch.nn.Module:  # CPU sdpa's fused kernel is not counted by FlopCounterMode; eager's bmm is
        model = tiny_llama()
        model.set_attn_implementation("eager")
        return model

    model = eager()
    options = {"targets": "q_proj,k_proj,v_proj,gate_proj,up_proj,down_proj", "r": 4, "dropout": 0.1, "reducer": None}
    config = make_config(METHODS.get(method).config_cls, options, method)
    recipe = text_recipe(CharTokenizer(), CONFIG)
    shape = [4, 20, 10]
    counted = {}
    for fast in (False, True):
        meta = step_flops(meta_of(model), method, config, [shape], recipe, fast_path=fast)["total"]
        real = eager()
        adapter = attach(real, method, config=config)
        adapter.use_fast_path(fast)
        real.train()
        batch = {
            k: torch.zeros_like(v, device="cpu") if torch.is_tensor(v) else v
            for k, v in recipe.meta_batch(shape).items()
        }
        with FlopCounterMode(display=False) as counter:
            recipe.loss_sum(real, batch).backward()
        assert meta == counter.get_total_flops() > 0, (fast, meta, counter.get_total_flops())
        counted[fast] = meta
    if method == "moslora":  # the two paths really differ here: the test tells them apart
        assert counted[True] != counted[False], counted


@pytest.mark.parametrize("method", ALL_METHODS)
def test_the_record_holds_the_fully_resolved_method_config(method):
    [spec] = build_specs("commonsense", [method], [0], "embedded")
    default = make_config(METHODS.get(method).config_cls, {}, method).to_dict()
    assert spec.method_options == default  # every option, defaults included
    assert {"r", "alpha", "dropout", "targets", "heads", "reducer"} <= set(spec.method_options)
    # the run id hashes the resolved config: naming a default changes nothing, another value re-runs
    [same] = build_specs("commonsense", [method], [0], "embedded", method_options={"dropout": default["dropout"]})
    [other] = build_specs("commonsense", [method], [0], "embedded", method_options={"dropout": 0.2})
    assert same.run_id == spec.run_id != other.run_id
    # and the stored config rebuilds the same adapter
    assert make_config(METHODS.get(method).config_cls, spec.method_options, method).to_dict() == default


def test_the_reducer_does_not_score_at_step_zero():
    adapter = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=dict(k=2, interval=5))
    calls: list[int] = []
    for step in range(6):
        adapter.on_step_begin(step, lambda: calls.append(step) or 1.0)
    assert sorted(set(calls)) == [5]
    assert [t["step"] for t in adapter.reducer.trajectory] == [5]


@pytest.mark.parametrize(("method", "options"), [("hydralora", {}), ("effilora", {"router_input": "hidden"})])
def test_routers_read_the_input_before_dropout(method, options):
    adapter = attach(tiny_llama(), method, targets="q_proj", r=4, dropout=0.5, reducer=None, **options)
    layer = next(iter(adapter.layers.values())).train()
    with torch.no_grad():
        for p in adapter.adapter_parameters():
            p.normal_(0, 0.3)
    x = torch.randn(3, 5, layer.site.d_in)
    torch.manual_seed(7)
    actual = layer.delta(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, 0.5, training=True)  # the same mask delta() draws
    weights = torch.softmax(F.linear(x, layer.lora_router), dim=-1)  # clean x
    expected = F.linear(mix_heads(weights, F.linear(dropped, layer.lora_A)), layer.lora_B)
    torch.testing.assert_close(actual, expected)


def test_train_config_hash_covers_training_settings():
    [a] = build_specs("commonsense", ["lora"], [0], "smoke")
    [b] = build_specs("commonsense", ["lora"], [0], "smoke", train_overrides={"lr": 0.5})
    assert a.run_id != b.run_id and dataclasses.asdict(b.train)["lr"] == 0.5


def test_the_reducer_rollouts_are_kept_by_shape_with_the_layers_they_turned_off(char_tokenizer):
    """What the Reducer's scoring rounds ran, for counting their FLOPs: every rollout's validation batch shape
    and, where a suppressed layer's adapter is off (suppression 0), which wrappers those were."""
    recipe = text_recipe(char_tokenizer, CONFIG)
    val_shape = recipe.shape(recipe.collate([recipe.encode(e) for e in VAL]))
    adapter = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=dict(k=2, interval=1))
    result = train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, progress=False)
    assert result.hook_val_forwards == [{"shape": val_shape, "skipped": [], "count": 6}]  # 2 rounds x 3 rollouts

    options = dict(k=2, interval=1, suppression=0.0, n_suppressed=1)
    adapter = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=options)
    result = train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, progress=False)
    assert sum(f["count"] for f in result.hook_val_forwards) == 6
    for forward in result.hook_val_forwards:  # one layer off a rollout: its q and v wrappers
        assert forward["shape"] == val_shape and len(forward["skipped"]) == 2
        assert {name.split(".")[-1] for name in forward["skipped"]} == {"q_proj", "v_proj"}
        assert len({name.rsplit(".", 1)[0] for name in forward["skipped"]}) == 1

    lora = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    assert train(lora.model, recipe, lora, EXAMPLES, VAL, CONFIG, progress=False).hook_val_forwards == []


def test_a_hook_forward_counts_the_products_of_a_forward_without_the_layers_turned_off():
    from harness.accounting import hook_forward_flops

    config = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    recipe, rows, tokens = text_recipe(CharTokenizer(), CONFIG), 4, 20
    names = list(attach(tiny_llama(), "lora", config=config).layers)
    off = [n for n in names if n.endswith("layers.1.self_attn.q_proj")]
    shape = [rows, tokens, 10]
    full, less = hook_forward_flops(
        meta_of(tiny_llama()),
        "lora",
        config,
        [{"shape": shape, "skipped": []}, {"shape": shape, "skipped": off}],
        recipe,
    )
    d = tiny_llama().config.hidden_size
    assert full - less == 2 * rows * tokens * config.r * (d + d)  # x·Aᵀ and h·Bᵀ of that wrapper, forward only
    step = step_flops(meta_of(tiny_llama()), "lora", config, [shape], recipe)
    assert step["total"] / 3.5 < full < step["total"] / 2  # a forward: about a third of forward and backward


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_run_keeps_the_rollouts_before_its_checkpoint_or_says_it_cannot(
    tmp_path, char_tokenizer, old_checkpoint
):
    from harness.train import CHECKPOINT, Cancelled

    recipe = text_recipe(char_tokenizer, CONFIG)
    reducer = dict(k=2, interval=1)
    adapter = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=reducer)
    steps = []
    with pytest.raises(Cancelled):  # stopped after step 2: the round at step 1 is in the checkpoint
        train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, tmp_path, progress=False,
              should_stop=lambda: steps.append(1) or len(steps) == 2)  # fmt: skip
    if old_checkpoint:  # written before the forwards were kept
        saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
        del saved["state"]["hook_val_forwards"]
        torch.save(saved, tmp_path / CHECKPOINT)
    fresh = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=reducer)
    result = train(fresh.model, recipe, fresh, EXAMPLES, VAL, CONFIG, tmp_path, progress=False)
    assert result.resumed_from == 2
    if old_checkpoint:
        assert result.hook_val_forwards is None  # not known: not counted as fewer
    else:
        assert [f["count"] for f in result.hook_val_forwards] == [6]  # 3 before the stop, 3 after


def test_a_run_without_hooks_resumed_from_an_old_checkpoint_knows_it_ran_none(tmp_path, char_tokenizer):
    from harness.train import CHECKPOINT, Cancelled

    recipe = text_recipe(char_tokenizer, CONFIG)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    steps = []
    with pytest.raises(Cancelled):
        train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, tmp_path, progress=False,
              should_stop=lambda: steps.append(1) or len(steps) == 2)  # fmt: skip
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del saved["state"]["hook_val_forwards"]  # written before they were kept, by a run whose hooks spent no time
    torch.save(saved, tmp_path / CHECKPOINT)
    fresh = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    result = train(fresh.model, recipe, fresh, EXAMPLES, VAL, CONFIG, tmp_path, progress=False)
    assert result.resumed_from == 2 and result.hook_val_forwards == []


class _Penalised(LoraLinear):
    """LoRA whose wrappers each add a product of their factors to the loss, times 0 (FLOPs to count, no gradient)."""

    def extra_loss(self):  # noqa: ANN201
        return 0.0 * (self.lora_B @ self.lora_A).sum()


class _Constant(LoraLinear):
    def extra_loss(self):  # noqa: ANN201
        return 5.0  # a plain float: added as it is


class _Pulled(LoraLinear):
    def extra_loss(self):  # noqa: ANN201
        return 0.5 * self.lora_B.sum()  # a gradient of 0.5 on every element of B


def _first_step_grads(cls, recipe, config, examples=EXAMPLES) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Each trainable tensor's gradient as the optimizer's first step sees it, and the loss curve."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    adapter = attach(tiny_llama(), cls, targets="q_proj", r=2)
    names = {id(p): n for n, p in adapter.model.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def keep(optimizer, args, kwargs):  # noqa: ANN001, ANN202
        if not grads:
            grads.update({names[id(p)]: p.grad.clone() for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(keep)
    try:
        result = train(adapter.model, recipe, adapter, examples, VAL, config, progress=False)
    finally:
        handle.remove()
    return grads, [loss for _, loss in result.loss_curve]


def test_a_methods_extra_loss_joins_the_training_loss_and_its_gradient_once_a_step(char_tokenizer):
    config = dataclasses.replace(CONFIG, max_grad_norm=0.0)  # the gradients as backward made them
    recipe = text_recipe(char_tokenizer, config)  # two micro-batches a step: each adds half
    plain, plain_curve = _first_step_grads(LoraLinear, recipe, config)
    pulled, _ = _first_step_grads(_Pulled, recipe, config)
    constant, constant_curve = _first_step_grads(_Constant, recipe, config)
    b_names = [n for n in plain if n.endswith("lora_B")]
    assert len(b_names) == 4
    for name in plain:  # B's gradient moves by 0.5 (two halves), A's (B = 0 at the first step) not at all
        expected = plain[name] + (0.5 if name in b_names else 0.0)
        torch.testing.assert_close(pulled[name], expected, rtol=0, atol=1e-6, msg=name)
    # four wrappers x 5 on every step's recorded loss; the float adds no gradient
    assert [b - a for a, b in zip(plain_curve, constant_curve, strict=True)] == pytest.approx([20.0] * 3)
    assert all(torch.equal(constant[n], plain[n]) for n in plain)

    # a micro-batch with nothing supervised adds no term: the step's other one then adds all of it
    empty = Example("Q: " + "x" * 80, " it is 1", "toy")  # cut off before its answer at cutoff_len 64
    first = train_module._micro_batches(8, config, _OneProcess(), config.steps)[0][0]  # step 0's first micro-batch
    cut = [empty if i in first else EXAMPLES[i] for i in range(8)]
    assert recipe.units(recipe.collate([recipe.encode(cut[i]) for i in first])) == 0
    _, cut_plain = _first_step_grads(LoraLinear, recipe, config, cut)
    _, cut_constant = _first_step_grads(_Constant, recipe, config, cut)
    assert [b - a for a, b in zip(cut_plain, cut_constant, strict=True)] == pytest.approx([20.0] * 3)


class _OneProcess:
    num_processes, process_index = 1, 0


def test_a_methods_extra_loss_flops_are_counted_in_the_adapters_share(char_tokenizer):
    recipe = text_recipe(char_tokenizer, CONFIG)
    config = make_config(METHODS.get("lora").config_cls, {"targets": "q_proj", "r": 4}, "lora")
    plain = step_flops(meta_of(tiny_llama()), LoraLinear, config, [[4, 20, 10]], recipe)
    penalised = step_flops(meta_of(tiny_llama()), _Penalised, config, [[4, 20, 10]], recipe)
    d, layers = tiny_llama().config.hidden_size, tiny_llama().config.num_hidden_layers
    # B @ A forward and its two gradients, in each of the 4 wrappers: the adapters' share, not the base's
    assert penalised["adapter"] - plain["adapter"] == penalised["total"] - plain["total"] == layers * 3 * 2 * d * 4 * d


def test_a_reduced_lora_run_is_compared_with_plain_lora_not_with_itself():
    """From a review: a ``lora`` run with a Reducer took its own count as the LoRA reference (relative 1.0), where
    every other method's reference is LoRA without one (``_common`` drops the Reducer)."""
    from harness.runner import flops_record

    task = SimpleNamespace(meta_replica=lambda loaded: meta_of(tiny_llama()))
    recipe, shape = text_recipe(CharTokenizer(), CONFIG), [[4, 20, 10]]
    plain = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    reduced = make_config(METHODS.get("lora").config_cls, dict(FULL, reducer={"k": 1, "interval": 1}), "lora")
    alone = flops_record(task, None, "lora", plain, shape, recipe, False)
    assert alone["lora_total"] == alone["total"] and alone["relative_to_lora"] == 1.0
    flops = flops_record(task, None, "lora", reduced, shape, recipe, False)
    assert flops["total"] < alone["total"]  # the unselected layers' adapters train nothing: fewer FLOPs
    assert flops["lora_total"] == alone["total"] and flops["relative_to_lora"] == flops["total"] / alone["total"]


def test_a_step_that_cannot_be_counted_keeps_its_shapes(monkeypatch):
    """From a review: a step the replica could not count kept only why, losing the first step's shapes, so that
    ``recount_flops`` could never count it."""
    import harness.runner_flops as runner_flops

    def broken(*args, **kwargs):
        raise RuntimeError("the meta replica cannot run this plugin")

    monkeypatch.setattr(runner_flops, "step_flops", broken)
    task = SimpleNamespace(meta_replica=lambda loaded: None)
    flops = runner_flops.flops_record(task, None, "lora", None, [[4, 20, 10], [4, 12, 6]], None, False)
    assert flops["status"] == "not counted" and "cannot run this plugin" in flops["reason"]
    assert flops["micro_batches"] == [{"shape": [4, 20, 10]}, {"shape": [4, 12, 6]}]


def test_the_cuda_baseline_is_read_after_the_cache_of_an_earlier_run_is_emptied(monkeypatch):
    """From a review: the reserved baseline was read with the caching allocator still holding what an earlier run
    in the process freed; the next run reused those blocks and read as reserving ~0 above it (no GPU needed: the
    calls are recorded)."""
    from harness.accounting import MemoryMeter

    calls: list[str] = []
    reserved = [8.0]  # an earlier run's freed blocks, cached, until empty_cache hands them back

    def empty_cache():
        calls.append("empty_cache")
        reserved[0] = 1.0

    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: calls.append(name))
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: calls.append("memory_allocated") or 1.0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: calls.append("memory_reserved") or reserved[0])
    meter = MemoryMeter(torch.device("cuda"))
    assert meter.base == (1.0, 1.0)
    assert calls.index("empty_cache") < calls.index("memory_reserved")
    assert calls.index("reset_peak_memory_stats") < calls.index("memory_reserved")


def test_without_proc_the_memory_kind_says_it_is_the_lifetime_peak(monkeypatch, tmp_path):
    """From a review: without /proc (macOS) the resident size read was ``ru_maxrss``, the process's lifetime peak,
    yet the record called it ``process_rss`` (sampled after each backward) and gave a mean of it."""
    import harness.accounting as accounting

    monkeypatch.setattr(accounting, "PROC", str(tmp_path / "no-proc"))
    meter = accounting.MemoryMeter(torch.device("cpu"))
    meter.sample()
    meter.sample()
    summary = meter.summary()
    assert summary["kind"] == "process_maxrss_lifetime" and "mean_rss_gb" not in summary
    assert summary["peak_rss_gb"] >= summary["start_rss_gb"] > 0
    monkeypatch.undo()
    assert accounting.MemoryMeter(torch.device("cpu")).summary()["kind"] != "process_maxrss_lifetime"  # /proc read


def test_the_environment_names_the_diffusers_version(monkeypatch):
    """From a review: diffusers makes every diffusion image, and records named torch, transformers and peft only."""
    from importlib.metadata import PackageNotFoundError, version

    import harness.accounting as accounting

    try:
        installed = version("diffusers")
    except PackageNotFoundError:
        installed = None
    assert accounting.environment()["diffusers"] == installed
    monkeypatch.setattr(accounting, "_installed", lambda package: None)
    assert accounting.environment()["diffusers"] is None  # not installed: named as absent, not left out


def test_the_peak_is_trainings_the_final_validation_is_left_out():
    """From a review: on a GPU the allocator's peak, read when the summary is made, held the final validation that
    runs after training (at its own batch size); the CPU's did not. ``freeze`` keeps training's peak."""
    from harness.accounting import MemoryMeter

    meter = MemoryMeter(torch.device("cpu"))
    meter.sample()
    meter.freeze()
    kept = meter.summary()["peak_rss_gb"]
    big = torch.ones(64 * 1024 * 1024)  # 256 MB after training ends
    meter.before["peaks"] = [1e15, 1e15]  # nothing read after freeze counts, not even a carried peak
    assert meter.summary()["peak_rss_gb"] == kept and big.sum() > 0


def test_a_flop_count_is_taken_again_for_every_seed():
    """From a review: the seed inside the training settings and task options made every seed's key new, so a
    sweep counted every step again for each seed (the comment says it does not)."""
    from harness.runner import build_specs, flops_settings

    loaded = SimpleNamespace(model=tiny_llama())
    s0, s1 = build_specs("commonsense", ["lora"], [0, 1], "smoke")
    assert flops_settings(s0, loaded) == flops_settings(s1, loaded)
    [other] = build_specs("commonsense", ["lora"], [0], "smoke", train_overrides={"lr": 0.123})
    assert flops_settings(other, loaded) != flops_settings(s0, loaded)  # another setting: another key


@pytest.mark.parametrize("r", [4, 64])
def test_lora_is_counted_as_the_reference_at_an_r_above_a_targets_side_a_plugin_trains_at(monkeypatch, r):
    """From a review: a method whose r is no rank (``rank_bounded = False``, VeRA-style) trains at an r above a
    target's smaller side, where attach refuses LoRA: its reference count failed with the meta-device warning and
    the record kept ``lora_total`` and ``relative_to_lora`` null. LoRA's products at that r are counted as at any
    (r=4: below every side, the bounded case the count was right for)."""
    from harness import AdapterConfig, AdapterLinear
    from harness.runner import flops_record

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only

    @dataclasses.dataclass(frozen=True)
    class BasisConfig(AdapterConfig):
        pass

    @METHODS.register("basis_like")
    class Basis(AdapterLinear):  # a frozen r x d_in basis, r trained scales, a trained d_out x r
        config_cls = BasisConfig
        rank_bounded = False

        def __init__(self, base, config, site, shared) -> None:  # noqa: ANN001
            super().__init__(base, config, site, shared)
            self.register_buffer("basis", torch.empty(config.r, site.d_in, device=base.weight.device))
            self.lora_d = self.new_param(config.r, init="zeros")
            self.lora_out = self.new_param(site.d_out, config.r)

        def delta(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(F.linear(self.lora_dropout(x), self.basis) * self.lora_d, self.lora_out)

    model, rows, tokens = tiny_llama(), 4, 20
    if r > 16:  # v_proj's smaller side (32 in, 16 out): LoRA is refused training at it
        with pytest.raises(ValueError, match="use r <= 16 "):
            attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=r)
    task = SimpleNamespace(meta_replica=lambda loaded: meta_of(model))
    config = make_config(BasisConfig, {"targets": "q_proj,v_proj", "r": r}, "basis_like")
    recipe = text_recipe(CharTokenizer(), CONFIG)
    flops = flops_record(task, None, "basis_like", config, [[rows, tokens, 10]], recipe, False)
    # LoRA's products at r (as test_lora_adapter_flops_are_exactly_its_products counts them) on the same base step
    lora = 0
    for name, linear in model.named_modules():
        if name.split(".")[-1] in ("q_proj", "v_proj"):
            d_in, d_out, n = linear.in_features, linear.out_features, 2 * rows * tokens * r
            lora += n * (2 * d_in + 3 * d_out) + (0 if ".layers.0." in f".{name}" else n * d_in)
    assert flops["lora_total"] == flops["total"] - flops["adapter"] + lora
    assert flops["relative_to_lora"] == flops["total"] / flops["lora_total"]


def test_a_reason_the_flops_warning_cuts_is_cut_at_a_words_end(monkeypatch, capsys):
    """From a review: the warning cut the reason at 200 characters, mid-number ("use r <= 16" printed as
    "use r <= 1")."""
    import harness.runner_flops as runner_flops

    reason = "w" * 177 + " use r <= 16 (--rank)"  # "ValueError: " then this: the 200th character is 16's 1

    def refused(*args, **kwargs):
        raise ValueError(reason)

    monkeypatch.setattr(runner_flops, "step_flops", refused)
    task = SimpleNamespace(meta_replica=lambda loaded: None)
    flops = runner_flops._count_flops(task, None, "lora", None, [[4, 20, 10]], None, False)
    assert flops["reason"] == f"ValueError: {reason}"  # the record keeps it whole
    err = capsys.readouterr().err
    assert "r <= 1)" not in err and f"(ValueError: {'w' * 177} use r <= ...): the model" in err


class _ClassifyLast:
    """A plugin task's recipe (a review's): the last real token's logits over two labels, its batch's mask passed to
    the model; ``on_meta`` decides what it passes there: "mask", "no mask" (and use_cache=True), or "item" (its own
    ``.item()``)."""

    def __init__(self, on_meta: str) -> None:
        self.on_meta = on_meta

    def loss_sum(self, model, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.is_meta and self.on_meta == "no mask":  # what the hint advises
            logits = model(input_ids=ids, use_cache=True).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits
        last = mask.sum(1) - 1
        if self.on_meta == "item":
            last = last - int(last.min().item()) * 0
        cls = logits[torch.arange(ids.shape[0], device=ids.device), last][:, :2]
        return F.cross_entropy(cls, batch["labels"], reduction="sum")

    def meta_batch(self, shape):
        rows, tokens = shape
        return {
            "input_ids": torch.zeros(shape, dtype=torch.long, device="meta"),
            "attention_mask": torch.ones(shape, dtype=torch.long, device="meta"),
            "labels": torch.zeros(rows, dtype=torch.long, device="meta"),
        }


def test_a_model_given_an_attention_mask_on_meta_is_named_in_the_flops_warning(capsys):
    """From a review: a plugin task passing its batch's attention_mask to a transformers model had its FLOPs "not
    counted (RuntimeError: Tensor.item() cannot be called on meta tensors)" with advice for methods only (no
    .item()): transformers' causal-mask check reads the mask by value. The warning says what to do, which counts;
    a recipe's own .item() on meta is not told about masks."""
    import harness.runner_flops as runner_flops

    base = tiny_llama()
    task = SimpleNamespace(meta_replica=lambda loaded: meta_of(base))
    config = make_config(METHODS.get("lora").config_cls, {"targets": "q_proj,v_proj", "r": 2}, "lora")
    hint = "call it there without the mask and with use_cache=True, as tasks/lm.py does"
    flops = runner_flops._count_flops(task, None, "lora", config, [[4, 10]], _ClassifyLast("mask"), False)
    assert flops == {"status": "not counted", "reason": "RuntimeError: Tensor.item() cannot be called on meta tensors"}
    err = capsys.readouterr().err
    assert "no .item() or numpy); here transformers' causal-mask check read a value on the meta device" in err, err
    assert hint in err
    counted = runner_flops._count_flops(task, None, "lora", config, [[4, 10]], _ClassifyLast("no mask"), False)
    assert counted["total"] > counted["adapter"] > 0 and capsys.readouterr().err == ""  # the advice counts
    base.set_attn_implementation("eager")  # the mask is not read by value: the same count with it as without
    assert runner_flops._count_flops(task, None, "lora", config, [[4, 10]], _ClassifyLast("mask"), False) == counted
    flops = runner_flops._count_flops(task, None, "lora", config, [[4, 10]], _ClassifyLast("item"), False)
    assert flops["status"] == "not counted"
    err = capsys.readouterr().err
    assert "no .item() or numpy)" in err and "causal-mask" not in err, err


def test_a_hook_forward_puts_each_gate_back_before_the_next_forward():
    """Pins that ``hook_forward_flops`` restores the gates of the layers one forward turned off, so that a later forward
    (a rollout turning off none) counts every adapter. A mutation test found it: without the ``finally`` restoring
    ``layer.gate`` every test passed, and a Reducer run's later rollouts were counted short."""
    from harness.accounting import hook_forward_flops

    config = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    recipe, shape = text_recipe(CharTokenizer(), CONFIG), [4, 20, 10]
    off = [n for n in attach(tiny_llama(), "lora", config=config).layers if n.endswith("layers.1.self_attn.q_proj")]
    [alone] = hook_forward_flops(meta_of(tiny_llama()), "lora", config, [{"shape": shape, "skipped": []}], recipe)
    less, full = hook_forward_flops(
        meta_of(tiny_llama()),
        "lora",
        config,
        [{"shape": shape, "skipped": off}, {"shape": shape, "skipped": []}],
        recipe,
    )
    assert full == alone > less


def test_a_reducers_step_is_counted_at_the_draw_of_seed_zero():
    """Pins which draw the count takes (``REDUCER_COUNT_SEED`` = 0: every committed record counts at it). A mutation
    test found that any other fixed seed passed every test, where it changes LoRA-FA's counts and makes
    ``recount_flops`` rewrite committed records."""
    from harness.accounting import step_flops

    options = {"targets": "q_proj,v_proj,up_proj,down_proj", "r": 4, "reducer": {"k": 2, "selection": "random"}}
    config = make_config(METHODS.get("lora_fa").config_cls, options, "lora_fa")
    flops = step_flops(meta_of(tiny_llama()), "lora_fa", config, [[4, 20, 10]], text_recipe(CharTokenizer(), CONFIG))
    reducer = attach(tiny_llama(), "lora_fa", config=config).reducer
    assert flops["reducer_layers"] == reducer.select(torch.Generator().manual_seed(0))


def test_a_wrapper_whose_output_needs_no_gradient_adds_no_backward_to_the_bypassed_step(monkeypatch):
    """Pins ``_record``'s ``out.requires_grad``: layer 0's q/k/v with their adapters frozen (as the Reducer freezes an
    unselected layer) add their forward products only, and the step with the adapters bypassed must not backpropagate
    through the attention where the adapted step did not. A mutation test found that recording every output as
    needing a gradient passed every test (the bypassed pass then counted layer 0's attention backward as the base's,
    taking it off the adapters' share)."""
    import harness.adapter as adapter_module
    from harness.accounting import step_flops

    real_attach = adapter_module.attach

    def frozen_layer0(*args, **kwargs):
        attached = real_attach(*args, **kwargs)
        for name, layer in attached.layers.items():
            if ".layers.0." in f".{name}" and name.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
                for p in layer.parameters():
                    p.requires_grad_(False)
        return attached

    config = make_config(METHODS.get("lora").config_cls, FULL, "lora")
    recipe, rows, tokens = text_recipe(CharTokenizer(), CONFIG), 4, 20
    plain = step_flops(meta_of(tiny_llama()), "lora", config, [[rows, tokens, 10]], recipe)
    monkeypatch.setattr(adapter_module, "attach", frozen_layer0)
    frozen = step_flops(meta_of(tiny_llama()), "lora", config, [[rows, tokens, 10]], recipe)
    lost = 0
    for name, layer in real_attach(tiny_llama(), "lora", config=config).layers.items():
        if ".layers.0." in f".{name}" and name.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
            d_in, d_out, n = layer.base.in_features, layer.base.out_features, 2 * rows * tokens * config.r
            lost += n * (d_in + 2 * d_out)  # B's and A's gradients and h's: only the forward's x·Aᵀ, h·Bᵀ remain
        elif ".layers.0." in f".{name}" and name.split(".")[-1] in ("gate_proj", "up_proj"):
            n = 2 * rows * tokens * config.r  # their input (the residual after layer 0's attention) needs no gradient
            lost += n * layer.base.in_features  # now: their x's gradient through A is not computed
    assert frozen["adapter"] == plain["adapter"] - lost
    # the base does less too (no backward through layer 0's attention), where the bypassed pass must follow the step
    assert frozen["total"] - frozen["adapter"] < plain["total"] - plain["adapter"]


def _cuda_meter(monkeypatch, allocated, reserved, peaks):
    """A MemoryMeter on a faked CUDA device: ``allocated``/``reserved`` are lists the test changes, ``peaks`` the
    allocator's maxima."""
    from harness.accounting import MemoryMeter

    for name in ("synchronize", "reset_peak_memory_stats", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: allocated[0])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: reserved[0])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: peaks[0])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: peaks[1])
    return MemoryMeter(torch.device("cuda"))


def test_the_cuda_summary_is_above_the_baseline_and_keeps_reserved_apart_from_allocated(monkeypatch):
    """Pins the CUDA summary's numbers (no GPU needed: the allocator's counters are faked): peaks and means above the
    baseline, the reserved mean of the reserved samples. A mutation test found that the reserved peak without the
    baseline taken off, or the reserved mean taken of the allocated samples, passed every test."""
    gb = 1024**3
    allocated, reserved, peaks = [1 * gb], [2 * gb], [0, 0]
    meter = _cuda_meter(monkeypatch, allocated, reserved, peaks)
    allocated[0], reserved[0] = 2 * gb, 5 * gb
    meter.sample()
    allocated[0], reserved[0] = 4 * gb, 6 * gb
    meter.sample()
    peaks[:] = [5 * gb, 8 * gb]
    assert meter.summary() == {
        "kind": "cuda_minus_baseline",
        "peak_allocated_gb": 4.0,
        "peak_reserved_gb": 6.0,
        "mean_allocated_gb": 2.0,
        "mean_reserved_gb": 3.5,
    }


def test_a_resumed_meter_keeps_the_earlier_sessions_peak_and_samples():
    """Pins ``carry``/``state``/``_peaks`` over a resume: the peak is the larger of the earlier sessions' and this
    one's, and a second checkpoint keeps every earlier sample (a run resumed twice). A mutation test found that
    dropping the carried peak, or the carried samples from ``state()``, passed every test."""
    from harness.accounting import MemoryMeter

    big = 1e15  # above any resident size this process can have
    meter = MemoryMeter(torch.device("cpu"))
    meter.carry({"samples": [[big, 1.0], [big, 3.0]], "peaks": [big, big]})
    meter.sample()
    state = meter.state()
    assert (
        state["peaks"] == [big, big] and len(state["samples"]) == 3 and state["samples"][:2] == [(big, 1.0), (big, 3.0)]
    )
    summary = meter.summary()
    assert summary["peak_rss_gb"] == big / 1024**3
    assert summary["mean_rss_gb"] == (4.0 + meter.samples[0][1]) / 3 / 1024**3


class _ReplicaTask:
    """A task whose replica is the tiny Llama (a class: the cache key names ``type(task).meta_replica``)."""

    def meta_replica(self, loaded):  # noqa: ANN001, ANN201
        return meta_of(tiny_llama())


def test_a_cached_count_is_not_changed_by_what_a_caller_does_to_it(monkeypatch):
    """Pins the copy ``_count_flops`` hands out of its per-process cache: a caller editing its record (a recount, a
    runner adding keys) must not change what the next run at the same settings records. A mutation test found that
    returning the cached dict itself passed every test."""
    import harness.runner_flops as runner_flops

    monkeypatch.setattr(runner_flops, "_FLOPS_COUNTED", {})
    task = _ReplicaTask()
    config = make_config(METHODS.get("lora").config_cls, {"targets": "q_proj", "r": 2}, "lora")
    recipe = text_recipe(CharTokenizer(), CONFIG)
    counted = [runner_flops._count_flops(task, None, "lora", config, [[2, 8, 4]], recipe, False, ("sweep",))]
    expected = {**counted[0], "micro_batches": [dict(m) for m in counted[0]["micro_batches"]]}
    for _ in range(2):  # the first count, then one taken from the cache: each edited by its caller
        counted[-1]["total"] = -1
        counted[-1]["micro_batches"][0]["total"] = -1
        counted.append(runner_flops._count_flops(task, None, "lora", config, [[2, 8, 4]], recipe, False, ("sweep",)))
        assert counted[-1] == expected


def test_the_probes_count_is_not_taken_for_the_step_with_its_share(monkeypatch):
    """Pins ``adapter_share`` in the cache key: the runner's probe counts the step without the adapters' share
    (``adapter_share=False``) at the same settings and shape as the record's count that follows. A mutation test found
    that leaving it out of the key passed the fast tests; the record then took the probe's ``adapter: None``."""
    import harness.runner_flops as runner_flops

    task = _ReplicaTask()
    config = make_config(METHODS.get("lora").config_cls, {"targets": "q_proj", "r": 2}, "lora")
    recipe, shape, key = text_recipe(CharTokenizer(), CONFIG), [[2, 8, 4]], ("probe then step",)
    monkeypatch.setattr(runner_flops, "_FLOPS_COUNTED", {})
    probe = runner_flops._count_flops(task, None, "lora", config, shape, recipe, False, key, adapter_share=False)
    assert probe["adapter"] is None
    flops = runner_flops.flops_record(task, None, "lora", config, shape, recipe, False, key)
    assert flops["total"] == probe["total"] and flops["adapter"] > 0


def test_a_fast_path_count_says_its_path():
    """Pins ``flops_per_step.path`` = "fast" for a run on the fast path (what recount_flops counts it on). A mutation
    test found that dropping it passed the fast tests."""
    from harness.runner import flops_record

    task = SimpleNamespace(meta_replica=lambda loaded: meta_of(tiny_llama()))
    config = make_config(METHODS.get("lora").config_cls, {"targets": "q_proj", "r": 2}, "lora")
    recipe = text_recipe(CharTokenizer(), CONFIG)
    assert flops_record(task, None, "lora", config, [[2, 8, 4]], recipe, True)["path"] == "fast"
    assert "path" not in flops_record(task, None, "lora", config, [[2, 8, 4]], recipe, False)


def test_a_reason_of_exactly_the_limit_is_printed_whole():
    """Pins ``_clip``'s bound: a reason of exactly ``limit`` characters is not cut. A mutation test found ``<=`` made
    ``<`` passed every test (a 200-character reason lost its last word to " ...")."""
    from harness.runner_flops import _clip

    reason = "x" * 190 + " use r<=16"
    assert len(reason) == 200 and _clip(reason) == reason
    assert _clip(reason + "!") == "x" * 190 + " use ..."


def test_the_records_parameter_counts_leave_the_adapters_out_of_the_base(tmp_path):
    """Pins ``_train_record``'s parameter counts: ``base_params`` the model's parameters less the adapter's (attached in
    place, they are the model's too), ``percent_trainable`` over that base (as ``Adapter.percent_trainable``), and the
    min/mean/max of the parameters updated per step. A mutation test found that counting the adapter into the base,
    dividing by base + trainable, or the min taken as the max, passed every test."""
    from harness.runner_flops import _train_record

    adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=4)
    result = SimpleNamespace(
        first_step_shapes=[[4, 20, 10]],
        hook_val_forwards=[],
        steps=3,
        params_updated=[10, 30, 20],
        samples=12,
        tokens=240,
        train_s=1.0,
        hook_val_s=0.0,
        final_val_s=0.0,
        memory={},
        loss_curve=[],
        final_val_loss=1.0,
        resumed_from=None,
        timed_on_before_resume=None,
        code_before_resume=None,
    )
    record = _train_record(
        SimpleNamespace(extra={}, method="lora"),
        adapter,
        result,
        tmp_path,
        {"status": "not counted", "reason": "not asked"},
        SimpleNamespace(throughput_unit="tokens"),
        SimpleNamespace(model=adapter.model, task_params=[]),
        None,
    )
    base = sum(p.numel() for p in tiny_llama().parameters())
    assert record["base_params"] == base == adapter.num_base_params
    assert record["trainable_params"] == adapter.num_trainable_params > 0
    assert record["percent_trainable"] == pytest.approx(100 * adapter.num_trainable_params / base)
    assert record["params_updated_per_step"] == {"mean": 20, "min": 10, "max": 30}
