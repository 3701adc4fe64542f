"""HPS v2 (Wu et al., 2023): an OpenCLIP ViT-H-14 fine-tuned on human preferences; the score of an image
for its prompt is 100 x the cosine of their embeddings, as EffiLoRA Table 5 reports it.

The user supplies the checkpoint (``--hps-checkpoint``: ``HPS_v2_compressed.pt``, a dict with a
``state_dict``), loaded with ``weights_only=True``: a file that holds more than weights is refused, and one that
does not fit the model leaves the column absent, as does an open_clip that cannot build the model (one too old for
``output_dict``, or out of memory), saying what to do. The model and its tokenizer come from open-clip-torch; the
``hpsv2`` wheel lacks the tokenizer's BPE vocabulary file, which open-clip-torch ships, so it is not needed.
open_clip imports torchvision: where that import fails (a CPU machine without a working torchvision) HPS v2 is
``absent``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from harness.identity import file_sha256

ARCH = "ViT-H-14"


def checkpoint_sha256(path: Path) -> str:
    """The sha256 of the checkpoint file at ``path`` (~2 GB: in chunks, once a process while the file stays the
    same: ``harness.identity.file_sha256``); "" where there is no file."""
    return file_sha256(path) if path.is_file() else ""


class Unavailable(Exception):
    """HPS v2 cannot run here; the message says why (the column is then ``absent``)."""


def open_clip_module():
    """open_clip, imported; ``Unavailable`` saying why not (before training, ``DiffusionTask.check_options`` asks
    this, so that a run that asked for HPS v2 is not trained to find its column absent)."""
    try:
        import open_clip
    except Exception as exc:  # ImportError, or torchvision's own import errors
        raise Unavailable(
            f"open_clip cannot be imported ({type(exc).__name__}: {exc}); install open-clip-torch "
            "with a torchvision that matches torch"
        ) from None
    return open_clip


def _out_of_memory(exc: BaseException, first: str) -> bool:
    """Whether ``exc`` (its message's first line ``first``) says memory ran out: ``MemoryError``, or torch's
    ``RuntimeError`` ("DefaultCPUAllocator: not enough memory", "CUDA out of memory")."""
    return isinstance(exc, MemoryError) or "memory" in first.lower()


class HPSv2:
    def __init__(self, checkpoint: Path, arch: str = ARCH, device: str = "cpu") -> None:
        open_clip = open_clip_module()
        if not checkpoint.is_file():
            raise Unavailable(f"HPS v2 checkpoint {checkpoint.name!r} is not a file")
        try:  # an open_clip too old for output_dict, or no memory for ViT-H: the column is absent, the run goes on
            # output_dict: the forward returns the normalised features by name, as HPS v2's own scoring code
            # builds the model (without it open_clip returns a tuple)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=None, device=device, output_dict=True
            )
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0]
            fix = (
                "free memory, or score on a larger machine (harness rescore)"
                if _out_of_memory(exc, first)
                else "upgrade open-clip-torch (pip install -U open-clip-torch)"
            )
            version = getattr(open_clip, "__version__", "of unknown version")
            raise Unavailable(
                f"open_clip {version} cannot build HPS v2's {arch} ({type(exc).__name__}: {first}); {fix}"
            ) from None
        try:  # tensors and plain containers only: a checkpoint file cannot run code here
            state = torch.load(checkpoint, map_location=device, weights_only=True)
        except pickle.UnpicklingError as exc:  # pickled objects beyond tensors, or not a torch file at all
            raise Unavailable(
                f"HPS v2 checkpoint {checkpoint.name!r} is not a file of weights alone, refused by torch.load("
                f"weights_only=True) ({str(exc).splitlines()[0]}); pass HPS v2's state_dict saved on its own"
            ) from None
        except (RuntimeError, OSError, EOFError, MemoryError) as exc:  # truncated, damaged, unreadable, too large
            first = (str(exc).splitlines() or [""])[0]
            fix = (
                "free memory, or score on a larger machine (harness rescore)"
                if _out_of_memory(exc, first)
                else "download it again"
            )
            raise Unavailable(
                f"HPS v2 checkpoint {checkpoint.name!r} cannot be read ({type(exc).__name__}: {first}); {fix}"
            ) from None
        try:  # weights of another model, or not a state dict at all: the column is absent, the run goes on
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except (RuntimeError, KeyError, AttributeError, TypeError) as exc:
            raise Unavailable(
                f"HPS v2 checkpoint {checkpoint.name!r} does not fit open_clip's {arch} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); pass HPS v2's own checkpoint"
            ) from None
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer
        self.device = device
        digest = checkpoint_sha256(checkpoint)
        self.provenance: dict[str, Any] = {"file": checkpoint.name, "sha256": digest, "arch": arch}

    def score(self, images: list, prompts: list[str]) -> list[float]:
        out = []
        with torch.no_grad():
            for image, prompt in zip(images, prompts, strict=True):
                pixels = self.preprocess(image).unsqueeze(0).to(self.device)
                text = self.tokenizer([prompt]).to(self.device)
                feats = self.model(pixels, text)
                img, txt = feats["image_features"], feats["text_features"]
                out.append(round(100 * float((img * txt).sum()), 4))
        return out
