"""Image + caption data in the Hugging Face ``imagefolder`` layout: ``metadata.jsonl`` (one JSON object a
line with ``file_name`` and ``text``) beside the images, as pokemon-blip-captions is saved locally; with
``train/`` and ``test/`` subfolders when the data has its own split. Every line and image is checked on
read, so bad data fails before any model loads. ``load_hub`` saves a hub dataset in this layout.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tasks.images import check_decodes

METADATA = "metadata.jsonl"
# the shipped Twemoji set: the base pre-trains on every other category; methods fine-tune on these two
# (a style and subjects the base never saw: yellow faces, food) and are scored on held-out images of them
FINETUNE_CATEGORIES = ("Smileys & Emotion", "Food & Drink")
SKIP_CATEGORIES = ("Component",)  # skin-tone swatches and hair pieces, not pictures of anything
TEST_EVERY = 5  # without a test/ folder: every 5th row (in file order) is held out for scoring
PAPER_DATASET = "reach-vb/pokemon-blip-captions"


@dataclass(frozen=True)
class Item:
    image: Path
    text: str
    category: str = ""
    row: dict[str, Any] = field(default_factory=dict, compare=False)


def read_folder(folder: Path) -> list[Item]:
    """The checked rows of ``folder/metadata.jsonl``: raises ``ValueError`` naming the line and what to do."""
    meta = folder / METADATA
    if not meta.is_file():
        raise ValueError(
            f"{folder} has no {METADATA}; an image-caption folder needs one JSON object a line with "
            '"file_name" and "text" (the Hugging Face imagefolder layout)'
        )
    items = []
    try:
        text = meta.read_text(encoding="utf-8-sig")  # a BOM (Windows Notepad's) read past, as the other suites do
    except UnicodeDecodeError as exc:
        raise ValueError(f"{meta} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    # lines end at "\n" only (JSON Lines, datasets' reader): splitlines() also broke a caption at U+2028 or U+0085,
    # which JSON holds raw in a string (a review: a valid file refused, later lines misnumbered)
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{meta}: line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not JSON ({exc.msg}); fix or remove it") from None
        if not isinstance(row, dict):
            raise ValueError(f'{where} is not a JSON object; each line needs "file_name" and "text"')
        if not isinstance(row.get("file_name"), str) or not row["file_name"]:
            raise ValueError(f'{where} has no "file_name"; add the image\'s path relative to {folder}')
        if "text" not in row:
            raise ValueError(f'{where} has no "text" (the caption); add one')
        if not isinstance(row["text"], str):
            raise ValueError(f'{where}: the caption ("text") is a {type(row["text"]).__name__}, not a string; quote it')
        if not row["text"].strip():
            raise ValueError(f'{where}: the caption ("text") is empty; write one or remove the line')
        path = folder / row["file_name"]
        if not path.is_file():
            raise ValueError(f"{where}: image {row['file_name']!r} is missing; add it or remove the line")
        try:
            check_decodes(path)
            with Image.open(path) as im:
                mode, fmt = im.mode, im.format
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{where}: image {row['file_name']!r} cannot be read ({exc}); replace it") from None
        _check_mode(mode, f"{where}: image {row['file_name']!r}", fmt)
        category = row.get("category")
        if category is not None and (isinstance(category, bool) or not isinstance(category, (str, int))):
            raise ValueError(
                f"{where}: the category is a {type(category).__name__}, not a string; quote it, or leave it out"
            )
        # null is no category (not the class "None"); a number is its digits (class 0 included)
        items.append(Item(path, row["text"].strip(), "" if category is None else str(category), row))
    if not items:
        raise ValueError(f"{meta} has no rows; add image-caption lines")
    return items


@dataclass
class Data:
    """The fine-tuning rows (train and held-out test), and the rows the embedded base pre-trains on."""

    folder: Path
    train: list[Item]
    test: list[Item]
    base: list[Item]
    split: str


def load(folder: Path) -> Data:
    """``folder/train`` + ``folder/test`` when present; the shipped Twemoji (``is_shipped_twemoji``): base = other
    categories, fine-tune = ``FINETUNE_CATEGORIES``; otherwise every ``TEST_EVERY``-th row is test. A
    ``metadata.jsonl`` of the folder's own that names images under ``test/`` is refused (they would be trained on)."""
    if (folder / "train" / METADATA).is_file() and (folder / "test" / METADATA).is_file():
        data = Data(folder, read_folder(folder / "train"), read_folder(folder / "test"), [], "train/ and test/ folders")
        _warn_overlap(data)
        return data
    if not (folder / METADATA).is_file():  # one split folder alone (a hub dataset with a train split only)
        for have, lack in (("train", "test"), ("test", "train")):
            if (folder / have / METADATA).is_file():
                raise ValueError(
                    f"{folder} has {have}/{METADATA} but no {lack}/{METADATA}: give the {lack} rows a {lack}/ "
                    f"folder, or pass --data-dir {folder / have} to hold out every {TEST_EVERY}th of its rows"
                )
    items = read_folder(folder)
    under_test = [i.row["file_name"] for i in items if Path(i.row["file_name"]).parent.parts[:1] == ("test",)]
    if under_test:  # the user's split, which every 5th row held out would ignore: their test images trained on
        raise ValueError(
            f"{folder / METADATA} names {len(under_test)} images under test/ (e.g. {under_test[0]!r}), but {folder} "
            f"lacks train/{METADATA} or test/{METADATA}, so every {TEST_EVERY}th row would be held out and the rest "
            f"of test/ trained on; give each split its own {METADATA} in train/ and test/ (file_name relative to "
            "that folder)"
        )
    cats = {i.category for i in items}
    # the folder, not its category names: Unicode's emoji groups name a user's Noto or OpenMoji rows alike, which
    # were split as Twemoji's (the other groups never trained nor held out) and credited to Twemoji
    if all(c in cats for c in FINETUNE_CATEGORIES) and is_shipped_twemoji(folder):
        tune = [i for i in items if i.category in FINETUNE_CATEGORIES]
        base = [i for i in items if i.category not in FINETUNE_CATEGORIES + SKIP_CATEGORIES]
        split = f"fine-tune on {' + '.join(FINETUNE_CATEGORIES)} (base pre-trains on the other categories)"
    else:
        tune, base, split = items, [], "all rows"
    test = tune[TEST_EVERY - 1 :: TEST_EVERY]
    if not test:
        raise ValueError(
            f"{folder / METADATA} has {len(tune)} rows to fine-tune on: every {TEST_EVERY}th is held out for "
            f"scoring, so it needs at least {TEST_EVERY}; add rows, or give train/ and test/ folders"
        )
    held = {id(i) for i in test}
    train = [i for i in tune if id(i) not in held]
    data = Data(folder, train, test, base, f"{split}; every {TEST_EVERY}th row held out for scoring")
    _warn_overlap(data)
    return data


