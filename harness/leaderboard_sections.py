"""How run records become a leaderboard's sections (:mod:`harness.leaderboard` documents them): settings and row
keys, row labels and order, the task's columns, the data and model digests that set sections apart, and what
tells apart sections of one title."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from harness.identity import blob_form, manifest_digest
from harness.leaderboard_rows import AVG, Row, Section, _baseline_rows, _compare, _run_row
from harness.records import PERCENT, config_hash, score_scale
from harness.runner import BASELINE


def _settings(record: dict[str, Any]) -> tuple[str, str]:
    """(task/preset/model/protocol/task options, training settings), seeds left out, as JSON."""
    c = record["run"]["config"]
    common = {
        "task": c["task"],
        "preset": c["preset"],
        "model": c.get("model_label", c["model"]),
        "protocol": c["protocol"],
        # which sources a run trained on makes a row (e.g. single-domain rows), not a section; the scorer a run was
        # given (``harness run --judge-model``) changes neither its training nor its samples, and ``harness rescore``
        # judges runs made without one: it is in the run id, not the section (a review: a judged run's section of its
        # own had no base row and no comparisons; two scorers in one section are warned about, ``mixed_scorers``)
        "task_options": {k: v for k, v in c["task_options"].items() if k not in ("seed", "train_sources", "scoring")},
    }
    for name in ("eval_limit", "train_cap"):  # 0 is no limit, as None (a record from before 2026-12-06 kept a 0)
        if common["task_options"].get(name) == 0:
            common["task_options"][name] = None
    if c.get("extra", {}).get("task_settings"):  # the preset's task settings (e.g. a stage 1): only when set,
        common["task_settings"] = c["extra"]["task_settings"]  # so the sections of records without keep their ids
    train = {k: v for k, v in c["train"].items() if k != "seed"}
    if c.get("processes", 1) != 1:  # several processes: a larger batch, another section (absent: one process)
        train["processes"] = c["processes"]
    # another kind of device computes in another dtype (every built-in task: bf16 on a GPU, fp32 on a CPU), as the
    # runner's refusal of a finished run says: another section (absent: the CPU; a review: one row pooled both)
    if (device_type := device_kind(record)) != "cpu":
        train["device_type"] = device_type
    return json.dumps(common, sort_keys=True), json.dumps(train, sort_keys=True)


def device_kind(record: dict[str, Any]) -> str:
    """The kind of device a run computed on (``env.device_type``; a record without it: the CPU)."""
    return record.get("env", {}).get("device_type", "cpu")


def trained_on_device(train: str) -> str:
    """The kind of device of a section's training settings (``_settings``' second item)."""
    return json.loads(train).get("device_type", "cpu")


def run_hardware(runs: list[dict[str, Any]]) -> str:
    """The devices these runs ran on (a row's: its own runs, not its section's)."""
    return "; ".join(sorted({r["env"]["device"] for r in runs}))


def _row_key(record: dict[str, Any]) -> tuple[str, str]:
    c = record["run"]["config"]
    options = dict(c["method_options"])
    if c["task_options"].get("train_sources"):
        options["trained_on"] = "+".join(c["task_options"]["train_sources"])
    if c.get("extra", {}).get("fast_path"):
        options["fast_path"] = True  # other dropout draws than the reference path: its own row
    return c["method"], json.dumps(options, sort_keys=True)


def _labels(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Row labels: the method, plus the options that differ where a section has it at several settings, and
    always the sources a row trained on when it did not train on all of them (``trained_on``) and whether it
    trained through the fast path. An option one row sets (even to None) and another lacks (a record from before
    it existed) differs, and so does 1 from True: labels that fell together made tables show one label twice and
    the comparisons that look rows up by label take one row's for the other's. Labels that would still read alike
    (1 beside "1") show their values as JSON; any still alike are numbered."""
    plain = {key: _label(key, keys, str) for key in keys}
    alike = Counter(plain.values())
    out = {key: label if alike[label] == 1 else _label(key, keys, json.dumps) for key, label in plain.items()}
    seen: dict[str, int] = {}
    for key in keys:
        seen[out[key]] = n = seen.get(out[key], 0) + 1
        out[key] += f" #{n}" if n > 1 else ""
    return out


