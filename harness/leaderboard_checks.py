"""The warnings a leaderboard prints and shows under its tables about records that do not compare: FLOPs counted
by other counters or not at all, rows that share no seed or no examples, other versions of a method or task (or
of a plugin's code), other scorers or parameter counts, and runs timed on two machines."""

from __future__ import annotations

import json
from pathlib import Path

from harness.accounting import REFERENCE_METHOD
from harness.leaderboard_rows import Row, Section, hook_flops_per_step
from harness.leaderboard_sections import _task
from harness.records import FIRST_METHOD_VERSION
from harness.runner import BASELINE


def mixed_flops_counters(secs: list[Section], runs_dir: Path) -> list[str]:
    """A line per section whose runs' FLOPs were counted by different counters (records written before a
    counting fix beside newer ones): their FLOPs columns do not compare, and what to run to make them."""
    out = []
    for s in secs:
        counters = {
            str(flops.get("counted_by"))
            for row in s.rows
            for r in row.runs
            if "total" in (flops := (r.get("train") or {}).get("flops_per_step") or {})
        }
        if len(counters) > 1:
            out.append(
                f"section {s.key} ({s.task}, {s.preset}) holds FLOPs counted by {len(counters)} different counters "
                f"(records written before a counting fix): count them again with harness recount-flops "
                f"{runs_dir} (adding --data-dir {s.task}=FOLDER if its data is not at the task's default, and "
                "--plugin / --trust-remote-code as the runs used), then regenerate the leaderboard"
            )
    return out


def unpaired_seeds(secs: list[Section]) -> list[str]:
    """A line per trained row left uncompared with a reference because the two share no seed (``_on_shared_seeds``):
    its ``vs`` cells are empty, which without a word would read as "no per-example data"."""
    out = []
    for s in secs:
        for row in s.rows:
            for ref in sorted(row.unpaired):
                label = s.references.get(ref, ref)
                other = next(r for r in s.rows if r.method == label)
                mine, theirs = (" ".join(map(str, _seeds(x))) for x in (row, other))
                out.append(
                    f"section {s.key} ({s.task}, {s.preset}): {row.method} (seeds {mine}) is not compared with "
                    f"{label} (seeds {theirs}): trained rows are compared on the seeds both ran, and they share none "
                    f"(one seed against another would be the seeds' spread, not the methods'); run {row.name} with "
                    f"seed {min(_seeds(other))} or {other.name} with seed {min(_seeds(row))} to compare them"
                )
    return out


def unpaired_examples(secs: list[Section]) -> list[str]:
    """A line per row and column left uncompared with ``lora`` or ``base`` because the two scored other examples
    (a judge that failed on some images in one run; ``_compare`` pairs only the same examples): the empty ``vs``
    cell would otherwise read as "no per-example data"."""
    out = []
    for s in secs:
        told: set[frozenset[str]] = set()
        for row in s.rows:
            for ref_name in (REFERENCE_METHOD, BASELINE):
                label = s.references.get(ref_name)
                ref = next((r for r in s.rows if r.method == label), None)
                if ref is None or ref is row or ref_name not in row.vs or frozenset((row.method, label)) in told:
                    continue
                other = [
                    b for b in s.benchmarks if b in row.scores and b in ref.scores and row.answers[b] != ref.answers[b]
                ]
                if other:
                    told.add(frozenset((row.method, label)))
                    sizes = ", ".join(f"{b}: {len(row.scores[b])} and {len(ref.scores[b])}" for b in other)
                    why = (
                        "; a judge that failed on some images: harness rescore judges them again"
                        if any(b.startswith("judge_") for b in other)
                        else ""
                    )
                    out.append(
                        f"section {s.key} ({s.task}, {s.preset}): {row.method} is not compared with {label} on "
                        f"{', '.join(other)}: the two scored other examples ({sizes}{why}), and differences are "
                        "paired on the same examples"
                    )
    return out


def _seeds(row: Row) -> list[int]:
    return sorted({r["run"]["config"]["seed"] for r in row.runs})


