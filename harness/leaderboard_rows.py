"""A leaderboard's rows (:mod:`harness.leaderboard` documents the columns): cells, rows and sections, the
majority and chance baselines, the paired comparisons with the references and whether the seeds' ranges lie apart."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.accounting import REFERENCE_METHOD
from harness.records import PERCENT, score_scale
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
        ci = estimate([scores[b] for b in scored], scores=[percent(b) for b in scored])  # each column its own
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
            # only between two rows that have an Avg: from a review, diffusion's majority and chance (fidelity
            # alone, no Avg cell) were compared on "Avg" with lora by their fidelity difference
            has_avg = row.cells[AVG].value is not None and ref.cells[AVG].value is not None
            if both and has_avg and all(b in same for b in both):
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


def hook_flops_per_step(train: dict[str, Any]) -> int | None:
    """The FLOPs of a run's hook validation forwards (the Reducer's scoring rounds) per optimizer step, which
    ``flops_per_step`` leaves out: 0 for a run whose hooks ran none, None where they were not counted."""
    hooks = train.get("hook_val_flops") or {}
    if "per_step" in hooks:
        return round(hooks["per_step"])
    return 0 if not train.get("hook_val_s") else None  # not counted (an older record): none ran if no time went
