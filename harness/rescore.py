"""``harness rescore``: a scorer added to finished runs from what they saved, without training them again.

A task's optional scorers (``Task.scorers``: the diffusion suite's judge and HPS v2) are part of a run's id
when given to ``harness run``, so asking for one later meant a new run, trained again. ``rescore_runs`` asks the
task (``Task.rescore``) for those columns from the run's saved outputs (the diffusion samples) and writes them
into the finished record, holding the run's lock; the record keeps its run id and config and says what was
scored again, when, and by which harness (``run.rescored``). A record is written whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import __version__
from harness.guard import RunLock
from harness.records import RECORD, RecordUnreadable, check_eval, find_records, git_state, read_record, write_record
from harness.registry import TASKS


def rescore_runs(
    runs_dir: Path,
    task: str,
    scoring: dict[str, str],
    run_ids: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Score the successful runs of ``task`` in ``runs_dir`` (only ``run_ids`` where given) again with
    ``scoring``: (the updated records, the problems). Every name and the scorers themselves
    (``Task.check_scoring``) are checked before any run is touched. A run that cannot be scored (another
    process holds it, what it saved is missing, its folder the machine cannot enter where named) is a problem and
    the others go on; a folder it cannot enter that is not named is a warning (it may hold no run: lost+found). Only scored columns are written, none that scores fewer examples than the record's column does; a
    column that comes back without a score (the judge failed), or scored fewer, or with some examples failed, is
    a problem too."""
    from harness.runner import check_scorer_names

    task_cls = TASKS.get(task)
    if not task_cls.scorers:
        raise ValueError(f"the {task} task has no optional scorer to score again")
    if not scoring:
        flags = ", ".join("--" + s.replace("_", "-") for s in task_cls.scorers)
        raise ValueError(f"name a scorer to score the runs with: {flags}")
    check_scorer_names(task, list(scoring))
    if not runs_dir.is_dir():
        raise ValueError(f"--runs-dir {str(runs_dir)!r} is not a folder of runs; pass the one `harness run` wrote to")
    found, unreadable = {}, {}
    for path in find_records(runs_dir):  # as the leaderboard lists them: a glob left out a folder it cannot enter
        try:
            record = read_record(path)
        except RecordUnreadable as exc:  # a folder it cannot enter, a record it cannot read: it may be a run to score
            unreadable[path.parent.name] = f"{exc}; left unscored (whether it is a {task} run is not known)"
            continue
        except ValueError:
            continue  # not a run of ours to score (the leaderboard says what is wrong with it)
        config = record["run"].get("config")
        if record["run"]["status"] == "success" and isinstance(config, dict) and config.get("task") == task:
            found[path.parent.name] = path.parent
    chosen = list(dict.fromkeys(run_ids)) if run_ids else sorted(found)  # a run named twice is scored once
    # where a glob left them out unsaid: a run named with --runs is a problem (the others go on), any other such
    # folder a warning, as the leaderboard's (a re-review: lost+found at a disk's top failed every rescore)
    problems = [text for run_id, text in sorted(unreadable.items()) if run_ids and run_id in chosen]
    if not run_ids:
        for _, text in sorted(unreadable.items()):
            print(f"warning: {text}", file=sys.stderr)
    chosen = [r for r in chosen if r not in unreadable]
    if missing := [r for r in chosen if r not in found]:
        raise ValueError(
            f"no successful {task} run {missing[0]!r} in {str(runs_dir)!r}"
            + (f"; it has: {', '.join(sorted(found)[:5])}{' ...' if len(found) > 5 else ''}" if found else "")
        )
    if not chosen and problems:  # only runs named that it cannot read: said, and no scorer loaded for none
        return [], problems
    if not chosen and unreadable:
        raise ValueError(
            f"no successful {task} run this machine can read in {str(runs_dir)!r}: {len(unreadable)} folder(s) it "
            "could not enter or read (the warnings above); give this user access to them (r and x), then rescore again"
        )
    if not chosen:
        raise ValueError(f"no successful {task} run in {str(runs_dir)!r}; run `harness run --task {task}` first")
    task_cls.check_scoring(dict(scoring))  # the scorers reachable and loadable, before any run is touched
    # before any record is written: a runs folder inside the checkout (results/runs) would make it dirty
    code = git_state()
    done = []
    for i, run_id in enumerate(chosen, 1):
        try:
            record = _rescore_one(found[run_id], task_cls, scoring, problems, code)
        except Exception as exc:  # noqa: BLE001  this run (its files, a task's hook, a scorer's error): the others go on
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            problems.append(text if run_id in text else f"run {run_id}: {text}")
            continue
        if record is None:
            continue
        written = record["run"]["rescored"][-1]["columns"]
        heads = [c for c in written if not c.startswith("judge_") or c == "judge_avg"]  # not every criterion
        shown = ", ".join(f"{c} {record['eval'][c]['value']:.2f}" for c in heads)
        say(f"[{i}/{len(chosen)}] {run_id}: {shown}")
        done.append(record)
    return done, problems


def _rescore_one(
    run_dir: Path, task_cls: Any, scoring: dict[str, str], problems: list[str], code: dict[str, Any]
) -> dict[str, Any] | None:
    """One run scored again under its lock: the record written (None: nothing to write, or another process holds
    the run; said in ``problems``), stamped with ``code`` (``git_state()`` as it was before the first record was
    written). Raises what stops this run."""
    from harness.runner import finish_swap

    run_id, lock = run_dir.name, RunLock(run_dir)
    if not lock.acquire(blocking=False):
        problems.append(f"run {run_id} is held by another process ({lock.holder()}); rescore it when that ends")
        return None
    try:
        finish_swap(run_dir)  # a forced re-run stopped while its files replaced the finished run's: finished
        record = read_record(run_dir / RECORD)
        entries = task_cls.rescore(run_dir, record, dict(scoring))
        check_eval(entries)
        written, found_problems = _what_to_write(record["eval"], entries)
        problems += [f"run {run_id}: {line}" for line in found_problems]
        if not written:
            return None
        record["eval"].update(written)
        record["run"].setdefault("rescored", []).append(
            {
                "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "scoring": {k: Path(v).name if k.endswith("_checkpoint") else v for k, v in scoring.items()},
                "columns": sorted(written),
                "harness_version": __version__,
                **code,
            }
        )
        write_record(run_dir, record)
        return record
    finally:
        lock.release()


def _what_to_write(old: dict[str, Any], entries: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """(the entries to write, the problems): only scored entries are written, and none that scores fewer examples
    than the record's entry of that column already does (a judge that failed on some images now); an entry that
    failed on some of its examples is written where it is not worse, and said."""
    written, grouped = {}, {}  # grouped: one problem per reason, not per column (the judge's eight)
    for column, entry in entries.items():
        before = old.get(column, {})
        if "value" not in entry:
            why = f"{entry.get('status', 'not scored')} ({entry.get('reason', '')})"
            if "value" in before:
                why += "; the earlier score is kept"
        elif "value" in before and int(entry.get("n", 0)) < int(before.get("n", 0)):
            why = f"scored {entry.get('n')} examples, fewer than the record's {before.get('n')}; the earlier score is kept"
        else:
            written[column] = entry
            if not entry.get("failed"):
                continue
            why = f"{entry['failed']} of its examples failed (scored {entry.get('n')}; written)"
        grouped.setdefault(why, []).append(column)
    problems = [
        f"{cols[0] if len(cols) == 1 else f'{len(cols)} columns ({cols[0]} ... {cols[-1]})'} {why}"
        for why, cols in grouped.items()
    ]
    return written, problems
