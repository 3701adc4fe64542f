"""``leaderboard.html``: the leaderboard as one self-contained page (inline CSS, JS and SVG; no network).

Per section (see :mod:`harness.leaderboard`): a table whose cells show the accuracy, its 95% interval,
the paired difference to ``lora`` (``*`` when its interval excludes 0 and p < 0.05) and a ``constant`` flag; baseline
rows (``majority``, ``chance``) and the zero-shot ``base`` row are styled apart. Clicking a column header
sorts the rows by that column (numbers by value, unknown last; a second click reverses). Below the table
two SVG plots: Avg against trainable parameters and against training FLOPs per step x lora's, error bars = the
95% interval, the Pareto front (no other row is both cheaper and more accurate) joined by a line.
The page is a pure function of the sections: no clock, no random ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from harness.leaderboard import AVG, REFERENCE_METHOD, REFERENCES, Cell, Row, Section, not_above_baselines
from harness.leaderboard_render import (
    LEGEND,
    cell_text,
    diff_text,
    fmt,
    missing_references,
    not_above_text,
    p_text,
    param_text,
    row_seeds,
    section_info,
    section_title,
)
from harness.stats import EPS

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
 padding:0 16px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:28px 0 4px;border-bottom:1px solid #d5d9e0}
h3{font-size:15px;margin:18px 0 2px}p.info,p.legend,footer{color:#4a5263;font-size:12.5px;margin:4px 0 10px}
p.warn{color:#8a4b00;font-size:12.5px;margin:4px 0 10px}
.scroll{overflow-x:auto}table.board{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.board th{background:#eef1f6;cursor:pointer;user-select:none;padding:6px 8px;text-align:right;
 border-bottom:2px solid #c3c9d4;white-space:nowrap}
table.board th:first-child,table.board td:first-child{text-align:left}
table.board th[aria-sort=ascending]::after{content:" \\25B2"}table.board th[aria-sort=descending]::after{content:" \\25BC"}
table.board td{padding:4px 8px;text-align:right;border-bottom:1px solid #e4e7ec;vertical-align:top;white-space:nowrap}
td .v{font-weight:600}td small{display:block;color:#6b7385;font-size:11px}
td .d{display:block;font-size:11px;color:#6b7385}td .d.up{color:#17803d;font-weight:600}
td .d.down{color:#b42318;font-weight:600}td .flag{display:inline-block;margin-left:4px;padding:0 4px;
 border-radius:3px;background:#fde7c7;color:#8a4b00;font-size:10.5px}td.absent{color:#9aa1ae;font-style:italic}
tr.zero-shot td{background:#f4f6fb}tr.baseline td{background:#f7f7f7;color:#5d6472;font-style:italic}
tr.baseline td:first-child::after{content:" baseline";font-size:10px;color:#9aa1ae;margin-left:4px}
tr.reference td:first-child{font-weight:700}.plots{display:flex;flex-wrap:wrap;gap:16px;margin:10px 0 4px}
svg{background:#fcfcfd;border:1px solid #e4e7ec}svg text{font:11px system-ui,sans-serif;fill:#1d2330}
svg .axis{stroke:#8a93a3}svg .grid{stroke:#eceef2}svg .bar{stroke:#3b5bdb}svg .pt{fill:#fff;stroke:#3b5bdb;
 stroke-width:1.5}svg .pt.front{fill:#3b5bdb}svg .front-line{fill:none;stroke:#3b5bdb;stroke-dasharray:4 3}
svg .base-line{stroke:#9aa1ae;stroke-dasharray:5 4}svg text.muted{fill:#7a8292}
"""

