"""How optimistic the leaderboard's ``majority`` row is on a commonsense run.

``majority`` answers the most common correct option of the scored test examples, a label picked with the
test answers in hand. A baseline that could be had without them takes its label from the train split. For
each benchmark a record scored, this prints the test-label majority's accuracy and, where the data has a
``train.json``, the accuracy of the train split's most common label on the same examples (ties: the lowest
option, as for ``majority``).

python scripts/majority_check.py results/runs/commonsense-lora-embedded-s0-f2fd8cbd/record.json \
    --data-dir ../shared/data/commonsense
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.records import read_record
from harness.stats import MAJORITY, baseline_scores, majority_index
from tasks.commonsense.data import BENCHMARKS, resolve_data_dir


def majority_check(record: dict[str, Any], data: Path) -> list[dict[str, Any]]:
    """Per benchmark with answers: n, the test-label majority's accuracy, the train label's (None without a
    train split), both in percent, and the two labels."""
    rows = []
    for bench, entry in record["eval"].items():
        answers = entry.get("answers") if isinstance(entry, dict) else None
        if not answers or bench not in BENCHMARKS:
            continue
        labels = BENCHMARKS[bench]
        test_acc = float(baseline_scores(answers, None)[MAJORITY].mean())
        test_label = labels[int(majority_index(answers))]
        train_label = train_acc = None
        train = data / bench / "train.json"
        if train.is_file():
            try:
                given = json.loads(train.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise ValueError(f"{train} cannot be read ({exc}); fix or remove it") from None
            if not isinstance(given, list):
                raise ValueError(f"{train} is not a JSON list of examples; fix or remove it")
            train_answers = "".join(
                str(labels.index(r["answer"])) for r in given if isinstance(r, dict) and r.get("answer") in labels
            )
            if train_answers:
                index = majority_index(train_answers)  # the same rule as majority's, on the train split
                train_label = labels[int(index)]
                train_acc = 100.0 * answers.count(index) / len(answers)
        rows.append(
            {
                "benchmark": bench,
                "n": len(answers),
                "test_label": test_label,
                "test_majority": test_acc,
                "train_label": train_label,
                "train_majority": train_acc,
            }
        )
    return rows


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
    if rows and all(r["train_label"] is None for r in rows):
        parser.error(
            f"{data} holds no <benchmark>/train.json for the benchmarks the run scored: nothing to compare with"
        )
    if not rows:
        parser.error(f"{args.record} keeps no per-example answers (records written before they were kept)")
    print(f"{record['run']['id']}: majority label from the test answers vs from the train split ({data.name}/)")
    print(f"{'benchmark':<15}{'n':>6}  {'test label':<12}{'acc %':>7}  {'train label':<12}{'acc %':>7}")
    for r in rows:
        train = "(no train split)" if r["train_label"] is None else f"{r['train_label']:<12}{r['train_majority']:>7.1f}"
        print(f"{r['benchmark']:<15}{r['n']:>6}  {r['test_label']:<12}{r['test_majority']:>7.1f}  {train}")


if __name__ == "__main__":
    main()
