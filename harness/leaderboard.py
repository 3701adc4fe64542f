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

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

# ``X as X``: re-exported for the modules and tests that import it from here (the rows, sections and warnings
# live in leaderboard_rows, leaderboard_sections and leaderboard_checks)
from harness.accounting import REFERENCE_METHOD as REFERENCE_METHOD
from harness.atomic import atomic_path, remove_stale_temps, write_text
from harness.leaderboard_checks import SCORED_BY as SCORED_BY
from harness.leaderboard_checks import (
    mixed_base_params,
    mixed_flops_counters,
    mixed_scorers,
    other_method_versions,
    other_plugin_code,
    other_task_versions,
    timed_in_two_places,
    uncounted_hook_flops,
    unpaired_examples,
    unpaired_seeds,
)
from harness.leaderboard_rows import AVG as AVG
from harness.leaderboard_rows import BASELINES as BASELINES
from harness.leaderboard_rows import REFERENCES as REFERENCES
from harness.leaderboard_rows import Cell as Cell
from harness.leaderboard_rows import Row as Row
from harness.leaderboard_rows import Section
from harness.leaderboard_rows import _run_row as _run_row
from harness.leaderboard_rows import baseline_columns as baseline_columns
from harness.leaderboard_rows import hook_flops_per_step as hook_flops_per_step
from harness.leaderboard_rows import not_above_baselines as not_above_baselines
from harness.leaderboard_rows import seed_ranges_apart as seed_ranges_apart
from harness.leaderboard_rows import seed_values as seed_values
from harness.leaderboard_sections import (
    MODEL,
    _by_data,
    _data_apart,
    _fits,
    _flat,
    _labels,
    _newest_per_seed,
    _row_key,
    _section,
    _set_apart,
    _settings,
    _task,
    _title,
    _trains,
    device_kind,
    trained_on_device,
)
from harness.leaderboard_sections import SHA256 as SHA256
from harness.leaderboard_sections import TRAIN as TRAIN
from harness.leaderboard_sections import _averaged as _averaged
from harness.leaderboard_sections import _columns as _columns
from harness.leaderboard_sections import _digests as _digests
from harness.leaderboard_sections import _rank as _rank
from harness.leaderboard_sections import _unregistered as _unregistered
from harness.leaderboard_sections import run_hardware as run_hardware
from harness.records import check_success, config_hash, find_records, pending_swaps, read_record
from harness.runner import BASELINE


def load_records(runs_dir: Path) -> list[dict[str, Any]]:
    """The successful records under ``runs_dir``; unreadable ones, and run folders the machine cannot enter
    (``find_records``), are skipped with a warning naming each; ``ValueError`` where ``runs_dir`` cannot be read."""
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


def sections(records: list[dict[str, Any]]) -> list[Section]:
    """Every task's comparable sections, sorted by task, preset, protocol, model. A row counts one run per
    seed (``_newest_per_seed``). Runs at the same settings whose data differ (``_digests``: a test or training
    file's sha256) are other sections, not seeds of one row (pooled, their per-example scores would not pair), and
    so are runs of one ``--model`` folder whose files differ (``_model_digests``: its weights replaced between
    runs); the zero-shot ``base`` joins those whose data and model its own does not contradict."""
    by_settings: dict[tuple[str, str], list[dict[str, Any]]] = {}
    zero_shot: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r["run"]["id"]):
        common, train = _settings(record)
        if record["run"]["config"]["method"] != BASELINE:
            by_settings.setdefault((common, train), []).append(record)
        else:  # training settings do not change a zero-shot run: one row over them all, on one kind of device (a
            zero_shot.setdefault((common, device_kind(record)), []).append(record)  # GPU's bf16 is another run)
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
    for (common, device), runs in zero_shot.items():
        for digests, same in _by_data(runs):
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for record in sorted(same, key=lambda r: r["run"]["id"]):
                groups.setdefault(_row_key(record), []).append(record)
            labels = _labels(sorted(groups))
            groups = {key: _newest_per_seed(g, duplicate=labels[key]) for key, g in groups.items()}
            # a later group (other data or model files) that fits a section the oldest joined already makes one
            # of its own: it would replace that base row
            targets = [
                k
                for k in targets_of
                if k[0] == common and trained_on_device(k[1]) == device and _fits(digests, data[k]) and k not in joined
            ]
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
    # a section of zero-shot runs only is not set apart by training settings it never read (``_set_apart``); the kind
    # of device is every section's, a zero-shot one's too (a re-review: a GPU base kept from a CPU section by it
    # was set apart by nothing said)
    settings = [
        _flat(
            json.loads(k[0])
            | ({"train": {t: v for t, v in json.loads(k[1]).items() if t != "device_type"}} if _trains(s) else {})
            | {"device_type": trained_on_device(k[1])}
            | said
        )
        for s, k, said in zip(out, trained, apart, strict=True)
    ]
    _set_apart(out, settings)
    return sorted(out, key=lambda s: (s.task, s.preset, s.protocol, s.model, s.key))


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
    from harness.leaderboard_plot import plot
    from harness.leaderboard_render import frame_tables, markdown, md_text, provenance

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
    mixed += unpaired_examples(secs) + timed_in_two_places(secs) + other_plugin_code(secs)
    for line in mixed:
        print(f"warning: {line}", file=sys.stderr)
    notes = "".join(f"\n**Warning:** {md_text(line)}\n" for line in mixed)  # it names row labels
    write_text(out_dir / "leaderboard.md", markdown(secs, frames["overhead"], records) + notes)
    write_text(out_dir / "leaderboard.html", html_page(secs, provenance(records), mixed))
    for line in leftover_files(out_dir, {s.task for s in secs}, runs_dir):
        print(f"warning: {line}", file=sys.stderr)
    return [*written, out_dir / "leaderboard.md", out_dir / "leaderboard.html"]


STALE_TEMP_S = 60.0  # a temp file in the leaderboard's folder untouched this long: a killed writer's, not live
# a task's leaderboard files; "{task}_samples_*.png": one per preset, a task's own (the diffusion contact sheets,
# whose sheets of presets without records the task names itself where it has records)
TASK_FILES = ("{task}.csv", "{task}_comparisons.csv", "{task}_seeds.csv", "{task}.png", "{task}_samples_*.png")


def leftover_files(out_dir: Path, tasks: set[str], runs_dir: Path) -> list[str]:
    """A line naming the leaderboard files (``TASK_FILES``) in ``out_dir`` of registered tasks other than ``tasks``
    (those rebuilt): left from an earlier leaderboard of other records, beside pages that no longer show them.
    They are not deleted (the folder may hold them on purpose)."""
    from harness.registry import TASKS

    old = [
        path.name
        for task in TASKS.names()
        if task not in tasks
        for pattern in TASK_FILES
        for path in sorted(out_dir.glob(pattern.format(task=task)))  # a task name is an identifier: no glob in it
        if path.is_file()
    ]
    if not old:
        return []
    return [
        f"{out_dir} still holds {', '.join(old)} from an earlier leaderboard: the records under {runs_dir} have "
        "no run of their task, so leaderboard.md and leaderboard.html do not show them; delete them, or rebuild "
        "from a runs folder that holds those runs too"
    ]


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
