"""Leaderboards as a pure function of run records (same records, same bytes: no clock, fixed bootstrap seed).

``write_leaderboards(runs_dir, out_dir)`` writes, per task, ``<task>.csv``, ``<task>_comparisons.csv``,
``<task>_seeds.csv`` and ``<task>.png``, and for all tasks ``overhead.csv``, ``leaderboard.md`` and ``leaderboard.html``.

Rows and sections. Runs that differ only in their seed form one row (seeds pooled). Rows with the same
task, preset, model, protocol, task options and training settings, run on the same data (no test or training
file with another sha256), form a *section*: the rows that may be compared. The zero-shot ``base`` row joins
every section of its task, preset, model, protocol and task options whose data its own does not contradict.
Each section also gets two baseline rows computed from the records' ``answers``/``n_options``: ``majority``
(always the most common correct option index among the scored examples; ties: the lowest index) and
``chance`` (uniform over the question's options: 1/n_options per example); a task whose scoring is not one
pick among options (CircularEval, open answers) gives both per example in the entry's ``baselines``.

Statistics (see :mod:`harness.stats`). A cell is an accuracy in percent with its 95% bootstrap interval
over test examples, pooled over seeds (per-example correctness averaged over the seeds' runs, then
examples resampled); a column whose entries declare another ``scale`` (the diffusion judge's 1-10) is in its
own units, and its interval gets no percent end bound (``harness.stats.estimate``). Avg is the mean over the
benchmarks with a score (``Avg_n`` = "7/8": 7 of the 8 benchmarks of the section; absent benchmarks never
count), its interval resamples each benchmark independently. ``vs_lora`` is the paired difference to the
section's ``lora`` row on the same examples (two trained rows with different seeds: over the seeds both ran,
so that one seed is not set against three; none where they share no seed, with a warning); it is significant
(``*``) when its interval excludes 0 and the paired sign-flip test (McNemar's exact test for right/wrong scores;
``harness.stats.sign_flip_p``) gives p < 0.05. A cell is flagged ``constant`` when, in any of the row's runs, at
least 90% of the answered examples (``-``, no answer, excluded) got the same predicted option index (read from
the entries' ``preds``: a column scored by ``scores`` alone, multimodal's and diffusion's, is never flagged).
Records without ``answers``/``preds`` (older ones) still tabulate, without intervals.

``<task>.csv`` columns, one row per leaderboard row: ``section`` (8-hex id of the section), ``preset``,
``protocol``, ``model``, ``method``, ``kind`` (trained / zero-shot / baseline); per benchmark ``B``,
``B_lo``, ``B_hi`` (score and interval; ``absent`` when the benchmark has no data, empty when unknown);
``Avg``, ``Avg_lo``, ``Avg_hi``, ``Avg_n``; per benchmark ``B_vs_lora``, ``B_vs_lora_lo``,
``B_vs_lora_hi`` and the same for ``Avg_vs_lora``; ``constant`` (benchmarks flagged, space separated);
``not_above_baselines`` (the benchmarks, and Avg, that a baseline scores and on which the row's paired comparison
against majority or chance is not a ``*`` above 0, or that were not compared with both, a benchmark its runs failed
included (not one they never had: ``absent``, or in none of their results): where its score has not been shown to
beat both; ``none`` where it has everywhere; empty for the baseline rows, for every row where the section has
none, and for a row with no score on any column a baseline scores: compared nowhere, it beat nothing; ``–`` in the
Markdown);
``Param %`` (empty for majority/chance); ``template``, ``train_on_inputs`` (``not read`` where the task's training never
reads it), ``steps`` (the row's own runs';
0 for the zero-shot row, empty for majority/chance), ``eval_n``, ``settings`` (what sets the section apart
from others with the same title), ``seeds``, ``n_runs``, ``hardware`` (the devices of the row's own runs; a
baseline row's: its section's). A row counts one run per seed, the newest (a warning names the others).
Scores are percent, rounded to 2 decimals.

``<task>_seeds.csv`` (long format): ``section, preset, protocol, method, seed, run, benchmark, value``, one
line per run of a trained or zero-shot row and benchmark with a score, plus ``Avg`` (over the benchmarks Avg
covers, when the run has them all). The intervals above resample test examples, not training seeds; the
Markdown adds, for every row with two or more seeds, the range (min-max) of its per-seed scores, so a
difference between methods can be read against one method's spread over seeds.

``<task>_comparisons.csv`` (long format): ``task, preset, protocol, method, reference, benchmark, diff,
ci_low, ci_high, p, p_holm, significant, seed_ranges_apart, model, section`` for the references ``lora``,
``base``, ``majority`` and ``chance`` (``p``: the two-sided p-value of the paired sign-flip test, against ``chance`` of the test of guessing,
``harness.stats.chance_p``; ``p_holm``: Holm's adjusted p within the section's comparisons against that reference;
``significant``: the interval excludes 0 and p < 0.05, uncorrected; ``seed_ranges_apart``: every seed's score of
one row beyond every seed's of the other, on the runs compared, empty where neither row has two scores:
:func:`seed_ranges_apart`);
``benchmark`` is ``Avg`` for the average over the benchmarks both rows have; two references compared
both ways (``lora``/``base``) get exactly opposite differences and intervals (one drawn, one its negation).
``reference`` is the reference row's label: several ``lora`` rows in a section, at different options, compare
with the plain ``lora`` row (no options in its label), else with the best-ranked, and say which (e.g.
``lora (trained_on=general)``); ``B_vs_lora`` above and the Markdown do the same.
``overhead.csv``: one row per trained row, its costs and Avg: ``task_trained_params``, the task's own trained
tensors beside the method's (a multimodal projector; empty for a record older than the field);
``throughput_unit``, what ``tokens_per_s`` counts (``images`` for the diffusion task); FLOPs of one optimizer step (``flops_per_step.per_optimizer_step``, else
``total``) counted at the padded shapes of the first step of the row's first run, so seeds that pad differently differ (``relative_flops``, to ``lora``
on the same shapes, does not); ``hook_val_flops_per_step``, the FLOPs of the validation forwards a method's hooks
ran over the row's first run (the Reducer's scoring rounds, ``train.hook_val_flops``) per optimizer step, which
``flops_per_step`` leaves out (0 where none ran, empty where a record does not count them);
``relative_flops_with_scoring``, the step and those forwards per step over ``lora``'s step: what training costs
against ``lora`` (``relative_flops`` leaves the Reducer's scoring out); ``train_s`` and ``hook_val_s`` (the Reducer's scoring rounds, not in
``train_s``) averaged over the row's runs when they ran on one device (and CPU thread count) under one malloc setting (else empty;
``train_s_by_device`` always, a device with ``(malloc keeps freed memory)`` where its records name that setting), a run
resumed on another of them than it started on (``train.timed_on_before_resume``) left out of both, with a warning;
``peak_mem_gb`` the largest over the runs, of ``peak_mem_kind``: ``process_rss_hwm`` (the CPU process's
high-water mark since the run started), ``process_rss (malloc ...)`` (its resident size sampled after each
backward, older records: low under the default malloc), ``process_maxrss_lifetime`` (no /proc, as on macOS:
the process's lifetime peak) or ``cuda_minus_baseline`` (allocated above the model's own); empty for a row whose runs read it two ways (``peak_mem_gb_by_kind`` gives each).
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.accounting import REFERENCE_METHOD
from harness.atomic import atomic_path, remove_stale_temps, write_text
from harness.identity import blob_form, manifest_digest
from harness.records import (
    FIRST_METHOD_VERSION,
    PERCENT,
    check_success,
    config_hash,
    find_records,
    pending_swaps,
    read_record,
    score_scale,
)
from harness.runner import BASELINE
from harness.stats import (
    CHANCE,
    EPS,
    MAJORITY,
    Estimate,
    baseline_scores,
    correctness,
    estimate,
    examples_key,
    is_constant,
    paired,
)

REFERENCES = (REFERENCE_METHOD, BASELINE, MAJORITY, CHANCE)
BASELINES = (MAJORITY, CHANCE)  # the references a model must beat for its score to mean anything
AVG = "Avg"


@dataclass(frozen=True)
class Cell:
    """One score: ``value`` in percent (None: unknown), ``ci`` its interval (None: no per-example data)."""

    value: float | None = None
    ci: Estimate | None = None
    absent: bool = False
    constant: bool = False


@dataclass
class Row:
    method: str  # the label: the method name, plus its options when two rows of a section share a name
    kind: str  # "trained", "zero-shot" or "baseline"
    cells: dict[str, Cell]  # per benchmark and AVG
    avg_n: int  # benchmarks with a score, of the section's
    scores: dict[str, np.ndarray]  # per-example scores (percent) pooled over seeds, where known
    answers: dict[str, str]  # the answer string the scores belong to
    runs: list[dict[str, Any]] = field(default_factory=list)
    vs: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # reference -> benchmark/AVG -> diff
    mirrored: set[str] = field(default_factory=set)  # references whose ``vs`` is the negation of theirs to this row
    unpaired: set[str] = field(default_factory=set)  # references not compared: trained rows that share no seed
    # reference -> benchmark/AVG -> the two rows' per-seed scores do not overlap (``seed_ranges_apart``)
    apart: dict[str, dict[str, bool]] = field(default_factory=dict)
    name: str = ""  # the method's registry name (baselines: majority/chance)

    @property
    def percent_trainable(self) -> float | None:
        if self.kind == "zero-shot":
            return 0.0
        return self.runs[0]["train"]["percent_trainable"] if self.kind == "trained" else None

    @property
    def flops_per_step(self) -> float | None:
        if self.kind != "trained":
            return None
        flops = self.runs[0]["train"]["flops_per_step"]
        return flops.get("per_optimizer_step", flops.get("total"))  # None: the record says it was not counted

    @property
    def relative_training_flops(self) -> float | None:
        """The step and the hooks' validation forwards per step (the Reducer's scoring rounds) over ``lora``'s step
        at the same shapes (the record's ``relative_to_lora``): what training costs a step against ``lora``'s. Rows
        compare here, not in absolute FLOPs, which are counted at each row's first seed's padded shapes (seeds that
        pad differently differ by up to 50%). None where either was not counted."""
        if self.kind != "trained":
            return None
        train = self.runs[0]["train"]
        flops, hooks = train["flops_per_step"], hook_flops_per_step(train)
        total, relative = flops.get("total"), flops.get("relative_to_lora")  # lora's step: total / relative
        if hooks is None or not total or not relative:
            return None
        return relative * (total + hooks) / total


@dataclass
class Section:
    task: str
    preset: str
    protocol: str
    model: str
    key: str  # 8-hex id of the comparable settings
    benchmarks: list[str]
    rows: list[Row]
    info: dict[str, str]  # provenance: template, train_on_inputs, steps, eval_n, seeds, n_runs, hardware
    averaged: list[str] = field(default_factory=list)  # the benchmarks Avg covers (the task's ``averaged``)
    references: dict[str, str] = field(default_factory=dict)  # reference name -> the label of the row used

    @property
    def avg_of(self) -> int:
        return len(self.averaged or self.benchmarks)


def load_records(runs_dir: Path) -> list[dict[str, Any]]:
    """The successful records under ``runs_dir``; unreadable ones are skipped with a warning."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ValueError(f"runs dir {str(runs_dir)!r} is a file; pass --runs-dir the folder that holds the runs")
    if not runs_dir.is_dir():
        raise ValueError(f"runs dir {str(runs_dir)!r} does not exist; run `harness run ...` first or pass --runs-dir")
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}  # run id -> its successful records' files
    for path in find_records(runs_dir):
        try:
            record = read_record(path)
            if record["run"]["status"] == "success":
                check_success(path, record)
        except ValueError as exc:
            print(f"warning: skipped {exc}", file=sys.stderr)
            continue
        if record["run"]["status"] == "success":
            found.setdefault(record["run"]["id"], []).append((path, record))
    records = []
    for run_id, copies in found.items():
        # a run folder copied (``cp -r X X.bak``) is one run, counted once: from the folder named after it, where
        # its saved files (the contact sheet's samples) are looked for
        path, record = next(((p, r) for p, r in copies if p.parent.name == run_id), copies[0])
        if len(copies) > 1:
            others = ", ".join(str(p) for p, _ in copies if p != path)
            print(f"warning: {others} also hold run {run_id} (a copy of its folder?); counted once, from {path}",
                  file=sys.stderr)  # fmt: skip
        if path.parent.name != run_id:
            print(
                f"warning: {path} holds run {run_id} in a folder of another name; its scores are counted, but its "
                f"saved files (the contact sheet's samples) are looked for in {run_id}/: rename the folder to it",
                file=sys.stderr,
            )
        records.append(record)
    for run_id in pending_swaps(runs_dir):
        print(
            f"warning: {run_id}: a forced re-run succeeded but was stopped while its files were swapped in; the "
            "record it replaces is counted until the run's next start (the same `harness run` command, without "
            "--force) finishes the swap",
            file=sys.stderr,
        )
    return records


