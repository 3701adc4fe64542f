"""What each optimizer step of a run is made of: its examples (``_micro_batches``, reshuffled each epoch from the
seed; ``_first_shapes``, the shapes its FLOPs are counted on), its learning rate (``lr_lambda``: warm-up, then the
schedule; ``_warn_schedule``) and the optimizer (``adamw``). Part of ``harness.train``, which re-exports what others
import."""

from __future__ import annotations

import math
import numbers
import random
import sys
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

from harness.task import Recipe

if TYPE_CHECKING:
    from harness.train import TrainConfig

# the most examples one process takes a step (micro-batch x grad-accum; ``TrainConfig`` refuses more): a step's index
# list and the epochs shuffled for it stay small (65,536 indices, a few MB), where a mistyped --grad-accum of 10**10
# built a list of 2 x 10**10 and took all memory before the first step. The presets take 16 at most, LLM-Adapters 16,
# LLaVA 128: a step of 65,536 examples is hours of one GPU on a 7B model, past any batch a LoRA fine-tune asks for.
MAX_STEP_EXAMPLES = 2**16


def _warn_schedule(config: TrainConfig, total_steps: int, n: int, per_step: int) -> None:
    """Say (stderr) where the schedule is not what the settings read as: a warm-up as long as the run, whose
    learning rate then never reaches ``lr``; a step of more examples than there are; ``epochs`` that whole steps of
    ``per_step`` examples miss by over 5%."""
    if config.warmup_steps >= total_steps:
        print(
            f"warning: the warm-up ({config.warmup_steps} steps) is not shorter than the run ({total_steps} steps): "
            f"the learning rate reaches {total_steps / (config.warmup_steps + 1):.2g} of --lr at most and never "
            "decays; lower --warmup-steps or raise --steps",
            file=sys.stderr,
        )
    if per_step > n:  # the stream of examples wraps within one step: some are in it twice, unevenly
        print(
            f"warning: a step takes {per_step} examples (micro-batch x grad-accum x processes) but the training set "
            f"holds {n}: every step repeats some of them, some more often than others; lower --micro-batch-size or "
            "--grad-accum",
            file=sys.stderr,
        )
    passes = total_steps * per_step / n
    if not config.steps and abs(passes - config.epochs) > 0.05 * config.epochs:  # more than 5% off what was asked
        print(
            f"warning: --epochs {config.epochs:g} trains {total_steps} steps of {per_step} examples: "
            f"{passes:.4g} passes over the {n} training examples (whole steps only)",
            file=sys.stderr,
        )


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def adamw(groups: list[dict[str, Any]], fused: bool = False) -> torch.optim.AdamW:
    """AdamW as the training loop builds it. ``fused`` (the fast path's choice): torch's fused kernel, one
    pass over every tensor instead of a Python loop of ~10 ops per tensor (the same update within fp32
    rounding), where every tensor is floating point on a CPU or a CUDA device."""
    if fused:
        tensors = [p for group in groups for p in group["params"]]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(groups, fused=fused or None)


def encode_all(recipe: Recipe, examples: list[Any], split: str, cutoff_len: int, say: bool) -> list[Any]:
    """``examples`` encoded, with a warning (``say``: the main process) where a recipe that counts them
    (``truncated``) cut some at ``cutoff_len``, their answers with them."""
    before = getattr(recipe, "truncated", 0)  # counted since the recipe was made (the FLOPs probe may have encoded one)
    encoded = [recipe.encode(e) for e in examples]
    if (cut := getattr(recipe, "truncated", 0) - before) and say:
        print(
            f"warning: {cut} of {len(encoded)} {split} examples are longer than cutoff_len={cutoff_len} tokens and were "
            "cut, their answers with them; to keep them, raise cutoff_len (TrainConfig.cutoff_len: the preset's, or "
            "in the Python API)",
            file=sys.stderr,
        )
    return encoded


