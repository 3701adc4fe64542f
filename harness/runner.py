"""``harness run``: one frozen config per method x seed, one record per run, resumable.

A finished run (a ``success`` record with the same resolved config) is skipped unless ``force``; an
interrupted one resumes from its last checkpoint; a failure writes a ``failed`` record and moves on (with
several processes it stops the command: the others may wait in a collective the failed one never joins).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from harness.accounting import environment
from harness.adapter import attach
from harness.atomic import (
    check_writable,
    disk_error,
    flush_folder,
    is_temp,
    json_safe,
    remove_stale_temps,
    write_json,
)
from harness.guard import RunLock
from harness.hub import hub_revision
from harness.records import PREDICTIONS, RECORD, RERUN, check_eval, new_record, write_record
from harness.registry import TASKS
from harness.runner_flops import FLOPS_COUNTED_BY as FLOPS_COUNTED_BY
from harness.runner_flops import _count_flops, _train_record, flops_settings
from harness.runner_flops import flops_record as flops_record
from harness.runner_flops import hook_flops_record as hook_flops_record
from harness.runner_identity import (
    _code,
    _digest_info,
    _finished_decision,
    _finished_record,
    _hub_digest,
    _method_version,
    _newer_record,
    _plugins,
    _reads_hub,
    _refuse_other_finished_runs,
    _weights_digest,
)
from harness.runner_identity import _other_data as _other_data
from harness.runner_identity import _other_method_version as _other_method_version
from harness.runner_identity import _other_model_code as _other_model_code
from harness.runner_identity import _other_plugin as _other_plugin
from harness.runner_identity import _other_training_data as _other_training_data
from harness.runner_identity import _other_weights as _other_weights
from harness.runner_refusal import _EMBEDDED_SAID as _EMBEDDED_SAID
from harness.runner_refusal import RunRefused, _refusal, _refused_message
from harness.runner_refusal import _only_these as _only_these
from harness.runner_spec import BASELINE, RunContext, RunSpec, _on_data, preflight
from harness.runner_spec import WEIGHT_FILES as WEIGHT_FILES
from harness.runner_spec import build_specs as build_specs
from harness.runner_spec import check_scorer_names as check_scorer_names
from harness.runner_spec import has_weights as has_weights
from harness.runner_spec import spec_from_record as spec_from_record
from harness.task import Loaded, Task
from harness.train import CHECKPOINT, Cancelled, CheckpointUnreadable, train


def load_model(task: Task, spec: RunSpec, device: torch.device, trust_remote_code: bool = False) -> Loaded:
    """The task loads its model: weights from the hub, a local folder, the embedded default, or random."""
    return task.load(
        spec.model,
        device,
        random_weights=spec.random_weights,
        seed=spec.seed,
        trust_remote_code=trust_remote_code,
        settings=spec.extra.get("task_settings", {}),
    )


def run_one(spec: RunSpec, task: Task, ctx: RunContext, blocking: bool = True) -> tuple[dict[str, Any] | None, bool]:
    """(record, whether this call ran it): a finished record is returned as it is; None when another
    process holds the run's lock and ``blocking`` is False. Only the main process writes; all train."""
    run_dir = ctx.runs_dir / spec.run_id
    lock = RunLock(run_dir)
    decision = "run"
    try:
        if ctx.is_main:
            decision = _decide(spec, task, ctx, run_dir, lock, blocking)
        decision = ctx.agree(decision)
        if (refusal := _refusal(spec, decision, ctx.runs_dir)) is not None:
            raise RunRefused(_refused_message([refusal], ctx.sweep or [spec]))
        if decision.startswith("swap failed"):
            raise RunRefused(
                f"run {spec.run_id} in {str(ctx.runs_dir)!r}: a forced re-run succeeded, but its files in "
                f"{RERUN}/ could not replace the finished run's ({decision[len('swap failed: ') :]}); fix that "
                "and run the same command again: it finishes the swap"
            )
        if decision != "run":
            return (_finished_record(run_dir / RECORD) if decision == "done" else None), False
        return _run_locked(spec, task, ctx, run_dir), True
    finally:
        lock.release()


