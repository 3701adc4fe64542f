"""Where the captioned Twemoji are (../shared/data/diffusion/twemoji-64, CC-BY 4.0): the real images the generated
multimodal data's general domain and the diffusion suite's embedded data come from."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]  # the folder holding tasks/ (a checkout: ../shared beside it)


def twemoji_dir(needed_by: str = "the generated multimodal data", instead: str = "a LLaVA-format folder") -> Path:
    """The captioned Twemoji folder the generated data's general domain (and the diffusion suite) comes from:
    ``HARNESS_TWEMOJI_DIR`` where it is set (a folder without metadata.jsonl is refused, not passed over for
    another), else beside ``HARNESS_DATA_DIR``, else beside the checkout."""
    if os.environ.get("HARNESS_TWEMOJI_DIR"):
        given = Path(os.environ["HARNESS_TWEMOJI_DIR"]).expanduser()  # "~/x" from the environment: not the shell's
        if not (given / "metadata.jsonl").is_file():
            raise ValueError(
                f"HARNESS_TWEMOJI_DIR {str(given)!r} has no metadata.jsonl; set it to the captioned Twemoji folder "
                "(metadata.jsonl, images/; ../shared/data/diffusion/twemoji-64), or unset it"
            )
        return given
    candidates = []
    if os.environ.get("HARNESS_DATA_DIR"):
        root = Path(os.environ["HARNESS_DATA_DIR"]).expanduser()
        candidates += [root / "diffusion" / "twemoji-64", root.parent / "diffusion" / "twemoji-64"]
    # beside the checkout whatever the working folder (a review: run elsewhere, the contact sheet silently drew
    # other real images), then beside the working folder as before
    for root in dict.fromkeys((CHECKOUT.parent, Path.cwd().parent)):
        candidates.append(root / "shared" / "data" / "diffusion" / "twemoji-64")
    for c in candidates:
        if (c / "metadata.jsonl").is_file():
            return c
    raise ValueError(
        f"{needed_by} needs the captioned Twemoji folder (metadata.jsonl, images/); set "
        f"HARNESS_TWEMOJI_DIR to it (../shared/data/diffusion/twemoji-64), or pass --data-dir with {instead} of your own"
    )
