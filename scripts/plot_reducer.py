"""Plot a Reducer run's layer importance: score trajectory and per-layer update counts.

python scripts/plot_reducer.py results/runs/<run-id>/record.json [-o reducer.png]   (default: ./reducer.png)

A successful run's record only (a failed or cancelled one is refused, naming its status); titled with its run id,
seed, method, preset and model. The plot is a PNG: an -o of another suffix is refused.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.atomic import atomic_path, check_writable  # noqa: E402
from harness.records import read_record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", type=Path, help="a run's record.json (or its run folder)")
    parser.add_argument("-o", "--out", type=Path, default=Path("reducer.png"), help="the PNG (default ./reducer.png)")
    args = parser.parse_args()
    path = args.record / "record.json" if args.record.is_dir() else args.record
    if not path.is_file():
        parser.error(f"{path} is not a file; pass a run's record.json")
    if not args.out.parent.is_dir():
        parser.error(f"{args.out.parent} is not a folder; pass -o in an existing one")
    if args.out.is_dir():
        parser.error(f"-o {args.out} is a folder; pass the PNG's path (e.g. {args.out / 'reducer.png'})")
    if args.out.suffix.lower() != ".png":  # savefig writes PNG bytes whatever the name: x.pdf was a PNG
        parser.error(
            f"-o {args.out}: the plot is a PNG; pass -o with a .png name (e.g. {args.out.with_suffix('.png')})"
        )
    try:  # before the figure is built: found by the write, it was a traceback naming a temp file
        check_writable(args.out.parent, "-o's folder", "-o")
    except ValueError:  # check_writable's advice asks for a folder: -o is a file's path
        parser.error(f"-o {args.out}: {args.out.parent} is not a folder you can write; pass -o as a PNG's path in one")
    try:
        record = read_record(path)
    except ValueError as exc:
        parser.error(f"{exc}; pass a run's record.json")
    run = record["run"]
    if run["status"] != "success":  # before the Reducer: a failed run's empty train said "this run has no Reducer"
        why = textwrap.shorten(" ".join(str(run.get("error") or "").split()), 200)  # its error on the one line
        parser.error(f"{path}: run {run.get('id')} {run['status']}{': ' * bool(why)}{why}; plot a successful run")
    reducer = (record.get("train") or {}).get("adapter", {}).get("reducer")
    if not reducer:
        method = record["run"].get("config", {}).get("method")
        raise SystemExit(f"{path}: this run has no Reducer (method {method!r})")
    config = record["run"].get("config") or {}
    needed = [k for k in ("num_layers", "update_counts", "k", "selection", "score_trajectory") if k not in reducer]
    if needed or not isinstance(config.get("method"), str):
        what = f"its Reducer summary lacks {', '.join(needed)}" if needed else "its config names no method"
        parser.error(f"{path}: {what} (a record this script cannot read); pass a finished effilora run's record.json")
    layers = range(reducer["num_layers"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    trajectory = reducer["score_trajectory"]
    # a legend entry for at most 8 rounds (the first, the last, evenly between): a run of 1,000 steps scores 99
    # rounds, whose legend covered the plot; the lines' shade says the step for the rest
    named = (
        {round(i * (len(trajectory) - 1) / 7) for i in range(8)} if len(trajectory) > 8 else set(range(len(trajectory)))
    )
    last = max(1, trajectory[-1]["step"]) if trajectory else 1
    for i, entry in enumerate(trajectory):
        top.plot(
            layers,
            entry["scores"],
            color=plt.cm.viridis(entry["step"] / last),  # the step as a colour, dark (early) to yellow (late)
            alpha=0.4 + 0.6 * entry["step"] / last,
            label=f"step {entry['step']}" if i in named else None,
        )
    top.axhline(0, color="grey", lw=0.5)
    top.set_ylabel("score (high = matters less)")
    if trajectory:
        top.legend(fontsize=7, ncol=4, title=f"{len(trajectory)} scoring rounds" if len(trajectory) > 8 else None)
    bottom.bar(layers, reducer["update_counts"])
    bottom.set_ylabel("steps updated")
    bottom.set_xlabel("layer")
    c = config
    seed = f", seed {c['seed']}" if "seed" in c else ""
    fig.suptitle(  # the run id (one seed's plot from another's) and the model on lines of their own: a long label
        # cut the title off at both ends (at 130 characters its model line still ran past both edges of 8 inches)
        f"{run.get('id', '?')}\n{c['method']}, {c.get('preset', '?')} preset{seed}: K={reducer['k']} of "
        f"{reducer['num_layers']} layers, {reducer['selection']}\n"
        f"{textwrap.shorten(str(c.get('model_label', c.get('model', '?'))), 115)}",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(args.out) as tmp:  # never a half-written file
        fig.savefig(tmp, dpi=120, format="png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