def _decide(spec: RunSpec, task: Task, ctx: RunContext, run_dir: Path, lock: RunLock, blocking: bool) -> str:
    """What ``run_one`` does with the run, decided by the main process: 'locked', 'done', 'run', 'other data
    (...)' (code, device, weights, scorer) or 'swap failed: ...' (a pending swap that cannot be finished)."""
    if not lock.acquire(blocking, on_wait=lambda who: _say(ctx, f"    waiting for it: {who} holds it")):
        return "locked"
    try:
        if finish_swap(run_dir):  # a forced re-run killed while its files replaced the finished run's
            _say(ctx, f"    {spec.run_id}: a forced re-run was stopped while swapping its files in: finished that")
    except OSError as exc:
        return f"swap failed: {exc}"
    return _finished_decision(spec, task, ctx, run_dir)


def _run_locked(spec: RunSpec, task: Task, ctx: RunContext, run_dir: Path) -> dict[str, Any]:
    # a damaged record is set aside (the main process, which writes): the run is run again
    finished = _finished_record(run_dir / RECORD, set_aside=ctx.is_main) or _newer_record(run_dir / RECORD)
    # a re-run of a finished run writes its outputs (adapter, predictions, samples) apart until it succeeds:
    # one that fails leaves the finished record beside the files that record describes
    out_dir = run_dir if finished is None else run_dir / RERUN
    if ctx.is_main:
        remove_stale_temps(run_dir)  # half-written files of a writer killed mid-write (we hold the lock)
    if ctx.force and ctx.is_main:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)  # start over, but keep the finished record until replaced
        if out_dir != run_dir:
            shutil.rmtree(out_dir, ignore_errors=True)  # an earlier attempt's
            out_dir.mkdir(parents=True)
    ctx.barrier()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if ctx.processes is not None:
        device = ctx.processes.device
    record = new_record(
        spec.run_id, spec.to_dict(), environment() | _plugins(spec), TASKS.get(spec.task).version, _method_version(spec)
    )
    stop_after: Exception | None = None  # an error of the machine: the record is written, then the command stops
    try:
        _execute(spec, task, run_dir, out_dir, device, record, ctx)
        if ctx.is_main:  # here, not when it is written: a record JSON cannot hold fails its run, as any fault does
            _check_json(record)
        record["run"]["status"] = "success"
    except (KeyboardInterrupt, Cancelled) as exc:
        why = "interrupted by the user" if isinstance(exc, KeyboardInterrupt) else str(exc)
        if isinstance(exc, Cancelled) and ctx.stop.requested() and ctx.stop.by not in why:
            why = f"{why} (asked by {ctx.stop.by})"
        record["run"]["status"], record["run"]["error"] = "cancelled", why
        with ctx.stop.deferred():  # a second signal must not cut the record's write
            written = _write_outcome(run_dir, record, finished) if ctx.is_main else None
        if isinstance(exc, Cancelled):  # what the next start does: a forced re-run's checkpoint would be dropped
            kept = f" ({written.name} beside it)" if written is not None else ""
            if finished is not None:
                then = (
                    f"this was a forced re-run: the finished record is kept{kept}, and the same command starts it over"
                )
            elif not (run_dir / CHECKPOINT).is_file():  # stopped before training saved one (loading the model, a
                # task's own preparation: the multimodal stage 1), or in a training that saves none: from a review,
                # "resumes it" was said there, and the next start began at step 0 (stage 1 too)
                then = "the run's record says so; no checkpoint was saved yet, so the same command starts it over"
            elif ctx.force:  # --force drops the checkpoint at the next start too
                then = "the run's record says so; run the same command without --force to resume it (with --force it starts over)"
            else:
                then = "the run's record says so, and the same command resumes it"
            cancelled = Cancelled(f"{why}; {then}")
            cancelled.by = ctx.stop.by if ctx.stop.requested() else None  # the exit status says which signal
            raise cancelled from exc
        raise
    except Exception as exc:  # the record says what failed; the next run still gets its turn
        # but for a machine that cannot read the checkpoint, or a disk that is full (or read-only): the next runs
        # would meet it too, after training
        stop_after = exc if isinstance(exc, CheckpointUnreadable) or disk_error(exc) else None
        # what its split recorded is let go: a zero-shot run next must not describe it; once a run (a re-review: a run
        # failing in its scoring described its data again, a multimodal task's caption images decoded anew)
        if spec.method != BASELINE and "data" not in record["run"]["config"]:
            with contextlib.suppress(Exception):
                task.describe()
        record["run"]["status"], record["run"]["error"] = "failed", f"{type(exc).__name__}: {exc}"
        record["run"]["traceback"] = traceback.format_exc(limit=8)
        if ctx.processes is not None and ctx.processes.num_processes > 1:
            # the other processes may wait in a collective this one will never join (one process out of memory):
            # going on would hang them all; the launcher (torchrun, accelerate) stops the group when this exits
            if ctx.is_main:
                with ctx.stop.deferred():
                    _write_outcome(run_dir, record, finished)
            # what the next start does, as a stopped run's message says it: --force drops the checkpoint again
            if finished is not None:
                then = (
                    "fix it: this was a forced re-run, the finished record is kept, and the same command starts it over"
                )
            elif not (run_dir / CHECKPOINT).is_file():  # as a stopped run's: none saved yet (a review: "resumes")
                then = "fix it and run the same command, which starts it over (no checkpoint was saved yet)"
            elif ctx.force:
                then = "fix it and run the same command without --force to resume it (with --force it starts over)"
            else:
                then = "fix it and run the same command, which resumes from the run's last checkpoint"
            raise RuntimeError(
                f"{spec.run_id} failed in process {ctx.processes.process_index} of {ctx.processes.num_processes} "
                f"({record['run']['error']}); with several processes one failure stops them all: {then}"
            ) from exc
    if ctx.is_main:
        with ctx.stop.deferred():  # a SIGTERM here (scoring done) waits for the record: it lost it, cut mid-write
            if record["run"]["status"] == "success" and out_dir != run_dir:
                write_record(out_dir, record)  # the swap is decided: a start after a kill mid-swap finishes it
                try:
                    finish_swap(run_dir)
                except OSError as exc:
                    print(
                        f"warning: {spec.run_id}: its files wait in {RERUN}/ ({exc}); the run's next start swaps "
                        "them in",
                        file=sys.stderr,
                    )
            else:
                _write_outcome(run_dir, record, finished)
            if record["run"]["status"] == "success":
                (run_dir / CHECKPOINT).unlink(missing_ok=True)
    ctx.barrier()
    if stop_after is not None:  # the record is written; the next runs would meet the same disk or memory
        raise stop_after
    if record["run"]["status"] == "failed" and ctx.stop.requested():  # asked in training, which then failed: the
        # loop never looked again, and the sweep went on to the next runs while a scheduler waited to kill it
        stop = Cancelled(
            f"stopped by {ctx.stop.by}; {spec.run_id} failed after the stop was asked, before it took effect "
            f"({record['run']['error']}; its record says so), and the runs after it were not started"
        )
        stop.by = ctx.stop.by
        raise stop
    return record


