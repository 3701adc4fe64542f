"""Finished runs' FLOPs counted again from their records (``harness.recount``, ``scripts/recount_flops.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.records import RECORD, read_record, write_record
from harness.recount import recount_flops
from harness.runner import build_specs, run_all

ROOT = Path(__file__).resolve().parent.parent


def _runs(tiny_model, data_dir, tmp_path) -> Path:
    runs = tmp_path / "runs"
    specs = build_specs(
        "commonsense",
        ["lora", "hydralora"],
        [0],
        "smoke",
        model=str(tiny_model),
        random_weights=True,
        train_overrides={"steps": 1},
        task_overrides={"eval_limit": 2},
    )
    records = run_all(specs, runs, str(data_dir), progress=False)
    assert [r["run"]["status"] for r in records] == ["success", "success"]
    return runs


def test_recount_rewrites_only_what_changed_and_keeps_what_the_run_wrote(tiny_model, data_dir, tmp_path):
    runs = _runs(tiny_model, data_dir, tmp_path)
    paths = sorted(runs.glob(f"*/{RECORD}"))
    as_run = [read_record(p)["train"]["flops_per_step"] for p in paths]
    lines: list[str] = []
    first = recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)
    assert [c["new_total"] for c in first] == [f["total"] for f in as_run]  # the same code counts the same
    assert [c["rewritten"] for c in first] == [False, False] and first[0]["model"] == "random weights"
    assert [read_record(p)["train"]["flops_per_step"] for p in paths] == as_run  # unchanged: not rewritten
    assert all(line.endswith(": unchanged") for line in lines), lines

    record = read_record(paths[1])  # a count written by an earlier, wrong counter
    wrong = dict(as_run[1], adapter=as_run[1]["adapter"] + 1000, counted_by="an earlier counter")
    record["train"]["flops_per_step"] = wrong
    write_record(paths[1].parent, record)
    second = recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)
    flops = read_record(paths[1])["train"]["flops_per_step"]
    assert flops["adapter"] == as_run[1]["adapter"] and second[1]["old_adapter"] == wrong["adapter"]
    assert flops["recounted"]["as_run"]["adapter"] == wrong["adapter"]
    assert flops["recounted"]["as_run"]["counted_by"] == "an earlier counter" and flops["recounted"]["at"]
    assert read_record(paths[0])["train"]["flops_per_step"] == as_run[0]
    assert not list(runs.glob("**/*.tmp*"))  # written by rename: no half-written file left

    record = read_record(paths[0])  # a config edited by hand no longer gives its run id: left as it is
    record["run"]["config"]["train"]["lr"] = 0.5
    write_record(paths[0].parent, record)
    before = paths[0].read_text()
    third = recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)
    assert "cannot be rebuilt" in third[0]["left"] and paths[0].read_text() == before


def test_records_that_cannot_be_counted_are_left_and_the_others_go_on(tiny_model, data_dir, tmp_path):
    import shutil

    from harness.guard import RunLock

    runs = _runs(tiny_model, data_dir, tmp_path)
    paths = sorted(runs.glob(f"*/{RECORD}"))
    before = [p.read_text() for p in paths]
    held = RunLock(paths[0].parent)  # a run in progress (e.g. a --force re-run) holds its folder
    assert held.acquire(blocking=False)
    try:
        out = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    finally:
        held.release()
    assert out[0]["left"] == "a running process holds it" and out[1]["rewritten"] is False
    shutil.rmtree(tiny_model)  # the model's config is gone: neither record can be counted, none is touched
    out = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    assert all("its model does not build here" in c["left"] for c in out), out
    paths[1].write_text("{not json")
    out = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    assert "its model does not build here" in out[0]["left"] and out[1]["left"]
    assert paths[0].read_text() == before[0]


def test_the_script_refuses_a_malformed_data_dir(tmp_path):
    (tmp_path / "runs").mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "recount_flops.py"), str(tmp_path / "runs"), "--data-dir", "nowhere"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "TASK=PATH" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
