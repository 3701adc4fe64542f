"""The training loop on a tiny Llama: loss arithmetic, hooks, resume, settings."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from harness import attach
from harness.task import Example
from harness.train import CHECKPOINT, Cancelled, TrainConfig, adamw, lr_lambda, train
from tasks.lm import collate, encode, loss_sum, supervised_tail
from tests.conftest import CharTokenizer, defines_reducer_parameters, perturb, text_recipe, tiny_llama

EXAMPLES = [Example(f"Q{i}: what is {i} plus one? A: ", f"it is {i + 1}", "toy") for i in range(40)]
VAL = [Example("Q: what is 7 plus one? A: ", "it is 8", "toy")] * 4
CONFIG = TrainConfig(
    steps=6,
    micro_batch_size=4,
    grad_accum=2,
    lr=5e-3,
    warmup_steps=1,
    cutoff_len=64,
    checkpoint_every=2,
    train_on_inputs=False,
    val_batch_size=2,
)


def test_tail_loss_equals_the_full_loss(char_tokenizer):
    model = tiny_llama()
    items = [encode(char_tokenizer, e, 64, train_on_inputs=False) for e in EXAMPLES[:3]]
    batch = collate(items, char_tokenizer.pad_token_id)
    keep, n = supervised_tail(batch["labels"])
    assert n == sum(sum(1 for t in e.labels[1:] if t != -100) for e in items)
    with torch.no_grad():
        ours = loss_sum(model, batch, keep) / n
        full = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            labels=batch["labels"],
        ).loss
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)


def test_a_batch_with_nothing_supervised_gives_a_zero_loss_through_the_whole_graph(char_tokenizer):
    """What a process runs for an empty micro-batch under DDP (every process must run every backward)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=2)
    items = [encode(char_tokenizer, e, 64, train_on_inputs=False) for e in EXAMPLES[:2]]
    batch = collate(items, char_tokenizer.pad_token_id)
    batch["labels"][:] = -100
    assert supervised_tail(batch["labels"]) == (0, 0)
    loss = loss_sum(adapter.model, batch, 0)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None for p in adapter.trainable_parameters())  # every parameter takes part


def test_train_on_inputs_masks_the_prompt(char_tokenizer):
    masked = encode(char_tokenizer, EXAMPLES[0], 64, train_on_inputs=False)
    full = encode(char_tokenizer, EXAMPLES[0], 64, train_on_inputs=True)
    n_prompt = len(EXAMPLES[0].prompt)
    assert masked.labels[:n_prompt] == [-100] * n_prompt and masked.labels[n_prompt:] == full.labels[n_prompt:]
    assert full.input_ids[-1] == char_tokenizer.eos_token_id and full.labels == [-100, *full.input_ids[1:]]
    assert len(encode(char_tokenizer, EXAMPLES[0], 10, True).input_ids) == 10  # cut off, no EOS


def test_train_on_inputs_supervises_no_token_from_padding(char_tokenizer):
    """From a review: with the prompt trained on, a left-padded row's first token was a target predicted from a
    pad's logits (a term that depended on how rows were batched; 11 tokens counted for 10 real ones)."""
    items = [encode(char_tokenizer, e, 64, train_on_inputs=True) for e in (EXAMPLES[0], EXAMPLES[10])]
    assert len(items[0].input_ids) != len(items[1].input_ids)  # one row is padded
    _, n = supervised_tail(collate(items, char_tokenizer.pad_token_id)["labels"])
    assert n == sum(len(e.input_ids) - 1 for e in items)


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_the_final_validation_loss_is_per_token_over_the_split_whatever_the_batch_size(char_tokenizer, train_on_inputs):
    """Examples of unequal length: a mean of per-batch means would weigh the short one's tokens more."""
    val = [
        Example("Q: 7 plus one? A: ", "it is 8", "toy"),
        Example("Q: 12 plus one? A: ", "it is 13, I think so", "toy"),
    ]
    val += [Example("Q: 3 plus one? A: ", "4", "toy")]
    losses = []
    for size in (1, 2, 3):
        config = dataclasses.replace(
            CONFIG, steps=1, val_batch_size=size, checkpoint_every=0, train_on_inputs=train_on_inputs
        )
        adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=2, dropout=0.0)
        recipe = text_recipe(char_tokenizer, config)
        losses.append(train(adapter.model, recipe, adapter, EXAMPLES, val, config, None, progress=False).final_val_loss)
        with torch.no_grad():  # the reference: every supervised token of the split at once
            batch = collate(
                [encode(char_tokenizer, e, 64, train_on_inputs=train_on_inputs) for e in val],
                char_tokenizer.pad_token_id,
            )
            keep, n = supervised_tail(batch["labels"])
            assert losses[-1] == pytest.approx((loss_sum(adapter.model, batch, keep) / n).item(), rel=1e-5)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) == losses[2]


def test_training_lowers_the_loss_and_records_what_it_did(method, char_tokenizer, tmp_path):
    from harness import METHODS

    has_reducer = METHODS.get(method).config_cls().reducer is not None  # on by default (EffiLoRA's)
    reducer = dict(k=2, interval=2) if has_reducer else None
    adapter = attach(tiny_llama(), method, targets="q_proj,v_proj,up_proj", r=4, reducer=reducer)
    result = train(
        adapter.model,
        text_recipe(char_tokenizer, CONFIG),
        adapter,
        EXAMPLES,
        VAL,
        dataclasses.replace(CONFIG, steps=12),
        tmp_path,
        progress=False,
    )
    losses = [loss for _, loss in result.loss_curve]
    assert result.steps == 12 and losses[-1] < losses[0]
    assert result.samples == 12 * 8 and result.tokens > 0 and result.train_s > 0
    assert result.final_val_loss is not None and result.memory["peak_rss_gb"] > 0
    assert [s[0] for s in result.first_step_shapes] == [4, 4]  # both micro-batches of the accumulation
    if has_reducer:  # the Reducer paused heads: fewer elements moved than are trainable
        assert max(result.params_updated) < adapter.num_trainable_params
        assert result.hook_val_s > 0 and adapter.reducer.trajectory
    else:
        assert set(result.params_updated) == {adapter.num_trainable_params}


def _crash_at_step_3(crashed, char_tokenizer, out_dir) -> None:
    """Train ``crashed`` (an attached adapter) into ``out_dir`` until a power cut as step 3 begins: the checkpoint
    of step 2 is left, as after a crash."""
    real_hook = crashed.on_step_begin

    def crash_at_step_3(step, val_loss_fn):
        if step == 3:
            raise RuntimeError("power cut")
        real_hook(step, val_loss_fn)

    crashed.on_step_begin = crash_at_step_3
    with pytest.raises(RuntimeError, match="power cut"):
        train(
            crashed.model, text_recipe(char_tokenizer, CONFIG), crashed, EXAMPLES, VAL, CONFIG, out_dir, progress=False
        )


