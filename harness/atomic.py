"""Write files so that a reader never sees half of one: a temp file in the same folder, flushed to the disk,
then renamed over the old one (and the rename flushed), so that a crash or power loss leaves the old file or
the new one, never an empty or partial one."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """``with atomic_path(f) as tmp:`` write ``tmp``; it replaces ``f`` only if the block succeeds."""
    final = Path(final)
    tmp = _new_file(final.parent, f".{final.name}.")
    try:
        yield tmp
        _flush(tmp)  # the data on the disk before the name points at it
        os.replace(tmp, final)
        _flush(final.parent)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)


def _flush(path: Path) -> None:
    """``fsync`` a file or a folder; a system that cannot open a folder for it (Windows) skips the folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file(folder: Path, prefix: str) -> Path:
    """An empty file of a fresh name, created with mode 0666 so that the umask gives it the permissions of any
    new file (``tempfile.mkstemp`` makes 0600: records and leaderboards others on the machine cannot read)."""
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name for {prefix!r} in {str(folder)!r}")


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
