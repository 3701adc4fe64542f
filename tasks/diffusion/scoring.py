"""The offline scores, which run everywhere: generated images against the held-out real ones in the
feature space of a real pretrained network (EfficientNet-Lite0, ImageNet weights: the multimodal suite's
vision encoder, global-average-pooled to 1280 numbers), and prompt fidelity by a classifier that never
saw a generated image.

- ``similarity``: per prompt, 100 x the cosine between the features of the image generated for a held-out
  caption and of that caption's real image (higher is closer); paired over prompts between methods.
- ``kid``: Kernel Inception Distance (the unbiased MMD^2 of independent sets, cubic polynomial kernel, x1000;
  its cross term holds each prompt's own pair too, a little low: README) between the images
  generated for the scored prompts and those prompts' real held-out images (every test image unless
  ``eval_limit`` samples them); lower is closer; a bootstrap interval over images.
- ``fidelity``: the share (%) of generated images a logistic-regression classifier, trained on the real
  images' features of every category (test images excluded), assigns to the caption's category.
Real and generated images are compared at the generator's resolution (the real ones are resized to it).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness import models
from tasks.diffusion import data as ddata

FEATURE_SIZE = 224  # EfficientNet-Lite0's training resolution; images are upscaled to it
KID_RESAMPLES = 500


@functools.cache
def _encoder():
    from tasks.multimodal.vision import load_efficientnet_lite0

    return load_efficientnet_lite0(pretrained=True, image_size=FEATURE_SIZE)


def features(images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """``[N, 1280]`` pooled ImageNet features (fp32, CPU)."""
    from tasks.multimodal.vision import preprocess

    enc, out = _encoder(), []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(enc(preprocess(images[i : i + batch_size], FEATURE_SIZE)).mean(dim=1))
    return torch.cat(out)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [-1, 1] to an RGB image."""
    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def real_images(items: list[ddata.Item], size: int) -> list[Image.Image]:
    return [to_pil(ddata.load_image(i.image, size)) for i in items]


def similarity(gen: torch.Tensor, real: torch.Tensor) -> list[float]:
    return (100 * torch.nn.functional.cosine_similarity(gen, real, dim=1)).tolist()


KID_CI_FROM = 5  # images a set from which KID gets a bootstrap interval (2 give one value whatever is drawn)
# 100 x a cosine (as HPS v2's, tasks/diffusion/scorers.py), not percent right: a scale the leaderboard reads as no
# percent (0-100 would be read as right/wrong outcomes); these features are never negative, so its scores lie in 0-100
SIMILARITY_SCALE = (-100, 100)


def kid(gen: torch.Tensor, real: torch.Tensor, resamples: int = KID_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """KID x1000 with a percentile bootstrap interval (images of each set resampled with replacement)."""
    x, y = gen.double().numpy(), real.double().numpy()
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3  # the KID paper's kernel
    value = _mmd2(kxx, kyy, kxy, np.arange(len(x)), np.arange(len(y)))
    rng = np.random.default_rng(seed)
    boot = [
        _mmd2(kxx, kyy, kxy, rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))) for _ in range(resamples)
    ]
    boot = [v for v in boot if np.isfinite(v)]  # a resample of one distinct image has no within-set pair
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (np.nan, np.nan)
    return {"value": 1000 * value, "lo": 1000 * float(lo), "hi": 1000 * float(hi)}