def _label(key: tuple[str, str], keys: list[tuple[str, str]], show: Callable[[Any], str]) -> str:
    """``key``'s label (``_labels``), its option values written by ``show``."""
    method, options = key
    opts = json.loads(options)
    others = [json.loads(o) for m, o in keys if m == method and o != options]
    always = ("trained_on", "fast_path")
    shown: dict[str, Any] = {}
    # as JSON, so that a missing key (MISSING) is not None, and 1 is not True or 1.0
    for k, v in opts.items():
        unlike = any(_json(o.get(k, MISSING)) != _json(v) for o in others)
        if isinstance(v, dict):
            # a dict (the Reducer's) is compared key by key with the rows that have one too, reducer.drop_ratio=0.5
            # (from a review: rows apart by one Reducer setting were labelled with the whole dict each); a row with
            # none there (reducer=None) is named by its own label, and this one whole only where no key tells it
            # apart from the others
            dicts = [o[k] for o in others if isinstance(o.get(k), dict)]
            subs = {
                f"{k}.{sub}": w for sub, w in v.items() if any(_json(d.get(sub, MISSING)) != _json(w) for d in dicts)
            }
            shown |= subs or ({k: v} if unlike else {})
        elif k in always or unlike:
            shown[k] = v
    differ = sorted(shown)
    return f"{method} ({', '.join(f'{k}={show(shown[k])}' for k in differ)})" if differ else method


MISSING = object()  # an option a row's records lack (``_label``)


def _json(v: Any) -> str | None:
    return None if v is MISSING else json.dumps(v, sort_keys=True)


def _task(task: str) -> type | None:
    """The registered task class of ``task``; None, with a warning once a process, for a plugin task's records
    read without the plugin (its columns then come in the records' order and its Avg covers every one)."""
    from harness.registry import TASKS

    try:
        return TASKS.get(task)
    except ValueError:
        _unregistered(task)
        return None


@functools.cache
def _unregistered(task: str) -> None:
    print(
        f"warning: task {task!r} is not registered (a plugin's?): its columns are in the records' order and its Avg "
        "covers every one, which may not be the task's own; pass its --plugin (harness --plugin FILE leaderboard)",
        file=sys.stderr,
    )


def _columns(task: str, found: list[str]) -> list[str]:
    """The task's own column order (``Task.columns``) when it is registered, then any others found."""
    cls = _task(task)
    declared = [c for c in cls.columns if c in found] if cls else []
    return list(dict.fromkeys([*declared, *found]))


def _averaged(task: str, benchmarks: list[str]) -> list[str]:
    """The benchmarks the task's Avg covers (``Task.averaged``; every one when it names none)."""
    declared = cls.averaged if (cls := _task(task)) else None
    return [b for b in benchmarks if declared is None or b in declared]


def _unused_settings(task: str) -> tuple[str, ...]:
    """The training settings the task's recipe never reads (``Task.unused_train_settings``; none if unknown)."""
    return cls.unused_train_settings if (cls := _task(task)) else ()


def _rank(row: Row) -> tuple[bool, bool, float, str]:
    """Trained rows by Avg, best first (unknown last: a review found one ranked as 0.0, above a plugin task's
    negative scores), then the zero-shot row. ``_reference`` takes the first of a name in this order."""
    avg = row.cells[AVG].value
    trained = row.kind == "trained"
    return (not trained, trained and avg is None, -avg if avg is not None and trained else 0.0, row.method)


def _section(common: str, train: str, groups: dict[tuple[str, str], list[dict[str, Any]]], key: str) -> Section:
    labels = _labels(sorted(groups))
    groups = {k: g if k[0] == BASELINE else _newest_per_seed(g, duplicate=labels[k]) for k, g in groups.items()}
    runs = sorted((r for g in groups.values() for r in g), key=lambda r: r["run"]["id"])
    benchmarks = _columns(runs[0]["run"]["config"]["task"], [b for r in runs for b in r["eval"]])
    absent = {b for b in benchmarks if all(r["eval"].get(b, {}).get("status") == "absent" for r in runs)}
    averaged = _averaged(runs[0]["run"]["config"]["task"], benchmarks)
    rows = [_run_row(labels[key], g, benchmarks, averaged) for key, g in sorted(groups.items())]
    rows.sort(key=_rank)
    rows += _baseline_rows(runs, benchmarks, absent, averaged)
    references = _compare(rows, benchmarks, averaged, {b: _column_scale(runs, b) for b in benchmarks})
    c, first = runs[0]["run"]["config"], runs[0]
    steps = sorted({r["train"]["steps"] for r in runs if r["train"].get("steps") is not None})
    info = {
        "template": str(c["task_options"].get("template", "")),
        "train_on_inputs": (
            "not read"  # the task's training never reads it (multimodal, diffusion): its value says nothing
            if "train_on_inputs" in _unused_settings(c["task"])
            else str(c["train"].get("train_on_inputs", ""))
        ),
        "steps": " ".join(map(str, steps)) or "0",
        "eval_n": "/".join(str(e["n"]) for e in first["eval"].values() if "n" in e),
        "seeds": " ".join(str(s) for s in sorted({r["run"]["config"]["seed"] for r in runs})),
        "n_runs": str(len(runs)),
        "hardware": run_hardware(runs),
    }
    model = c.get("model_label", c["model"])
    return Section(
        c["task"],
        c["preset"],
        c["protocol"],
        model,
        key,
        benchmarks,
        rows,
        info,
        averaged,
        references,
    )