def test_resume_continues_exactly_where_it_stopped(method, char_tokenizer, tmp_path):
    """From a review: this turned the Reducer on for every method, so a plugin without ``reducer_parameters()``
    (optional, README) was refused at attach and failed it; such a method resumes without the Reducer."""
    reducer = dict(k=2, interval=2) if defines_reducer_parameters(method) else None

    def fresh():  # with dropout and the Reducer (where it has one): every random state and the scores must come back
        torch.manual_seed(0)
        return attach(tiny_llama(), method, targets="q_proj,v_proj", r=4, dropout=0.1, reducer=reducer)

    straight = fresh()
    whole = train(
        straight.model,
        text_recipe(char_tokenizer, CONFIG),
        straight,
        EXAMPLES,
        VAL,
        CONFIG,
        tmp_path / "a",
        progress=False,
    )

    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "b")
    saved = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["state"]
    assert saved["step"] == 2 and len(saved["memory"]["samples"]) == 2 * CONFIG.grad_accum  # carried on resume
    resumed = fresh()
    result = train(
        resumed.model,
        text_recipe(char_tokenizer, CONFIG),
        resumed,
        EXAMPLES,
        VAL,
        CONFIG,
        tmp_path / "b",
        progress=False,
    )
    assert result.resumed_from == 2 and result.steps == 6
    assert result.first_step_shapes == whole.first_step_shapes  # FLOPs counted on step 0's shapes either way
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if reducer:
        assert straight.reducer.update_counts == resumed.reducer.update_counts


def test_a_fast_path_run_stopped_and_resumed_ends_bit_exactly_as_one_never_stopped(method, char_tokenizer, tmp_path):
    """From a review: the fast path's learnt groups of wrappers reading one input (q and v) were not in the
    checkpoint, so the first step after a resume made their first matmuls one by one, not stacked as the
    uninterrupted run did: the weights differed in the last bits (1e-8), where the README says bit-exactly."""
    config = dataclasses.replace(CONFIG, steps=7, micro_batch_size=3, checkpoint_every=3)

    def fresh():
        torch.manual_seed(0)
        adapter = attach(tiny_llama(), method, targets="q_proj,v_proj", r=4, dropout=0.1)
        adapter.use_fast_path(True)
        return adapter

    def run(adapter, out, **stop):
        train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, out,
              progress=False, **stop)  # fmt: skip
        return adapter

    straight = run(fresh(), tmp_path / "straight").state_dict()
    polls = []
    with pytest.raises(Cancelled, match="stopped at step 4"):  # between checkpoints: its own is written
        run(fresh(), tmp_path / "resumed", should_stop=lambda: polls.append(1) or len(polls) == 4)
    resumed = run(fresh(), tmp_path / "resumed").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("asked_at", ["last step", "final validation"])
def test_a_stop_asked_at_the_end_of_training_checkpoints_the_last_step(char_tokenizer, tmp_path, asked_at):
    """SIGTERM during the last step or the final validation: ``Cancelled`` with the last step saved (it used to
    be let through, and the run scored on for minutes after the scheduler had asked it to stop)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=4)
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > (CONFIG.steps - 1 if asked_at == "last step" else CONFIG.steps)

    recipe = text_recipe(char_tokenizer, CONFIG)
    with pytest.raises(Cancelled, match=f"stopped at step {CONFIG.steps} of {CONFIG.steps}"):
        train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, tmp_path, progress=False, should_stop=should_stop)
    # asked at the last step: stopped there, not after a final validation that polls again (a review: a loop that
    # ignored the last step's stop passed, since the final validation's poll raised the same message)
    assert len(polls) == (CONFIG.steps if asked_at == "last step" else CONFIG.steps + 1)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["state"]["step"] == CONFIG.steps
    result = train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, tmp_path, progress=False)
    assert result.resumed_from == CONFIG.steps and result.final_val_loss is not None


def test_checkpoint_written_on_other_training_files_is_refused(char_tokenizer, tmp_path):
    """A run stopped, its training file edited, then started again must not resume on the new file."""
    config = dataclasses.replace(CONFIG, steps=3)

    def run(sha: str):
        adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
        recipe = text_recipe(char_tokenizer, config)
        files = {"ARC-Easy/train.json": sha, "boolq/train.json": "b"}
        return train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, tmp_path, progress=False, data=files)

    run("a")
    assert run("a").resumed_from == 3  # the same files: resumed (the checkpoint written when training ended)
    with pytest.raises(ValueError, match=r"other training data \(ARC-Easy/train.json changed since\).*--force"):
        run("edited")


def test_checkpoint_written_on_other_model_weights_is_refused(char_tokenizer, tmp_path):
    """From a review: a model folder's weights (or the embedded GGUF) replaced while a run was stopped: the run
    resumed its checkpoint on the new weights (only a finished run's record was compared with the folder)."""
    config = dataclasses.replace(CONFIG, steps=3)

    def run(weights: str | None):
        adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
        recipe = text_recipe(char_tokenizer, config)
        return train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, tmp_path, progress=False, weights=weights)

    run("a" * 64)
    assert run("a" * 64).resumed_from == 3  # the same weights: resumed
    with pytest.raises(ValueError, match=r"another model \(.*: aaaaaaaa -> bbbbbbbb since\); delete it or use --force"):
        run("b" * 64)
    assert run(None).resumed_from == 3  # not known here (another process, a hub id): taken as it is
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["state"]["weights"] == "a" * 64  # still kept


@pytest.mark.parametrize(
    ("then", "now", "message"),
    [
        (
            {"revision": "c" * 40},
            {"weights": "a" * 64},
            r"on the hub id at commit cccccccc \(a local folder .*: aaaaaaaa\)",
        ),
        (
            {"weights": "a" * 64},
            {"revision": "c" * 40},
            r"on a local folder \(aaaaaaaa; the hub id .*: commit cccccccc\)",
        ),
    ],
)
def test_checkpoint_of_a_hub_id_is_not_resumed_on_a_local_folder_of_its_name(
    char_tokenizer, tmp_path, then, now, message
):
    """From a review: a --model string that named a hub id when the run stopped and a local folder when it was
    started again (or the reverse) resumed its checkpoint on the other model: the checkpoint kept only a commit and
    the run only a digest, and each check compared only a value both sides had."""
    config = dataclasses.replace(CONFIG, steps=3)

    def run(folder: str, **model: str):
        adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
        recipe = text_recipe(char_tokenizer, config)
        return train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, tmp_path / folder, progress=False, **model)

    run("switched", **then)
    with pytest.raises(ValueError, match=message + "; delete it or use --force to start over"):
        run("switched", **now)
    assert run("switched", **then).resumed_from == 3  # the model it was written on: resumed
    run("before")  # neither kept (a checkpoint from before, a model not known): resumed on either
    assert run("before", **now).resumed_from == 3