JS = """
document.querySelectorAll("table.board th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var text = th.dataset.type === "text", now = th.getAttribute("aria-sort");
    var dir = now ? (now === "ascending" ? "descending" : "ascending") : (text ? "ascending" : "descending");
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (text) { return sign * (x < y ? -1 : x > y ? 1 : 0); }
      var p = parseFloat(x), q = parseFloat(y);
      if (isNaN(p) || isNaN(q)) { return isNaN(p) - isNaN(q); }
      return sign * (p - q);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


PLOT_NOTE = (
    "Error bars: 95% interval of Avg. Filled points joined by the dashed line: the Pareto front of the point "
    "estimates (no other row is both cheaper and scores higher); where error bars overlap, a point on the front is "
    "not told apart from one off it. Grey dashed lines: the majority and chance baselines."
)


def html_page(secs: list[Section], footer: str, warnings: list[str] | tuple[str, ...] = ()) -> str:
    """The whole page; ``footer`` is the provenance line (runs, hardware, software); ``warnings`` (mixed FLOPs
    counters or scorers, other task versions) head it, as they end ``leaderboard.md``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>Leaderboard</title><style>{CSS}</style></head><body>",
        "<h1>Leaderboard</h1>",
        "<p class=legend>Regenerated by <code>harness leaderboard</code> from the run records. "
        f"{escape(LEGEND.replace('`', ''))} Click a column header to sort.</p>",
        *(f"<p class=warn><b>Warning:</b> {escape(line)}</p>" for line in warnings),
    ]
    for task in dict.fromkeys(s.task for s in secs):
        parts.append(f"<h2>{escape(task)}</h2>")
        for s in (s for s in secs if s.task == task):
            parts += [
                f"<section><h3>{escape(section_title(s))}</h3>",
                f"<p class=info>{escape(section_info(s))}</p>",
                *([f"<p class=info>{escape(line)}</p>"] if (line := missing_references(s, secs)) else []),
                f'<div class=scroll>{_table(s)}</div><div class="plots">{_plots(s)}</div>',
                f"<p class=info>{PLOT_NOTE}</p></section>",
            ]
    parts += [f"<footer>{escape(footer)}</footer>", f"<script>{JS}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _td(value: float | str | None, body: str, cls: str = "", title: str = "") -> str:
    v = "" if value is None else (value if isinstance(value, str) else f"{value:.4f}")
    attrs = (
        f' data-v="{escape(v)}"' + (f' class="{cls}"' if cls else "") + (f' title="{escape(title)}"' if title else "")
    )
    return f"<td{attrs}>{body}</td>"


def _score_td(row: Row, b: str, refs: dict[str, str]) -> str:
    cell: Cell = row.cells[b]
    if cell.absent:
        return _td(None, "absent", "absent", "no data for this benchmark; not in Avg")
    if cell.value is None:
        return _td(None, "–", title="unknown for this row")
    ci = f"[{fmt(cell.ci.lo)}, {fmt(cell.ci.hi)}]" if cell.ci else "[–]"
    body = f'<span class="v">{fmt(cell.value)}</span>'
    if cell.constant:
        body += '<span class="flag">constant</span>'
    body += f"<small>{ci}</small>"
    d = row.vs.get(REFERENCE_METHOD, {}).get(b)
    if d is not None:
        cls = ("up" if d.value > 0 else "down") if d.significant else ""
        label = refs.get(REFERENCE_METHOD, REFERENCE_METHOD)
        apart = row.apart.get(REFERENCE_METHOD, {}).get(b)
        body += f'<span class="d {cls}">vs {escape(label)} {escape(diff_text(d, apart))}</span>'
    notes = [f"{cell_text(cell)} (95% bootstrap interval)"]
    for ref in REFERENCES:
        if ref in row.unpaired:  # trained rows without a seed in common are not compared (a warning says so)
            notes.append(f"vs {refs.get(ref, ref)}: – (no seed in common)")
        if (e := row.vs.get(ref, {}).get(b)) is not None:
            p = "" if e.p is None else f", p {p_text(e.p)}"
            text = diff_text(e, row.apart.get(ref, {}).get(b))
            notes.append(f"vs {refs.get(ref, ref)}: {text} [{bound_text(e.lo)}, {bound_text(e.hi)}]{p}")
    return _td(cell.value, body, title="; ".join(notes))


def bound_text(x: float) -> str:
    """A difference's interval bound, signed, at one decimal, or at as many more (up to 4, then 2 significant
    digits) as it takes for a bound off 0 (beyond ``EPS``, as ``Estimate.significant`` reads it) not to read as
    0: the committed page showed ``-0.5* [-1.0, 0.0]`` for an interval that excluded 0 at -0.03."""
    if abs(x) <= EPS:
        return "0.0"
    for places in range(1, 5):
        if float(s := f"{x:+.{places}f}"):
            return s
    return f"{x:+.2g}"


def _table(s: Section) -> str:
    head = ['<th data-type="text">method</th>']
    head += [f"<th>{escape(b)}</th>" for b in s.benchmarks]
    head += [f"<th>{AVG}</th>", '<th title="benchmarks with data, of the section\'s">Avg n</th>', "<th>Param %</th>"]
    head += ['<th data-type="text" title="the seeds a row pools">seeds</th>']
    baselines = any(not_above_baselines(r, s) is not None for r in s.rows)
    if baselines:
        head += ['<th data-type="text" title="where its paired comparison (the * rule) does not put it above both">not above '
                 "majority and chance</th>"]  # fmt: skip
    body = []
    for row in s.rows:
        cls = row.kind + (" reference" if row.method == s.references.get(REFERENCE_METHOD) else "")
        tds = [_td(row.method, escape(row.method))]
        tds += [_score_td(row, b, s.references) for b in [*s.benchmarks, AVG]]
        tds.append(_td(float(row.avg_n), f"{row.avg_n}/{s.avg_of}"))
        tds.append(_td(row.percent_trainable, param_text(row)))
        tds.append(_td(row_seeds(row), escape(row_seeds(row))))
        if baselines:
            text = not_above_text(row, s)
            tds.append(_td(text, escape(text)))
        body.append(f'<tr class="{cls}">{"".join(tds)}</tr>')
    return f'<table class="board"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>'


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    lo: float
    hi: float


def pareto(points: list[Point]) -> list[bool]:
    """Whether each point is on the front: no other point costs no more and scores no less, one strictly."""
    return [
        not any(q.x <= p.x and q.y >= p.y and (q.x < p.x or q.y > p.y) for q in points if q is not p) for p in points
    ]


def _plots(s: Section) -> str:
    lines = [(r.method, r.cells[AVG].value) for r in s.rows if r.kind == "baseline" and r.cells[AVG].value is not None]
    by_params, by_flops = [], []
    for r in s.rows:
        avg = r.cells[AVG]
        if r.kind == "baseline" or avg.value is None:
            continue
        lo, hi = (avg.ci.lo, avg.ci.hi) if avg.ci else (avg.value, avg.value)
        by_params.append(Point(r.method, r.percent_trainable or 0.0, avg.value, lo, hi))
        if r.relative_training_flops is not None:  # x lora's step at the same shapes: seeds pad differently
            by_flops.append(Point(r.method, r.relative_training_flops, avg.value, lo, hi))
    x_label = "FLOPs per optimizer step, x lora's at the same shapes (with the Reducer's scoring forwards)"
    return svg_plot("Avg vs trainable parameters", "trainable parameters (% of base model)", by_params, lines) + (
        svg_plot("Avg vs training FLOPs per step", x_label, by_flops, lines)
    )


W, H, LEFT, RIGHT, TOP, BOTTOM = 480, 320, 58, 30, 30, 46


def _ticks(lo: float, hi: float, count: int = 5) -> list[tuple[float, str]]:
    """About ``count`` round ticks between ``lo`` and ``hi`` (steps of 1, 2, 2.5 or 5 times a power of ten), each
    with its label (``_tick_label``) at the decimals of the step."""
    raw = (hi - lo) / count
    exponent = math.floor(math.log10(raw))
    m = next(m for m in (1, 2, 2.5, 5, 10) if m * 10**exponent >= raw)
    step = m * 10**exponent
    places = -exponent + (m == 2.5) - (m == 10)  # the step's decimals: 0.025 has 3, 2.5 has 1, 200 has -2
    first = math.ceil(lo / step) * step
    return [(t, _tick_label(t, places)) for t in (first + i * step for i in range(int((hi - first) / step + 1e-9) + 1))]


def _tick_label(t: float, places: int) -> str:
    """``t`` at ``places`` decimals, the step's, so that every label reads as its tick's value (``.3g`` made 1.025
    "1.02" and 1.075 "1.07" beside 1.05); from 1000 in e-notation with the mantissa digits the step needs (1.8e3,
    5.69e11)."""
    t = round(t, places) + 0.0  # float noise (1.0249999999999997, -1e-17) off; never "-0"
    exponent = math.floor(math.log10(abs(t))) if t else 0
    if exponent < 3:
        return f"{t:.{max(places, 0)}f}"
    return f"{t / 10**exponent:.{max(exponent + places, 0)}f}e{exponent}"


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return lo - pad, hi + pad


def svg_plot(title: str, xlabel: str, points: list[Point], lines: list[tuple[str, float]]) -> str:
    """An inline SVG scatter: error bars, Pareto front (filled, joined), horizontal baseline lines."""
    if not points:
        return (
            f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><text x="{W / 2}" y="{H / 2}" '
            f'text-anchor="middle" class="muted">{escape(title)}: no rows with this cost</text></svg>'
        )
    x0, x1 = _span([p.x for p in points])
    y0, y1 = _span([v for p in points for v in (p.lo, p.hi)] + [v for _, v in lines])

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def sy(y: float) -> float:
        return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    out = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">']
    out.append(f'<text x="{W / 2:.1f}" y="18" text-anchor="middle" font-weight="600">{escape(title)}</text>')
    for t, label in _ticks(x0, x1):
        out.append(f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{TOP}" y2="{H - BOTTOM}"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">{label}</text>')
    for t, label in _ticks(y0, y1):
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}"/>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}"/>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2:.1f}" y="{H - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text transform="translate(14 {(TOP + H - BOTTOM) / 2:.1f}) rotate(-90)" text-anchor="middle">'
        "Avg score (%), 95% interval</text>"
    )
    for label, y in lines:
        out.append(f'<line class="base-line" x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>')
        out.append(f'<text class="muted" x="{LEFT + 4}" y="{sy(y) - 4:.1f}">{escape(label)}</text>')
    front = pareto(points)
    ends = sorted((p.x, p.y) for p, f in zip(points, front, strict=True) if f)
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ends)
    out.append(f'<polyline class="front-line" points="{path}"><title>Pareto front</title></polyline>')
    for p, on_front in zip(points, front, strict=True):
        cx, cy = sx(p.x), sy(p.y)
        out.append(f'<line class="bar" x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(p.lo):.1f}" y2="{sy(p.hi):.1f}"/>')
        tip = f"{p.label}: {fmt(p.y)} [{fmt(p.lo)}, {fmt(p.hi)}] at {p.x:.4g}" + (" (Pareto front)" if on_front else "")
        out.append(
            f'<circle class="pt{" front" if on_front else ""}" cx="{cx:.1f}" cy="{cy:.1f}" r="4">'
            f"<title>{escape(tip)}</title></circle>"
        )
        right = cx + 6 + 6.5 * len(p.label) > W  # ~6.5 px a character at 11 px: label to the left of the point
        anchor = f'x="{cx - 6:.1f}" text-anchor="end"' if right else f'x="{cx + 6:.1f}"'
        out.append(f'<text {anchor} y="{cy - 5:.1f}">{escape(p.label)}</text>')
    out.append("</svg>")
    return "".join(out)
