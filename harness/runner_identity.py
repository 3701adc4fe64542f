"""Whether a finished run is the run asked for (the same data, code, device, model files and scorer: the run id
names none of them), what the command says of one that is not (``RunRefused``), and what of a run's identity its
record and checkpoints keep. Part of ``harness.runner``, which re-exports what others import."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from harness.guard import RunLock
from harness.hub import is_hub_id, looks_like_path
from harness.identity import (
    DIGEST_VERSION,
    blob_form,
    changed_files,
    embedded_digest,
    hub_digest,
    model_digest,
    needs_own_code,
    same_form,
)
from harness.models import EMBEDDED, PAPER_MODELS, own_code
from harness.records import (
    FIRST_METHOD_VERSION,
    RECORD,
    RERUN,
    SCHEMA_VERSION,
    RecordUnreadable,
    read_record,
    record_text,
)
from harness.registry import METHODS, TASKS, plugin_files
from harness.runner_refusal import RunRefused, _Refusal, _refusal, _refused_message
from harness.runner_spec import BASELINE, RunContext, RunSpec
from harness.task import EVERY_COLUMN, Task

DAMAGED = ".damaged"  # the suffix a damaged record is kept under while its run is run again


def _finished_record(record_path: Path, set_aside: bool = False) -> dict[str, Any] | None:
    """The run's record where it finished; ``None``: none, a damaged one (run again), one of an unfinished run.
    ``RunRefused`` where the machine cannot read it (``_unreadable``). ``set_aside``: a damaged one is kept as
    ``record.json.damaged``, with a warning (``_set_aside``); the main process, under the run's lock, as it runs."""
    if not record_path.is_file():
        return None
    try:
        finished = read_record(record_path)
    except RecordUnreadable as exc:
        raise _unreadable(record_path, exc) from exc
    except ValueError as exc:  # damaged: run again
        if set_aside and _newer_record(record_path) is None:  # a newer harness's record is kept where it is
            _set_aside(record_path, exc)
        return None
    return finished if finished["run"]["status"] == "success" else None


def _set_aside(record_path: Path, damage: ValueError) -> None:
    """Keep a damaged record (not JSON, not a record) beside the one its run writes again, saying so: from a review,
    the run was run again in its folder and its record written over without a word. As a checkpoint that cannot be
    read is kept (``checkpoint.pt.unreadable``), an earlier one of the name replaced."""
    kept = record_path.with_name(record_path.name + DAMAGED)
    try:
        record_path.replace(kept)
    except FileNotFoundError:  # gone meanwhile: nothing to keep, nothing to say
        return
    print(
        f"warning: {damage}: a damaged record (kept as {kept.name}); run {record_path.parent.name} runs again in its "
        f"folder and writes a new {record_path.name}",
        file=sys.stderr,
    )


def _unreadable(record_path: Path, exc: RecordUnreadable) -> RunRefused:
    """A record the machine cannot read may be a finished run's: the command stops, the file kept, as at a checkpoint
    (``CheckpointUnreadable``); from a review: on one EIO the run trained again and its record was written over."""
    return RunRefused(
        f"{exc}, then run the same command again; the record is kept, and run {record_path.parent.name} was not "
        f"trained over it (to train it afresh instead, move its folder {str(record_path.parent)!r} aside)"
    )


def _newer_record(record_path: Path) -> dict[str, Any] | None:
    """A record written by a newer harness (a later schema, which this one does not read), whatever its status: it
    is kept as a finished run's is, never overwritten in place (a newer harness's failed or cancelled run was
    resumed from its checkpoint and its record written over). ``RunRefused`` where the machine cannot read it."""
    try:
        raw = json.loads(record_text(record_path))
    except RecordUnreadable as exc:
        raise _unreadable(record_path, exc) from exc
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


