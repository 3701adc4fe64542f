"""The multimodal suite's hub source: LLaVA-OneVision subsets saved as a local data folder's training files
(``load_hub``), rows converted to LLaVA records (``rows_to_records``) as ``tasks.multimodal.data`` reads them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from harness.atomic import atomic_path
from tasks.images import to_rgb
from tasks.multimodal.data import IMAGE_TOKEN, check_domain, conversation_problem

HUB_NAME = "lmms-lab/LLaVA-OneVision-Data"
# A few LLaVA-OneVision subsets per domain; pass your own mapping to load_hub for others
HUB_SUBSETS = {
    "general": ["aokvqa(cauldron,llava_format)"],
    "document": ["infographic_vqa", "sroie"],
    "math": ["mavis_math_metagen"],
}
_ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def rows_to_records(
    rows: Iterable[Mapping[str, Any]], *, domain: str, out_dir: Path, prefix: str, limit: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Hub rows (``id``, ``image``: PIL image or None, ``conversations``) to LLaVA records, images as PNG.

    Images go to ``out_dir/images/<prefix>-<n>.png`` in RGB, any transparency composited onto white as the vision
    towers read it (``to_rgb``; ``convert("RGB")`` showed a palette image's transparent pixels in the colour they
    hide); ids become ``<prefix>:<row id>``. Roles user/assistant are read as human/gpt, and ``<image>\\n`` is put
    before the first human turn when an image has no token. Returns the records and, for each row left out, why.
    """
    check_domain(domain, f"domain {domain!r}")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix).strip("_") or "hub"
    (Path(out_dir) / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        image = row.get("image")
        conversations = [
            {"from": _ROLE_ALIASES.get(t.get("from"), t.get("from")), "value": t.get("value")}
            for t in row.get("conversations") or []
            if isinstance(t, Mapping)
        ]
        if image is not None and conversations and isinstance(conversations[0]["value"], str):
            if not any(IMAGE_TOKEN in (t["value"] or "") for t in conversations[::2]):
                conversations[0]["value"] = f"{IMAGE_TOKEN}\n{conversations[0]['value']}"
        if image is not None and not isinstance(image, Image.Image):
            skipped.append(f"row {n} (id {row.get('id')!r}): image is a {type(image).__name__}, not a PIL image")
            continue
        problem = conversation_problem(conversations, 0 if image is None else 1)
        if problem:
            skipped.append(f"row {n} (id {row.get('id')!r}): {problem}")
            continue
        rid = row.get("id")
        record: dict[str, Any] = {"id": f"{prefix}:{n if rid is None else rid}", "domain": domain}
        if image is not None:
            name = f"images/{slug}-{len(records):06d}.png"
            to_rgb(image).save(Path(out_dir) / name)
            record["image"] = name
        records.append({**record, "conversations": conversations})
    return records, skipped


def load_hub(
    name: str = HUB_NAME,
    subsets: dict[str, list[str]] | None = None,
    split: str = "train",
    out_dir: Path | None = None,
    limit: int | None = None,
) -> Path:
    """Download ``subsets`` (domain -> hub subsets) into ``out_dir`` as ``train-<domain>.json`` + ``images/``.

    Hub rows carry no scoring fields, so they become training data; ``limit`` caps the rows per subset
    (and streams, so a capped download reads only what it keeps).
    """
    try:
        import datasets  # heavy; only the online source needs it
    except ImportError:
        raise ValueError('load_hub needs the datasets package: pip install -e ".[hub]"') from None

    subsets = HUB_SUBSETS if subsets is None else subsets
    if out_dir is None:
        raise ValueError("load_hub needs out_dir: the data folder to write train-<domain>.json and images/ into")
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit} must be a positive number of rows per subset, or None for all")
    out_dir = Path(out_dir)
    if (out_dir / "train.json").is_file():
        raise ValueError(
            f"{out_dir} already holds train.json; pick another out_dir (load_hub writes train-<domain>.json)"
        )
    for domain in subsets:
        check_domain(domain, f"subsets key {domain!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for domain, names in subsets.items():
        records: list[dict[str, Any]] = []
        for subset in names:
            rows = datasets.load_dataset(name, subset, split=split, streaming=limit is not None)
            got, skipped = rows_to_records(
                rows, domain=domain, out_dir=out_dir, prefix=f"{domain}-{subset}", limit=limit
            )
            if skipped:
                print(f"{name}/{subset}: left out {len(skipped)} row(s), e.g. {skipped[0]}")
            records += got
        if not records:
            raise ValueError(f"{name}: subsets {names} gave no usable rows for {domain}; check the subset names")
        with atomic_path(out_dir / f"train-{domain}.json") as tmp:
            tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir
