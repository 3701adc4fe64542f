"""The contact sheet ``harness leaderboard`` writes for the diffusion task: prompts (rows) x the leaderboard's
rows (columns: a method at its options, in the leaderboard's order), the held-out real image first, from the samples
every run saved in its folder.

Its rows are spread over the prompts' categories (held-out lists sorted by category would otherwise show
one). The real image is the one the run saved beside its sample, or else, for runs made before the rows
were spread, read from the run's data when a folder with the same metadata hashes is found
(``HARNESS_DATA_DIR``, the shipped Twemoji) and rendered at the sample's size as scoring saw it."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.records import RECORD, RERUN

if TYPE_CHECKING:
    from harness.leaderboard import Section

SHEET = "diffusion_samples_{preset}.png"  # a preset's sheet: "{task}_samples_*.png" in harness.leaderboard's TASK_FILES
CELL = 96  # pixels per image on the sheet (samples are upscaled with nearest-neighbour: no invented detail)
DPI = 110  # the sheet's, also while it is laid out: text measured at another dpi is hinted to another width
SHEET_PROMPTS = 8  # rows of the contact sheet
PROMPT_WIDTH, PROMPT_LINES = 28, 2  # a row's prompt beside it: up to 2 lines of 28 characters


def prompt_label(prompt: str) -> str:
    """``prompt`` as its row's label: wrapped between words to lines of at most ``PROMPT_WIDTH`` characters, at
    most ``PROMPT_LINES`` of them, a cut marked with "…" (cut at 28 characters, unmarked, "smiling face with open
    mouth and tightly-closed eyes" read as another emoji's caption, "smiling face with open mouth")."""
    import textwrap

    lines = textwrap.wrap(prompt, PROMPT_WIDTH, break_on_hyphens=False) or [""]
    if len(lines) <= PROMPT_LINES:
        return "\n".join(lines)
    return "\n".join([*lines[: PROMPT_LINES - 1], lines[PROMPT_LINES - 1][: PROMPT_WIDTH - 1].rstrip() + "…"])


def spread(categories: Sequence[str], k: int = SHEET_PROMPTS) -> list[int]:
    """The indices of up to ``k`` rows taken in turn from each category (in the order the categories first
    appear, each category's rows in their order), returned in the rows' order."""
    groups: dict[str, list[int]] = {}
    for n, c in enumerate(categories):
        groups.setdefault(c, []).append(n)
    queues = [iter(g) for g in groups.values()]
    picked: list[int] = []
    while len(picked) < min(k, len(categories)):
        for q in queues:
            n = next(q, None)
            if n is not None and len(picked) < k:
                picked.append(n)
    return sorted(picked)


def contact_sheets(records: list[dict[str, Any]], runs_dir: Path, out_dir: Path) -> list[Path]:
    """One PNG per preset: ``diffusion_samples_<preset>.png``. Seed 0's run of each leaderboard row (in its order), at
    the settings and on the data of the preset's newest seed-0 trained run (as the leaderboard's plot): runs at other
    settings (steps, data, model) would set samples of different training side by side. A row is a method with its
    options (``harness.leaderboard``'s ``_row_key``), titled as the leaderboard titles it ("lora (r=4)"). Headed by
    the key of the leaderboard section its runs are of and what made them (``_heading_of``). A sheet in ``out_dir``
    that is not made this time (also one of a preset no record is of now) is warned about, not deleted."""
    from harness.leaderboard import _labels, _row_key

    written = []
    secs: list[Section] | None = None  # the leaderboard's sections, built once a sheet is drawn
    presets = sorted({r["run"]["config"]["preset"] for r in records})
    for preset in presets:
        at_preset = [r for r in records if r["run"]["config"]["preset"] == preset]
        # every seed's runs at those settings: the rows (and so the titles) of the leaderboard's section
        section = _newest_settings(at_preset, [r for r in at_preset if r["run"]["config"]["seed"] == 0])
        labels = _labels(sorted({_row_key(r) for r in section}))
        mine = [r for r in section if r["run"]["config"]["seed"] == 0]
        runs: dict[tuple[str, str], Path] = {}
        for r in sorted(mine, key=lambda r: r["run"].get("created_at", ""), reverse=True):  # the newest of a row
            folder = _run_folder(runs_dir, r["run"]["id"])
            if folder is not None and (folder / RERUN / RECORD).is_file():  # a pending swap: files of two runs
                print(
                    f"warning: {r['run']['id']}: left out of the contact sheet until its swap is finished",
                    file=sys.stderr,
                )
            elif folder is not None and (folder / "predictions.jsonl").is_file():
                key = _row_key(r)
                if key not in runs and _readable_predictions(folder, r["run"]["id"]):
                    runs[key] = folder
        path = out_dir / SHEET.format(preset=preset)
        if not runs:
            _left_from_before(path, runs_dir, "no seed-0 run at its newest settings has samples to show")
            continue
        shown = {labels[k]: runs[k] for k in _leaderboard_order(section, labels) if k in runs}
        # the data is looked for only where the runs saved no real image of a row the sheet shows (runs made
        # before they saved them): a data folder that no longer reads stopped the leaderboard where none was needed
        data = data_images(mine) if _lacks_real_images(next(iter(shown.values()))) else None
        secs = _sections(records) if secs is None else secs
        heading = _heading_of(secs, {folder.name for folder in shown.values()})  # named by its run id (_run_folder)
        if sheet := _sheet(shown, path, _attribution(mine), data, heading):
            written.append(sheet)
        else:
            _left_from_before(path, runs_dir, "see the warning above")
    # the sheets of presets no record is of now (an earlier leaderboard's embedded runs, this one's smoke runs only):
    # kept without a word, they showed older runs beside newer tables (where no diffusion record is left at all,
    # ``harness.leaderboard``'s ``leftover_files`` names them, with the task's tables)
    prefix, suffix = SHEET.split("{preset}")
    made = {SHEET.format(preset=preset) for preset in presets}
    for path in sorted(out_dir.glob(f"{prefix}*{suffix}")):
        if path.name not in made:
            why = f"none of them is of preset {path.name[len(prefix) : -len(suffix)]!r}"
            _left_from_before(path, runs_dir, why, "rebuild from a runs folder that holds its runs too")
    return written


def _sections(records: list[dict[str, Any]]) -> list[Section]:
    """The leaderboard's sections of ``records`` (``harness.leaderboard.sections``), without the warnings the
    leaderboard printed already as it built them."""
    import contextlib
    import io

    from harness.leaderboard import sections

    with contextlib.redirect_stderr(io.StringIO()):
        return sections(records)


def _heading_of(secs: list[Section], shown: set[str]) -> str:
    """What made the samples of the runs ``shown`` (their ids): the key of the leaderboard section that holds the
    most of them and what the task's plot says of it (``plot_label``: model, preset and protocol, steps, seeds,
    hardware). From a review: the sheet named none of them, so of a preset's two sections (``--random-weights`` and
    the pre-trained base, or two step counts) no reader could tell which it showed. Several sections where they hold
    as many (a zero-shot run joins each section of its settings); empty where none holds one."""
    from harness.leaderboard_plot import plot_label

    held = [(len(shown & {r["run"]["id"] for row in s.rows for r in row.runs}), s) for s in secs]
    most = max((n for n, _ in held), default=0)
    made = [f"section {s.key} · {plot_label(s)}" for n, s in held if n and n == most]
    return "; ".join(made) + " · samples of seed 0" if made else ""


def _left_from_before(
    path: Path, runs_dir: Path, why: str, fix: str = "rebuild once the runs' samples can be shown"
) -> None:
    """A warning where a preset's sheet was not made this time but one from an earlier leaderboard is at ``path``:
    it shows older runs beside tables of newer ones. Not deleted, as ``harness.leaderboard``'s ``leftover_files``
    leaves other files it no longer writes (the folder may hold them on purpose)."""
    if path.is_file():
        print(
            f"warning: {path.parent} still holds {path.name} from an earlier leaderboard: no contact sheet was made "
            f"from the records under {runs_dir} this time ({why}), so it shows other runs than leaderboard.md and "
            f"leaderboard.html; delete it, or {fix}",
            file=sys.stderr,
        )


def _leaderboard_order(records: list[dict[str, Any]], labels: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """The row keys of ``records`` (one leaderboard section's runs) in the order the leaderboard lists their rows
    (``harness.leaderboard``'s ``_rank``: trained rows by Avg, best first, then the zero-shot base), as
    ``diffusion.csv`` does (until 2026-12-06 the sheet put base first, then sorted them by the options' JSON text:
    "r=16" before "r=8")."""
    import contextlib
    import io

    from harness.leaderboard import BASELINE, _averaged, _columns, _newest_per_seed, _rank, _row_key, _run_row

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_row_key(r), []).append(r)
    # as the leaderboard's section counts them: every zero-shot run, the newest run of each seed of a trained row
    groups = {k: g if k[0] == BASELINE else _newest_per_seed(g) for k, g in groups.items()}
    task = records[0]["run"]["config"]["task"]
    benchmarks = _columns(task, [b for g in groups.values() for r in g for b in r["eval"]])
    averaged = _averaged(task, benchmarks)
    with contextlib.redirect_stderr(io.StringIO()):  # a row's warnings: the leaderboard printed them already
        rows = {k: _run_row(labels[k], g, benchmarks, averaged) for k, g in groups.items()}
    return sorted(rows, key=lambda k: _rank(rows[k]))


def _lacks_real_images(first: Path) -> bool:
    """Whether a row the sheet would show (``spread`` over all of ``first``'s rows, as a run saves them) has no
    real image saved beside its sample."""
    rows = _predictions(first)
    return any(not _saved_real(first, rows[n]).is_file() for n in spread([str(r.get("category") or "") for r in rows]))


def _readable_predictions(folder: Path, run_id: str) -> bool:
    """Whether the run's ``predictions.jsonl`` reads as the sheet needs (a warning where not: the run is left out
    of the sheet, never the leaderboard stopped)."""
    try:
        rows = _predictions(folder)
        if all(
            isinstance(r, dict)
            and isinstance(r.get("n"), int)
            and isinstance(r.get("file"), str)
            and isinstance(r.get("prompt"), str)
            for r in rows
        ):
            return True
        why = "a row without an integer n, or a file or prompt as text"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    print(
        f"warning: {run_id}: left out of the contact sheet: its predictions.jsonl cannot be read ({why})",
        file=sys.stderr,
    )
    return False


def _predictions(folder: Path) -> list[Any]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]


