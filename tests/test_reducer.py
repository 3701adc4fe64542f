"""The Reducer on tiny models whose validation loss we control."""

from __future__ import annotations

import re

import pytest
import torch

from harness import METHODS, attach
from harness.config import ReducerConfig, make_config
from tests.conftest import BUILT_IN_METHODS, TINY_TARGETS, batch, defines_reducer_parameters, perturb, tiny_llama


def train_step(adapter, opt: torch.optim.Optimizer, step: int, val_loss_fn=None) -> None:
    """What the training loop does, reduced to the hooks."""
    adapter.on_step_begin(step, val_loss_fn)
    adapter.model(**batch(step)).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def train_steps(adapter, steps: int, val_loss_fn=None) -> None:
    opt = torch.optim.AdamW(adapter.param_groups(lr=1e-2, weight_decay=0.1))
    for step in range(steps):
        train_step(adapter, opt, step, val_loss_fn)


def gates(adapter) -> list[float]:
    return [layer.gate for layer in adapter.layers.values()]


def test_scores_move_in_the_documented_direction():
    adapter = attach(
        tiny_llama(layers=6),
        "effilora",
        targets=TINY_TARGETS,
        reducer=dict(k=3, interval=1, rollouts=4, n_suppressed=3, score_lr=10.0),
    )
    groups = list(adapter.layer_groups.values())
    important = {0, 1}

    def val_loss() -> float:  # suppressing layers 0 or 1 hurts; the others do not matter
        return 1.0 + sum(1.0 - groups[i][0].gate for i in important)

    for step in range(40):
        adapter.reducer.score(val_loss, step)
    scores = adapter.reducer.scores
    assert max(scores[i] for i in important) < 0 < min(scores[i] for i in range(6) if i not in important)
    counts = [0] * 6
    for _ in range(300):
        for i in adapter.reducer.select():
            counts[i] += 1
    assert min(counts[i] for i in important) > max(counts[i] for i in range(6) if i not in important)
    summary = adapter.summary()["reducer"]
    assert len(summary["score_trajectory"]) == 40 and summary["k"] == 3
    assert summary["layer_names"][0] == "model.layers.0"


def test_one_scoring_round_moves_the_scores_exactly_as_the_spec_says():
    """Spec, "The Reducer": ``rollouts`` trials each suppress ``n_suppressed`` distinct layers drawn with
    probability proportional to ``sigmoid(s)``; rewards ``R_k = exp(-loss_k)``; every suppressed layer of trial k
    moves by ``score_lr * (R_k - mean R) * sigmoid(s)(1 - sigmoid(s))`` at the scores before the round. The loose
    test above passed with the draw proportional to ``sigmoid(-s)``, a uniform draw or ``R = -loss``."""
    import math

    adapter = attach(
        tiny_llama(layers=4),
        "effilora",
        targets=TINY_TARGETS,
        reducer=dict(k=2, interval=1, rollouts=3, n_suppressed=2, score_lr=7.0, seed=11),
    )
    reducer = adapter.reducer
    groups = list(adapter.layer_groups.values())
    reducer.scores = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    before = reducer.scores.clone()
    gen = torch.Generator().manual_seed(11)  # the Reducer's own stream, drawn as the spec says
    gen.set_state(reducer._generator.get_state())
    expected_trials = [
        sorted(torch.multinomial(torch.sigmoid(before), 2, replacement=False, generator=gen).tolist()) for _ in range(3)
    ]
    seen = []

    def val_loss() -> float:  # a loss that depends on which layers are suppressed
        off = [i for i, g in enumerate(groups) if g[0].gate != 1.0]
        seen.append(off)
        return 0.1 * (1 + off[0]) + 0.3 * off[1]

    reducer.score(val_loss, step=10)
    assert seen == expected_trials
    rewards = [math.exp(-(0.1 * (1 + a) + 0.3 * b)) for a, b in seen]
    mean = sum(rewards) / 3
    expected = before.clone()
    for (a, b), r in zip(seen, rewards, strict=True):
        for i in (a, b):
            sig = 1 / (1 + math.exp(-before[i].item()))
            expected[i] += 7.0 * (r - mean) * sig * (1 - sig)
    assert torch.allclose(reducer.scores, expected, rtol=0, atol=1e-12)
    assert reducer.trajectory[-1]["losses"] == pytest.approx([0.1 * (1 + a) + 0.3 * b for a, b in seen])


