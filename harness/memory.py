"""The C allocator's setting for training and timing: keep freed memory instead of returning it to the OS.

glibc's malloc serves a request above its mmap threshold (128 KiB, rising to at most 32 MiB as blocks are
freed) with a fresh ``mmap`` and gives it back with ``munmap`` when freed, and trims the heap's free top
above its trim threshold: a training step that makes and frees the same large activations every step
then faults every page of them in again (zeroed by the kernel). On the embedded model (batch 8 x 128,
vocabulary 49,152) that is ~300,000 page faults a step, mostly the logits and their gradient. With both
thresholds raised, freed blocks stay in the heap and the next step reuses them: almost no faults after the
first steps, the frozen-base step ~7 % faster here and its round-to-round spread several times narrower, at the
price of a resident size that does not shrink back between steps (+0.5 GiB here). PyTorch's CPU
performance guide gets the same effect by preloading jemalloc or tcmalloc.

``harness run`` and ``harness bench`` call ``keep_freed_memory()`` before they load a model; records and
bench reports name the setting (``environment()["malloc"]``). ``HARNESS_MALLOC=default`` leaves malloc
as it is. A no-op (``None``) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30  # bytes: blocks below this come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # bytes of free heap top kept rather than returned (mallopt takes an int)
ENV = "HARNESS_MALLOC"
KEEP, DEFAULT = ("keep", "1", "on", "true"), ("default", "0", "off", "false")  # HARNESS_MALLOC's values

_applied: dict[str, Any] | None = None


def keep_freed_memory() -> dict[str, Any] | None:
    """Raise glibc's mmap and trim thresholds for this process (once); return what was set, or ``None``
    where nothing was (not glibc, or ``HARNESS_MALLOC=default``)."""
    global _applied
    if _applied is not None:
        return _applied
    if not wanted() or not is_glibc():
        return None
    libc = ctypes.CDLL(None)  # the process's own symbols: the C library it already runs on
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    _applied = {"allocator": "glibc", "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    return _applied


def wanted() -> bool:
    """Whether ``HARNESS_MALLOC`` asks for the setting (unset: yes); ``ValueError`` for a value it does not know."""
    value = os.environ.get(ENV, KEEP[0]).strip().lower()
    if value not in KEEP + DEFAULT:
        raise ValueError(f"{ENV}={value!r} not understood; use keep (the default) or default")
    return value in KEEP


@functools.cache
def is_glibc() -> bool:
    """Whether this process runs on glibc (Linux), where the setting applies (read once: it scans the binary)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS now (glibc's ``malloc_trim(0)``, which ignores the trim
    threshold), after a garbage collection: what earlier work in this process freed but kept (another method's
    run, data preparation) then no longer counts in a resident-size peak measured from here. False where not
    glibc."""
    import gc

    gc.collect()
    if not is_glibc():
        return False
    ctypes.CDLL(None).malloc_trim(0)
    return True


def malloc_setting() -> dict[str, Any] | None:
    """What ``keep_freed_memory`` set in this process, or ``None`` (the allocator's defaults)."""
    return _applied
