"""Run records: one JSON file per run, written atomically; the leaderboard is a pure function of them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from harness.atomic import write_json

SCHEMA_VERSION = 1
RECORD = "record.json"
PREDICTIONS = "predictions.jsonl"
RERUN = "rerun"  # a forced re-run's outputs, in its run folder, until it succeeds (then its record too)
STATUSES = ("success", "failed", "cancelled")
REQUIRED = {"schema": int, "run": dict, "train": dict, "eval": dict, "env": dict}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the harness checkout (None when not installed from git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
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


def new_record(run_id: str, config: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
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


def read_record(path: Path) -> dict[str, Any]:
    """Parse and check one record; ``ValueError`` says what is wrong with it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
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
    *("train.params_updated_per_step.mean", "train.adapter_file_bytes"),
)


def check_success(path: Path, record: dict[str, Any]) -> None:
    """``ValueError`` naming the first field a successful record lacks (a record edited by hand, or cut short)."""
    trained = isinstance(record["run"].get("config"), dict) and record["run"]["config"].get("method") != "base"
    for field in SUCCESS_FIELDS + (TRAINED_FIELDS if trained else ()):
        value: Any = record
        for key in field.split("."):
            if not isinstance(value, dict) or key not in value:
                raise ValueError(
                    f"{path}: a successful record without {field!r} (edited by hand, or cut short?); run it again "
                    "with --force"
                )
            value = value[key]
    for benchmark, entry in record["eval"].items():
        if isinstance(entry, dict) and "scores" in entry and not entry["scores"]:
            raise ValueError(f"{path}: {benchmark} has no per-example scores (n = 0); run it again with --force")


def find_records(runs_dir: Path) -> list[Path]:
    return sorted(runs_dir.glob(f"*/{RECORD}"))


def pending_swaps(runs_dir: Path) -> list[str]:
    """The runs whose forced re-run succeeded but was stopped while its files replaced the finished run's (its
    record still in ``rerun/``): the next start of the run finishes the swap."""
    return sorted(p.parent.parent.name for p in runs_dir.glob(f"*/{RERUN}/{RECORD}"))
