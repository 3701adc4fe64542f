"""How the leaderboard is written out: the CSV tables (pandas frames; their columns are documented in
:mod:`harness.leaderboard`), ``leaderboard.md`` (its text helpers are shared with the HTML page; the per-task
plot is :mod:`harness.leaderboard_plot`). Everything here is a pure function of the sections :func:`harness.leaderboard.sections` builds."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from harness.accounting import REFERENCE_METHOD
from harness.leaderboard import (
    AVG,
    Cell,
    Row,
    Section,
    baseline_columns,
    hook_flops_per_step,
    not_above_baselines,
    run_hardware,
    seed_values,
)
from harness.leaderboard_sections import _column_scale
from harness.records import PERCENT
from harness.runner import BASELINE
from harness.stats import EPS, LEVEL, Estimate, holm


def _with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``p_holm`` on each comparison: Holm's adjusted p within its family, the section's comparisons against one
    reference (every row and benchmark, Avg included; the untested ones left out), empty where untested. Two
    references compared both ways (``lora - base`` and ``base - lora``) are one comparison: it is adjusted in the
    family of the reference it was drawn against (the later of ``REFERENCES``) and its mirror gets that p."""
    families: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        row["p_holm"] = ""
        if row["_p"] is not None and not row["_mirror"]:  # _p: the p unrounded (the table's keeps 4 digits)
            families.setdefault((row["section"], row["reference"]), []).append(row)
    for family in families.values():
        for row, adjusted in zip(family, holm([r["_p"] for r in family]), strict=True):
            row["p_holm"] = p_value(adjusted)
    drawn = {(r["section"], r["method"], r["reference"], r["benchmark"]): r["p_holm"] for r in rows if not r["_mirror"]}
    for row in rows:
        if row["_mirror"]:
            row["p_holm"] = drawn[(row["section"], row["reference"], row["method"], row["benchmark"])]
    return rows


def p_value(p: float) -> float:
    """A p-value as the CSVs write it: 4 significant digits, or as many more as keep it on its side of the ``*``
    rule's threshold (``ALPHA``; ``p_text``): from a review, a Monte Carlo p of 1000/20001 = 0.0499975 read 0.05
    beside ``significant`` True."""
    return float(p_text(p, 4))


def p_text(p: float, digits: int = 2) -> str:
    """A p-value at ``digits`` significant digits, or at as many more as it takes to stay on its side of the ``*``
    rule's threshold (``ALPHA``): ``.2g`` showed 0.0496 as "0.05" beside a ``*``."""
    for n in range(digits, 17):
        if (float(s := f"{p:.{n}g}") < ALPHA) == (p < ALPHA):
            return s
    return repr(p)


ALPHA = round(1 - LEVEL, 10)  # the test's level as the legend writes it, 0.05 (1 - 0.95 is 0.05000000000000004)


def _num(x: float | None) -> float | None:
    """Two decimals; two significant digits where two decimals would write a number that is not 0 as 0.0 (as
    ``fmt``: from a review, a 1-10 judge's difference of 0.004 read 0.0 in the CSVs, its sign and size lost)."""
    if x is None:
        return None
    decimals = 1 - math.floor(math.log10(abs(x))) if EPS < abs(x) < 0.005 else 2  # 0.004: 3, 0.00012: 5
    return round(x, decimals) + 0.0


def _score_columns(prefix: str, cell: Cell) -> dict[str, Any]:
    value: Any = "absent" if cell.absent else _num(cell.value)
    ci = cell.ci
    return {prefix: value, f"{prefix}_lo": _num(ci and ci.lo), f"{prefix}_hi": _num(ci and ci.hi)}


