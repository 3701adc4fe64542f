"""Bootstrap intervals, paired comparisons, baselines and flags: literal examples, then through the leaderboard."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from harness.leaderboard import write_leaderboards
from harness.leaderboard_render import markdown_table
from harness.stats import (
    CHANCE,
    MAJORITY,
    RESAMPLES,
    SEED,
    baseline_scores,
    correctness,
    estimate,
    is_constant,
    paired,
)
from tests.test_records_leaderboard import fixture_record, read_csv, scored, write_fixture


def right_share(n: int, share: float = 0.6) -> np.ndarray:
    return 100.0 * (np.arange(n) < round(share * n))


def test_the_interval_contains_the_estimate_and_shrinks_with_n():
    widths = []
    for n in (50, 500, 5000):
        e = estimate([right_share(n)])
        assert e.value == pytest.approx(60.0) and e.lo < e.value < e.hi
        widths.append(e.hi - e.lo)
    assert widths[0] > widths[1] > widths[2] > 0
    assert 20 < widths[0] < 35  # about 4 standard errors: 4 * sqrt(.6 * .4 / 50) = 0.277
    assert estimate([right_share(500)]) == estimate([right_share(500)])  # fixed seed


def test_an_average_resamples_each_benchmark():
    e = estimate([right_share(100, 0.5), np.full(40, 100.0)])
    assert e.value == pytest.approx(75.0) and e.lo < 75.0 < e.hi and e.hi - e.lo < 20  # the second never varies


def test_one_columns_interval_is_the_2_5th_and_97_5th_percentiles_of_its_bootstrap_means():
    """From a mutation review: the lower percentile moved from 2.5 to 5 was caught only by the committed
    leaderboard's golden test. The bootstrap is redrawn here from the seed as ``resampled_means`` draws it (a
    multinomial over the distinct scores: 20 zeros, 30 hundreds); 30 of 50 right reads [46, 74] (5th: [48, 74])."""
    column = right_share(50)
    draws = np.random.default_rng(SEED).multinomial(50, [20 / 50, 30 / 50], size=RESAMPLES)
    means = draws @ np.array([0.0, 100.0]) / 50
    e = estimate([column])
    assert (e.lo, e.hi) == tuple(np.percentile(means, [2.5, 97.5]))
    assert (e.value, e.lo, e.hi) == pytest.approx((60.0, 46.0, 74.0))


def test_an_avg_over_four_identical_columns_is_about_half_as_wide_as_one():
    """Each benchmark is resampled independently (its own draws from one stream): the Avg of four columns with the
    same scores has about 1/sqrt(4) of one column's width (0.48 now). From a mutation review: each column drawn from
    a fresh rng of the same seed resampled the four identically, so the Avg was as wide as one column, and only the
    committed leaderboard's golden test failed."""
    column = right_share(50)
    one, avg = estimate([column]), estimate([column] * 4)
    assert avg.value == pytest.approx(60.0)
    assert 0.35 < (avg.hi - avg.lo) / (one.hi - one.lo) < 0.7


@pytest.mark.parametrize("scores", [right_share(60), np.full(10, 100.0), np.zeros(7), np.full(5, 50.0)])
def test_identical_predictions_differ_by_exactly_zero(scores):
    d = paired([scores], [scores.copy()])
    assert (d.value, d.lo, d.hi, d.significant) == (0.0, 0.0, 0.0, False)


def test_right_wherever_the_reference_is_wrong_is_significant():
    reference = right_share(60, 0.5)
    d = paired([np.full(60, 100.0)], [reference])
    assert d.value == pytest.approx(50.0) and d.lo > 0 and d.significant
    assert paired([reference], [np.full(60, 100.0)]).hi < 0


@pytest.mark.parametrize(("won", "lost", "p"), [(5, 0, 2 / 2**5), (6, 0, 2 / 2**6), (9, 2, 0.0654296875), (1, 0, 1.0)])
def test_few_differing_examples_need_the_sign_flip_test_too(won, lost, p):
    # right where the reference is wrong on `won` examples, wrong where it is right on `lost`, equal on 120:
    # McNemar's exact test, whose p the percentile bootstrap alone ignored (5 of 5 one way: interval above 0)
    ours = np.array([100.0] * won + [0.0] * lost + [100.0] * 60 + [0.0] * 60)
    theirs = np.array([0.0] * won + [100.0] * lost + [100.0] * 60 + [0.0] * 60)
    d = paired([ours], [theirs])
    assert d.p == pytest.approx(p, rel=1e-12)
    assert d.significant == (p < 0.05 and d.lo > 0)
    assert d.negated().p == d.p and (d.negated().lo, d.negated().hi) == (-d.hi, -d.lo)
    if won == 5:
        assert d.lo > 0 and not d.significant  # the bootstrap alone would have starred it
    one = paired([np.array([100.0])], [np.array([0.0])])  # one example: the bootstrap's [100, 100] was "+100*"
    assert (one.lo, one.hi, one.p, one.significant) == (100.0, 100.0, 1.0, False)


def test_the_sign_flip_p_is_exact_on_pooled_seeds_and_matches_enumeration():
    import itertools

    from harness.stats import sign_flip_p

    a = np.array([100 / 3] * 4 + [-200 / 3] * 2 + [100.0] * 3 + [0.0] * 50)  # per-example differences of 3 seeds
    b = np.array([100.0] * 3 + [-100.0] + [0.0] * 20)  # a second benchmark (Avg): weights 1 / (2 n)
    for diffs in ([a], [a, b]):
        x = np.concatenate([d / (len(diffs) * d.size) for d in diffs])
        m = np.abs(x[x != 0])
        hits = sum(abs(np.dot(s, m)) >= abs(x.sum()) - 1e-12 for s in itertools.product((-1, 1), repeat=m.size))
        assert sign_flip_p(diffs) == pytest.approx(hits / 2**m.size, rel=1e-12)
    rng = np.random.default_rng(3)
    continuous = rng.normal(0.4, 3.0, 300)  # no lattice: seeded Monte Carlo, near the normal approximation
    from math import erfc, sqrt

    normal = erfc(abs(continuous.sum()) / sqrt(np.sum(continuous**2)) / sqrt(2))
    assert sign_flip_p([continuous]) == sign_flip_p([continuous]) == pytest.approx(normal, abs=0.01)


