"""The contact sheet ``harness leaderboard`` writes for the diffusion task: prompts (rows) x methods
(columns), the held-out real image first, from the samples every run saved in its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CELL = 96  # pixels per image on the sheet (samples are upscaled with nearest-neighbour: no invented detail)


def contact_sheets(records: list[dict[str, Any]], runs_dir: Path, out_dir: Path) -> list[Path]:
    """One PNG per preset: ``diffusion_samples_<preset>.png``. Seed 0's run of each method (base first)."""
    written = []
    for preset in sorted({r["run"]["config"]["preset"] for r in records}):
        mine = [r for r in records if r["run"]["config"]["preset"] == preset and r["run"]["config"]["seed"] == 0]
        runs = {}
        for r in sorted(mine, key=lambda r: (r["run"]["config"]["method"] != "base", r["run"]["config"]["method"])):
            folder = _run_folder(runs_dir, r["run"]["id"])
            if folder is not None and (folder / "predictions.jsonl").is_file():
                runs.setdefault(r["run"]["config"]["method"], folder)
        if runs:
            written.append(_sheet(runs, out_dir / f"diffusion_samples_{preset}.png", _attribution(mine)))
    return written


def _run_folder(runs_dir: Path, run_id: str) -> Path | None:
    direct = runs_dir / run_id
    if direct.is_dir():
        return direct
    return next((p for p in runs_dir.rglob(run_id) if p.is_dir()), None)


def _attribution(records: list[dict[str, Any]]) -> str:
    notes = {r["run"]["config"].get("data", {}).get("attribution") for r in records}
    return "; ".join(sorted(n for n in notes if n))


def sheet_cells(runs: dict[str, Path]) -> tuple[list[dict[str, Any]], dict[str, dict[tuple[str, str], Path]]]:
    """(the first run's prompts that have a real image, {run: {(prompt, real image): its sample}}): each run's
    sample for the same prompt and real image wherever it is in its own order; a run of another eval limit
    or data that did not score a prompt leaves its cell empty rather than show another prompt's image."""

    def predictions(folder: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]

    first = next(iter(runs.values()))
    rows = [r for r in predictions(first) if (first / "samples" / f"real-{r['n']:03d}.png").is_file()]
    return rows, {name: {_key(r): folder / r["file"] for r in predictions(folder)} for name, folder in runs.items()}


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return row["prompt"], str(row.get("real", ""))


def _sheet(runs: dict[str, Path], path: Path, attribution: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from harness.atomic import atomic_path

    first = next(iter(runs.values()))
    rows, cells = sheet_cells(runs)
    columns = ["held-out real", *runs]
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.3 * len(columns), 1.3 * len(rows) + 0.6), squeeze=False
    )
    for i, row in enumerate(rows):
        for j, name in enumerate(columns):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            file = first / "samples" / f"real-{row['n']:03d}.png" if j == 0 else cells[name].get(_key(row))
            if file is not None and file.is_file():
                with Image.open(file) as im:
                    ax.imshow(im.convert("RGB").resize((CELL, CELL), Image.NEAREST))
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(row["prompt"][:28], fontsize=6, rotation=0, ha="right", va="center")
    if attribution:
        fig.text(0.5, 0.005, attribution, ha="center", va="bottom", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