def frame_tables(secs: list[Section]) -> dict[str, pd.DataFrame]:
    """The CSV tables of :func:`tables` from already built sections (layout: the module docstring)."""
    accuracy: dict[str, list[dict[str, Any]]] = {}
    comparisons: dict[str, list[dict[str, Any]]] = {}
    per_seed: dict[str, list[dict[str, Any]]] = {}
    overhead: list[dict[str, Any]] = []
    for s in secs:
        benchmarks = [*s.benchmarks, AVG]
        for row in s.rows:
            out: dict[str, Any] = {"section": s.key, "preset": s.preset, "protocol": s.protocol, "model": s.model}
            out |= {"method": row.method, "kind": row.kind}
            for b in benchmarks:
                out |= _score_columns(b, row.cells[b])
                if b == AVG:
                    out["Avg_n"] = f"{row.avg_n}/{s.avg_of}"
            vs = row.vs.get(REFERENCE_METHOD, {})
            for b in benchmarks:
                d = vs.get(b)
                out |= {f"{b}_vs_lora": _num(d and d.value), f"{b}_vs_lora_lo": _num(d and d.lo)}
                out[f"{b}_vs_lora_hi"] = _num(d and d.hi)
            out["constant"] = " ".join(b for b in s.benchmarks if row.cells[b].constant)
            below = not_above_text(row, s, " ")
            out["not_above_baselines"] = None if below in ("", "–") else below  # the CSV's unknown: empty
            pct = row.percent_trainable
            out["Param %"] = None if pct is None else round(pct, 3)
            out |= {k: s.info[k] for k in ("template", "train_on_inputs", "steps", "eval_n")}
            if row.kind == "trained":  # the row's own runs (a section can hold rows trained for other lengths)
                out["steps"] = " ".join(map(str, sorted({r["train"]["steps"] for r in row.runs})))
            else:  # the zero-shot model trains none; majority and chance are not models
                out["steps"] = "0" if row.kind == "zero-shot" else ""
            out["settings"] = s.info.get("apart", "")
            hardware = run_hardware(row.runs) if row.runs else s.info["hardware"]  # majority/chance: the section's
            out |= {"seeds": row_seeds(row), "n_runs": len(row.runs), "hardware": hardware}
            accuracy.setdefault(s.task, []).append(out)
            for ref, diffs in row.vs.items():
                label = s.references.get(ref, ref)  # the row compared with, e.g. lora (trained_on=general)
                for b in benchmarks:
                    if (d := diffs.get(b)) is not None:
                        comparisons.setdefault(s.task, []).append(
                            {"task": s.task, "preset": s.preset, "protocol": s.protocol, "method": row.method}
                            | {"reference": label, "benchmark": b, "diff": _num(d.value), "ci_low": _num(d.lo)}
                            | {"ci_high": _num(d.hi), "p": "" if d.p is None else p_value(d.p)}
                            | {"significant": d.significant, "model": s.model, "section": s.key, "_p": d.p}
                            | {"seed_ranges_apart": row.apart.get(ref, {}).get(b, "")}
                            | {"_mirror": ref in row.mirrored}
                        )
            if row.kind == "trained":
                overhead.append(_overhead(s, row, out))
            for seed, run_id, values in seed_values(row, s.benchmarks, s.averaged or s.benchmarks):
                for b, v in values.items():
                    per_seed.setdefault(s.task, []).append(
                        {"section": s.key, "preset": s.preset, "protocol": s.protocol, "method": row.method}
                        | {"seed": seed, "run": run_id, "benchmark": b, "value": _num(v)}
                    )
    out_tables = {task: pd.DataFrame(rows) for task, rows in accuracy.items()}
    for task in accuracy:
        columns = (
            "task preset protocol method reference benchmark diff ci_low ci_high p p_holm significant "
            "seed_ranges_apart model section"
        )
        out_tables[f"{task}_comparisons"] = pd.DataFrame(_with_holm(comparisons.get(task, [])), columns=columns.split())
        columns = "section preset protocol method seed run benchmark value"
        out_tables[f"{task}_seeds"] = pd.DataFrame(per_seed.get(task, []), columns=columns.split())
    out_tables["overhead"] = pd.DataFrame(overhead)
    for column in ("flops_per_step", "hook_val_flops_per_step"):  # whole FLOPs, empty where not counted: a row
        if column in out_tables["overhead"]:  # not counted made the column float (617535995904.0, 2.0e11)
            out_tables["overhead"][column] = out_tables["overhead"][column].astype("Int64")
    return out_tables


