"""Image files as the image suites read them: checked once, structure and pixels, when the data is read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile

_DECODED: set[tuple[object, ...]] = set()  # the files found to decode, as identified by ``_identity``
_PIXELS: dict[tuple[object, ...], str] = {}  # ``pixel_digest`` of a file, as identified by ``_identity``
# what turns an image upright for its EXIF Orientation (2-8), as ``PIL.ImageOps.exif_transpose`` turns it
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _identity(path: Path) -> tuple[object, ...]:
    """The file as it is now: its path, device, inode, size, modification and change times, and the pixel limit
    it was checked under (a larger ``Image.MAX_IMAGE_PIXELS`` lets through what a smaller one refuses). The change
    time is there because the modification time can be set back (``cp -p``, ``tar x``, ``os.utime`` after an
    in-place edit); no user call sets the change time, and every write moves it."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return (*key, Image.MAX_IMAGE_PIXELS)


def check_decodes(path: Path) -> None:
    """Raise what Pillow raises (``OSError``, ``SyntaxError``, ``Image.DecompressionBombError``, ...) unless the
    file's structure and checksums pass ``verify()`` and its pixels decode: a data stream can pass the first and
    still not decode. Truncated or corrupt pixels are refused even where a library imported in this process
    lets Pillow load them (lmms-eval sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` on import).

    A file that passed is not decoded again in this process while it stays the same file (path, inode, size,
    modification and change times): a run reads its data several times (its description, its training files, its test
    split), and decoding the embedded multimodal data's 1,575 images took ~2 s a read. A file that fails is
    never remembered, and one that changes is checked again."""
    key = _identity(path)
    if key in _DECODED:
        return
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    _DECODED.add(key)


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy of ``image`` as transformers' ``convert_to_rgb`` (LLaVA's image processor) makes it: where
    it has transparency (an alpha band, or a palette, grey or RGB image's transparency entry) composited onto
    white; a plain ``convert("RGB")`` drops the alpha and shows transparent pixels in the colour they hide, mostly
    black. Unlike it, 16-bit grey (``sixteen_bit``) is first scaled from 0-65535 to 0-255 (``eight_bit``):
    ``convert`` clips it, so a 16-bit PNG became black and white. Other 32-bit integer grey (a TIFF's, mode ``I``),
    whose range the file does not say, is converted as before (clipped to 0-255: 0-255 grey reads as it is): the
    multimodal suite meets images where it has no place to refuse them before training (lmms-eval's benchmarks, the
    Python API), where the diffusion suite refuses them as its data is read. Turned upright as its EXIF Orientation
    says (a phone's photo), as ``datasets`` and transformers' ``load_image`` read it (``ImageOps.exif_transpose``):
    the same photo read sideways from a folder, upright from the hub (until 2026-12-07). What the multimodal vision
    towers read, and what ``pixel_digest`` hashes."""
    upright = upright_transpose(image)  # before eight_bit's copy drops the EXIF
    image = eight_bit(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return turned(rgb, upright)


def upright_transpose(image: Image.Image) -> Image.Transpose | None:
    """What turns ``image`` upright for its EXIF Orientation (``None``: it is), read before a copy drops the EXIF."""
    return _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))


def turned(image: Image.Image, transpose: Image.Transpose | None) -> Image.Image:
    """``image`` turned by ``transpose`` (``upright_transpose`` of the file it came from), its EXIF (kept from the
    file) dropped: read again, it would be turned twice (a review: lmms-eval's visuals are ``to_rgb``'s copies,
    which the vision tower's preprocessing passes to ``to_rgb`` again; the diffusion suite's ``load_hub`` saves
    copies that are read again)."""
    if transpose is None:
        return image
    image = image.transpose(transpose)
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif"):
        image.info.pop(key, None)
    return image


def sixteen_bit(mode: str, fmt: str | None) -> bool:
    """Whether an image of Pillow ``mode`` read from a file of format ``fmt`` is 16-bit grey: ``I;16``, ``I;16B``,
    ``I;16L``, ``I;16N``, or a PNG's ``I`` (Pillow before 10.3 opened 16-bit grey PNGs as ``I``; a PNG holds at
    most 16 bits a sample). Another ``I`` (a TIFF's 32-bit integers, one made in memory) may hold 0-255 grey as
    well as 0-65535: its mode does not say which. The one rule of both image suites."""
    return mode.startswith("I;16") or (mode == "I" and fmt == "PNG")


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit grey when it is 16-bit grey (``sixteen_bit``): scaled from 0-65535 (value / 257,
    rounded), ``LA`` where a transparency entry names a 16-bit value (Pillow's ``convert("RGBA")`` ignores it in
    these modes, so its pixels would show their grey), else ``L``. Any other image as it is."""
    if not sixteen_bit(image.mode, image.format):
        return image
    values = np.asarray(image)  # numpy reads the byte order from the mode
    grey = Image.fromarray(np.round(np.clip(values, 0, 65535) / 257).astype(np.uint8))
    transparent = image.info.get("transparency")
    if transparent is None:
        return grey
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))


def pixel_digest(path: Path) -> str:
    """``"(width, height) sha256"`` of the file's pixels as the image suites' vision towers read them (``to_rgb``:
    the same picture saved as PNG and as BMP, palette or not, is one digest; transparency is composited onto white,
    as the towers see it). Computed once a process while the file stays the same file (``_identity``); raises what
    Pillow raises."""
    key = _identity(path)
    if key not in _PIXELS:
        with Image.open(path) as im:
            rgb = to_rgb(im)
        _PIXELS[key] = f"{rgb.size} {hashlib.sha256(rgb.tobytes()).hexdigest()}"
    return _PIXELS[key]
