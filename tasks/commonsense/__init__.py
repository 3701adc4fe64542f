"""Commonsense reasoning: eight benchmarks in LLM-Adapters format (ARC-e/c, OBQA, SIQA, WinoGrande, PIQA, BoolQ, HellaSwag)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_path
from harness.registry import TASKS
from harness.task import Example, Loaded, Recipe, Task
from harness.train import TrainConfig
from tasks.commonsense import cloze, data
from tasks.commonsense.presets import PRESETS
from tasks.commonsense.prompts import extract_label, get_template
from tasks.commonsense.scoring import choice_scores, generate
from tasks.lm import CausalLMRecipe, check_random_weights, check_tokenizer_files, load_causal_lm

_FORMAT = re.compile(r"Answer format:\s*([\w/]+)\s*$")


@TASKS.register("commonsense")
class CommonsenseTask(Task):
    version = "2"
    protocols = ("choice", "generate", "lm-eval", "cloze")
    presets = PRESETS
    columns = tuple(data.BENCHMARKS)

    @classmethod
    def check_weights_folder(cls, folder: Path) -> None:
        check_tokenizer_files(folder)  # before the runs: a folder saved without its tokenizer

    # the hooks below describe ``load`` as written here (``tasks.lm.load_causal_lm``): a subclass that loads its
    # model otherwise is not described by them, and says what it reads by overriding them too
    @classmethod
    def check_built_tokenizer(cls, model: str, random_weights: bool, trust_remote_code: bool = False) -> None:
        if random_weights and cls.load is CommonsenseTask.load:
            check_random_weights(model, trust_remote_code)  # the tokenizer loads, its ids fit the embeddings

    @classmethod
    def reads_embedded(cls, model: str, random_weights: bool) -> bool:
        if cls.load is not CommonsenseTask.load:
            return False
        from harness.models import EMBEDDED, random_weights_tokenizer_folder

        if random_weights:  # the embedded tokenizer, unless the folder has its own
            return random_weights_tokenizer_folder(model) is None
        return model == EMBEDDED

    @classmethod
    def check_options(cls, protocol: str, options) -> None:
        if options.train_sources:
            raise ValueError(
                "--train-domains is for tasks with several training domains (multimodal); commonsense trains on "
                "every benchmark that has training data (limit it with --train-cap)"
            )
        if (protocol == "cloze") != (options.template == "cloze"):
            raise ValueError(
                f"protocol {protocol!r} with template {options.template!r} does not fit: the cloze protocol "
                "trains and scores with the cloze template, the others with clean or llm-adapters; "
                "pass --protocol cloze --template cloze, or another protocol with --template clean"
            )
        if protocol == "lm-eval":  # before anything trains (it scored only after training: from a review)
            import importlib.util

            if importlib.util.find_spec("lm_eval") is None:
                raise ValueError("the lm-eval protocol needs lm-eval: pip install 'lora-harness[lm-eval]'")

    @classmethod
    def default_template(cls, protocol: str, preset_template: str) -> str:
        if protocol == "cloze":
            return "cloze"
        return "clean" if preset_template == "cloze" else preset_template

    def __init__(self, options) -> None:
        super().__init__(options)
        self.cloze = options.template == "cloze"
        self.template = get_template("clean" if self.cloze else options.template)
        self.data_dir = data.resolve_data_dir(options.data_dir)
        self._provenance: list[dict[str, Any]] = []
        # read and check every test file now: bad data fails before any training, not after
        self._tests = {b: data.read_split(self.data_dir, b, "test") for b in data.benchmark_names(self.data_dir)}
        # training files too: the mixed file replaces the benchmarks' own train.json, which are then neither read
        # nor checked. Listed once (a sweep builds its tasks before its first run): every run trains on these files,
        # as hashed now (the run's identity, ``training_files``), read again by splits() and refused if changed
        train = data.training_files(self.data_dir)
        # a record's tag names its file: the listing holds the mixed file alone, or folders, so a folder named
        # ``mixed`` is not taken for the mixed file (from a review)
        self._train_sources = [(name, f.path, f.sha256) for name, f in train]
        self._train_files = {data.provenance_name(f.path): f.sha256 for _, f in train}
        if not self.cloze:  # choice, generate, lm-eval train on the output: it must give the answer
            for _, f in train:
                _check_outputs(f.records, f.path)
        if self.cloze:
            for test in self._tests.values():
                if test is not None:
                    _parse_all(test.records, test.path)
        else:  # choice, generate, lm-eval score the label words: each answer must be one of its question's
            for benchmark, test in self._tests.items():
                if test is not None:
                    _check_answers(test.records, test.path, data.labels_for(benchmark, test.records))
        for benchmark, test in self._tests.items():  # every protocol: the records keep one digit a question
            if test is not None:
                _check_option_count(test.records, test.path, data.labels_for(benchmark, test.records))

    def load(
        self,
        model: str,
        device: torch.device,
        *,
        random_weights: bool,
        seed: int,
        trust_remote_code: bool,
        settings: dict[str, Any] | None = None,
    ) -> Loaded:
        return load_causal_lm(
            model, device, random_weights=random_weights, seed=seed, trust_remote_code=trust_remote_code
        )

    def recipe(self, loaded: Loaded, config: TrainConfig) -> Recipe:
        return CausalLMRecipe(loaded.processor, config.cutoff_len, config.train_on_inputs)

    def _example(self, record: dict[str, Any]) -> Example:
        if self.cloze:
            item = cloze.parse(record)
            return Example(item.contexts[item.answer], item.continuations[item.answer], record.get("benchmark", ""), {})
        return Example(
            self.template.train_prompt(record["instruction"], record.get("input", "")),
            record["output"],
            record.get("benchmark", ""),
            {"answer": record["answer"]},
        )

    def splits(self) -> tuple[list[Example], list[Example]]:
        tests = frozenset(data.question_key(r) for t in self._tests.values() if t is not None for r in t.records)
        files = [(name, data.read_again(path, sha256)) for name, path, sha256 in self._train_sources]
        records, self._provenance = data.training_mix(
            self.data_dir, self.options.train_cap, self.options.seed, tests, files=files
        )
        paths = {name: path for name, path, _ in self._train_sources}  # the file each record's tag names
        if len(records) <= self.options.val_size:
            raise ValueError(
                f"only {len(records)} training examples, not enough to hold out val_size="
                f"{self.options.val_size}; lower it (--val-size) or add training data"
            )
        if self.cloze:  # the mix is shuffled: an example is named by its file and question, not an index
            _parse_all(
                records,
                lambda i, r: f"{paths[r['benchmark']]}: the example {_named(r)}",
                training=True,
            )
        val, train = records[: self.options.val_size], records[self.options.val_size :]
        # the training files repeat questions (ARC-Challenge one, OBQA five) and the mix keeps them: a repeat of a
        # validation question is left out of training, or the validation loss would score what training showed; a
        # split that drew no repeat onto both sides is the one it was before (since 2026-12-06)
        held = {data.question_key(r) for r in val}
        kept = [r for r in train if data.question_key(r) not in held]
        left = [r for r in train if data.question_key(r) in held]
        for entry in self._provenance:  # counted by file (its ``used`` counts the mix, validation included)
            n = sum(data.provenance_name(paths[r["benchmark"]]) == entry["file"] for r in left)
            if n:
                entry["validation_repeats_left_out"] = n
        if not kept:
            raise ValueError(
                f"every training example repeats one of the val_size={self.options.val_size} validation questions; "
                "lower it (--val-size) or add training data with other questions"
            )
        return [self._example(r) for r in kept], [self._example(r) for r in val]

    def test_records(self, benchmark: str) -> data.DataFile | None:
        return self._tests[benchmark]

    def data_fingerprint(self) -> dict[str, str]:
        return {b: test.sha256 for b, test in self._tests.items() if test is not None}

    def evaluate(
        self, loaded: Loaded, protocol: str, batch_size: int, predictions_path: Path | None, progress: bool = True
    ) -> dict[str, dict[str, Any]]:
        model, tokenizer = loaded.model, loaded.processor
        if protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(self.protocols)}")
        self.check_options(protocol, self.options)
        results: dict[str, dict[str, Any]] = {}
        lines: list[str] = []
        for benchmark, test in self._tests.items():  # those read when the task was made, not a folder added since
            if test is None:
                results[benchmark] = {"status": "absent"}
                continue
            records = self.sample(test.records)
            bar = benchmark if progress else None
            if protocol == "cloze":
                items = [cloze.parse(r) for r in records]
                acc, norm, scores = cloze.cloze_predictions(model, tokenizer, items, batch_size, bar)
                answers, n_options = [it.answer for it in items], [len(it.continuations) for it in items]
                preds: dict[str, list[int | None]] = {"acc": list(acc), "acc_norm": list(norm)}
                metric = "acc_norm" if benchmark in cloze.NORM_HEADLINE else "acc"
                extra = [{"scores": [round(x, 4) for x in sc]} for sc in scores]
            else:
                answers, n_options, preds, extra = self._label_protocol(
                    protocol, benchmark, test.records, records, model, tokenizer, batch_size, bar
                )
                metric = "acc"
            metrics = {
                m: 100.0 * sum(p == a for p, a in zip(ps, answers, strict=True)) / len(answers)
                for m, ps in preds.items()
            }
            results[benchmark] = {
                "metric": metric,
                "value": metrics[metric],
                "metrics": metrics,
                "n": len(answers),
                "protocol": protocol,
                "higher_is_better": True,
                "file": f"{benchmark}/test.json",
                "sha256": test.sha256,
                # one character per scored example, for intervals and baselines (harness/leaderboard.py)
                "answers": _digits(answers),
                "preds": {m: _digits(ps) for m, ps in preds.items()},
                "n_options": _digits(n_options),
            }
            lines += [
                json.dumps(
                    {
                        "benchmark": benchmark,
                        "index": i,
                        "answer": a,  # option indices, as in the record's strings
                        "pred": preds[metric][i],
                        **{f"pred_{m}": ps[i] for m, ps in preds.items()},
                        "correct": preds[metric][i] == a,
                        **e,
                    }
                )
                for i, (a, e) in enumerate(zip(answers, extra, strict=True))
            ]
        if predictions_path is not None:
            with atomic_path(predictions_path) as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        return results

    def _label_protocol(self, protocol, benchmark, all_records, records, model, tokenizer, batch_size, bar):
        """choice / generate / lm-eval: the label words (``answer1``...) are what the model answers."""
        labels = data.labels_for(benchmark, all_records)
        prompts = [self.template.eval_prompt(r["instruction"], r.get("input", "")) for r in records]
        candidates = [candidates_for(r, labels) for r in records]
        if protocol == "choice":
            scores = choice_scores(model, tokenizer, prompts, candidates, batch_size, progress=bar)
            words = [c[max(range(len(s)), key=s.__getitem__)] for c, s in zip(candidates, scores, strict=True)]
            extra = [{"scores": dict(zip(c, s, strict=True))} for c, s in zip(candidates, scores, strict=True)]
        elif protocol == "generate":
            outputs = generate(model, tokenizer, prompts, batch_size, progress=bar)
            # a question whose options are its benchmark's paper label words (all of the paper's data): LLM-Adapters'
            # extract_answer, as published, which looks for answer1..answer5 on every answer-style benchmark (SIQA
            # and OBQA too): a reply naming an option the question lacks first is wrong, not read past
            paper = data.BENCHMARKS.get(benchmark, [])
            upstream = [f"answer{i}" for i in range(1, 6)] if all(w.startswith("answer") for w in paper) else paper
            # any other question (a benchmark of yours, or your own options in a folder named like one of the
            # paper's, e.g. yes/no in boolq/: from a review, read for true/false they all scored wrong): its own
            # options, each read as a whole word (a label "c" is not found in "correct", nor "answerA" taken for
            # answer1..5; an option no answer names is found)
            words = [
                extract_label(o, upstream) if set(c) <= set(paper) else extract_label(o, c, whole_words=True)
                for o, c in zip(outputs, candidates, strict=True)
            ]
            extra = [{"output": o} for o in outputs]
        else:
            from tasks.commonsense.lm_eval_protocol import lm_eval_predictions

            words, extra = lm_eval_predictions(
                model, tokenizer, benchmark, records, prompts, candidates, batch_size, progress=bar is not None
            )
        answers = [c.index(r["answer"]) for c, r in zip(candidates, records, strict=True)]
        preds = [c.index(w) if w in c else None for c, w in zip(candidates, words, strict=True)]
        return answers, [len(c) for c in candidates], {"acc": preds}, extra

    def sample(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The first ``eval_limit`` test examples (the same for every method and seed)."""
        limit = self.options.eval_limit
        return records[:limit] if limit else records

    def training_files(self, described: dict[str, Any] | None = None) -> dict[str, str]:
        files = (
            self._train_files
            if described is None
            else {f["file"]: f["sha256"] for f in described.get("train_files", []) if f.get("sha256")}
        )  # the mixed file is named after its data folder: any copy of the same data is the same
        return {(data.MIXED_TRAIN if n.endswith("/" + data.MIXED_TRAIN) else n): sha for n, sha in files.items()}

    def _take_provenance(self) -> list[dict[str, Any]]:
        """The training files of the last ``splits()``, reported once: a zero-shot run after a trained one (the
        task serves every run of a sweep) read none."""
        provenance, self._provenance = self._provenance, []
        return provenance

    def describe(self) -> dict[str, Any]:
        present = [b for b, test in self._tests.items() if test is not None]  # as evaluate scores them
        return {
            "data_dir": self.data_dir.name,
            "train_files": self._take_provenance(),
            # under cloze its contexts (tasks/commonsense/cloze.py) train and score: no prompt template is used
            "template": "cloze" if self.cloze else self.template.name,
            "benchmarks": present,
            "absent": [b for b in data.BENCHMARKS if b not in present],
        }