def test_checkpoint_from_other_settings_is_refused(char_tokenizer, tmp_path):
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    train(
        adapter.model,
        text_recipe(char_tokenizer, CONFIG),
        adapter,
        EXAMPLES,
        VAL,
        dataclasses.replace(CONFIG, steps=3),
        tmp_path,
        progress=False,
    )
    other = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    with pytest.raises(ValueError, match="other training settings"):
        train(
            other.model,
            text_recipe(char_tokenizer, CONFIG),
            other,
            EXAMPLES,
            VAL,
            dataclasses.replace(CONFIG, lr=1.0),
            tmp_path,
            progress=False,
        )


def test_a_checkpoint_of_another_adapter_or_its_options_is_refused(char_tokenizer, tmp_path):
    """From a review: the checkpoint kept the training settings but not the method's options, so a direct caller of
    ``train`` who trained lora at alpha 8 and started again at alpha 64 resumed the first adapter's weights and loss
    curve under the second's settings (``harness run`` puts them in the run id). A checkpoint from before they were
    kept is resumed as it is."""
    config = dataclasses.replace(CONFIG, steps=3)

    def run(folder: str, method: str = "lora", targets: str = "q_proj", **options):
        adapter = attach(tiny_llama(), method, targets=targets, r=4, **options)
        recipe = text_recipe(char_tokenizer, config)
        return train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, tmp_path / folder, progress=False)

    run("a", alpha=8)
    assert run("a", alpha=8).resumed_from == 3  # the same adapter: resumed
    run("b", targets="q_proj,v_proj", alpha=8)  # from a re-review: the same layers named in another order were refused
    assert run("b", targets="v_proj,q_proj", alpha=8).resumed_from == 3
    with pytest.raises(ValueError, match=r"other lora options \(alpha 8 -> 64 since\); delete it or use --force"):
        run("a", alpha=64)
    with pytest.raises(ValueError, match=r"another method \(lora -> lora_fa since\); delete it or use --force"):
        run("a", "lora_fa", alpha=8)
    saved = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    assert saved["adapter_settings"]["config"]["alpha"] == 8  # kept as it was: nothing refused wrote over it
    del saved["adapter_settings"]  # a checkpoint from before they were kept: not known, resumed
    torch.save(saved, tmp_path / "a" / CHECKPOINT)
    assert run("a", alpha=64).resumed_from == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", -5, "steps must be >= 1"),
        ("micro_batch_size", 0, "micro_batch_size must be >= 1"),
        ("schedule", "exp", "choose one of: linear, cosine, constant"),
        ("lr", 0.0, "lr must be finite numbers > 0"),
        # from a review: these quoted epochs and lr (valid) and not the value that was wrong
        ("warmup_steps", -1, r"must be >= 0 \(got warmup_steps=-1\)$"),
        ("checkpoint_every", -2, r"must be >= 0 \(got checkpoint_every=-2\)$"),
        # from a review: NaN or < 0 turned clipping off unsaid, or made the weights NaN at step 1's update
        ("max_grad_norm", float("nan"), r"max_grad_norm must be a finite number >= 0 \(got nan; 0: none\)"),
        ("max_grad_norm", -1.0, "max_grad_norm must be a finite number >= 0"),
        ("weight_decay", -5.0, "weight_decay must be a finite number >= 0"),
        ("weight_decay", float("nan"), "weight_decay must be a finite number >= 0"),
    ],
)
def test_bad_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_a_step_of_more_examples_than_a_step_may_take_is_refused_in_the_settings():
    """From a review: ``--grad-accum 10000000000`` (or a --micro-batch-size as large) warned that a step takes 2e10
    examples, then built that step's index list and took all memory before the first step (a MemoryError after
    ~100 s, a failed record). The settings refuse it, naming both flags; the bound itself is taken."""
    from harness.train_schedule import MAX_STEP_EXAMPLES

    for micro, accum in [(2, 10**10), (10**12, 4), (2**8, 2**8 + 1)]:
        with pytest.raises(ValueError, match=(
            rf"^micro_batch_size x grad_accum \(--micro-batch-size x --grad-accum\) is {micro} x {accum} = "
            rf"{micro * accum} examples a step, over the 65536 a step takes at most; give smaller values"
        )):  # fmt: skip
            TrainConfig(micro_batch_size=micro, grad_accum=accum)
    assert TrainConfig(micro_batch_size=2**8, grad_accum=2**8).grad_accum * 2**8 == MAX_STEP_EXAMPLES == 65536


def test_the_fused_adamw_makes_the_for_loop_update():
    """The fast path's optimizer (torch's fused AdamW) against the default one: the same parameters after
    three steps, within fp32 rounding."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    finals = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = adamw([{"params": params, "lr": 1e-2, "weight_decay": 0.1}], fused=fused)
        assert bool(opt.defaults["fused"]) == fused
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        finals.append([p.detach() for p in params])
    for a, b, p0 in zip(*finals, start, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert (a - p0).abs().min() > 1e-3  # every entry moved: the comparison is not of untouched tensors


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25]),  # warm-up (step + 1) / (warmup + 1), then down to 0
        ("cosine", [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
        ("constant", [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_the_learning_rate_schedule_and_the_rate_each_step_trains_with(schedule, expected, char_tokenizer):
    config = dataclasses.replace(CONFIG, steps=6, warmup_steps=2, schedule=schedule, checkpoint_every=0)
    factor = lr_lambda(config, 6)
    assert [factor(s) for s in range(6)] == pytest.approx(expected)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):  # the rate the optimizer steps with, every step
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", record)
        train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, None, progress=False)
    assert seen == pytest.approx([config.lr * f for f in expected])


def test_gradients_are_clipped_to_max_grad_norm(char_tokenizer):
    """Each step's gradient has norm <= max_grad_norm, and 0 turns the clipping off."""

    def norms(max_grad_norm: float) -> list[float]:
        config = dataclasses.replace(CONFIG, steps=3, max_grad_norm=max_grad_norm, checkpoint_every=0)
        adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=2)
        seen = []
        step = torch.optim.AdamW.step

        def record(self, *args, **kwargs):
            grads = [p.grad.flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]
            seen.append(torch.linalg.vector_norm(torch.cat(grads)).item())
            return step(self, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.optim.AdamW, "step", record)
            recipe = text_recipe(char_tokenizer, config)
            train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, None, progress=False)
        return seen

    free = norms(0.0)
    assert len(free) == 3 and min(free) > 1e-3  # unclipped, every step's gradient is larger than the bound below
    assert norms(1e-3) == pytest.approx([1e-3] * 3, rel=1e-3)