def _refuse_other_finished_runs(specs: list[RunSpec], tasks: dict[tuple, Task], ctx: RunContext) -> None:
    """``RunRefused`` naming every finished run the sweep would meet that is not the run asked for (other data, code,
    device, weights or scorer), before any run of it trains: the runner stopped at the first such run after the
    runs before it had trained, and its advice, ``--force``, would train those again. The same checks as
    ``_decide``'s, read without the runs' locks (each run is checked again, under its lock, when its turn comes); a
    run whose forced re-run was stopped mid-swap is left to that check, which finishes the swap first."""
    refused = []
    if ctx.is_main:  # the main process reads, as it decides each run; every process raises alike
        for spec in {s.run_id: s for s in specs}.values():
            run_dir = ctx.runs_dir / spec.run_id
            if ctx.force:  # every finished run is run again, but where the machine cannot read its record (a
                if (unreadable := _unreadable_record(run_dir / RECORD)) is not None:  # re-review: the runs before
                    refused.append(_Refusal(spec, unreadable, "", "", unreadable=True))  # it trained first)
                continue
            if (run_dir / RERUN / RECORD).is_file() or _held(run_dir):  # judged at its turn, under its lock
                continue
            decision = _finished_decision(spec, tasks[(spec.task, spec.task_options)], ctx, run_dir)
            if (refusal := _refusal(spec, decision, ctx.runs_dir)) is not None:
                refused.append(refusal)
    if message := ctx.agree(_refused_message(refused, specs, before=True) if refused else ""):
        raise RunRefused(message)


def _unreadable_record(record_path: Path) -> str | None:
    """What ``_unreadable`` says of a record the machine cannot read; ``None`` for one it reads, or none there."""
    try:
        record_text(record_path)
    except RecordUnreadable as exc:
        return str(_unreadable(record_path, exc))
    except OSError:  # not there (or gone meanwhile): nothing to keep
        return None
    return None


def _held(run_dir: Path) -> bool:
    """Whether another process holds the run's lock now (a forced re-run of it, or its first run): its finished record
    may be replaced before this sweep's turn comes (a re-review: a sweep beside ``--force`` of one of its runs was
    refused on the record that re-run replaces), so it is left to the check under the lock."""
    return RunLock(run_dir).held()


