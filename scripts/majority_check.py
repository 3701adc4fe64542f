"""How optimistic the leaderboard's ``majority`` row is on a commonsense run.

``majority`` answers the most common correct option of the scored test examples, a label picked with the
test answers in hand. A baseline that could be had without them takes its label from the train split. For
each benchmark a record scored, the paper's eight and any further one of yours (a folder in the same format),
this prints the test-label majority's accuracy and, where the data has a ``train.json``, the accuracy of the
train split's most common answer word on the same examples, answered at the option the scored questions give
that word (ties: the lowest option, as for ``majority``). Each file's options are read as the harness reads
them, from its question's ``Answer format:`` line, else from the answers its own file gives (the paper's label
words for the paper's eight): train and test need not agree on having that line. A benchmark of yours is
scored at the option its ``test.json`` gives the word: without that file here (or with another one than the
run scored), or where its scored questions do not all put the word at one option, its train label is not
compared, and the row says why.

python scripts/majority_check.py results/runs/commonsense-lora-embedded-s0-f2fd8cbd/record.json \
    --data-dir ../shared/data/commonsense
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from harness.records import read_record
from harness.stats import MAJORITY, baseline_scores, majority_index
from tasks.commonsense import candidates_for
from tasks.commonsense.data import BENCHMARKS, labels_for, read_split, resolve_data_dir

NO_TRAIN = "no train split"


def majority_check(record: dict[str, Any], data: Path) -> list[dict[str, Any]]:
    """Per benchmark with answers: n, the test-label majority's accuracy, the train label's (None without a
    train split, ``why`` then says why), both in percent, and the two labels."""
    rows = []
    for bench, entry in record["eval"].items():
        answers = entry.get("answers") if isinstance(entry, dict) else None
        if not answers:
            continue
        index = majority_index(answers)
        row = {
            "benchmark": bench,
            "n": len(answers),
            "test_label": None,
            "test_majority": float(baseline_scores(answers, None)[MAJORITY].mean()),
            "train_label": None,
            "train_majority": None,
            "why": NO_TRAIN,
        }
        rows.append(row)
        if bench in BENCHMARKS:
            labels, scored = BENCHMARKS[bench], None
        else:  # a benchmark of yours: its options are read from its test file, as the harness reads them
            test = read_split(data, bench, "test")
            if test is None or (entry.get("sha256") and test.sha256 != entry["sha256"]):
                row["test_label"] = f"option {int(index) + 1}"
                row["why"] = (
                    f"no {bench}/test.json here to read its options from"
                    if test is None
                    else f"{bench}/test.json here is not the one the run scored: another sha256"
                )
                continue
            labels = labels_for(bench, test.records)
            scored = [_options(r, labels, f"{test.path}: example {i}") for i, r in enumerate(test.records)]
            scored = scored[: len(answers)]  # the run scored the first n (eval_limit)
        row["test_label"] = _named(index, labels, scored)
        train = data / bench / "train.json"
        if not train.is_file():
            continue
        try:
            given = json.loads(train.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{train} cannot be read ({exc}); fix or remove it") from None
        if not isinstance(given, list):
            raise ValueError(f"{train} is not a JSON list of examples; fix or remove it")
        # a train example without a format line takes its options from its own file's answers, as a test one does
        own = labels_for(bench, [r for r in given if isinstance(r, dict) and isinstance(r.get("answer"), str)])
        words = Counter(w for r in given if (w := _answer_word(r, own)) is not None)
        if not words:
            continue
        top = max(words.values())
        tied = [w for w in words if words[w] == top]
        at = {w: _index_of(w, labels, scored) for w in tied}
        unplaced = [w for w in tied if isinstance(at[w], str)]
        if unplaced:  # the train label is a word the scored questions do not all give at one option: not guessed
            row["why"] = "; ".join(str(at[w]) for w in unplaced)
            continue
        word = min(tied, key=lambda w: at[w])  # ties: the lowest option, as for majority
        row["train_label"] = word
        row["train_majority"] = 100.0 * answers.count(str(at[word])) / len(answers)
        row["why"] = None
    return rows


def _options(record: dict[str, Any], labels: list[str], where: str) -> list[str]:
    """A test question's options, as the harness scores it (``candidates_for``); a bad format line names it."""
    try:
        return candidates_for(record, labels)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _answer_word(record: Any, labels: list[str]) -> str | None:
    """A train example's answer word; None for one that names none of its options (read as the harness reads
    them: its format line, else ``labels``) or is no example: it is left out, as before, not guessed."""
    if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
        return None
    try:
        options = candidates_for(record, labels)
    except ValueError:  # an empty or repeated option in its format line
        return None
    answer = record.get("answer")
    return answer if isinstance(answer, str) and answer in options else None