def test_one_epoch_counts_every_example_and_every_real_token_once(char_tokenizer):
    """``samples`` and ``tokens`` (behind tokens/s in every record) are the examples and non-pad tokens seen:
    one epoch of 40 examples, 5 steps of 4 x 2, sees each example once, padding left out."""
    config = dataclasses.replace(CONFIG, steps=5, checkpoint_every=0)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    recipe = text_recipe(char_tokenizer, config)
    result = train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, None, progress=False)
    lengths = [len(recipe.encode(e).input_ids) for e in EXAMPLES]
    assert len(set(lengths)) > 1  # examples of several lengths: batches pad, and padding must not count
    assert (result.samples, result.tokens) == (40, sum(lengths))


def test_epochs_train_that_many_passes_in_whole_steps(char_tokenizer):
    """From a review: ``--epochs E`` trained round(E x whole steps a pass), a step lost a pass: 3 epochs of 50
    examples at 8 a step gave 18 steps (2.88 passes) where 150 examples make 18.75, so 18 is right there, but 31
    examples gave 9 steps (2.32 passes) where 11 whole steps (2.84) fit. Now floor(E x examples / step)."""
    examples = (EXAMPLES * 2)[:31]
    config = dataclasses.replace(CONFIG, steps=None, epochs=3.0, checkpoint_every=0)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    result = train(adapter.model, text_recipe(char_tokenizer, config), adapter, examples, VAL, config, None,
                   progress=False)  # fmt: skip
    assert result.steps == 11 and result.samples == 88  # 3 x 31 = 93 examples: 11 whole steps of 8


def test_epoch_steps_are_exact_not_float_rounded():
    """From a re-review: floor(E x examples / step) in floats lost a whole step where the exact answer is whole:
    2.3 x 1600 / 16 is 229.99999999999997 (229 steps, not 230); 0.7 x 170,000 / 8 gave 14,874."""
    from harness.train_schedule import epoch_steps

    assert epoch_steps(2.3, 1600, 16) == 230 and epoch_steps(0.7, 170_000, 8) == 14_875
    assert epoch_steps(3.0, 31, 8) == 11 and epoch_steps(1.0, 3, 8) == 1  # at least one step


def test_a_stop_without_a_run_dir_says_nothing_was_saved(char_tokenizer):
    """From a review: a stop asked of ``train`` without ``run_dir`` said "checkpoint saved, the next start
    resumes", with nothing written."""
    from harness.train import Cancelled

    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    with pytest.raises(Cancelled, match=r"stopped at step 1 of 6; no checkpoint \(no run_dir\): nothing was saved"):
        train(adapter.model, text_recipe(char_tokenizer, CONFIG), adapter, EXAMPLES, VAL, CONFIG, None, progress=False,
              should_stop=lambda: True)  # fmt: skip


def test_a_step_is_the_mean_over_its_supervised_tokens_however_it_is_split_into_micro_batches(char_tokenizer):
    """A step of 8 examples is one loss, the sum over its supervised tokens over their count, whether it runs as
    1 micro-batch of 8 or 4 of 2 (a review: a mean of the micro-batches' means passed every test, though it
    weighs a token of a short example more). Examples of very unequal answer lengths make the two differ."""
    examples = [Example(f"Q{i}: ", "yes" if i % 2 else "a much longer answer " * (1 + i % 3), "toy") for i in range(16)]
    ends = {}
    for micro, accum in ((8, 1), (2, 4)):
        config = dataclasses.replace(
            CONFIG, steps=1, micro_batch_size=micro, grad_accum=accum, warmup_steps=0, checkpoint_every=0
        )
        adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=2, dropout=0.0)
        perturb(adapter)  # B off zero, so that A's gradient is not zero either
        recipe = text_recipe(char_tokenizer, config)
        result = train(adapter.model, recipe, adapter, examples, VAL, config, None, progress=False)
        ends[micro] = (result.loss_curve[0][1], {k: v.clone() for k, v in adapter.state_dict().items()})
    (whole, w1), (split, w2) = ends[8], ends[2]
    assert split == pytest.approx(whole, rel=1e-5)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6, rtol=1e-5) for k in w1)


def test_the_micro_batches_are_each_epochs_shuffle_in_turn_made_as_the_steps_ask():
    """The order is ``random.Random(seed)`` shuffling ``range(n)`` once an epoch, in turn, each step the next
    micro x accum x processes of it, this process taking every world_size-th (the list the loop made up front,
    written out here), whichever step is asked for first."""
    import random
    import types

    from harness.train import _micro_batches

    def up_front(n, config, acc, total_steps):
        rng, order = random.Random(config.seed), []
        per_step = config.micro_batch_size * config.grad_accum * acc.num_processes
        while len(order) < total_steps * per_step:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order += epoch
        chunks = [
            order[s * per_step : (s + 1) * per_step][acc.process_index :: acc.num_processes] for s in range(total_steps)
        ]
        return [[c[i : i + config.micro_batch_size] for i in range(0, len(c), config.micro_batch_size)] for c in chunks]

    for n, micro, accum, world, steps, seed in [(40, 4, 2, 1, 30, 0), (7, 3, 1, 1, 50, 5), (13, 2, 3, 2, 40, 1)]:
        config = TrainConfig(steps=steps, micro_batch_size=micro, grad_accum=accum, seed=seed)
        for rank in range(world):
            acc = types.SimpleNamespace(num_processes=world, process_index=rank)
            lazy, expected = _micro_batches(n, config, acc, steps), up_front(n, config, acc, steps)
            assert [lazy[i] for i in (9, 2, steps - 1, 0)] == [expected[i] for i in (9, 2, steps - 1, 0)]
            assert list(lazy) == expected and lazy[:1] == expected[:1]


def test_a_huge_step_count_starts_at_once_and_stops_when_asked(char_tokenizer):
    """From a review: ``--steps 99999999999999999999`` built every step's indices before the first step (21 GB,
    and a SIGTERM unread for ten minutes, since the stop is read between steps)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    config = dataclasses.replace(CONFIG, steps=10**20, checkpoint_every=0)
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(Cancelled, match=f"stopped at step 2 of {10**20}"):
        train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, None,
              progress=False, should_stop=should_stop)  # fmt: skip


def test_training_under_mixed_precision_leaves_the_model_scoring_as_it_did_before(char_tokenizer):
    """From a review: accelerate's prepare() under bf16 patches the model's forward with autocast, in place, and
    the patch stayed after training, so a trained method was scored under autocast where the zero-shot model was
    not (on a GPU). On the CPU here, bf16 autocast as a GPU run has it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    model = adapter.model
    plain = type(model).forward
    config = dataclasses.replace(CONFIG, steps=1, checkpoint_every=0)
    AcceleratorState._reset_state(True)  # an earlier test's (fp32) state would refuse bf16
    try:
        accelerator = Accelerator(mixed_precision="bf16", cpu=True)
        train(model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, None, progress=False,
              accelerator=accelerator)  # fmt: skip
    finally:
        AcceleratorState._reset_state(True)  # the next Accelerator() is the harness's own again
    assert "_original_forward" not in model.__dict__ and model.forward.__func__ is plain
    ids = torch.tensor([[1, 5, 7, 9]])
    model.eval()  # as scoring has it: no dropout
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(model, ids).logits)  # no autocast: the same logits


