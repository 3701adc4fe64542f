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
  :func:`estimate`. It is significant when its interval excludes 0 *and* the paired sign-flip test rejects
  "no difference" at the same level (:func:`sign_flip_p`, two-sided; for right/wrong scores it is McNemar's
  exact test). The percentile bootstrap alone is too eager where few examples differ: five examples that
  all differ one way give an interval that excludes 0, while under "no difference" that happens with
  probability 2 / 2**5 = 0.0625 (and one example gave "+100*"). Against ``chance``, whose per-example
  score is an expected value rather than an outcome, the sign-flip test does not apply: the test is
  :func:`chance_p`, of "the row guesses" (each example right with its chance probability; Poisson-binomial,
  exact for one benchmark). The interval alone was too narrow there: 0 of 50 CircularEval items against 0.4%
  each read "below chance", which a guesser does with probability 0.82.
- Where every per-example score of a cell sits at 0 (or every one at 100), the bootstrap interval has no
  width ([0.0, 0.0]); the cell gets the exact bound instead, the one of Clopper-Pearson for right/wrong
  scores: the upper end is the mean at which all n examples score 0 with probability 2.5%, 1 - 0.025**(1/n)
  (valid for any score in 0-100). An average of such cells (Avg) gets the largest mean at which every
  example of every benchmark scores 0 with that probability; where some of its cells sit at 0 and the others
  at 100, each side gets its own bound, weighted by its share of the benchmarks. Where only some of its cells
  sit at an end, that bound (weighted by their share) is added to the bootstrap interval of the average, whose
  resamples give those cells no width (conservative: the two are added, not combined). A cell near an end
  is never given a narrower interval than one at the end (its upper end is at least the all-at-0 bound, its
  lower end at most the all-at-100 one): the bootstrap gave 1 of 125 right [0.0, 2.4], below 0 of 125's 2.9.

Resampling n examples with replacement only changes how many times each distinct per-example value is
drawn, so the counts are drawn from a multinomial over the distinct values: the same distribution as
resampling indices, at a cost that does not grow with n (per-example scores take few distinct values).
A fixed seed makes every interval, and so the leaderboard, a pure function of the records.
"""

from __future__ import annotations

import math
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


FLIPS = 20_000  # Monte Carlo draws of the sign-flip test where its null distribution is not computed exactly
EXACT_SUPPORT = 20_000  # the largest lattice (in units) the exact sign-flip distribution is computed on
NORMAL_FROM = 1_000  # differing examples from which the sign-flip test uses its normal approximation


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval (same units as the scores: percent for accuracies); for a paired
    difference, ``p`` is the two-sided p-value of the sign-flip test (None: not tested)."""

    value: float
    lo: float
    hi: float
    p: float | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (meaningful for differences; a bound within float rounding of 0 does not)
        and, where tested, the sign-flip test rejects "no difference" at the interval's level."""
        return (self.lo > EPS or self.hi < -EPS) and (self.p is None or self.p < 1 - LEVEL)

    def negated(self) -> Estimate:
        """``b - a`` from ``a - b``: the same interval mirrored, the same p."""
        return Estimate(-self.value, -self.hi, -self.lo, self.p)


EPS = 1e-9  # percent points: a bound this close to 0 touches it


