"""The leaderboard's per-task plot (``<task>.png``): each newest section's Avg score against its trainable
parameters, with intervals and the baselines as lines, labelled with what made the points."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from harness.atomic import atomic_path
from harness.leaderboard import AVG, Section, newest_sections

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.text import Text

# the figure's size in inches: 4.2 in tall holds the axes under a one-line title with up to two lines of labels
# beneath (0.035 of its height each); each further line (of a title wrapped to fit, of labels) makes it taller by
# that line's height, not the axes smaller
FIG_W, FIG_H = 6.5, 4.2
LABEL_LINE_IN = 6 * 1.2 / 72  # a line of the 6-point labels under the plot (line spacing 1.2)
TITLE_LINE_IN = 10 * 1.2 / 72  # a line of the 10-point title


def plot(secs: list[Section], task: str, path: Path) -> Path:
    """Avg against trainable parameters, with the 95% interval as error bars; baselines as lines. Only the
    newest section of each preset, protocol and model (:func:`newest_sections`)."""
    import matplotlib.pyplot as plt

    fig = figure(secs, task)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def figure(secs: list[Section], task: str) -> Figure:
    """The plot's matplotlib figure, laid out (:func:`plot` saves it; the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties

    secs = newest_sections(secs)
    # every text that carries names from the records (a row label with a --targets regex ending in "$", a model
    # label, a plugin task's name) is drawn as written (parse_math=False): two "$" in it were parsed as mathtext,
    # which failed the leaderboard after its CSVs were written (or typeset the text between them)
    fig, ax = plt.subplots(figsize=(FIG_W, FIG_H))
    try:
        _draw(ax, secs)
        keys = ", ".join(s.key for s in secs)
        title = ax.set_title(f"{task}: Avg score vs parameters (newest section: {keys})", fontsize=10, parse_math=False)
        # what made the points, under the plot: a figure read apart from the page still says its model, steps,
        # hardware; wrapped to the figure's width (150 characters of most text, fewer of wide letters)
        small, width = FontProperties(size=6), fig.bbox.width * 0.98
        made = "\n".join(line for s in secs for line in _wrap(plot_label(s), 150, fig, small, width))
        made = fig.text(0.01, 0.005, made, fontsize=6, color="grey", va="bottom", ha="left", parse_math=False)
        _fit(fig, made)
        # the title is centred over the axes: several sections' keys (or a long task name) ran past the figure's
        # edges, so it wraps to the axes' width; the figure grows by the lines it took
        said, font = title.get_text(), title.get_fontproperties()
        if (axes := ax.get_window_extent().width) < _width(fig, font, said):
            title.set_text("\n".join(_wrap(said, len(said), fig, font, axes)))
            _fit(fig, made)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _draw(ax: Axes, secs: list[Section]) -> None:
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
    ax.grid(alpha=0.3)


def _fit(fig: Figure, made: Text) -> None:
    """Sizes the figure to its title's and labels' lines (``FIG_H`` up to a one-line title and two label lines) and
    lays it out with the labels in a band at its foot."""
    (ax,) = fig.axes
    labels, titles = 1 + made.get_text().count("\n"), 1 + ax.title.get_text().count("\n")
    more = LABEL_LINE_IN * max(0, labels - 2)
    height = FIG_H + more + TITLE_LINE_IN * (titles - 1)
    fig.set_size_inches(FIG_W, height)
    scale = FIG_H / height  # 1.0 at the base height: the layout is then the one it always was
    made.set_y(0.005 * scale)
    fig.tight_layout(rect=(0, 0.035 * min(labels, 2) * scale + more / height, 1, 1))


def _wrap(text: str, chars: int, fig: Figure, font: FontProperties, width: float) -> list[str]:
    """``text`` wrapped at ``chars`` characters, or fewer until each line is at most ``width`` pixels in ``font``."""
    while True:
        lines = textwrap.wrap(text, chars) or [""]
        widest = max(_width(fig, font, line) for line in lines)
        if widest <= width or chars == 1:
            return lines
        chars = max(1, min(chars - 1, int(chars * width / widest)))


def _width(fig: Figure, font: FontProperties, text: str) -> float:
    """``text``'s width in pixels as ``fig`` draws it in ``font`` (at the figure's resolution)."""
    return fig.canvas.get_renderer().get_text_width_height_descent(text, font, ismath=False)[0]


def plot_label(s: Section) -> str:
    """One line naming what made a section's points: model, preset and protocol, steps, seeds, hardware."""
    i = s.info
    return f"{s.model} · {s.preset}, {s.protocol} · steps {i['steps']} · seeds {i['seeds']} · {i['hardware']}"
