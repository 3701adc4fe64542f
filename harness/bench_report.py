"""The rows ``harness bench`` reports, related to each other (ratios to the floor, to peft's same method and
to a method at its defaults, paired by round, with bootstrap intervals), and the files it writes: ``bench.csv``,
``bench.md``, ``bench.json`` and ``bench.png``."""

from __future__ import annotations

import csv
import io
import statistics
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from harness.atomic import atomic_path, write_json, write_text
from harness.stats import MEDIAN_INTERVAL_FROM, median_interval

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

FLOOR = "floor"


def paired_ratios(row: dict, floor: dict) -> list[float]:
    """Each round's time of ``row`` (plus its Reducer's scoring round of that round, per step) over ``floor``'s (plus
    its own: none for the floor itself) in the same round."""
    pairs = zip(row["round_s"], hook_rounds(row), floor["round_s"], hook_rounds(floor), strict=True)
    return [(w + hook) / (f + floor_hook) for w, hook, f, floor_hook in pairs]


def hook_rounds(row: dict) -> list[float]:
    """A row's scoring time per step in each round: as timed in that round (``hook_round_s``); in a report written
    before those were kept, the median (``hook_s``) in every round, as its tables were made (a review: the median in
    every round left the scoring's spread out of the paired interval)."""
    return row.get("hook_round_s") or [row.get("hook_s", 0.0)] * len(row["round_s"])


def default_row(row: dict, rows: list[dict]) -> dict | None:
    """For an ``--also`` variant's row, the row of the same method at its defaults (named when it was built)."""
    return next((r for r in rows if r["contender"] == row["baseline"]), None) if row.get("baseline") else None


def cpu_ratio(row: dict, floor: dict) -> float | None:
    """Process CPU seconds over the floor's, the Reducer's scoring rounds in CPU seconds too; ``None`` for a row
    of an older report that timed its rounds in wall seconds only (adding those to CPU seconds mixed units)."""
    if row["hook_s"] and "hook_cpu_s" not in row:
        return None
    return (row["cpu_s"] + row.get("hook_cpu_s", 0.0)) / floor["cpu_s"]


def relate(rows: list[dict]) -> list[dict]:
    """Totals (step + the Reducer's rounds), ratios to the floor and to peft's same method, the Reducer's
    savings against the same method with the Reducer off, and an ``--also`` variant's paired ratio to the
    same method at its defaults."""
    for r in rows:
        r["total_s"] = r["step_s"] + r["hook_s"]
        known = r["gflops"] is not None and r["hook_gflops"] is not None
        r["total_gflops"] = r["gflops"] + r["hook_gflops"] if known else None
    floor = next(r for r in rows if r["source"] == FLOOR)
    peft = {r["method"]: r for r in rows if r["source"] == "peft"}
    # the Reducer against the same method with it off on the same path (--reference times both paths) at the same
    # options: an --also row keeps the Reducer label of the row it changes, so it pairs only with an off row of its
    # own option (else its "saving" would be the option's effect too, and an off one would replace the defaults')
    off = {(r["method"], r.get("fast_path"), r["variant"]): r for r in rows if r["reducer"] == "off"}
    for r in rows:
        r["x_floor"] = r["total_s"] / floor["step_s"]
        # paired: each round's time over the floor's in the same round (load that drifts falls on both),
        # the median, its 95% bootstrap interval and the range over rounds; steadier than the ratio of medians
        paired = paired_ratios(r, floor)
        r["x_floor_paired"], r["x_floor_paired_min"], r["x_floor_paired_max"] = (
            statistics.median(paired),
            min(paired),
            max(paired),
        )
        r["x_floor_paired_lo"], r["x_floor_paired_hi"] = median_interval(paired)
        r["x_floor_step"] = r["step_s"] / floor["step_s"]  # without the Reducer's scoring rounds
        r["x_floor_cpu"] = cpu_ratio(r, floor)
        mate = peft.get(r["method"]) if r["source"] == "ours" and not r["reducer"] and not r["variant"] else None
        r["x_peft"] = r["total_s"] / mate["total_s"] if mate else None
        flops = r["total_gflops"] is not None and floor["total_gflops"]
        r["flops_x_floor"] = r["total_gflops"] / floor["total_gflops"] if flops else None
        ref = off.get((r["method"], r.get("fast_path"), r["variant"])) if r["reducer"] not in ("", "off") else None
        r["reducer_saves_s"] = ref["total_s"] - r["total_s"] if ref else None
        flops = ref and r["total_gflops"] is not None and ref["total_gflops"] is not None
        r["reducer_saves_gflops"] = ref["total_gflops"] - r["total_gflops"] if flops else None
        r["x_default_paired"] = r["x_default_paired_lo"] = r["x_default_paired_hi"] = None
        if (default := default_row(r, rows)) is not None:
            paired = paired_ratios(r, default)
            r["x_default_paired"] = statistics.median(paired)
            r["x_default_paired_lo"], r["x_default_paired_hi"] = median_interval(paired)
    return rows