def test_a_resumed_run_does_not_hold_its_checkpoint_while_it_trains(char_tokenizer, tmp_path, monkeypatch):
    """From a review: the checkpoint's payload (the adapter's tensors among it) stayed referenced through a resumed
    run's training, above the memory baseline a fresh run has."""
    import gc
    import weakref

    import harness.train as train_module

    def fresh():
        torch.manual_seed(0)
        return attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=4)

    _crash_at_step_3(fresh(), char_tokenizer, tmp_path)
    payload: list[weakref.ref] = []
    real_read = train_module._read_checkpoint

    def read(path):
        saved = real_read(path)
        payload.extend(weakref.ref(t) for t in saved["adapter"].values())
        return saved

    monkeypatch.setattr(train_module, "_read_checkpoint", read)
    resumed = fresh()
    alive: list[int] = []
    real_resumed_hook = resumed.on_step_begin

    def count_alive(step, val_loss_fn):
        gc.collect()
        alive.append(sum(ref() is not None for ref in payload))
        real_resumed_hook(step, val_loss_fn)

    resumed.on_step_begin = count_alive
    result = train(
        resumed.model, text_recipe(char_tokenizer, CONFIG), resumed, EXAMPLES, VAL, CONFIG, tmp_path, progress=False
    )
    assert result.resumed_from == 2 and payload and alive == [0] * 4  # steps 2 to 5: none of the payload held


def test_a_run_with_nothing_supervised_is_refused_before_it_steps(char_tokenizer, tmp_path):
    """From a review: with every answer cut away by cutoff_len the run "succeeded", stepping an adapter on no
    gradient and recording a loss of 0.0 a step (never measured)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=2)
    short = dataclasses.replace(CONFIG, cutoff_len=4)  # shorter than every prompt: no answer token is left
    recipe = text_recipe(char_tokenizer, short)
    with pytest.raises(ValueError, match=r"no training step has a supervised token: at cutoff_len=4 every example's"):
        train(adapter.model, recipe, adapter, EXAMPLES, VAL, short, tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT).exists()


def test_training_freezes_its_peak_memory_before_the_final_validation(char_tokenizer, monkeypatch):
    """The peak is training's: ``MemoryMeter.freeze`` runs once, before the final validation (on a GPU the
    allocator's peak held it; from a review, a test that only called freeze could not tell the call gone)."""
    import harness.train as train_module

    events = []
    meter = train_module.MemoryMeter
    monkeypatch.setattr(meter, "freeze", lambda self: events.append("freeze") or setattr(self, "frozen", self._peaks()))
    adapter = attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=2)
    recipe = text_recipe(char_tokenizer, CONFIG)
    loss_sum = recipe.loss_sum
    monkeypatch.setattr(recipe, "loss_sum", lambda *a, **k: events.append("loss") or loss_sum(*a, **k))
    train(adapter.model, recipe, adapter, EXAMPLES, VAL, dataclasses.replace(CONFIG, steps=2), None, progress=False)
    assert events.count("freeze") == 1 and "loss" in events[events.index("freeze") + 1 :]  # validation after it


def test_a_run_resumed_under_other_timing_facts_says_where_its_earlier_steps_ran(char_tokenizer, tmp_path, monkeypatch):
    """From a review: a checkpoint kept only the device type and precision of where a run computed, while its
    train_s, tokens and memory peaks carried over a resume: a run stopped on one machine (CPU thread count, malloc
    setting) and resumed on another was timed under the second's name alone. The checkpoint keeps the facts the
    leaderboard pools times by; a resume under others says which, one under the same (or from an older checkpoint,
    whose facts are not known) does not."""
    import harness.train as train_module

    real = train_module.environment()
    elsewhere = real | {"torch_threads": real["torch_threads"] + 7, "malloc": {"mmap_threshold": 1 << 30}}

    def fresh():
        torch.manual_seed(0)
        return attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=4)

    def resume(folder, env):
        monkeypatch.setattr(train_module, "environment", lambda: env)
        adapter = fresh()
        recipe = text_recipe(char_tokenizer, CONFIG)
        return train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, folder, progress=False)

    monkeypatch.setattr(train_module, "environment", lambda: elsewhere)  # the first session, on another machine
    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "moved")
    saved = torch.load(tmp_path / "moved" / CHECKPOINT, weights_only=True)
    assert saved["state"]["timed_on"] == [train_module.timed_facts(elsewhere)]
    moved = resume(tmp_path / "moved", real)
    assert moved.resumed_from == 2 and moved.timed_on_before_resume == saved["state"]["timed_on"]

    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "stayed")  # started and resumed here
    stayed = resume(tmp_path / "stayed", real)
    assert stayed.resumed_from == 2 and stayed.timed_on_before_resume is None

    monkeypatch.setattr(train_module, "environment", lambda: elsewhere)
    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "old")
    saved = torch.load(tmp_path / "old" / CHECKPOINT, weights_only=True)
    del saved["state"]["timed_on"]  # a checkpoint from before the facts were kept: taken as this process's
    torch.save(saved, tmp_path / "old" / CHECKPOINT)
    old = resume(tmp_path / "old", real)
    assert old.resumed_from == 2 and old.timed_on_before_resume is None

    # from a re-review: a GPU job resumed with other CPU threads computes its steps alike, and the leaderboard pools
    # it (threads are a CPU's only): it was marked as resumed elsewhere all the same
    gpu = real | {"device": "NVIDIA H100", "device_type": "cuda", "malloc": None}
    monkeypatch.setattr(train_module, "environment", lambda: gpu | {"torch_threads": 8})
    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "gpu")
    assert resume(tmp_path / "gpu", gpu | {"torch_threads": 16}).timed_on_before_resume is None
    # a checkpoint of 31cdf34 kept the facts whole (a GPU's threads among them): compared as now, the same place
    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "whole")
    saved = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    saved["state"]["timed_on"] = [{k: (gpu | {"torch_threads": 8}).get(k) for k in train_module.TIMED_ON_KEYS}]
    torch.save(saved, tmp_path / "whole" / CHECKPOINT)
    assert resume(tmp_path / "whole", gpu | {"torch_threads": 8}).timed_on_before_resume is None