def _write_outcome(run_dir: Path, record: dict[str, Any], finished: dict[str, Any] | None) -> Path:
    """Write the record (the path); an unsuccessful re-run never replaces a finished run's record. What JSON cannot
    hold (the fault a run failed of, or a task's value in a run that failed otherwise) is written as its type."""
    if record["run"]["status"] != "success":
        safe = json_safe(record, "record", [])
        record.clear()
        record.update(safe)
    if record["run"]["status"] != "success" and finished is not None:
        stem, n = f"{record['run']['status']}-{int(time.time())}", 1
        path = run_dir / f"{stem}.json"
        while path.exists():  # two attempts in one second: neither replaces the other
            path, n = run_dir / f"{stem}-{n}.json", n + 1
        write_json(path, record)
        return path
    write_record(run_dir, record)
    return run_dir / RECORD


# who put a part of the record there: what the error of a value JSON cannot hold names
_MADE_BY = {
    "record['eval']": "the task's evaluate()",
    "record['run']['config']['model_info']": "the task's load() (Loaded.info)",
    "record['run']['config']['data']": "the task's describe()",
}


def _check_json(record: dict[str, Any]) -> None:
    """A ``TypeError`` naming the first value of ``record`` JSON cannot hold (a numpy scalar, a path), where it is
    and who made it: raised after training and scoring, the run fails with it (not the sweep, as writing failed)."""
    faults: list[tuple[str, str]] = []
    json_safe(record, "record", faults)
    if faults:
        where, what = faults[0]
        made_by = next((f" (made by {who})" for part, who in _MADE_BY.items() if where.startswith(part)), "")
        raise TypeError(
            f"the run's record cannot be written as JSON: {where} is {what}{made_by}; return plain Python values "
            "there (float(x), int(x), str(path), lists and dicts of them), not numpy or torch scalars, paths or other "
            "objects"
        )