def resampled_means(scores: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """``resamples`` bootstrap means of ``scores`` (1-D), as a ``(resamples,)`` array."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}; pass one score per example")
    levels, counts = np.unique(scores, return_counts=True)
    draws = rng.multinomial(scores.size, counts / scores.size, size=resamples)  # (resamples, levels)
    return draws @ levels / scores.size


# the fewest values whose ``median_interval`` a report calls a 95% interval: below, it is their min-max (a resample's
# median is the smallest value more than 2.5% of the time), which holds the median 1 - 2**(1 - n) of the time (75% at
# 3 values; 94% at 5)
MEDIAN_INTERVAL_FROM = 5


def median_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The ``LEVEL`` (95%) percentile-bootstrap interval of the median of ``values`` (e.g. a bench's per-round
    ratios), resampling the values with replacement; below ``MEDIAN_INTERVAL_FROM`` values, their min-max."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    medians = np.median(x[np.random.default_rng(seed).integers(0, x.size, (resamples, x.size))], axis=1)
    lo, hi = np.percentile(medians, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(lo), float(hi)


def estimate(
    columns: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    scores: bool | Sequence[bool] = True,
) -> Estimate:
    """Mean over ``columns`` of each column's mean, with its percentile bootstrap interval.

    One column: the interval of that mean. Several (one per benchmark): each is resampled independently.
    ``scores``: the columns are 0-100 scores, whose interval at 0 or 100 is the exact one (not for differences);
    one flag per column where only some are (a mean of cosines beside a percent column: the latter keeps its end
    bound in the Avg, which a single ``False`` took away).
    """
    if not columns:
        raise ValueError("no score columns to estimate; pass at least one benchmark's per-example scores")
    if not 0 < level < 1:
        raise ValueError(f"level {level} must lie strictly between 0 and 1, e.g. 0.95")
    rng = np.random.default_rng(seed)
    means = np.mean([resampled_means(c, rng, resamples) for c in columns], axis=0)
    value = float(np.mean([np.mean(c) for c in columns]))
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    flags = [scores] * len(columns) if isinstance(scores, bool) else list(scores)
    if len(flags) != len(columns):
        raise ValueError(f"scores has {len(flags)} flags for {len(columns)} columns; give one a column, or one bool")
    ends = [e if f else None for e, f in zip(_ends(columns), flags, strict=True)]
    if any(e is not None for e in ends):  # a column whose scores all sit at 0 (or 100) has no bootstrap width
        alpha, sizes = (1 - level) / 2, [np.asarray(c).size for c in columns]
        at = {edge: [n for n, e in zip(sizes, ends, strict=True) if e == edge] for edge in (0.0, 100.0)}
        # the columns at 0 can only rise and those at 100 only fall: each side's exact bound, weighted by its
        # share, added to the bootstrap's interval of the rest (which is the mean itself when every column is at an end)
        hi = hi + (_exact_bound(at[0.0], alpha) * len(at[0.0]) / len(sizes) if at[0.0] else 0.0)
        lo = lo - (_exact_bound(at[100.0], alpha) * len(at[100.0]) / len(sizes) if at[100.0] else 0.0)
    if all(flags):  # never narrower than at the end itself: 1 of 125 right read [0.0, 2.4] beside 0 of 125's [0.0, 2.9]
        sizes = [np.asarray(c).size for c in columns]
        edge = _exact_bound(sizes, (1 - level) / 2)
        hi, lo = max(hi, edge), min(lo, 100.0 - edge)
    # a column of one repeated score (33.33...) resamples to a mean a rounding away from np.mean's: the interval
    # still holds its value (a review: lo above the value made the plot's error bar negative, and it raised)
    return Estimate(value, float(min(lo, value)), float(max(hi, value)))


def _ends(columns: Sequence[np.ndarray]) -> list[float | None]:
    """Per column 0.0 or 100.0 where the column's scores are all that value, else None."""
    out: list[float | None] = []
    for c in columns:
        c = np.asarray(c, dtype=np.float64)
        out.append(next((e for e in (0.0, 100.0) if np.all(c == e)), None))
    return out


def _exact_bound(sizes: list[int], alpha: float) -> float:
    """The largest mean over columns of each column's mean score (percent, of scores in 0-100) at which every
    example of every column scores 0 with probability ``alpha``, columns of ``sizes`` examples. One column:
    Clopper-Pearson's 100 * (1 - alpha**(1/n)). Several: maximising the mean of p_i subject to
    prod (1 - p_i)**n_i = alpha gives 1 - p_i proportional to n_i (p_i >= 0), solved by bisection."""
    logs = np.log(np.asarray(sizes, dtype=np.float64))

    def total(c: float) -> float:  # sum n_i log(1 - p_i) with 1 - p_i = min(1, e**c n_i)
        return float(np.dot(sizes, np.minimum(0.0, c + logs)))

    lo, hi = -50.0, -float(logs.min())  # total(lo) < log(alpha) <= total(hi) = 0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < math.log(alpha) else (lo, mid)
    keep = np.minimum(1.0, np.exp(hi + logs))
    return float(100.0 * np.mean(1.0 - keep))


TESTS = ("sign_flip", "chance", "none")


def paired(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    test: str = "sign_flip",
    scales: Sequence[tuple[float, float]] | None = None,
) -> Estimate:
    """``a - b`` on the same examples (one array per benchmark in each), paired bootstrap interval, and the p of
    ``test``: ``sign_flip`` where both are outcomes (:func:`sign_flip_p`); ``chance`` where ``b`` is not an
    outcome but an expected score, the ``chance`` row's (:func:`chance_p`, given each column's ``scales``: "no
    difference" does not make ``a - b`` symmetric there); ``none``: the interval alone decides."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of: {', '.join(TESTS)}")
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same benchmarks on both sides, got {len(a)} and {len(b)}")
    diffs = []
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"paired comparison needs the same examples on both sides, got {x.size} and {y.size}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("paired comparison of scores that are not finite numbers; check the records' scores")
        diffs.append(x - y)
    e = estimate(diffs, resamples, seed, scores=False)
    p = {"sign_flip": lambda: sign_flip_p(diffs, seed=seed), "chance": lambda: chance_p(a, b, seed=seed, scales=scales)}
    return Estimate(e.value, e.lo, e.hi, p[test]() if test in p else None)


def chance_p(
    scores: Sequence[np.ndarray],
    chance: Sequence[np.ndarray],
    flips: int = FLIPS,
    seed: int = SEED,
    scales: Sequence[tuple[float, float]] | None = None,
) -> float:
    """Two-sided p-value of "the row scores at chance" for the statistic :func:`estimate` reports (the mean over
    columns of each column's mean score), where ``chance`` holds each example's expected score (percent) under
    guessing. Under it example i scores 100 with probability ``chance_i / 100``, else 0, independently: a
    column's count of right answers is Poisson-binomial. The p-value is the chance that the statistic lies at least
    as far from its expected value as observed: exact for one column (the count's distribution, computed), from
    ``flips`` seeded Monte Carlo draws of the columns' counts for several (its smallest value 1 / (flips + 1)).
    Exact for one run's right/wrong answers; for a score between 0 and 100 (seeds pooled, partial credit) the null
    is the widest a score with that mean can have (a right/wrong one), so the test leans conservative there.

    ``scales``: per column the ``(low, high)`` its scores lie in (None: percent for every column). A column on
    another scale (a judge's 1-10) is mapped onto 0-100 first (low to 0, high to 100; an expected score maps with
    it): its guesser is then the widest one with the chance mean on that scale, scoring low or high and nothing
    between, as for partial credit above. (Read as percent, a judge's 9 of 10 on every item against 5.5 was 9%
    against 5.5%, p 0.26; the sign-flip test does not apply either: a guesser's score is not symmetric about its
    mean.) The map is linear, so for one column, or columns on one scale, the statistic it tests is the one
    reported in the column's units."""
    if len(scores) != len(chance) or not scores:
        raise ValueError(f"chance_p needs one chance column per score column, got {len(scores)} and {len(chance)}")
    if scales is not None and len(scales) != len(scores):
        raise ValueError(f"chance_p needs one scale per score column, got {len(scales)} and {len(scores)}")
    pmfs, steps, observed, expected = [], [], 0.0, 0.0
    for i, (s, c) in enumerate(zip(scores, chance, strict=True)):
        s, c = np.asarray(s, dtype=np.float64), np.asarray(c, dtype=np.float64)
        if s.shape != c.shape or s.ndim != 1 or s.size == 0:
            raise ValueError(f"chance_p needs one chance score per example, got shapes {s.shape} and {c.shape}")
        low, high = (float(x) for x in scales[i]) if scales is not None else (0.0, 100.0)
        if not (np.all((c >= low) & (c <= high)) and np.all((s >= low) & (s <= high))):
            where = "0-100 (percent)" if (low, high) == (0.0, 100.0) else f"{low:g} to {high:g} (the column's scale)"
            raise ValueError(f"chance_p needs scores and chance scores in {where}; check the records' scores")
        if (low, high) != (0.0, 100.0):  # onto 0-100: low scores as wrong, high as right
            s, c = (s - low) * (100.0 / (high - low)), (c - low) * (100.0 / (high - low))
        pmfs.append(_poisson_binomial(c / 100.0))
        steps.append(100.0 / (len(scores) * s.size))
        observed, expected = observed + float(s.mean()) / len(scores), expected + float(c.mean()) / len(scores)
    far = abs(observed - expected) * (1 - 1e-9) - 1e-12  # "at least as far", within float rounding
    if far <= 0:
        return 1.0
    if len(pmfs) == 1:
        values = np.arange(pmfs[0].size) * steps[0]
        return float(min(1.0, pmfs[0][np.abs(values - expected) >= far].sum()))
    rng = np.random.default_rng(seed)
    totals = sum(
        rng.choice(pmf.size, size=flips, p=pmf / pmf.sum()) * step for pmf, step in zip(pmfs, steps, strict=True)
    )
    return (1 + int(np.sum(np.abs(totals - expected) >= far))) / (1 + flips)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family of tests (same order as ``ps``): the smallest level at
    which each hypothesis is rejected while the chance of any false rejection in the family stays at that level.
    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * float(ps[i])))
        out[i] = running
    return out


def _poisson_binomial(probs: np.ndarray) -> np.ndarray:
    """P(k successes), k = 0..n, of independent trials with success probabilities ``probs``: each distinct
    probability's binomial (from log-factorials), convolved."""
    pmf = np.ones(1)
    for q, m in zip(*np.unique(probs, return_counts=True), strict=True):
        pmf = np.convolve(pmf, _binomial(int(m), float(q)))
    return pmf


def sign_flip_p(diffs: Sequence[np.ndarray], flips: int = FLIPS, seed: int = SEED) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test of "no difference" for the statistic
    :func:`estimate` reports: the mean over columns of each column's mean of ``diffs``. Under no difference
    each example's ``a - b`` is as likely to have either sign, so the statistic's null distribution is that
    of ``sum_i s_i |w_i d_i|`` over independent signs ``s_i = +-1`` (``w_i``: 1 / (columns * n of its column));
    the p-value is the chance that it is at least as far from 0 as observed. Computed exactly where the
    ``|w_i d_i|`` are whole multiples of one unit (right/wrong scores: McNemar's exact test; pooled seeds:
    multiples of 100/seeds), else from ``flips`` seeded Monte Carlo draws, and from the normal
    approximation from ``NORMAL_FROM`` differing examples."""
    if not diffs:
        raise ValueError("no difference columns to test; pass at least one benchmark's per-example differences")
    x = np.concatenate([np.asarray(d, dtype=np.float64) / (len(diffs) * np.asarray(d).size) for d in diffs])
    mags = np.abs(x[x != 0])
    if mags.size == 0:
        return 1.0
    observed = abs(float(x.sum()))
    units = _lattice(mags)
    if units is not None:
        return _exact_sign_flip_p(units, observed / (float(mags.min()) / int(units.min())))
    if mags.size >= NORMAL_FROM and float(np.max(mags**2)) <= 0.01 * float(np.sum(mags**2)):  # none dominates
        return math.erfc(observed / math.sqrt(float(np.sum(mags**2))) / math.sqrt(2))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, flips, 1000):
        signs = rng.integers(0, 2, (min(1000, flips - start), mags.size)).astype(np.float64) * 2 - 1
        hits += int(np.sum(np.abs(signs @ mags) >= observed * (1 - 1e-9)))
    return (1 + hits) / (1 + flips)


def _lattice(mags: np.ndarray) -> np.ndarray | None:
    """``mags`` as whole multiples of one unit (positive ints) where they are, within float rounding, and the
    lattice is small enough to compute on; else None."""
    smallest = float(mags.min())
    for step in range(1, 13):  # the unit as the smallest magnitude / step (e.g. 100/3 against 100/2: step 2)
        units = np.rint(mags / smallest * step)
        if np.allclose(units * smallest / step, mags, rtol=1e-9, atol=0) and units.sum() <= EXACT_SUPPORT:
            return units.astype(np.int64)
    return None


def _binomial(n: int, q: float) -> np.ndarray:
    """P(j successes of ``n`` trials of success probability ``q``), j = 0..n, from log-factorials (relative
    error ~1e-13); ``q`` 0 or 1 puts everything on 0 or ``n``."""
    if q <= 0.0 or q >= 1.0:
        out = np.zeros(n + 1)
        out[n if q >= 1.0 else 0] = 1.0
        return out
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    j = np.arange(n + 1)
    return np.exp(log_fact[n] - log_fact[j] - log_fact[n - j] + j * math.log(q) + (n - j) * math.log1p(-q))


def _exact_sign_flip_p(units: np.ndarray, observed: float) -> float:
    """P(|sum_i s_i u_i| >= observed) over independent fair signs, ``u_i`` positive ints, ``observed`` in units."""
    pmf = np.ones(1)  # over the sum's values, as offsets from the lowest; convolved one magnitude at a time
    offset = 0
    for value, count in zip(*np.unique(units, return_counts=True), strict=True):
        value, count = int(value), int(count)
        part = np.zeros(2 * value * count + 1)
        part[:: 2 * value] = _binomial(count, 0.5)  # j plus signs of count
        pmf, offset = np.convolve(pmf, part), offset + value * count
    sums = np.arange(pmf.size) - offset
    return float(min(1.0, pmf[np.abs(sums) >= round(observed) - 1e-9].sum()))


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