def other_method_versions(secs: list[Section]) -> list[str]:
    """A line per section and method whose runs recorded different versions of the method
    (``AdapterLinear.version``), or one other than the registered method's now (a record from before versions
    were kept: version 1)."""
    from harness.registry import METHODS

    out = []
    for s in secs:
        by_method: dict[str, set[str]] = {}
        for row in s.rows:
            for r in row.runs:
                if (r.get("train") or {}).get("steps"):  # a trained run; before versions were kept: version 1
                    v = r["run"].get("method_version", FIRST_METHOD_VERSION)
                    by_method.setdefault(r["run"]["config"]["method"], set()).add(str(v))
        for method, ran in sorted(by_method.items()):
            try:
                now = str(METHODS.get(method).version)
            except ValueError:  # a plugin's method read without its plugin
                now = None
            out += _other_versions(s, f"{method} runs", "the method", sorted(ran), now)
    return out


def _other_versions(s: Section, runs: str, of: str, ran: list[str], now: str | None) -> list[str]:
    """The warning line for a section whose ``runs`` were made with several versions ``ran`` of ``of``, or with one
    other than ``now`` (the registered one's); none where they agree."""
    if len(ran) > 1 or (ran and now is not None and ran != [now]):
        return [
            f"section {s.key} ({s.task}, {s.preset}) holds {runs} made with version(s) {', '.join(ran)} of {of}"
            f"{f' (now version {now})' if now else ''}: their scores may not compare; run the older ones again "
            "with --force"
        ]
    return []


def other_plugin_code(secs: list[Section]) -> list[str]:
    """A line per section, row and plugin file (or plugin package) whose runs recorded different sha256s (versions)
    of it in ``env.plugins``: the run id leaves plugin code out, so seeds run before and after an edit of a plugin
    method or task share a row, as runs of two versions of a built-in would (from a review: they were pooled without
    a word). Compared within a row, whose runs hold the same plugins: records name a plugin by its file name only,
    so two rows' (or one record's two) plugin.py may be two files (a re-review: that read as an edit); a task's
    plugin edited between two rows' runs is not seen. A record without ``env.plugins`` says nothing."""
    from harness.runner_identity import _plugin_versions

    out = []
    for s in secs:
        for row in s.rows:
            seen: dict[str, dict[str, list[str]]] = {}  # plugin -> its sha256s (versions) -> its runs' created_at
            for r in row.runs:
                for what, how in _plugin_versions((r.get("env") or {}).get("plugins") or []).items():
                    seen.setdefault(what, {}).setdefault(how, []).append(str(r["run"].get("created_at") or ""))
            for what, by_code in sorted(seen.items()):
                if len(by_code) < 2:
                    continue
                ordered = sorted(by_code.items(), key=lambda item: max(item[1]))  # the newest run's last
                file = what.startswith("plugin file")
                shown = ", ".join(
                    f"{' + '.join(h[:8] for h in how.split(' + ')) if file else how} in {len(runs)} "
                    f"run{'s' if len(runs) > 1 else ''}"
                    for how, runs in ordered
                )
                out.append(
                    f"section {s.key} ({s.task}, {s.preset}) holds {row.method} runs made with {len(by_code)} versions "
                    f"of the {what} ({'sha256' if file else 'version'} {shown}; the last is the newest): their scores "
                    "may not compare; run the older ones again with --force"
                )
    return out


def mixed_base_params(secs: list[Section]) -> list[str]:
    """A line per model whose trained runs counted its parameters differently (``train.base_params``, the
    denominator of ``param_%``: an older multimodal record counted the language model only): their ``param_%``
    do not compare."""
    counts: dict[tuple[str, str], dict[int, set[str]]] = {}
    for s in secs:
        for row in s.rows:
            for r in row.runs:
                if (n := (r.get("train") or {}).get("base_params")) is not None:
                    counts.setdefault((s.task, s.model), {}).setdefault(int(n), set()).add(s.key)
    out = []
    for (task, model), by_count in counts.items():
        if len(by_count) > 1:
            told = "; ".join(
                f"{n:,} (section{'s' if len(keys) > 1 else ''} {', '.join(sorted(keys))})"
                for n, keys in sorted(by_count.items())
            )
            out.append(
                f"{task} runs of {model} count its parameters two ways, {told}: param_% divides by each run's own "
                "count (an older record counted less of the model), so those rows' param_% do not compare; "
                "trainable_params does"
            )
    return out


