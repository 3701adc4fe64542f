"""The Hugging Face hub as ``--model`` meets it: which specs are hub ids, what the hub's local cache holds of
them (weights, the commit of the main revision), and the one-line errors where the hub cannot give a model's weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.models import EMBEDDED, _brief

# the paper's id (kept as the model's name: counts and run ids stay) and where its weights are now: Runway removed
# the repository in 2024, a copy lives on under the stable-diffusion-v1-5 organisation
HUB_MOVED = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# what from_pretrained reads of a hub repository's weights: a transformers model's, or a diffusers pipeline's UNet's
HUB_WEIGHT_FILES = (
    *(f"model.safetensors{index}" for index in ("", ".index.json")),
    *(f"pytorch_model.bin{index}" for index in ("", ".index.json")),
    *(f"unet/diffusion_pytorch_model{ext}{index}" for ext in (".safetensors", ".bin") for index in ("", ".index.json")),
)
PROBE_TIMEOUT_S = 10.0  # seconds for probe_hub's one request
HUB_ADVICE = (
    "connect to the internet (with HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE unset), log in (hf auth login) where the "
    "repository is gated, give a local folder holding the weights, or pass --random-weights to build its architecture "
    "from its config"
)


def offline_variables() -> list[str]:
    """The environment variables that switch the Hugging Face hub off (set to 1, on, yes or true), read now."""
    return [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}]


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` can only be a path (hub ids are "name" or "org/name"), there or not."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` names a hub repository (not ``embedded``, nothing on the disk by that name)."""
    return spec != EMBEDDED and not Path(spec).expanduser().exists()


def hub_source(spec: str) -> str:
    """The hub id a spec's weights load from, and whose cached copy its revision and digest are read of: a paper id
    that moved (``HUB_MOVED``) is read where it lives now, except with the hub switched off where the cache holds
    the old id's weights and not the moved id's (from a review: a copy downloaded before the move was on the disk,
    yet refused offline). Online the old id is never read: its repository is gone, a load from it fails."""
    if (moved := HUB_MOVED.get(spec)) is None:
        return spec
    if offline_variables() and not _weights_in_cache(moved) and _weights_in_cache(spec):
        return spec
    return moved


def hub_weights_cached(repo_id: str) -> bool:
    """Whether the hub's local cache holds ``repo_id``'s weights (``HUB_WEIGHT_FILES``, its main revision; a moved
    repository's at ``hub_source``'s id), read from the disk only."""
    return _weights_in_cache(hub_source(repo_id))


def _weights_in_cache(repo: str) -> bool:
    return _in_cache(repo, HUB_WEIGHT_FILES)


def config_cached(repo: str) -> bool:
    """Whether the hub's local cache holds ``repo``'s ``config.json`` (its main revision), read from the disk only."""
    return _in_cache(repo, ("config.json",))


def _in_cache(repo: str, names: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)
    except ValueError:  # not a repository id the hub takes: loading it fails anyway, saying so
        return False


def hub_revision(spec: str) -> str | None:
    """The commit a hub id's main revision points to in the hub's local cache (``refs/main``, which ``from_pretrained``
    sets as it downloads or checks the repository): read after a run loaded the model, the revision it loaded; a moved
    repository's, of the copy it loads from (``hub_source``). ``None`` for no hub id, or one the cache does not hold."""
    if (repo := _hub_cache_folder(spec)) is None:
        return None
    try:
        return (repo / "refs" / "main").read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def hub_snapshot(spec: str) -> tuple[str, Path] | None:
    """(commit, folder) of a hub id's main revision in the hub's local cache (``hub_revision``; the folder holds
    links to the files ``from_pretrained`` downloaded of it); ``None`` where the cache holds none."""
    if (revision := hub_revision(spec)) is None or (repo := _hub_cache_folder(spec)) is None:
        return None
    folder = repo / "snapshots" / revision
    return (revision, folder) if folder.is_dir() else None


def _hub_cache_folder(spec: str) -> Path | None:
    if not is_hub_id(spec):
        return None
    from huggingface_hub import constants

    repo = hub_source(spec)  # the copy the weights load from, so the record names the one loaded
    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def check_hub_weights(spec: str) -> None:
    """Before any run: a hub model's weights can be had: with the hub switched off (``HF_HUB_OFFLINE``), they must
    be in its cache (a paper id's config is shipped, so nothing else asks the hub before the run does); with it on
    and the weights not in the cache, the hub must answer one request (``probe_hub``). A ``ValueError`` saying what
    to do otherwise."""
    if not is_hub_id(spec) or hub_weights_cached(spec):
        return
    if not (switched := offline_variables()):
        probe_hub(spec)
        return
    from huggingface_hub import constants

    offline = f"{' and '.join(switched)} set, and the hub's cache ({constants.HF_HUB_CACHE})"
    if (repo := HUB_MOVED.get(spec)) is None:
        raise ValueError(f"model {spec!r}: {offline} holds no weights of it; {HUB_ADVICE}")
    # a paper id is looked up where its repository lives now (a copy under the old id would have passed, hub_source)
    raise ValueError(
        f"model {spec!r} (looked up as {repo!r}, where the repository moved): {offline} holds no weights of "
        f"{repo!r}, nor of the old id; {HUB_ADVICE}"
    )


def probe_hub(spec: str, held: str = "weights") -> None:
    """One request for a hub id's metadata, bounded by ``PROBE_TIMEOUT_S`` and not retried: a hub that cannot be
    reached (no network, DNS, a proxy, a timeout) is a ``ValueError`` before any run. From a review: without
    ``HF_HUB_OFFLINE`` every run of a sweep spent ~50 s in huggingface_hub's retries before failing with a
    record, one after another. Any answer of the hub (the repository gated, private or not there) passes: the run
    loads the weights and says what failed (``hub_load_error``). ``held``: what the cache lacks (weights, config)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(hub_source(spec), timeout=PROBE_TIMEOUT_S)
    except (HfHubHTTPError, ValueError):  # the hub answered, or the id is not one it takes (the load says so)
        return
    except Exception as exc:  # noqa: BLE001 -- httpx's transport errors, OSError: the hub was not reached
        raise ValueError(
            f"model {spec!r}: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached ({_brief(exc)}) and its "
            f"cache ({constants.HF_HUB_CACHE}) holds no {held} of it; {HUB_ADVICE}"
        ) from None


def hub_load_error(spec: str, exc: BaseException) -> ValueError:
    """A hub model's weights that did not load (offline, gated, not there: transformers' several lines), in one
    line with what to do."""
    return ValueError(
        f"model {spec!r}: its weights do not load from the Hugging Face hub ({_brief(exc)}); {HUB_ADVICE}"
    )
