"""EffiLoRA's Reducer (spec: "The Reducer"): per-step layer selection driven by importance scores.

Score convention: a HIGH score means the layer matters LESS (suppressing it did not hurt). Layers are
picked for suppression with probability proportional to ``sigmoid(s)`` and for training with
probability proportional to ``sigmoid(-s)``. Freezing is done with ``requires_grad``: autograd then
computes no weight gradient for the frozen heads, and ``select`` sets their ``.grad`` to ``None`` (a loop that zeroes
grads with ``set_to_none=False`` kept a zero one), so AdamW skips the tensor entirely: no moment or weight decay
moves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from harness.config import ReducerConfig

if TYPE_CHECKING:
    from harness.adapter import AdapterLinear


def no_heads(method: str, layer: str | None = None) -> str:
    """The refusal of the Reducer for ``method``, whose wrappers (``layer``'s, or all: their class keeps
    ``AdapterLinear``'s) name no tensor to pause: it would pause nothing, yet score layers and record per-layer update
    counts as if it had."""
    which = f"its wrappers in {layer}" if layer else "its wrappers"
    return (
        f"method {method!r} cannot use the Reducer: the Reducer pauses a layer by freezing the tensors its wrappers' "
        f"reducer_parameters() return, and {which} return none; define reducer_parameters() on the method (e.g. "
        "returning its B) to use the Reducer, or leave the Reducer off (reducer=off)"
    )


class Reducer:
    def __init__(self, config: ReducerConfig, groups: Sequence[Sequence[AdapterLinear]]) -> None:
        self.config = config
        self.groups = [list(g) for g in groups]
        # the tensors it pauses: a layer without any would train every step, scored and counted as paused
        self.heads = [[p for layer in g for p in layer.reducer_parameters()] for g in self.groups]
        for group, heads in zip(self.groups, self.heads, strict=True):
            if not heads:
                raise ValueError(no_heads(type(group[0]).name, group[0].site.layer))
        self.num_layers = len(self.groups)
        self.k = config.resolve_k(self.num_layers)
        self.n_suppressed = config.n_suppressed if config.n_suppressed is not None else max(1, self.num_layers // 2)
        if not 1 <= self.n_suppressed <= self.num_layers:
            raise ValueError(f"n_suppressed={self.n_suppressed} is outside 1..{self.num_layers}")
        if self.active and config.selection == "importance" and config.rollouts < 2:  # one trial's R - mean(R) is 0
            raise ValueError(
                f"reducer rollouts={config.rollouts} with selection='importance': the advantage of one trial is "
                "always 0, so the scores never move and the selection is random; use rollouts >= 2 (default 3), or "
                "selection='random'"
            )
        if self.active and config.selection == "importance" and self.n_suppressed == self.num_layers:
            raise ValueError(  # every trial suppresses every layer: each layer's update is the sum of the advantages, 0
                f"reducer n_suppressed={self.n_suppressed} suppresses all {self.num_layers} adapted layers in every "
                "trial, so the trials cannot tell the layers apart and the scores never move; use n_suppressed "
                f"< {self.num_layers} (default: half the layers), or selection='random'"
            )
        self.scores = torch.zeros(self.num_layers, dtype=torch.float64)
        self.update_counts = [0] * self.num_layers
        self.trajectory: list[dict[str, Any]] = []  # one entry per scoring round
        self.selected: list[int] = list(range(self.num_layers))
        seed = config.seed if config.seed is not None else torch.initial_seed()  # see ReducerConfig.seed
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def active(self) -> bool:
        """K = L is plain training: no scoring, no freezing."""
        return self.k < self.num_layers

    def on_step_begin(self, step: int, val_loss_fn: Callable[[], float] | None) -> None:
        if self.active and self.config.selection == "importance":
            if val_loss_fn is None:
                raise ValueError(
                    "the importance Reducer needs a validation split to score layers, with answers that are not "
                    "all cut at cutoff_len; give the task a validation set (or raise cutoff_len) or use "
                    "selection='random'"
                )
            # no scoring round at step 0: every B is still zero, so all rollouts would see the same loss
            if step > 0 and step % self.config.interval == 0:
                self.score(val_loss_fn, step)
        self.select()

    def select(self, generator: torch.Generator | None = None) -> list[int]:
        """Draw this step's K layers and freeze the heads of all others, their gradients dropped (``.grad = None``,
        so that an optimizer skips them; call it before the step's first backward) (``generator``: another stream than
        the Reducer's own, which it leaves as it was: the FLOP count's fixed draw). Counts nothing: a drawn layer is
        counted once its heads moved (``count_update``)."""
        if self.active:
            weights = (
                torch.sigmoid(-self.scores) if self.config.selection == "importance" else torch.ones(self.num_layers)
            )
            picked = torch.multinomial(weights, self.k, replacement=False, generator=generator or self._generator)
            self.selected = sorted(picked.tolist())
        chosen = set(self.selected)
        for i, params in enumerate(self.heads):
            for p in params:
                p.requires_grad_(i in chosen)
                if i not in chosen:  # a review: a loop zeroing with set_to_none=False kept a zero grad, which AdamW
                    p.grad = None  # stepped on (its moments, the weight decay): a paused head moved
        return self.selected

    def count_update(self) -> None:
        """Count this step's K layers as updated: the loop calls it after an optimizer step that moved their heads,
        not after one without a supervised token, which computes no gradient and moves nothing (a review:
        ``select`` counted every step drawn, so a run with null losses recorded more updates than it made)."""
        for i in self.selected:
            self.update_counts[i] += 1

    def draw_suppressed(self, generator: torch.Generator | None = None) -> list[int]:
        """The layers one scoring trial suppresses: ``n_suppressed`` drawn without replacement with probability
        ∝ sigmoid(score), unimportant layers more likely (``generator``: another stream than the Reducer's own)."""
        weights = torch.sigmoid(self.scores)
        return torch.multinomial(
            weights, self.n_suppressed, replacement=False, generator=generator or self._generator
        ).tolist()

    def score(self, val_loss_fn: Callable[[], float], step: int) -> None:
        """``rollouts`` suppression trials on held-out data; move the scores of the suppressed layers."""
        trials, losses = [], []
        for _ in range(self.config.rollouts):
            idx = self.draw_suppressed()
            with self.suppressed(idx):
                losses.append(float(val_loss_fn()))
            trials.append(idx)
        rewards = torch.exp(-torch.tensor(losses, dtype=torch.float64))
        advantage = rewards - rewards.mean()
        sig = torch.sigmoid(self.scores)
        slope = sig * (1 - sig)  # of the scores before this round: all trials update simultaneously
        update = torch.zeros_like(self.scores)
        for idx, adv in zip(trials, advantage, strict=True):
            update[idx] += self.config.score_lr * adv * slope[idx]
        self.scores += update
        self.trajectory.append({"step": step, "losses": losses, "scores": self.scores.tolist()})

    @contextmanager
    def suppressed(self, layer_indices: Sequence[int]) -> Iterator[None]:
        """Scale the adapter output of these layers by ``suppression``; always restored."""
        saved = [(layer, layer.gate) for i in layer_indices for layer in self.groups[i]]
        try:
            for layer, _ in saved:
                layer.gate = self.config.suppression
            yield
        finally:
            for layer, gate in saved:
                layer.gate = gate

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.clone(),
            "update_counts": list(self.update_counts),
            "trajectory": list(self.trajectory),
            "selected": list(self.selected),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuses a state of another number of layers: its scores would draw indices past L (an IndexError at
        the first scoring round), or leave layers never drawn."""
        if (then := len(state["scores"])) != self.num_layers:
            raise ValueError(
                f"the checkpoint's Reducer state scores {then} layers and this adapter has {self.num_layers}: the "
                "checkpoint was written with another layer count (by older code, from before 2026-12-06, which counted "
                "a block's numbered steps such as ff.net.0.proj as layers of their own, or with other targets); delete "
                "it or use --force to start over"
            )
        self.scores = state["scores"].clone()
        self.update_counts = list(state["update_counts"])
        self.trajectory = list(state["trajectory"])
        self.selected = list(state["selected"])
        self._generator.set_state(state["generator"])

    def summary(self, layer_names: list[str]) -> dict[str, Any]:
        return {
            "k": self.k,
            "num_layers": self.num_layers,
            "selection": self.config.selection,
            "layer_names": layer_names,
            "final_scores": self.scores.tolist(),
            "update_counts": list(self.update_counts),
            "score_trajectory": self.trajectory,
        }
