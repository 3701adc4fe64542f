"""Plot a Reducer run's layer importance: score trajectory and per-layer update counts.

python scripts/plot_reducer.py results/runs/<run-id>/record.json [-o reducer.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", type=Path)
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    record = json.loads(args.record.read_text())
    reducer = record.get("train", {}).get("adapter", {}).get("reducer")
    if not reducer:
        raise SystemExit(f"{args.record}: this run has no Reducer (method {record['run']['config']['method']!r})")
    layers = range(reducer["num_layers"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for entry in reducer["score_trajectory"]:
        top.plot(
            layers,
            entry["scores"],
            alpha=0.4 + 0.6 * entry["step"] / max(1, reducer["score_trajectory"][-1]["step"]),
            label=f"step {entry['step']}",
        )
    top.axhline(0, color="grey", lw=0.5)
    top.set_ylabel("score (high = matters less)")
    top.legend(fontsize=7, ncol=4)
    bottom.bar(layers, reducer["update_counts"])
    bottom.set_ylabel("steps updated")
    bottom.set_xlabel("layer")
    c = record["run"]["config"]
    fig.suptitle(
        f"{c['method']} on {c.get('model_label', c['model'])}, {c['preset']} preset: "
        f"K={reducer['k']} of {reducer['num_layers']} layers, {reducer['selection']}",
        fontsize=9,
    )
    fig.tight_layout()
    out = args.out or args.record.with_name("reducer.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
