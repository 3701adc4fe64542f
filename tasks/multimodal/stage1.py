"""LLaVA's stage 1 for the embedded model: align the projector on image → caption pairs, once, cached.

Only the projector trains (language model and vision encoder frozen); the loss is the mean cross-entropy
of the caption tokens (and the closing eos) after ``PROMPT``. The encoder is frozen, so its features are
computed once per distinct image before the first step, for the images the steps draw only (every step's draw
is made first: 360 steps of 16 read at most 5,760 images, not all of LLaVA-Pretrain's 558K, whose features
would take ~140 GB); a step then runs projector + language model only.
Rows are left-padded, so every caption ends at the last column and only the last ``K`` logits are made
(``logits_to_keep``, K = the longest caption + 1) instead of ``tokens × 49,152`` of them.

The projector's weights go to ``cache_dir()/multimodal/stage1-<hash>.pt`` (temp file, then rename);
the hash covers the caller's ``cache_key`` (data file sha256s, model ids, …), the hyper-parameters, the
projector's initial weights and ``CODE_VERSION``, so a later call with the same inputs loads them instead
of training. One process aligns under a lock beside the file (``.stage1-<hash>.lock``); another with the same
key waits and loads its file. A file that does not read as this projector (truncated, empty, another shape)
is kept as ``stage1-<hash>.pt.unreadable``, said, and the projector aligned again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tasks.multimodal.model import IMAGE_TAG, LlavaStyle, expand_image_tokens, left_pad, pad_id
from tasks.multimodal.vision import load_image, preprocess

CODE_VERSION = "1"  # bump when the recipe below changes what a cached projector means
INSTRUCTION = "<image>\nDescribe the image."
PROMPT = INSTRUCTION + "\n"  # the raw prompt (template "raw")
TEMPLATES = ("raw", "chat")
WARMUP = 0.03  # fraction of steps with a linear warm-up, then cosine decay to 0 (LLaVA's schedule)
ENCODE_BATCH = 32  # images per frozen-encoder forward while caching features


def prompt_for(tokenizer: Any, template: str) -> str:
    """Stage 1's prompt: ``"raw"`` is ``PROMPT``; ``"chat"`` puts ``INSTRUCTION`` in the chat format stage 2
    uses (``recipe.chat_prompt``), as LLaVA aligns in its conversation format, so that the projector learns
    to speak to the language model in the context it will be asked questions in."""
    if template == "raw":
        return PROMPT
    if template == "chat":
        from tasks.multimodal.recipe import chat_prompt

        return chat_prompt(tokenizer, INSTRUCTION)
    raise ValueError(f"unknown stage-1 template {template!r}; choose one of {', '.join(TEMPLATES)}")


def cache_path(key: dict[str, Any]) -> tuple[Path, str]:
    """Where the projector for ``key`` (everything that determines it) is cached, and the key's hash."""
    from harness.models import cache_dir

    try:
        text = json.dumps(key, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"cache_key must hold only JSON values (str, int, float, bool, lists, dicts): {exc}") from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return cache_dir() / "multimodal" / f"stage1-{digest}.pt", digest