def other_task_versions(secs: list[Section]) -> list[str]:
    """A line per section whose runs recorded different versions of their task (``Task.version``), or one other
    than the registered task's now: their scores may not compare (records from before the version was recorded
    say nothing)."""
    out = []
    for s in secs:
        ran = sorted({str(v) for row in s.rows for r in row.runs if (v := r["run"].get("task_version")) is not None})
        now = str(cls.version) if (cls := _task(s.task)) else None
        out += _other_versions(s, "runs", f"the {s.task} task", ran, now)
    return out


# an entry's fields naming its scorer; judge_answered_by: the models the judge's server said answered (an alias
# such as gpt-4o names a dated snapshot, which moves), so that one alias answered by two snapshots is two scorers
SCORED_BY = ("judge_model", "judge_endpoint", "rubric_version", "checkpoint", "judge_answered_by")


def mixed_scorers(secs: list[Section]) -> list[str]:
    """A line per section and column scored by different scorers across its runs (a judge model, endpoint,
    rubric or the models that answered for it; a scorer's checkpoint: the fields of ``SCORED_BY`` an eval entry
    carries): ``harness rescore`` keeps a run's config, so runs judged by two judges share a section and their
    rows would be compared. A run judged before the answering model was kept differs from one judged after: which
    snapshot answered it is not known."""
    out = []
    for s in secs:
        mixed: dict[tuple[str, ...], list[str]] = {}  # the scorers -> the columns they share (a judge's eight)
        for b in s.benchmarks:
            seen = {
                json.dumps({k: e[k] for k in SCORED_BY if k in e}, sort_keys=True)
                for row in s.rows
                for r in row.runs
                if "value" in (e := r["eval"].get(b) or {}) and any(k in e for k in SCORED_BY)
            }
            if len(seen) > 1:
                mixed.setdefault(tuple(sorted(seen)), []).append(b)
        for seen, columns in mixed.items():
            shown = "; ".join(seen[:2]) + (" ..." if len(seen) > 2 else "")
            out.append(
                f"section {s.key} ({s.task}, {s.preset}): {', '.join(columns)} scored by {len(seen)} different "
                f"scorers across its runs ({shown}): its rows do not compare there; score them with one (harness rescore)"
            )
    return out


def uncounted_hook_flops(secs: list[Section], runs_dir: Path) -> list[str]:
    """A line per section with runs whose hooks ran validation forwards (the Reducer's scoring rounds) that their
    records do not count (written before they were counted): ``hook_val_flops_per_step`` is empty for them."""
    out = []
    for s in secs:
        runs = [r["run"]["id"] for row in s.rows for r in row.runs if hook_flops_per_step(r.get("train") or {}) is None]
        if runs:
            out.append(
                f"section {s.key} ({s.task}, {s.preset}): {len(runs)} run(s) ({', '.join(runs[:3])}"
                f"{', ...' if len(runs) > 3 else ''}) spent time on the Reducer's scoring forwards but do not count "
                f"their FLOPs: count them with harness recount-flops {runs_dir} (adding --data-dir "
                f"{s.task}=FOLDER if its data is not at the task's default, and --plugin / --trust-remote-code as the "
                "runs used), then regenerate the leaderboard"
            )
    return out


def timed_in_two_places(secs: list[Section]) -> list[str]:
    """A line per run resumed on another device, CPU thread count or malloc setting than it started on
    (``leaderboard_render.timed_apart``): overhead.csv leaves its times out of its row's (they are two machines'
    together, under the last one's name), which without a word would read as a run never timed."""
    from harness.leaderboard_render import _timed_on, timed_apart

    out = []
    for s in secs:
        for row in s.rows:
            for r in row.runs:
                if before := timed_apart(r):
                    out.append(
                        f"section {s.key} ({s.task}, {s.preset}): run {r['run']['id']} trained part of its steps on "
                        f"{'; '.join(before)} and was resumed on {_timed_on(r)}: its train_s, hook_val_s and "
                        "tokens_per_s are the sessions' together, so overhead.csv leaves them out of its row's times "
                        "(train_s, hook_val_s, tokens_per_s, train_s_by_device) and its peak memory is the largest "
                        "of the sessions'; run it again with --force on one machine to time it"
                    )
    return out