def _newest_settings(
    records: list[dict[str, Any]], chosen_from: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The records at the settings (``harness.leaderboard``'s section: model, protocol, task options, training)
    of the newest trained one (of ``chosen_from``, default ``records``) and on its data (no data or test file with
    another sha256, as the leaderboard's sections: a newer lora on other data beside the older runs' base set samples
    of two data side by side), with the zero-shot runs of its model, protocol and task options on that data; all of
    them where none trained."""
    from harness.leaderboard import _digests, _fits, _settings

    trained = [r for r in (records if chosen_from is None else chosen_from) if r["run"]["config"]["method"] != "base"]
    if not trained:
        return records
    newest_run = max(trained, key=lambda r: (r["run"].get("created_at", ""), r["run"]["id"]))
    newest, data = _settings(newest_run), _digests(newest_run)
    return [
        r
        for r in records
        if (_settings(r) == newest or (r["run"]["config"]["method"] == "base" and _settings(r)[0] == newest[0]))
        and _fits(_digests(r), data)
    ]


def data_images(records: list[dict[str, Any]]) -> dict[str, Path] | None:
    """{image file name: its path} for the held-out rows of the data the ``records`` were made on: a folder
    found at ``HARNESS_DATA_DIR`` or the shipped Twemoji whose metadata hashes equal the records'; None when
    none is found (or the records name different data); empty, with a warning, where the one found cannot be read
    (its rows' cells then empty; the sheet says no more of it)."""
    from tasks.diffusion import data as ddata
    from tasks.diffusion import resolve_data

    wanted = {json.dumps(r["run"]["config"].get("data", {}).get("files"), sort_keys=True) for r in records}
    if len(wanted) != 1 or not (files := json.loads(wanted.pop())):
        return None
    for given in dict.fromkeys((os.environ.get("HARNESS_DATA_DIR"), None)):  # None: the shipped Twemoji
        try:
            folder = resolve_data(given)
        except ValueError:  # no such folder here: the sheet shows the real images the runs saved
            continue
        try:
            if ddata.file_hashes(folder) != files:
                continue
            test = ddata.load(folder).test
        except (ValueError, OSError) as exc:  # an image removed since the runs: their cells empty, never no leaderboard
            print(
                f"warning: the contact sheet shows no real image the runs did not save: their data {folder} cannot be "
                f"read ({exc}); restore it, or set HARNESS_DATA_DIR to a whole copy",
                file=sys.stderr,
            )
            return {}
        names = Counter(i.image.name for i in test)
        return {i.image.name: i.image for i in test if names[i.image.name] == 1}
    return None


def _run_folder(runs_dir: Path, run_id: str) -> Path | None:
    direct = runs_dir / run_id
    if direct.is_dir():
        return direct
    return next((p for p in runs_dir.rglob(run_id) if p.is_dir()), None)


def _attribution(records: list[dict[str, Any]]) -> str:
    """The notices the sheet's images need: each run's data's (``run.config.data.attribution``), and Twemoji's for
    a run on the embedded base (``model_info.base``: pre-trained on Twemoji) recorded before its data named it."""
    from tasks.diffusion import ATTRIBUTION

    notes = {r["run"]["config"].get("data", {}).get("attribution") for r in records}
    notes |= {ATTRIBUTION for r in records if "base" in (r["run"]["config"].get("model_info") or {})}
    return "; ".join(sorted(n for n in notes if n))


def sheet_cells(
    runs: dict[str, Path], data: dict[str, Path] | None = None
) -> tuple[list[dict[str, Any]], dict[str, dict[tuple[str, str], Path]]]:
    """(up to ``SHEET_PROMPTS`` of the first run's prompts that have a real image, saved or in ``data``,
    spread over their categories; {run: {(prompt, real image): its sample}}): each run's sample for the
    same prompt and real image wherever it is in its own order; a run of another eval limit or data that
    did not score a prompt leaves its cell empty rather than show another prompt's image."""
    first = next(iter(runs.values()))
    shown = [
        r for r in _predictions(first) if _saved_real(first, r).is_file() or str(r.get("real", "")) in (data or {})
    ]
    rows = [shown[n] for n in spread([str(r.get("category") or "") for r in shown])]
    return rows, {name: {_key(r): folder / r["file"] for r in _predictions(folder)} for name, folder in runs.items()}


def _open_rgb(path: Path):
    """The image at ``path`` as RGB, as the run's scoring reads one (16-bit grey scaled, transparency on white:
    ``to_rgb``; ``convert`` clipped 16-bit grey near-white); None, with a warning, where it cannot be read."""
    from PIL import Image

    from tasks.diffusion.data import to_rgb

    def read():
        with Image.open(path) as im:
            return to_rgb(im, str(path))

    return _or_warn(path, read)


def _or_warn(path: Path, read: Callable[[], Any]):
    """``read()``; None, with a warning naming ``path``, where the image cannot be read (a damaged one leaves its
    cell empty rather than stop the leaderboard)."""
    from PIL import Image

    try:
        return read()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        print(f"warning: {path}: left empty on the contact sheet ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def real_image(first: Path, row: dict[str, Any], data: dict[str, Path] | None = None):
    """The held-out real image of ``row`` (a PIL image): the one its run saved, else the data's, rendered as
    the run's scoring rendered it (composited on white, resized and cropped to the sample's size); None."""
    saved = _saved_real(first, row)
    if saved.is_file():
        return _open_rgb(saved)
    path = (data or {}).get(str(row.get("real", "")))
    if path is None or not (first / row["file"]).is_file():  # the sample gives the size: without it, no cell
        return None
    from tasks.diffusion import data as ddata
    from tasks.diffusion import scoring

    sample = _open_rgb(first / row["file"])
    if sample is None:
        return None
    return _or_warn(path, lambda: scoring.to_pil(ddata.load_image(path, min(sample.size))))


def _saved_real(folder: Path, row: dict[str, Any]) -> Path:
    return folder / "samples" / f"real-{row['n']:03d}.png"


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return row["prompt"], str(row.get("real", ""))


def _sheet(
    runs: dict[str, Path], path: Path, attribution: str, data: dict[str, Path] | None = None, heading: str = ""
) -> Path | None:
    """The sheet at ``path``, headed by ``heading`` (``_heading_of``) where given; None, with a warning, where no
    prompt of the first run has a real image to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from harness.atomic import atomic_path

    first = next(iter(runs.values()))
    rows, cells = sheet_cells(runs, data)
    if not rows:  # runs made before the real images were saved, and their data not found
        print(
            f"warning: no contact sheet {path.name}: {first.name} saved no real held-out images and its data was "
            "not found (set HARNESS_DATA_DIR to the folder of the data the runs were made on)",
            file=sys.stderr,
        )
        return None
    if data is None and _lacks_real_images(first):  # (found but unreadable, the data is {}: data_images said so)
        _warn_unspread(path, first, rows)
    columns = ["held-out real", *runs]
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.3 * len(columns), 1.3 * len(rows) + 0.6), dpi=DPI, squeeze=False
    )
    try:
        for i, row in enumerate(rows):
            for j, name in enumerate(columns):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    image = real_image(first, row, data)
                else:
                    file = cells[name].get(_key(row))
                    image = _open_rgb(file) if file is not None and file.is_file() else None
                if image is not None:
                    ax.imshow(image.resize((CELL, CELL), Image.NEAREST))
                # names and prompts drawn as written (parse_math=False): two "$" in a prompt ("a $5 and a $10
                # bill") were parsed as mathtext, which failed the leaderboard or typeset the text between them
                if j == 0:
                    prompt = prompt_label(row["prompt"])
                    ax.set_ylabel(prompt, fontsize=6, rotation=0, ha="right", va="center", parse_math=False)
        # wider by the prompts beside the first column, so that each column keeps its 1.3 inches for its image and
        # title (on a two-column sheet the prompts took half the width, and a title as short as "held-out real" was
        # wider than its column)
        labels = max(ax.yaxis.label.get_window_extent(fig.canvas.get_renderer()).width for ax in axes[:, 0])
        fig.set_size_inches(fig.get_figwidth() + labels / fig.dpi, fig.get_figheight())
        fig.tight_layout()  # where the columns are: their titles are wrapped to them
        # the figure taller by the titles' lines beyond one, the images as large as before (a one-row sheet was too
        # short for a wrapped title, which ran off its top)
        fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + _titles(fig, axes[0], columns))
        top = 1 - _heading(fig, heading) if heading else 1
        bottom = _notice(fig, attribution) if attribution else 0.02
        fig.tight_layout(rect=(0, bottom, 1, top))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def _warn_unspread(path: Path, first: Path, rows: list[dict[str, Any]]) -> None:
    """Say that the sheet shows only the rows whose real images ``first`` saved: runs made before the saved rows
    were spread over the categories saved their first ones (the committed runs': all "Smileys & Emotion")."""
    every = _predictions(first)
    wanted = {str(every[n].get("category") or "") for n in spread([str(r.get("category") or "") for r in every])}
    missing = sorted(wanted - {str(r.get("category") or "") for r in rows} - {""})
    print(
        f"warning: {path.name} shows only the held-out rows whose real image {first.name} saved ({len(rows)}"
        + (f"; none of {', '.join(missing)}" if missing else "")
        + "): their data was not found; set HARNESS_DATA_DIR to the folder of the data the runs were made on "
        "(HARNESS_TWEMOJI_DIR for the shipped Twemoji) for rows spread over every category",
        file=sys.stderr,
    )


def _titles(fig, axes: Sequence[Any], names: list[str]) -> float:
    """Title each column of the laid-out ``fig`` (``axes``: its top row) with its name, wrapped to the distance
    between the columns' centres: a long label ("lora (targets=['to_q', 'to_k', 'to_v', 'to_out.0'])") ran over
    its neighbours' titles. The inches the tallest title is taller than the shortest (one line)."""
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    centres = [(ax.get_position().x0 + ax.get_position().x1) / 2 * width for ax in axes]
    pitch = min((b - a for a, b in zip(centres, centres[1:], strict=False)), default=width)
    heights = []
    for ax, name, centre in zip(axes, names, centres, strict=True):
        # names drawn as written (parse_math=False): two "$" in one were parsed as mathtext
        title = ax.set_title(name, fontsize=8, parse_math=False)
        _fit(title, name, 0.92 * min(pitch, 2 * centre, 2 * (width - centre)), renderer)
        heights.append(title.get_window_extent(renderer).height)
    return (max(heights) - min(heights)) / fig.dpi


def _heading(fig, text: str) -> float:
    """Write the sheet's heading above it, wrapped to the figure's width (as ``_notice``), the figure taller by its
    lines and the margin above them (the images as large as before: ``tight_layout`` pads the column titles from it);
    the share of the figure's height it takes."""
    renderer = fig.canvas.get_renderer()
    # drawn as written (parse_math=False): a model label or device name from the records may hold "$"
    head = fig.text(0.5, 1, text, ha="center", va="top", fontsize=7, parse_math=False)
    _fit(head, text, 0.96 * fig.bbox.width, renderer)
    margin = 0.005 * fig.bbox.height  # pixels, as the notice's under the sheet
    room = margin + head.get_window_extent(renderer).height
    fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + room / fig.dpi)
    head.set_y(1 - margin / fig.bbox.height)
    return room / fig.bbox.height


def _notice(fig, text: str) -> float:
    """Write the data's notice under the sheet, wrapped to the figure's width (a two-column sheet is narrower than
    Twemoji's notice on one line, which was cut off at both edges); the share of the figure's height it takes."""
    note = fig.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=6, color="grey", parse_math=False)
    renderer = fig.canvas.get_renderer()
    _fit(note, text, 0.96 * fig.bbox.width, renderer)
    return 0.01 + note.get_window_extent(renderer).height / fig.bbox.height


def _fit(artist, text: str, room: float, renderer) -> None:
    """Wrap ``artist`` (a matplotlib Text showing ``text``) between words until it is at most ``room`` pixels wide
    (measured: glyphs differ in width); a word wider than that is broken."""
    import textwrap

    width = max(1, int(len(text) * room / max(artist.get_window_extent(renderer).width, 1.0)) + 1)
    while artist.get_window_extent(renderer).width > room and width > 1:
        width -= 1
        artist.set_text(textwrap.fill(text, width, break_on_hyphens=False))
