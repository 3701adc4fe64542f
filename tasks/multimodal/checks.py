"""The multimodal task's checks on what a run reads: a ``llava_style`` config, a LLaVA processor's files,
and test images that training or caption records show too."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from harness import hub, models
from harness.guard import is_main_process
from tasks.multimodal import data

LLAVA_STYLE = "llava_style"  # model_type of a config.json describing the embedded architecture at another size


_WARNED: dict[tuple, int] = {}  # a folder's overlap, found (and warned about) once a process


def _seen_test_images(data_dir: Path, what: str, records: list[data.Record], test: list[data.Record]) -> int:
    """How many of the user's ``test`` questions show an image that ``records`` (``what``) show too, pixel for pixel
    (``data.seen_test_images``); warned about on stderr once (by the main process). The key holds each side's paths, sizes and times."""
    import sys

    stats: dict[Path, tuple[int, int]] = {}

    def stat(p: Path) -> tuple[str, int, int]:
        if p not in stats:
            st = p.stat()
            stats[p] = (st.st_size, st.st_mtime_ns)
        return (str(p), *stats[p])

    # both sides, apart: a test question dropped, or a training image edited, is another check
    seen_side = tuple(sorted({stat(p) for r in records for p in r.images}))
    test_side = tuple((r.id, *(stat(p) for p in r.images)) for r in test)
    key = (data_dir.resolve(), what, seen_side, test_side)
    if key not in _WARNED:
        ids = data.seen_test_images(test, records)
        if ids and is_main_process():  # under torchrun, one process says it
            print(
                f"warning: {len(ids)} of the {len(test)} test questions of {data_dir} show an image that its {what} "
                f"records show too (pixel for pixel; e.g. {ids[0]!r}): their scores measure memory; hold out test "
                "images that no training or caption record uses",
                file=sys.stderr,
            )
        _WARNED[key] = len(ids)
    return _WARNED[key]


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # what AutoProcessor needs besides a tokenizer


def _processor_at_hand(model: str) -> bool:
    """Whether a LLaVA model's processor may load without the network (``build_paper`` tries it offline under
    ``--random-weights``): its image processor's config and a tokenizer's vocabulary (``VOCAB``) in the model's folder,
    or in the hub's cache (a config given as a file: never, ``AutoProcessor`` takes a folder or a hub id)."""
    path = Path(model).expanduser()
    if path.exists():
        return path.is_dir() and all(any((path / n).is_file() for n in names) for names in (PROCESSOR_FILES, VOCAB))
    from huggingface_hub import try_to_load_from_cache

    repo = hub.hub_source(model)
    try:
        return all(
            any(isinstance(try_to_load_from_cache(repo, n), str) for n in names) for names in (PROCESSOR_FILES, VOCAB)
        )
    except ValueError:  # not a repository id the hub takes
        return False


# a tokenizer's vocabulary, which a processor loads with its image processor's config (a re-review: a cache with the
# latter alone was taken for a processor at hand, though build_paper then fell back to the embedded tokenizer)
VOCAB = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _llava_style(model: str) -> Any:
    """The ``LlavaStyleConfig`` of a ``config.json`` (or its folder) with ``model_type: llava_style``; ``~/cfg`` is
    the home's (as the runner's checks and ``models.load_config_dict`` read it: unexpanded it was no config here)."""
    path = Path(model).expanduser()
    path = path / "config.json" if path.is_dir() else path
    if not (path.suffix == ".json" and path.is_file()):
        return None
    raw = models.read_config(path)
    if raw.get("model_type") != LLAVA_STYLE:
        return None
    from tasks.multimodal.model import LlavaStyleConfig

    fields = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        config = LlavaStyleConfig(**fields)
    except TypeError as exc:
        raise ValueError(f"{path}: not a {LLAVA_STYLE} config ({exc}); see tasks/multimodal/model.py") from None
    # the dataclass checks no types: a string image_token_id failed the run later, as a bare TypeError
    hints = typing.get_type_hints(LlavaStyleConfig)
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), typing.get_origin(hints[field.name]) or hints[field.name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = _JSON_NAMES.get(kind, kind.__name__)
            raise ValueError(
                f"{path}: {field.name} is {value!r}, not a JSON {wanted}; fix it in the {LLAVA_STYLE} config "
                "(see LlavaStyleConfig in tasks/multimodal/model.py)"
            )
    if "train_projector" in raw:  # after the type checks (a wrong type is named as such); read, then overridden unsaid
        raise ValueError(
            f"{path}: train_projector is not a {LLAVA_STYLE} config field a run reads: whether the projector trains in "
            "stage 2 is the preset's task setting train_projector (paper trains it, smoke and embedded do not); remove "
            "it from the config and choose the preset"
        )
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = config.text_config.get("model_type")  # AutoConfig.for_model's: without it a bare TypeError at load
    if not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        raise ValueError(
            f"{path}: text_config.model_type is {kind!r}, not a language model transformers knows; set it in the "
            f"{LLAVA_STYLE} config (SmolLM2's is llama)"
        )
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:  # t5, clip_vision_model: AutoModelForCausalLM fails at load
        raise ValueError(
            f"{path}: text_config.model_type is {kind!r}, a model transformers knows but not a causal language "
            f"model; set it to one (SmolLM2's is llama) in the {LLAVA_STYLE} config"
        )
    from tasks.multimodal.model import check_vision

    try:
        check_vision(config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} in the {LLAVA_STYLE} config") from None
    return config


_JSON_NAMES = {dict: "object", str: "string", int: "integer", bool: "boolean (true or false)"}


def _check_vision_language(model: str, trust_remote_code: bool = False) -> None:
    """Before any run: a transformers config without a vision tower (a text model's) is refused; each run failed in
    turn at its load (``KeyError: 'vision_config'``, a record each: a fuzz review). Read as transformers resolves it:
    a LLaVA config.json may leave its ``vision_config`` to the defaults (a re-review)."""
    config = models.transformers_config(model, None, trust_remote_code)
    if getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"model {model!r} ({getattr(config, 'model_type', '?')}) has no vision_config: the multimodal task "
            "needs a vision-language model, a transformers LLaVA or a llava_style config (README, multimodal); "
            "give one, or leave --model out for the embedded one"
        )


def _paper_tokenizer(model: str, processor: Any) -> str:
    """What a transformers LLaVA built with random weights tokenizes with (``build_paper``): its own processor's
    tokenizer where that loads offline (transformers names it by the folder or hub id it read), else the embedded
    SmolLM2 tokenizer, given ``<image>``, which ``offline_llava_processor`` builds a processor over."""
    local = Path(model).expanduser()
    where = str(local) if local.exists() else model  # what build_paper read the processor from
    if processor.tokenizer.name_or_path != where:
        return f"{models.EMBEDDED_TOKENIZER}, with <image> added (the model's own processor does not load offline)"
    return f"the tokenizer in {local.name}/" if local.exists() else f"{model}'s, from the hub's cache"