def _finished_decision(spec: RunSpec, task: Task, ctx: RunContext, run_dir: Path) -> str:
    """'done' (a finished run, the one asked for), 'run', or why a finished run is not the one asked for: 'other data
    (...)' (code, device, weights, scorer), or 'unreadable record (...)' (the machine cannot read it); without
    ``ctx.force``, which runs every run."""
    if ctx.force:
        return "run"
    try:
        newer, finished = _newer_record(run_dir / RECORD), _finished_record(run_dir / RECORD)
    except RunRefused as exc:  # a decision, as the others are: every process of the run stops alike
        return f"unreadable record ({exc})"
    if newer is not None:
        return (
            f"other code (its record was written by a newer harness: schema {newer['schema']}, this one reads "
            f"{SCHEMA_VERSION}; upgrade the harness to use it)"
        )
    if finished is not None:
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
    config.json"``); a hub id's files (``_other_hub_files``); or the ``--model`` string names a hub id now where it
    named a local folder then, or the reverse (the run id names the string, not which it is); or a model built from
    its config (``--random-weights``) tokenizes with another tokenizer than it did (the embedded one, or the model's
    own: a processor the hub's cache holds now). ``None``: the same, or not known (a record from before the digest
    was kept, a model that is no local folder and no hub id)."""
    info = finished["run"]["config"].get("model_info")
    info = info if isinstance(info, dict) else {}
    if (files := _other_model_files(spec, info)) is not None:  # first: a hub id turned local folder says so
        return files
    then = info.get("embedded_tokenizer")  # a model built from its config: kept since 2026-12-07
    if spec.random_weights and isinstance(then, bool):
        now = TASKS.get(spec.task).reads_embedded(spec.model, True)
        if now != then:  # a processor (tokenizer) now in the hub's cache or its folder, or gone from it
            said = {True: "the embedded one", False: "the model's own"}
            return f"the tokenizer was {said[then]} then, {said[now]} now"
    return None


def _other_model_files(spec: RunSpec, info: dict[str, Any]) -> str | None:
    """``_other_weights`` but the tokenizer's source: the model's files, or which kind of model the string names."""
    if ("hub_revision" in info or "hub_manifest" in info) and not is_hub_id(spec.model):
        return "the model was a hub id then, a local folder now"
    if isinstance(hub := info.get("hub_manifest"), dict):  # a --random-weights run's too: its config's blobs
        return _other_hub_files(spec, info, hub)
    ran = info.get("weights_sha256")
    if not isinstance(ran, str):
        return None
    version = info.get("weights_digest_version", 1)  # kept since version 2
    if (now := _weights_digest(spec, version)) is None:  # the folder is gone: a hub id of that name is another model
        hub_now = spec.model != EMBEDDED and is_hub_id(spec.model) and not looks_like_path(spec.model)
        return "the model was a local folder then, a hub id now" if hub_now else None
    if now["weights_sha256"] == ran:
        return None
    then = info.get("weights_manifest")  # kept since 2026-12-06 (with its version): which files changed
    # over the same kind of files: a run that reads the weights now and did not then (a multimodal config turned
    # from llava_style into transformers' LLaVA) would list weight files that were there all along as added
    same = info.get("weights_digest_covers") == now.get("covers")
    known = isinstance(then, dict) and "weights_digest_version" in info and "manifest" in now and same
    files = changed_files(then, now["manifest"]) if known else ""
    return f"{ran[:8]} -> {now['weights_sha256'][:8]}" + (f": {files}" if files else "")


def _reads_hub(spec: RunSpec) -> bool:
    """Whether the run reads its model's files (a hub id's) from the hub: every run but a ``--random-weights`` one of
    a paper id, which reads the config this package ships (another hub id's run reads its config from the hub)."""
    return not (spec.random_weights and spec.model in PAPER_MODELS)


def _hub_digest(spec: RunSpec) -> dict[str, Any] | None:
    """``harness.identity.hub_digest`` of the hub id's files the run reads, as its record keeps them and a finished run
    is compared: a ``--random-weights`` one reads its configs (and code), and its tokenizer's and processor's files
    only where its task does not tokenize with the embedded model's (``Task.reads_embedded``: a causal LM built from a
    hub id's config does; a multimodal LLaVA whose processor the hub's cache holds reads that processor), so that a
    new commit of its tokenizer's files alone does not refuse the run."""
    task_cls = TASKS.get(spec.task)
    tokenizer = not spec.random_weights or not task_cls.reads_embedded(spec.model, True)
    return hub_digest(spec.model, task_cls.reads_weights(spec.model, spec.random_weights), tokenizer)


def _other_hub_files(spec: RunSpec, info: dict[str, Any], then: dict[str, Any]) -> str | None:
    """``"commit 0123abcd -> 4567ef01: changed tokenizer_config.json"``: a hub id's files that the hub's local cache
    now holds at its main revision (``harness.identity.hub_digest``) other than those the finished run loaded,
    compared over the files both know by ids of one form (a file not downloaded again is not known); ``None``: none
    differs, or the cache holds no revision of it (offline, the hub's own newest revision is not known)."""
    now = _hub_digest(spec)
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
    ran = _plugin_versions(finished.get("env", {}).get("plugins", []))
    plugins = _plugins(spec).get("plugins", [])
    now_all = _plugin_versions(plugins)
    if not ran or ran == now_all:
        return None
    for plugin in plugins:
        what = _plugin_ident(plugin)[0]
        if what in ran and ran[what] != now_all[what]:
            if "file" in plugin:
                return f"the {what} differs from the one it ran with"
            return f"the {what} is version {now_all[what]}; the run was made with version {ran[what]}"
    return (
        f"it was made with the {', '.join(sorted(ran))}, defined now by the {', '.join(sorted(now_all)) or 'harness'}"
    )


def _plugin_versions(plugins: list[dict[str, str]]) -> dict[str, str]:
    """``_plugin_ident`` of each plugin, by what it is; two of one name (a task's plugin.py and a method's, in two
    folders) joined in order, so that neither hides the other (a re-review: the second replaced the first, and the
    run was compared with itself as other code, or an edit of the first was missed)."""
    out: dict[str, list[str]] = {}
    for plugin in plugins:
        what, how = _plugin_ident(plugin)
        out.setdefault(what, []).append(how)
    return {what: " + ".join(sorted(hows)) for what, hows in out.items()}


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
        | _plugin_versions(_plugins(spec).get("plugins", []))
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
    ``harness.identity.needs_own_code``), else without. ``None``: the same, or the flag changes nothing the run loads
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