def test_a_record_of_a_run_resumed_on_another_machine_says_so_and_its_time_pools_with_no_other(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """From a review: the record's env is the resuming process's alone, so a run started on one machine (here: one of
    another name and CPU thread count) and resumed on this one had its train_s averaged with this machine's runs in overhead.csv. Its
    record names where its earlier steps ran, and the leaderboard leaves its times out; a run resumed where it
    started is pooled as before."""
    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.leaderboard import tables
    from harness.train import timed_facts

    real = runner.environment()
    elsewhere = real | {"device": f"{real['device']} (another)", "torch_threads": real["torch_threads"] + 7}

    def stopped_then_resumed(seed: int, env: dict) -> dict:
        [spec] = runner.build_specs(
            "commonsense", ["lora"], [seed], "smoke", model=str(tiny_model), random_weights=True
        )
        with monkeypatch.context() as m:  # the first session: stopped (as by SIGTERM) after its first step
            m.setattr(runner, "environment", lambda: env)
            m.setattr(StopOnSigterm, "requested", lambda self: True)
            with pytest.raises(Cancelled, match="stopped at step 1 of"):
                runner.run_all([spec], tmp_path / "runs", str(data_dir), progress=False)
        [record] = runner.run_all([spec], tmp_path / "runs", str(data_dir), progress=False)  # resumed here
        assert record["run"]["status"] == "success" and record["train"]["resumed_from_step"] == 1
        return record

    stayed, moved = stopped_then_resumed(0, real), stopped_then_resumed(1, elsewhere)
    assert "timed_on_before_resume" not in stayed["train"]
    assert moved["env"]["torch_threads"] == real["torch_threads"]  # the record's env: the resuming process's
    assert moved["train"]["timed_on_before_resume"] == [timed_facts(elsewhere)]  # as the leaderboard compares them
    assert moved["train"]["timed_on_before_resume"][0]["device"] == elsewhere["device"]
    [row] = tables([stayed, moved])["overhead"].to_dict("records")
    assert row["train_s"] == round(stayed["train"]["train_s"], 1)  # moved's time left out
    assert row["train_s_by_device"].count(":") == 1 and f"{stayed['train']['train_s']:.1f}" in row["train_s_by_device"]


def test_a_run_resumed_by_other_harness_code_says_what_its_earlier_steps_ran(
    char_tokenizer, tmp_path, monkeypatch, capsys
):
    """From a review: a checkpoint kept the task's and methods' versions but not the harness's own commit, so a run
    stopped at one commit and resumed at another was recorded as the second's alone. The checkpoint keeps the
    harness's commit, dirty flag and version; a resume under others says so, and which; one under the same (or from
    an older checkpoint, whose are not known) does not."""
    from harness import records

    real = records.git_state()
    older = {"git_commit": "0" * 40, "git_dirty": True}

    def fresh():
        torch.manual_seed(0)
        return attach(tiny_llama(), "lora", targets="q_proj,v_proj", r=4)

    def resume(folder):
        adapter = fresh()
        recipe = text_recipe(char_tokenizer, CONFIG)
        return train(adapter.model, recipe, adapter, EXAMPLES, VAL, CONFIG, folder, progress=False)

    with monkeypatch.context() as m:  # the first session, at another commit
        m.setattr(records, "git_state", lambda root=None, paths=(".",): older)
        _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "moved")
    saved = torch.load(tmp_path / "moved" / CHECKPOINT, weights_only=True)
    assert saved["state"]["harness_code"] == [records.harness_code() | older]
    capsys.readouterr()
    moved = resume(tmp_path / "moved")
    assert moved.resumed_from == 2 and moved.code_before_resume == saved["state"]["harness_code"]
    warning = capsys.readouterr().out
    assert "other harness code (commit 00000000 (dirty), version " in warning
    assert "train.code_before_resume" in warning and warning.count("warning:") == 1

    _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "stayed")  # started and resumed at this commit
    capsys.readouterr()
    stayed = resume(tmp_path / "stayed")
    assert stayed.resumed_from == 2 and stayed.code_before_resume is None
    assert "harness code" not in capsys.readouterr().out
    assert records.git_state() == real

    with monkeypatch.context() as m:
        m.setattr(records, "git_state", lambda root=None, paths=(".",): older)
        _crash_at_step_3(fresh(), char_tokenizer, tmp_path / "old")
    saved = torch.load(tmp_path / "old" / CHECKPOINT, weights_only=True)
    del saved["state"]["harness_code"]  # a checkpoint from before it was kept: taken as this process's
    torch.save(saved, tmp_path / "old" / CHECKPOINT)
    old = resume(tmp_path / "old")
    assert old.resumed_from == 2 and old.code_before_resume is None


def test_a_record_of_a_run_resumed_by_other_harness_code_names_what_its_earlier_steps_ran(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """The record's ``run`` names the resuming session's commit and version (its run id unchanged); its
    ``train.code_before_resume`` the stopped session's, where they differ."""
    from harness import records, runner
    from harness.guard import StopOnSigterm

    older = {"git_commit": "0" * 40, "git_dirty": False}
    [spec] = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    with monkeypatch.context() as m:  # the first session, at another commit: stopped (as by SIGTERM) after a step
        m.setattr(records, "git_state", lambda root=None, paths=(".",): older)
        m.setattr(StopOnSigterm, "requested", lambda self: True)
        with pytest.raises(Cancelled, match="stopped at step 1 of"):
            runner.run_all([spec], tmp_path / "runs", str(data_dir), progress=False)
    [record] = runner.run_all([spec], tmp_path / "runs", str(data_dir), progress=False)  # resumed at this commit
    assert record["run"]["status"] == "success" and record["train"]["resumed_from_step"] == 1
    assert record["run"]["id"] == spec.run_id and record["run"]["git_commit"] == records.git_state()["git_commit"]
    assert record["train"]["code_before_resume"] == [older | {"harness_version": record["run"]["harness_version"]}]
    records.check_success(tmp_path / "runs" / spec.run_id / records.RECORD, record)


def test_the_reducer_scores_layers_on_validation_batches_with_something_supervised(char_tokenizer, monkeypatch, capsys):
    """From a review: the Reducer's scoring round took validation batches in turn, one whose answers cutoff_len had
    all cut away too: every layer scored a loss of 0.0 there (so its choice was a tie), and validation examples cut
    were not counted. It scores on batches with supervised tokens only, the cut ones are counted, and a split with
    none is refused before training, as no split is."""
    cut = Example("Q: " + "x" * 80 + "? A: ", "it is 8", "toy")  # past cutoff_len=64: nothing of it supervised
    config = dataclasses.replace(CONFIG, steps=4, val_batch_size=1, checkpoint_every=0)
    adapter = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=dict(k=2, interval=1))
    seen: list[float] = []
    begin = adapter.on_step_begin

    def spy(step, val_loss_fn):
        def scored() -> float:
            seen.append(val_loss_fn())
            return seen[-1]

        return begin(step, scored if val_loss_fn is not None else None)

    monkeypatch.setattr(adapter, "on_step_begin", spy)
    recipe = text_recipe(char_tokenizer, config)
    train(adapter.model, recipe, adapter, EXAMPLES, [cut, VAL[0]], config, None, progress=False)
    assert seen and all(loss > 0 for loss in seen), seen
    assert "warning: 1 of 2 validation examples are longer than cutoff_len=64 tokens" in capsys.readouterr().err
    fresh = attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=dict(k=2, interval=1))
    with pytest.raises(ValueError, match="validation split to score layers, with answers that are not all cut"):
        train(fresh.model, recipe, fresh, EXAMPLES, [cut], config, None, progress=False)


