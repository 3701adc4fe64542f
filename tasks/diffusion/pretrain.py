"""The embedded base model: the small Stable Diffusion pipeline pre-trained once on the base part of the
data (every Twemoji category but the fine-tuning ones), then cached as a diffusers pipeline folder.

No pretrained SD weights install offline, so the base is made here, in two stages as SD's parts were:
the VAE alone (reconstruction MSE + a small KL term; its ``scaling_factor`` set to 1/std of the latents,
as SD's 0.18215), then the UNet and the CLIP text encoder together on the VAE's latents (epsilon MSE,
captions dropped 10% of the time so classifier-free guidance works). Every method then fine-tunes this
same base; the VAE and text encoder stay frozen from here on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness import models
from harness.atomic import _flush, flush_folder, library_writes
from harness.guard import RunLock
from tasks.diffusion import data as ddata
from tasks.diffusion import model as dmodel

VERSION = "1"
SETTINGS = {
    "vae": {"steps": 600, "batch_size": 32, "lr": 1e-3, "kl_weight": 1e-6},
    "unet": {"steps": 2000, "batch_size": 32, "lr": 5e-4, "caption_dropout": 0.1},
    "seed": 0,
}
INFO = "base.json"


def base_folder(base_rows: list[ddata.Item], settings: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """(the cached pipeline folder, its key): the key covers the rows, the configs and the settings."""
    settings = settings or SETTINGS
    rows = "\n".join(f"{r.image.name}\t{r.text}\t{hashlib.sha256(r.image.read_bytes()).hexdigest()}" for r in base_rows)
    key = {
        "version": VERSION,
        "rows_sha256": hashlib.sha256(rows.encode()).hexdigest(),
        "n_rows": len(base_rows),
        "configs": [dmodel.unet_config(), dmodel.vae_config(), dmodel.text_config(), dmodel.scheduler_config()],
        "settings": settings,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return models.cache_dir() / "diffusion" / f"base-{digest}", key


def is_pretrained(base_rows: list[ddata.Item], settings: dict[str, Any] | None = None) -> bool:
    """Whether the base of these rows and settings is in the cache already: ``ensure_base`` then reads it, tokenizer
    files included (the pipeline saves its own), and writes nothing."""
    folder, _ = base_folder(base_rows, settings)
    return (folder / INFO).is_file()


def check_cache_writable() -> None:
    """A ``ValueError`` in one line, naming the folder and ``HARNESS_CACHE``, where the folder the base is pre-trained
    into cannot be written: said before any run (``DiffusionTask.check_data_for``), where each run started, failed
    and left a failed record."""
    models.check_cache_writable(
        models.cache_dir() / "diffusion",
        "diffusion",
        "the embedded diffusion base is pre-trained into it (minutes, once)",
        "a cache that holds the pre-trained base already may be read-only",
    )


def ensure_base(
    base_rows: list[ddata.Item], settings: dict[str, Any] | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """The cached base folder, pre-training it first if it is not there (once; minutes); ``base_rows`` are the
    shipped Twemoji's (``ddata.load`` splits no other folder by category), as its info's "data" says. Always on the
    CPU, also where the runs use a GPU: its cache key names the rows and settings, and a GPU's random numbers
    (and kernels) would make another base under the same key."""
    device = torch.device("cpu")
    settings = settings or SETTINGS
    folder, key = base_folder(base_rows, settings)
    if (folder / INFO).is_file():
        return folder, json.loads((folder / INFO).read_text())
    check_cache_writable()  # said before the lock file is made in it, not as a PermissionError
    lock = RunLock(folder.with_name(f".{folder.name}.lock"))  # two runs starting at once: one pre-trains
    lock.acquire(blocking=True)
    try:
        if (folder / INFO).is_file():  # the other run made it while this one waited
            return folder, json.loads((folder / INFO).read_text())
        return _pretrain(folder, key, base_rows, settings, device, progress)
    finally:
        lock.release()


def _pretrain(folder: Path, key: dict[str, Any], base_rows, settings, device, progress: bool):
    if not base_rows:
        raise ValueError(
            "the embedded diffusion base pre-trains on the shipped Twemoji set's other categories, and this data "
            "has none; leave --data-dir unset (or point HARNESS_TWEMOJI_DIR at twemoji-64), or pass --model with a "
            "diffusers Stable Diffusion folder"
        )
    began = time.perf_counter()
    torch.manual_seed(settings["seed"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tok = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tok-"))
    try:
        pipe = dmodel.build(device, torch.float32, seed=settings["seed"], tokenizer_dir=tok)
    finally:
        shutil.rmtree(tok, ignore_errors=True)  # the pipeline saves its own copy of the tokenizer
    size = pipe.resolution
    images = torch.stack([ddata.load_image(r.image, size) for r in base_rows])
    captions = [r.text for r in base_rows]
    log = {
        "vae": _train_vae(pipe, images, settings["vae"], progress),
        "unet": _train_unet(pipe, images, captions, settings["unet"], progress),
    }
    info = {
        **key,
        "pretrain_s": round(time.perf_counter() - began, 1),
        "device": str(device),
        "vae_scaling_factor": pipe.vae.config.scaling_factor,
        "final_losses": {k: v[-1] for k, v in log.items()},
        "loss_curves": log,
        "data": "the shipped Twemoji (CC-BY 4.0, (c) Twitter, Inc. and other contributors), base categories",
    }
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        with library_writes(folder):  # a full disk: an OSError, which stops a sweep
            pipe.save_pretrained(tmp)
        (tmp / INFO).write_text(json.dumps(info, indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private
        _flush_tree(tmp)  # the files on the disk before the name points at them (a power cut: no empty weights)
        shutil.rmtree(folder, ignore_errors=True)  # under the lock, without INFO: a folder no run finished
        os.replace(tmp, folder)  # whole or absent: an interrupted pre-training leaves no half-written base
        flush_folder(folder.parent)  # and the rename itself
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, info


def _flush_tree(folder: Path) -> None:
    """``fsync`` every file under ``folder``, then each folder, the deepest first (``harness.atomic``'s flush)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            _flush(path)
        elif path.is_dir():
            flush_folder(path)
    flush_folder(folder)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        yield order[:batch_size]
        order = order[batch_size:]


def _train_vae(pipe: dmodel.Pipeline, images: torch.Tensor, s: dict[str, Any], progress: bool) -> list[float]:
    vae = pipe.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=s["lr"])
    gen = torch.Generator().manual_seed(1)
    curve = []
    for i, idx in enumerate(
        tqdm(
            _batches(len(images), s["batch_size"], s["steps"], gen),
            total=s["steps"],
            desc="base: VAE",
            disable=not progress,
        )
    ):
        x = images[idx].to(vae.device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + s["kl_weight"] * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 50 == 0 or i == s["steps"] - 1:
            curve.append(round(loss.item(), 5))
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat(
            [vae.encode(images[i : i + 256].to(vae.device)).latent_dist.mean for i in range(0, len(images), 256)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return curve


def _train_unet(
    pipe: dmodel.Pipeline, images: torch.Tensor, captions: list[str], s: dict[str, Any], progress: bool
) -> list[float]:
    unet, text = pipe.unet.train(), pipe.text_encoder.train().requires_grad_(True)
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=s["lr"])
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        dist = [pipe.vae.encode(images[i : i + 256].to(unet.device)).latent_dist for i in range(0, len(images), 256)]
    mean, std = torch.cat([d.mean for d in dist]), torch.cat([d.std for d in dist])
    ids = dmodel.tokenize(pipe.tokenizer, captions)
    empty = dmodel.tokenize(pipe.tokenizer, [""])[0]
    sched = pipe.scheduler
    curve = []
    for i, idx in enumerate(
        tqdm(
            _batches(len(images), s["batch_size"], s["steps"], gen),
            total=s["steps"],
            desc="base: UNet + text encoder",
            disable=not progress,
        )
    ):
        latents = (mean[idx] + std[idx] * torch.randn_like(std[idx])) * pipe.vae.config.scaling_factor
        tok = ids[idx].clone()
        tok[torch.rand(len(idx)) < s["caption_dropout"]] = empty
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), device=latents.device)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, text(tok.to(latents.device))[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i % 50 == 0 or i == s["steps"] - 1:
            curve.append(round(loss.item(), 5))
    unet.eval()
    text.eval().requires_grad_(False)
    return curve
