"""How the diffusion task trains: diffusers' ``train_text_to_image_lora.py`` recipe.

The frozen VAE and text encoder run once per example, before training (the latent distribution and
the caption's hidden states are kept, as diffusers' ``--cache_latents``): a step samples the latents
from that distribution (x the VAE's scaling factor), Gaussian noise (plus ``noise_offset`` x per-channel
noise), a timestep uniformly, noises with the scheduler and regresses the UNet's output on the
scheduler's target (epsilon or v-prediction) with MSE, optionally weighted by min-SNR-gamma. FLOPs per
step are the UNet's (what the step computes). In eval mode (validation, the Reducer's rollouts) the
noise and timesteps come from each example's own seed, so a validation loss is the same every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.task import Batch, Example, Recipe
from tasks.diffusion import data as ddata
from tasks.diffusion.model import Pipeline, tokenize


@dataclass(frozen=True)
class Objective:
    """The recipe's settings (a preset's ``settings``; recorded and hashed into the run id)."""

    prediction_type: str = "epsilon"  # or "v_prediction"
    snr_gamma: float | None = None  # min-SNR-gamma weighting (5.0 in the paper that proposes it)
    noise_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: choose epsilon or v_prediction")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0 (got {self.snr_gamma}); leave it unset for plain MSE")


class DiffusionRecipe(Recipe):
    def __init__(self, pipe: Pipeline, objective: Objective) -> None:
        self.pipe, self.objective = pipe, objective
        self.size = pipe.resolution

    def encode(self, example: Example) -> dict[str, Any]:
        pipe = self.pipe
        device = pipe.unet.device
        with torch.no_grad():
            pixels = ddata.load_image(example.meta["image"], self.size).unsqueeze(0).to(device, pipe.vae.dtype)
            dist = pipe.vae.encode(pixels).latent_dist
            hidden = pipe.text_encoder(tokenize(pipe.tokenizer, [example.prompt]).to(device))[0]
        return {
            "mean": dist.mean[0].cpu(),
            "std": dist.std[0].cpu(),
            "hidden": hidden[0].cpu(),
            "seed": int(example.meta.get("seed", 0)),
        }

    def collate(self, items: list[dict[str, Any]]) -> Batch:
        return {
            "mean": torch.stack([i["mean"] for i in items]),
            "std": torch.stack([i["std"] for i in items]),
            "hidden": torch.stack([i["hidden"] for i in items]),
            "seed": torch.tensor([i["seed"] for i in items]),
        }

    def units(self, batch: Batch) -> int:
        return len(batch["mean"])

    def stats(self, batch: Batch) -> tuple[int, int]:
        n = len(batch["mean"])
        return n, n  # "tokens" are images for this task

    def shape(self, batch: Batch) -> list[int]:
        return [*batch["mean"].shape, *batch["hidden"].shape[1:]]

    def meta_batch(self, shape: list[int]) -> Batch:
        b, c, h, w, length, dim = shape
        meta = torch.device("meta")
        return {
            "mean": torch.zeros(b, c, h, w, device=meta),
            "std": torch.ones(b, c, h, w, device=meta),
            "hidden": torch.zeros(b, length, dim, device=meta),  # the caption states: no gradient, as in training
            "seed": torch.zeros(b, dtype=torch.long),
        }

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        unet = getattr(model, "module", model).unet  # under several processes: the DistributedDataParallel wrapper
        sched = self.pipe.scheduler
        mean, std = batch["mean"], batch["std"]
        n_steps = sched.config.num_train_timesteps
        if model.training or mean.device.type == "meta":
            eps_latent, noise = torch.randn_like(std), torch.randn_like(mean)
            t = torch.randint(0, n_steps, (len(mean),), device=mean.device)
            offset = torch.randn(len(mean), mean.shape[1], 1, 1, device=mean.device)
        else:  # fixed per example: the same validation loss every time it is asked for
            gens = [torch.Generator().manual_seed(int(s)) for s in batch["seed"]]
            eps_latent = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(mean)
            noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(mean)
            t = torch.stack([torch.randint(0, n_steps, (), generator=g) for g in gens]).to(mean.device)
            offset = torch.stack([torch.randn(mean.shape[1], 1, 1, generator=g) for g in gens]).to(mean)
        latents = (mean + std * eps_latent) * self.pipe.vae.config.scaling_factor
        if self.objective.noise_offset:
            noise = noise + self.objective.noise_offset * offset
        # the scheduler's add_noise / get_velocity, without their caching of alphas on the batch's device
        # (which would leave the shared scheduler on the meta device after FLOPs are counted)
        abar = sched.alphas_cumprod.to(mean.device)[t].to(latents.dtype).view(-1, 1, 1, 1)
        noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        target = (
            noise if self.objective.prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * latents
        )
        pred = model(noisy.to(unet.dtype), t, batch["hidden"].to(unet.dtype)).sample
        per_example = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.objective.snr_gamma is not None:
            snr = _snr(sched, t)
            weight = torch.clamp(snr, max=self.objective.snr_gamma)
            weight = weight / snr if self.objective.prediction_type == "epsilon" else weight / (snr + 1)
            per_example = per_example * weight
        return per_example.sum()


def _snr(scheduler: Any, t: torch.Tensor) -> torch.Tensor:
    """alpha_t^2 / sigma_t^2 of the noise schedule at ``t`` (diffusers' ``compute_snr``)."""
    abar = scheduler.alphas_cumprod.to(t.device)[t].float()
    return abar / (1 - abar)
