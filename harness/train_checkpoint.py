"""A run's checkpoint: what it holds (``save_checkpoint``: the adapter, its method and options, optimizer, scheduler,
hooks' and random state, the loop's counts), how it is read back (``_read_checkpoint``: an unreadable file set aside,
an error of the machine raised as ``CheckpointUnreadable``), and what the resume checks of ``harness.train.train``
compare (the code keys, ``timed_facts``, the model: ``check_model``, the adapter: ``check_adapter``). Part of
``harness.train``, which re-exports what others import."""

from __future__ import annotations

import contextlib
import errno
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.atomic import save_torch
from harness.records import FIRST_METHOD_VERSION

if TYPE_CHECKING:
    from harness.train import TrainConfig


CHECKPOINT = "checkpoint.pt"


# in a checkpoint's code since 2026-12-05, with the value an older checkpoint's code was made with
LATER_CODE_KEYS = {"method_version": FIRST_METHOD_VERSION}
# in a checkpoint's code since 2026-12-06 (whose checkpoints also keep "hub_revision" in their state), kept only where
# set: one from before lacks it whichever its run had (a model that loads only with --trust-remote-code ran with it),
# so it is not compared there
UNKNOWN_BEFORE_CODE_KEYS = ("trust_remote_code",)
# the facts of ``environment()`` a step's time depends on, by which the leaderboard pools times
# (``harness.leaderboard_render._timed_on``): a checkpoint keeps them, so that a run resumed elsewhere says so
TIMED_ON_KEYS = ("device", "device_type", "torch_threads", "malloc")


def timed_facts(env: dict[str, Any]) -> dict[str, Any]:
    """``env``'s ``TIMED_ON_KEYS`` as the leaderboard files times apart (``_timed_on``): the CPU threads only where a
    CPU computes, the malloc setting only as whether it keeps freed memory (a GPU job given other CPU threads
    computes its steps alike, and was marked as resumed elsewhere while the leaderboard pooled it)."""
    threshold = (env.get("malloc") or {}).get("mmap_threshold")
    return {
        "device": env.get("device"),
        "device_type": env.get("device_type"),
        "torch_threads": env.get("torch_threads") if env.get("device_type", "cpu") == "cpu" else None,
        "malloc": {"mmap_threshold": threshold} if threshold else None,
    }


def check_model(checkpoint: Path, then: dict[str, Any], weights: str | None, revision: str | None) -> None:
    """A ``ValueError`` where the checkpoint (its ``state``: ``then``) was written on another model than the run's
    now: other ``weights`` (a local folder's or the embedded GGUF's digest), another ``revision`` (a hub id's commit),
    or the ``--model`` string named a hub id then and a local folder now, or the reverse (one side has only a commit,
    the other only a digest, which the two comparisons pass). Where either is not known (a checkpoint from before
    they were kept), it is resumed as it is."""
    then_weights = then.get("weights")  # none kept: not known then, or a checkpoint from before
    if weights and then_weights and then_weights != weights:
        raise ValueError(
            f"{checkpoint} was written on another model (the files the run reads of it, weights, configs, tokenizer "
            f"or code, or another embedded GGUF: {then_weights[:8]} -> {weights[:8]} since); delete it or use --force "
            "to start over on this one"
        )
    then_revision = then.get("hub_revision")  # none kept: not known then, or a checkpoint from before
    if revision and then_revision and then_revision != revision:
        raise ValueError(
            f"{checkpoint} was written on another revision of the hub model (commit {then_revision[:8]} -> "
            f"{revision[:8]} since); delete it or use --force to start over on this one"
        )
    if then_revision and not then_weights and weights and not revision:
        raise ValueError(
            f"{checkpoint} was written on the hub id at commit {then_revision[:8]} (a local folder of that name now: "
            f"{weights[:8]}); delete it or use --force to start over on this one"
        )
    if then_weights and not then_revision and revision and not weights:
        raise ValueError(
            f"{checkpoint} was written on a local folder ({then_weights[:8]}; the hub id of that name now: commit "
            f"{revision[:8]}); delete it or use --force to start over on this one"
        )


def adapter_settings(adapter) -> dict[str, Any]:
    """What a checkpoint keeps of ``adapter``: its method's name and its options (``AdapterConfig.to_dict``), as plain
    data (JSON's, as ``Adapter.save`` writes them: ``weights_only`` reads them back)."""
    return {"method": adapter.method, "config": json.loads(json.dumps(adapter.config.to_dict()))}