def _settings(record: dict[str, Any]) -> tuple[str, str]:
    """(task/preset/model/protocol/task options, training settings), seeds left out, as JSON."""
    c = record["run"]["config"]
    common = {
        "task": c["task"],
        "preset": c["preset"],
        "model": c.get("model_label", c["model"]),
        "protocol": c["protocol"],
        # which sources a run trained on makes a row (e.g. single-domain rows), not a section
        "task_options": {k: v for k, v in c["task_options"].items() if k not in ("seed", "train_sources")},
    }
    for name in ("eval_limit", "train_cap"):  # 0 is no limit, as None (a record from before 2026-12-06 kept a 0)
        if common["task_options"].get(name) == 0:
            common["task_options"][name] = None
    if c.get("extra", {}).get("task_settings"):  # the preset's task settings (e.g. a stage 1): only when set,
        common["task_settings"] = c["extra"]["task_settings"]  # so the sections of records without keep their ids
    train = {k: v for k, v in c["train"].items() if k != "seed"}
    if c.get("processes", 1) != 1:  # several processes: a larger batch, another section (absent: one process)
        train["processes"] = c["processes"]
    return json.dumps(common, sort_keys=True), json.dumps(train, sort_keys=True)


def run_hardware(runs: list[dict[str, Any]]) -> str:
    """The devices these runs ran on (a row's: its own runs, not its section's)."""
    return "; ".join(sorted({r["env"]["device"] for r in runs}))


def _row_key(record: dict[str, Any]) -> tuple[str, str]:
    c = record["run"]["config"]
    options = dict(c["method_options"])
    if c["task_options"].get("train_sources"):
        options["trained_on"] = "+".join(c["task_options"]["train_sources"])
    if c.get("extra", {}).get("fast_path"):
        options["fast_path"] = True  # other dropout draws than the reference path: its own row
    return c["method"], json.dumps(options, sort_keys=True)


def _make_row(
    method: str,
    kind: str,
    benchmarks: list[str],
    absent: set[str],
    values: dict[str, float],
    scores: dict[str, np.ndarray],
    answers: dict[str, str],
    constant: set[str] | None = None,
    runs: list[dict[str, Any]] | None = None,
    name: str = "",
    averaged: list[str] | None = None,
    intervals: dict[str, Estimate] | None = None,
    scaled: set[str] | None = None,
) -> Row:
    """``scaled``: the benchmarks whose entries declare per-example scores on another scale than percent (a
    judge's 1-10): their intervals get no percent end bound (``estimate(scores=False)``), nor does one where a
    score lies outside 0-100."""

    def percent(b: str) -> bool:  # outcomes on a 0-100 scale: the exact end bounds apply (``estimate(scores=)``)
        return (
            method != CHANCE  # expected values, not outcomes: no end bound (it gave 4 questions' 25.0 [25.0, 60.2])
            and b not in (scaled or ())
            and bool(np.all((scores[b] >= 0) & (scores[b] <= 100)))
        )

    cells = {}
    for b in benchmarks:
        if b in absent:
            cells[b] = Cell(absent=True)
        elif b in scores:
            ci = estimate([scores[b]], scores=percent(b))
            cells[b] = Cell(ci.value, ci, constant=b in (constant or ()))
        else:  # a set-level score (e.g. KID) may carry its own interval
            cells[b] = Cell(values.get(b), (intervals or {}).get(b), constant=b in (constant or ()))
    scored = [b for b in averaged or benchmarks if cells[b].value is not None]
    partial = kind == "baseline" and any(cells[b].value is None and not cells[b].absent for b in averaged or benchmarks)
    if partial:  # majority/chance where the task has none for some averaged columns: no Avg beside the models'
        cells[AVG] = Cell(None)
    elif scored and all(b in scores for b in scored):
        ci = estimate([scores[b] for b in scored], scores=all(percent(b) for b in scored))
        cells[AVG] = Cell(ci.value, ci)
    else:
        cells[AVG] = Cell(statistics.mean(cells[b].value for b in scored) if scored else None)
    return Row(method, kind, cells, len(scored), scores, answers, runs or [], name=name or method)