def test_the_reducer_counts_a_layer_only_on_the_steps_that_moved_it(char_tokenizer, tmp_path, monkeypatch):
    """From a review: the Reducer counted its K layers as updated when it drew them, as each step began, so a step
    with no supervised token (every answer cut away: its loss null, no tensor moved) counted them too: the record's
    update_counts (plot_reducer's "steps updated") were inflated. A layer is counted on the steps whose optimizer
    step moved its heads, and a run stopped and resumed counts as one never stopped."""
    cut = "x" * 60  # with it the prompt is past cutoff_len=40: the answer is cut away
    examples = [Example(f"Q{i}: what is {i} plus one? A: " + cut * (i % 2), f"it is {i + 1}", "toy") for i in range(8)]
    config = dataclasses.replace(CONFIG, steps=8, micro_batch_size=1, grad_accum=1, cutoff_len=40, checkpoint_every=0)
    recipe = text_recipe(char_tokenizer, config)

    def fresh():
        torch.manual_seed(0)
        return attach(tiny_llama(), "effilora", targets="q_proj,v_proj", r=2, reducer=dict(k=2, selection="random"))

    straight = fresh()
    heads, moved, before = straight.reducer.heads, [0] * 4, []
    begin = straight.on_step_begin

    def count_moved() -> None:
        for i, (was, now) in enumerate(zip(before, heads, strict=True)):
            moved[i] += any(not torch.equal(b, p) for b, p in zip(was, now, strict=True))

    def spy(step, val_loss_fn):
        if before:
            count_moved()
        begin(step, val_loss_fn)
        before[:] = [[p.detach().clone() for p in hs] for hs in heads]

    monkeypatch.setattr(straight, "on_step_begin", spy)
    result = train(straight.model, recipe, straight, examples, VAL, config, None, progress=False)
    count_moved()
    trained = sum(loss is not None for _, loss in result.loss_curve)
    assert 0 < trained < 8  # steps with nothing supervised among the others
    assert straight.reducer.update_counts == moved and sum(moved) == 2 * trained

    config = dataclasses.replace(config, checkpoint_every=3)
    polls: list[int] = []
    with pytest.raises(Cancelled):
        stopped = fresh()
        train(stopped.model, recipe, stopped, examples, VAL, config, tmp_path, progress=False,
              should_stop=lambda: polls.append(1) or len(polls) == 5)  # fmt: skip
    resumed = fresh()
    assert train(resumed.model, recipe, resumed, examples, VAL, config, tmp_path, progress=False).resumed_from == 5
    assert resumed.reducer.update_counts == moved


def test_a_recipe_counting_in_tensors_is_refused_before_the_first_step(char_tokenizer):
    """From a review: a plugin recipe whose units() returned a 0-d tensor (mask.sum()) trained every step and then
    failed the run at its end, in a message about the record's final_val_loss; it is refused before the first step,
    naming the method to mend."""
    config = dataclasses.replace(CONFIG, steps=2, checkpoint_every=0)

    class TensorUnits(type(text_recipe(char_tokenizer, config))):
        def units(self, batch):
            return torch.tensor(super().units(batch))

        def loss_sum(self, model, batch):
            raise AssertionError("trained a step")

    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    recipe = TensorUnits(char_tokenizer, config.cutoff_len, config.train_on_inputs)
    with pytest.raises(TypeError, match=r"TensorUnits\.units returned Tensor for units; return an int"):
        train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, None, progress=False)

    class NumpyCounts(type(text_recipe(char_tokenizer, config))):  # numpy's ints are ints (a re-review: refused)
        def units(self, batch):
            return np.int64(super().units(batch))

        def stats(self, batch):
            return tuple(map(np.int64, super().stats(batch)))

    recipe = NumpyCounts(char_tokenizer, config.cutoff_len, config.train_on_inputs)
    result = train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, None, progress=False)
    assert type(result.tokens) is int and result.tokens > 0


def test_training_without_cuda_stays_on_the_cpu_the_record_names(char_tokenizer, monkeypatch):
    """From a review: train() built its Accelerator without ``cpu=``, whose default device is the platform's
    accelerator (Apple's MPS, XPU): prepare() moved the model there while the runner, the memory meter and the
    record said the CPU (and the zero-shot ``base`` run scored on the CPU)."""
    import accelerate

    asked = {}

    class Recording(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            asked.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", Recording)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    config = dataclasses.replace(CONFIG, steps=1, checkpoint_every=0)
    train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, None, progress=False)
    assert asked.get("cpu") is (not torch.cuda.is_available())
    assert next(adapter.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_another_process_draws_no_stream_another_seeds_main_process_draws(char_tokenizer, monkeypatch):
    """From a review: process i was seeded ``seed + i``, so process 1 of seed s drew process 0's stream of seed s + 1
    (``--seeds 0,1,2`` under two processes: halves of two runs with the same diffusion noise and timesteps). The main
    process keeps the seed itself (a single-process run's draws, the committed records'); the others do not collide."""
    import random

    import harness.train as train_module
    from harness.train import process_seed

    seeds = range(-3, 1000)
    mains = {process_seed(s, 0) for s in seeds}
    assert mains == set(seeds)  # index 0: the seed itself
    others = [process_seed(s, i) for s in seeds for i in range(1, 8)]
    assert len(set(others)) == len(others) and not mains & set(others)
    assert process_seed(5, 1) == process_seed(5, 1) != process_seed(6, 0)  # fixed, not seed + index
    for seed in others[:50]:  # taken as they are by both generators
        torch.manual_seed(seed)
        random.seed(seed)
    asked = []  # train() seeds its process through it
    monkeypatch.setattr(train_module, "process_seed", lambda s, i: asked.append((s, i)) or process_seed(s, i))
    config = dataclasses.replace(CONFIG, steps=1, checkpoint_every=0, seed=7)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, None, progress=False)
    assert asked == [(7, 0)]


def test_one_process_with_local_rank_set_trains_without_a_process_group(char_tokenizer, monkeypatch):
    """From a re-review: with ``cpu=True`` accelerate took LOCAL_RANK alone for several CPU processes: ``torchrun
    --nproc_per_node 1`` trained through a gloo group and DDP (its times with DDP's overhead), and a LOCAL_RANK
    inherited without MASTER_ADDR failed the run, where the runner saw one process."""
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    if torch.cuda.is_available():
        pytest.skip("the CPU's case")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    config = dataclasses.replace(CONFIG, steps=1, checkpoint_every=0)
    AcceleratorState._reset_state(True)  # as in a new process
    try:
        train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, None, progress=False)
        assert PartialState().distributed_type == DistributedType.NO
    finally:
        AcceleratorState._reset_state(True)
    assert os.environ["LOCAL_RANK"] == "0"  # put back


