"""Write files so that a reader never sees half of one: a temp file in the same folder, flushed with ``fsync``,
then renamed over the old one (and, where the system allows it, the folder flushed after the rename), so that a
crash leaves the old file or the new one, never an empty or partial one. (``fsync`` is what the system gives: on
macOS it reaches the drive, not necessarily past the drive's own cache.)
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """``with atomic_path(f) as tmp:`` write ``tmp``; it replaces ``f`` only if the block succeeds. A symlink ``f``
    is written through, as ``open(f, "w")`` does: the file it points at is replaced (the temp file made beside it,
    so the rename stays in one folder) and the link kept (renamed over, the link would become a regular file and the
    linked file keep its old content)."""
    given = Path(final)
    final = Path(os.path.realpath(given)) if given.is_symlink() else given
    try:
        tmp = _new_file(final.parent, f".{final.name}.")
    except FileNotFoundError:  # its error named the temp file, a path the caller never gave: name the one given
        what = "its folder" if final == given else f"it links to {str(final)!r}, whose folder"
        raise FileNotFoundError(errno.ENOENT, f"cannot be written: {what} does not exist", str(given)) from None
    try:
        yield tmp
        _flush(tmp)  # the data on the disk before the name points at it
        os.replace(tmp, final)
        _flush(final.parent)  # and the rename itself
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a write's error names no file (a full disk): the one
            exc.filename = str(final)  # being written, not the temp; one without an errno (PIL's) keeps its text
        raise
    finally:
        tmp.unlink(missing_ok=True)


def flush_folder(folder: Path) -> None:
    """Make the renames into and out of ``folder`` durable (``fsync`` of the folder, where the system allows it)."""
    _flush(Path(folder))


def _flush(path: Path) -> None:
    """``fsync`` a written file (through a handle that may write: Windows refuses a read-only one), or a folder
    where the system lets one open and flush it (not Windows; not some network and FUSE file systems, which
    refuse with EINVAL: the rename is done by then, so a folder that cannot be flushed is skipped)."""
    if path.is_dir():
        if os.name == "nt":
            return
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        return
    with open(path, "rb+") as f:
        try:
            os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # a file system without fsync
                raise


_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what _new_file names


def remove_stale_temps(folder: Path, recursive: bool = True, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temp files a killed writer left under ``folder`` (a ``kill -9`` mid-write skips the cleanup):
    only names ``_new_file`` makes (``.<name>.<8 hex>.tmp``), in ``folder`` alone where not ``recursive``. Call it
    while holding the folder's lock, when no write of its own is under way; where no lock is held (a leaderboard's
    folder, which another writer may be writing to), ``older_than_s`` spares the files modified since then: a live
    writer's temp file is seconds old. Returns those removed."""
    now = time.time()
    stale = []
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        try:
            if is_temp(path) and (older_than_s <= 0 or now - path.stat().st_mtime >= older_than_s):
                path.unlink()
                stale.append(path)
        except FileNotFoundError:  # renamed into place, or removed, by its writer meanwhile
            continue
    return stale


def check_writable(folder: Path, what: str = "runs dir", flag: str = "--runs-dir") -> None:
    """That files can be written in ``folder``, else a ``ValueError`` naming ``flag``: probed with a file where
    the folder exists; where it does not, its nearest existing parent must be a folder that can be written.
    Nothing is made, so bad input found after this check leaves no empty folder behind."""
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing.parent != existing:
        existing = existing.parent
    try:
        if existing.is_symlink() and not existing.exists():  # mkdir would fail on it with "File exists"
            raise ValueError(
                f"{what} {str(folder)!r} goes through {str(existing)!r}, a symlink to "
                f"{os.readlink(existing)!r}, which does not exist; make its target or pass {flag} elsewhere"
            )
        if existing == folder:
            probe = _new_file(folder, ".write-test.")  # a name of its own: two sweeps may probe one folder at once
            probe.unlink(missing_ok=True)
        elif not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise ValueError(
            f"{what} {str(folder)!r} is not writable ({exc.strerror}); pass {flag} pointing at a folder you can write"
        ) from None


def is_temp(path: Path) -> bool:
    """Whether ``path`` is a temp file ``atomic_path`` makes."""
    return path.is_file() and _TEMP.match(path.name) is not None


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


def json_safe(value: Any, where: str, faults: list[tuple[str, str]], inside: frozenset[int] = frozenset()) -> Any:
    """``value`` as ``json.dumps`` takes it, each value it refuses replaced by a note of its type (an entry under
    a key it refuses left out), and each such place (``record['eval']['arc_e']['stderr']``) with its type appended to
    ``faults``."""
    if value is None or isinstance(value, str | int | float):  # subclasses too (bool, numpy.float64): JSON's
        return value
    if isinstance(value, dict | list | tuple) and id(value) not in inside:
        inside = inside | {id(value)}  # json.dumps refuses a container inside itself
        if isinstance(value, list | tuple):
            return [json_safe(v, f"{where}[{i}]", faults, inside) for i, v in enumerate(value)]
        safe = {}
        for key, v in value.items():
            if key is None or isinstance(key, str | int | float):
                safe[key] = json_safe(v, f"{where}[{key!r}]", faults, inside)
            else:
                faults.append((where, f"a dict with a key of type {_type_name(key)}"))
        return safe
    what = f"a {_type_name(value)}" if id(value) not in inside else f"a {_type_name(value)} that holds itself"
    faults.append((where, what))
    return f"<{what}: not JSON>"


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


# errors of a disk that cannot take a write (full, over quota, read-only, a file over its size limit): every run after
# would meet them too, so a sweep stops at one (harness.runner), saying where to free space (harness.cli_run)
DISK_ERRORS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG") if hasattr(errno, name))


def disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRORS


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Bytes made in memory (``torch.save`` into a buffer: ``harness.train_checkpoint``), so that a full disk raises
    ``OSError`` (ENOSPC), which stops a sweep (``harness.runner``); torch's own file writer raised a ``RuntimeError``
    ("unexpected pos"), taken for a failure of the run alone."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@contextmanager
def library_writes(path: str | Path) -> Iterator[None]:
    """Around a library's own writer (``save_pretrained``: safetensors' Rust writer): an error of the system it
    reports as its own (``SafetensorError("... I/O error: No space left on device (os error 28)")``) raised as
    the ``OSError`` it is, naming ``path``, so that a full disk stops a sweep (``harness.runner``) there too."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        if (found := re.search(r"\(os error (\d+)\)", str(exc))) is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically, through ``write_bytes``: a full disk is an ``OSError``."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def write_text(path: str | Path, text: str) -> None:
    """UTF-8 whatever the locale (tables hold "–" and "·"; the HTML page declares utf-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_folders(folder: Path, pattern: str, age_s: float) -> None:
    """Remove the folders in ``folder`` matching ``pattern`` untouched for ``age_s`` seconds: the temp folders of
    writers killed hard (one under way, in another process, writes into its folder within seconds). Files and
    links are left alone."""
    import shutil

    for stale in folder.glob(pattern):
        try:
            old = time.time() - stale.stat().st_mtime > age_s
        except OSError:  # removed meanwhile (its writer finished)
            continue
        if old and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