# the shipped Twemoji's metadata.jsonl (../shared/data/diffusion/twemoji-64), which every committed diffusion
# record names: a copy of it anywhere is the shipped data, whatever folder holds it
TWEMOJI_METADATA_SHA256 = "280179d653e0ca70dbb845aad41388018686801d6ebcc7671d4c4e70e7235752"


def is_shipped_twemoji(folder: Path) -> bool:
    """Whether ``folder`` is the shipped Twemoji, whose categories split it and whose licence the runs on it carry:
    its metadata is the shipped one's (a copy of the data anywhere, as ``--data-dir`` gives it), or it is the folder
    ``tasks.twemoji.twemoji_dir`` finds (``HARNESS_TWEMOJI_DIR``, else ../shared/data/diffusion/twemoji-64)."""
    from harness.identity import file_sha256
    from tasks.twemoji import twemoji_dir

    try:
        if file_sha256(folder / METADATA) == TWEMOJI_METADATA_SHA256:
            return True
        return folder.resolve() == twemoji_dir().resolve()
    except (ValueError, OSError):  # no shipped copy found: the data is the user's
        return False


def overlap(data: Data, seen: list[Item] | None = None) -> dict[str, list[str]]:
    """The held-out rows whose caption, or whose image's bytes, a training (or base) row also has (or a row of
    ``seen``): what the model may have seen, which makes its score on them a memory test. ``{"captions": [...],
    "images": [...]}`` (held-out captions and file names)."""
    seen = data.train + data.base if seen is None else seen
    captions = {i.text.casefold() for i in seen}
    images = {_sha256(i.image) for i in seen}
    return {
        "captions": [i.text for i in data.test if i.text.casefold() in captions],
        "images": [i.image.name for i in data.test if _sha256(i.image) in images],
    }


_WARNED: set[str] = set()  # folders warned about in this process


def _warn_overlap(data: Data, seen: list[Item] | None = None, by: str = "a training row") -> None:
    """Warn (once a folder and ``by``) about held-out rows ``overlap`` finds against ``seen`` (default: the
    folder's own training and base rows)."""
    import sys

    key = f"{data.folder.resolve()}\0{by}"
    if key in _WARNED:  # checked once a folder (every image hashed), however the folder is named
        return
    _WARNED.add(key)
    found = overlap(data, seen)
    for what, names in found.items():
        if names:
            print(
                f"warning: {len(names)} of the {len(data.test)} held-out rows of {data.folder} share their "
                f"{what[:-1]} with {by} (e.g. {names[0]!r}): their scores measure memory; hold out rows "
                "that no training row repeats (train/ and test/ folders that do not overlap)",
                file=sys.stderr,
            )