def _one_device(runs: list[dict[str, Any]], key: str) -> float | None:
    runs = _timed_alone(runs)
    if not runs or len({_timed_on(r) for r in runs}) > 1 or any(key not in r["train"] for r in runs):
        return None  # several devices or malloc settings, records older than the key, or none timed on one
    return round(statistics.mean(r["train"][key] for r in runs), 1)


def _timed_alone(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs whose times pool: all but those resumed on another device than they started on (``timed_apart``)."""
    return [r for r in runs if not timed_apart(r)]


def timed_apart(record: dict[str, Any]) -> list[str]:
    """Where a resumed run trained steps before its last start, as ``_timed_on`` names them, other than where its
    record says it ran (``train.timed_on_before_resume``; another CPU thread count or malloc setting is another
    device here): its train_s, hook_val_s and tokens_per_s are those sessions' together, under this one's name, so
    they pool with no device's. Empty for a run that ran in one place (a record from before the field too)."""
    own = _timed_on(record)
    before = (record.get("train") or {}).get("timed_on_before_resume") or []
    return sorted({where for env in before if (where := _timed_on({"env": env})) != own})


def _timed_on(record: dict[str, Any]) -> str:
    """The device a run's times were measured on, with its CPU threads where a CPU ran it and the record says
    (CPU names are generic: a 2-thread and a 16-thread run of one "AMD EPYC" must not pool), and ``(malloc keeps
    freed memory)`` where the record names that setting (``harness.memory``: it changes a CPU step's time)."""
    env = record.get("env") or {}
    malloc = env.get("malloc") or {}
    threads = env.get("torch_threads") if env.get("device_type", "cpu") == "cpu" else None
    return (
        record["env"]["device"]
        + (f", {threads} threads" if threads else "")
        + (" (malloc keeps freed memory)" if malloc.get("mmap_threshold") else "")
    )


def _peak(mem: dict[str, Any]) -> float:
    return mem.get("peak_allocated_gb", mem.get("peak_rss_gb", 0.0))


def _memory_kind(record: dict[str, Any]) -> str:
    """How a run's peak was read: ``cuda_minus_baseline``; ``process_rss_hwm`` (the CPU's high-water mark); or
    ``process_rss`` (samples after each backward, which miss what a step freed before: low under glibc's default
    malloc, which hands large freed blocks back) with the malloc setting the record names (none: the default)."""
    mem = record["train"]["memory"]
    kind = mem.get("kind") or ("cuda_minus_baseline" if "peak_allocated_gb" in mem else "process_rss")
    if kind != "process_rss":
        return kind
    malloc = (record.get("env") or {}).get("malloc") or {}
    return f"process_rss (malloc {'keeps freed memory' if malloc.get('mmap_threshold') else 'default'})"


def _overhead(s: Section, row: Row, table_row: dict[str, Any]) -> dict[str, Any]:
    train, runs = row.runs[0]["train"], row.runs
    flops = train["flops_per_step"]
    kinds = sorted({_memory_kind(r) for r in runs})
    hook_flops = hook_flops_per_step(train)
    return {
        "task": s.task,
        "section": s.key,
        "method": row.method,
        "preset": s.preset,
        "protocol": s.protocol,
        "model": s.model,
        "trainable_params": train["trainable_params"],
        "param_%": round(train["percent_trainable"], 4),
        # the task's own trained tensors (a projector), not the method's; "" for an older record ("" keeps the ints)
        "task_trained_params": train.get("task_trained_params", ""),
        "params_updated_per_step": round(statistics.mean(r["train"]["params_updated_per_step"]["mean"] for r in runs)),
        # times are the device's: a row whose seeds ran on several CPUs (or malloc settings) gets none averaged, and a
        # run resumed on another device than it started on is in none of them (``timed_apart``)
        "train_s": _one_device(runs, "train_s"),
        "hook_val_s": _one_device(runs, "hook_val_s"),  # the Reducer's scoring rounds, apart from train_s
        "tokens_per_s": _one_device(runs, "tokens_per_s"),
        "throughput_unit": _throughput_unit(s.task, train),  # what tokens_per_s counts: images for diffusion
        "train_s_by_device": "; ".join(
            f"{d}: {statistics.mean(r['train']['train_s'] for r in _timed_alone(runs) if _timed_on(r) == d):.1f}"
            for d in sorted({_timed_on(r) for r in _timed_alone(runs)})
        ),
        "flops_per_step": row.flops_per_step,
        "adapter_flops_per_step": flops.get("adapter", flops.get("status", "")),
        "relative_flops": round(flops["relative_to_lora"], 4) if flops.get("relative_to_lora") else None,
        "hook_val_flops_per_step": hook_flops,
        "relative_flops_with_scoring": None if (w := row.relative_training_flops) is None else round(w, 4),
        # peaks read two ways do not compare: none for a row whose runs mix them (each kind's in the next column)
        "peak_mem_gb": round(max(_peak(r["train"]["memory"]) for r in runs), 3) if len(kinds) == 1 else None,
        "peak_mem_kind": "; ".join(kinds),
        "peak_mem_gb_by_kind": "; ".join(
            f"{k}: {max(_peak(r['train']['memory']) for r in runs if _memory_kind(r) == k):.3f}" for k in kinds
        ),
        "adapter_mb": round(train["adapter_file_bytes"] / 1e6, 3),
        "Avg": table_row[AVG],
        "Avg_n": table_row["Avg_n"],
        "seeds": table_row["seeds"],
        "hardware": table_row["hardware"],
    }


def _throughput_unit(task: str, train: dict[str, Any]) -> str:
    """The record's ``train.throughput_unit``; for older records, the registered task's (``tokens`` unknown)."""
    if unit := train.get("throughput_unit"):
        return str(unit)
    from harness.leaderboard import _task

    cls = _task(task)
    return getattr(cls, "throughput_unit", "tokens") if cls else "tokens"


def fmt(x: float, signed: bool = False) -> str:
    """One decimal; two significant digits where one decimal would print a number that is not 0 as 0.0 (a judge's
    1-10 difference of -0.045 read "0.0*": significant, its sign and size hidden); never "-0.0"."""
    decimals = 1 - math.floor(math.log10(abs(x))) if EPS < abs(x) < 0.05 else 1  # 0.045: 3, 0.0012: 4
    s = f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"
    return "0.0" if float(s) == 0 else s


def cell_text(cell: Cell) -> str:
    """``41.0 [38.2, 43.9]``; ``41.0 [–]`` without per-example data; ``absent``; ``–`` when unknown."""
    if cell.absent:
        return "absent"
    if cell.value is None:
        return "–"
    ci = f"[{fmt(cell.ci.lo)}, {fmt(cell.ci.hi)}]" if cell.ci else "[–]"
    return f"{fmt(cell.value)} {ci}" + (" (constant)" if cell.constant else "")


def diff_text(d: Estimate | None, apart: bool | None = None) -> str:
    """``+3.2*`` (interval excludes 0 and sign-flip p < 0.05), ``-0.4``, or ``–`` when not comparable; ``†``
    after it where the two rows' per-seed scores lie apart (``apart``: ``Row.apart``)."""
    return "–" if d is None else fmt(d.value, signed=True) + ("*" if d.significant else "") + ("†" if apart else "")


def param_text(row: Row) -> str:
    """Trainable parameters in % of the base model; ``–`` for the majority/chance baselines."""
    pct = row.percent_trainable
    return "–" if pct is None else f"{pct:.3f}"


MARKDOWN_SPECIAL = frozenset("\\`*<>[]")  # what a row label or title escapes (``md_text``), with ``_`` at a word's edge


def md_text(text: str) -> str:
    """``text`` as Markdown shows it literally: a row label or section title, which can hold a ``--targets`` regex
    (``.*\\.(q|v)_proj`` lost its backslash, ``(?P<attn>...)`` became a hidden HTML tag). ``_`` between two letters
    or digits stays (``lora_fa``: intraword, no emphasis in CommonMark and on GitHub), so labels without such
    characters read as before; not for score cells, whose ``*`` marks a significant difference."""
    out = []
    for i, ch in enumerate(text):
        inner = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        out.append("\\" + ch if ch in MARKDOWN_SPECIAL or (ch == "_" and not inner) else ch)
    return "".join(out)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table (no ``tabulate`` needed); ``|`` inside cells is escaped (other Markdown in a cell
    is its caller's to escape: ``md_text``)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def provenance(records: list[dict[str, Any]]) -> str:
    """One line: how many runs, on which hardware, with which software."""
    devices = sorted({r["env"]["device"] for r in records})
    versions = sorted({f"torch {r['env']['torch']}, transformers {r['env']['transformers']}" for r in records})
    return f"Runs: {len(records)}. Hardware: {'; '.join(devices)}. Software: {'; '.join(versions)}."


def section_title(s: Section) -> str:
    return f"{s.model} · preset {s.preset} · protocol {s.protocol}"


def section_info(s: Section) -> str:
    i = s.info
    return (
        f"Section {s.key}: steps {i['steps']}, seeds {i['seeds']}, {i['n_runs']} runs, template {i['template']}, "
        f"train_on_inputs {i['train_on_inputs']}, eval n {i['eval_n']}, hardware {i['hardware']}."
        + (f" Set apart from the other sections of this title by: {i['apart']}." if i.get("apart") else "")
        + (f" Avg covers {', '.join(s.averaged)} only." if s.averaged and s.averaged != s.benchmarks else "")
        + (f" Lower is better: {', '.join(low)} (not a percentage)." if (low := lower_is_better(s)) else "")
        + (f" Not percentages: {scales}." if (scales := scales_text(s)) else "")
    )


def scales_text(s: Section) -> str:
    """The section's columns whose per-example scores are on another scale than percent (their entries' ``scale``:
    the judge's 1–10, HPS v2's), grouped by it: ``judge_quality, judge_avg on 1 to 10; hps_v2 on -100 to 100``;
    '' where every column is a percentage (the legend reads cells as accuracy % unless the section line says)."""
    by_scale: dict[tuple[float, float], list[str]] = {}
    for b, scale in other_scales(s).items():
        by_scale.setdefault(scale, []).append(b)
    return "; ".join(f"{', '.join(cols)} on {lo:g} to {hi:g}" for (lo, hi), cols in by_scale.items())


def other_scales(s: Section) -> dict[str, tuple[float, float]]:
    """Per column not on percent, its scale: the first of its runs' entries (by run id) to name one, as the
    section's rows and comparisons read a column as scaled when any entry is (``_column_scale``)."""
    runs = sorted((r for row in s.rows for r in row.runs), key=lambda r: r["run"]["id"])
    return {b: scale for b in s.benchmarks if (scale := _column_scale(runs, b)) != PERCENT}


def lower_is_better(s: Section) -> list[str]:
    """The section's columns whose records say ``higher_is_better: false`` (diffusion's KID)."""
    return [
        b
        for b in s.benchmarks
        if any((r.get("eval") or {}).get(b, {}).get("higher_is_better") is False for row in s.rows for r in row.runs)
    ]


LEGEND = (
    "Cells: accuracy %, or the task's score where its section line says so [95% bootstrap interval over test "
    "examples, pooled over seeds; exact (Clopper-Pearson) "
    "where every example scores 0 or every one 100, and never narrower than that bound near an end]; `[–]`: the records "
    "hold no per-example scores. Avg: mean over the benchmarks with data (Avg n of the section's; `absent` "
    "never counts). `majority` and `chance` are computed from the answers, `base` is the zero-shot model. "
    "`(constant)`: >= 90% of a run's answers are one option. Differences to lora are paired on the same "
    "examples (between trained rows with different seeds: on the seeds both ran); `*`: the 95% interval "
    "excludes 0 and the paired sign-flip test (McNemar's exact test for right/wrong answers) gives p < 0.05 "
    "(against chance, an expected score, the test of guessing: each example right with its chance probability). "
    "`†`: the two rows' per-seed scores lie apart, every seed of one beyond every seed of the other (on the seeds "
    "compared; shown only where a trained row brings two or more of them: a row that does not train counts as one "
    "score, and one seed against one says nothing of the spread): a difference beyond the spread over training "
    "seeds, which the intervals do not resample. "
    "All paired comparisons, with their p and Holm's adjusted p within the section's comparisons against one "
    "reference (two references compared both ways counted once; the `*` is per comparison, uncorrected): "
    "`<task>_comparisons.csv`. "
    "`not above majority and chance`: the columns on which a model's paired comparison (the `*` rule) does not put it "
    "above both (its score there has not been shown to beat them; a column no baseline scores is not compared). "
    "A majority or chance row that does not score every averaged column has no Avg. Trained rows are listed by their Avg: where intervals "
    "overlap, or where rows pool different seeds (the seeds column), the order is not a ranking (read the paired "
    "differences)."
)


def row_seeds(row: Row) -> str:
    """The seeds a row pools ('' for the baselines computed from the answers): rows with other seeds do not rank
    against each other by their Avg; their paired differences are on the seeds both ran."""
    return " ".join(str(seed) for seed in sorted({run["run"]["config"]["seed"] for run in row.runs}))


def not_above_text(row: Row, s: Section, sep: str = ", ") -> str:
    """:func:`not_above_baselines` as a table shows it: the columns, 'none' where the row beats both
    everywhere, '' for a baseline row or a section without baselines, '–' for a row compared on no column (no
    score where a baseline has one: 'none' read as beating them everywhere)."""
    below = not_above_baselines(row, s)
    if below is None:
        return ""
    return sep.join(below) or ("none" if baseline_columns(row, s) else "–")


def missing_references(s: Section, secs: list[Section]) -> str:
    """A line naming the references a section lacks, so that a table without them is not read as having beaten
    them: no zero-shot run; no majority and chance rows (records that keep no per-example answers or baselines
    to compute them from, whether or not the task's other sections have them); '' if none is missing."""
    kinds = {r.kind for r in s.rows}
    has_baselines = any(r.kind == "baseline" for other in secs if other.task == s.task for r in other.rows)
    missing = ["no zero-shot (base) run"] if "zero-shot" not in kinds else []
    if has_baselines and "baseline" not in kinds:
        missing.append("no majority or chance row (its records keep no per-example answers to compute them from)")
    elif "baseline" not in kinds:  # no section of the task has them: say so too, or the table reads as complete
        missing.append(
            "no majority or chance row (none of this task's records keep per-example answers or baselines to "
            "compute them from: records from before the task recorded them, or a task without any)"
        )
    return f"Not in this section: {'; '.join(missing)}." if missing else ""


def _spread_table(s: Section) -> list[str]:
    """Markdown lines: per row with two or more seeds, min-max of its per-seed scores; none without such rows."""
    cols = [*s.benchmarks, AVG]
    rows = []
    for row in (r for r in s.rows if len({run["run"]["config"]["seed"] for run in r.runs}) > 1):
        per_seed = seed_values(row, s.benchmarks, s.averaged or s.benchmarks)
        cells = ["absent" if row.cells[b].absent else spread_text(per_seed, b) for b in cols]
        rows.append([md_text(row.method), " ".join(str(seed) for seed, _, _ in per_seed), *cells])
    if not rows:
        return []
    intro = "Spread over seeds (min–max of the per-seed scores; the intervals above resample examples, not seeds):"
    return [intro, "", markdown_table(["method", "seeds", *cols], rows), ""]


def spread_text(per_seed: list[tuple[int, str, dict[str, float]]], b: str) -> str:
    """``b``'s min–max over a row's per-seed scores (``seed_values``); where some of its seeds have no score there
    (a benchmark or judge that failed on a seed), the seeds that do: ``81.2 (seed 0 only)``, ``80.1–81.2 (seeds
    0 2)`` (from a review: a failed seed's ``81.2–81.2`` read as no spread over two seeds); ``–`` where none has."""
    vals = [(seed, v[b]) for seed, _, v in per_seed if b in v]
    if not vals:
        return "–"
    lo, hi = min(v for _, v in vals), max(v for _, v in vals)
    text = fmt(lo) if len(vals) == 1 else f"{fmt(lo)}–{fmt(hi)}"
    if len(vals) == len(per_seed):
        return text
    seeds = " ".join(str(seed) for seed, _ in vals)
    return f"{text} (seed {seeds} only)" if len(vals) == 1 else f"{text} (seeds {seeds})"


def markdown(secs: list[Section], overhead: pd.DataFrame, records: list[dict[str, Any]]) -> str:
    """``leaderboard.md``: per section the scores table and the paired differences to lora; then costs."""
    md = ["# Leaderboard", "", "Regenerated by `harness leaderboard` from the run records; do not edit by hand.", ""]
    md += [LEGEND, ""]
    for task in dict.fromkeys(s.task for s in secs):
        md += [f"## {task}", ""]
        for s in (s for s in secs if s.task == task):
            md += [f"### {md_text(section_title(s))}", "", section_info(s), ""]
            md += [line, ""] if (line := missing_references(s, secs)) else []
            header = ["method", *s.benchmarks, AVG, "Avg n", "Param %", "seeds"]
            rows = [
                [md_text(r.method), *(cell_text(r.cells[b]) for b in [*s.benchmarks, AVG]), f"{r.avg_n}/{s.avg_of}"]
                + [param_text(r), row_seeds(r)]
                for r in s.rows
            ]
            if any(not_above_baselines(r, s) is not None for r in s.rows):
                header.append("not above majority and chance")
                for r, cells in zip(s.rows, rows, strict=True):
                    cells.append(not_above_text(r, s))
            md += [markdown_table(header, rows), ""]
            md += _spread_table(s)
            for ref in (REFERENCE_METHOD, BASELINE):
                # every row against lora (baselines too); only the trained rows against base; a trained row that
                # shares no seed with lora is listed with "–" (a warning at the end of the page says why)
                compared = [
                    r
                    for r in s.rows
                    if (r.vs.get(ref) or ref in r.unpaired) and (ref == REFERENCE_METHOD or r.kind == "trained")
                ]
                if compared:
                    label = s.references.get(ref, ref)
                    md += [
                        f"Paired difference to {md_text(label)} (points; `*`: 95% interval excludes 0, p < 0.05; "
                        "`†`: the seed ranges lie apart):",
                        "",
                    ]
                    scored = [b for b in s.benchmarks if any(b in r.vs[ref] for r in compared)]
                    rows = [
                        [md_text(r.method)]
                        + [diff_text(r.vs[ref].get(b), r.apart.get(ref, {}).get(b)) for b in [*scored, AVG]]
                        for r in compared
                    ]
                    md += [markdown_table(["method", *scored, AVG], rows), ""]
    md += ["## overhead", ""]
    if overhead.empty:
        md += ["(no trained runs)", ""]
    else:
        cells = [["" if pd.isna(v) else str(v) for v in row] for row in overhead.itertuples(index=False)]
        labels = [i for i, c in enumerate(overhead.columns) if c in ("method", "model")]  # as the rows and titles
        cells = [[md_text(v) if i in labels else v for i, v in enumerate(row)] for row in cells]
        md += [markdown_table([str(c) for c in overhead.columns], cells), ""]
    md.append(provenance(records))
    return "\n".join(md) + "\n"