def check_adapter(checkpoint: Path, then: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """A ``ValueError`` where the checkpoint (its ``adapter_settings``: ``then``) was written by another method, or
    the same with other options: ``harness run`` puts both in the run id, a direct caller of ``train`` does not (from a
    review: an adapter trained at alpha 8 was resumed, loss curve and all, under alpha 64). None (a checkpoint from
    before they were kept, 2026-12-07): resumed as it is. An option one side lacks (one a method has added since,
    with its default) is not compared: its method's version is (the code keys)."""
    if not then:
        return
    if then["method"] != now["method"]:
        raise ValueError(
            f"{checkpoint} was written by another method ({then['method']} -> {now['method']} since); delete it or "
            "use --force to start over with this one"
        )
    was, options = then.get("config") or {}, now["config"]
    changed = sorted(k for k in was.keys() & options.keys() if _compared(k, was[k]) != _compared(k, options[k]))
    if changed:
        raise ValueError(
            f"{checkpoint} was written with other {now['method']} options "
            f"({', '.join(f'{k} {was[k]} -> {options[k]}' for k in changed)} since); delete it or use --force to start "
            "over with these"
        )


def _compared(key: str, value: Any) -> Any:
    """An option as ``check_adapter`` compares it: ``targets`` named in any order are one set of layers (another
    option's list keeps its order: a plugin's may mean something by it)."""
    if key == "targets" and isinstance(value, list):
        return sorted(map(str, value))
    return value


def describe_code(code: dict[str, Any]) -> str:
    """A ``harness.records.harness_code`` in words: its commit (dirty or not) and version."""
    commit = code.get("git_commit")
    where = f"commit {commit[:8]}{' (dirty)' if code.get('git_dirty') else ''}" if commit else "no git commit"
    return f"{where}, version {code.get('harness_version')}"


class CheckpointUnreadable(RuntimeError):
    """The machine could not read a run's checkpoint (an I/O error, no memory): the file may be good and is kept.
    The run's record says failed and the command stops (``harness.runner``): the next runs would meet the same
    machine, and the checkpoint is resumed once it reads."""


def save_checkpoint(
    path: Path,
    adapter,
    optimizer,
    scheduler,
    config: TrainConfig,
    state: dict[str, Any],
    task_params: list[torch.nn.Parameter] | None = None,
    device: torch.device | None = None,
    process_rngs: list[dict[str, Any]] | None = None,
) -> None:
    """``process_rngs``: under several processes, each one's random state (``_rng_state``) and its samples and
    tokens so far, in process order; the top-level states are this process's."""
    state["saved_step"] = state["step"]
    payload = {
        "adapter": adapter.state_dict(),
        "task_params": [p.detach().cpu().clone() for p in task_params or []],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "hooks": adapter.training_state(),
        "config": asdict(config),
        "adapter_settings": adapter_settings(adapter),  # since 2026-12-07: compared on resume (check_adapter)
        **_rng_state(device),
        "state": state,
    }
    if process_rngs is not None:
        payload["process_rngs"] = process_rngs
    save_torch(path, payload)  # in memory first, then written: a full disk is an OSError (ENOSPC)


def _rng_state(device: torch.device | None) -> dict[str, Any]:
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "python_rng": random.getstate(),
    }


UNREADABLE = ".unreadable"  # the suffix an unreadable checkpoint is kept under (never deleted)
# errors of the machine, not of the file: raised, the checkpoint left in place (a truncated zip is EINVAL)
_MACHINE_ERRORS = {errno.EIO, errno.ENOMEM, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE, errno.ESTALE}


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's payload (tensors and plain data only: ``weights_only``), or None if it is
    unreadable: then the run starts afresh, with a message, instead of crashing; the file is kept beside it
    (``checkpoint.pt.unreadable``: a method's hook state that ``weights_only`` refuses, say, is not lost). An
    error of the machine (``MemoryError``, an I/O or permission ``OSError``) is raised as ``CheckpointUnreadable``
    (the run's record says failed and the command stops): the file may be good."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"config", "adapter", "optimizer", "state"} <= set(saved):
            raise ValueError("not a harness checkpoint")
        return saved
    except Exception as exc:  # truncated, corrupted or foreign file: any unpickling error
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _MACHINE_ERRORS):
            raise CheckpointUnreadable(
                f"could not read the checkpoint {path} ({type(exc).__name__}: {exc}); it is kept: free memory, or fix "
                "the disk or the file's permissions, then run the same command again, which resumes from it"
            ) from exc
        kept = path.with_name(path.name + UNREADABLE)
        with contextlib.suppress(FileNotFoundError):  # another process of the run set it aside first
            path.replace(kept)
        print(
            f"warning: checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); starting this run afresh "
            f"(the file is kept as {kept.name})"
        )
        return None