def _column_scale(runs: list[dict[str, Any]], b: str) -> tuple[float, float]:
    """The scale of ``b``'s per-example scores: the first entry's (runs in id order) that names one other than
    percent, as ``_run_row`` and ``_baseline_rows`` read a column as scaled when any entry is; else percent."""
    return next((s for r in runs if (s := score_scale(r["eval"].get(b) or {})) != PERCENT), PERCENT)


def _newest_per_seed(runs: list[dict[str, Any]], duplicate: str | None = None) -> list[dict[str, Any]]:
    """One run per seed, the newest (``created_at``, then id), in id order; with ``duplicate`` (a row's
    name), a warning on stderr for each seed that had several (settings outside the row's key, such as the
    eval batch size or a model path with the same label, make other run ids for the same row and seed)."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_seed.setdefault(r["run"]["config"]["seed"], []).append(r)
    kept = []
    for seed, same in by_seed.items():
        newest = max(same, key=lambda r: (r["run"].get("created_at", ""), r["run"]["id"]))
        kept.append(newest)
        if duplicate is not None and len(same) > 1:
            older = ", ".join(r["run"]["id"] for r in same if r is not newest)
            print(
                f"warning: {duplicate} has {len(same)} runs of seed {seed}; counted once, the newest "
                f"({newest['run']['id']}), not {older}",
                file=sys.stderr,
            )
    return sorted(kept, key=lambda r: r["run"]["id"])


SHA256 = re.compile(r"[0-9a-f]{64}")


def _data_apart(sections: list[tuple[Any, dict[str, str]]], split: set[Any]) -> list[dict[str, str]]:
    """Per section (its title, its digests), how its data and model files are shown where they set it apart from
    another of its title (a title in ``split``): ``data`` (a digest of its data's digests) where another section of
    its title read other data (``_fits``: a file both name with another digest), ``model files`` (of its model's: the
    same ``--model`` folder with other weights, tokenizer or configs) where one names other model files; neither
    where it is not what differs (a section whose records name no model files is not "model files unset" beside one
    that does, when data split them; a zero-shot section, whose runs read no training file, is not "other data"
    beside a trained one that read its test files, when model files split them)."""
    parts = []
    for title, digests in sections:
        model = {k: v for k, v in digests.items() if k.startswith(MODEL)}
        data = {k: v for k, v in digests.items() if not k.startswith(MODEL)}
        parts.append((title, data, model))
    out = []
    for title, data, model in parts:
        if title not in split:
            out.append({})
            continue
        same = [p for p in parts if p[0] == title]
        # each only where another section's files contradict its own: one that names more files of the same data
        # (a trained run's training file beside a zero-shot run's test files) read the same data, and one that
        # names more files of the same model (a zero-shot run's manifest beside older records) is the same model
        shown = {"data": config_hash(data)} if any(not _fits(data, p[1]) for p in same) else {}
        if model and any(not _fits(model, p[2]) for p in same):
            shown["model files"] = config_hash(model)
        out.append(shown)
    return out


def _digests(record: dict[str, Any]) -> dict[str, str]:
    """What identifies the data a run read: per scored benchmark its test file's sha256 (``eval/B``, as the task
    records it), and every sha256 the task's ``run.config.data`` names (where in it -> the digest; a list item by
    its ``file``)."""
    out = {
        f"eval/{b}": e["sha256"]
        for b, e in (record.get("eval") or {}).items()
        if isinstance(e, dict) and "value" in e and isinstance(e.get("sha256"), str)
    }

    def walk(x: Any, at: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{at}/{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{at}/{v['file'] if isinstance(v, dict) and isinstance(v.get('file'), str) else i}")
        elif isinstance(x, str) and SHA256.fullmatch(x):
            out[at] = x

    walk(record["run"]["config"].get("data"), "data")
    return out | _model_digests(record)


MODEL = "model/"  # the prefix of ``_digests``' keys for the model's files


def _model_digests(record: dict[str, Any]) -> dict[str, str]:
    """What identifies the model's files a run read (``harness.runner._digest_info``): the folder's digest by its
    version and what it covers (so that, as ``harness.runner`` refuses a finished run when a file was added to the
    folder since, two runs of one folder that cover other files at one version and covers are two models), and
    per file its sha256 where the record keeps the folder's ``weights_manifest`` (a file that only one run's digest
    version or covers includes contradicts nothing: a model built from its config leaves the weights out), with the
    version-1 digest it gives, to meet a record of that version (the embedded GGUF's: its own); for a hub id,
    per file the blob its run loaded (``hub_manifest``); none for a record from before these were kept, or a model
    built from the shipped config."""
    info = record["run"]["config"].get("model_info")
    if isinstance(info, dict) and isinstance(hub := info.get("hub_manifest"), dict):  # a hub id: its files' blobs
        # by form (``harness.identity.same_form``): ids of two forms (a git id, a sha256) do not contradict
        ids = {rel: blob_form(d) for rel, d in hub.items() if isinstance(d, str)}
        return {f"{MODEL}hub/{rel} {d.partition(':')[0]}": d for rel, d in ids.items()}
    if not isinstance(info, dict) or not isinstance(digest := info.get("weights_sha256"), str):
        return {}
    if "weights_source" in info:  # the embedded GGUF
        return {f"{MODEL}gguf": digest}
    version = info.get("weights_digest_version", 1)
    # the one digest too, by its version and what it covers: a record that keeps no manifest (from before it was
    # kept) is compared with one that does by it, and a version-1 record by the version-1 digest a manifest gives
    covers = info.get("weights_digest_covers", "") if version > 1 else ""
    out = {f"{MODEL}digest v{version} {covers}".rstrip(): digest}
    manifest = info.get("weights_manifest")
    if isinstance(manifest, dict) and "weights_digest_version" in info:
        out |= {f"{MODEL}{rel}": d for rel, d in manifest.items() if isinstance(d, str)}
        if str(covers).startswith("weights"):  # version 1 covered the weights and configs: a subset of these
            out[f"{MODEL}digest v1"] = manifest_digest(manifest, 1)
    return out


def _fits(mine: dict[str, str], theirs: dict[str, str]) -> bool:
    """No file both name has another digest (one that only one names, e.g. a training file the zero-shot run
    never read or a benchmark a run failed, contradicts nothing)."""
    return all(theirs.get(k, v) == v for k, v in mine.items())


def _by_data(runs: list[dict[str, Any]]) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """``runs`` in groups whose data do not contradict (``_fits``), oldest run first (``created_at``, then id):
    each group's digests (all its runs name) and its runs. One group where they all read the same data."""
    groups: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
    for r in sorted(runs, key=lambda r: (r["run"].get("created_at", ""), r["run"]["id"])):
        mine = _digests(r)
        group = next((g for g in groups if _fits(mine, g[0])), None)
        if group is None:
            groups.append((mine, [r]))
        else:
            group[0].update(mine)
            group[1].append(r)
    return groups


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: json.dumps(v)}
    return out


