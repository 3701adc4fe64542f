"""Leaderboards as a pure function of run records: ``<task>.csv`` (Table 1 shape), ``overhead.csv``
(Table 2 shape), a Markdown rendering and a PNG of accuracy against trainable parameters."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness.atomic import atomic_path, write_text
from harness.records import find_records, read_record


def load_records(runs_dir: Path) -> list[dict[str, Any]]:
    if not runs_dir.is_dir():
        raise ValueError(f"runs dir {str(runs_dir)!r} does not exist; run `harness run ...` first or pass --runs-dir")
    records = []
    for path in find_records(runs_dir):
        try:
            record = read_record(path)
        except ValueError as exc:
            print(f"warning: skipped {exc}", file=sys.stderr)
            continue
        if record["run"]["status"] == "success":
            records.append(record)
    return records


def _group_key(record: dict[str, Any]) -> tuple:
    c = record["run"]["config"]
    return (
        c["task"],
        c["preset"],
        c.get("model_label", c["model"]),
        c["protocol"],
        c["method"],
        json.dumps(c["method_options"], sort_keys=True),
        c["task_options"]["template"],
        c["train"]["train_on_inputs"],
        json.dumps({k: v for k, v in c["train"].items() if k != "seed"}, sort_keys=True),
        json.dumps({k: v for k, v in c["task_options"].items() if k != "seed"}, sort_keys=True),
    )


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _avg(record: dict[str, Any]) -> float | None:
    values = [r["value"] for r in record["eval"].values() if "value" in r]
    return statistics.mean(values) if values else None


def tables(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """``{task: accuracy table}`` and ``{"overhead": cost table}``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(_group_key(record), []).append(record)
    accuracy: dict[str, list[dict[str, Any]]] = {}
    overhead: list[dict[str, Any]] = []
    for key, runs in groups.items():
        task, preset, model, protocol, method = key[:5]
        c = runs[0]["run"]["config"]
        benchmarks = list(runs[0]["eval"])
        row: dict[str, Any] = {"method": method}
        for b in benchmarks:
            values = [r["eval"][b]["value"] for r in runs if "value" in r["eval"].get(b, {})]
            row[b] = _cell(values) if values else "absent"
        avgs = [a for a in (_avg(r) for r in runs) if a is not None]
        row["Avg"] = _cell(avgs) if avgs else ""
        train = runs[0]["train"]
        row["Param %"] = f"{train['percent_trainable']:.3f}" if train else "0"
        row.update(
            {
                "protocol": protocol,
                "model": model,
                "preset": preset,
                "template": c["task_options"]["template"],
                "train_on_inputs": c["train"]["train_on_inputs"],
                "steps": train.get("steps", 0),
                "eval_n": "/".join(str(r["n"]) for r in runs[0]["eval"].values() if "n" in r),
                "seeds": " ".join(str(r["run"]["config"]["seed"]) for r in runs),
                "hardware": runs[0]["env"]["device"],
            }
        )
        accuracy.setdefault(task, []).append(row)
        if train:
            mem = train["memory"]
            overhead.append(
                {
                    "task": task,
                    "method": method,
                    "preset": preset,
                    "model": model,
                    "trainable_params": train["trainable_params"],
                    "param_%": round(train["percent_trainable"], 4),
                    "params_updated_per_step": round(
                        statistics.mean(r["train"]["params_updated_per_step"]["mean"] for r in runs)
                    ),
                    "train_s": round(statistics.mean(r["train"]["train_s"] for r in runs), 1),
                    "tokens_per_s": round(statistics.mean(r["train"]["tokens_per_s"] for r in runs), 1),
                    "flops_per_step": train["flops_per_step"]["total"],
                    "adapter_flops_per_step": train["flops_per_step"]["adapter"],
                    "relative_flops": round(train["flops_per_step"]["relative_to_lora"], 4),
                    "peak_mem_gb": round(mem.get("peak_allocated_gb", mem.get("peak_rss_gb", 0.0)), 3),
                    "adapter_mb": round(train["adapter_file_bytes"] / 1e6, 3),
                    "Avg": row["Avg"],
                    "seeds": row["seeds"],
                    "hardware": row["hardware"],
                }
            )
    out = {task: _sorted(pd.DataFrame(rows)) for task, rows in accuracy.items()}
    out["overhead"] = pd.DataFrame(overhead)
    return out


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    key = df["Avg"].map(lambda s: float(str(s).split(" ")[0]) if s else -1.0)
    return df.assign(_k=key).sort_values(["preset", "protocol", "_k"], ascending=[True, True, False]).drop(columns="_k")


def write_leaderboards(runs_dir: Path, out_dir: Path) -> list[Path]:
    records = load_records(runs_dir)
    if not records:
        raise ValueError(f"no successful run records under {str(runs_dir)!r}; nothing to tabulate")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    md = ["# Leaderboard", "", "Regenerated by `harness leaderboard` from the run records; do not edit by hand.", ""]
    for name, df in tables(records).items():
        path = out_dir / f"{name}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        written.append(path)
        md += [f"## {name}", "", df.to_markdown(index=False) if not df.empty else "(no rows)", ""]
        if name != "overhead" and not df.empty:
            written.append(_plot(df, name, out_dir / f"{name}.png"))
    md.append(_provenance(records))
    write_text(out_dir / "leaderboard.md", "\n".join(md) + "\n")
    return [*written, out_dir / "leaderboard.md"]


def _provenance(records: list[dict[str, Any]]) -> str:
    devices = sorted({r["env"]["device"] for r in records})
    versions = sorted({f"torch {r['env']['torch']}, transformers {r['env']['transformers']}" for r in records})
    return f"Runs: {len(records)}. Hardware: {'; '.join(devices)}. Software: {'; '.join(versions)}."


def _plot(df: pd.DataFrame, task: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for _, row in df.iterrows():
        if not row["Avg"]:
            continue
        x, y = float(row["Param %"]), float(str(row["Avg"]).split(" ")[0])
        ax.scatter(x, y)
        ax.annotate(
            f"{row['method']} ({row['preset']}, {row['protocol']})",
            (x, y),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("trainable parameters (% of base)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(f"{task}: accuracy vs parameters", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