def check_counts(recipe: Recipe, batch: Any) -> None:
    """Before any step: ``Recipe.units`` and ``Recipe.stats`` give integers (from a review: a 0-d tensor,
    ``mask.sum()``, trained every step and failed the run at its end, in a message about the record)."""
    units, stats = recipe.units(batch), recipe.stats(batch)
    counts = [("units", units)]
    if isinstance(stats, tuple | list) and len(stats) == 2:
        counts += [("stats (samples)", stats[0]), ("stats (tokens)", stats[1])]
    else:
        counts.append(("stats", stats))
    for name, value in counts:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):  # numpy's ints are, a tensor is not
            raise TypeError(
                f"{type(recipe).__name__}.{name.split()[0]} returned {type(value).__name__} for {name}; return an "
                "int (int(mask.sum())), or for stats a (samples, tokens) tuple of them"
            )


def _first_shapes(recipe: Recipe, encoded: list[Any], micro_batches: list[list[list[int]]]) -> list[list[int]]:
    """The micro-batch shapes of the first step with anything supervised, on which the step's FLOPs are
    counted: the same whichever step a run resumes at (a run resumed at its end runs no step)."""
    for step in micro_batches:
        batches = [recipe.collate([encoded[i] for i in idx]) for idx in step]
        shapes = [recipe.shape(b) for b in batches if recipe.units(b)]
        if shapes:
            return shapes
    return []


class _MicroBatches:
    """``[step][micro][example index]`` for this process, reshuffled each epoch from the seed: the examples in
    one order per epoch (``random.Random(seed)`` shuffling ``range(n)`` once an epoch, in turn), each step the next
    ``per_step`` of them, this process taking every world_size-th. Made as the steps are asked for, keeping two
    epochs: a list of every step made up front held ``steps x per_step`` indices (a mistyped --steps of 10**20
    took all memory before the first step, where a stop is read); a step's own examples, micro x accum, are at most
    ``MAX_STEP_EXAMPLES`` (``TrainConfig``)."""

    def __init__(self, n: int, config: TrainConfig, accelerator, total_steps: int) -> None:
        self.n, self.total, self.seed = n, total_steps, config.seed
        self.micro = config.micro_batch_size
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.per_step = config.micro_batch_size * config.grad_accum * accelerator.num_processes
        self._rng, self._next, self._kept = random.Random(self.seed), 0, {}

    def __iter__(self) -> Iterator[list[list[int]]]:  # no __len__: a step count may exceed what len() returns
        step = 0
        while step < self.total:
            yield self[step]
            step += 1

    def _epoch(self, e: int) -> list[int]:
        if e not in self._kept:
            if e < self._next:  # an epoch already let go: the order is made again from the seed
                self._rng, self._next, self._kept = random.Random(self.seed), 0, {}
            while self._next <= e:
                order = list(range(self.n))
                self._rng.shuffle(order)
                self._kept = {k: v for k, v in self._kept.items() if k >= self._next - 1}
                self._kept[self._next] = order
                self._next += 1
        return self._kept[e]

    def __getitem__(self, step):  # noqa: ANN001, ANN204
        if isinstance(step, slice):
            return [self[i] for i in range(*step.indices(self.total))]
        if not -self.total <= step < self.total:
            raise IndexError(f"step {step} of {self.total}")
        step %= self.total
        start = step * self.per_step
        chunk = [self._epoch(p // self.n)[p % self.n] for p in range(start, start + self.per_step)]
        chunk = chunk[self.rank :: self.world]
        return [chunk[i : i + self.micro] for i in range(0, len(chunk), self.micro)]


def _micro_batches(n: int, config: TrainConfig, accelerator, total_steps: int) -> _MicroBatches:
    """``[step][micro][example index]`` for this process, reshuffled each epoch from the seed (``_MicroBatches``)."""
    return _MicroBatches(n, config, accelerator, total_steps)


def epoch_steps(epochs: float, examples: int, per_step: int) -> int:
    """The optimizer steps of ``epochs`` passes over ``examples`` at ``per_step`` a step: whole steps, up to one short
    of the passes (a review: round(E x whole steps a pass) lost up to a step a pass), at least one; exact, not in
    floats (2.3 x 1600 / 16 is 229.99999999999997)."""
    return max(1, math.floor(Fraction(str(epochs)) * examples / per_step))