def _run_row(method: str, runs: list[dict[str, Any]], benchmarks: list[str], averaged: list[str]) -> Row:
    """One row from the seeds' runs of one method and its options."""
    absent, values, scores, answers, constant, intervals, scaled = set(), {}, {}, {}, set(), {}, set()
    for b in benchmarks:
        entries = [r["eval"].get(b, {}) for r in runs]
        if any(score_scale(e) != PERCENT for e in entries):
            scaled.add(b)
        if all(e.get("status") == "absent" for e in entries):
            absent.add(b)
            continue
        if not all("value" in e for e in entries):
            continue  # unknown for this row: shown "–"
        values[b] = statistics.mean(e["value"] for e in entries)
        if len(entries) == 1 and entries[0].get("ci"):  # one run's own interval; seeds' cannot be pooled
            intervals[b] = Estimate(values[b], *entries[0]["ci"])
        per_run = [correctness(e, r["run"]["id"]) for e, r in zip(entries, runs, strict=True)]
        keys = {examples_key(e) for e in entries}
        if all(s is not None for s in per_run) and None in keys:  # a plugin task's entry without its examples' id
            print(
                f"warning: {method} {b}: per-example scores without 'examples' (what identifies the examples); "
                "shown without an interval and compared with nothing (see README 'Adding a task')",
                file=sys.stderr,
            )
        elif all(s is not None for s in per_run) and len(keys) == 1:
            scores[b], answers[b] = np.mean(per_run, axis=0), examples_key(entries[0])
        elif all(s is not None for s in per_run):  # e.g. a judge that failed on other images in each run
            ids = ", ".join(r["run"]["id"] for r in runs)
            print(
                f"warning: {method} {b}: its runs scored different examples ({ids}); their mean is shown without "
                "an interval and compared with nothing",
                file=sys.stderr,
            )
        if any(is_constant(e.get("preds", {}).get(e["metric"], "")) for e in entries if "metric" in e):
            constant.add(b)
    name = runs[0]["run"]["config"]["method"]
    kind = "zero-shot" if name == BASELINE else "trained"
    return _make_row(
        method, kind, benchmarks, absent, values, scores, answers, constant, runs, name, averaged, intervals, scaled
    )


def _baseline_rows(
    runs: list[dict[str, Any]], benchmarks: list[str], absent: set[str], averaged: list[str]
) -> list[Row]:
    """``majority`` and ``chance`` from the answers of the first run (by id) that has them per benchmark."""
    scores: dict[str, dict[str, np.ndarray]] = {MAJORITY: {}, CHANCE: {}}
    answers: dict[str, str] = {}
    scaled: set[str] = set()
    for b in benchmarks:
        if b in absent:
            continue
        given = next((r["eval"][b] for r in runs if r["eval"].get(b, {}).get("baselines")), None)
        if given is not None:  # per-example baseline scores the task computed (e.g. under CircularEval)
            answers[b] = examples_key(given)
            if score_scale(given) != PERCENT:
                scaled.add(b)
            for name in (MAJORITY, CHANCE):
                if name in given["baselines"]:
                    scores[name][b] = np.asarray(given["baselines"][name], dtype=float)
            continue
        entry = next((r["eval"][b] for r in runs if r["eval"].get(b, {}).get("answers")), None)
        if entry is None:
            continue
        answers[b] = entry["answers"]
        for name, s in baseline_scores(entry["answers"], entry.get("n_options")).items():
            scores[name][b] = s
    return [
        _make_row(name, "baseline", benchmarks, absent, {}, scores[name], answers, averaged=averaged, scaled=scaled)
        for name in (MAJORITY, CHANCE)
        if scores[name]
    ]


def seed_values(row: Row, benchmarks: list[str], averaged: list[str]) -> list[tuple[int, str, dict[str, float]]]:
    """Per run of ``row``: (seed, run id, {benchmark or AVG: score}); AVG when the run scored all it covers."""
    out = []
    covered = [b for b in averaged if b in row.cells and row.cells[b].value is not None]
    for r in sorted(row.runs, key=lambda r: (r["run"]["config"]["seed"], r["run"]["id"])):
        values = {b: float(r["eval"][b]["value"]) for b in benchmarks if "value" in r["eval"].get(b, {})}
        if covered and all(b in values for b in covered):
            values[AVG] = statistics.mean(values[b] for b in covered)
        out.append((r["run"]["config"]["seed"], r["run"]["id"], values))
    return out


def not_above_baselines(row: Row, s: Section) -> list[str] | None:
    """The columns (benchmarks and Avg) on which a model's row is not above both the majority label and chance
    by the ``*`` rule (its paired 95% interval, and against majority the sign-flip test): where its score has not
    been shown to beat them. None for the baseline rows and where the section has no baseline to compare with;
    a column no baseline row scores (the diffusion suite's similarity: no baseline exists for it) is not listed.
    A benchmark a baseline scores where the row has no score though one of its runs had it (failed there, or
    scored it where another seed failed) is listed: not compared, not beaten (else a row that failed most
    benchmarks and beat them on the one it scored reads "none", as if everywhere); one its runs never had
    (``absent``, or not in their results: another benchmark set) is not. Empty for a row with no score on any column a baseline scores
    (:func:`baseline_columns`): compared nowhere, it beat nothing, and the tables say so ('–')."""
    if row.kind == "baseline" or not any(ref in row.vs for ref in BASELINES):
        return None
    compared = baseline_columns(row, s)
    if not compared:
        return []
    covered = _baseline_scored(s)
    out = []
    for b in [*s.benchmarks, AVG]:
        if b in compared:
            estimates = [row.vs.get(ref, {}).get(b) for ref in BASELINES]  # a benchmark not compared with both: listed
            if any(e is None or not (e.significant and e.value > 0) for e in estimates):
                out.append(b)
        elif b in covered and _ran(row, b):  # no score where a baseline has one: its runs failed there
            out.append(b)
    return out


def baseline_columns(row: Row, s: Section) -> list[str]:
    """The columns (benchmarks and Avg) on which ``row`` is held against the baselines: it has a score there (none:
    nothing to beat them with) and a baseline row has one (none: nothing to beat). None of them, as for a row whose
    every run failed to score, leaves :func:`not_above_baselines` empty without the row having beaten anything."""
    covered, cells = _baseline_scored(s), row.cells
    return [b for b in [*s.benchmarks, AVG] if not cells[b].absent and cells[b].value is not None and b in covered]


def _baseline_scored(s: Section) -> set[str]:
    """The columns (benchmarks and Avg) a baseline row of ``s`` has a score on."""
    return {b for r in s.rows if r.kind == "baseline" for b in [*s.benchmarks, AVG] if r.cells[b].value is not None}


def _ran(row: Row, b: str) -> bool:
    """Whether one of ``row``'s runs had benchmark ``b``: an entry that is not ``absent`` (scored, or failed)."""
    return any(b in r["eval"] and r["eval"][b].get("status") != "absent" for r in row.runs)


def _reference(rows: list[Row], name: str) -> Row | None:
    """The row compared against as ``name``: the plain one (its label the bare name) where the section has it
    at several settings or only at a labelled one (``lora (trained_on=general)``), else the best-ranked."""
    named = [r for r in rows if r.name == name]
    return next((r for r in named if r.method == name), named[0] if named else None)