def warn_pretrained_on(data: Data, rows: list[Item]) -> None:
    """The embedded base pretrains on ``rows`` (the shipped Twemoji's base rows, where the user's data has none):
    warn about held-out rows it has seen there."""
    _warn_overlap(data, rows, "a row the embedded base pretrains on (the shipped Twemoji's base rows)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_metadata(folder: Path) -> Path:
    """The metadata file the training rows are read from (``train/`` when the data has its own split)."""
    split = folder / "train" / METADATA
    return split if split.is_file() and (folder / "test" / METADATA).is_file() else folder / METADATA


def test_metadata(folder: Path) -> Path:
    """The metadata file the held-out rows are read from (``test/`` when the data has its own split)."""
    split = folder / "test" / METADATA
    return split if split.is_file() and (folder / "train" / METADATA).is_file() else folder / METADATA


def prompts(test: list[Item], n: int | None, seed: int = 0) -> list[Item]:
    """``n`` held-out rows sampled with a fixed seed (all of them when ``n`` is None or larger)."""
    if not n or n >= len(test):
        return list(test)
    return sorted(random.Random(seed).sample(test, n), key=test.index)


# one-channel modes of more than 8 bits, which Pillow's convert clips to 0-255 rather than scales (16-bit grey
# becomes near-white, floats in [0, 1] black): 16-bit ones are scaled here; these 32-bit ones are refused, as
# their mode does not say what range their values span (0-255, 0-65535, [0, 1]), except a PNG's I (Pillow before
# 10.3 opened 16-bit grey PNGs as I; a PNG holds at most 16 bits a sample, so it is 16-bit grey)
WIDE_MODES = ("I", "F")


def _sixteen_bit(mode: str, fmt: str | None) -> bool:
    return mode.startswith("I;16") or (mode == "I" and fmt == "PNG")


def _check_mode(mode: str, what: str, fmt: str | None = None) -> None:
    if mode in WIDE_MODES and not _sixteen_bit(mode, fmt):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise ValueError(
            f"{what} is {kind} grey (Pillow mode {mode}), whose range of values is unknown; save it as an 8- or "
            "16-bit image"
        )


def to_rgba(im: Image.Image, what: str = "an image") -> Image.Image:
    """``im`` as RGBA, 16-bit grey scaled to 8 bits first (0-65535 to 0-255, as the multimodal suite reads it:
    ``tasks.images.eight_bit``), its transparency entry kept as alpha (dropped, its pixels showed their grey, not
    white), turned upright as its EXIF Orientation says (a phone's photo), as ``datasets``' imagefolder and the
    multimodal suite's ``tasks.images.to_rgb`` read it (until 2026-12-07 read sideways: trained, scored and shown
    on the contact sheet so); ``ValueError`` for 32-bit grey."""
    from tasks.images import eight_bit, turned, upright_transpose

    _check_mode(im.mode, what, im.format)
    upright = upright_transpose(im)  # before eight_bit's copy drops the EXIF
    return turned(eight_bit(im).convert("RGBA"), upright)


def to_rgb(im: Image.Image, what: str = "an image") -> Image.Image:
    """``im`` as RGB, transparency composited on white (``to_rgba`` first)."""
    im = to_rgba(im, what)
    rgb = Image.new("RGB", im.size, (255, 255, 255))
    rgb.paste(im, mask=im.getchannel("A"))
    return rgb


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB in [-1, 1], ``size`` x ``size``: transparency composited on white, non-RGB converted (16-bit grey
    scaled to 8 bits: ``to_rgba``), resized on the short side and centre-cropped (diffusers' training
    transforms)."""
    with Image.open(path) as im:
        rgb = to_rgb(im, str(path))
    w, h = rgb.size
    scale = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    arr = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1).contiguous()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the folder's metadata files (``metadata.jsonl``, and ``train/``'s and ``test/``'s), by path."""
    files = [p for p in (folder / METADATA, folder / "train" / METADATA, folder / "test" / METADATA) if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def describe(data: Data) -> dict[str, Any]:
    return {
        "format": "imagefolder (metadata.jsonl: file_name, text)",
        "files": file_hashes(data.folder),
        "split": data.split,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "n_base": len(data.base),
    }


def load_hub(dataset: str, out: Path, split: str = "train") -> Path:
    """Save a hub image-caption dataset (``image`` + ``text`` columns; pokemon-blip-captions by default)
    as an imagefolder under ``out``. Needs the internet (or the datasets cache) and ``datasets`` (the ``hub`` extra)."""
    try:
        import datasets
    except ImportError:
        raise ValueError('load_hub needs the datasets package: pip install -e ".[hub]"') from None

    ds = datasets.load_dataset(dataset, split=split) if isinstance(dataset, str) else dataset
    return save_imagefolder(ds, out)


def save_imagefolder(ds: Any, out: Path) -> Path:
    """Rows with a PIL ``image`` and a ``text`` caption, written as ``out/images/*.png`` + metadata.jsonl. Kept
    with their transparency (RGBA), which ``load_image`` puts on white as it does for local files (an RGB
    copy would show transparent pixels in whatever colour they hide, mostly black). The metadata is written last
    and an earlier save's removed first: an interrupted save over an earlier one leaves a folder ``load`` refuses,
    not the earlier captions read beside the new images."""
    from harness.atomic import flush_folder, write_text

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / METADATA).unlink(missing_ok=True)
    flush_folder(out)  # its removal on the disk before any image is replaced
    lines = []
    for i, row in enumerate(ds):
        name = f"images/{i:05d}.png"
        to_rgba(row["image"], f"row {i}'s image").save(out / name)
        lines.append(json.dumps({"file_name": name, "text": row["text"]}))
    write_text(out / METADATA, "\n".join(lines) + "\n")
    return out
