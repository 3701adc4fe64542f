"""A diffusion run's saved samples: the PNGs and prompts ``evaluate`` writes beside its record, and the judge's and
HPS v2's columns scored again from them (``harness rescore``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from harness.atomic import atomic_path
from harness.records import PREDICTIONS
from tasks.diffusion.scorers import (
    SCORER_COLUMNS,
    _describe_scorer,
    _other_scorer,
    _scored_by,
    _scorer_now,
    optional_scores,
)
from tasks.diffusion.sheet import spread

AGAIN = "; run it again with --force (a finished run is skipped without it)"  # what rescore cannot read


def save(predictions_path: Path, images, real, chosen, seeds, sim, predicted) -> None:
    """Each scored prompt's image (``samples/NNN.png``), the real held-out image beside those on the contact sheet,
    and one line a prompt in ``predictions_path``."""
    folder = predictions_path.parent / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    on_sheet = set(spread([item.category or "" for item in chosen]))
    for n, (im, item, seed) in enumerate(zip(images, chosen, seeds, strict=True)):
        with atomic_path(folder / f"{n:03d}.png") as tmp:
            im.save(tmp, format="PNG")
        if n in on_sheet:  # the held-out real image beside it, for the contact sheet
            with atomic_path(folder / f"real-{n:03d}.png") as tmp:
                real[n].save(tmp, format="PNG")
        lines.append(
            json.dumps(
                {
                    "n": n,
                    "file": f"samples/{n:03d}.png",
                    "prompt": item.text,
                    "seed": seed,
                    "real": item.image.name,
                    "category": item.category,
                    "similarity": round(sim[n], 3),
                    "predicted_category": predicted[n] if predicted else None,
                }
            )
        )
    with atomic_path(predictions_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def rescore(run_dir: Path, record: dict[str, Any], scoring: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The columns of the scorers in ``scoring`` (the judge's, HPS v2's) from the run's saved ``samples/`` and
    their prompts (the files ``evaluate`` wrote: the same PNG bytes the judge was sent, so its cached answers
    are found again); the other scorer's columns are not returned."""
    from PIL import Image

    run = record["run"]["id"]
    made = (record["run"].get("config", {}).get("task_options") or {}).get("scoring") or {}
    for key, value in scoring.items():  # what the run id names (a checkpoint by its file name) must be what scores
        given, named = (Path(value).name, made.get(key)) if key.endswith("_checkpoint") else (value, made.get(key))
        if named not in (None, given):
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"run {run} was made with {flag} {named} (part of its run id): scores of {given} would stand "
                f"under that name; rescore it with {named}, or run it with {flag} {given} (a new run)"
            )
        before = _scored_by(record["eval"], key)  # a rescored run: its columns name the scorer, its id does not
        if before and (other := _other_scorer(key, before, now := _scorer_now(key, value))) is not None:
            raise ValueError(
                f"run {run}'s {SCORER_COLUMNS[key][-1]} was scored by {other}: scores by "
                f"{_describe_scorer(key, now)} would replace them and stand beside other runs' under one config; "
                "rescore it with that one, or score a copy of the runs folder (cp -r) with this one"
            )
    path = run_dir / PREDICTIONS
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise ValueError(f"run {run}: its saved samples cannot be read ({path.name}: {exc}){AGAIN}") from None
    ref = record["eval"].get("similarity", {})
    if not all(isinstance(line, dict) and isinstance(line.get("file"), str) and isinstance(line.get("prompt"), str)
               for line in lines):  # fmt: skip
        raise ValueError(f"run {run}: a line of {path.name} lacks its sample's file or prompt{AGAIN}")
    if [line.get("n") for line in lines] != list(range(ref.get("n", -1))) or not all(
        k in ref for k in ("examples", "protocol", "sha256")
    ):
        raise ValueError(f"run {run}: {path.name} does not hold the {ref.get('n', '?')} samples its record scored")
    pngs = []
    for line in lines:
        file = run_dir / line["file"]
        if not file.is_file() or file.resolve().parent != (run_dir / "samples").resolve():
            raise ValueError(f"run {run}: sample {line['file']} is missing (or outside samples/){AGAIN}")
        pngs.append(file.read_bytes())
    images = []
    for line, png in zip(lines, pngs, strict=True):
        try:
            images.append(Image.open(io.BytesIO(png)).convert("RGB"))
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"run {run}: sample {line['file']} cannot be read ({exc}){AGAIN}") from None
    common = {k: ref[k] for k in ("n", "protocol", "examples", "sha256")}
    prompts = [line["prompt"] for line in lines]
    out = optional_scores(scoring, images, prompts, common, pngs, keep_models=True, warn=False)
    asked_columns = {c for k in scoring for c in SCORER_COLUMNS[k]}
    return {c: e for c, e in out.items() if c in asked_columns}
