"""Check the ``cloze`` protocol against a published zero-shot measurement of the embedded model.

A third-party lm-evaluation-harness run of SmolLM2-135M-Instruct (bf16) reports, zero-shot: ARC-Easy
acc 54.1, ARC-Challenge acc_norm 27.7, PIQA acc_norm 66.9, HellaSwag acc_norm 43.0
(``shared/spec/suites.md``). This scores the embedded model (the Q4_1 GGUF, dequantised to fp32)
through our ``cloze`` on every example of those benchmarks' test files in ``--data-dir`` (each row's n says how
many: the full test sets in ../shared/data) and writes the comparison, with 95% bootstrap intervals, to
``results/published_check.json`` with the batch size and the harness's commit (a data folder holding none of the
four is refused before the model loads):

    python scripts/published_check.py --data-dir ../shared/data/commonsense [--out results/published_check.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

PUBLISHED = {  # benchmark -> (metric, value)
    "ARC-Easy": ("acc", 54.1),
    "ARC-Challenge": ("acc_norm", 27.7),
    "piqa": ("acc_norm", 66.9),
    "hellaswag": ("acc_norm", 43.0),
}


def partial_problem(files: dict[str, str | None], out: str, default: str) -> str | None:
    """Why a run on data whose test files are ``files`` (benchmark -> sha256, None where the data lacks it) must not
    write ``out``: it is the committed file (``default``, however the path is spelled) and that file scored one of
    them on another file (a part of it, another copy: the check would be replaced by one of other test sets) or
    one the data lacks (one it holds as absent, such as hellaswag where the data has none, is no loss); ``None``:
    it may."""
    committed = Path(default)
    if not committed.is_absolute():  # the repo's own file wherever the script is run from (a re-review)
        committed = Path(__file__).resolve().parents[1] / committed
    if not committed.is_file() or Path(out).resolve() != committed.resolve():
        return None
    import json

    try:
        rows = json.loads(committed.read_text()).get("results", [])
        scored = {r["benchmark"]: r.get("file_sha256") for r in rows if r.get("status") != "absent"}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # unreadable: nothing a rewrite loses
        return None
    if lost := [b for b in scored if b in files and files[b] is None]:
        return f"lacks {', '.join(lost)}, which {out} scored; pass --out elsewhere to check a part"
    if other := [b for b, sha in scored.items() if files.get(b) and sha and files[b] != sha]:
        return (
            f"has other test files for {', '.join(other)} than {out} scored (another sha256: a part or another copy); "
            "pass --out elsewhere to check them"
        )
    return None


def main() -> None:
    from harness import __version__
    from harness.accounting import environment
    from harness.atomic import check_writable, write_json
    from harness.records import CODE_PATHS, git_state
    from harness.runner import build_specs, load_model
    from harness.stats import estimate
    from harness.task import TaskOptions
    from tasks.commonsense import CommonsenseTask, cloze, data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="results/published_check.json")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1 (got {args.batch_size})")
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; pass the JSON file's path (e.g. {Path(args.out) / 'check.json'})")
    try:  # before the scoring (about 18 minutes): its folder is made and written only after it
        check_writable(Path(args.out).parent, "--out's folder", "--out")
    except ValueError:  # check_writable's advice asks for a folder: --out is a file's path
        parser.error(
            f"--out {args.out}: {Path(args.out).parent} is not a folder you can write (or make); pass --out as the "
            "path of a JSON file in one"
        )

    [spec] = build_specs("commonsense", ["base"], [0], "embedded")
    try:
        task = CommonsenseTask(TaskOptions(data_dir=args.data_dir, template="cloze"))
    except ValueError as exc:  # harness run's advice to switch protocols: this check has the cloze protocol only
        parser.error(str(exc).replace("; use --protocol choice", "; this check scores the cloze protocol only"))
    files = {b: (t.sha256 if (t := task.test_records(b)) is not None else None) for b in PUBLISHED}
    if not any(files.values()):  # else the model loaded and a file of "absent" rows was written, exit 0
        parser.error(
            f"{args.data_dir} holds none of {', '.join(f'{b}/test.json' for b in PUBLISHED)}: nothing to compare "
            "with the published numbers; pass --data-dir pointing at the folder of those benchmark folders"
        )
    if problem := partial_problem(files, args.out, parser.get_default("out")):
        parser.error(f"{args.data_dir} {problem}")
    loaded = load_model(task, spec, torch.device("cpu"))
    model, tokenizer, label = loaded.model.eval(), loaded.processor, loaded.label
    rows = []
    for benchmark, (metric, published) in PUBLISHED.items():
        test = task.test_records(benchmark)
        if test is None:
            rows.append({"benchmark": benchmark, "metric": metric, "published": published, "status": "absent"})
            print(f"{benchmark}: absent")
            continue
        began = time.perf_counter()
        items = [cloze.parse(r) for r in test.records]
        acc, norm, _ = cloze.cloze_predictions(model, tokenizer, items, args.batch_size, progress=benchmark)
        preds = acc if metric == "acc" else norm
        ours = estimate([100.0 * np.array([p == it.answer for p, it in zip(preds, items, strict=True)])])
        rows.append(
            {
                "benchmark": benchmark,
                "metric": metric,
                "n": len(items),
                "ours": round(ours.value, 2),
                "ci95": [round(ours.lo, 2), round(ours.hi, 2)],
                "published": published,
                "difference": round(ours.value - published, 2),
                "file_sha256": test.sha256,
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        print(
            f"{benchmark} {metric}: ours {ours.value:.1f} [{ours.lo:.1f}, {ours.hi:.1f}] (n={len(items)}) "
            f"vs published {published} -> {ours.value - published:+.1f}"
        )
    out = {
        "model": label,
        "protocol": "cloze (every example of the data's test files, zero-shot)",  # a part is no full test set
        "published_source": "third-party lm-evaluation-harness run, bf16 (shared/spec/suites.md)",
        "data": data.resolve_data_dir(args.data_dir).name,
        "batch_size": args.batch_size,
        # the code that scored, as a record keeps it: version, commit and dirty flag, the flag of harness/, tasks/,
        # methods/, pyproject.toml (records.CODE_PATHS) and this script's scripts/, not of results/, which this writes
        "harness_version": __version__,
        **git_state(paths=(*CODE_PATHS, "scripts")),
        "results": rows,
        "env": environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