def _mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 of the images indexed by ``a`` (generated) and ``b`` (real); pairs of one image with
    itself (a resample's duplicates included) are left out of the within-set terms, as the diagonal is."""
    if len(np.unique(a)) < 2 or len(np.unique(b)) < 2:
        return float("nan")
    sxx = kxx[np.ix_(a, a)][a[:, None] != a[None, :]].mean()
    syy = kyy[np.ix_(b, b)][b[:, None] != b[None, :]].mean()
    return float(sxx + syy - 2 * kxy[np.ix_(a, b)].mean())


class CategoryClassifier:
    """Multinomial logistic regression on pooled features (L2-regularised, full-batch L-BFGS)."""

    def __init__(
        self,
        classes: list[str],
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        info: dict[str, Any],
    ):
        self.classes, self.weight, self.bias, self.mean, self.std, self.info = classes, weight, bias, mean, std, info

    @classmethod
    def fit(cls, feats: torch.Tensor, labels: list[str], l2: float = 1e-3, seed: int = 0) -> CategoryClassifier:
        torch.manual_seed(seed)
        classes = sorted(set(labels))
        y = torch.tensor([classes.index(c) for c in labels])
        mean, std = feats.mean(0), feats.std(0) + 1e-6
        z = (feats - mean) / std
        w = torch.zeros(z.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        train_acc = float(((z @ w + b).argmax(1) == y).float().mean() * 100)
        return cls(classes, w.detach(), b.detach(), mean, std, {"n_train": len(labels), "train_accuracy": train_acc})

    def predict(self, feats: torch.Tensor) -> list[str]:
        logits = ((feats - self.mean) / self.std) @ self.weight + self.bias
        return [self.classes[i] for i in logits.argmax(1).tolist()]

    def save(self, path: Path) -> None:
        from harness.atomic import save_torch

        save_torch(
            path,
            {
                "classes": self.classes,
                "weight": self.weight,
                "bias": self.bias,
                "mean": self.mean,
                "std": self.std,
                "info": self.info,
            },
        )

    @classmethod
    def load(cls, path: Path) -> CategoryClassifier:
        d = torch.load(path, weights_only=True)
        return cls(d["classes"], d["weight"], d["bias"], d["mean"], d["std"], d["info"])


CLASSIFIER_FIT = "1"  # change with any change to CategoryClassifier.fit: a cached classifier is not reused


def no_classifier(train: list[ddata.Item], test: list[ddata.Item]) -> str | None:
    """Why no category classifier is fit (fidelity then ``absent``), ``None`` where one is: rows without a category
    on one side, or one category alone among the training rows (nothing to tell apart)."""
    named = sorted({i.category for i in train if i.category})
    if not named and not any(i.category for i in test):
        return "the data has no categories for the classifier"
    if len(named) < 2:
        return f"the training rows name {len(named)} category ({', '.join(map(repr, named))}): nothing to tell apart"
    if unnamed := sum(not i.category for i in test):
        return f"{unnamed} of the {len(test)} held-out rows have no category: the classifier cannot score them"
    return None


def category_classifier(train: list[ddata.Item], test: list[ddata.Item], size: int) -> CategoryClassifier | None:
    """Trained once on the real images (at ``size``) of every row with a category but the test rows, and
    cached; None when the data has no categories (then fidelity is ``absent``)."""
    from tasks.multimodal import vision

    rows = [i for i in train if i.category]
    if no_classifier(train, test) is not None:
        return None

    def listing(items: list[ddata.Item]) -> str:  # the images' content, not only their names
        return "\n".join(f"{hashlib.sha256(i.image.read_bytes()).hexdigest()}\t{i.category}" for i in items)

    fitted = [CLASSIFIER_FIT, inspect.signature(CategoryClassifier.fit).parameters["l2"].default]  # how it is fit
    key = hashlib.sha256(
        json.dumps(
            [listing(rows), listing(test), size, FEATURE_SIZE, vision.provenance()["weights_sha256"], *fitted]
        ).encode()
    ).hexdigest()[:16]
    path = models.cache_dir() / "diffusion" / f"classifier-{key}.pt"
    if path.is_file():
        return CategoryClassifier.load(path)
    clf = CategoryClassifier.fit(features(real_images(rows, size)), [i.category for i in rows])
    test_pred = clf.predict(features(real_images(test, size)))
    clf.info["real_test_accuracy"] = 100 * float(
        np.mean([p == i.category for p, i in zip(test_pred, test, strict=True)])
    )
    clf.info["classes"] = clf.classes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clf.save(path)
    except OSError as exc:  # a read-only cache, a full disk: fidelity stands, the next run fits it again (a review:
        # the run failed after training, a failed record, as the judge's answers' cache does not)
        print(
            f"warning: the fidelity classifier cannot be cached in {path.parent} ({type(exc).__name__}: {exc}): it is "
            "fitted again in the next run; set HARNESS_CACHE to a folder you can write",
            file=sys.stderr,
        )
    return clf
