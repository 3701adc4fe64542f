"""Per-example scores from run records, and bootstrap intervals over test examples, for the leaderboard.

Per-example data (an eval entry of a record): ``answers`` holds one character per scored example, the
index of the correct option; ``preds[metric]`` the predicted index (``-``: no answer, counted wrong);
``n_options`` how many options the question has. Example i is right when ``preds[metric][i] == answers[i]``.
Baselines from the answers alone: ``majority`` always answers the most common correct index (ties: the
lowest), ``chance`` scores 1/n_options per example (its expected accuracy).

Statistics used:

- An accuracy is the mean of per-example scores (100 = right, 0 = wrong; pooled over seeds it is the
  seeds' mean, e.g. 50 when one of two seeds got the example right). Its 95% interval is the percentile
  bootstrap: resample the examples with replacement ``RESAMPLES`` times, take the 2.5th and 97.5th
  percentiles of the resampled means.
- An average over benchmarks (the leaderboard's Avg) resamples each benchmark independently and
  averages the benchmarks' resampled means.
- A paired comparison of two rows scored on the same examples resamples the example indices once and
  applies them to both, which is the bootstrap of the per-example differences ``a - b``: pass those to
  :func:`estimate`. It is significant when its interval excludes 0.

Resampling n examples with replacement only changes how many times each distinct per-example value is
drawn, so the counts are drawn from a multinomial over the distinct values: the same distribution as
resampling indices, at a cost that does not grow with n (per-example scores take few distinct values).
A fixed seed makes every interval, and so the leaderboard, a pure function of the records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAJORITY, CHANCE = "majority", "chance"
CONSTANT_SHARE = 0.9  # a run is "constant" on a benchmark when this share of its answers is one option
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval (same units as the scores: percent for accuracies)."""

    value: float
    lo: float
    hi: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (meaningful for differences); a bound within float rounding of 0 does not."""
        return self.lo > EPS or self.hi < -EPS


EPS = 1e-9  # percent points: a bound this close to 0 touches it


def resampled_means(scores: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """``resamples`` bootstrap means of ``scores`` (1-D), as a ``(resamples,)`` array."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}; pass one score per example")
    levels, counts = np.unique(scores, return_counts=True)
    draws = rng.multinomial(scores.size, counts / scores.size, size=resamples)  # (resamples, levels)
    return draws @ levels / scores.size


def median_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The ``LEVEL`` (95%) percentile-bootstrap interval of the median of ``values`` (e.g. a bench's per-round
    ratios), resampling the values with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    medians = np.median(x[np.random.default_rng(seed).integers(0, x.size, (resamples, x.size))], axis=1)
    lo, hi = np.percentile(medians, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(lo), float(hi)


def estimate(
    columns: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Estimate:
    """Mean over ``columns`` of each column's mean, with its percentile bootstrap interval.

    One column: the interval of that mean. Several (one per benchmark): each is resampled independently.
    """
    if not columns:
        raise ValueError("no score columns to estimate; pass at least one benchmark's per-example scores")
    if not 0 < level < 1:
        raise ValueError(f"level {level} must lie strictly between 0 and 1, e.g. 0.95")
    rng = np.random.default_rng(seed)
    means = np.mean([resampled_means(c, rng, resamples) for c in columns], axis=0)
    value = float(np.mean([np.mean(c) for c in columns]))
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return Estimate(value, float(lo), float(hi))


def paired(a: Sequence[np.ndarray], b: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """``a - b`` on the same examples (one array per benchmark in each), paired bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same benchmarks on both sides, got {len(a)} and {len(b)}")
    diffs = []
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"paired comparison needs the same examples on both sides, got {x.size} and {y.size}")
        diffs.append(x - y)
    return estimate(diffs, resamples, seed)


def correctness(entry: dict[str, Any], run_id: str = "?") -> np.ndarray | None:
    """Per-example headline scores of one eval entry: ``scores`` (0-100 each, e.g. ANLS) when the entry
    has them, else 100 right / 0 wrong from ``answers`` and ``preds``; None without per-example data."""
    if entry.get("scores") is not None:
        return np.asarray(entry["scores"], dtype=float)
    answers, preds = entry.get("answers"), entry.get("preds", {}).get(entry.get("metric", ""))
    if not answers or preds is None:
        return None
    if len(preds) != len(answers):
        raise ValueError(
            f"run {run_id}: {len(preds)} predictions for {len(answers)} answers; the record is corrupt, re-run it"
        )
    return 100.0 * (np.frombuffer(preds.encode(), np.uint8) == np.frombuffer(answers.encode(), np.uint8))


def examples_key(entry: dict[str, Any]) -> str | None:
    """What identifies the scored examples, so two runs pair only on the same ones: the answer string,
    or for entries scored per example without option indices, their ``examples`` digest."""
    return entry.get("answers") or entry.get("examples")


def is_constant(preds: str, share: float = CONSTANT_SHARE) -> bool:
    """At least ``share`` of the answered examples ("-" = no answer, left out) got one option index."""
    answered = [p for p in preds if p != "-"]
    return bool(answered) and Counter(answered).most_common(1)[0][1] / len(answered) >= share  # 63/70 == 0.9


def majority_index(answers: str) -> str:
    """The most common option index of ``answers`` (one digit an example); ties: the lowest."""
    return max(sorted(set(answers)), key=answers.count)


def baseline_scores(answers: str, n_options: str | None) -> dict[str, np.ndarray]:
    """Per-example scores (percent) of ``majority`` and, given ``n_options``, ``chance``."""
    top = majority_index(answers)
    out = {MAJORITY: 100.0 * (np.frombuffer(answers.encode(), np.uint8) == ord(top))}
    if n_options:
        if len(n_options) != len(answers) or not n_options.isdigit() or "0" in n_options:
            raise ValueError(f"n_options {n_options[:20]!r}... must hold one digit 1-9 per answer ({len(answers)})")
        out[CHANCE] = 100.0 / (np.frombuffer(n_options.encode(), np.uint8) - ord("0"))
    return out