def _compare(
    rows: list[Row], benchmarks: list[str], averaged: list[str], scales: dict[str, tuple[float, float]] | None = None
) -> dict[str, str]:
    """Fill ``row.vs``: paired differences to each reference row on the examples both scored; returns each
    reference's row label (``_reference``). ``scales``: per benchmark the scale of its per-example scores
    (``_column_scale``; missing: percent), which the test against ``chance`` needs (``harness.stats.chance_p``).

    Two reference rows compared both ways (``lora`` against ``base``, and ``base`` against ``lora``) get
    exactly opposite differences and intervals: the one against the later reference of ``REFERENCES`` is
    drawn (``lora - base``, ``lora - majority``, ``base - majority``) and the other is its negation, not a
    second draw (whose bounds would differ by the bootstrap's Monte Carlo noise)."""
    refs = {name: _reference(rows, name) for name in REFERENCES}
    drawn: dict[tuple[int, str], dict[str, Estimate]] = {}
    mirrored: set[tuple[int, str]] = set()
    unpaired: set[tuple[int, str]] = set()  # trained rows that share no seed: not compared
    apart: dict[tuple[int, str], dict[str, bool]] = {}
    for ref_name in reversed(REFERENCES):
        ref = refs[ref_name]
        if ref is None:
            continue
        for row in rows:
            if row is ref:
                continue
            mirror = drawn.get((id(ref), row.name)) if refs.get(row.name) is row else None
            if mirror is not None:  # row - ref = -(ref - row), already drawn
                drawn[(id(row), ref_name)] = {b: e.negated() for b, e in mirror.items()}
                mirrored.add((id(row), ref_name))
                apart[(id(row), ref_name)] = apart[(id(ref), row.name)]  # symmetric
                continue
            same = [b for b in benchmarks if b in row.scores and b in ref.scores and row.answers[b] == ref.answers[b]]
            pair = _on_shared_seeds(row, ref, same)
            if pair is None:  # no seed in common: nothing to compare (``unpaired_seeds`` says so)
                drawn[(id(row), ref_name)] = {}
                unpaired.add((id(row), ref_name))
                continue
            mine, theirs = pair
            # chance's scores are expected values, not outcomes: "the row guesses" is tested against them
            test = "chance" if ref_name == CHANCE else "none" if row.name == CHANCE else "sign_flip"
            scale = (scales or {}).get
            diffs = {b: paired([mine[b]], [theirs[b]], test=test, scales=[scale(b, PERCENT)]) for b in same}
            both = [b for b in averaged if row.cells[b].value is not None and ref.cells[b].value is not None]
            if both and all(b in same for b in both):
                on = [scale(b, PERCENT) for b in both]
                diffs[AVG] = paired([mine[b] for b in both], [theirs[b] for b in both], test=test, scales=on)
            drawn[(id(row), ref_name)] = diffs
            apart[(id(row), ref_name)] = seed_ranges_apart(row, ref, list(diffs), both)
    for row in rows:  # in REFERENCES order, as the tables list them
        row.vs = {name: drawn[(id(row), name)] for name in REFERENCES if (id(row), name) in drawn}
        row.mirrored = {name for name in row.vs if (id(row), name) in mirrored}
        row.unpaired = {name for name in row.vs if (id(row), name) in unpaired}
        row.apart = {name: apart[(id(row), name)] for name in row.vs if (id(row), name) in apart}
    return {name: ref.method for name, ref in refs.items() if ref is not None}


def seed_ranges_apart(row: Row, ref: Row, compared: list[str], averaged: list[str]) -> dict[str, bool]:
    """Per compared column (benchmarks and AVG, which here averages ``averaged``, the columns the paired Avg
    covers): whether the two rows' per-seed scores lie apart, every one of a side above every one of the other
    (equal scores touch: not apart), on the runs the paired comparison used (two trained rows: the seeds both
    ran). A row that does not train (majority, chance, the zero-shot ``base``, however many seeds it ran) has one
    score, its cell's. Only where a side has two or more scores, a trained row's seeds: one score against one says
    nothing about the spread over seeds. The paired interval resamples examples;
    this is the check against the seeds' spread that the README's results apply ("beyond the interval and the
    seed ranges apart")."""
    both_train = row.kind == ref.kind == "trained"
    shared = {r["run"]["config"]["seed"] for r in row.runs} & {r["run"]["config"]["seed"] for r in ref.runs}
    columns = [b for b in {*compared, *averaged} if b != AVG]
    sides = []
    for x in (row, ref):
        runs = [r for r in x.runs if r["run"]["config"]["seed"] in shared] if both_train else x.runs
        per_run = [{b: float(r["eval"][b]["value"]) for b in columns if "value" in r["eval"].get(b, {})} for r in runs]
        if x.kind != "trained":  # majority and chance (computed from the answers), and the zero-shot model, whose
            # runs of several seeds score alike: one score, not a spread over seeds
            per_run = [{b: x.cells[b].value for b in columns if b in x.cells and x.cells[b].value is not None}]
        for values in per_run:
            if AVG in compared and all(b in values for b in averaged):
                values[AVG] = statistics.mean(values[b] for b in averaged)
        sides.append(per_run)
    out = {}
    for b in compared:
        mine, theirs = ([v[b] for v in side if b in v] for side in sides)
        if mine and theirs and max(len(mine), len(theirs)) > 1:
            out[b] = min(mine) > max(theirs) + EPS or max(mine) < min(theirs) - EPS  # float noise touches
    return out


def _on_shared_seeds(
    row: Row, ref: Row, benchmarks: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Both rows' per-example scores, over the seeds both trained rows ran where their seeds differ (a row of
    three seeds against one of seed 0 compares seed 0 with seed 0: the seeds' spread is not a method's
    difference); None where two trained rows share no seed (seed 1 against seed 0 would be that spread again).
    Zero-shot and baseline rows do not train, so their seeds do not pair: all runs count."""
    seeds = [{r["run"]["config"]["seed"] for r in x.runs} for x in (row, ref)]
    shared = seeds[0] & seeds[1]
    if row.kind != "trained" or ref.kind != "trained" or seeds[0] == seeds[1]:
        return row.scores, ref.scores
    if not shared:
        return None
    out: list[dict[str, np.ndarray]] = []
    for x in (row, ref):
        runs = [r for r in x.runs if r["run"]["config"]["seed"] in shared]
        out.append({b: np.mean([correctness(r["eval"][b], r["run"]["id"]) for r in runs], axis=0) for b in benchmarks})
    return out[0], out[1]


def _labels(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Row labels: the method, plus the options that differ where a section has it at several settings, and
    always the sources a row trained on when it did not train on all of them (``trained_on``) and whether it
    trained through the fast path."""
    out = {}
    for method, options in keys:
        others = [json.loads(o) for m, o in keys if m == method and o != options]
        opts = json.loads(options)
        always = ("trained_on", "fast_path")
        differ = sorted(k for k, v in opts.items() if k in always or any(o.get(k) != v for o in others))
        out[(method, options)] = f"{method} ({', '.join(f'{k}={opts[k]}' for k in differ)})" if differ else method
    return out


def _task(task: str) -> type | None:
    """The registered task class of ``task``; None, with a warning once a process, for a plugin task's records
    read without the plugin (its columns then come in the records' order and its Avg covers every one)."""
    from harness.registry import TASKS

    try:
        return TASKS.get(task)
    except ValueError:
        _unregistered(task)
        return None


@functools.cache
def _unregistered(task: str) -> None:
    print(
        f"warning: task {task!r} is not registered (a plugin's?): its columns are in the records' order and its Avg "
        "covers every one, which may not be the task's own; pass its --plugin (harness --plugin FILE leaderboard)",
        file=sys.stderr,
    )


def _columns(task: str, found: list[str]) -> list[str]:
    """The task's own column order (``Task.columns``) when it is registered, then any others found."""
    cls = _task(task)
    declared = [c for c in cls.columns if c in found] if cls else []
    return list(dict.fromkeys([*declared, *found]))


