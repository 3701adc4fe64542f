"""A multimodal domain's result entry: its per-item scores (``by_item``, a yes/no pair or a CircularEval
question one item) and the guessers' baselines (``baseline_scores``), from the scored test questions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tasks.multimodal import data, native


def _entry(
    domain: str, scored: list[native.Scored], protocol: str, data_dir: Path, domain_records: list[data.Record]
) -> dict[str, Any]:
    from tasks.multimodal import scoring

    by_kind = {k: [s for s in scored if s.record.kind == k] for k in data.KINDS}
    metrics: dict[str, float] = {}
    if by_kind["choice"]:
        metrics["mmb_circular"] = scoring.percent([s.score == 100.0 for s in by_kind["choice"]])
        metrics["mmb_first_rotation"] = scoring.percent([s.pred[0] == s.record.answer for s in by_kind["choice"]])
    if by_kind["yesno"]:
        metrics |= {f"mme_{k}": v for k, v in _mme(by_kind["yesno"]).items()}
    if by_kind["open"]:
        metrics["open_" + (by_kind["open"][0].record.metric or "exact")] = scoring.percent(
            [s.score for s in by_kind["open"]]
        )
    records = [s.record for s in scored]
    scores = [round(x, 2) for x in by_item(records, [s.score for s in scored])]
    guessed = baseline_scores(records, domain_records).items()
    baselines = {k: [round(x, 4) for x in by_item(records, v)] for k, v in guessed}
    ids = "\n".join(s.record.id for s in scored)
    test_file = _test_file(data_dir, domain)
    return {
        "metric": "score",
        "value": sum(scores) / len(scores),
        "metrics": metrics,
        "n": len(scores),  # scored items: a question, or a yes/no pair (see by_item)
        "n_by_kind": {k: len(v) for k, v in by_kind.items() if v},  # questions
        "protocol": protocol,
        "higher_is_better": True,
        "file": test_file.name,
        "sha256": _sha256(test_file),
        "scores": scores,  # per item, 0-100: intervals and paired comparisons (harness/leaderboard.py)
        "baselines": baselines,  # per item: the chance and majority rows of the leaderboard
        "examples": hashlib.sha256(ids.encode()).hexdigest()[:16],
    }


def by_item(records: list[data.Record], scores: list[float]) -> list[float]:
    """Per-question 0-100 scores (or chances) to the items a domain's score averages: a choice or open
    question is one item; a yes/no pair is one item, right only if both of its questions are (MME's acc+;
    the product of the chances). As CircularEval for choices, this keeps answer bias from scoring: a model
    that always says "yes" gets every pair's yes right and its no wrong, 0, not the 50 that per-question
    accuracy gives it (a floor every row shared, and noise in every paired comparison). Items keep the
    order of their first question."""
    if len(records) != len(scores):
        raise ValueError(f"{len(records)} records but {len(scores)} scores; pass one score per record")
    items: list[float] = []
    slot: dict[str, int] = {}
    for r, x in zip(records, scores, strict=True):
        if r.kind != "yesno" or r.pair is None:
            items.append(x)
        elif r.pair in slot:
            items[slot[r.pair]] *= x / 100.0
        else:
            slot[r.pair] = len(items)
            items.append(x)
    return items


def baseline_scores(
    records: list[data.Record], answers_from: list[data.Record] | None = None
) -> dict[str, list[float]]:
    """Per question of ``records`` (0-100), the expected score of two guessers that read neither the image nor the
    question, from the test set alone (``answers_from``, the domain's every test question, default ``records``:
    the answers they guess from, where ``records`` is an --eval-limit's few): ``chance`` guesses uniformly (a choice question: one of its n letters, so under
    CircularEval every rotation right, (1/n)^n; yes/no: 1/2; an open question: one of the domain's distinct
    open answers, the mean score of each given as the answer) and ``majority`` always gives the most common
    answer (choice: one fixed letter, which CircularEval's rotations never all accept: 0; yes/no: the more
    common of yes/no; open: the most common open answer). Open answers are scored with the question's own
    metric. Neither is what a model that ignores only the image scores: one that reads the question can narrow
    the answers (a generated math question names n, and its answer is one of n..n+9), so it can beat ``chance``
    without the image. ``by_item`` turns these per-question values into the per-item ones a domain's score
    averages."""
    from tasks.multimodal import scoring

    def open_score(r: data.Record, pred: str) -> float:
        return scoring.anls(pred, r.answers) if r.metric == "anls" else 100.0 * scoring.exact_match(pred, r.answers)

    source = records if answers_from is None else answers_from
    # distinct answers as the metric reads them ("cat", "Cat" and "cat." are one exact-match answer): the first
    # spelling of each stands for it
    opened = [r for r in source if r.kind == "open" and r.answers]
    spelled: dict[str, str] = {}
    counts: dict[str, int] = {}
    for r in opened:
        key = _answer_key(r.answers[0], r.metric)
        spelled.setdefault(key, r.answers[0])
        counts[key] = counts.get(key, 0) + 1
    pool = [spelled[k] for k in sorted(spelled)]
    top_open = spelled[max(sorted(counts), key=counts.__getitem__)] if counts else ""
    yesno = [str(r.answer) for r in source if r.kind == "yesno"]
    top_yesno = max(sorted(set(yesno)), key=yesno.count) if yesno else ""
    chance, majority = [], []
    for r in records:
        if r.kind == "choice":
            n = len(r.options or [])
            chance.append(100.0 * (1.0 / n) ** n)
            majority.append(0.0)
        elif r.kind == "yesno":
            chance.append(50.0)
            majority.append(100.0 * (str(r.answer) == top_yesno))
        else:
            chance.append(sum(open_score(r, p) for p in pool) / len(pool))
            majority.append(open_score(r, top_open))
    return {"chance": chance, "majority": majority}


def _answer_key(answer: str, metric: str | None) -> str:
    """An open answer as its metric compares it: VQA's normal form for exact match, DocVQA's (lower case,
    whitespace collapsed) for ANLS."""
    from tasks.multimodal import scoring

    if metric == "anls":
        return " ".join(answer.lower().split())
    return scoring.answer_form(answer)  # the form exact match compares (an answer "A" is not "", as "The" is not)


def _mme(scored: list[native.Scored]) -> dict[str, float]:
    from tasks.multimodal import scoring

    return scoring.mme_scores((s.record.pair, s.record.answer, s.pred) for s in scored)


def _test_file(data_dir: Path, domain: str) -> Path:
    """The file a domain's test questions come from: ``test.json``, else ``test-<domain>.json``."""
    return data_dir / "test.json" if (data_dir / "test.json").is_file() else data_dir / f"test-{domain}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
