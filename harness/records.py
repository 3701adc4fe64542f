"""Run records: one JSON file per run, written atomically; the leaderboard is a pure function of them."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from harness.atomic import write_json
from harness.stats import correctness

SCHEMA_VERSION = 1
RECORD = "record.json"
PREDICTIONS = "predictions.jsonl"
RERUN = "rerun"  # a forced re-run's outputs, in its run folder, until it succeeds (then its record too)
STATUSES = ("success", "failed", "cancelled")
REQUIRED = {"schema": int, "run": dict, "train": dict, "eval": dict, "env": dict}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def git_state(root: Path | None = None, paths: tuple[str, ...] = (".",)) -> dict[str, Any]:
    """Commit and dirty flag of the harness checkout (None when not installed from git). ``root``: the folder
    above the package. An installed copy (a site-packages or dist-packages folder, say in a venv inside the user's
    own repository) has none: the repository around it is not the harness's code. A checkout inside a larger
    repository (the harness vendored in a monorepo) has that repository's commit, which pins it; its dirty flag is
    of the files under ``root`` (``paths``: of those paths under it)."""
    root = (root or Path(__file__).resolve().parent.parent).resolve()
    if {"site-packages", "dist-packages"} & set(root.parts):
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


# what a checkout's dirty flag covers where its code is meant: not results/, which leaderboard, rescore and bench rewrite
CODE_PATHS = ("harness", "tasks", "methods", "pyproject.toml")


def harness_code() -> dict[str, Any]:
    """The harness's own code: its commit, dirty flag (over ``CODE_PATHS`` only: a leaderboard rebuilt into the
    checkout's results/ is no other code) and version. A checkpoint keeps it (``harness.train``), so that a run resumed
    by other harness code says what its earlier steps ran."""
    from harness import __version__

    return {**git_state(paths=CODE_PATHS), "harness_version": __version__}


# the method version a record or checkpoint written before method versions were kept (2026-12-05) was made by
FIRST_METHOD_VERSION = "1"


def new_record(
    run_id: str,
    config: dict[str, Any],
    env: dict[str, Any],
    task_version: str | None = None,
    method_version: str | None = None,
) -> dict[str, Any]:
    """A running run's record; ``task_version``: the task's ``Task.version`` (outside the config, so outside the
    run id: a finished run made with another version of its task is refused, not run under a new id);
    ``method_version`` the same for its method (``AdapterLinear.version``; none for the zero-shot base)."""
    from harness import __version__

    return {
        "schema": SCHEMA_VERSION,
        "run": {
            "id": run_id,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "error": None,
            "config": config,
            "harness_version": __version__,
            **({} if task_version is None else {"task_version": str(task_version)}),
            **({} if method_version is None else {"method_version": str(method_version)}),
            **git_state(),
        },
        "train": {},
        "eval": {},
        "env": env,
    }


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / RECORD
    write_json(path, record)
    return path


class RecordUnreadable(ValueError):
    """The machine could not read a record (an I/O error, a stale NFS handle, no permission): the file may be a
    finished run's, and is kept. A ``ValueError`` as a damaged record's error is, so that a reader of many records
    (the leaderboard) skips it with a warning; ``harness run`` stops at it (``harness.runner_identity``), as it does at
    a checkpoint it cannot read: a review found the run trained again over a finished run's record on one EIO."""


def record_text(path: Path) -> str:
    """The text of the record at ``path``; ``RecordUnreadable`` where the machine cannot read it: any ``OSError`` but
    the file's absence (its bytes raise none: a damaged file is a ``ValueError`` of its decoding or parsing)."""
    try:
        return path.read_text(encoding="utf-8")  # written as UTF-8 (harness.atomic.write_json)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        if isinstance(exc, PermissionError) and _lookup_refused(path):
            raise RecordUnreadable(
                f"{path.parent}: the machine could not enter this folder to read its {path.name} ({type(exc).__name__}: "
                f"{exc}); check the disk and the folder's permissions (this user must read and enter it: r and x)"
            ) from exc
        raise RecordUnreadable(
            f"{path}: the machine could not read it ({type(exc).__name__}: {exc}); check the disk and the file's "
            "permissions"
        ) from exc