def _averaged(task: str, benchmarks: list[str]) -> list[str]:
    """The benchmarks the task's Avg covers (``Task.averaged``; every one when it names none)."""
    declared = cls.averaged if (cls := _task(task)) else None
    return [b for b in benchmarks if declared is None or b in declared]


def _unused_settings(task: str) -> tuple[str, ...]:
    """The training settings the task's recipe never reads (``Task.unused_train_settings``; none if unknown)."""
    return cls.unused_train_settings if (cls := _task(task)) else ()


def _rank(row: Row) -> tuple[int, float, str]:
    """Trained rows by Avg, best first (unknown last), then the zero-shot row."""
    avg = row.cells[AVG].value
    return (row.kind != "trained", -avg if avg is not None and row.kind == "trained" else 0.0, row.method)


def _section(common: str, train: str, groups: dict[tuple[str, str], list[dict[str, Any]]], key: str) -> Section:
    labels = _labels(sorted(groups))
    groups = {k: g if k[0] == BASELINE else _newest_per_seed(g, duplicate=labels[k]) for k, g in groups.items()}
    runs = sorted((r for g in groups.values() for r in g), key=lambda r: r["run"]["id"])
    benchmarks = _columns(runs[0]["run"]["config"]["task"], [b for r in runs for b in r["eval"]])
    absent = {b for b in benchmarks if all(r["eval"].get(b, {}).get("status") == "absent" for r in runs)}
    averaged = _averaged(runs[0]["run"]["config"]["task"], benchmarks)
    rows = [_run_row(labels[key], g, benchmarks, averaged) for key, g in sorted(groups.items())]
    rows.sort(key=_rank)
    rows += _baseline_rows(runs, benchmarks, absent, averaged)
    references = _compare(rows, benchmarks, averaged, {b: _column_scale(runs, b) for b in benchmarks})
    c, first = runs[0]["run"]["config"], runs[0]
    steps = sorted({r["train"]["steps"] for r in runs if r["train"].get("steps") is not None})
    info = {
        "template": str(c["task_options"].get("template", "")),
        "train_on_inputs": (
            "not read"  # the task's training never reads it (multimodal, diffusion): its value says nothing
            if "train_on_inputs" in _unused_settings(c["task"])
            else str(c["train"].get("train_on_inputs", ""))
        ),
        "steps": " ".join(map(str, steps)) or "0",
        "eval_n": "/".join(str(e["n"]) for e in first["eval"].values() if "n" in e),
        "seeds": " ".join(str(s) for s in sorted({r["run"]["config"]["seed"] for r in runs})),
        "n_runs": str(len(runs)),
        "hardware": run_hardware(runs),
    }
    model = c.get("model_label", c["model"])
    return Section(
        c["task"],
        c["preset"],
        c["protocol"],
        model,
        key,
        benchmarks,
        rows,
        info,
        averaged,
        references,
    )


def _column_scale(runs: list[dict[str, Any]], b: str) -> tuple[float, float]:
    """The scale of ``b``'s per-example scores: the first entry's (runs in id order) that names one other than
    percent, as ``_run_row`` and ``_baseline_rows`` read a column as scaled when any entry is; else percent."""
    return next((s for r in runs if (s := score_scale(r["eval"].get(b) or {})) != PERCENT), PERCENT)