def align_projector(
    model: LlavaStyle,
    tokenizer: Any,
    captions: Sequence[tuple[Image.Image | str | Path, str]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    cache_key: dict[str, Any],
    prompt: str = PROMPT,
) -> dict[str, Any]:
    """Train ``model.projector`` on ``captions`` (or load it from the cache) and return the provenance:
    path, hash, steps, batch_size, lr, seed, loss (one value a step), train_s, loaded (from the cache)."""
    _check_args(model, captions, steps, batch_size, lr, prompt)
    key = {
        "cache_key": cache_key,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "prompt": prompt,
        "code_version": CODE_VERSION,
        "projector_init_sha256": _fingerprint(model.projector.state_dict()),  # the start point is an input too
        "tokens_per_image": model.tokens_per_image,
    }
    lm_dtype = model.get_input_embeddings().weight.dtype
    if lm_dtype != torch.float32:  # a bf16 model (a GPU): its projector trains in fp32 since 2026-12-06 (in bf16
        # before, under the same key): the key tells the two apart; a CPU run's (fp32) key is as it was
        key["precision"] = {"model": str(lm_dtype), "projector": str(model.projector[0].weight.dtype)}
    path, digest = cache_path(key)
    if path.is_file():  # cached: loaded without the lock (a read-only cache too); the file is renamed in whole
        with contextlib.suppress(Exception):  # an unreadable one is read again, and set aside, under the lock
            return _load(path, model)
    from harness.guard import RunLock

    # two processes starting at once (torchrun ranks, two runs on a fresh cache): one aligns (~23 min on a CPU), the
    # other waits and loads what it wrote, as the diffusion suite's pretrained base and the data's build do
    lock = RunLock(path.with_name(f".{path.stem}.lock"))
    lock.acquire(blocking=True, on_wait=_say_waiting)
    try:
        if path.is_file():
            try:
                return _load(path, model)
            except Exception as exc:  # truncated, empty, another shape: set aside, aligned again
                _set_aside(path, exc)
        return _align(model, tokenizer, captions, steps, batch_size, lr, seed, prompt, path, digest, cache_key)
    finally:
        lock.release()


def _say_waiting(holder: str) -> None:
    print(f"stage 1: {holder or 'another process'} aligns this projector; waiting to load it", file=sys.stderr)


def _load(path: Path, model: LlavaStyle) -> dict[str, Any]:
    """The cached projector's provenance, its weights loaded into ``model``: checked whole first, so that a file
    holding another projector leaves ``model``'s as it was (``load_state_dict`` copies the tensors that fit before
    it raises for those that do not)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state, record = (saved.get("projector"), saved.get("record")) if isinstance(saved, dict) else (None, None)
    if not isinstance(state, dict) or not isinstance(record, dict):
        raise ValueError("not a stage-1 projector file")
    ours = model.projector.state_dict()
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in state.items()}
    if shapes != {k: tuple(v.shape) for k, v in ours.items()}:
        raise ValueError(f"it holds a projector of other tensors or shapes ({shapes})")
    model.projector.load_state_dict(state)
    return {**record, "path": str(path), "loaded": True}


def _set_aside(path: Path, exc: Exception) -> None:
    """Keep an unreadable cache file as ``<name>.unreadable`` and say so, as ``harness.train_checkpoint`` does with a
    checkpoint; an error of the machine (no memory, an I/O or permission error) is raised, the file left in place."""
    from harness.train_checkpoint import _MACHINE_ERRORS, UNREADABLE, CheckpointUnreadable

    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _MACHINE_ERRORS):
        raise CheckpointUnreadable(  # the command stops (harness.runner): the next runs would meet the same machine
            f"could not read the stage-1 projector {path} ({type(exc).__name__}: {exc}); it is kept: free memory, or "
            "fix the disk or the file's permissions, then run the same command again, which loads it"
        ) from exc
    kept = path.with_name(path.name + UNREADABLE)
    with contextlib.suppress(FileNotFoundError):  # set aside by a process of an older harness (no lock)
        path.replace(kept)
    print(
        f"warning: the stage-1 projector {path} is unreadable ({type(exc).__name__}: {exc}); aligning it again "
        f"(the file is kept as {kept.name})",
        file=sys.stderr,
    )


def _align(
    model: LlavaStyle,
    tokenizer: Any,
    captions: Sequence[tuple[Image.Image | str | Path, str]],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    prompt: str,
    path: Path,
    digest: str,
    cache_key: dict[str, Any],
) -> dict[str, Any]:
    started = time.perf_counter()
    losses = _train(model, tokenizer, captions, steps, batch_size, lr, seed, prompt)
    record = {
        "hash": digest,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "prompt": prompt,
        "examples": len(captions),
        "loss": losses,
        "train_s": round(time.perf_counter() - started, 3),
        "cache_key": cache_key,
    }
    from harness.atomic import save_torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.projector.state_dict().items()}
    save_torch(path, {"projector": state, "record": record})  # a killed run leaves no half file for the next one
    return {**record, "path": str(path), "loaded": False}


def _train(
    model: LlavaStyle,
    tokenizer: Any,
    captions: Sequence[tuple[Image.Image | str | Path, str]],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    prompt: str,
) -> list[float]:
    from tqdm.auto import tqdm

    device = model.projector[0].weight.device
    order = _Sampler(len(captions), seed)
    batches = [order.take(batch_size) for _ in range(steps)]  # every step's draw, before any image is encoded
    drawn = sorted({i for rows in batches for i in rows})  # in the captions' order: all of them, the same chunks
    encoded, image_of = _encode_once(model, [captions[i][0] for i in drawn])  # only what the steps read
    feature_row = dict(zip(drawn, image_of, strict=True))
    prompt_ids = expand_image_tokens(tokenizer, prompt, model.image_token_id, model.tokens_per_image)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    targets = {i: list(tokenizer(captions[i][1], add_special_tokens=False)["input_ids"]) + eos for i in drawn}
    padding = pad_id(tokenizer)

    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.requires_grad_(False)
    model.set_projector_trainable(True)
    model.train()  # the vision encoder stays in eval mode by itself
    params = list(model.projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, round(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    losses: list[float] = []
    try:
        bar = tqdm(batches, desc="stage 1 (projector)", unit="step", leave=False)
        for rows in bar:
            keep = max(len(targets[i]) for i in rows) + 1  # the logit before each caption token predicts it
            batch = left_pad([prompt_ids + targets[i] for i in rows], padding)
            labels = torch.full((len(rows), keep - 1), -100, dtype=torch.long)
            for r, i in enumerate(rows):
                labels[r, keep - 1 - len(targets[i]) :] = torch.tensor(targets[i])
            mask = batch["attention_mask"]
            out = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=mask.to(device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),  # left padding: rows start at 0
                vision_features=encoded[[feature_row[i] for i in rows]].to(device),
                logits_to_keep=keep,
            )
            loss = F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), labels.to(device).flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(round(loss.item(), 5))  # sync point, once a step
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name])
        # the last step's gradient goes too: stage 2's first step (where the projector trains) added it to its own,
        # which a projector loaded from the cache never had
        model.projector.zero_grad(set_to_none=True)
    return losses


def _encode_once(model: LlavaStyle, images: Sequence[Image.Image | str | Path]) -> tuple[Tensor, list[int]]:
    """Frozen encoder features ``[distinct images, tokens, 1280]`` (on the CPU) and, per example, the row of
    its image. Images are the same when they are the same object or the same path."""
    rows: dict[Any, int] = {}
    distinct: list[Image.Image | str | Path] = []
    image_of = []
    for image in images:
        key = str(Path(image).resolve()) if isinstance(image, (str, Path)) else id(image)
        if key not in rows:
            rows[key] = len(distinct)
            distinct.append(image)
        image_of.append(rows[key])
    from tqdm.auto import tqdm

    device = model.projector[0].weight.device
    chunks = []
    # a bar as stage 1's steps have (hidden alike under --quiet): from a review, the ~1,200 images of the embedded
    # preset took ~2 minutes before the steps' bar, with nothing said
    with tqdm(total=len(distinct), desc="stage 1 (encoding images)", unit="image", leave=False) as bar:
        for start in range(0, len(distinct), ENCODE_BATCH):
            chunk = distinct[start : start + ENCODE_BATCH]
            pixels = preprocess([load_image(i) for i in chunk], model.config.image_size)
            chunks.append(model.encode_images(pixels.to(device)).cpu())
            bar.update(len(chunk))
    return torch.cat(chunks), image_of


def _fingerprint(state: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Sampler:
    """Indices in a fresh seeded permutation per pass over the data (every example once per epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.generator, self.queue = n, torch.Generator().manual_seed(seed), []

    def take(self, k: int) -> list[int]:
        while len(self.queue) < k:
            self.queue += torch.randperm(self.n, generator=self.generator).tolist()
        out, self.queue = self.queue[:k], self.queue[k:]
        return out


def _check_args(model: Any, captions: Sequence[Any], steps: int, batch_size: int, lr: float, prompt: str) -> None:
    if not isinstance(model, LlavaStyle):
        raise ValueError(
            f"stage 1 aligns a LlavaStyle model's projector, not a {type(model).__name__}; use build_embedded()"
        )
    if not captions:
        raise ValueError("no captions given; pass a list of (image or path, caption) pairs")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} is not valid; give a positive int")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr={lr!r} is not valid; give a positive float, e.g. 1e-3")
    if prompt.count(IMAGE_TAG) != 1:
        raise ValueError(f"the stage-1 prompt {prompt!r} must hold exactly one <image>; e.g. {PROMPT!r}")