MAX_OPTIONS = 9  # a record keeps each question's option count, and its answer's index, as one digit


def _digits(values: list[int | None]) -> str:
    """Option indices or counts as one character each ("-" = no answer): a compact per-example column for records
    (``_check_option_count`` refused, before training, a question this cannot hold)."""
    if any(v is not None and not 0 <= v <= 9 for v in values):
        raise ValueError(f"more than {MAX_OPTIONS} options per question: the record's digit strings cannot hold them")
    return "".join("-" if v is None else str(v) for v in values)


def _check_option_count(records: list[dict[str, Any]], path: Path, labels: list[str]) -> None:
    """Fail on the first question with more than ``MAX_OPTIONS`` options, before any training (scoring would)."""
    for i, record in enumerate(records):
        if (n := len(candidates_for(record, labels))) > MAX_OPTIONS:
            if not _FORMAT.search(record["instruction"]):  # its options are the file's answers, not its own
                raise ValueError(
                    f"{path}: example {i} has no 'Answer format:' line, so the file's {n} distinct answers are its "
                    f"options, and a question may have at most {MAX_OPTIONS} (the records keep each question's option "
                    "count as one digit): end each instruction with an 'Answer format: a/b/...' line naming its options"
                )
            raise ValueError(
                f"{path}: example {i} has {n} options; a question may have at most {MAX_OPTIONS} (the records keep "
                "each question's option count as one digit): split its options over several questions or drop some"
            )