def _newest_per_seed(runs: list[dict[str, Any]], duplicate: str | None = None) -> list[dict[str, Any]]:
    """One run per seed, the newest (``created_at``, then id), in id order; with ``duplicate`` (a row's
    name), a warning on stderr for each seed that had several (settings outside the row's key, such as the
    eval batch size or a model path with the same label, make other run ids for the same row and seed)."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_seed.setdefault(r["run"]["config"]["seed"], []).append(r)
    kept = []
    for seed, same in by_seed.items():
        newest = max(same, key=lambda r: (r["run"].get("created_at", ""), r["run"]["id"]))
        kept.append(newest)
        if duplicate is not None and len(same) > 1:
            older = ", ".join(r["run"]["id"] for r in same if r is not newest)
            print(
                f"warning: {duplicate} has {len(same)} runs of seed {seed}; counted once, the newest "
                f"({newest['run']['id']}), not {older}",
                file=sys.stderr,
            )
    return sorted(kept, key=lambda r: r["run"]["id"])


def sections(records: list[dict[str, Any]]) -> list[Section]:
    """Every task's comparable sections, sorted by task, preset, protocol, model. A row counts one run per
    seed (``_newest_per_seed``). Runs at the same settings whose data differ (``_digests``: a test or training
    file's sha256) are other sections, not seeds of one row (pooled, their per-example scores would not pair), and
    so are runs of one ``--model`` folder whose files differ (``_model_digests``: its weights replaced between
    runs); the zero-shot ``base`` joins those whose data and model its own does not contradict."""
    by_settings: dict[tuple[str, str], list[dict[str, Any]]] = {}
    zero_shot: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r["run"]["id"]):
        common, train = _settings(record)
        if record["run"]["config"]["method"] != BASELINE:
            by_settings.setdefault((common, train), []).append(record)
        else:  # training settings do not change a zero-shot run: one row over them all
            zero_shot.setdefault(common, []).append(record)
    # (common, train, n): the n-th data of those settings, oldest first; its digests
    trained: dict[tuple[str, str, int], dict[tuple[str, str], list[dict[str, Any]]]] = {}
    data: dict[tuple[str, str, int], dict[str, str]] = {}
    for (common, train), runs in by_settings.items():
        for n, (digests, same) in enumerate(_by_data(runs)):
            data[(common, train, n)] = digests
            for record in sorted(same, key=lambda r: r["run"]["id"]):
                trained.setdefault((common, train, n), {}).setdefault(_row_key(record), []).append(record)
    targets_of = list(trained)  # the sections a base run may join: those with trained runs
    joined: set[tuple[str, str, int]] = set()  # those a zero-shot group joined: one each, the oldest that fits
    model_of: dict[tuple[str, str, int], dict[str, str]] = {}  # the model digests a joined zero-shot group names
    refused: set[tuple[str, str, int]] = set()  # zero-shot sections of settings run on other data (or model) too
    for common, runs in zero_shot.items():
        for digests, same in _by_data(runs):
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for record in sorted(same, key=lambda r: r["run"]["id"]):
                groups.setdefault(_row_key(record), []).append(record)
            labels = _labels(sorted(groups))
            groups = {key: _newest_per_seed(g, duplicate=labels[key]) for key, g in groups.items()}
            # a later group (other data or model files) that fits a section the oldest joined already makes one
            # of its own: it would replace that base row
            targets = [k for k in targets_of if k[0] == common and _fits(digests, data[k]) and k not in joined]
            joined.update(targets)
            if not targets:  # no trained run to join: a section of its own
                train = _settings(same[0])[1]  # in its id only: a zero-shot run reads no training setting
                targets = [(common, train, sum(k[:2] == (common, train) for k in trained))]
                data[targets[0]] = digests
                # another section of its settings (a trained one, or an earlier zero-shot group's: ``trained`` holds
                # both, not yet this one) read other data or model files: its title says which, as the runs' other
                # ``train`` settings do not (they make no other ``n``, and a zero-shot run reads none: ``_set_apart``)
                if any(k[0] == common for k in trained):
                    refused.add(targets[0])
            for k in targets:
                trained[k] = {**trained.get(k, {}), **groups}
                # what its model files are, where only its base row names them: shown, not in the section's id
                model_of[k] = {**model_of.get(k, {}), **{d: v for d, v in digests.items() if d.startswith(MODEL)}}
    out = []
    for (common, train, n), groups in trained.items():
        key = {"c": common, "t": train} | ({"d": data[(common, train, n)]} if n > 0 else {})  # the oldest keeps its id
        out.append(_section(common, train, groups, config_hash(key)))
    # where settings were run on other data, the sections of their title say which data (a digest of the digests);
    # so do those of a zero-shot run kept from the other runs of its settings by its data (or model files)
    split = {_title(s) for s, k in zip(out, trained, strict=True) if k[2] > 0 or k in refused}
    shown = [(_title(s), model_of.get(k, {}) | data[k]) for s, k in zip(out, trained, strict=True)]
    apart = _data_apart(shown, split)
    # a section of zero-shot runs only is not set apart by training settings it never read (``_set_apart``)
    settings = [
        _flat(json.loads(k[0]) | ({"train": json.loads(k[1])} if _trains(s) else {}) | said)
        for s, k, said in zip(out, trained, apart, strict=True)
    ]
    _set_apart(out, settings)
    return sorted(out, key=lambda s: (s.task, s.preset, s.protocol, s.model, s.key))


SHA256 = re.compile(r"[0-9a-f]{64}")


def _data_apart(sections: list[tuple[Any, dict[str, str]]], split: set[Any]) -> list[dict[str, str]]:
    """Per section (its title, its digests), how its data and model files are shown where they set it apart from
    another of its title (a title in ``split``): ``data`` (a digest of its data's digests) where another section of
    its title read other data (``_fits``: a file both name with another digest), ``model files`` (of its model's: the
    same ``--model`` folder with other weights, tokenizer or configs) where one names other model files; neither
    where it is not what differs (a section whose records name no model files is not "model files unset" beside one
    that does, when data split them; a zero-shot section, whose runs read no training file, is not "other data"
    beside a trained one that read its test files, when model files split them)."""
    parts = []
    for title, digests in sections:
        model = {k: v for k, v in digests.items() if k.startswith(MODEL)}
        data = {k: v for k, v in digests.items() if not k.startswith(MODEL)}
        parts.append((title, data, model))
    out = []
    for title, data, model in parts:
        if title not in split:
            out.append({})
            continue
        same = [p for p in parts if p[0] == title]
        # each only where another section's files contradict its own: one that names more files of the same data
        # (a trained run's training file beside a zero-shot run's test files) read the same data, and one that
        # names more files of the same model (a zero-shot run's manifest beside older records) is the same model
        shown = {"data": config_hash(data)} if any(not _fits(data, p[1]) for p in same) else {}
        if model and any(not _fits(model, p[2]) for p in same):
            shown["model files"] = config_hash(model)
        out.append(shown)
    return out


def _digests(record: dict[str, Any]) -> dict[str, str]:
    """What identifies the data a run read: per scored benchmark its test file's sha256 (``eval/B``, as the task
    records it), and every sha256 the task's ``run.config.data`` names (where in it -> the digest; a list item by
    its ``file``)."""
    out = {
        f"eval/{b}": e["sha256"]
        for b, e in (record.get("eval") or {}).items()
        if isinstance(e, dict) and "value" in e and isinstance(e.get("sha256"), str)
    }

    def walk(x: Any, at: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{at}/{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{at}/{v['file'] if isinstance(v, dict) and isinstance(v.get('file'), str) else i}")
        elif isinstance(x, str) and SHA256.fullmatch(x):
            out[at] = x

    walk(record["run"]["config"].get("data"), "data")
    return out | _model_digests(record)


MODEL = "model/"  # the prefix of ``_digests``' keys for the model's files


def _model_digests(record: dict[str, Any]) -> dict[str, str]:
    """What identifies the model's files a run read (``harness.runner._digest_info``): the folder's digest by its
    version and what it covers (so that, as ``harness.runner`` refuses a finished run when a file was added to the
    folder since, two runs of one folder that cover other files at one version and covers are two models), and
    per file its sha256 where the record keeps the folder's ``weights_manifest`` (a file that only one run's digest
    version or covers includes contradicts nothing: a model built from its config leaves the weights out), with the
    version-1 digest it gives, to meet a record of that version (the embedded GGUF's: its own); for a hub id,
    per file the blob its run loaded (``hub_manifest``); none for a record from before these were kept, or a model
    built from the shipped config."""
    info = record["run"]["config"].get("model_info")
    if isinstance(info, dict) and isinstance(hub := info.get("hub_manifest"), dict):  # a hub id: its files' blobs
        # by form (``harness.identity.same_form``): ids of two forms (a git id, a sha256) do not contradict
        ids = {rel: blob_form(d) for rel, d in hub.items() if isinstance(d, str)}
        return {f"{MODEL}hub/{rel} {d.partition(':')[0]}": d for rel, d in ids.items()}
    if not isinstance(info, dict) or not isinstance(digest := info.get("weights_sha256"), str):
        return {}
    if "weights_source" in info:  # the embedded GGUF
        return {f"{MODEL}gguf": digest}
    version = info.get("weights_digest_version", 1)
    # the one digest too, by its version and what it covers: a record that keeps no manifest (from before it was
    # kept) is compared with one that does by it, and a version-1 record by the version-1 digest a manifest gives
    covers = info.get("weights_digest_covers", "") if version > 1 else ""
    out = {f"{MODEL}digest v{version} {covers}".rstrip(): digest}
    manifest = info.get("weights_manifest")
    if isinstance(manifest, dict) and "weights_digest_version" in info:
        out |= {f"{MODEL}{rel}": d for rel, d in manifest.items() if isinstance(d, str)}
        if str(covers).startswith("weights"):  # version 1 covered the weights and configs: a subset of these
            out[f"{MODEL}digest v1"] = manifest_digest(manifest, 1)
    return out


def _fits(mine: dict[str, str], theirs: dict[str, str]) -> bool:
    """No file both name has another digest (one that only one names, e.g. a training file the zero-shot run
    never read or a benchmark a run failed, contradicts nothing)."""
    return all(theirs.get(k, v) == v for k, v in mine.items())


def _by_data(runs: list[dict[str, Any]]) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """``runs`` in groups whose data do not contradict (``_fits``), oldest run first (``created_at``, then id):
    each group's digests (all its runs name) and its runs. One group where they all read the same data."""
    groups: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
    for r in sorted(runs, key=lambda r: (r["run"].get("created_at", ""), r["run"]["id"])):
        mine = _digests(r)
        group = next((g for g in groups if _fits(mine, g[0])), None)
        if group is None:
            groups.append((mine, [r]))
        else:
            group[0].update(mine)
            group[1].append(r)
    return groups


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: json.dumps(v)}
    return out


def _title(s: Section) -> tuple[str, str, str, str]:
    return s.task, s.preset, s.protocol, s.model


def _trains(s: Section) -> bool:
    """Whether ``s`` holds a trained row (else zero-shot runs and their baselines only, which read no training
    setting)."""
    return any(row.kind == "trained" for row in s.rows)


TRAIN = "train."  # the prefix of the training settings' keys (``_flat``)


def _set_apart(secs: list[Section], settings: list[dict[str, str]]) -> None:
    """``info["apart"]``: where sections share a title (task, preset, protocol, model), the settings that set
    each apart (e.g. ``task_settings.generated_data.version 4``), so that a reader can tell them apart. Training
    settings are compared among the sections that train only: a section of zero-shot runs read none (a base run
    kept apart by its data was said to be set apart by the ``train.lr`` its runs' configs carried)."""
    titles: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(secs):
        titles.setdefault(_title(s), []).append(i)
    for group in titles.values():
        trains = [i for i in group if _trains(secs[i])]
        keys = sorted({k for i in group for k in settings[i]})
        among = {k: trains if k.startswith(TRAIN) else group for k in keys}
        values = {k: {settings[i][k] for i in among[k] if k in settings[i]} for k in keys}
        differ = [k for k in keys if len(values[k]) > 1 or any(k not in settings[i] for i in among[k])]
        for i in group:
            shown = [
                k
                for k in differ
                if i in among[k] and _tells_apart(k, settings[i], values[k], [settings[j] for j in among[k]])
            ]
            secs[i].info["apart"] = ", ".join(dict.fromkeys(_shown(settings[i], k) for k in shown))


def _tells_apart(key: str, flat: dict[str, str], values: set[str], group: list[dict[str, str]]) -> bool:
    """A setting at two values is shown everywhere; one at a single value where it is missing, and where it is
    set if its parent is in every section (a new leaf, e.g. train.processes; not the leaves of a subtree the
    other sections lack whole, which their "parent unset" already tells apart)."""
    if len(values) > 1 or key not in flat:
        return True
    parent = key.rpartition(".")[0]
    return all(any(x.startswith(parent + ".") for x in other) for other in group)


