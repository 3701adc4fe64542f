"""Multimodal scoring: literal examples for every function, every score on the 0-100 scale."""

from __future__ import annotations

import pytest

from tasks.multimodal.scoring import (
    anls,
    choice_prompt,
    circular_correct,
    circular_variants,
    exact_match,
    levenshtein,
    mme_scores,
    normalize_answer,
    open_prompt,
    parse_choice,
    parse_yesno,
    percent,
    yesno_prompt,
)


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The Cat.", "cat"),
        ("  Two   dogs! ", "2 dogs"),
        ("1,000", "1000"),
        ("Smileys & Emotion", "smileys emotion"),
        ("an apple, a pear", "apple pear"),
        ("", ""),
        ("ten-year", "10 year"),
        ("3.14", "3.14"),  # a decimal point stays (VQA's evaluation keeps it)
        ("It is 2.", "it is 2"),
        ("1.5 cm.", "1.5 cm"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match():
    assert exact_match("The cat.", ["cat"])
    assert exact_match("eleven", ["11", "eleven"])
    assert exact_match("3", ["three"])
    assert not exact_match("cats", ["cat"])
    assert not exact_match("", ["cat"])
    with pytest.raises(ValueError, match="non-empty list"):
        exact_match("cat", [])
    with pytest.raises(ValueError, match="wrap one answer"):
        exact_match("cat", "cat")


def test_an_answer_that_normalises_to_nothing_is_matched_by_what_it_says_not_by_an_empty_reply():
    """From a review: "A" and "The" normalise to "" (articles), "?" too (punctuation), so an empty reply, or any
    article, matched them."""
    assert not exact_match("", ["A"]) and not exact_match("The", ["A"]) and not exact_match("", ["a"])
    assert not exact_match("", ["?"]) and not exact_match("", [" "])  # a blank answer matches nothing
    assert exact_match("a", ["A"]) and exact_match("A.", ["A"]) and exact_match(" the ", ["The"])
    assert exact_match("?", ["?"]) and not exact_match("!", ["?"])
    assert exact_match("", ["A", ""]) is False and exact_match("cat", ["A", "cat"])


@pytest.mark.parametrize(
    "a, b, distance",
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("abc", "abc", 0), ("flaw", "lawn", 2), ("ab", "ba", 2)],
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance


@pytest.mark.parametrize(
    "pred, answers, score",
    [
        ("CAT", ["CAT"], 100.0),
        ("cat", ["CAT"], 100.0),  # case-insensitive
        ("  the   cat ", ["the cat"], 100.0),  # whitespace collapsed
        ("cat.", ["cat"], 75.0),  # punctuation counts: 1 edit over 4 characters
        ("CAR", ["CAT"], 100.0 * 2 / 3),  # one substitution in three
        ("ABC", ["ABCD"], 75.0),
        ("AB", ["ABCD"], 0.0),  # NL = 0.5 reaches the threshold: zeroed
        ("C", ["CAT"], 0.0),
        ("", ["CAT"], 0.0),
        ("", [""], 100.0),  # two empty strings are identical
        ("cat", ["dog", "cart"], 75.0),  # best over the answers
        ("invoice", ["INVOICE", "bill"], 100.0),
    ],
)
def test_anls(pred, answers, score):
    assert anls(pred, answers) == pytest.approx(score)


def test_anls_threshold_and_bad_input():
    assert anls("AB", ["ABCD"], threshold=0.6) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="threshold 0"):
        anls("a", ["a"], threshold=0)
    with pytest.raises(ValueError, match="non-empty list"):
        anls("a", [])


def test_prompts():
    assert choice_prompt("What is 2+2?", ["3", "4", "5"]) == (
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nAnswer with the option's letter from the given choices directly."
    )
    assert yesno_prompt("Is it red? ") == "Is it red?\nPlease answer yes or no."
    assert open_prompt("What word?") == "What word?\nAnswer the question using a single word or phrase."
    with pytest.raises(ValueError, match="2 to 26"):
        choice_prompt("q", ["only"])


def test_circular_variants():
    assert circular_variants(["a", "b", "c", "d"], 2) == [
        (["a", "b", "c", "d"], 2),
        (["b", "c", "d", "a"], 1),
        (["c", "d", "a", "b"], 0),
        (["d", "a", "b", "c"], 3),
    ]
    assert circular_variants(["x", "y"], 0) == [(["x", "y"], 0), (["y", "x"], 1)]
    for bad in (4, -1, True, "0"):
        with pytest.raises(ValueError, match="not in 0..3"):
            circular_variants(["a", "b", "c", "d"], bad)


