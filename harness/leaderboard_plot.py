"""The leaderboard's per-task plot (``<task>.png``): each newest section's Avg score against its trainable
parameters, with intervals and the baselines as lines, labelled with what made the points."""

from __future__ import annotations

import textwrap
from pathlib import Path

from harness.atomic import atomic_path
from harness.leaderboard import AVG, Section, newest_sections


def plot(secs: list[Section], task: str, path: Path) -> Path:
    """Avg against trainable parameters, with the 95% interval as error bars; baselines as lines. Only the
    newest section of each preset, protocol and model (:func:`newest_sections`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = newest_sections(secs)
    # every text that carries names from the records (a row label with a --targets regex ending in "$", a model
    # label, a plugin task's name) is drawn as written (parse_math=False): two "$" in it were parsed as mathtext,
    # which failed the leaderboard after its CSVs were written (or typeset the text between them)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    models = len({s.model for s in secs}) > 1  # sections of two models at one preset and protocol: name the model
    for s in secs:
        suffix = f" ({s.preset}, {s.protocol}{f', {s.model}' if models else ''})" if len(secs) > 1 else ""
        for row in s.rows:
            avg = row.cells[AVG]
            if avg.value is None:
                continue
            if row.kind == "baseline":
                ax.axhline(avg.value, linestyle="--", linewidth=0.8, color="grey")
                label, where = row.method + suffix, ax.get_yaxis_transform()  # x in axes units, y in data
                ax.text(
                    0.01, avg.value, label, transform=where, fontsize=7, color="grey", va="bottom", parse_math=False
                )
                continue
            x = row.percent_trainable or 0.0
            yerr = [[avg.value - avg.ci.lo], [avg.ci.hi - avg.value]] if avg.ci else None
            ax.errorbar(x, avg.value, yerr=yerr, fmt="o", capsize=3, markersize=4)
            ax.annotate(
                row.method + suffix,
                (x, avg.value),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
                parse_math=False,
            )
    ax.set_xlabel("trainable parameters (% of base model)")
    ax.set_ylabel("Avg score (%), 95% interval")
    keys = ", ".join(s.key for s in secs)
    ax.set_title(f"{task}: Avg score vs parameters (newest section: {keys})", fontsize=10, parse_math=False)
    ax.grid(alpha=0.3)
    # what made the points, under the plot: a figure read apart from the page still says its model, steps, hardware
    made = "\n".join(line for s in secs for line in textwrap.wrap(plot_label(s), 150))
    fig.text(0.01, 0.005, made, fontsize=6, color="grey", va="bottom", ha="left", parse_math=False)
    try:
        fig.tight_layout(rect=(0, 0.035 * (1 + made.count("\n")), 1, 1))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def plot_label(s: Section) -> str:
    """One line naming what made a section's points: model, preset and protocol, steps, seeds, hardware."""
    i = s.info
    return f"{s.model} · {s.preset}, {s.protocol} · steps {i['steps']} · seeds {i['seeds']} · {i['hardware']}"