def _lookup_refused(path: Path) -> bool:
    """Whether even looking ``path`` up is refused: its folder cannot be entered (a folder chmod 000; a file chmod
    000 in an open folder is looked up, only not read)."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:  # not there, or another error: of the file, not of a permission on its folder
        return False
    return False


def read_record(path: Path) -> dict[str, Any]:
    """Parse and check one record; ``ValueError`` says what is wrong with it (``RecordUnreadable``: nothing may be)."""
    try:
        record = json.loads(record_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:  # a damaged file: named, not a bare codec error
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    for key, typ in REQUIRED.items():
        if not isinstance(record.get(key), typ):
            raise ValueError(f"{path}: missing or malformed {key!r}")
    if record["schema"] != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema {record['schema']} is not {SCHEMA_VERSION}")
    if record["run"].get("status") not in STATUSES:
        raise ValueError(f"{path}: status {record['run'].get('status')!r} is not one of {', '.join(STATUSES)}")
    return record


# what a successful record holds, as the leaderboard reads it (a trained run's "train" too: not the zero-shot base's)
SUCCESS_FIELDS = (
    *("run.id", "run.config.task", "run.config.method", "run.config.seed", "run.config.preset", "run.config.model"),
    *("run.config.protocol", "run.config.train", "run.config.task_options", "run.config.method_options"),
    *("env.device", "env.torch", "env.transformers"),
)
TRAINED_FIELDS = (
    *("train.steps", "train.trainable_params", "train.percent_trainable", "train.flops_per_step", "train.memory"),
    *("train.params_updated_per_step.mean", "train.adapter_file_bytes", "train.train_s"),
)
# what those fields must be for the leaderboard to read them (one edited to null crashed it with a traceback)
NUMBER = (int, float)
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("run.config.train", "run.config.task_options", "run.config.method_options"), dict),
    **dict.fromkeys(("train.flops_per_step", "train.memory"), dict),
    **dict.fromkeys(("env.device", "env.torch", "env.transformers", "run.id"), str),
    **dict.fromkeys(("run.config.task", "run.config.method", "run.config.model"), str),
    **dict.fromkeys(("run.config.preset", "run.config.protocol"), str),
    **dict.fromkeys(("train.steps", "train.trainable_params", "train.percent_trainable", "train.train_s"), NUMBER),
    **dict.fromkeys(("train.params_updated_per_step.mean", "train.adapter_file_bytes"), NUMBER),
    "run.config.seed": int,
}
# read where a record has them (older records lack them), of their kind where present (null only where the kind
# allows it): a hand-edited one crashed the leaderboard; the train.* ones in a trained run's record only
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("train.hook_val_s", "train.tokens_per_s", "train.final_val_s", "train.base_params"), NUMBER),
    **dict.fromkeys(("train.memory.peak_rss_gb", "train.memory.peak_allocated_gb"), NUMBER),
    "train.flops_per_step.total": NUMBER,
    **dict.fromkeys(
        ("train.flops_per_step.relative_to_lora", "train.flops_per_step.lora_total"), (*NUMBER, type(None))
    ),
    "run.created_at": str,
    "run.config.model_label": str,
    "run.config.extra": dict,
    "train.timed_on_before_resume": list,
    "train.code_before_resume": list,
}


_MISSING = object()


def _field(record: dict[str, Any], field: str) -> Any:
    """The value at a dotted ``field`` of ``record``, ``_MISSING`` where it has none."""
    value: Any = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _of_kind(value: Any, wanted: type | tuple[type, ...]) -> bool:
    """``isinstance``, where a bool is no number (``True`` is an ``int`` to Python)."""
    kinds = wanted if isinstance(wanted, tuple) else (wanted,)
    return isinstance(value, kinds) and not (isinstance(value, bool) and int in kinds and bool not in kinds)


def _other_kind(path: Path, field: str, value: Any) -> str:
    return (
        f"{path}: a successful record whose {field!r} is {type(value).__name__} (edited by hand?); run it again "
        "with --force"
    )


def check_success(path: Path, record: dict[str, Any]) -> None:
    """``ValueError`` naming the first field a successful record lacks (a record edited by hand, or cut short)."""
    trained = isinstance(record["run"].get("config"), dict) and record["run"]["config"].get("method") != "base"
    for field in SUCCESS_FIELDS + (TRAINED_FIELDS if trained else ()):
        if (value := _field(record, field)) is _MISSING:
            raise ValueError(
                f"{path}: a successful record without {field!r} (edited by hand, or cut short?); run it again "
                "with --force"
            )
        if not _of_kind(value, FIELD_TYPES.get(field, object)):
            raise ValueError(_other_kind(path, field, value))
    for field, kind in OPTIONAL_FIELDS.items():  # where it has them
        if field.startswith("train.") and not trained:
            continue
        if (value := _field(record, field)) is not _MISSING and not _of_kind(value, kind):
            raise ValueError(_other_kind(path, field, value))
    before = _field(record, "train.timed_on_before_resume")  # the leaderboard names each entry's device
    if (
        trained
        and before is not _MISSING
        and not all(
            isinstance(e, dict) and isinstance(e.get("device"), str) and isinstance(e.get("malloc"), dict | None)
            for e in before
        )
    ):
        raise ValueError(
            f"{path}: train.timed_on_before_resume holds an entry that is not a device's facts (its name, and its "
            "malloc setting or null; edited by hand?); run it again with --force"
        )
    if (bad := _not_finite(record["train"], "train")) is not None:  # NaN broke the plots after the tables were written
        raise ValueError(f"{path}: {bad} is not a finite number (edited by hand?); run it again with --force")
    for benchmark, entry in record["eval"].items():
        if isinstance(entry, dict) and "scores" in entry and not entry["scores"]:
            raise ValueError(f"{path}: {benchmark} has no per-example scores (n = 0); run it again with --force")
    try:
        check_eval(record["eval"])
    except ValueError as exc:
        raise ValueError(
            f"{path}: {exc}; fix the task's evaluate() if it wrote that, then run it again with --force"
        ) from None


def check_eval(evals: Any) -> None:
    """``ValueError`` naming the first entry of a task's ``evaluate()`` result the leaderboard cannot read:
    ``{benchmark: {"status": "absent" | "failed", ...}}`` or ``{"metric": str, "value": finite number, "n": int,
    ...}`` with, per example, either ``answers`` (one ASCII digit a scored example: the correct option's index),
    ``preds`` (``{metric: one digit a scored example, "-" for no answer}``) and optionally ``n_options`` (one digit
    1-9 an example), or ``scores`` (one finite number an example, within the entry's ``scale``); ``baselines``
    (``{"majority" | "chance": one finite number an example}``, within it too) where the task computes those itself.
    ``scale`` (``[low, high]``) is where a column's per-example scores lie when they are not percent (a judge's 1-10);
    none: 0-100. With per-example data, ``value`` is their mean: of ``scores``, else percent right."""
    if not isinstance(evals, dict) or not all(isinstance(b, str) for b in evals):
        raise ValueError(f"evaluate() returned {type(evals).__name__}; it returns {{benchmark name: entry}}")
    for b, e in evals.items():
        if not isinstance(e, dict):
            raise ValueError(f"eval entry {b!r}: a {type(e).__name__}; each is a dict")
        if "status" in e:
            if e["status"] not in ("absent", "failed"):
                raise ValueError(f"eval entry {b!r}: status {e['status']!r}; an entry is scored, 'absent' or 'failed'")
            continue
        if not isinstance(e.get("metric"), str) or not _finite(e.get("value")) or type(e.get("n")) is not int:
            raise ValueError(f"eval entry {b!r}: needs 'metric' (str), 'value' (a finite number) and 'n' (an int)")
        low, high = _scale(b, e)
        size = None
        if "answers" in e:
            answers = e["answers"]
            if not answers or not _digits(answers, "0123456789"):
                raise ValueError(f"eval entry {b!r}: 'answers' must be a non-empty string of one digit 0-9 an example")
            size = len(answers)
            preds = e.get("preds")
            if not isinstance(preds, dict) or e["metric"] not in preds:
                raise ValueError(
                    f"eval entry {b!r}: 'preds' must be {{metric: string}} holding its metric {e['metric']!r}"
                )
            for m, p in preds.items():
                if not _digits(p, "0123456789-") or len(p) != size:
                    raise ValueError(
                        f"eval entry {b!r}: preds[{m!r}] must be a string as long as 'answers', of digits and '-'"
                    )
            n_options = e.get("n_options")
            if n_options is not None and (not _digits(n_options, "123456789") or len(n_options) != size):
                raise ValueError(f"eval entry {b!r}: 'n_options' must be a string of one digit 1-9 an example")
        if (per_example := e.get("scores")) is not None:
            if not isinstance(per_example, list | tuple) or not per_example or not all(_finite(x) for x in per_example):
                raise ValueError(
                    f"eval entry {b!r}: 'scores' must be a non-empty list of finite numbers, one an example (none "
                    "scored: status 'absent' with a reason)"
                )
            size = len(per_example) if size is None else size
            _within(b, "scores", per_example, low, high)
        baselines = e.get("baselines") or {}
        if not isinstance(baselines, dict):
            raise ValueError(f"eval entry {b!r}: 'baselines' must be {{'majority' | 'chance': list}}")
        for name, values in baselines.items():
            if not isinstance(values, list | tuple) or len(values) != size or not all(_finite(x) for x in values):
                raise ValueError(
                    f"eval entry {b!r}: baselines[{name!r}] must be a list of finite numbers, one an example"
                )
            _within(b, f"baselines[{name!r}]", values, low, high)
        _value_is_their_mean(b, e, low, high)


# how far an entry's value may lie from its per-example mean, as a share of its scale (percent: 0.01): float noise,
# and scores rounded to 3 decimals beside a value from the unrounded ones (the diffusion suite's similarity)
VALUE_TOLERANCE = 1e-4


def _value_is_their_mean(b: str, e: dict[str, Any], low: float, high: float) -> None:
    """``ValueError`` where an entry's ``value`` is not the mean of its per-example scores (``scores``, else 100 a
    right answer and 0 a wrong one): the leaderboard's cells and intervals are that mean, its per-seed table, seed
    spread and the marks beside its cells are ``value``, so a value of another kind (a fraction beside
    ``preds``/``answers``: 0.72 where the cell says 72.0) mixed two numbers in one column."""
    per_example = correctness(e)
    if per_example is None:  # no per-example data: value is all there is
        return
    mean = float(per_example.mean())
    if abs(e["value"] - mean) > VALUE_TOLERANCE * (high - low):
        what = "'scores'" if e.get("scores") is not None else "answers right (100 an example, 0 wrong: percent)"
        raise ValueError(
            f"eval entry {b!r}: 'value' {e['value']!r} is not the mean of its per-example {what}, {mean:.6g}; give "
            f"'value': {mean:.6g} (the leaderboard's cells are that mean, its seeds' table the value)"
        )


PERCENT = (0.0, 100.0)  # the scale of per-example scores whose entry names none


def score_scale(entry: dict[str, Any]) -> tuple[float, float]:
    """The ``(low, high)`` an eval entry's per-example scores lie in: its ``scale``, else percent (0-100)."""
    scale = entry.get("scale")
    return PERCENT if scale is None else (float(scale[0]), float(scale[1]))


