"""Image files as the image suites read them: checked once, structure and pixels, when the data is read."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageFile


def check_decodes(path: Path) -> None:
    """Raise what Pillow raises (``OSError``, ``SyntaxError``, ``Image.DecompressionBombError``, ...) unless the
    file's structure and checksums pass ``verify()`` and its pixels decode: a data stream can pass the first and
    still not decode. Truncated or corrupt pixels are refused even where a library imported in this process
    lets Pillow load them (lmms-eval sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` on import)."""
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed
