"""What lets several sweeps share one runs dir and lets a scheduler stop a run cleanly.

- ``RunLock``: an exclusive ``flock`` on ``<run dir>/.lock``. The operating system drops it when the
  process dies, however it dies, so a crashed sweep never holds a run forever.
- ``StopOnSigterm``: SIGTERM (what Slurm, Kubernetes and ``kill`` send) during training asks the loop to
  checkpoint and stop after the current step; outside training it stops at once. Either way the run
  gets a ``cancelled`` record and the next start resumes. A first Ctrl-C (SIGINT) during training does the
  same; a second one, or one outside training, interrupts at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType

from harness.train import Cancelled

LOCK = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, one sweep per runs dir
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """The holder writes who it is into the lock file (process id, host, since when), so that a sweep that
    finds the run held can say by whom; the content is only read while the lock is held by someone else."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None
        self._writable = False

    def acquire(self, blocking: bool, on_wait: Callable[[str], None] | None = None) -> bool:
        """Take the lock; without ``blocking``, False when another process holds it. With ``blocking``,
        ``on_wait`` is told who holds it (``holder()``) before the wait, if there is one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._writable = True
        except PermissionError:  # another user's lock file: flock works on a read-only handle (no holder text)
            fd = os.open(self.path, os.O_RDONLY)
            self._writable = False
        if fcntl is not None:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not blocking:
                        os.close(fd)
                        return False
                    if on_wait is not None:
                        on_wait(self.holder())
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise ValueError(
                        f"cannot lock {self.path}: its file system does not support file locks ({exc.strerror}); "
                        "put --runs-dir on a local disk or on one mounted with locking"
                    ) from None
                raise
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self._sign(f"process {os.getpid()} on {socket.gethostname()}, since {since}")
        return True

    def _sign(self, text: str) -> None:
        """Write who holds the lock ('' when it is let go), where the file can be written; a courtesy: the lock
        is what matters, so a write that fails leaves the file empty, or as it was."""
        if self._fd is None or not self._writable:
            return
        try:
            os.ftruncate(self._fd, 0)
            if text:
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.write(self._fd, text.encode(errors="replace"))
        except OSError:
            pass

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ('process 123 on host, since 2026-12-05 04:10 UTC'), or
        'unknown' (a holder that wrote nothing: an older harness, another user's lock file, or one that is writing
        it now). Read without the lock: the holder may let go at any moment after."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text or "unknown"

    def held(self) -> bool:
        """Whether another process holds the lock now, probed with a shared lock that is let go at once (nothing is
        written, no file made); no lock file, or no file locks here: False."""
        if fcntl is None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # closing drops the shared lock
        return False

    def release(self) -> None:
        if self._fd is not None:
            self._sign("")  # a free lock names nobody
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class StopOnSigterm:
    """``with StopOnSigterm() as stop:`` … ``train(..., should_stop=stop.requested)`` inside
    ``with stop.training():``. Installed only in the main thread (signals cannot be handled elsewhere)."""

    def __init__(self) -> None:
        self._requested = False
        self._in_training = False
        self._deferring = False  # writing a record: a stop waits until it is written (deferred())
        self._previous: dict[int, object] = {}
        self.by = "SIGTERM"  # what asked to stop, for the messages

    def requested(self) -> bool:
        return self._requested

    def training(self) -> _Training:
        return _Training(self)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A section a stop must not cut (a run's record and its swap being written): a SIGTERM or Ctrl-C in it is
        noted, and the stop comes when the section ends, the record written."""
        before, asked, self._deferring = self._deferring, self._requested, True
        try:
            yield
        finally:
            self._deferring = before
        if self._requested and not asked and not before and not self._in_training:  # asked in the section
            stop = Cancelled(f"stopped by {self.by}")
            stop.by = self.by  # the exit status says which signal
            raise stop

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:  # a record being written: the stop comes when it is (deferred())
            self._requested, self.by = True, "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            return
        if signum == signal.SIGINT:
            if not self._in_training or self._requested:
                raise KeyboardInterrupt  # outside training, or a second Ctrl-C: at once
            print(
                "\nharness: Ctrl-C: stopping after this step with a checkpoint; press Ctrl-C again to stop at once "
                "(losing the steps since the last checkpoint)",
                file=sys.stderr,
            )
        self._requested, self.by = True, "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if not self._in_training:
            raise Cancelled(f"stopped by {self.by}")

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


class _Training:
    def __init__(self, stop: StopOnSigterm) -> None:
        self.stop = stop

    def __enter__(self) -> None:
        self.stop._in_training = True
        if self.stop._requested:
            raise Cancelled(f"stopped by {self.stop.by}")

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop._in_training = False
        if kind is None and self.stop._requested:  # asked after the loop last looked: stop now, not after scoring
            raise Cancelled(f"stopped by {self.stop.by}")


def is_main_process() -> bool:
    """Rank 0 of several processes (torchrun, accelerate launch), or the one process: a RANK left in a one-process
    run's environment (WORLD_SIZE unset or 1, where the runner sees one process) is not read (a fuzz review: RANK=1
    ran, recorded, and wrote no leaderboard, without a word)."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"