def _scale(b: str, e: dict[str, Any]) -> tuple[float, float]:
    scale = e.get("scale")
    if scale is not None and not (
        isinstance(scale, list | tuple) and len(scale) == 2 and all(map(_finite, scale)) and scale[0] < scale[1]
    ):
        raise ValueError(
            f"eval entry {b!r}: 'scale' {scale!r} must be [low, high], two finite numbers, low < high (the range of "
            "its per-example scores; leave it out for percent, 0-100)"
        )
    return score_scale(e)


def _within(b: str, what: str, values: Any, low: float, high: float) -> None:
    """``ValueError`` naming the column where a per-example score lies outside its scale: the leaderboard reads an
    entry without ``scale`` as percent (a percent interval's bound at 0 and 100 is not a judge's at 1 and 10)."""
    if (out := next((x for x in values if not low <= x <= high), None)) is not None:
        raise ValueError(
            f"eval entry {b!r}: {what} holds {out!r}, outside its scale {low:g} to {high:g}; give the entry "
            "'scale': [low, high] where its scores are not percent (0-100)"
        )


def _not_finite(value: Any, at: str) -> str | None:
    """The first field under ``value`` (named from ``at``) holding NaN or an infinity; None where every number is
    finite (the runner writes a validation loss that is not finite as null, with what it was beside it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return at
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((bad for k, v in items if (bad := _not_finite(v, f"{at}.{k}")) is not None), None)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _digits(text: Any, allowed: str) -> bool:
    return isinstance(text, str) and all(c in allowed for c in text)


# a name in the runs dir that holds no record (a file, a folder without one, a symlink loop): not a run folder
NO_RECORD = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}


def find_records(runs_dir: Path) -> list[Path]:
    """The ``record.json`` of each run folder under ``runs_dir``, sorted; a folder the machine cannot enter (no
    permission, an I/O error) is listed as if it held one, whose reading raises ``RecordUnreadable`` naming the
    folder: a reader of many records (the leaderboard) warns of it and goes on (from a review: a glob left it out
    without a word, and a leaderboard of seeds 0 and 1, one folder chmod 000, listed seed 0 alone). ``[]`` where
    ``runs_dir`` is not there; ``ValueError`` where it cannot be listed."""
    try:
        with os.scandir(runs_dir) as entries:
            names = [entry.name for entry in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ValueError(
            f"runs dir {str(runs_dir)!r} cannot be read ({type(exc).__name__}: {exc.strerror or exc}); check its "
            "permissions (this user must read and enter it: r and x) and the disk, or pass --runs-dir a folder of "
            "runs it can read"
        ) from exc
    if names and not os.access(runs_dir, os.X_OK):  # listed, not entered (r without x: `chmod -R 644 runs`, which
        raise ValueError(  # said "no successful run records": a re-review)
            f"runs dir {str(runs_dir)!r} cannot be read (it lists, but cannot be entered: no x permission); check its "
            "permissions (this user must read and enter it: r and x), or pass --runs-dir a folder of runs it can read"
        )
    found = []
    for name in names:
        path = runs_dir / name / RECORD
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno in NO_RECORD:
                continue
        found.append(path)
    return sorted(found)


def pending_swaps(runs_dir: Path) -> list[str]:
    """The runs whose forced re-run succeeded but was stopped while its files replaced the finished run's (its
    record still in ``rerun/``): the next start of the run finishes the swap."""
    return sorted(p.parent.parent.name for p in runs_dir.glob(f"*/{RERUN}/{RECORD}"))