def _parse_all(
    records: list[dict[str, Any]], where: Path | Callable[[int, dict[str, Any]], str], training: bool = False
) -> None:
    """Fail on the first record the cloze protocol cannot split, named ``{where}: example {i}`` (a file's
    records in order) or by ``where(i, record)``; ``training``: training examples (``cloze.parse``)."""
    for i, record in enumerate(records):
        try:
            cloze.parse(record, training=training)
        except ValueError as exc:
            place = where(i, record) if callable(where) else f"{where}: example {i}"
            # a format no protocol scores: its message says what to do (a training example's answer outside its
            # format's words, that choice trains, suggests choice itself: cloze._answer_not_a_word)
            if isinstance(exc, cloze.FormatError):
                raise ValueError(f"{place}: {exc}") from None
            raise ValueError(f"{place} does not fit the cloze protocol ({exc}); use --protocol choice") from None


def _named(record: dict[str, Any]) -> str:
    """A training example as a message names it (the mix is shuffled, so not by index): its instruction's start,
    and its input's where it has one (one instruction, the passage in input, names every example alike)."""
    passage = (record.get("input") or "").strip()
    return repr(record["instruction"][:60]) + (f" (input {passage[:60]!r})" if passage else "")


def _check_answers(records: list[dict[str, Any]], path: Path, labels: list[str]) -> None:
    """Fail on the first record whose answer is not among the options it is scored on (``candidates_for``), or
    that has one option to choose from: a certain hit. A further benchmark's records without an ``Answer format:``
    line take the answers its test file gives as their options (``data.labels_for``): one answer throughout, and
    every question would have that one option."""
    for i, record in enumerate(records):
        try:
            options = candidates_for(record, labels)
        except ValueError as exc:
            raise ValueError(f"{path}: example {i}: {exc}") from None  # its message shows the format itself
        if len(set(options)) < 2:
            if _FORMAT.search(record["instruction"]):
                raise ValueError(
                    f"{path}: example {i}: its 'Answer format:' line names one option ({'/'.join(options)}), which "
                    "would always be right; name every option (Answer format: a/b/...)"
                )
            raise ValueError(
                f"{path}: every answer is {options[0]!r} and example {i} has no 'Answer format:' line, so "
                f"{options[0]!r} would be its only option and always right; end each instruction with a line "
                "'Answer format: a/b/...' naming the options"
            )
        if record["answer"] not in options:
            raise ValueError(
                f"{path}: example {i}: answer {record['answer']!r} is not one of its options "
                f"({'/'.join(options)}); fix the answer, or name the options in an 'Answer format:' line"
            )


def _check_outputs(records: list[dict[str, Any]], path: Path) -> None:
    """Fail on the first training record whose output (the target trained on) does not end with its answer, as
    "the correct answer is <answer>" does: one that contradicts its answer would train it silently."""
    for i, record in enumerate(records):
        answer, output = record["answer"], record["output"].strip()
        if not data.ends_with_answer(record):
            raise ValueError(
                f"{path}: example {i}: its output {output[-60:]!r} does not end with its answer {answer!r}, and the "
                f"output is what trains; fix the output to 'the correct answer is {answer}' (or the answer)"
            )


def candidates_for(record: dict[str, Any], labels: list[str]) -> list[str]:
    """The question's own options from its ``Answer format:`` line, else the benchmark's label words (an answer
    not among its own options is refused by ``_check_answers``, not scored over the benchmark's wider list)."""
    match = _FORMAT.search(record["instruction"])
    return cloze.format_words(match.group(1)) if match else labels


__all__ = ["CommonsenseTask"]