def test_circular_eval_scores_a_position_biased_model_zero():
    questions = [(["red", "green", "blue", "black"], i) for i in range(4)]  # the answer at each position
    always_a, oracle, all_but_last = [], [], []
    plain_always_a = []
    for options, answer in questions:
        variants = circular_variants(options, answer)
        always_a.append(circular_correct([right == 0 for _, right in variants]))
        plain_always_a.append(answer == 0)
        oracle.append(circular_correct([True] * len(variants)))
        all_but_last.append(circular_correct([k < 3 for k in range(len(variants))]))
    assert percent(plain_always_a) == 25.0  # vanilla accuracy rewards the bias
    assert percent(always_a) == 0.0  # CircularEval does not
    assert percent(oracle) == 100.0
    assert percent(all_but_last) == 0.0
    with pytest.raises(ValueError, match="no rotations"):
        circular_correct([])


@pytest.mark.parametrize(
    "reply, picked",
    [
        ("B", 1),
        ("b", 1),
        ("(C)", 2),
        ("C. blue", 2),
        ("The answer is A.", 0),
        ("Answer: D", 3),
        ("blue", 2),
        ("Blue.", 2),
        ("Banana", None),
        ("E", None),  # no fifth option
        ("I don't know", None),
        ("(B) green", 1),
        ("A blue square.", None),  # an article, not option A
        ("B cat", None),
        ("B\nbecause it is green", 1),  # from a review: a reason on the next line
        ("The answer is: B", 1),
        ("the answer is c", 2),
    ],
)
def test_parse_choice(reply, picked):
    assert parse_choice(reply, ["red", "green", "blue", "black"]) == picked


@pytest.mark.parametrize(
    "reply, parsed",
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("No, it is not.", "no"),
        ("  NO", "no"),
        ("I think yes", "yes"),
        ("Yes and no", "yes"),  # the first word decides
        ("Nope", None),
        ("Nothing", None),
        ("maybe yes, maybe no", None),
        ("", None),
    ],
)
def test_parse_yesno(reply, parsed):
    assert parse_yesno(reply) == parsed


def test_mme_scores():
    items = [
        ("img1", "yes", "Yes"),
        ("img1", "no", "No."),  # img1: both right
        ("img2", "yes", "yes"),
        ("img2", "no", "yes"),  # img2: one right
        ("img3", "yes", "No"),
        ("img3", "no", "unsure"),  # img3: none right (unparsable counts wrong)
    ]
    assert mme_scores(items) == {"acc": 50.0, "acc_plus": pytest.approx(100.0 / 3)}
    assert mme_scores([("p", "yes", "yes"), ("p", "no", None)]) == {"acc": 50.0, "acc_plus": 0.0}
    with pytest.raises(ValueError, match="not 'yes' or 'no'"):
        mme_scores([("p", "Yes", "yes")])
    with pytest.raises(ValueError, match="no items"):
        mme_scores([])


def test_percent():
    assert percent([True, False, True, True]) == 75.0
    assert percent([100.0, 50.0]) == 75.0
    with pytest.raises(ValueError, match="no values"):
        percent([])


def test_baseline_scores_from_the_test_set_alone():
    from pathlib import Path

    from tasks.multimodal import baseline_scores, by_item
    from tasks.multimodal.data import Record

    def rec(i, kind, **kw):
        return Record(str(i), "general", [Path("x.png")], [("q", "a")], kind, "q", **kw)

    records = [
        rec(0, "choice", options=["a", "b", "c", "d"], answer=2),
        rec(1, "yesno", answer="yes", pair="p"),
        rec(2, "yesno", answer="no", pair="p"),
        rec(3, "yesno", answer="yes", pair="q"),
        rec(4, "open", answers=["cat"], metric="exact"),
        rec(5, "open", answers=["cat"], metric="exact"),
        rec(6, "open", answers=["dog"], metric="exact"),
    ]
    b = baseline_scores(records)
    assert b["chance"][0] == pytest.approx(100 / 4**4)  # every one of 4 rotations guessed right
    assert b["majority"][0] == 0.0  # one fixed letter never survives CircularEval
    assert b["chance"][1:4] == [50.0] * 3 and b["majority"][1:4] == [100.0, 0.0, 100.0]
    assert b["chance"][4:] == [50.0] * 3  # two distinct open answers
    assert b["majority"][4:] == [100.0, 100.0, 0.0]
    items = by_item(records, b["chance"])  # a yes/no pair is one item: both guessed right, 1/4
    assert items == [pytest.approx(100 / 4**4), 25.0, 50.0, 50.0, 50.0, 50.0]
    assert by_item(records, b["majority"]) == [0.0, 0.0, 100.0, 100.0, 100.0, 0.0]  # "always yes": the pair fails
    model = [100.0, 100.0, 0.0, 100.0, 100.0, 0.0, 100.0]
    assert by_item(records, model) == [100.0, 0.0, 100.0, 100.0, 0.0, 100.0]  # acc+: right only if both are
    with pytest.raises(ValueError, match="7 records but 2 scores"):
        by_item(records, [1.0, 2.0])
    # from a review: spellings of one answer were several pool entries ("cat", "Cat", "cat." each matching "cat")
    spelled = [rec(i, "open", answers=[a], metric="exact") for i, a in enumerate(["cat", "Cat", "cat.", "dog", "dog"])]
    b = baseline_scores(spelled)
    assert b["chance"] == [50.0] * 5  # two answers as exact match reads them
    assert b["majority"] == [100.0, 100.0, 100.0, 0.0, 0.0]  # "cat" three times, not "dog" twice
    # and under --eval-limit the pool and the majority come from the domain's every question, not the few scored
    assert baseline_scores(spelled[:1], spelled) == {"chance": [50.0], "majority": [100.0]}
    assert baseline_scores(spelled[3:4], spelled) == {"chance": [50.0], "majority": [0.0]}
    assert baseline_scores(spelled[3:4]) == {"chance": [100.0], "majority": [100.0]}  # its own answer alone
    # answers that are articles are three answers to exact match, not one blank one (from a review)
    articles = [rec(i, "open", answers=[a], metric="exact") for i, a in enumerate(["A", "The", "an"])]
    assert baseline_scores(articles)["chance"] == [pytest.approx(100 / 3)] * 3