def finish_swap(run_dir: Path) -> bool:
    """Put a successful forced re-run's outputs (``rerun/``, its record among them) in place of the finished
    run's, each renamed over its namesake, the record last; ``False`` when no swap is pending (no record in
    ``rerun/``: an attempt that did not succeed). A kill part-way leaves the record in ``rerun/``; calling this
    again (every start of the run does, holding its lock) goes on where it stopped."""
    staged = run_dir / RERUN
    if not (staged / RECORD).is_file():
        return False
    for new in sorted(staged.iterdir()):
        if new.name == RECORD or is_temp(new):
            continue
        old = run_dir / new.name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        new.rename(old)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the re-run's: before the record, which ends the swap
    # the renames on the disk before the record's (a power cut must not leave the new record beside the old files)
    flush_folder(staged)
    flush_folder(run_dir)
    os.replace(staged / RECORD, run_dir / RECORD)
    flush_folder(run_dir)  # and the record's, before the command reports the run done
    shutil.rmtree(
        staged, ignore_errors=True
    )  # what is left: temp files of a writer killed mid-write (the swap is done)
    return True


def _execute(
    spec: RunSpec, task: Task, run_dir: Path, out_dir: Path, device: torch.device, record: dict[str, Any], ctx
) -> None:
    """Train (checkpoints in ``run_dir``) and score (the adapter and predictions in ``out_dir``)."""
    # the training data first: a split that cannot be made fails before the model loads (minutes, for some)
    train_set, val_set = task.splits() if spec.method != BASELINE else ([], [])
    # which weights a local folder held (it is the folder the run id names): read before loading, from the cache
    # where they were hashed before; only the main process writes the record
    digest = _weights_digest(spec) if ctx.is_main else None
    # every process checks a checkpoint against it alike (raising together, not one of them while the others wait)
    weights = ctx.agree(digest["weights_sha256"] if digest else "") or None
    loaded = load_model(task, spec, device, ctx.trust_remote_code)
    record["run"]["config"]["model_label"] = loaded.label
    info = dict(loaded.info)
    if ctx.trust_remote_code:  # which code built the model (the flag is outside the run id: _other_model_code)
        model_class = type(loaded.model)
        info |= {"trust_remote_code": True, "model_class": f"{model_class.__module__}.{model_class.__qualname__}"}
    if digest is not None:
        info |= _digest_info(digest)
    # the commit a hub id loaded (read after loading: from_pretrained sets it), the main process's on every process;
    # under --random-weights that of the config it was built from (a paper id's is shipped: none)
    revision = ctx.agree((hub_revision(spec.model) if _reads_hub(spec) else None) or "") or None
    if revision is not None:
        info["hub_revision"] = revision  # the commit it loaded (a hub id's weights can change under its name)
        hub = _hub_digest(spec) if ctx.is_main else None  # the main process writes the record; the files it read
        if hub is not None and hub["revision"] == revision:
            info["hub_manifest"] = hub["manifest"]  # and what its files were: compared when the run is asked again
    if spec.random_weights:  # built from its config: which tokenizer it read (compared: _other_weights)
        info["embedded_tokenizer"] = TASKS.get(spec.task).reads_embedded(spec.model, True)
    if info:
        record["run"]["config"]["model_info"] = info
    if spec.method != BASELINE:
        settings = flops_settings(spec, loaded)  # before the adapter: its parameters are not the model's
        torch.manual_seed(spec.seed)  # adapter init
        adapter = attach(loaded.root, spec.method, **spec.method_options)
        adapter.use_fast_path(bool(spec.extra.get("fast_path")))  # off unless asked: see harness/adapter.py
        recipe = task.recipe(loaded, spec.train)
        # checked before training: the method builds and runs one step on the meta replica, so FLOPs
        # can be counted; if not, the run still trains and the record says why FLOPs are missing. The step
        # only (the check's count is not recorded): the adapters' share is counted after training, at the
        # step's own shapes, and a failure there is recorded as this one would be
        probe_shape = recipe.shape(recipe.collate([recipe.encode(train_set[0])]))
        fast = bool(spec.extra.get("fast_path"))
        probe = _count_flops(
            task, loaded, spec.method, adapter.config, [probe_shape], recipe, fast, settings, adapter_share=False
        )
        with ctx.stop.training():
            result = train(
                loaded.model,
                recipe,
                adapter,
                train_set,
                val_set,
                spec.train,
                run_dir,
                progress=ctx.progress,
                should_stop=ctx.stop.requested,
                task_params=loaded.task_params,
                data=task.training_files(),
                code=_code(spec, ctx.trust_remote_code),
                weights=weights,
                revision=revision,  # a hub id's: a checkpoint of another commit is not resumed on this one
                env=record["env"],  # where its steps are timed: a checkpoint keeps it, a resume elsewhere says so
                unit=task.throughput_unit,
            )
        if ctx.is_main:
            record["train"] = _train_record(spec, adapter, result, out_dir, probe, task, loaded, recipe, settings)
    record["run"]["config"]["data"] = task.describe()  # after splits(): includes the training files used
    if ctx.is_main:  # one process scores; the others wait at the barrier in run_one
        loaded.model.eval()
        began = time.perf_counter()
        record["eval"] = task.evaluate(
            loaded, spec.protocol, spec.eval_batch_size, out_dir / PREDICTIONS, progress=ctx.progress
        )
        check_eval(record["eval"])  # what the leaderboard reads: a task's bad entry fails its run, named
        record["eval_s"] = round(time.perf_counter() - began, 3)


