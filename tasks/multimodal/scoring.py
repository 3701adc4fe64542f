"""Scoring for the multimodal suite: pure functions on strings, every score on a 0-100 scale.

- ``open`` questions: VQA-style normalised exact match, or DocVQA's ANLS (Average Normalized Levenshtein
  Similarity: 1 - edit distance / length, zeroed where NL >= 0.5, the DocVQA paper's definition, best over the
  answers; lmms-eval's code keeps 50 where NL is exactly 0.5, as "ab" for "abcd").
- ``choice`` questions: MMBench's CircularEval. A question with n options is asked n times, the options
  rotated each time; it counts only if every rotation is answered right, so a model that always says
  "A" scores 0, not 1/n.
- ``yesno`` questions: MME's acc (per question) and acc+ (per image: both of its two questions right).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

LETTERS = string.ascii_uppercase
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."  # LLaVA's MMBench prompt
YESNO_INSTRUCTION = "Please answer yes or no."  # MME's prompt
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."  # LLaVA's short-answer prompt

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")  # a decimal point stays: "3.14" is not "3 14"
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")  # "1,000" -> "1000", as VQA's evaluation does


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, number words to digits, collapse spaces (VQA evaluation's form,
    except that every punctuation mark goes, where VQA's script drops a fixed list and expands contractions: "50%"
    is "50" here, "dont" is not "don't"; the README says so)."""
    return _normalize(s, keep_articles=False)


def _normalize(s: str, *, keep_articles: bool) -> str:
    s = _DIGIT_COMMA.sub("", s.lower().strip())
    s = _PUNCTUATION.sub(" ", s)
    words = [_NUMBER_WORDS.get(w, w) for w in s.split() if keep_articles or w not in _ARTICLES]
    return " ".join(words)


# exact_match's forms of an answer, the first that leaves it non-empty: normalised, then with its articles, then
# as written (lower-cased, spaces collapsed)
_FORMS = (normalize_answer, lambda s: _normalize(s, keep_articles=True), lambda s: " ".join(s.lower().split()))


def answer_form(answer: str) -> str:
    """``answer`` as ``exact_match`` compares it (the first of its forms that keeps something of it), tagged with
    which form: two answers with one ``answer_form`` are one answer to exact match ("" for a blank answer)."""
    return next((f"{i}:{f(answer)}" for i, f in enumerate(_FORMS) if f(answer)), "")


def exact_match(pred: str, answers: Sequence[str]) -> bool:
    """Whether ``pred`` equals one of ``answers`` after ``normalize_answer``. An answer that normalises to
    nothing is compared in the first form that keeps something of it: with its articles (``"A"``, ``"The"``),
    else as written, lower-cased (``"?"``); normalised, an empty reply would match it."""
    _need_answers(answers)
    for answer in answers:
        form = next((f for f in _FORMS if f(answer)), None)  # None: a blank answer, which nothing matches
        if form is not None and form(pred) == form(answer):
            return True
    return False


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions from a to b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(pred: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """DocVQA's ANLS for one question, x100: best over answers of 100 * (1 - NL), 0 where NL >= threshold.

    NL is the Levenshtein distance over the longer length, after lower-casing and collapsing whitespace
    (DocVQA's normalisation; punctuation counts). Two empty strings are identical (NL = 0).
    """
    _need_answers(answers)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"ANLS threshold {threshold} is outside (0, 1]; DocVQA uses 0.5")
    p = " ".join(pred.lower().split())
    best = 0.0
    for answer in answers:
        g = " ".join(answer.lower().split())
        longest = max(len(p), len(g))
        nl = levenshtein(p, g) / longest if longest else 0.0
        best = max(best, 0.0 if nl >= threshold else 1.0 - nl)
    return 100.0 * best