def test_leaderboard_rows_from_entry_baselines():
    from harness.leaderboard import sections
    from tests.test_records_leaderboard import fixture_record

    def entry(scores):
        return {
            "metric": "score",
            "value": sum(scores) / 4,
            "n": 4,
            "scores": scores,
            "examples": "e1",
            "baselines": {"chance": [25.0, 50.0, 50.0, 0.0], "majority": [0.0, 100.0, 0.0, 100.0]},
        }

    records = [
        fixture_record("lora", 0, evals={"arc_e": entry([100.0, 100.0, 0.0, 100.0])}),
        fixture_record("base", 0, evals={"arc_e": entry([0.0, 100.0, 0.0, 0.0])}),
    ]
    [section] = sections(records)
    rows = {r.method: r for r in section.rows}
    assert rows["chance"].cells["arc_e"].value == pytest.approx(31.25)
    assert rows["majority"].cells["arc_e"].value == pytest.approx(50.0)
    assert "majority" in rows["lora"].vs  # paired on the same questions


def test_a_question_that_already_ends_with_the_instruction_line_is_not_asked_it_twice():
    """From a review: the scorer appended its instruction line to every question, so one converted from MME ("…?
    Please answer yes or no.") or LLaVA's eval files ("…\\nAnswer the question using a single word or phrase.") was
    asked with the line twice. The exact line (case-sensitive) is added only where the question does not end with
    it; a choice question's goes once, after its options."""
    from pathlib import Path

    from tasks.multimodal.data import Record
    from tasks.multimodal.native import prompts_for

    def asked(kind: str, question: str, **kw) -> list[str]:
        return [h for h, _ in prompts_for(Record("q", "general", [Path("x.png")], [("", "")], kind, question, **kw))]

    mme = "Is there a dog in this image? Please answer yes or no."
    assert asked("yesno", mme + " ", answer="yes", pair="p") == ["<image>\n" + mme]
    llava = "What is the title?\nAnswer the question using a single word or phrase."
    assert asked("open", llava, answers=["x"], metric="exact") == ["<image>\n" + llava]
    letter = "Answer with the option's letter from the given choices directly."
    assert asked("choice", f"Which one?\n{letter}", options=["cat", "dog"], answer=0) == [
        f"<image>\nWhich one?\nA. cat\nB. dog\n{letter}",
        f"<image>\nWhich one?\nA. dog\nB. cat\n{letter}",
    ]
    # a re-review: LLaVA's MME and POPE files end a yes/no question with the open line; asked as LLaVA asks it
    pope = "Is there a snowboard in the image?\nAnswer the question using a single word or phrase."
    assert asked("yesno", pope, answer="yes", pair="p") == ["<image>\n" + pope]
    # another case, or the line not at the end: the scorer's own line is added as before
    lower = "Is it red? please answer yes or no."
    assert asked("yesno", lower, answer="no", pair="p") == [f"<image>\n{lower}\nPlease answer yes or no."]
    assert asked("open", "Colour?", answers=["red"], metric="exact") == [
        "<image>\nColour?\nAnswer the question using a single word or phrase."
    ]