def test_suppression_is_drawn_by_sigmoid_s_and_training_by_sigmoid_minus_s():
    """Over many draws, the one layer suppressed in a trial follows ``sigmoid(s)`` and the one layer trained in a
    step ``sigmoid(-s)``: a high score (suppressing it did not hurt) is suppressed more and trained less."""
    import math

    adapter = attach(
        tiny_llama(layers=3), "effilora", targets=TINY_TARGETS, reducer=dict(k=1, n_suppressed=1, rollouts=6, seed=0)
    )
    reducer, groups = adapter.reducer, list(adapter.layer_groups.values())
    fixed = torch.tensor([2.0, 0.0, -2.0], dtype=torch.float64)
    suppressed, trained, n = [0, 0, 0], [0, 0, 0], 6000

    def val_loss() -> float:  # equal losses: the advantages are 0 and the scores stay where they are
        suppressed[next(i for i, g in enumerate(groups) if g[0].gate != 1.0)] += 1
        return 1.0

    reducer.scores = fixed.clone()
    for _ in range(n // 6):
        reducer.score(val_loss, step=1)
    assert torch.equal(reducer.scores, fixed)
    for _ in range(n):
        trained[reducer.select()[0]] += 1
    up, down = torch.sigmoid(fixed), torch.sigmoid(-fixed)
    for counts, p in ((suppressed, up / up.sum()), (trained, down / down.sum())):
        for c, q in zip(counts, p.tolist(), strict=True):
            assert abs(c / n - q) < 4 * math.sqrt(q * (1 - q) / n), (counts, p)


def test_degenerate_importance_settings_are_refused():
    """Settings under which the scores cannot move, so "importance" would be random selection recorded as
    importance: one rollout (its advantage is 0) or every layer suppressed in every trial (the advantages sum to 0)."""
    with pytest.raises(ValueError, match="rollouts=1 with selection='importance'.*rollouts >= 2"):
        attach(tiny_llama(layers=4), "effilora", targets=TINY_TARGETS, reducer=dict(k=2, rollouts=1))
    attach(tiny_llama(layers=4), "effilora", targets=TINY_TARGETS, reducer=dict(k=2, rollouts=1, selection="random"))
    attach(tiny_llama(layers=4), "effilora", targets=TINY_TARGETS, reducer=dict(k=4, rollouts=1))  # K = L: no scoring
    with pytest.raises(ValueError, match="n_suppressed=4 suppresses all 4 adapted layers"):
        attach(tiny_llama(layers=4), "effilora", targets=TINY_TARGETS, reducer=dict(k=2, n_suppressed=4))
    attach(tiny_llama(layers=4), "effilora", targets=TINY_TARGETS, reducer=dict(k=4, n_suppressed=4))  # K = L: off


def test_a_refused_reducer_setting_leaves_the_model_unwrapped():
    """The Reducer refuses its settings once the layers are wrapped (it needs L): the refusal left the model wrapped
    and frozen, and attaching again with other settings was refused ("already has an adapter")."""
    model = tiny_llama(layers=4)
    with pytest.raises(ValueError, match="n_suppressed=4 suppresses all 4 adapted layers"):
        attach(model, "effilora", targets=TINY_TARGETS, reducer=dict(k=2, n_suppressed=4))
    assert all(p.requires_grad for p in model.parameters()) and not hasattr(model, "lora_shared")
    assert attach(model, "effilora", targets=TINY_TARGETS, reducer=dict(k=2)).reducer.num_layers == 4


def test_a_blocks_feed_forward_targets_are_in_its_layer_not_layers_of_their_own():
    """From a review: the layer was the name up to its last number, so diffusers' ``ff.net.0.proj`` (an index into
    the feed-forward's list of steps) was a layer apart from its transformer block: with the UNet's feed-forward
    linears as targets the Reducer's L doubled (4 -> 8 on a tiny UNet). L counts transformer blocks (spec), whichever
    of their linears are targets; the layers of the default targets are as before."""
    from diffusers import UNet2DConditionModel

    import tasks.diffusion.model as dmodel

    config = {**dmodel.unet_config(), "sample_size": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "block_out_channels": [32, 32],
              "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8}  # fmt: skip
    attention = attach(UNet2DConditionModel(**config), "effilora", targets="to_q,to_k,to_v,to_out.0")
    both = attach(UNet2DConditionModel(**config), "effilora", targets="to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2")
    blocks = [f"{block}.attentions.{i}.transformer_blocks.0" for block, i in
              [("down_blocks.0", 0), ("up_blocks.1", 0), ("up_blocks.1", 1), ("mid_block", 0)]]  # fmt: skip
    assert list(attention.layer_groups) == list(both.layer_groups) == blocks
    assert both.reducer.num_layers == both.summary()["layers"] == 4 and both.reducer.k == 3
    in_block = {
        n.split("transformer_blocks.0.")[1]: w.site.type for n, w in both.layers.items() if n.startswith(blocks[0])
    }
    assert in_block == {**{f"attn{i}.{t}": t for i in (1, 2) for t in ("to_q", "to_k", "to_v")},
                        "attn1.to_out.0": "to_out", "attn2.to_out.0": "to_out", "ff.net.0.proj": "proj", "ff.net.2": "net"}  # fmt: skip


def test_bench_counts_a_blocks_feed_forward_targets_in_its_layer_as_attach_does(capsys):
    """From a review of the fix above: ``harness bench`` worked out L from the names alone, so with a UNet's
    feed-forward linears as targets it took L = 8 where ``attach`` takes 4, and kept or left out Reducer variants by
    the wrong L (a variant at K = L, the Reducer off, timed under a Reducer label)."""
    from diffusers import UNet2DConditionModel

    import tasks.diffusion.model as dmodel
    from harness.bench import _runnable
    from harness.config import make_config
    from harness.registry import METHODS

    config = {**dmodel.unet_config(), "sample_size": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "block_out_channels": [32, 32],
              "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8}  # fmt: skip
    targets = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
    cls = METHODS.get("effilora")
    variant = make_config(cls.config_cls, {"targets": targets, "k": 4}, "effilora")  # K = 4 = L: the Reducer off
    kept = _runnable("effilora", [("k4", variant)], UNet2DConditionModel(**config))
    assert kept == [] and "k4" in capsys.readouterr().err


def test_a_reducer_state_of_another_layer_count_is_refused():
    """From a review: a checkpoint written before 2026-12-06 with a UNet's feed-forward targets kept scores for 8
    layers where the adapter now has 4; the resume drew K from the stale scores and failed with an IndexError at the
    first scoring round. A Reducer state of another number of layers is refused, saying what to do, and changes
    nothing; one of the same number loads."""
    written = attach(tiny_llama(layers=6), "effilora", targets=TINY_TARGETS, reducer=dict(k=2)).training_state()
    adapter = attach(tiny_llama(layers=4), "effilora", targets=TINY_TARGETS, reducer=dict(k=2))
    adapter.on_step_begin(0, lambda: 1.0)  # a selection of its own, to see it kept
    before = adapter.training_state()["reducer"]
    with pytest.raises(ValueError, match=r"scores 6 layers and this adapter has 4: the checkpoint was written with "
                                         r"another layer count \(by older code.*or with other targets\); delete it or "
                                         r"use --force"):  # fmt: skip
        adapter.load_training_state(written)
    assert adapter.reducer.scores.tolist() == before["scores"].tolist()
    assert adapter.reducer.selected == before["selected"]
    adapter.load_training_state({"reducer": before})  # the same L: loads


def test_each_run_seed_draws_its_own_layers_unless_the_reducer_seed_is_fixed():
    """``harness run`` seeds torch with the run's seed before attaching: without a Reducer seed of its own the
    selection follows it (seeds 0, 1, 2 of a run are three draws, not one)."""

    def draws(torch_seed: int, **reducer) -> list[list[int]]:
        model = tiny_llama(layers=6)  # seeds torch itself (0): the run's seed comes after, as in harness run
        torch.manual_seed(torch_seed)
        adapter = attach(model, "effilora", targets=TINY_TARGETS, reducer=dict(k=2, **reducer))
        return [adapter.reducer.select() for _ in range(8)]

    assert draws(0, selection="random") == draws(0, selection="random")
    assert draws(0, selection="random") != draws(1, selection="random")
    assert draws(0, selection="random", seed=5) == draws(1, selection="random", seed=5)


def test_only_the_selected_layers_heads_change(method):
    """From a review: a method without ``reducer_parameters()`` (optional, README) was attached with the Reducer,
    which attach refuses for it, and failed: it has no heads to pause, so there is nothing to test."""
    if not defines_reducer_parameters(method):
        pytest.skip("the method defines no reducer_parameters(): attach refuses the Reducer for it")
    adapter = attach(
        tiny_llama(layers=6), method, targets=TINY_TARGETS, dropout=0.0, reducer=dict(k=2, selection="random", seed=3)
    )
    perturb(adapter)  # nonzero B everywhere, so every unfrozen tensor gets a gradient
    heads = [[p for layer in group for p in layer.reducer_parameters()] for group in adapter.layer_groups.values()]
    others = [p for p in adapter.trainable_parameters() if not any(p is h for hs in heads for h in hs)]
    opt = torch.optim.AdamW(adapter.param_groups(lr=1e-2, weight_decay=0.1))
    for step in range(3):  # later steps too: AdamW must not move a head through stale moments
        before = [[p.detach().clone() for p in hs] for hs in heads]
        before_others = [p.detach().clone() for p in others]
        train_step(adapter, opt, step)
        selected = adapter.reducer.selected
        for i, hs in enumerate(heads):
            changed = [not torch.equal(b, p) for b, p in zip(before[i], hs, strict=True)]
            assert all(changed) if i in selected else not any(changed), (step, i, selected)
        assert all(not torch.equal(b, p) for b, p in zip(before_others, others, strict=True))


def test_paused_heads_stay_put_in_a_loop_that_zeroes_gradients_to_zero(method):
    """From a review: ``select`` only turned ``requires_grad`` off, so in a user's loop that zeroes gradients with
    ``zero_grad(set_to_none=False)`` a paused head kept a zero gradient, and AdamW moved it (its moments, the weight
    decay): "paused layer-steps that moved: 8". ``select`` drops the paused heads' gradients."""
    if not defines_reducer_parameters(method):
        pytest.skip("the method defines no reducer_parameters(): attach refuses the Reducer for it")
    adapter = attach(tiny_llama(), method, targets=TINY_TARGETS, dropout=0.0, reducer=dict(k=2, selection="random"))
    perturb(adapter)
    heads = adapter.reducer.heads
    opt = torch.optim.AdamW(adapter.param_groups(lr=1e-2, weight_decay=0.1))
    moved = []
    for step in range(4):
        adapter.on_step_begin(step, None)
        selected = adapter.reducer.selected
        assert all(p.grad is None for i, hs in enumerate(heads) if i not in selected for p in hs)
        before = [[p.detach().clone() for p in hs] for hs in heads]
        adapter.model(**batch(step)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        adapter.on_step_end(True)
        for i, hs in enumerate(heads):
            if i not in selected and any(not torch.equal(b, p) for b, p in zip(before[i], hs, strict=True)):
                moved.append((step, i))
    assert not moved, f"paused heads moved at (step, layer) {moved}"
    assert sum(adapter.reducer.update_counts) == 4 * 2


# spec, "The Reducer" step 3: the tensors it pauses in unselected layers are the B heads and the router; a layer's
# own A (LoRA, HydraLoRA) and MoSLoRA's mixer train every step, and a shared A lives on the model, not the layer
PAUSED = ("lora_B", "lora_router")
TRAINED_EVERY_STEP = ("lora_A", "lora_M")


def own_tensors(layer) -> list[tuple[str, torch.nn.Parameter]]:
    """A wrapper's own trainable tensors by name, read off the module (not from ``reducer_parameters()``)."""
    return [(n, p) for n, p in layer.named_parameters() if p.requires_grad and not n.startswith("base.")]


@pytest.mark.parametrize("method", [m for m in BUILT_IN_METHODS if defines_reducer_parameters(m)])
def test_the_reducer_pauses_each_layers_b_heads_and_router_read_off_the_layer(method):
    """From a mutation review: the test above takes its heads from ``reducer_parameters()``, the function under test,
    so EffiLoRA's or HydraLoRA's router left out of it (trained in every layer, every step) landed among the tensors
    expected to move, and passed. Here each wrapper's tensors are read off the module by name (heads=4: a router)."""
    from harness.adapter import SHARED

    adapter = attach(
        tiny_llama(layers=6),
        method,
        targets=TINY_TARGETS,
        dropout=0.0,
        heads=4,
        reducer=dict(k=2, selection="random", seed=3),
    )
    perturb(adapter)  # nonzero B everywhere, so every unfrozen tensor gets a gradient
    shared = list(getattr(adapter.model, SHARED).parameters()) if hasattr(adapter.model, SHARED) else []
    for name, layer in adapter.layers.items():
        tensors = own_tensors(layer)
        assert {n for n, _ in tensors} <= {*PAUSED, *TRAINED_EVERY_STEP}, (name, [n for n, _ in tensors])
        assert not any(p is a for _, p in tensors for a in shared)  # the shared A is the model's, not the layer's
        by_id = {id(p): n for n, p in tensors}
        returned = sorted(by_id.get(id(p), "a tensor not the layer's own") for p in layer.reducer_parameters())
        assert returned == sorted(n for n, _ in tensors if n in PAUSED), (method, name)
    own = [[t for layer in group for t in own_tensors(layer)] for group in adapter.layer_groups.values()]
    routers = any(n == "lora_router" for tensors in own for n, _ in tensors)
    assert routers == (method in ("effilora", "hydralora"))  # the routers this test is about are there
    opt = torch.optim.AdamW(adapter.param_groups(lr=1e-2, weight_decay=0.1))
    before = [[p.detach().clone() for _, p in tensors] for tensors in own]
    train_step(adapter, opt, 0)
    selected = adapter.reducer.selected
    assert len(selected) == 2
    for i, tensors in enumerate(own):
        for (n, p), b in zip(tensors, before[i], strict=True):
            moved, paused = not torch.equal(b, p), n in PAUSED and i not in selected
            assert moved != paused, f"{method}: layer {i}'s {n} {'moved' if moved else 'stayed'}, selected {selected}"


def test_random_selection_is_uniform():
    adapter = attach(tiny_llama(layers=8), "effilora", targets="q_proj", reducer=dict(k=3, selection="random"))
    draws = 4000
    counts = [0] * 8
    for _ in range(draws):
        for i in adapter.reducer.select():
            counts[i] += 1
        adapter.reducer.count_update()  # as the loop does after a step that moved the heads
    assert sum(counts) == 3 * draws
    assert all(abs(c / draws - 3 / 8) < 0.03 for c in counts), counts
    assert adapter.reducer.update_counts == counts


def test_suppression_is_restored_even_when_the_loss_raises():
    adapter = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, reducer=dict(k=2, interval=1))
    seen = []

    def failing_loss() -> float:
        seen.append(sorted(set(gates(adapter))))
        raise RuntimeError("validation blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        adapter.on_step_begin(1, failing_loss)
    assert seen == [[0.25, 1.0]]  # suppression was applied during the trial...
    assert set(gates(adapter)) == {1.0}  # ...and undone after it


def test_k_equal_to_l_is_plain_training():
    plain = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, reducer=None)
    full = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, reducer=dict(k=4, interval=1))
    calls = []
    torch.manual_seed(0)
    train_steps(plain, 3)
    torch.manual_seed(0)
    train_steps(full, 3, val_loss_fn=lambda: calls.append(1) or 0.0)
    assert not calls  # nothing to choose: no scoring rollouts either
    a, b = plain.state_dict(), full.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_importance_needs_validation_and_knobs_are_checked():
    adapter = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, reducer=dict(k=2))
    with pytest.raises(ValueError, match="validation split"):
        adapter.on_step_begin(0, None)
    assert attach(tiny_llama(), "lora", targets="q_proj", drop_ratio=0.75).reducer.k == 1
    assert attach(tiny_llama(), "lora", targets="q_proj", k="3", selection="random").reducer.k == 3
    assert attach(tiny_llama(), "effilora", targets="q_proj").reducer.config == ReducerConfig()
    with pytest.raises(ValueError, match="outside 1..4"):
        attach(tiny_llama(), "lora", targets="q_proj", k=9)
    with pytest.raises(ValueError, match="choose one of: importance, random"):
        attach(tiny_llama(), "lora", targets="q_proj", selection="best")


@pytest.mark.parametrize(
    "option", [dict(k=2.0), dict(k=2.5), dict(k=True), dict(n_suppressed=2.5), dict(interval=2.5), dict(rollouts=2.0)]
)
def test_a_reducer_count_that_is_not_an_integer_is_refused_at_attach(option):
    """From a review: through the Python API k, n_suppressed, interval and rollouts were checked only for < 1, not
    for being integers: k=2.0 (or 2.5, True) attached and failed at the first step with torch's TypeError, and
    interval=2.5 scored only at steps 5, 10, ... They are refused when the Reducer is made, naming the option."""
    [(name, value)] = option.items()
    said = re.escape(f"reducer {name} must be an integer (got {value!r}, a {type(value).__name__})")
    with pytest.raises(ValueError, match=said):
        attach(tiny_llama(), "effilora", targets=TINY_TARGETS, **option)
    with pytest.raises(ValueError, match=said):
        ReducerConfig(**option)
    with pytest.raises(ValueError, match=r"reducer interval must be an integer \(got None"):
        ReducerConfig(interval=None)
    with pytest.raises(ValueError, match=r"option k='2.0' must be an integer"):  # the command line's, as it was
        attach(tiny_llama(), "effilora", targets=TINY_TARGETS, k="2.0")
    reducer = attach(tiny_llama(), "effilora", targets=TINY_TARGETS, k=2, n_suppressed=None, interval=3).reducer
    assert (reducer.k, reducer.n_suppressed, reducer.config.interval) == (2, 2, 3)


def test_a_drop_ratio_that_keeps_no_layer_is_named_in_the_refusal():
    """From a review: drop_ratio=0.9 on 3 layers (K = round(0.3) = 0) was refused as "reducer k=0 is outside
    1..3", naming a k the user never gave and not the drop_ratio that made it."""
    with pytest.raises(ValueError, match=r"drop_ratio=0.9 keeps K = round\(4 x 0.1\) = 0 of the 4 adapted layers"):
        attach(tiny_llama(), "lora", targets="q_proj", drop_ratio=0.9)
    with pytest.raises(ValueError, match="reducer k=5 is outside 1..4"):  # a k given is named as given
        attach(tiny_llama(), "lora", targets="q_proj", k=5)


def test_the_refused_drop_ratio_is_printed_as_given_and_its_advice_can_be_followed():
    """From a review: the refusal printed drop_ratio with ``:g``, so 0.9999999 read "drop_ratio=1 keeps K = ...", a
    value the user never gave (and one refused as outside [0, 1)); its advice "or k=1" was refused in turn when
    followed with the drop_ratio still given (k and drop_ratio both set K)."""
    with pytest.raises(ValueError) as refused:
        ReducerConfig(drop_ratio=0.9999999).resolve_k(4)
    assert "reducer drop_ratio=0.9999999 keeps K = round(4 x 1e-07) = 0" in str(refused.value)
    assert "give a smaller drop_ratio, or k=1 in its place" in str(refused.value)
    with pytest.raises(ValueError, match="both set the Reducer's K"):  # why "in its place"
        attach(tiny_llama(), "lora", targets="q_proj", drop_ratio=0.9999999, k=1)
    assert ReducerConfig(k=1).resolve_k(4) == 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_rank_and_r_given_both_are_refused_unless_equal(method):
    """From a review: the Python API's ``rank=`` (the README's alias of ``r``) beside ``r=`` silently took ``rank``;
    the command line refuses the same conflict."""
    with pytest.raises(ValueError, match="rank=8 and r=4 both set the adapter's rank: give one"):
        attach(tiny_llama(), method, targets="q_proj", rank=8, r=4)
    assert attach(tiny_llama(), method, targets="q_proj", rank="4", r=4).config.r == 4  # the same value, twice


@pytest.mark.parametrize(("word", "on"), [("True", True), ("on", True), ("1", True), ("yes", True), ("Off", False),
                                          ("false", False), ("0", False), ("none", False)])  # fmt: skip
def test_the_reducer_option_takes_the_words_a_boolean_option_takes(word, on):
    """``--option reducer=True`` (as the README writes it) was read as a selection named 'True' and refused."""
    adapter = attach(tiny_llama(), "effilora", targets="q_proj", reducer=word)
    assert (adapter.reducer is not None) is on
    assert attach(tiny_llama(), "effilora", targets="q_proj", reducer="Random").reducer.config.selection == "random"


def test_reducer_seed_sets_the_reducers_own_seed_and_rebuilds_the_committed_runs_ids():
    """From a review of the README: the committed effilora records hold reducer.seed 0 (from before it followed
    the run's seed) and no option set it, so their seed-1/2 runs could not be rebuilt from the command line."""
    from harness.runner import build_specs

    assert attach(tiny_llama(), "effilora", targets="q_proj", reducer_seed="7").reducer.config.seed == 7
    assert attach(tiny_llama(), "effilora", targets="q_proj").reducer.config.seed is None  # the run's seed
    ids = {
        seed: build_specs("commonsense", ["effilora"], [seed], "embedded", method_options={"reducer_seed": "0"})[0]
        for seed in (0, 1)
    }
    assert ids[0].run_id.endswith("-303a7bfe") and ids[1].run_id.endswith("-69425590")  # results/runs' ids
    # given to a method without a Reducer (the main job's `--methods lora,effilora`), it turns none on
    assert attach(tiny_llama(), "lora", targets="q_proj", reducer_seed="0").reducer is None
    lora = [
        build_specs("commonsense", ["lora"], [1], "embedded", method_options=o)[0] for o in ({}, {"reducer_seed": "0"})
    ]
    assert lora[0].run_id == lora[1].run_id == "commonsense-lora-embedded-s1-7c3b4064"  # the committed run's id
    with pytest.raises(ValueError, match="reducer_seed"):  # named among the valid options
        attach(tiny_llama(), "effilora", targets="q_proj", seed=0)


def test_val_size_0_is_refused_only_where_the_reducer_scores_layers():
    """K = L (drop_ratio=0) trains every layer and scores none: no validation split needed."""
    from harness.runner import build_specs, preflight

    def specs(*options: str):
        opts = dict(o.split("=") for o in options)
        return build_specs(
            "commonsense", ["effilora"], [0], "smoke", method_options=opts, task_overrides={"val_size": 0}
        )

    preflight(specs("drop_ratio=0"))
    preflight(specs("selection=random"))
    with pytest.raises(ValueError, match="--val-size 0 leaves effilora's Reducer no validation split"):
        preflight(specs())


def test_bench_times_the_reducer_off_beside_a_reducer_shortcut():
    """``--option k=4`` with the default variants (off among them) was refused after the model loaded."""
    from harness.bench import BenchConfig, _variant_options

    BenchConfig(methods=("effilora",), options={"k": "2"}, reducer=("off", "default"), protocols=())
    assert _variant_options({"k": "2", "r": "8"}, "off") == {"r": "8", "reducer": None}
    assert _variant_options({"k": "2"}, "default") == {"k": "2"}


def test_the_reducer_is_refused_for_a_method_with_no_reducer_parameters(monkeypatch):
    """From a review: a method whose wrappers keep ``AdapterLinear``'s ``reducer_parameters()`` (none) took
    ``--option reducer=true``; the Reducer then paused nothing, yet ran its scoring forwards and recorded per-layer
    update counts as if layers had been paused (every layer trained every step). (A later review: the last check,
    "the built-ins keep it", ran over installed plugins too, and failed one without reducer_parameters().)"""
    from harness.bench import BenchConfig
    from tests.conftest import DeltaOnlyLinear

    class NoHeadsLinear(DeltaOnlyLinear):  # a plugin's LoRA that defines no reducer_parameters()
        pass

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registered for this test only
    METHODS.register("no_heads_lora")(NoHeadsLinear)
    said = r"method 'no_heads_lora' cannot use the Reducer: .* define reducer_parameters\(\) on the method"
    model = tiny_llama(layers=4)
    for reducer in (True, dict(k=2, selection="random")):
        with pytest.raises(ValueError, match=said):
            attach(model, "no_heads_lora", targets=TINY_TARGETS, reducer=reducer)
    assert attach(model, "no_heads_lora", targets=TINY_TARGETS).reducer is None  # without it: as before
    with pytest.raises(ValueError, match=said):  # bench, before its model loads
        BenchConfig(methods=("no_heads_lora",), options={"reducer": "true"}, protocols=())
    BenchConfig(methods=("no_heads_lora",), protocols=())
    for method in BUILT_IN_METHODS:  # the built-ins name their B heads (and routers): each keeps the Reducer
        assert attach(tiny_llama(layers=4), method, targets=TINY_TARGETS, reducer=dict(k=2)).reducer.k == 2


def test_drop_ratio_rounds_k_to_nearest_even_as_documented():
    """From a mutation test (config.py:75, round -> int): the docstring's own examples, L = 30 at 0.25 keeps 22 and L = 2 keeps 2;
    L = 10 at 0.25 keeps 8 (7.5 rounds to 8)."""
    cfg = ReducerConfig(drop_ratio=0.25)
    assert cfg.resolve_k(30) == 22
    assert cfg.resolve_k(10) == 8
    assert ReducerConfig(drop_ratio=0.25).resolve_k(2) == 2  # warns: keeps every layer


def test_a_drop_ratio_that_keeps_every_layer_warns_that_the_reducer_is_off(capsys):
    """From a mutation test (config.py:84, drop_ratio > 0 -> > 1): the warning the docstring promises."""
    assert ReducerConfig(drop_ratio=0.0123).resolve_k(3) == 3  # a ratio no other test uses: warned once a process
    err = capsys.readouterr().err
    assert "the Reducer is off" in err and "drop_ratio=0.0123" in err


def test_k_none_on_a_method_without_a_reducer_turns_none_on():
    """From a mutation test (config.py:203, filter dropped): k=none (k unset) on LoRA turned a Reducer on (a review's bug)."""
    cls = METHODS.get("lora").config_cls
    assert make_config(cls, {}, "lora").reducer is None  # LoRA runs no Reducer by default
    assert make_config(cls, {"k": "none"}, "lora").reducer is None
    assert make_config(cls, {"n_suppressed": "none"}, "lora").reducer is None


def test_n_suppressed_defaults_to_half_the_layers_rounded_down():
    """Spec, "The Reducer": a trial suppresses ``n_suppressed`` layers, default L/2 (``L // 2``, at least 1). Every
    test ran an even L or named n_suppressed: a mutation test found ``(L + 1) // 2`` passed them all."""
    for layers, expected in ((5, 2), (3, 1), (2, 1), (4, 2)):
        adapter = attach(tiny_llama(layers=layers), "effilora", targets="q_proj", r=2, reducer=dict(k=1))
        assert adapter.reducer.n_suppressed == expected, layers


def test_a_scoring_round_records_the_scores_it_left():
    """The run record's score trajectory (what plot_reducer draws) holds, per round, its step, its rollouts' losses
    and the scores AFTER the round. Only its length was pinned: a mutation test found a trajectory of the
    sigmoids of the scores before the round passed every test."""
    adapter = attach(
        tiny_llama(layers=4), "effilora", targets="q_proj", r=2, reducer=dict(k=2, rollouts=3, n_suppressed=2, seed=3)
    )
    reducer, groups = adapter.reducer, list(adapter.layer_groups.values())

    def val_loss() -> float:  # suppressing layer 0 hurts
        return 1.0 + (1.0 - groups[0][0].gate)

    for step in (10, 20):
        reducer.score(val_loss, step)
        assert reducer.trajectory[-1]["scores"] == reducer.scores.tolist()
    assert [t["step"] for t in reducer.trajectory] == [10, 20]
    assert any(s != 0 for s in reducer.trajectory[0]["scores"])  # the round moved them


def test_a_reducer_state_dict_is_a_snapshot():
    """``state_dict`` copies the scores: a scoring round after it (which moves the scores in place) leaves the saved
    state alone. A mutation test found ``"scores": self.scores`` (no clone) passed every test."""
    adapter = attach(tiny_llama(layers=4), "effilora", targets="q_proj", r=2, reducer=dict(k=2, n_suppressed=2, seed=1))
    reducer, groups = adapter.reducer, list(adapter.layer_groups.values())
    state = reducer.state_dict()
    reducer.score(lambda: 1.0 + (1.0 - groups[0][0].gate), step=10)
    assert reducer.scores.any()
    assert not state["scores"].any()