def _shown(flat: dict[str, str], key: str) -> str:
    """``key value``; for a setting the section's runs lack, its outermost missing parent: ``parent unset``."""
    if key in flat:
        return f"{key} {flat[key]}"
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        prefix = ".".join(parts[:n])
        if not any(k == prefix or k.startswith(prefix + ".") for k in flat):
            return f"{prefix} unset"
    return f"{key} unset"


def tables(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """``{task: accuracy table, f"{task}_comparisons": long-format paired differences, "overhead": costs}``."""
    from harness.leaderboard_render import frame_tables

    return frame_tables(sections(records))


class NoRecords(ValueError):
    """No successful run record to build a leaderboard from: ``harness run`` says why where its runs failed, and
    lets any other error of the leaderboard through."""


def write_leaderboards(runs_dir: Path, out_dir: Path) -> list[Path]:
    """Write every table, plot and page for the records under ``runs_dir`` into ``out_dir``; the paths
    (:class:`NoRecords` where none succeeded)."""
    from harness.leaderboard_html import html_page
    from harness.leaderboard_render import frame_tables, markdown, plot, provenance

    records = load_records(runs_dir)
    if not records:
        raise NoRecords(
            f"no successful run records under {str(runs_dir)!r}; run `harness run --runs-dir {runs_dir} ...` first, "
            "or pass --runs-dir pointing at a folder of runs"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # the temp files of a leaderboard killed mid-write (its own folder only: --out may hold the run folders, whose
    # temp files their runs' locks guard); no lock is held here, so one a live writer may still use is spared
    remove_stale_temps(out_dir, recursive=False, older_than_s=STALE_TEMP_S)
    secs = sections(records)
    frames = frame_tables(secs)
    written = []
    for name, df in frames.items():
        path = out_dir / f"{name}.csv"
        # a handle, not the temp's path: pandas expands a "~" in a path string (a folder "./~/x" made from --out=~/x
        # unexpanded had its temp files left empty and renamed into place, the tables written to the home's x)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            df.to_csv(f, index=False)
        written.append(path)
    for task in dict.fromkeys(s.task for s in secs):
        written.append(plot([s for s in secs if s.task == task], task, out_dir / f"{task}.png"))
        written += _task_files(task, [r for r in records if r["run"]["config"]["task"] == task], runs_dir, out_dir)
    mixed = mixed_flops_counters(secs, runs_dir) + uncounted_hook_flops(secs, runs_dir) + other_task_versions(secs)
    mixed += other_method_versions(secs) + mixed_scorers(secs) + mixed_base_params(secs) + unpaired_seeds(secs)
    mixed += unpaired_examples(secs) + timed_in_two_places(secs)
    for line in mixed:
        print(f"warning: {line}", file=sys.stderr)
    notes = "".join(f"\n**Warning:** {line}\n" for line in mixed)
    write_text(out_dir / "leaderboard.md", markdown(secs, frames["overhead"], records) + notes)
    write_text(out_dir / "leaderboard.html", html_page(secs, provenance(records), mixed))
    for line in leftover_files(out_dir, {s.task for s in secs}, runs_dir):
        print(f"warning: {line}", file=sys.stderr)
    return [*written, out_dir / "leaderboard.md", out_dir / "leaderboard.html"]


STALE_TEMP_S = 60.0  # a temp file in the leaderboard's folder untouched this long: a killed writer's, not live
TASK_FILES = ("{task}.csv", "{task}_comparisons.csv", "{task}_seeds.csv", "{task}.png")  # a task's leaderboard files


def leftover_files(out_dir: Path, tasks: set[str], runs_dir: Path) -> list[str]:
    """A line naming the leaderboard files (``TASK_FILES``) in ``out_dir`` of registered tasks other than ``tasks``
    (those rebuilt): left from an earlier leaderboard of other records, beside pages that no longer show them.
    They are not deleted (the folder may hold them on purpose)."""
    from harness.registry import TASKS

    old = [
        name
        for task in TASKS.names()
        if task not in tasks
        for pattern in TASK_FILES
        if (out_dir / (name := pattern.format(task=task))).is_file()
    ]
    if not old:
        return []
    return [
        f"{out_dir} still holds {', '.join(old)} from an earlier leaderboard: the records under {runs_dir} have "
        "no run of their task, so leaderboard.md and leaderboard.html do not show them; delete them, or rebuild "
        "from a runs folder that holds those runs too"
    ]


def mixed_flops_counters(secs: list[Section], runs_dir: Path) -> list[str]:
    """A line per section whose runs' FLOPs were counted by different counters (records written before a
    counting fix beside newer ones): their FLOPs columns do not compare, and what to run to make them."""
    out = []
    for s in secs:
        counters = {
            str(flops.get("counted_by"))
            for row in s.rows
            for r in row.runs
            if "total" in (flops := (r.get("train") or {}).get("flops_per_step") or {})
        }
        if len(counters) > 1:
            out.append(
                f"section {s.key} ({s.task}, {s.preset}) holds FLOPs counted by {len(counters)} different counters "
                f"(records written before a counting fix): count them again with python scripts/recount_flops.py "
                f"{runs_dir} (adding --data-dir {s.task}=FOLDER if its data is not at the task's default, and "
                "--plugin / --trust-remote-code as the runs used), then regenerate the leaderboard"
            )
    return out


def unpaired_seeds(secs: list[Section]) -> list[str]:
    """A line per trained row left uncompared with a reference because the two share no seed (``_on_shared_seeds``):
    its ``vs`` cells are empty, which without a word would read as "no per-example data"."""
    out = []
    for s in secs:
        for row in s.rows:
            for ref in sorted(row.unpaired):
                label = s.references.get(ref, ref)
                other = next(r for r in s.rows if r.method == label)
                mine, theirs = (" ".join(map(str, _seeds(x))) for x in (row, other))
                out.append(
                    f"section {s.key} ({s.task}, {s.preset}): {row.method} (seeds {mine}) is not compared with "
                    f"{label} (seeds {theirs}): trained rows are compared on the seeds both ran, and they share none "
                    f"(one seed against another would be the seeds' spread, not the methods'); run {row.name} with "
                    f"seed {min(_seeds(other))} or {other.name} with seed {min(_seeds(row))} to compare them"
                )
    return out


def unpaired_examples(secs: list[Section]) -> list[str]:
    """A line per row and column left uncompared with ``lora`` or ``base`` because the two scored other examples
    (a judge that failed on some images in one run; ``_compare`` pairs only the same examples): the empty ``vs``
    cell would otherwise read as "no per-example data"."""
    out = []
    for s in secs:
        told: set[frozenset[str]] = set()
        for row in s.rows:
            for ref_name in (REFERENCE_METHOD, BASELINE):
                label = s.references.get(ref_name)
                ref = next((r for r in s.rows if r.method == label), None)
                if ref is None or ref is row or ref_name not in row.vs or frozenset((row.method, label)) in told:
                    continue
                other = [
                    b for b in s.benchmarks if b in row.scores and b in ref.scores and row.answers[b] != ref.answers[b]
                ]
                if other:
                    told.add(frozenset((row.method, label)))
                    sizes = ", ".join(f"{b}: {len(row.scores[b])} and {len(ref.scores[b])}" for b in other)
                    why = (
                        "; a judge that failed on some images: harness rescore judges them again"
                        if any(b.startswith("judge_") for b in other)
                        else ""
                    )
                    out.append(
                        f"section {s.key} ({s.task}, {s.preset}): {row.method} is not compared with {label} on "
                        f"{', '.join(other)}: the two scored other examples ({sizes}{why}), and differences are "
                        "paired on the same examples"
                    )
    return out


def _seeds(row: Row) -> list[int]:
    return sorted({r["run"]["config"]["seed"] for r in row.runs})


def other_method_versions(secs: list[Section]) -> list[str]:
    """A line per section and method whose runs recorded different versions of the method
    (``AdapterLinear.version``), or one other than the registered method's now (a record from before versions
    were kept: version 1)."""
    from harness.registry import METHODS

    out = []
    for s in secs:
        by_method: dict[str, set[str]] = {}
        for row in s.rows:
            for r in row.runs:
                if (r.get("train") or {}).get("steps"):  # a trained run; before versions were kept: version 1
                    v = r["run"].get("method_version", FIRST_METHOD_VERSION)
                    by_method.setdefault(r["run"]["config"]["method"], set()).add(str(v))
        for method, ran in sorted(by_method.items()):
            try:
                now = str(METHODS.get(method).version)
            except ValueError:  # a plugin's method read without its plugin
                now = None
            out += _other_versions(s, f"{method} runs", "the method", sorted(ran), now)
    return out


def _other_versions(s: Section, runs: str, of: str, ran: list[str], now: str | None) -> list[str]:
    """The warning line for a section whose ``runs`` were made with several versions ``ran`` of ``of``, or with one
    other than ``now`` (the registered one's); none where they agree."""
    if len(ran) > 1 or (ran and now is not None and ran != [now]):
        return [
            f"section {s.key} ({s.task}, {s.preset}) holds {runs} made with version(s) {', '.join(ran)} of {of}"
            f"{f' (now version {now})' if now else ''}: their scores may not compare; run the older ones again "
            "with --force"
        ]
    return []


def mixed_base_params(secs: list[Section]) -> list[str]:
    """A line per model whose trained runs counted its parameters differently (``train.base_params``, the
    denominator of ``param_%``: an older multimodal record counted the language model only): their ``param_%``
    do not compare."""
    counts: dict[tuple[str, str], dict[int, set[str]]] = {}
    for s in secs:
        for row in s.rows:
            for r in row.runs:
                if (n := (r.get("train") or {}).get("base_params")) is not None:
                    counts.setdefault((s.task, s.model), {}).setdefault(int(n), set()).add(s.key)
    out = []
    for (task, model), by_count in counts.items():
        if len(by_count) > 1:
            told = "; ".join(
                f"{n:,} (section{'s' if len(keys) > 1 else ''} {', '.join(sorted(keys))})"
                for n, keys in sorted(by_count.items())
            )
            out.append(
                f"{task} runs of {model} count its parameters two ways, {told}: param_% divides by each run's own "
                "count (an older record counted less of the model), so those rows' param_% do not compare; "
                "trainable_params does"
            )
    return out


def other_task_versions(secs: list[Section]) -> list[str]:
    """A line per section whose runs recorded different versions of their task (``Task.version``), or one other
    than the registered task's now: their scores may not compare (records from before the version was recorded
    say nothing)."""
    out = []
    for s in secs:
        ran = sorted({str(v) for row in s.rows for r in row.runs if (v := r["run"].get("task_version")) is not None})
        now = str(cls.version) if (cls := _task(s.task)) else None
        out += _other_versions(s, "runs", f"the {s.task} task", ran, now)
    return out


# an entry's fields naming its scorer; judge_answered_by: the models the judge's server said answered (an alias
# such as gpt-4o names a dated snapshot, which moves), so that one alias answered by two snapshots is two scorers
SCORED_BY = ("judge_model", "judge_endpoint", "rubric_version", "checkpoint", "judge_answered_by")


def mixed_scorers(secs: list[Section]) -> list[str]:
    """A line per section and column scored by different scorers across its runs (a judge model, endpoint,
    rubric or the models that answered for it; a scorer's checkpoint: the fields of ``SCORED_BY`` an eval entry
    carries): ``harness rescore`` keeps a run's config, so runs judged by two judges share a section and their
    rows would be compared. A run judged before the answering model was kept differs from one judged after: which
    snapshot answered it is not known."""
    out = []
    for s in secs:
        mixed: dict[tuple[str, ...], list[str]] = {}  # the scorers -> the columns they share (a judge's eight)
        for b in s.benchmarks:
            seen = {
                json.dumps({k: e[k] for k in SCORED_BY if k in e}, sort_keys=True)
                for row in s.rows
                for r in row.runs
                if "value" in (e := r["eval"].get(b) or {}) and any(k in e for k in SCORED_BY)
            }
            if len(seen) > 1:
                mixed.setdefault(tuple(sorted(seen)), []).append(b)
        for seen, columns in mixed.items():
            shown = "; ".join(seen[:2]) + (" ..." if len(seen) > 2 else "")
            out.append(
                f"section {s.key} ({s.task}, {s.preset}): {', '.join(columns)} scored by {len(seen)} different "
                f"scorers across its runs ({shown}): its rows do not compare there; score them with one (harness rescore)"
            )
    return out


def uncounted_hook_flops(secs: list[Section], runs_dir: Path) -> list[str]:
    """A line per section with runs whose hooks ran validation forwards (the Reducer's scoring rounds) that their
    records do not count (written before they were counted): ``hook_val_flops_per_step`` is empty for them."""
    out = []
    for s in secs:
        runs = [r["run"]["id"] for row in s.rows for r in row.runs if hook_flops_per_step(r.get("train") or {}) is None]
        if runs:
            out.append(
                f"section {s.key} ({s.task}, {s.preset}): {len(runs)} run(s) ({', '.join(runs[:3])}"
                f"{', ...' if len(runs) > 3 else ''}) spent time on the Reducer's scoring forwards but do not count "
                f"their FLOPs: count them with python scripts/recount_flops.py {runs_dir} (adding --data-dir "
                f"{s.task}=FOLDER if its data is not at the task's default, and --plugin / --trust-remote-code as the "
                "runs used), then regenerate the leaderboard"
            )
    return out


def timed_in_two_places(secs: list[Section]) -> list[str]:
    """A line per run resumed on another device, CPU thread count or malloc setting than it started on
    (``leaderboard_render.timed_apart``): overhead.csv leaves its times out of its row's (they are two machines'
    together, under the last one's name), which without a word would read as a run never timed."""
    from harness.leaderboard_render import _timed_on, timed_apart

    out = []
    for s in secs:
        for row in s.rows:
            for r in row.runs:
                if before := timed_apart(r):
                    out.append(
                        f"section {s.key} ({s.task}, {s.preset}): run {r['run']['id']} trained part of its steps on "
                        f"{'; '.join(before)} and was resumed on {_timed_on(r)}: its train_s, hook_val_s and "
                        "tokens_per_s are the sessions' together, so overhead.csv leaves them out of its row's times "
                        "(train_s, hook_val_s, tokens_per_s, train_s_by_device) and its peak memory is the largest "
                        "of the sessions'; run it again with --force on one machine to time it"
                    )
    return out


def hook_flops_per_step(train: dict[str, Any]) -> int | None:
    """The FLOPs of a run's hook validation forwards (the Reducer's scoring rounds) per optimizer step, which
    ``flops_per_step`` leaves out: 0 for a run whose hooks ran none, None where they were not counted."""
    hooks = train.get("hook_val_flops") or {}
    if "per_step" in hooks:
        return round(hooks["per_step"])
    return 0 if not train.get("hook_val_s") else None  # not counted (an older record): none ran if no time went


def _task_files(task: str, records: list[dict[str, Any]], runs_dir: Path, out_dir: Path) -> list[Path]:
    """The task's own leaderboard files (``Task.leaderboard_files``, e.g. a contact sheet; none unregistered)."""
    return cls.leaderboard_files(records, runs_dir, out_dir) if (cls := _task(task)) else []


def newest_sections(secs: list[Section]) -> list[Section]:
    """Per (preset, protocol, model), the section holding the most recently created trained run: the one a
    plot shows (older settings stay in the CSVs; points of different settings on one plot read as a
    ranking). The zero-shot ``base`` joins every section of its settings, so a fresh ``base`` run picks
    none of them; a section without trained rows (a zero-shot run at another eval limit, or on data no trained
    run read) is shown only where its group has no trained section, by its own runs' newest."""
    newest: dict[tuple[str, str, str], tuple[bool, str, Section]] = {}
    for s in secs:
        trained = [row for row in s.rows if row.kind == "trained"]
        created = max((r["run"].get("created_at", "") for row in trained or s.rows for r in row.runs), default="")
        group = (s.preset, s.protocol, s.model)
        if group not in newest or (bool(trained), created) > newest[group][:2]:
            newest[group] = (bool(trained), created, s)
    return [s for _, _, s in newest.values()]
