"""Generation with the adapted UNet through diffusers' ``StableDiffusionPipeline``: one fixed seed per
prompt (the same for every method, so images pair across methods), classifier-free guidance."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from tasks.diffusion.model import Pipeline

SCHEDULERS = ("ddim", "dpm++")


def generate(
    pipe: Pipeline,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    guidance: float,
    scheduler: str = "ddim",
    batch_size: int = 8,
    progress: bool = True,
) -> list[Image.Image]:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown sampler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    cls: Any = DDIMScheduler if scheduler == "ddim" else DPMSolverMultistepScheduler
    sd = pipe.sd_pipeline(cls.from_config(pipe.scheduler.config))
    sd.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    size = pipe.resolution
    chunks = range(0, len(prompts), batch_size)
    for i in tqdm(chunks, desc="generate", disable=not progress):
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[i : i + batch_size]]
        with torch.no_grad():
            out = sd(
                prompts[i : i + batch_size],
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="pil",
            )
        images += out.images
    return images