COLUMNS = [
    "kind", "contender", "source", "method", "reducer", "fast_path", "variant", "baseline", "step_s", "step_min_s", "step_max_s", "cpu_s", "hook_s",
    "hook_cpu_s",
    "total_s", "x_floor", "x_floor_paired", "x_floor_paired_lo", "x_floor_paired_hi", "x_floor_paired_min",
    "x_floor_paired_max", "x_floor_step",
    "x_floor_cpu", "x_peft", "peak_mb", "state_mb", "gflops", "hook_gflops", "total_gflops",
    "flops_x_floor", "reducer_saves_s", "reducer_saves_gflops", "x_default_paired", "x_default_paired_lo",
    "x_default_paired_hi", "examples", "ms_per_example", "rounds",
]  # fmt: skip


def portable(config: dict) -> dict:
    """The config as the report keeps it: folders by name only (no machine paths in committed files)."""
    return {k: Path(v).name if k in ("data_dir", "out") and v else v for k, v in config.items()}


def csv_text(report: dict) -> str:
    """``bench.csv``; rows of older reports get the columns added since, from their round times."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    train = [r for r in report["rows"] if r["kind"] == "train"]
    floor = next((r for r in train if r["source"] == FLOOR), None)
    for row in report["rows"]:
        if row["kind"] == "train" and floor is not None:
            row = {**row, "x_floor_cpu": cpu_ratio(row, floor)}
            if "x_floor_paired_lo" not in row:
                row["x_floor_paired_lo"], row["x_floor_paired_hi"] = median_interval(paired_ratios(row, floor))
        writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def write_outputs(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "bench.csv", csv_text(report))
    write_text(out / "bench.md", markdown(report))
    write_json(out / "bench.json", report)
    return [out / "bench.csv", out / "bench.md", out / "bench.json", _plot(report, out / "bench.png")]


def _paths(train: list[dict]) -> str:
    """What the header says about the path each contender was timed on (the table's rows do not)."""
    ours = [r for r in train if r["source"] == "ours"]
    out = ""
    if ours:
        out += (
            " Ours: timed on the adapters' fast path (what `harness run --fast-path` trains with; `harness run` "
            "trains on the reference path), a `reference` row on the reference path"
        )
        if any("fast_path" not in r for r in ours):
            out += " (older reports do not record it per row: the bench has timed ours so since it was written)"
        slow = [
            r["contender"] for r in ours if r.get("fast_path") is False and not r["contender"].endswith(" reference")
        ]
        out += (f"; {', '.join(slow)}: no fast path" if slow else "") + "."
    if any(r["source"] == "peft" and r["method"] == "lora_fa" for r in train):
        out += (
            " peft lora_fa: peft's own LoRA-FA optimizer (`create_lorafa_optimizer`: a projected gradient with a "
            "pseudo-inverse per layer and a Python-loop Adam), not the fused AdamW the other contenders step with."
        )
    return out


def _replaced(cfg: dict) -> str:
    """What the header says of the Reducer options given that a ``--reducer`` variant's rows did not time (the
    config's ``options`` records them as given; reports written before ``options_replaced`` say nothing)."""
    replaced = cfg.get("options_replaced") or {}
    if not replaced:
        return ""
    said = "; ".join(f"`{option}` in {', '.join(rows)}" for option, rows in replaced.items())
    return (
        f" Options not timed as given: {said} (each of those rows times the Reducer its `--reducer` variant names; "
        "`--reducer default` times the options as given)."
    )


def markdown(report: dict) -> str:
    """The table for the README, headed by the machine and settings that produced it."""
    env, cfg, adapter = report["environment"], report["config"], report.get("adapter")
    train = [r for r in report["rows"] if r["kind"] == "train"]
    floor = next(r for r in train if r["source"] == FLOOR)
    rounds = len(floor["round_s"])  # the rounds the paired ratios are taken over
    # below MEDIAN_INTERVAL_FROM rounds the bootstrap's interval is their min-max, printed beside it: no interval is
    # given then (a review: 3 rounds printed their min-max as a "95% bootstrap interval", which holds the median 75%)
    interval = rounds >= MEDIAN_INTERVAL_FROM
    paired_said, paired_note = "the median (95% bootstrap interval, rounds resampled)", ""
    if not interval:
        paired_said = "the median"
        paired_note = (
            f" (no 95% interval from {rounds} round{'s' * (rounds != 1)}: a bootstrap's is their min-max, which holds "
            f"the median {1 - 2 ** (1 - rounds):.0%} of the time; {MEDIAN_INTERVAL_FROM} or more rounds give one)"
        )
    settings = ""
    if adapter:  # reports written before the adapter settings were recorded have none
        targets = adapter["targets"] if isinstance(adapter["targets"], str) else ",".join(adapter["targets"])
        settings = (
            f"r={adapter['r']}, alpha {adapter['alpha']:g}, dropout {adapter['dropout']:g} on {targets} "
            f"({adapter['heads']} heads for the multi-head methods), "
        )
    lines = [
        f"{report['model']}, {settings}batch {cfg['batch_size']} x {cfg['seq_len']} tokens, on {machine(env)}; "
        f"median of {cfg['rounds']} alternating rounds "
        "[min-max]. total and GFLOPs: the step plus the Reducer's scoring rounds per step (rollouts / interval); "
        f"x floor, x peft: total time over theirs (paired: {paired_said} [min-max] over rounds of each round's time "
        f"over the floor's in the same round{paired_note}; step only: without the scoring rounds; CPU time: process "
        "CPU seconds, steadier on a loaded machine, "
        "inflated by spinning threads when threads > 1; the Reducer's rounds in CPU seconds too, - where an older "
        "report timed them in wall seconds only); Reducer saves: against the method with it off."
        + _paths(train)
        + _replaced(cfg),
        "",
        f"| contender | step s [min-max] | total s | x floor | x floor, paired{' (95%)' * interval} [min-max] "
        "| x floor, step only "
        "| x peft "
        "| x floor, CPU time | peak MB | state MB | GFLOPs | FLOPs x floor | Reducer saves s / GFLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in train:
        lo, hi = median_interval(paired_ratios(r, floor))  # from the round times: older reports get it too
        saves = "" if r["reducer_saves_s"] is None else f"{r['reducer_saves_s']:+.3f} / "
        saves += _num(r["reducer_saves_gflops"], "+.4g") if saves else ""
        lines.append(
            f"| {r['contender']} | {r['step_s']:.3f} [{r['step_min_s']:.3f}-{r['step_max_s']:.3f}] "
            f"| {r['total_s']:.3f} | {r['x_floor']:.3f} "
            f"| {r['x_floor_paired']:.3f} {f'({lo:.3f}-{hi:.3f}) ' * interval}"
            f"[{r['x_floor_paired_min']:.3f}-{r['x_floor_paired_max']:.3f}] "
            f"| {r['x_floor_step']:.3f} | {_num(r['x_peft'], '.3f')} "
            f"| {_num(cpu_ratio(r, floor), '.3f')} "
            f"| {r['peak_mb']:.0f} | {r['state_mb']:.1f} | {_num(r['total_gflops'], '.4g')} "
            f"| {_num(r['flops_x_floor'], '.3f')} | {saves} |"
        )
    variants = [(r, d) for r in train if (d := default_row(r, train)) is not None]
    if variants:
        lines += [
            "",
            "Option variants (`--also`), each round's time over the same method's at its defaults in the same "
            f"round: median{' (95% bootstrap interval)' * interval} [min-max]:",
            "",
        ]
    for r, d in variants:
        paired = paired_ratios(r, d)
        lo, hi = median_interval(paired)
        lines.append(
            f"- {r['contender']}: {statistics.median(paired):.3f} x {d['contender']} "
            f"{f'({lo:.3f}-{hi:.3f}) ' * interval}"
            f"[{min(paired):.3f}-{max(paired):.3f}]"
        )
    scores = [r for r in report["rows"] if r["kind"] == "score"]
    lines += (
        ["", "| scoring protocol | s [min-max] | examples | ms per example |", "|---|---|---|---|"] if scores else []
    )
    for r in scores:
        lines.append(
            f"| {r['contender']} | {r['step_s']:.3f} [{r['step_min_s']:.3f}-{r['step_max_s']:.3f}] "
            f"| {r['examples']} | {_num(r['ms_per_example'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> Path:
    """``bench.png``: the figure of ``figure``, saved."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def machine(env: dict) -> str:
    """The machine of ``harness.accounting.environment()`` (with ``torch_threads``) as bench.md's header and the
    timing scripts name it: ``AMD EPYC (2 threads, torch 2.13.0+cpu; malloc keeps freed memory)``."""
    malloc = "; malloc keeps freed memory" if env.get("malloc") else ""
    return f"{env['device']} ({env['torch_threads']} threads, torch {env['torch']}{malloc})"


def step_machine(model: torch.nn.Module, device: torch.device) -> str:
    """What the timing scripts' numbers were measured on, as bench.md's header names it: the weights' dtype (bf16
    autocast on a GPU, as the step runs) and ``machine``: ``float32, on AMD EPYC (2 threads, torch ...)``."""
    from harness.accounting import environment

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    autocast = " under bf16 autocast" if device.type == "cuda" else ""
    return f"{dtype}{autocast}, on {machine(environment())}"


def plot_title(report: dict) -> str:
    """``bench.png``'s title: the model, shape, machine and adapter settings bench.md's header gives, and the
    model's dtype (older reports did not keep it)."""
    env, cfg, adapter = report["environment"], report["config"], report.get("adapter")
    dtype = f", {report['model_dtype']}" if report.get("model_dtype") else ""
    settings = f", r={adapter['r']}, dropout {adapter['dropout']:g}" if adapter else ""
    lines = (
        f"{report['model']}: batch {cfg['batch_size']} x {cfg['seq_len']} tokens{dtype}{settings}",
        f"on {env['device']} ({env['torch_threads']} threads, torch {env['torch']}); median of {cfg['rounds']} rounds",
    )
    # wrapped to what 8-point text fits across the narrower (one-panel, 7-inch) figure: a long model name or path
    # ran past both edges
    return "\n".join(textwrap.fill(line, 110, break_on_hyphens=False) for line in lines)


def figure(report: dict) -> Figure:
    """Step time over the floor per contender (the min-max of its rounds as error bars); scoring seconds per protocol
    (the min-max bench.md's scoring table gives as error bars). The caller closes it (``plt.close``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in report["rows"] if r["kind"] == "train"]
    scores = [r for r in report["rows"] if r["kind"] == "score"]
    # constrained layout keeps room for the title over the panels however many rows (tight_layout let a tall
    # figure's title run into the plot)
    fig, axes = plt.subplots(
        1, 2 if scores else 1, figsize=(10 if scores else 7, 0.3 * len(train) + 2.0), layout="constrained"
    )
    ax = axes[0] if scores else axes
    floor = next(r["step_s"] for r in train if r["source"] == FLOOR)
    y, ratios = list(range(len(train)))[::-1], [r["x_floor"] for r in train]
    # the bar's own quantity in each round: the step plus that round's scoring per step, over the floor's median (a
    # review: a Reducer row's whiskers were its step's spread about the total, matching no measured round)
    totals = [[w + hook for w, hook in zip(r["round_s"], hook_rounds(r), strict=True)] for r in train]
    below = [max(0.0, x - min(t) / floor) for x, t in zip(ratios, totals, strict=True)]
    above = [max(0.0, max(t) / floor - x) for x, t in zip(ratios, totals, strict=True)]
    colors = [{"floor": "grey", "ours": "tab:blue", "peft": "tab:orange"}[r["source"]] for r in train]
    ax.barh(y, ratios, color=colors, alpha=0.8)
    ax.errorbar(ratios, y, xerr=[below, above], fmt="none", ecolor="black", capsize=2, linewidth=0.8)
    for x in (1.10, 1.15):
        ax.axvline(x, linestyle="--", linewidth=0.7, color="grey")
    ax.set_yticks(y, [r["contender"] for r in train], fontsize=7)
    ax.set_xlim(left=min(0.9, *(x - d for x, d in zip(ratios, below, strict=True))) - 0.02)
    # two short lines at 8 points: one line ran past a 7-inch figure, and past the left panel into the scoring one
    ax.set_xlabel(
        "step time over the frozen-base floor's, the Reducer's\nscoring rounds included (median; min-max over rounds)"
    )
    ax.xaxis.label.set_fontsize(8)
    fig.suptitle(plot_title(report), fontsize=8)
    if scores:
        seconds = [r["step_s"] for r in scores]
        spread = [[r["step_s"] - r["step_min_s"] for r in scores], [r["step_max_s"] - r["step_s"] for r in scores]]
        axes[1].bar([r["contender"] for r in scores], seconds, color="tab:green", alpha=0.8)
        # the spread bench.md's scoring table prints beside each median (the panel had none)
        axes[1].errorbar(range(len(scores)), seconds, yerr=spread, fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        axes[1].set_ylabel(f"scoring seconds ({scores[0]['examples']} examples; median, min-max)")
    return fig


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)