def _title(s: Section) -> tuple[str, str, str, str]:
    return s.task, s.preset, s.protocol, s.model


def _trains(s: Section) -> bool:
    """Whether ``s`` holds a trained row (else zero-shot runs and their baselines only, which read no training
    setting)."""
    return any(row.kind == "trained" for row in s.rows)


TRAIN = "train."  # the prefix of the training settings' keys (``_flat``)


def _set_apart(secs: list[Section], settings: list[dict[str, str]]) -> None:
    """``info["apart"]``: where sections share a title (task, preset, protocol, model), the settings that set
    each apart (e.g. ``task_settings.generated_data.version 4``), so that a reader can tell them apart. Training
    settings are compared among the sections that train only: a section of zero-shot runs read none (a base run
    kept apart by its data was said to be set apart by the ``train.lr`` its runs' configs carried)."""
    titles: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(secs):
        titles.setdefault(_title(s), []).append(i)
    for group in titles.values():
        trains = [i for i in group if _trains(secs[i])]
        keys = sorted({k for i in group for k in settings[i]})
        among = {k: trains if k.startswith(TRAIN) else group for k in keys}
        values = {k: {settings[i][k] for i in among[k] if k in settings[i]} for k in keys}
        differ = [k for k in keys if len(values[k]) > 1 or any(k not in settings[i] for i in among[k])]
        for i in group:
            shown = [
                k
                for k in differ
                if i in among[k] and _tells_apart(k, settings[i], values[k], [settings[j] for j in among[k]])
            ]
            secs[i].info["apart"] = ", ".join(dict.fromkeys(_shown(settings[i], k) for k in shown))


def _tells_apart(key: str, flat: dict[str, str], values: set[str], group: list[dict[str, str]]) -> bool:
    """A setting at two values is shown everywhere; one at a single value where it is missing, and where it is
    set if its parent is in every section (a new leaf, e.g. train.processes; not the leaves of a subtree the
    other sections lack whole, which their "parent unset" already tells apart)."""
    if len(values) > 1 or key not in flat:
        return True
    parent = key.rpartition(".")[0]
    return all(any(x.startswith(parent + ".") for x in other) for other in group)


def _shown(flat: dict[str, str], key: str) -> str:
    """``key value``; for a setting the section's runs lack, its outermost missing parent: ``parent unset``."""
    if key in flat:
        return f"{key} {flat[key]}"
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        prefix = ".".join(parts[:n])
        if not any(k == prefix or k.startswith(prefix + ".") for k in flat):
            return f"{prefix} unset"
    return f"{key} unset"
