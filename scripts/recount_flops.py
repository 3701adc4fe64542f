"""Count the FLOPs of finished runs again from their records (no training: a meta-device replica).

python scripts/recount_flops.py results/runs --data-dir commonsense=../shared/data/commonsense \
    --data-dir diffusion=../shared/data/diffusion/twemoji-64

Each record whose count changes is rewritten in place (atomically), keeping what the run wrote under
``train.flops_per_step.recounted.as_run`` (and ``train.hook_val_flops.recounted.as_run`` for the Reducer's scoring
forwards, counted from the score trajectory in a record written before they were counted); regenerate the leaderboard afterwards (``harness leaderboard``).
A task without ``--data-dir`` uses its default data (``HARNESS_DATA_DIR``, the hub, or generated data).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.recount import recount_flops
from harness.registry import load_plugin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--data-dir", action="append", default=[], metavar="TASK=PATH", help="a task's data")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--plugin", action="append", default=[], help="a file registering a method or task")
    args = parser.parse_args()
    data_dirs = {}
    for item in args.data_dir:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            parser.error(f"--data-dir takes TASK=PATH (e.g. commonsense=../shared/data/commonsense), got {item!r}")
        if task in data_dirs and data_dirs[task] != path:  # the last one won, silently (a review)
            parser.error(f"--data-dir gives {task} twice ({data_dirs[task]}, {path}); give it once")
        if not Path(path).expanduser().is_dir():
            parser.error(f"--data-dir {item!r}: {path!r} is not a folder; give the folder that holds {task}'s data")
        data_dirs[task] = path
    if not args.runs_dir.is_dir() or not any(args.runs_dir.glob("*/record.json")):
        parser.error(f"{args.runs_dir} is not a folder of runs, each with its record.json (e.g. results/runs)")
    for plugin in args.plugin:
        try:
            load_plugin(plugin)
        except ValueError as exc:
            parser.error(str(exc))
    from harness.registry import TASKS

    if unknown := [t for t in data_dirs if t not in TASKS]:
        parser.error(f"--data-dir names an unknown task {unknown[0]!r}; tasks: {', '.join(TASKS.names())}")
    changes = recount_flops(args.runs_dir, data_dirs, trust_remote_code=args.trust_remote_code)
    raise SystemExit(summary(changes))


NOTHING_TO_COUNT = "no FLOPs counted in it"  # a zero-shot or failed run's record: left, and rightly so


def summary(changes: list[dict]) -> int:
    """Print how many records were rewritten, unchanged and left; the exit status: 1 where one was left that had
    FLOPs to count (a model that does not build here, a model folder that holds another model now than the run
    recorded, data that cannot be read or is not what the run trained on, a running process, a step the run could
    not count and that keeps no shapes to count it from), else 0."""
    left = [c for c in changes if "left" in c]
    stuck = [c for c in left if not c["left"].startswith(NOTHING_TO_COUNT)]
    hooks_left = [c for c in changes if "left" not in c and "left" in (c.get("hooks") or {})]
    rewritten = sum(bool(c.get("rewritten")) for c in changes if "left" not in c)
    print(
        f"{rewritten} rewritten, {len(changes) - len(left) - rewritten} unchanged, {len(left)} left "
        f"({len(stuck)} of them with FLOPs that could not be counted here)"
        + (f"; {len(hooks_left)} whose Reducer scoring forwards could not be counted" if hooks_left else "")
    )
    return 1 if stuck or hooks_left else 0


if __name__ == "__main__":
    main()