def test_a_warm_up_exactly_as_long_as_the_run_is_warned_about(capsys):
    """From a mutation test: a warm-up of the run's whole length (the learning rate never reaching its peak) was
    unpinned at the boundary: ``>=`` turned ``>`` passed every test."""
    from harness.train_schedule import _warn_schedule

    config = dataclasses.replace(CONFIG, steps=4, warmup_steps=4)
    _warn_schedule(config, 4, 40, 8)
    assert "the warm-up (4 steps) is not shorter than the run (4 steps)" in capsys.readouterr().err
    _warn_schedule(dataclasses.replace(config, warmup_steps=3), 4, 40, 8)
    assert "warm-up" not in capsys.readouterr().err


def test_a_recipe_counting_in_bools_is_refused():
    """From a mutation test: a task's ``units`` returning a bool (an int to Python) was refused by no test."""
    from types import SimpleNamespace

    from harness.train_schedule import check_counts

    recipe = SimpleNamespace(units=lambda batch: True, stats=lambda batch: (1, 5))
    with pytest.raises(TypeError, match="returned bool for units"):
        check_counts(recipe, None)


def test_zero_steps_is_refused_not_read_as_epochs():
    """From a mutation test: ``steps=0`` accepted would train by epochs (``steps or epoch_steps(...)``)."""
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TrainConfig(steps=0)


def test_the_loss_curve_numbers_steps_from_one(char_tokenizer):
    """From a mutation test: the loss curve's step numbers were pinned by a slow two-process test only."""
    config = dataclasses.replace(CONFIG, steps=3, checkpoint_every=0)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    recipe = text_recipe(char_tokenizer, config)
    result = train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, None, progress=False)
    assert [step for step, _ in result.loss_curve] == [1, 2, 3]


def test_a_resumed_run_draws_the_python_random_stream_an_uninterrupted_one_does(char_tokenizer, tmp_path):
    """From a mutation test: no test drew from Python's ``random`` across a resume (no built-in method does; a
    plugin's method or task may), so a checkpoint without its state passed."""
    import random

    config = dataclasses.replace(CONFIG, steps=4, checkpoint_every=2)

    def run(out, stop_at=None):
        adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
        draws, real = [], adapter.on_step_begin

        def hook(step, fn):  # a method or task drawing from Python's random each step
            draws.append((step, random.random()))
            real(step, fn)

        adapter.on_step_begin = hook
        polls = []
        stop = (lambda: polls.append(1) or len(polls) == stop_at) if stop_at else None
        try:
            recipe = text_recipe(char_tokenizer, config)
            train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, out, progress=False, should_stop=stop)
        except Cancelled:
            pass
        return draws

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_at=2)
    resumed = run(tmp_path / "b")
    assert resumed == straight[2:]


@pytest.mark.parametrize("code", ["EACCES", "EPERM", "ENFILE", "ESTALE"])
def test_a_checkpoint_refused_by_a_permission_or_the_machine_is_kept_not_set_aside(tmp_path, monkeypatch, code):
    """From a mutation test: only EIO and MemoryError were tested; a checkpoint the machine refused (permissions,
    too many open files, a stale network handle) must be kept for a rerun, not set aside as damaged."""
    import errno

    from harness import train as train_module

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"a good checkpoint")

    def fail(*args, **kwargs):
        raise OSError(getattr(errno, code), "refused")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(train_module.CheckpointUnreadable):
        train_module._read_checkpoint(path)
    assert path.read_bytes() == b"a good checkpoint"


class _TildeIsEos(CharTokenizer):
    """'~' tokenises to the eos id, as a target ending in '</s>' does with a real tokenizer."""

    def __call__(self, text, add_special_tokens=True):
        ids = super().__call__(text)["input_ids"]
        return {"input_ids": [self.eos_token_id if c == "~" else i for c, i in zip(text, ids, strict=True)]}


def test_a_target_already_ending_in_eos_gets_no_second_eos():
    """From a mutation test: no test gave a target that already ends in the EOS token (a second one passed)."""
    enc = encode(_TildeIsEos(), Example("Q: ", "yes~", "toy"), 64, train_on_inputs=False)
    assert enc.input_ids == [ord(c) - 30 for c in "Q: yes"] + [1]


def test_an_example_exactly_cutoff_len_long_is_not_counted_as_cut():
    """From a mutation test: an example of exactly ``cutoff_len`` tokens counted as cut (``>=``) passed; train()
    would then warn that its answer was lost."""
    from tasks.lm import CausalLMRecipe

    example = Example("Q: ", "yes", "toy")
    fits = CausalLMRecipe(CharTokenizer(), cutoff_len=6, train_on_inputs=False)
    fits.encode(example)
    assert fits.truncated == 0
    cut = CausalLMRecipe(CharTokenizer(), cutoff_len=5, train_on_inputs=False)
    cut.encode(example)
    assert cut.truncated == 1


def test_batches_are_left_padded_and_the_tail_is_the_longest_supervised_tail():
    """From a mutation test: right padding (the same loss, logits over whole rows) passed every test."""
    tok = CharTokenizer()
    items = [
        encode(tok, Example("Q: a long question? ", "ab", "t"), 64, False),
        encode(tok, Example("Q ", "abcd", "t"), 64, False),
    ]
    batch = collate(items, tok.pad_token_id)
    assert bool(batch["attention_mask"][:, -1].all())  # every row ends at the last column
    assert supervised_tail(batch["labels"]) == (6, 3 + 5)  # logits for the last 6 positions: "abcd"+eos of row 2


def test_the_loss_of_a_padded_batch_is_the_sum_of_its_rows_on_an_absolute_position_model():
    """From a mutation test: on the tests' RoPE Llama a constant position shift changes nothing, so dropping
    ``position_ids`` (or positions that ignore the padding) passed; on GPT-2 (absolute positions) a left-padded
    row would be read from its first pad."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    tok = CharTokenizer()
    items = [
        encode(tok, Example("Q: a long question here? ", "ab", "t"), 64, False),
        encode(tok, Example("Q ", "abcd", "t"), 64, False),
    ]

    def loss(rows):
        batch = collate(rows, tok.pad_token_id)
        return loss_sum(model, batch, supervised_tail(batch["labels"])[0])

    with torch.no_grad():
        torch.testing.assert_close(loss(items), loss(items[:1]) + loss(items[1:]), atol=1e-4, rtol=1e-4)


def test_output_cache_reads_either_name():
    """From a mutation test: transformers 5.25 still names ``past_key_values``, so the newer name's path was
    never taken by a test."""
    from types import SimpleNamespace

    from tasks.lm import output_cache

    assert output_cache(SimpleNamespace(cache="new")) == "new"
    assert output_cache(SimpleNamespace(cache=None, past_key_values="old")) == "old"