@pytest.mark.parametrize("n", [1, 2, 125])
def test_a_cell_at_0_or_100_gets_the_exact_interval_not_no_width(n):
    bound = 100.0 * (1 - 0.025 ** (1 / n))  # Clopper-Pearson's: 2.91 at 125
    zero, full = estimate([np.zeros(n)]), estimate([np.full(n, 100.0)])
    assert (zero.value, zero.lo) == (0.0, 0.0) and zero.hi == pytest.approx(bound)
    assert (full.value, full.hi) == (100.0, 100.0) and full.lo == pytest.approx(100.0 - bound)
    both = estimate([np.zeros(n), np.zeros(n)])  # Avg of two such cells: as one of 2n examples
    assert both.hi == pytest.approx(100.0 * (1 - 0.025 ** (1 / (2 * n))))
    for n1, n2 in ((n, 4 * n), (3 * n, 4 * n)):  # the largest mean of p_i with prod (1 - p_i)**n_i = 0.025
        p1 = np.linspace(0, 1 - 0.025 ** (1 / n1), 200_001)  # every p1, and the p2 that meets the constraint
        p2 = 1 - (0.025 / (1 - p1) ** n1) ** (1 / n2)
        assert estimate([np.zeros(n1), np.zeros(n2)]).hi == pytest.approx(100 * np.max((p1 + p2) / 2), rel=1e-4)
    # an Avg of a cell at 0 and one at 100 had the bootstrap's no width: each side its own bound, by its share
    mixed = estimate([np.zeros(n), np.full(2 * n, 100.0), np.zeros(n)])
    assert mixed.value == pytest.approx(100 / 3)
    assert mixed.hi == pytest.approx(100 / 3 + (2 / 3) * 100.0 * (1 - 0.025 ** (1 / (2 * n))))  # the two at 0
    assert mixed.lo == pytest.approx(100 / 3 - (1 / 3) * 100.0 * (1 - 0.025 ** (1 / (2 * n))))  # the one at 100


def test_an_avg_with_only_some_cells_at_an_end_keeps_their_exact_bound():
    """From a review: base's multimodal Avg of 0/125, 1/125 and 0/125 read 0.2 [0.0, 0.5], while three cells at 0
    read [0.0, 1.0]: the bootstrap gives a cell at 0 no width, so one right answer narrowed the interval."""
    zero, one = np.zeros(125), np.r_[100.0, np.zeros(124)]
    alone, mixed = estimate([zero, zero, zero]), estimate([zero, one, zero])
    plain = estimate([zero, one, zero], scores=False)  # the bootstrap alone: only `one` varies
    assert mixed.hi == pytest.approx(plain.hi + (2 / 3) * 100.0 * (1 - 0.025 ** (1 / 250)))  # the two at 0's bound
    assert mixed.hi > alone.hi and mixed.lo == plain.lo == 0.0
    full, one_wrong = np.full(125, 100.0), np.r_[0.0, np.full(124, 100.0)]
    high, plain = estimate([full, one_wrong]), estimate([full, one_wrong], scores=False)
    assert high.lo == pytest.approx(plain.lo - 0.5 * 100.0 * (1 - 0.025 ** (1 / 125))) and high.hi == plain.hi
    assert estimate([one, one]).hi == pytest.approx(estimate([one, one], scores=False).hi)  # none at an end: as before


def test_an_interval_never_narrows_towards_an_end():
    """From a review: 1 of 125 right read [0.0, 2.4] while 0 of 125 read the exact [0.0, 2.9]; a count near an end
    now reaches at least the all-at-the-end bound, so more right answers never give a lower upper end."""
    bound = 100.0 * (1 - 0.025 ** (1 / 125))
    his = [estimate([np.r_[np.full(k, 100.0), np.zeros(125 - k)]]).hi for k in range(8)]
    assert his[0] == pytest.approx(bound) and all(b >= a for a, b in zip(his, his[1:], strict=False)), his
    los = [estimate([np.r_[np.zeros(k), np.full(125 - k, 100.0)]]).lo for k in range(8)]
    assert los[0] == pytest.approx(100.0 - bound) and all(b <= a for a, b in zip(los, los[1:], strict=False)), los
    assert estimate([np.r_[100.0, np.zeros(124)]], scores=False).hi < bound  # what the bootstrap alone gave


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [([np.ones(3)], [np.ones(4)], "same examples"), ([np.ones(3)], [], "same benchmarks"), ([], [], "no score")],
)
def test_bad_comparisons_say_what_to_pass(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired(a, b)


def test_majority_and_chance_from_the_answers():
    scores = baseline_scores("0012", "4422")
    assert scores[MAJORITY].tolist() == [100.0, 100.0, 0.0, 0.0]  # always option 0, the most common answer
    assert scores[CHANCE].tolist() == [25.0, 25.0, 50.0, 50.0]  # 1 / n_options
    assert scores[CHANCE].mean() == 37.5 and scores[MAJORITY].mean() == 50.0
    assert baseline_scores("1100", None)[MAJORITY].tolist() == [0.0, 0.0, 100.0, 100.0]  # a tie: the lowest index
    assert CHANCE not in baseline_scores("01", None)
    with pytest.raises(ValueError, match="one digit 1-9 per answer"):
        baseline_scores("01", "4")


@pytest.mark.parametrize(
    ("preds", "constant"),
    [
        ("0000000001", True),
        ("0000000011", False),
        ("0" * 63 + "1" * 7, True),  # exactly 90%: 0.9 * 70 is 63.00000000000001 in floating point
        ("000000000-", True),
        ("--------00", True),
        ("----------", False),
    ],
)
def test_constant_at_90_percent_of_the_answered_examples(preds, constant):
    assert is_constant(preds) is constant


def test_correctness_is_prediction_equals_answer():
    entry = scored("0123", "01-0")
    assert correctness(entry).tolist() == [100.0, 100.0, 0.0, 0.0]  # "-" (no answer) counts wrong
    assert correctness({"metric": "acc", "value": 50.0}) is None  # an older record
    with pytest.raises(ValueError, match="3 predictions for 4 answers"):
        correctness({**entry, "preds": {"acc": "012"}}, "run-x")


def test_the_leaderboard_has_baselines_intervals_and_paired_comparisons(tmp_path):
    runs = tmp_path / "runs"
    answers = "0012" * 10  # majority: option 0, right on 50%; chance: 1/4 per example
    lora = "0000" * 10  # right on 50%
    better = "1112" * 10  # right on every example lora gets wrong, and only there
    evals = {
        "lora": {"ARC-Easy": scored(answers, lora), "boolq": scored(answers, lora)},
        "effilora": {"ARC-Easy": scored(answers, answers), "boolq": scored(answers, better)},
        "base": {"ARC-Easy": scored(answers, "3333" * 10), "boolq": scored(answers, lora)},
    }
    for method, e in evals.items():
        write_fixture(runs, fixture_record(method, 0, evals=e))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert list(rows) == ["effilora", "lora", "base", "majority", "chance"]
    assert (rows["majority"]["ARC-Easy"], rows["chance"]["ARC-Easy"], rows["chance"]["Avg"]) == ("50.0", "25.0", "25.0")
    effi = rows["effilora"]
    assert (effi["hellaswag"], effi["hellaswag_lo"], effi["Avg_n"]) == ("absent", "", "2/3")
    assert float(effi["boolq_lo"]) < float(effi["boolq"]) == 50.0 < float(effi["boolq_hi"])
    assert effi["ARC-Easy_vs_lora"] == "50.0" and float(effi["ARC-Easy_vs_lora_lo"]) > 0  # right where lora is wrong
    assert effi["boolq_vs_lora"] == "0.0" and float(effi["boolq_vs_lora_lo"]) < 0  # as often right, elsewhere
    assert rows["lora"]["constant"] == "ARC-Easy boolq" and rows["lora"]["ARC-Easy_vs_lora"] == ""
    assert rows["base"]["boolq_vs_lora"] == "0.0" and rows["base"]["boolq_vs_lora_lo"] == "0.0"
    comparisons = read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    assert {r["reference"] for r in comparisons} == {"lora", "base", "majority", "chance"}
    vs = {(r["method"], r["reference"], r["benchmark"]): r for r in comparisons}
    assert (
        vs[("lora", "base", "ARC-Easy")]["diff"] == "50.0" and vs[("lora", "base", "ARC-Easy")]["significant"] == "True"
    )
    assert vs[("lora", "majority", "ARC-Easy")]["significant"] == "False"  # lora answers like majority here
    assert vs[("base", "lora", "Avg")]["diff"] == "-25.0" and ("majority", "majority", "Avg") not in vs
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| lora | 50.0 [" in md and "(constant)" in md and "| 2/3 |" in md
    assert "| base | -50.0* | 0.0 | -25.0* |" in md  # the paired-difference table


def test_two_references_compared_both_ways_get_exactly_opposite_intervals(tmp_path):
    runs = tmp_path / "runs"
    rng = np.random.default_rng(5)
    answers = "".join(rng.choice(list("0123"), 300))
    for method in ("lora", "base"):  # each right on a random ~half: the differences take the values -100, 0, 100
        preds = "".join(a if rng.random() < 0.5 else str((int(a) + 1) % 4) for a in answers)
        write_fixture(runs, fixture_record(method, 0, evals={"ARC-Easy": scored(answers, preds)}))
    write_leaderboards(runs, tmp_path / "out")
    vs = {
        (r["method"], r["reference"], r["benchmark"]): r
        for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    }
    for a, b in (
        ("lora", "base"),
        ("lora", "majority"),
        ("base", "majority"),
        ("majority", "chance"),
        ("lora", "chance"),
    ):
        for bench in ("ARC-Easy", "Avg"):
            one, other = vs[(a, b, bench)], vs[(b, a, bench)]
            assert float(one["diff"]) == -float(other["diff"]) and one["significant"] == other["significant"]
            assert (float(one["ci_low"]), float(one["ci_high"])) == (-float(other["ci_high"]), -float(other["ci_low"]))


def test_trained_rows_with_different_seeds_are_compared_on_the_seeds_both_ran(tmp_path):
    runs = tmp_path / "runs"
    answers = "0123" * 10
    half = "0123" * 5 + "1032" * 5  # right on the first half only
    # lora: seed 0 right on half, seeds 1 and 2 on all; effilora: seed 0 only, like lora's seed 0
    for seed, preds in ((0, half), (1, answers), (2, answers)):
        write_fixture(runs, fixture_record("lora", seed, evals={"ARC-Easy": scored(answers, preds)}))
    write_fixture(runs, fixture_record("effilora", 0, evals={"ARC-Easy": scored(answers, half)}))
    write_fixture(runs, fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 10)}))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert rows["lora"]["ARC-Easy"] == "83.33" and rows["effilora"]["ARC-Easy"] == "50.0"  # pooled cells unchanged
    effi = rows["effilora"]
    assert effi["ARC-Easy_vs_lora"] == "0.0" and float(effi["ARC-Easy_vs_lora_lo"]) == 0.0  # seed 0 against seed 0
    assert rows["base"]["ARC-Easy_vs_lora"] == "-58.33"  # base does not train: against all of lora's seeds
    assert rows["effilora"]["hardware"] == rows["majority"]["hardware"] == "Test CPU"  # majority: the section's