def _index_of(word: str, labels: list[str], scored: list[list[str]] | None) -> int | str:
    """The option index the scored test questions give ``word`` (the paper's label order for the paper's eight),
    or why there is none: a word not among their options, or put at different ones (his/him, cat/car, ...)."""
    if scored is None:
        if word not in labels:
            return f"train label {word!r} is none of the label words {'/'.join(labels)}"
        return labels.index(word)
    at = {options.index(word) if word in options else None for options in scored}
    if len(at) == 1 and None not in at:
        return at.pop()
    if at == {None}:
        return f"train label {word!r} is none of the scored questions' options"
    spots = ", ".join(f"option {i + 1}" for i in sorted(i for i in at if i is not None))
    missing = " and missing from some" if None in at else ""
    return f"train label {word!r} is not at one option of the scored questions ({spots}{missing})"


def _named(index: str, labels: list[str], scored: list[list[str]] | None) -> str:
    """The option ``index`` as a word: the paper's label word; for a benchmark of yours, the word its scored
    questions give that option where they all agree (yes/no), else its number (his/him, cat/car, ...)."""
    if scored is None:
        return labels[int(index)]
    words = {options[int(index)] for options in scored if int(index) < len(options)}
    return words.pop() if len(words) == 1 else f"option {int(index) + 1}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", type=Path, help="a commonsense run's record.json (results/runs/*/record.json)")
    parser.add_argument("--data-dir", help="the benchmark folders with their train.json (default: $HARNESS_DATA_DIR)")
    args = parser.parse_args(argv)
    import os

    if not (args.data_dir or os.environ.get("HARNESS_DATA_DIR")):  # the hub's copy has no train splits to read
        parser.error(
            "give --data-dir (or HARNESS_DATA_DIR): the folder whose <benchmark>/train.json hold the train labels"
        )
    if not args.record.is_file():
        parser.error(f"{args.record} is not a file; pass a run's record.json, e.g. results/runs/<run id>/record.json")
    try:
        record = read_record(args.record)
    except ValueError as exc:
        parser.error(f"{exc}; pass a run's record.json")
    if (record["run"].get("config") or {}).get("task") != "commonsense":
        parser.error(f"{args.record} is not a commonsense run's record")
    try:
        data = resolve_data_dir(args.data_dir)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        rows = majority_check(record, data)
    except ValueError as exc:
        parser.error(str(exc))
    if rows and all(r["why"] == NO_TRAIN for r in rows):
        parser.error(
            f"{data} holds no <benchmark>/train.json for the benchmarks the run scored: nothing to compare with"
        )
    if rows and all(r["train_label"] is None for r in rows):
        why = "; ".join(f"{r['benchmark']}: {r['why']}" for r in rows)
        parser.error(f"{data} gives nothing to compare with ({why})")
    if not rows:
        parser.error(f"{args.record} keeps no per-example answers (records written before they were kept)")
    print(f"{record['run']['id']}: majority label from the test answers vs from the train split ({data.name}/)")
    print(f"{'benchmark':<15}{'n':>6}  {'test label':<12}{'acc %':>7}  {'train label':<12}{'acc %':>7}")
    for r in rows:
        train = f"({r['why']})" if r["train_label"] is None else f"{r['train_label']:<12}{r['train_majority']:>7.1f}"
        print(f"{r['benchmark']:<15}{r['n']:>6}  {r['test_label']:<12}{r['test_majority']:>7.1f}  {train}")


if __name__ == "__main__":
    main()
