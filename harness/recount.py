"""Count finished runs' FLOPs again from their records, without training them again.

A record keeps everything that determines its run (its config, hashed into its id) and the shapes of its
first optimizer step's micro-batches, and FLOPs are counted on a ``meta``-device replica of the model's
architecture: so when the way FLOPs are counted is corrected, every finished run can be counted again in
seconds, with the same code a new run uses (``harness.runner.flops_record``), its model built with random
weights. The record keeps what it said before under
``flops_per_step.recounted.as_run`` (what the run itself wrote), with when and by which commit it was
counted again.
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
from harness.records import find_records, git_state, read_record, write_record
from harness.registry import METHODS, TASKS
from harness.runner import flops_record, load_model, spec_from_record

KEPT = ("total", "adapter", "lora_total", "relative_to_lora", "counted_by")


def recount_flops(
    runs_dir: Path,
    data_dirs: dict[str, str] | None = None,
    *,
    trust_remote_code: bool = False,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every successful training record under ``runs_dir`` counted again and rewritten (atomically) where the
    count changed; ``data_dirs`` maps a task to its data (else the task's default). One line per record
    goes to ``say``; the return value lists, per record, its id, the old and new ``total``/``adapter`` or why
    it was left as it was."""
    data_dirs = data_dirs or {}
    loaded_models: dict[str, tuple[Any, Any]] = {}
    out = []
    for path in find_records(runs_dir):
        record = read_record(path)
        run_id = record["run"]["id"]
        old = (record.get("train") or {}).get("flops_per_step")
        if record["run"]["status"] != "success" or not old or "total" not in old:
            out.append({"id": run_id, "left": "no FLOPs counted in it (no training, not finished, or not countable)"})
            say(f"{run_id}: left as it is ({out[-1]['left']})")
            continue
        try:
            spec = spec_from_record(record)
        except (ValueError, TypeError, KeyError) as exc:
            out.append({"id": run_id, "left": str(exc)})
            say(f"{run_id}: left as it is ({exc})")
            continue
        options = dataclasses.replace(spec.task_options, data_dir=data_dirs.get(spec.task))
        key = json.dumps([spec.task, dataclasses.asdict(options), spec.model, spec.extra], sort_keys=True, default=str)
        if key not in loaded_models:  # a model is loaded once for every record that ran on it
            loaded_models.clear()  # one at a time: the memory of one model
            try:
                task = TASKS.get(spec.task)(options)
                loaded_models[key] = (task, _load_structure(task, spec, trust_remote_code))
            except Exception as exc:  # noqa: BLE001 - one record's model not loadable here: the others go on
                out.append({"id": run_id, "left": f"its model does not load here: {type(exc).__name__}: {exc}"})
                say(f"{run_id}: left as it is ({out[-1]['left']})")
                continue
        task, loaded = loaded_models[key]
        config = make_config(METHODS.get(spec.method).config_cls, spec.method_options, spec.method)
        shapes = [m["shape"] for m in old["micro_batches"]]
        new = flops_record(
            task, loaded, spec.method, config, shapes, task.recipe(loaded, spec.train), bool(old.get("path"))
        )
        if "status" in new:
            out.append({"id": run_id, "left": f"not countable now: {new['reason']}"})
            say(f"{run_id}: left as it is ({out[-1]['left']})")
            continue
        change = {"id": run_id, **{f"old_{k}": old[k] for k in ("total", "adapter")}}
        change |= {f"new_{k}": new[k] for k in ("total", "adapter")}
        out.append(change)
        if all(new.get(k) == old.get(k) for k in KEPT):
            say(f"{run_id}: unchanged")
            continue
        new["recounted"] = {
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **git_state(),
            "as_run": old.get("recounted", {}).get("as_run") or {k: old[k] for k in KEPT if k in old},
        }
        record["train"]["flops_per_step"] = new
        write_record(path.parent, record)
        say(f"{run_id}: total {old['total']:,} -> {new['total']:,}, adapter {old['adapter']:,} -> {new['adapter']:,}")
    return out


def _load_structure(task: Any, spec: Any, trust_remote_code: bool) -> Any:
    """The run's model with random weights (FLOPs depend on the architecture and on which tensors train,
    never on the weights: no download, no stage-1 alignment), or as the run loaded it where a task cannot
    build it without its weights."""
    cpu = torch.device("cpu")
    try:
        return load_model(task, dataclasses.replace(spec, random_weights=True), cpu, trust_remote_code)
    except Exception:  # noqa: BLE001 - e.g. a model file without a config: loaded as it ran
        return load_model(task, spec, cpu, trust_remote_code)
