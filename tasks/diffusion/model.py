"""Stable Diffusion parts: the paper's pipeline (hub id or local diffusers folder), and the embedded one,
the same architecture at a CPU size (UNet2DConditionModel, AutoencoderKL, CLIP text encoder, DDPM noise
schedule), built from the configs below. The CLIP tokenizer's BPE vocabulary is read from the file
open-clip-torch ships (``bpe_simple_vocab_16e6.txt.gz``) without importing open_clip (which needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import hub
from harness.atomic import write_text

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408

# the embedded pipeline at 32 px: a VAE with 3 blocks (8x8x4 latents, SD's 4 latent channels and its
# down-sampling blocks at a smaller factor), a 3-level UNet with cross-attention, a 2-layer CLIP text encoder
EMBEDDED_RESOLUTION = 32


def vae_config() -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": EMBEDDED_RESOLUTION,
        "scaling_factor": 1.0,  # set from the trained latents' spread, as SD's 0.18215 was
    }


def unet_config() -> dict[str, Any]:
    return {
        "sample_size": EMBEDDED_RESOLUTION // 4,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [64, 128, 128],
        "layers_per_block": 1,
        "cross_attention_dim": 128,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def text_config() -> dict[str, Any]:
    return {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "projection_dim": 128,
    }


def scheduler_config() -> dict[str, Any]:
    """SD-1.5's noise schedule (scaled-linear betas, 1000 steps, epsilon prediction)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


class Pipeline(nn.Module):
    """The parts as one module (the base the core counts): adapters attach to ``unet``; the VAE and the
    text encoder stay frozen. ``tokenizer`` and ``scheduler`` are kept beside it (no parameters)."""

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler: Any):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        for part in (vae, text_encoder):
            part.requires_grad_(False)
        # diffusers' StableDiffusionPipeline mends an old UNet config as it is built (saved before diffusers 0.9 with
        # sample_size < 64: set to 64, the SD-1.x config bug); built once here, before ``resolution`` is read, so a
        # run trains, samples and scores the real images at one size (its first sampling changed it under the run)
        self.sd_pipeline()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The UNet's forward (the trained path; the frozen parts run before training, see recipe.py)."""
        return self.unet(*args, **kwargs)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = tokenize(self.tokenizer, captions).to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def sd_pipeline(self, scheduler: Any = None):
        """diffusers' ``StableDiffusionPipeline`` over these parts (no safety checker: not a served model)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler or self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_pretrained(self, folder: Path) -> None:
        """A diffusers pipeline folder (``model_index.json``, one subfolder per part)."""
        self.sd_pipeline().save_pretrained(folder, safe_serialization=True)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """As diffusers' training script: padded to the tokenizer's maximum length, truncated."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def load_folder(folder: str | Path, device: torch.device, dtype: torch.dtype) -> Pipeline:
    """A diffusers Stable Diffusion folder (``~`` expanded), or a hub id (``runwayml/stable-diffusion-v1-5``, read
    where it lives now, or offline from a copy cached under the old id: ``harness.hub.hub_source``), part by part.
    A folder on the disk comes first, as ``models.resolve`` reads one: from a review, ``~/sd15`` and a folder spelled
    as the paper's id (``hf download ... --local-dir runwayml/stable-diffusion-v1-5``) passed every check that reads
    the disk, then were looked for on the hub (the moved id's repository, offline a failed run each)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(folder).expanduser()
    src = str(local) if local.exists() else hub.hub_source(str(folder))
    try:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype)
        text = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
        scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
    except OSError as exc:  # a hub id offline, gated or gone: the libraries say so in several lines
        if not hub.is_hub_id(str(folder)):
            raise
        raise hub.hub_load_error(str(folder), exc) from None
    return Pipeline(unet.to(device), vae.to(device), text.to(device), tokenizer, scheduler)


def build(
    device: torch.device,
    dtype: torch.dtype,
    *,
    seed: int,
    unet: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    tokenizer_dir: Path | None = None,
) -> Pipeline:
    """The embedded architecture (or the given configs) with random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_cfg = text or text_config()
    parts = (
        UNet2DConditionModel.from_config(unet or unet_config()),
        AutoencoderKL.from_config(vae or vae_config()),
        CLIPTextModel(CLIPTextConfig(**text_cfg)),
    )
    parts = tuple(p.to(device) if dtype == torch.float32 else p.to(device=device, dtype=dtype) for p in parts)
    tokenizer = clip_tokenizer(tokenizer_dir, max_length=text_cfg["max_position_embeddings"])
    return Pipeline(*parts, tokenizer, DDPMScheduler.from_config(scheduler_config()))


def bpe_path() -> Path:
    """CLIP's BPE merges file inside the installed open-clip-torch package, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    path = (
        Path(list(spec.submodule_search_locations)[0]) / BPE_FILE if spec and spec.submodule_search_locations else None
    )
    if path is None or not path.is_file():
        raise ValueError(
            "a diffusion pipeline built here (the embedded base still to pre-train, or --random-weights) makes its "
            "CLIP tokenizer from open-clip-torch's BPE vocabulary: pip install --no-deps open-clip-torch (no "
            "torchvision needed; the package is not imported)"
        )
    return path


def clip_tokenizer(folder: Path | None = None, max_length: int = 77):
    """transformers' ``CLIPTokenizer`` with CLIP's vocabulary (49,408 tokens), written as vocab.json and
    merges.txt into ``folder`` (built the way OpenAI's ``simple_tokenizer`` builds it from the merges)."""
    import tempfile

    from transformers import CLIPTokenizer

    if folder is None:  # files only to build it from: the tokenizer holds its vocabulary once built
        with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as scratch:
            return clip_tokenizer(Path(scratch), max_length)
    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        # each file whole or absent, vocab.json (the one checked above) last
        write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>"
    )


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))