def test_base_joins_each_training_setting_and_one_method_at_two_settings_gets_labels(tmp_path):
    runs = tmp_path / "runs"
    answers = "0123" * 5
    for r, lr in ((4, 0.001), (8, 0.001), (8, 0.5)):
        record = fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, answers)})
        record["run"]["config"]["method_options"]["r"] = r
        record["run"]["config"]["train"]["lr"] = lr
        record["run"]["id"] += f"-r{r}-lr{lr}"
        write_fixture(runs, record)
    write_fixture(runs, fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "0" * 20)}))
    write_leaderboards(runs, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "commonsense.csv")
    by_section: dict[str, list[str]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row["method"])
    assert sorted(by_section.values()) == [
        ["lora", "base", "majority", "chance"],
        ["lora (r=4)", "lora (r=8)", "base", "majority", "chance"],
    ]


def test_markdown_needs_no_tabulate(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # any import of it now fails
    assert markdown_table(["a", "b|c"], [["1", "x"]]) == "| a | b\\|c |\n| --- | --- |\n| 1 | x |"
    write_fixture(tmp_path / "runs", fixture_record("lora", 0, evals={"ARC-Easy": scored("01", "01")}))
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    assert "| lora | 100.0 [15.8, 100.0] |" in (tmp_path / "out" / "leaderboard.md").read_text()  # exact at 2/2


def test_the_sign_flip_p_of_many_continuous_differences_is_the_normal_tail():
    """From a review: the normal-approximation branch (``NORMAL_FROM`` or more differing examples that are whole
    multiples of no unit) was never pinned, so a tail of ``erfc(z / 2)`` for ``erfc(z / sqrt(2))`` passed. Each
    example weighs 1 / (columns * its column's n); the statistic's null sd is the root of the weighted squares."""
    from harness.stats import NORMAL_FROM, _lattice, sign_flip_p

    rng = np.random.default_rng(7)
    diffs = [rng.normal(0.05, 1.0, 1200), rng.normal(0.05, 1.0, 800)]  # continuous: no lattice, none dominates
    x = np.concatenate([d / (2 * d.size) for d in diffs])
    assert x.size >= NORMAL_FROM and _lattice(np.abs(x)) is None
    z = abs(x.sum()) / math.sqrt(np.sum(x**2))
    expected = math.erfc(z / math.sqrt(2))  # two-sided: 2 * P(N(0, 1) >= z)
    assert 0.001 < expected < 0.5  # a tail where the two formulas differ
    # flips=1: a Monte Carlo p would be 1/2 or 1, so this value is the normal branch's
    assert sign_flip_p(diffs, flips=1) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_an_interval_touching_zero_within_rounding_is_not_significant():
    from harness.stats import Estimate

    assert not Estimate(-4.2, -8.4, -1e-12).significant and not Estimate(4.2, 1e-12, 8.4).significant
    assert Estimate(-4.2, -8.4, -0.01).significant and Estimate(4.2, 0.01, 8.4).significant


def test_a_section_with_flops_from_two_counters_is_flagged_with_the_fix(tmp_path, capsys):
    runs = tmp_path / "runs"
    for method in ("lora", "effilora"):
        write_fixture(runs, fixture_record(method, 0))
    write_leaderboards(runs, tmp_path / "out")
    assert "warning" not in capsys.readouterr().err  # one counter: nothing to say
    record = fixture_record("lora", 1)
    record["train"]["flops_per_step"]["counted_by"] = "a newer counter"
    write_fixture(runs, record)
    write_leaderboards(runs, tmp_path / "out")
    err = capsys.readouterr().err
    assert "holds FLOPs counted by 2 different counters" in err and "harness recount-flops" in err
    assert "**Warning:** section" in (tmp_path / "out" / "leaderboard.md").read_text()
    page = (tmp_path / "out" / "leaderboard.html").read_text(encoding="utf-8")
    assert "<p class=warn><b>Warning:</b> section" in page and "2 different counters" in page  # the page too


def test_a_comparison_with_an_expected_score_is_tested_against_guessing_and_non_finite_scores_are_refused():
    ours = np.array([100.0] * 5 + [0.0] * 45)
    d = paired([ours], [np.full(50, 25.0)], test="none")  # chance's expected 25% an example, untested
    assert d.p is None and d.significant == (d.lo > 0 or d.hi < 0)
    with pytest.raises(ValueError, match="not finite"):
        paired([np.array([1.0, np.nan])], [np.zeros(2)])
    with pytest.raises(ValueError, match="unknown test True; choose one of: sign_flip, chance, none"):
        paired([ours], [ours], test=True)


def test_the_chance_test_is_exact_against_enumeration_and_stars_no_guesser():
    """0 of 50 CircularEval items at (1/4)**4 each: the interval alone read "below chance" ([-0.39, -0.39]),
    which a guesser scores with probability 0.82."""
    import itertools

    from harness.stats import chance_p

    tiny = paired([np.zeros(50)], [np.full(50, 100 / 256)], test="chance")
    assert tiny.hi < 0 and tiny.p == 1.0 and not tiny.significant
    rng = np.random.default_rng(1)
    c = rng.choice([25.0, 50.0, 100 / 3, 100 / 256, 0.0, 100.0], 11)  # a certain wrong and a certain right one
    s, s2, c2 = (rng.random(11) < 0.5) * 100.0, np.array([100.0, 0.0, 0.0, 100.0]), np.full(4, 50.0)
    one = two = 0.0
    for bits in itertools.product([0.0, 100.0], repeat=15):  # every outcome of guessing, with its probability
        b = np.array(bits)
        prob = float(np.prod(np.where(b > 0, np.r_[c, c2] / 100, 1 - np.r_[c, c2] / 100)))
        one += prob * (abs(b[:11].mean() - c.mean()) >= abs(s.mean() - c.mean()) - 1e-9)  # the rest sum to 1
        far = abs(s.mean() + s2.mean() - c.mean() - c2.mean()) / 2 - 1e-9
        two += prob * (abs(b[:11].mean() + b[11:].mean() - c.mean() - c2.mean()) / 2 >= far)
    assert chance_p([s], [c]) == pytest.approx(one, rel=1e-12) and 0 < one < 1
    assert chance_p([s, s2], [c, c2]) == pytest.approx(two, abs=0.01)  # Monte Carlo over several columns
    hellaswag = np.r_[np.full(2600, 100.0), np.zeros(7442)]  # 25.9% of 10,042 against 25%: p ~0.04
    assert 0.02 < chance_p([hellaswag], [np.full(10_042, 25.0)]) < 0.06
    with pytest.raises(ValueError, match="in 0-100"):
        chance_p([np.array([1.0])], [np.array([101.0])])


def test_the_normal_approximation_is_not_used_where_a_few_examples_dominate():
    from harness.stats import sign_flip_p

    small = np.full(4, 100.0)  # 4 of 4 one way: p 0.125 alone
    large = np.array([100.0] * 750 + [-100.0] * 750 + [0.0] * 3503)
    p = sign_flip_p([small, large])  # the normal tail gave 0.0455 (a *); Monte Carlo is near 0.063
    assert 0.055 < p < 0.072


def test_holm_adjusts_a_family_of_p_values_step_down():
    from harness.stats import holm

    # sorted 0.01, 0.02, 0.03, 0.5 times 4, 3, 2, 1, kept monotone: 0.04, 0.06, 0.06, 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_a_column_on_another_scale_gets_no_percent_end_bound(tmp_path):
    """From a review: the diffusion judge's 1-10 scores were read as percent, so a mean of 3.18 over 60 prompts
    got Clopper-Pearson's upper end at 0 of 60, 5.96, instead of its bootstrap's ~3.4; a column without a
    ``scale`` (percent) keeps that bound, and none is applied where a score lies outside 0-100."""
    runs = tmp_path / "runs"
    judged = [3.0] * 49 + [4.0] * 11  # mean 3.18
    entry = {"metric": "judge", "value": float(np.mean(judged)), "n": 60, "scores": judged, "examples": "e"}
    percent = {**entry, "metric": "sim", "scores": [1.0] * 60, "value": 1.0}  # percent, near 0: the bound applies
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": {**entry, "scale": [1, 10]}, "boolq": percent}))
    write_leaderboards(runs, tmp_path / "out")
    [row] = read_csv(tmp_path / "out" / "commonsense.csv")
    plain = estimate([np.asarray(judged)], scores=False)
    assert row["ARC-Easy"] == "3.18" and float(row["ARC-Easy_hi"]) == pytest.approx(plain.hi, abs=0.01)
    assert plain.hi < 3.5
    bound = 100.0 * (1 - 0.025 ** (1 / 60))  # 5.96
    assert float(row["boolq_hi"]) == pytest.approx(bound, abs=0.01)
    avg = estimate([np.asarray(judged), np.ones(60)], scores=False)  # an Avg over a scaled column: no bound either
    assert float(row["Avg_hi"]) == pytest.approx(avg.hi, abs=0.01) and avg.hi < 2.5
    assert estimate([np.asarray(judged)]).hi == pytest.approx(bound)  # what the judge's cell read before


def test_a_column_on_another_scale_is_tested_against_chance_on_its_scale(tmp_path):
    """From a review: the test against ``chance`` read every score as percent. On a 0-1000 scale the leaderboard
    stopped ("chance_p needs scores ... in 0-100", blaming valid records); on the judge's 1-10, 9 on every item
    against an expected 5.5 read as 9% against 5.5% and was never starred (p 0.26)."""
    from harness.stats import chance_p

    def entry(score: float, scale: list[int], chance: float) -> dict:
        return {"metric": "judge", "value": score, "n": 60, "scores": [score] * 60, "examples": "e", "scale": scale,
                "baselines": {CHANCE: [chance] * 60}}  # fmt: skip

    runs = tmp_path / "runs"
    for method, wide, judge in (("lora", 700.0, 9.0), ("effilora", 500.0, 5.0)):
        evals = {"ARC-Easy": entry(wide, [0, 1000], 550.0), "boolq": entry(judge, [1, 10], 5.5)}
        write_fixture(runs, fixture_record(method, 0, evals=evals))
    write_leaderboards(runs, tmp_path / "out")
    vs = {
        (r["method"], r["benchmark"]): r
        for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
        if r["reference"] == CHANCE
    }
    assert vs[("lora", "ARC-Easy")]["diff"] == "150.0" and vs[("effilora", "ARC-Easy")]["diff"] == "-50.0"  # its units
    # on 0-100: 70% and 50% of 60 items against a guesser right on 55% of them
    assert float(vs[("lora", "ARC-Easy")]["p"]) == pytest.approx(
        chance_p([np.full(60, 70.0)], [np.full(60, 55.0)]), rel=1e-3
    )
    assert vs[("lora", "ARC-Easy")]["significant"] == "True" and vs[("effilora", "ARC-Easy")]["significant"] == "False"
    assert float(vs[("lora", "boolq")]["p"]) < 1e-9 and vs[("lora", "boolq")]["significant"] == "True"  # 9 of 1-10
    assert chance_p([np.full(60, 9.0)], [np.full(60, 5.5)]) > 0.2  # what it read as percent
    assert chance_p([np.full(60, 9.0)], [np.full(60, 5.5)], scales=[(1, 10)]) < 1e-9
    with pytest.raises(ValueError, match="in 1 to 10 .the column's scale."):
        chance_p([np.array([11.0])], [np.array([5.5])], scales=[(1, 10)])


def test_trained_rows_that_share_no_seed_are_not_compared_and_a_warning_says_why(tmp_path, capsys):
    """From a review: with no seed in common the comparison fell back to every run, setting effilora's seed 1
    against lora's seed 0 while the legend says "on the seeds both ran"."""
    runs = tmp_path / "runs"
    answers = "0123" * 10
    half = "0123" * 5 + "1032" * 5  # right on the first half only
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": scored(answers, half)}))
    write_fixture(runs, fixture_record("effilora", 1, evals={"ARC-Easy": scored(answers, answers)}))
    write_fixture(runs, fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 10)}))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert rows["effilora"]["ARC-Easy_vs_lora"] == rows["effilora"]["Avg_vs_lora"] == ""  # was +50.0, seed 1 vs 0
    assert rows["base"]["ARC-Easy_vs_lora"] == "-25.0"  # base does not train: compared as before
    compared = {(r["method"], r["reference"]) for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")}
    assert ("effilora", "lora") not in compared and ("effilora", "base") in compared
    err = capsys.readouterr().err
    line = "effilora (seeds 1) is not compared with lora (seeds 0): trained rows are compared on the seeds both ran"
    assert line in err and "run effilora with seed 0 or lora with seed 1" in err
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| effilora | – | – |" in md and "**Warning:** section" in md and line in md
    assert line in (tmp_path / "out" / "leaderboard.html").read_text(encoding="utf-8")


def test_one_judge_alias_answered_by_two_snapshots_is_two_scorers():
    """From a review: the mixed-scorer warning read the judge's name, endpoint and rubric only, so runs judged
    under one alias (gpt-4o) by two dated snapshots, which records keep as ``judge_answered_by``, were compared."""
    from types import SimpleNamespace

    from harness.leaderboard import mixed_scorers

    def run(answered):
        entry = {"value": 7.0, "judge_model": "gpt-4o", "judge_endpoint": "https://api.openai.com", "rubric_version": 1}
        return {"eval": {"judge_avg": entry | ({} if answered is None else {"judge_answered_by": answered})}}

    def section(*answered):
        rows = [SimpleNamespace(runs=[run(a)]) for a in answered]
        return SimpleNamespace(key="k", task="diffusion", preset="smoke", benchmarks=["judge_avg"], rows=rows)

    assert mixed_scorers([section(["gpt-4o-2024-08-06"], ["gpt-4o-2024-08-06"])]) == []
    [line] = mixed_scorers([section(["gpt-4o-2024-08-06"], ["gpt-4o-2024-11-20"])])
    assert "judge_avg scored by 2 different scorers" in line and "gpt-4o-2024-11-20" in line
    assert len(mixed_scorers([section(["gpt-4o-2024-08-06"], None)])) == 1  # judged before it was kept: not known


def _right(answers: str, k: int) -> str:
    """Predictions right on the first ``k`` examples only."""
    return answers[:k] + "".join(str((int(a) + 1) % 4) for a in answers[k:])


def test_seed_ranges_apart_marks_a_difference_beyond_every_seeds_spread(tmp_path):
    """The README's rule for a method difference, "beyond the paired interval and the seed ranges apart", was
    applied by hand; the comparisons now say it (``seed_ranges_apart``) and the Markdown marks it (``†``)."""
    runs = tmp_path / "runs"
    answers = "0123" * 25  # 100 examples
    # ARC-Easy: lora 60-62 over seeds 0-2, effilora 50-52: apart. boolq: lora 60-62, effilora 62-64: they touch at 62
    # (not apart). moslora has seed 0 only: one score against lora's seed 0, nothing to say about a spread.
    rights = {"lora": ((60, 60), (61, 61), (62, 62)), "effilora": ((50, 62), (51, 63), (52, 64))}
    for method, per_seed in rights.items():
        for seed, (arc, boolq) in enumerate(per_seed):
            evals = {
                "ARC-Easy": scored(answers, _right(answers, arc)),
                "boolq": scored(answers, _right(answers, boolq)),
            }
            write_fixture(runs, fixture_record(method, seed, evals=evals))
    evals = {"ARC-Easy": scored(answers, _right(answers, 40)), "boolq": scored(answers, _right(answers, 40))}
    write_fixture(runs, fixture_record("moslora", 0, evals=evals))
    evals = {"ARC-Easy": scored(answers, _right(answers, 61)), "boolq": scored(answers, _right(answers, 10))}
    for seed in (0, 1, 2):  # the zero-shot model run at three seeds scores alike: one score, not a spread
        write_fixture(runs, fixture_record("base", seed, evals=evals))
    write_leaderboards(runs, tmp_path / "out")
    vs = {
        (r["method"], r["reference"], r["benchmark"]): r["seed_ranges_apart"]
        for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    }
    assert (vs[("effilora", "lora", "ARC-Easy")], vs[("effilora", "lora", "boolq")]) == ("True", "False")
    # Avg over the two: effilora 56-58, lora 60-62: apart
    assert vs[("effilora", "lora", "Avg")] == "True"
    assert vs[("moslora", "lora", "ARC-Easy")] == ""  # one seed against one (the seeds both ran): no spread
    # base scores 61 on ARC-Easy, inside lora's 60-62: not apart; on boolq 10, below every seed of lora: apart
    assert (vs[("lora", "base", "ARC-Easy")], vs[("lora", "base", "boolq")]) == ("False", "True")
    assert vs[("base", "lora", "boolq")] == "True"  # the mirror says the same
    # majority (option 0 on this balanced set: 25%) is below every lora seed; effilora's boolq (62-64) too
    assert vs[("lora", "majority", "ARC-Easy")] == vs[("effilora", "majority", "boolq")] == "True"
    assert vs[("moslora", "majority", "ARC-Easy")] == ""  # one run against one score
    # from a review: base's three runs counted as three seeds, so one seed of moslora against it, and base against
    # majority, got a flag that speaks of a spread over seeds neither has
    assert vs[("moslora", "base", "boolq")] == vs[("base", "majority", "ARC-Easy")] == ""
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| effilora | -10.0"))
    assert line == "| effilora | -10.0*† | +2.0 | -4.0*† |", line  # boolq's seeds touch: no †
    assert "`†`: the two rows' per-seed scores lie apart" in md
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    assert "vs lora -10.0*†" in html


def test_seed_ranges_apart_uses_the_seeds_both_trained_rows_ran(tmp_path):
    """Seeds 0 and 1 of both rows lie apart; lora's seed 2 (a third, lower seed effilora did not run) would make
    them overlap, and is left out as the paired difference leaves it out."""
    runs = tmp_path / "runs"
    answers = "0123" * 25
    for method, per_seed in {"lora": (60, 61, 40), "effilora": (50, 51)}.items():
        for seed, k in enumerate(per_seed):
            evals = {"ARC-Easy": scored(answers, _right(answers, k))}
            write_fixture(runs, fixture_record(method, seed, evals=evals))
    write_leaderboards(runs, tmp_path / "out")
    vs = {
        (r["method"], r["reference"], r["benchmark"]): r["seed_ranges_apart"]
        for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")
    }
    assert vs[("effilora", "lora", "ARC-Easy")] == "True"


def test_a_row_label_with_two_dollar_signs_is_drawn_as_written(tmp_path, monkeypatch):
    """From a review: row labels went to matplotlib as mathtext, so a ``--targets`` regex ending in ``$`` (two ``$``
    in one label) failed ``harness leaderboard`` after its CSVs, before the plot, the Markdown and the page."""
    import matplotlib.text

    runs, answers = tmp_path / "runs", "0123012301"
    regex = r".*(q|v)_proj$|.*\.mlp\.\w+$"
    for method, preds, targets in (
        ("lora", "0123012300", None),
        ("lora", "0123000000", regex),
        ("base", "0" * 10, None),
    ):
        record = fixture_record(method, 0, evals={"ARC-Easy": scored(answers, preds)})
        if targets:
            record["run"]["config"]["method_options"]["targets"] = targets
            record["run"]["id"] += "-regex"
        write_fixture(runs, record)
    record["run"]["config"]["model_label"] = "tiny $x$ \\w$"  # the model label goes under the plot and in its labels
    drawn = []
    real = matplotlib.text.Text.draw
    monkeypatch.setattr(matplotlib.text.Text, "draw", lambda self, r: drawn.append(self.get_text()) or real(self, r))
    names = {p.name for p in write_leaderboards(runs, tmp_path / "out")}
    assert {"commonsense.png", "leaderboard.md", "leaderboard.html"} <= names
    assert any(f"targets={regex}" in text for text in drawn)  # as written, not typeset


def test_a_later_zero_shot_section_does_not_replace_the_trained_one_on_the_plot(tmp_path):
    """From a review: a zero-shot run made later at another eval limit (its own section: no trained run to join)
    was plotted in ``<task>.png`` instead of the section of the newest trained run, as the docstring said."""
    from harness.leaderboard import load_records, newest_sections, sections

    runs, answers = tmp_path / "runs", "0123012301"
    for method, preds in (("lora", "0123012300"), ("effilora", "0123000000"), ("base", "0" * 10)):
        record = fixture_record(method, 0, evals={"ARC-Easy": scored(answers, preds)})
        record["run"]["created_at"] = "2026-01-01T00:00:00+00:00"
        write_fixture(runs, record)
    later = fixture_record("base", 0, evals={"ARC-Easy": scored(answers[:8], "0" * 8)})
    later["run"]["config"]["task_options"]["eval_limit"] = 8
    later["run"]["id"] += "-lim8"
    later["run"]["created_at"] = "2026-01-05T00:00:00+00:00"
    write_fixture(runs, later)
    secs = sections(load_records(runs))
    assert len(secs) == 2
    [shown] = newest_sections(secs)
    assert [r.method for r in shown.rows if r.kind == "trained"] == ["lora", "effilora"]
    assert newest_sections([s for s in secs if s is not shown]) == [s for s in secs if s is not shown]  # alone: shown


def test_a_zero_shot_run_kept_apart_by_its_data_is_said_so_not_by_training_settings(tmp_path):
    """From a review: a zero-shot run that could not join the trained section because its test data differed was
    said to be set apart by ``train.lr 0.001``, a training setting it never used; the trained section by its own
    ``train.lr``, though no other section of its title trains. Both differ by their data, and say so."""
    from tests.test_records_leaderboard import _on_data

    runs, answers = tmp_path / "runs", "0123" * 5
    for i, (method, preds) in enumerate((("lora", answers), ("effilora", "0000" * 5))):
        record = _on_data(fixture_record(method, 0, evals={"ARC-Easy": scored(answers, preds)}), "a", "c")
        record["run"]["config"]["train"]["lr"] = 0.5
        record["run"]["id"] += "-lr"
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        write_fixture(runs, record)
    base = _on_data(fixture_record("base", 0, evals={"ARC-Easy": scored(answers, "1111" * 5)}), "b")
    write_fixture(runs, base)
    write_leaderboards(runs, tmp_path / "out")
    settings = {r["method"]: r["settings"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert settings["lora"].startswith('data "') and settings["base"].startswith('data "')
    assert settings["lora"] != settings["base"] and "train" not in settings["lora"] + settings["base"]
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "train.lr" not in md


def test_a_row_compared_on_no_column_is_not_said_to_beat_the_baselines(tmp_path):
    """From a review: a row with no score on any column a baseline scores (every benchmark of its run failed) got
    ``not_above_baselines`` "none", which reads as beating majority and chance everywhere; it is empty in the CSV
    (unknown) and "–" in the Markdown."""
    runs, answers = tmp_path / "runs", "0123012301"
    evals = {
        "effilora": {"ARC-Easy": {"status": "failed"}},
        "hydralora": {"ARC-Easy": scored(answers, "0123012300")},
        "base": {"ARC-Easy": scored(answers, "0" * 10)},
    }
    for method, e in evals.items():
        write_fixture(runs, fixture_record(method, 0, evals=e))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r["not_above_baselines"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert rows == {"hydralora": "none", "effilora": "", "base": "ARC-Easy Avg", "majority": "", "chance": ""}
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| effilora | – | absent | – | 0/2 | 0.500 | 0 | – |" in md and "| hydralora |" in md


def test_a_run_with_failures_still_reports_another_error_of_the_leaderboard(tmp_path, monkeypatch, capsys):
    """From a review: ``harness run`` swallowed any ValueError of the leaderboard where a run had failed (meant for
    "no successful record", which the failures explain): a leaderboard that broke went unsaid. Only that case is."""
    import harness.leaderboard
    import harness.runner
    from harness.cli import main

    failed = {"run": {"id": "x-failed", "status": "failed", "error": "boom"}}
    monkeypatch.setattr(harness.runner, "run_all", lambda *a, **k: [failed])
    monkeypatch.setattr(harness.runner, "load_model", None)  # nothing loads
    argv = ["run", "--task", "commonsense", "--methods", "lora", "--preset", "smoke", "--quiet"]
    argv += ["--runs-dir", str(tmp_path / "runs")]
    (tmp_path / "runs").mkdir()  # as the failed run left it: its folder, no successful record

    def broken(runs_dir, out_dir):
        raise ValueError("a record it cannot read")

    monkeypatch.setattr(harness.leaderboard, "write_leaderboards", broken)
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "1 of 1 runs failed: x-failed" in line and "boom" in line
    assert line.endswith("; the leaderboard was not rebuilt: a record it cannot read (the records are kept)")
    monkeypatch.undo()  # the real leaderboard, of no successful record: the failures say why, nothing more
    monkeypatch.setattr(harness.runner, "run_all", lambda *a, **k: [failed])
    monkeypatch.setattr(harness.runner, "load_model", None)
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "1 of 1 runs failed: x-failed" in line and "leaderboard" not in line


def test_zero_shot_sections_on_other_data_say_which_data_where_no_run_trains(tmp_path):
    """From a review: two zero-shot sections of one title on other test data, whose configs carried other training
    settings (``--lr``), said nothing that told them apart: their ``train.*`` settings are no longer shown (a
    zero-shot run reads none), and ``data`` was shown only beside runs that train. Each now says its data."""
    from harness.leaderboard import load_records, sections
    from tests.test_records_leaderboard import _on_data

    runs, answers = tmp_path / "runs", "0123" * 5
    for i, (test, preds, lr) in enumerate((("a", "1111", None), ("b", "0000", 0.5))):
        record = _on_data(fixture_record("base", 0, evals={"ARC-Easy": scored(answers, preds * 5)}), test)
        record["run"]["created_at"] = f"2026-01-0{i + 1}T00:00:00+00:00"
        if lr is not None:
            record["run"]["config"]["train"]["lr"] = lr
            record["run"]["id"] += "-lr"
        write_fixture(runs, record)
    apart = [s.info["apart"] for s in sections(load_records(runs))]
    assert len(apart) == 2 and all(a.startswith('data "') and "," not in a for a in apart) and len(set(apart)) == 2


def test_a_zero_shot_section_on_the_same_test_data_is_not_said_to_read_other_data(tmp_path):
    """From a review: a base run on the trained section's own test data, kept apart by its model files (the folder's
    weights replaced since), was also said to read other ``data``: its digests never hold the training file the
    trained runs read, so they differed without contradicting. Only the model files set them apart, and say so."""
    from harness.leaderboard import load_records, sections
    from tests.test_records_leaderboard import _on_data

    runs, answers = tmp_path / "runs", "0123" * 5
    for method, preds, test, train, weights in (
        ("lora", answers, "a", "c", "1"),
        ("effilora", "0000" * 5, "a", "c", "1"),
        ("base", "1111" * 5, "a", None, "2"),
    ):
        record = _on_data(fixture_record(method, 0, evals={"ARC-Easy": scored(answers, preds)}), test, train)
        record["run"]["config"]["model_info"] = {"weights_sha256": weights * 64}
        write_fixture(runs, record)
    secs = sections(load_records(runs))
    apart = {tuple(r.method for r in s.rows if r.kind != "baseline"): s.info["apart"] for s in secs}
    assert set(apart) == {("lora", "effilora"), ("base",)}  # the base run cannot join: other weights
    assert all(a.startswith('model files "') and "data" not in a for a in apart.values())
    assert len(set(apart.values())) == 2


def test_a_row_that_failed_benchmarks_a_baseline_scores_lists_them_not_none(tmp_path):
    """From a review: a row whose runs failed most benchmarks and beat majority and chance on the one they scored
    read ``none`` in ``not_above_baselines`` (beating them everywhere): a failed benchmark was left out like one
    with no baseline. It is listed (not compared, not beaten); one its runs never had (``absent``, or not in their
    results) is not, and a row compared nowhere keeps '–'."""
    runs, answers = tmp_path / "runs", "0123" * 10
    ok, failed = scored(answers, answers), {"status": "failed"}
    evals = {
        ("lora", 0): {"ARC-Easy": ok, "boolq": failed, "openbookqa": {"status": "absent"}},
        ("effilora", 0): {"ARC-Easy": ok, "boolq": ok},  # openbookqa: not in its results
        ("effilora", 1): {"ARC-Easy": ok, "boolq": failed},  # one seed failed: no score for the row
        ("hydralora", 0): {"ARC-Easy": ok, "boolq": ok, "openbookqa": ok},
        ("moslora", 0): {"ARC-Easy": failed, "boolq": failed, "openbookqa": failed},
        ("base", 0): {b: scored(answers, "0" * 40) for b in ("ARC-Easy", "boolq", "openbookqa")},
    }
    for (method, seed), e in evals.items():
        write_fixture(runs, fixture_record(method, seed, evals=e))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r["not_above_baselines"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert rows["lora"] == "boolq" and rows["effilora"] == "boolq" and rows["hydralora"] == "none"
    assert rows["moslora"] == ""  # compared nowhere: unknown in the CSV, '–' in the Markdown
    md = (tmp_path / "out" / "leaderboard.md").read_text().splitlines()
    assert next(line for line in md if line.startswith("| lora |")).endswith("| boolq |")
    assert next(line for line in md if line.startswith("| moslora |")).endswith("| – |")


def test_the_chance_row_of_a_few_questions_gets_no_end_bound(tmp_path):
    """From a review: the "never narrower than at an end" bound was applied to ``chance``, whose per-example
    scores are expected values, not outcomes: 4 questions of 4 options read 25.0 [25.0, 60.2]. A model's row of
    the same 4 questions keeps the bound (1 of 4 right: its bootstrap reaches 75)."""
    runs = tmp_path / "runs"
    write_fixture(runs, fixture_record("lora", 0, evals={"ARC-Easy": scored("0123", "0000", "4444")}))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    chance = rows["chance"]
    assert (chance["ARC-Easy"], chance["ARC-Easy_lo"], chance["ARC-Easy_hi"]) == ("25.0", "25.0", "25.0")
    assert (chance["Avg"], chance["Avg_lo"], chance["Avg_hi"]) == ("25.0", "25.0", "25.0")
    assert float(rows["lora"]["ARC-Easy_hi"]) >= 60.2  # a model's 1 of 4: the bootstrap's, or the end bound
    none_right = {"ARC-Easy": scored("0123", "1032", "4444")}
    write_fixture(runs, fixture_record("base", 0, evals=none_right))
    write_leaderboards(runs, tmp_path / "out")
    base = {r["method"]: r for r in read_csv(tmp_path / "out" / "commonsense.csv")}["base"]
    assert (base["ARC-Easy"], base["ARC-Easy_lo"]) == ("0.0", "0.0") and float(base["ARC-Easy_hi"]) == pytest.approx(
        60.2, abs=0.1
    )  # 0 of 4 right: the exact bound 1 - 0.025^(1/4)


def test_an_avg_of_a_mean_and_a_percent_column_keeps_the_percent_columns_end_bound():
    """From a re-review: once similarity declared its scale (a mean of cosines), one flag for the Avg turned the
    exact end bound off for every column: fidelity all at 0 of 20 gave Avg 23.0 [22.1, 24.0] where its own
    [0.0, 16.8] share lifts the upper end. Each column keeps its own (``scores`` one flag a column)."""
    import numpy as np

    from harness.stats import estimate

    rng = np.random.default_rng(0)
    similarity, fidelity = rng.normal(46, 2, 20), np.zeros(20)
    mixed = estimate([similarity, fidelity], scores=[False, True])
    none = estimate([similarity, fidelity], scores=False)
    alone = estimate([fidelity])
    assert mixed.value == none.value and mixed.lo == none.lo
    assert mixed.hi == pytest.approx(none.hi + alone.hi / 2)  # fidelity's exact bound, weighted by its share
    with pytest.raises(ValueError, match="one a column"):
        estimate([similarity, fidelity], scores=[True])


@pytest.mark.parametrize("n", [10, 30, 125])
@pytest.mark.parametrize("score", [100 / 3, 200 / 3])
def test_an_interval_holds_its_value_when_every_score_is_one_unrepresentable_number(n, score):
    """From a review: examples that all pool to 33.33 (one seed of three right on each) resampled to a mean a float
    rounding above np.mean's, so the interval's lower end sat above its value and the plot's error bar was negative:
    writing the leaderboard raised after the CSVs, before leaderboard.md and .html."""
    e = estimate([np.full(n, score)])
    assert e.lo <= e.value <= e.hi


def test_a_p_below_005_never_reads_005_in_the_comparisons_csv(tmp_path, monkeypatch):
    """From a review: the comparisons CSV wrote p at 4 significant digits, so a Monte Carlo p of 1000/20001 =
    0.0499975 read 0.05 beside ``significant`` True, against the p < 0.05 rule; such a p (and its Holm's) keeps the
    digits that put it below 0.05, and any other keeps its 4 (0.123456: 0.1235)."""
    import harness.leaderboard_render
    import harness.leaderboard_rows
    from harness.stats import Estimate

    ps = iter([1000 / 20001, 0.123456] * 10)  # effilora's ARC-Easy, then its Avg, against lora
    monkeypatch.setattr(harness.leaderboard_rows, "paired", lambda *a, **k: Estimate(5.0, 1.0, 9.0, next(ps)))
    monkeypatch.setattr(harness.leaderboard_render, "holm", lambda p: list(p))  # the p_holm column reads p itself
    runs = tmp_path / "runs"
    entry = {"metric": "m", "value": 50.0, "n": 4, "scores": [50.0] * 4, "examples": "e"}  # no answers: no baselines
    for method in ("lora", "effilora"):
        write_fixture(runs, fixture_record(method, 0, evals={"ARC-Easy": entry}))
    write_leaderboards(runs, tmp_path / "out")
    vs = {r["benchmark"]: r for r in read_csv(tmp_path / "out" / "commonsense_comparisons.csv")}
    columns = ("p", "p_holm", "significant")
    assert [vs["ARC-Easy"][c] for c in columns] == ["0.049998", "0.049998", "True"]  # the fewest digits below 0.05
    assert [vs["Avg"][c] for c in columns] == ["0.1235", "0.1235", "False"]


def test_a_row_significantly_below_the_baselines_is_listed_as_not_above_them(tmp_path):
    """A benchmark where a row is significantly *below* majority and chance is listed in ``not_above_baselines``:
    significance alone is no win (a mutation test found only the committed leaderboard's golden file pinned the
    ``value > 0``: dropping it counted this row as beating both)."""
    runs, answers = tmp_path / "runs", "0" * 30 + "1" * 10
    evals = {
        "lora": {"ARC-Easy": scored(answers, "1" * 30 + "0" * 10)},  # every answer wrong: 0 % against 75 % and 25 %
        "hydralora": {"ARC-Easy": scored(answers, answers)},  # every answer right
        "base": {"ARC-Easy": scored(answers, "0" * 40)},
    }
    for method, e in evals.items():
        write_fixture(runs, fixture_record(method, 0, evals=e))
    write_leaderboards(runs, tmp_path / "out")
    rows = {r["method"]: r["not_above_baselines"] for r in read_csv(tmp_path / "out" / "commonsense.csv")}
    assert rows["lora"] == "ARC-Easy Avg" and rows["hydralora"] == "none"


def test_the_summary_of_failed_runs_counts_every_run_names_each_in_order_and_quotes_the_first(
    tmp_path, monkeypatch, capsys
):
    """``harness run``'s last line when runs failed: how many of ALL the sweep's runs failed (a success among them
    counted in the total), the failed ids in the sweep's order, and the error of the first failure. A mutation test
    found nothing pinned the total or which failure's error is quoted (every test had one run, or one failure)."""
    import harness.runner
    from harness.cli import main

    ok = {"run": {"id": "x-ok", "status": "success", "error": None}}
    first = {"run": {"id": "x-first", "status": "failed", "error": "RuntimeError: boom one"}}
    second = {"run": {"id": "x-second", "status": "failed", "error": "ValueError: boom two"}}
    monkeypatch.setattr(harness.runner, "run_all", lambda *a, **k: [first, ok, second])
    monkeypatch.setattr(harness.runner, "load_model", None)  # nothing loads
    argv = ["run", "--task", "commonsense", "--methods", "lora", "--preset", "smoke", "--quiet", "--no-leaderboard"]
    argv += ["--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "2 of 3 runs failed: x-first, x-second (see their records; x-first: RuntimeError: boom one)" in line, line
