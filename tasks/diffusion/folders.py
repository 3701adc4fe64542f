"""Where the diffusion task's data and models are: the data folder (``resolve_data``, the shipped Twemoji's
``twemoji_dir``), a pipeline folder, the Twemoji base's items, and categories Unicode does not name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tasks.diffusion import data as ddata


def unnamed_categories(data: ddata.Data) -> list[str]:
    """The held-out categories no training row has: the fidelity classifier, fit on the training rows (the
    embedded base's too), can never name them."""
    known = {i.category for i in data.base + data.train if i.category}
    return sorted({i.category for i in data.test if i.category} - known)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _is_pipeline_folder(model: str) -> bool:
    """Whether ``model`` is a diffusers pipeline folder, ``~`` expanded as ``load_folder`` reads it (a re-review:
    ``--model=~/sd15``, which the shell leaves as it is, was refused before any run as no model folder)."""
    return (Path(model).expanduser() / "model_index.json").is_file()


def _twemoji_base() -> list[ddata.Item]:
    """The shipped Twemoji's base rows, when the fine-tuning data is the user's own (``--data-dir``): the embedded
    base pre-trains on them."""
    return ddata.load(twemoji_base_dir()).base


def twemoji_base_dir() -> Path:
    """The shipped Twemoji's folder, which the embedded base pre-trains on; a ``ValueError`` saying what to set where
    it is not found (``DiffusionTask.check_data_for`` asks before any run)."""
    try:
        return twemoji_dir()
    except ValueError:  # its message asks for a --data-dir, which this run has: say what the base needs instead
        given = os.environ.get("HARNESS_TWEMOJI_DIR")
        where = f"HARNESS_TWEMOJI_DIR {given!r} has no metadata.jsonl" if given else "it is not found here"
        raise ValueError(
            "the embedded diffusion base pre-trains on the shipped Twemoji's other categories (your --data-dir is "
            f"what the methods fine-tune on), and {where}: set HARNESS_TWEMOJI_DIR to the captioned Twemoji folder "
            "(metadata.jsonl, images/; ../shared/data/diffusion/twemoji-64), or pass --model with a diffusers "
            "Stable Diffusion folder"
        ) from None


def resolve_data(data_dir: str | None) -> Path:
    """The user's imagefolder (``--data-dir``; a data root holding ``diffusion/twemoji-64`` also works),
    or the shipped Twemoji."""
    if data_dir:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"data dir {str(path)!r} is not a folder; pass --data-dir pointing at an imagefolder "
                "(metadata.jsonl with file_name and text, or train/ and test/ holding one each)"
            )
        nested = path / "diffusion" / "twemoji-64"
        if not (path / ddata.METADATA).is_file() and not (path / "train").is_dir() and nested.is_dir():
            return nested
        return path
    return twemoji_dir()


def twemoji_dir() -> Path:
    from tasks.twemoji import twemoji_dir as find

    return find("the diffusion suite's embedded data", "an imagefolder (metadata.jsonl: file_name, text)")
