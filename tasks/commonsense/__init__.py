"""Commonsense reasoning: eight benchmarks in LLM-Adapters format (ARC-e/c, OBQA, SIQA, WinoGrande, PIQA, BoolQ, HellaSwag)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.atomic import atomic_path
from harness.registry import TASKS
from harness.task import Example, Task
from tasks.commonsense import data
from tasks.commonsense.prompts import extract_label, get_template
from tasks.commonsense.scoring import choice_scores, generate

_FORMAT = re.compile(r"Answer format:\s*([\w/]+)\s*$")


@TASKS.register("commonsense")
class CommonsenseTask(Task):
    version = "1"
    protocols = ("choice", "generate", "lm-eval")

    def __init__(self, options) -> None:
        super().__init__(options)
        self.template = get_template(options.template)
        self.data_dir = data.resolve_data_dir(options.data_dir)
        self._provenance: list[dict[str, Any]] = []
        # read and check every test file now: bad data fails before any training, not after
        self._tests = {b: data.read_split(self.data_dir, b, "test") for b in data.benchmark_names(self.data_dir)}

    def _example(self, record: dict[str, Any]) -> Example:
        return Example(
            self.template.train_prompt(record["instruction"], record.get("input", "")),
            record["output"],
            record.get("benchmark", ""),
            {"answer": record["answer"]},
        )

    def splits(self) -> tuple[list[Example], list[Example]]:
        records, self._provenance = data.training_mix(self.data_dir, self.options.train_cap, self.options.seed)
        if len(records) <= self.options.val_size:
            raise ValueError(
                f"only {len(records)} training examples, not enough to hold out val_size="
                f"{self.options.val_size}; lower it or add training data"
            )
        val, train = records[: self.options.val_size], records[self.options.val_size :]
        return [self._example(r) for r in train], [self._example(r) for r in val]

    def test_records(self, benchmark: str) -> data.DataFile | None:
        return self._tests[benchmark]

    def evaluate(
        self, model, tokenizer, protocol: str, batch_size: int, predictions_path: Path | None, progress: bool = True
    ) -> dict[str, dict[str, Any]]:
        if protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(self.protocols)}")
        results: dict[str, dict[str, Any]] = {}
        lines: list[str] = []
        for benchmark in data.benchmark_names(self.data_dir):
            test = self.test_records(benchmark)
            if test is None:
                results[benchmark] = {"status": "absent"}
                continue
            records = self.sample(test.records)
            labels = data.labels_for(benchmark, test.records)
            prompts = [self.template.eval_prompt(r["instruction"], r.get("input", "")) for r in records]
            if protocol == "choice":
                candidates = [candidates_for(r, labels) for r in records]
                scores = choice_scores(
                    model, tokenizer, prompts, candidates, batch_size, progress=benchmark if progress else None
                )
                preds = [c[max(range(len(s)), key=s.__getitem__)] for c, s in zip(candidates, scores, strict=True)]
                extra = [{"scores": dict(zip(c, s, strict=True))} for c, s in zip(candidates, scores, strict=True)]
            elif protocol == "generate":
                outputs = generate(model, tokenizer, prompts, batch_size, progress=benchmark if progress else None)
                preds = [extract_label(o, labels) for o in outputs]
                extra = [{"output": o} for o in outputs]
            else:
                from tasks.commonsense.lm_eval_protocol import lm_eval_predictions

                preds, extra = lm_eval_predictions(
                    model,
                    tokenizer,
                    benchmark,
                    records,
                    prompts,
                    [candidates_for(r, labels) for r in records],
                    batch_size,
                )
            correct = [p == r["answer"] for p, r in zip(preds, records, strict=True)]
            results[benchmark] = {
                "metric": "acc",
                "value": 100.0 * sum(correct) / len(correct),
                "n": len(correct),
                "protocol": protocol,
                "higher_is_better": True,
                "file": f"{benchmark}/test.json",
                "sha256": test.sha256,
            }
            lines += [
                json.dumps({"benchmark": benchmark, "index": i, "answer": r["answer"], "pred": p, "correct": c, **e})
                for i, (r, p, c, e) in enumerate(zip(records, preds, correct, extra, strict=True))
            ]
        if predictions_path is not None:
            with atomic_path(predictions_path) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        return results

    def sample(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The first ``eval_limit`` test examples (the same for every method and seed)."""
        limit = self.options.eval_limit
        return records[:limit] if limit else records

    def describe(self) -> dict[str, Any]:
        present = [b for b in data.benchmark_names(self.data_dir) if self.test_records(b) is not None]
        return {
            "data_dir": self.data_dir.name,
            "train_files": self._provenance,
            "template": self.template.name,
            "benchmarks": present,
            "absent": [b for b in data.BENCHMARKS if b not in present],
        }


def candidates_for(record: dict[str, Any], labels: list[str]) -> list[str]:
    """The question's own options from its ``Answer format:`` line, else the benchmark's label words."""
    match = _FORMAT.search(record["instruction"])
    options = match.group(1).split("/") if match else []
    return options if record["answer"] in options else labels


__all__ = ["CommonsenseTask"]