def choice_prompt(question: str, options: Sequence[str]) -> str:
    """MMBench's prompt as LLaVA asks it: the question, ``A. option`` lines, then the instruction line."""
    _check_options(options)
    lines = [question.strip()] + [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join([*lines, CHOICE_INSTRUCTION])


def yesno_prompt(question: str) -> str:
    return f"{question.strip()}\n{YESNO_INSTRUCTION}"


def open_prompt(question: str) -> str:
    return f"{question.strip()}\n{OPEN_INSTRUCTION}"


def circular_variants(options: Sequence[str], answer: int) -> list[tuple[list[str], int]]:
    """CircularEval's n questions for n options: options rotated left by k, with the answer's new index."""
    _check_options(options)
    n = len(options)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < n:
        raise ValueError(
            f"answer index {answer!r} is not in 0..{n - 1} for {n} options; pass the index of the right option"
        )
    return [(list(options[k:]) + list(options[:k]), (answer - k) % n) for k in range(n)]


def circular_correct(rotations_correct: Sequence[bool]) -> bool:
    """A CircularEval question counts only if all of its rotations were answered correctly."""
    if not rotations_correct:
        raise ValueError("circular_correct got no rotations; pass one bool per variant from circular_variants")
    return all(rotations_correct)


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The option a reply picks: a leading letter ("B", "(B)", "B. cat", "Answer: B", "The answer is: B", "B" and
    a reason on the next line) or an option's text. A letter followed by a space is a word, not a pick ("A blue
    square", "I think C"). (A public helper: the harness's own protocols pick by likelihood.)"""
    _check_options(options)
    letters = LETTERS[: len(options)]
    reply = text.strip()
    pick = rf"^(the answer is:?|answer:?)?\s*(?:\(([{letters}])\)|([{letters}])(?=[.:)\n]|$))"
    match = re.match(pick, reply, re.IGNORECASE)
    letter = match and (match.group(2) or match.group(3))
    # a lower-case letter picks only where nothing else can be meant: a short reply, or after "the answer is"
    if letter and (letter.isupper() or len(reply) <= 3 or match.group(1)):
        return letters.index(letter.upper())
    wanted = normalize_answer(reply)
    hits = [i for i, option in enumerate(options) if normalize_answer(option) == wanted]
    return hits[0] if len(hits) == 1 else None


def parse_yesno(text: str) -> str | None:
    """``"yes"``/``"no"`` from a reply: its first word if that is yes or no, else the only one of them in it."""
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in ("yes", "no"):
        return words[0]
    found = {w for w in words if w in ("yes", "no")}
    return found.pop() if len(found) == 1 else None


def mme_scores(items: Iterable[tuple[str, str, str | None]]) -> dict[str, float]:
    """MME's acc (share of questions right) and acc+ (share of pairs with every question right), 0-100.

    ``items`` are ``(pair id, answer "yes"/"no", reply)``; a reply is parsed with ``parse_yesno``, and one
    that says neither yes nor no is wrong.
    """
    per_pair: dict[str, list[bool]] = {}
    for pair, answer, reply in items:
        if answer not in ("yes", "no"):
            raise ValueError(f"MME answer {answer!r} for pair {pair!r} is not 'yes' or 'no'; fix the test record")
        per_pair.setdefault(pair, []).append(parse_yesno(reply or "") == answer)
    if not per_pair:
        raise ValueError("mme_scores got no items; pass (pair id, answer, reply) for each yes/no question")
    questions = [ok for oks in per_pair.values() for ok in oks]
    return {"acc": percent(questions), "acc_plus": percent([all(oks) for oks in per_pair.values()])}


def percent(values: Iterable[bool | float]) -> float:
    """Mean of bools (as 0/100) or of 0-100 scores, on the 0-100 scale."""
    values = [100.0 * v if isinstance(v, bool) else float(v) for v in values]
    if not values:
        raise ValueError("percent got no values; score at least one question")
    return sum(values) / len(values)


def _need_answers(answers: Sequence[str]) -> None:
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}; wrap one answer as [answer]")


def _check_options(options: Sequence[str]) -> None:
    if isinstance(options, str) or not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"options {options!r} must be a list of 2 to {len(LETTERS)} strings")