def _looks_finished(spec: RunSpec, ctx: RunContext) -> bool:
    """Whether ``spec``'s run has a finished record (without ``--force``, no forced re-run pending): read without
    its lock, a hint only, that spares it the checks of what a run will read (``Task.check_data_for``); a finished
    run of other data or code is refused before any run trains (``_refuse_other_finished_runs``), never run."""
    run_dir = ctx.runs_dir / spec.run_id
    if ctx.force or (run_dir / RERUN / RECORD).is_file():
        return False
    try:
        return _finished_record(run_dir / RECORD) is not None
    except RunRefused:  # a record it cannot read: said by the check of finished runs
        return False


def run_all(
    specs: list[RunSpec],
    runs_dir: Path,
    data_dir: str | None,
    force: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Every spec once. A run another process holds (a second sweep into the same runs dir) is put
    back and waited for at the end, so the records returned, and the leaderboard, include it. A finished run that is
    not the run asked for (other data, code, device, weights or scorer) stops the sweep before any run trains
    (``RunRefused``, naming each)."""
    if data_dir is not None:  # the data decides some task settings (Task.run_settings): the specs take it in
        specs = [_on_data(s, data_dir) for s in specs]
    processes = _processes()
    ctx = RunContext(runs_dir, force, progress, trust_remote_code, processes=processes)
    if processes is not None and processes.num_processes > 1:  # another batch: another run, not a reuse
        specs = [
            s if s.method == BASELINE else dataclasses.replace(s, processes=processes.num_processes) for s in specs
        ]
    if ctx.is_main:
        check_writable(runs_dir)
    preflight(specs, trust_remote_code)
    tasks: dict[tuple, Task] = {}
    for spec in specs:  # every task's data read, and split for training, before any run is made (one line, no record)
        if (spec.task, spec.task_options) not in tasks:
            tasks[(spec.task, spec.task_options)] = TASKS.get(spec.task)(spec.task_options)
    for task_key, model, random_weights in dict.fromkeys(
        ((s.task, s.task_options), s.model, s.random_weights) for s in specs if not _looks_finished(s, ctx)
    ):  # what the data must hold for each model (the multimodal embedded model's captions): said now, not run by run;
        # not for runs that finished (a re-review: a sweep of finished runs was refused for a cache it would not use)
        tasks[task_key].check_data_for(model, random_weights)
    for key in dict.fromkeys((s.task, s.task_options) for s in specs if s.method != BASELINE):
        # too few examples for --val-size, no training files: said now, not run by run; on a copy, so that what a
        # split records (the training files it read) is not described by a zero-shot run of the sweep
        copy.copy(tasks[key]).splits()
    ctx.sweep = specs
    _refuse_other_finished_runs(specs, tasks, ctx)  # before any run trains: every one named, with the flags for them
    records: dict[int, dict[str, Any]] = {}
    deferred: list[int] = []
    trained: list[dict[str, Any]] = []  # the records of the runs this command ran
    with ctx.stop:
        for blocking, todo in ((False, range(len(specs))), (True, deferred)):
            for i in list(todo):
                spec = specs[i]
                options = spec.task_options
                _say(ctx, f"[{i + 1}/{len(specs)}] {spec.run_id}")
                try:
                    record, ran = run_one(spec, tasks[(spec.task, options)], ctx, blocking)
                except RunRefused as exc:  # met only now (finished meanwhile, or waited for): the runs before it ran
                    exc.after_runs = any(r["run"]["status"] == "success" for r in trained)
                    raise
                if ran:
                    trained.append(record)
                if record is None:
                    who = RunLock(runs_dir / spec.run_id).holder()
                    _say(ctx, f"    running in another process ({who}): coming back to it at the end")
                    deferred.append(i)
                    continue
                status = record["run"]["status"] if ran else "done already (skipped; --force re-runs it)"
                _say(ctx, f"    {status}" + (f": {record['run']['error']}" if record["run"]["error"] else ""))
                if not ran and (failed := _failed_columns(record)):
                    _say(ctx, f"    but its {failed} failed when it ran: `harness rescore --task {spec.task} --runs-dir "
                              f"{runs_dir} ...` (with the scorer's flags) scores them again from what the run saved, "
                              "no training, where its task can")  # fmt: skip
                records[i] = record
    return [records[i] for i in sorted(records)]


def _failed_columns(record: dict[str, Any]) -> str:
    """A finished run's columns that failed when it ran (a judge that was down), as a phrase; "" if none."""
    failed = {
        c: e for c, e in (record.get("eval") or {}).items() if isinstance(e, dict) and e.get("status") == "failed"
    }
    if not failed:
        return ""
    reason = next(iter(failed.values())).get("reason", "")
    return f"column{'s' if len(failed) > 1 else ''} {', '.join(failed)}" + (f" ({reason})" if reason else "")


def _say(ctx: RunContext, text: str) -> None:
    if ctx.is_main:
        print(text, flush=True)


def _processes():
    """accelerate's process state when launched with several processes (accelerate launch, torchrun)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState

    # cpu=True: without a GPU, accelerate only goes multi-process (gloo) when told it runs on CPUs
    cpu = not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=timedelta(hours=24))  # the main process scores alone: waits are long
