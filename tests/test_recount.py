"""Finished runs' FLOPs counted again from their records (``harness.recount``, ``scripts/recount_flops.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import recount
from harness.records import RECORD, RERUN, read_record, write_record
from harness.recount import recount_flops, summary
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

    pending = read_record(paths[1])  # a forced re-run's record, killed before its swap finished: counted wrong
    pending["train"]["flops_per_step"] = dict(wrong, counted_by="the re-run's counter")
    (paths[1].parent / RERUN).mkdir()
    write_record(paths[1].parent / RERUN, pending)
    recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)
    flops = read_record(paths[1])["train"]["flops_per_step"]  # the swap finished first, then counted
    assert (
        flops["recounted"]["as_run"]["counted_by"] == "the re-run's counter" and not (paths[1].parent / RERUN).exists()
    )
    assert flops["adapter"] == as_run[1]["adapter"]

    # from a review: the case above changes the count and counted_by together, so a decision that looked only at
    # counted_by passed; a count changed under the same counter (a record edited, a half-applied fix) is rewritten
    record = read_record(paths[0])
    edited = dict(as_run[0], adapter=as_run[0]["adapter"] + 1000)
    assert edited["counted_by"] == as_run[0]["counted_by"]  # only the count differs
    record["train"]["flops_per_step"] = edited
    write_record(paths[0].parent, record)
    changes = recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)
    assert changes[0]["rewritten"] and changes[0]["old_adapter"] == edited["adapter"]
    flops = read_record(paths[0])["train"]["flops_per_step"]
    assert flops["adapter"] == as_run[0]["adapter"] and flops["recounted"]["as_run"]["adapter"] == edited["adapter"]
    assert not changes[1]["rewritten"]  # counted right last time: left

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
    held.path.write_text("nobody")
    assert held.acquire(blocking=False)
    try:
        who = held.holder()
        out = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    finally:
        held.release()
    assert who.startswith(f"process {os.getpid()} on ")
    assert out[0]["left"] == f"a running process holds it: {who}" and out[1]["rewritten"] is False
    shutil.rmtree(tiny_model)  # the model's config is gone: neither record can be counted, none is touched
    out = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    assert all("its model does not build here" in c["left"] for c in out), out
    paths[1].write_text("{not json")
    out = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    assert "its model does not build here" in out[0]["left"] and out[1]["left"]
    assert paths[0].read_text() == before[0]


def test_harness_recount_flops_counts_the_runs_as_the_script_did(tiny_model, data_dir, tmp_path, capfd):
    """From a review: after a pip install (a wheel), the leaderboard's advice ran ``scripts/recount_flops.py``, which
    the wheel does not hold. The recount is the ``harness recount-flops`` subcommand now, the script a wrapper."""
    from tests.conftest import harness_here

    runs = _runs(tiny_model, data_dir, tmp_path)
    done = harness_here(capfd, "recount-flops", str(runs), "--data-dir", f"commonsense={data_dir}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": unchanged\n") == 2 and "0 rewritten, 2 unchanged, 0 left" in done.stdout, done.stdout
    done = harness_here(capfd, "recount-flops", "--help")
    assert done.returncode == 0 and "usage: harness recount-flops [-h]" in done.stdout
    assert "--data-dir TASK=PATH" in done.stdout and "--trust-remote-code" in done.stdout and "--plugin" in done.stdout
    done = harness_here(capfd, "recount-flops", str(runs), "--data-dir", f"comonsense={data_dir}")
    assert done.returncode == 2 and "unknown task 'comonsense' in --data-dir (did you mean 'commonsense'?)" in (
        done.stderr
    )
    done = harness_here(capfd, "recount-flops", "")  # a re-review: it was told about a --runs-dir flag
    assert done.returncode == 2 and "harness: error: RUNS_DIR is empty; give the folder of runs" in done.stderr


def test_recount_flops_names_a_runs_only_run_folder_the_machine_cannot_enter(tmp_path, monkeypatch, capfd):
    """From a review: the first check listed runs by ``glob("*/record.json")``, which leaves out a folder it cannot
    enter without a word: a runs dir whose one run folder was chmod 000 was refused as "not a folder of runs"."""
    from tests.conftest import harness_here
    from tests.test_records_leaderboard import cannot_enter

    closed = tmp_path / "runs" / "s1"
    closed.mkdir(parents=True)
    (closed / RECORD).write_text("{}")
    cannot_enter(monkeypatch, closed)
    done = harness_here(capfd, "recount-flops", str(tmp_path / "runs"))
    assert done.returncode == 1, done.stderr  # a record left that may have FLOPs to count
    assert "s1: left as it is (PermissionError: " in done.stdout and "1 left (1 of them" in done.stdout, done.stdout
    assert "not a folder of runs" not in done.stderr


def test_each_records_line_is_flushed_as_it_is_counted(tmp_path, monkeypatch):
    """From a review: the lines went through print, block-buffered in a pipe (``| tee``): a results folder's
    minutes of counting showed nothing until the end. Each line is flushed before the next record is read."""
    events: list[str] = []

    class Stream:
        def write(self, text: str) -> int:
            events.append(f"write {text!r}")
            return len(text)

        def flush(self) -> None:
            events.append("flush")

    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / RECORD).write_text("{}")
    read = recount.read_record

    def reading(path: Path) -> dict:
        events.append(f"read {path.parent.name}")
        return read(path)

    monkeypatch.setattr(recount, "read_record", reading)
    monkeypatch.setattr(sys, "stdout", Stream())
    changes = recount_flops(tmp_path / "runs")
    assert [c["id"] for c in changes] == ["a", "b"] and all("left" in c for c in changes)
    second = events.index("read b")
    assert "flush" in events[:second] and events[:second].index("flush") > events.index("read a"), events
    summary(changes)
    assert events[-1] == "flush", events


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
    (tmp_path / "runs" / "a").mkdir()
    (tmp_path / "runs" / "a" / RECORD).write_text("{}")
    missing = f"commonsense={tmp_path / 'nowhere'}"  # was exit 0, each record 'left as it is'
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "recount_flops.py"), str(tmp_path / "runs"), "--data-dir", missing],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "nowhere' is not a folder; give the folder that holds commonsense" in done.stderr
    twice = ["--data-dir", f"commonsense={tmp_path}", "--data-dir", f"commonsense={tmp_path / 'runs'}"]
    done = subprocess.run(  # from a review: the last one won, silently
        [sys.executable, str(ROOT / "scripts" / "recount_flops.py"), str(tmp_path / "runs"), *twice],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--data-dir gives commonsense twice" in done.stderr, done.stderr


def test_the_reducer_forwards_are_counted_in_the_record_and_rebuilt_for_an_old_one(tiny_model, data_dir, tmp_path):
    """A run's record counts its Reducer's scoring forwards (``train.hook_val_flops``); for a record written
    before they were kept, a recount rebuilds them from the score trajectory and the run's validation split,
    and gets what the run itself kept."""
    runs = tmp_path / "runs"
    common = dict(
        model=str(tiny_model),
        random_weights=True,
        train_overrides={"steps": 3, "val_batch_size": 3},
        task_overrides={"eval_limit": 2},
    )
    specs = build_specs(
        "commonsense", ["effilora"], [0], "smoke", method_options={"reducer": {"k": 1, "interval": 1}}, **common
    )
    specs += build_specs("commonsense", ["lora"], [0], "smoke", **common)
    records = run_all(specs, runs, str(data_dir), progress=False)
    effi, lora = records
    hooks = effi["train"]["hook_val_flops"]
    trajectory = effi["train"]["adapter"]["reducer"]["score_trajectory"]
    assert hooks["forwards"] == sum(len(t["losses"]) for t in trajectory) == 6  # steps 1 and 2, 3 rollouts each
    assert hooks["total"] == sum(s["count"] * s["flops"] for s in hooks["shapes"]) > 0
    assert hooks["per_step"] == hooks["total"] / 3
    assert len(hooks["shapes"]) == 2  # rounds at steps 1 and 2 score on validation batches 1 and 0 (3 and 1 rows)
    assert lora["train"]["hook_val_flops"]["total"] == 0 and lora["train"]["hook_val_flops"]["forwards"] == 0

    path = runs / effi["run"]["id"] / RECORD
    lines: list[str] = []
    assert recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)[0]["rewritten"] is False
    old = read_record(path)
    del old["train"]["hook_val_flops"]  # as written before they were kept
    write_record(path.parent, old)
    change = recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)[0]
    assert change["rewritten"] and change["hooks"]["old_total"] is None
    rebuilt = read_record(path)["train"]["hook_val_flops"]
    assert {k: v for k, v in rebuilt.items() if k != "recounted"} == hooks and rebuilt["recounted"]["as_run"] is None
    assert "hook validation FLOPs none -> " in lines[-2]

    resumed = read_record(path)  # resumed from a checkpoint written before the forwards were kept: rebuilt too
    resumed["train"]["hook_val_flops"] = {"status": "not counted", "reason": "resumed from an old checkpoint"}
    write_record(path.parent, resumed)
    change = recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)[0]
    rebuilt = read_record(path)["train"]["hook_val_flops"]
    assert {k: v for k, v in rebuilt.items() if k != "recounted"} == hooks
    assert rebuilt["recounted"]["as_run"]["status"] == "not counted" and change["hooks"]["old_total"] is None

    again = read_record(path)  # counted again by a later counter: what the run had stays what it was
    again["train"]["hook_val_flops"] = dict(hooks, counted_by="an earlier counter", recounted={"as_run": None})
    write_record(path.parent, again)
    assert recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)[0]["hooks"]["rewritten"]
    assert read_record(path)["train"]["hook_val_flops"]["recounted"]["as_run"] is None

    from harness.runner import hook_flops_record  # a replica that could not run them: the forwards kept uncounted

    failed = hook_flops_record(None, None, "effilora", None, hooks["shapes"], None, False, 3)  # no task: it fails
    assert failed["status"] == "not counted" and failed["shapes"] == hooks["shapes"]
    kept = read_record(path)
    kept["train"]["hook_val_flops"] = {
        **failed,
        "shapes": [{k: f[k] for k in ("shape", "skipped", "count")} for f in hooks["shapes"]],
    }
    write_record(path.parent, kept)
    assert recount_flops(runs, {"commonsense": str(data_dir)}, say=lines.append)[0]["hooks"]["rewritten"]
    counted = read_record(path)["train"]["hook_val_flops"]
    assert counted["total"] == hooks["total"] and counted["recounted"]["as_run"]["status"] == "not counted"

    old["run"]["config"]["method_options"]["reducer"]["suppression"] = 0.0  # layers fully off: which, not kept
    assert "suppression 0" in str(_left_for(old))


def _left_for(record):
    from harness.config import make_config
    from harness.recount import reducer_forwards
    from harness.registry import METHODS

    config = make_config(METHODS.get("effilora").config_cls, record["run"]["config"]["method_options"], "effilora")
    try:
        reducer_forwards(None, config, [], None, None)
    except ValueError as exc:
        return exc
    return None


def test_a_fast_path_record_without_its_path_is_counted_on_the_fast_path(tiny_model, data_dir, tmp_path):
    """From a review: a --fast-path record written before flops_per_step.path was kept was counted again on the
    reference path (moslora's counts differ there): the path is the run's own (its config says fast_path)."""
    specs = build_specs(
        "commonsense", ["moslora"], [0], "smoke", model=str(tiny_model), random_weights=True, fast_path=True,
        train_overrides={"steps": 1}, task_overrides={"eval_limit": 2},
    )  # fmt: skip
    [record] = run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    as_run = record["train"]["flops_per_step"]
    assert as_run["path"] == "fast"
    path = tmp_path / "runs" / record["run"]["id"] / RECORD
    older = read_record(path)
    del older["train"]["flops_per_step"]["path"]
    write_record(path.parent, older)
    [change] = recount_flops(tmp_path / "runs", {"commonsense": str(data_dir)}, say=lambda line: None)
    assert change["new_total"] == as_run["total"] and change["new_adapter"] == as_run["adapter"]


def test_the_recount_script_exits_1_when_a_countable_record_was_left(capsys):
    """From a review: it exited 0 whatever was left (a model that does not build here left every record as it was)."""
    fine = [
        {"id": "a", "rewritten": True},
        {"id": "b", "rewritten": False},
        {"id": "c", "left": "no FLOPs counted in it (x)"},
    ]
    assert summary(fine) == 0
    assert (
        "1 rewritten, 1 unchanged, 1 left (0 of them with FLOPs that could not be counted here)"
        in capsys.readouterr().out
    )
    assert summary([*fine, {"id": "d", "left": "OSError: the model does not build"}]) == 1
    assert "2 left (1 of them" in capsys.readouterr().out
    hooks = {"id": "e", "rewritten": False, "hooks": {"left": "the validation split differs"}}  # a review
    assert (
        summary([*fine, hooks]) == 1
        and "1 whose Reducer scoring forwards could not be counted" in capsys.readouterr().out
    )


def test_a_step_not_counted_when_it_ran_is_counted_from_its_shapes_and_one_without_them_fails(
    tiny_model, data_dir, tmp_path, monkeypatch, capsys
):
    """From a review: a step the replica could not count kept only why (no shapes): recount_flops said it had
    "no FLOPs counted in it" and the script exited 0. It keeps the first step's shapes now, counted here once the
    replica can run; one that keeps none is left, and the script fails."""
    import harness.runner_flops as runner_flops

    specs = build_specs(
        "commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True,
        train_overrides={"steps": 1}, task_overrides={"eval_limit": 2},
    )  # fmt: skip
    [counted] = run_all(specs, tmp_path / "counted", str(data_dir), progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("the meta replica cannot run this plugin")

    monkeypatch.setattr(runner_flops, "step_flops", broken)
    [record] = run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    monkeypatch.undo()
    as_run, expected = record["train"]["flops_per_step"], counted["train"]["flops_per_step"]
    assert as_run["status"] == "not counted" and "cannot run this plugin" in as_run["reason"]
    assert as_run["micro_batches"] == [{"shape": m["shape"]} for m in expected["micro_batches"]]
    lines: list[str] = []
    [change] = recount_flops(tmp_path / "runs", {"commonsense": str(data_dir)}, say=lines.append)
    assert change["rewritten"] and change["old_total"] is None and change["new_total"] == expected["total"]
    path = tmp_path / "runs" / record["run"]["id"] / RECORD
    flops = read_record(path)["train"]["flops_per_step"]
    assert {k: v for k, v in flops.items() if k != "recounted"} == expected
    assert flops["recounted"]["as_run"] == {"status": "not counted", "reason": as_run["reason"]}
    assert f"total none -> {expected['total']:,}" in lines[-1]

    older = read_record(path)  # written before an uncounted step kept its shapes
    older["train"]["flops_per_step"] = {"status": "not counted", "reason": "RuntimeError: no meta"}
    write_record(path.parent, older)
    [left] = recount_flops(tmp_path / "runs", {"commonsense": str(data_dir)}, say=lines.append)
    assert (
        left["left"]
        == "its FLOPs were not counted when it ran (RuntimeError: no meta) and it keeps no micro-batch shapes"
    )
    assert summary([left]) == 1 and "1 of them with FLOPs that could not be counted here" in capsys.readouterr().out


def test_a_sweep_counts_each_step_once_and_what_it_took_again_is_what_a_fresh_count_gives(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """A count made before in the process at the same settings is taken again (LoRA's reference step for every
    method and seed, a method's step for every seed): each (method, config, shapes) is counted once, a setting
    that changes the step (the rank) counts afresh, and every record holds what counting it afresh gives."""
    import harness.runner_flops as runner_flops

    counted: list[tuple[str, str, str, bool]] = []
    real = runner_flops.step_flops

    def step_flops(replica, method, config, shapes, recipe, fast_path=False, adapter_share=True):
        counted.append((method, repr(config), repr(shapes), adapter_share))
        return real(replica, method, config, shapes, recipe, fast_path, adapter_share)

    monkeypatch.setattr(runner_flops, "step_flops", step_flops)
    monkeypatch.setattr(runner_flops, "_FLOPS_COUNTED", {})
    runs = tmp_path / "runs"
    common = {"model": str(tiny_model), "random_weights": True, "train_overrides": {"steps": 1}}
    specs = build_specs("commonsense", ["lora", "moslora"], [0, 1], "smoke", **common, task_overrides={"eval_limit": 2})
    records = run_all(specs, runs, str(data_dir), progress=False)
    assert [r["run"]["status"] for r in records] == ["success"] * 4
    asked = 2 * 2 + 2 * 3  # each run's probe and step, and moslora's LoRA reference
    assert len(counted) == len(set(counted)) < asked, counted
    before = len(counted)
    [other] = run_all(
        build_specs(
            "commonsense", ["lora"], [0], "smoke", **common, method_options={"r": 4}, task_overrides={"eval_limit": 2}
        ),
        runs,
        str(data_dir),
        progress=False,
    )
    assert other["run"]["status"] == "success" and len(counted) == before + 2  # its probe and its step, anew
    assert other["train"]["flops_per_step"]["total"] != records[0]["train"]["flops_per_step"]["total"]
    monkeypatch.undo()  # the real counter, and no counts kept: recount_flops counts every record afresh
    again = recount_flops(runs, {"commonsense": str(data_dir)}, say=lambda line: None)
    assert len(again) == 5 and not any(c["rewritten"] for c in again), again


def test_a_record_whose_model_folder_holds_another_model_now_is_left(tiny_model, data_dir, tmp_path, monkeypatch):
    """From a review: the recount counted whatever model the run's --model folder holds now (a 2-layer config
    changed to 4 layers: totals rewritten, exit 0), where `harness run` refuses to take the run as done."""
    from transformers import LlamaConfig

    specs = build_specs(
        "commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True,
        train_overrides={"steps": 1}, task_overrides={"eval_limit": 2},
    )  # fmt: skip
    [record] = run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    path = tmp_path / "runs" / record["run"]["id"] / RECORD
    before = path.read_text()
    config = LlamaConfig.from_pretrained(tiny_model)
    config.num_hidden_layers = 4  # the folder the run id names holds another model now
    config.save_pretrained(tiny_model)
    [change] = recount_flops(tmp_path / "runs", {"commonsense": str(data_dir)}, say=lambda line: None)
    assert f"the model {str(tiny_model)!r} changed since the run finished" in change["left"], change
    assert "changed config.json" in change["left"] and path.read_text() == before
    assert "give a changed model another folder" in change["left"]
    # a hub id's files at a new commit: the advice is the hub cache's, not a folder's (from the fix's re-review)
    monkeypatch.setattr(recount, "_other_weights", lambda spec, record: "commit 01234567 -> 89abcdef: changed x")
    [change] = recount_flops(tmp_path / "runs", {"commonsense": str(data_dir)}, say=lambda line: None)
    assert "with the hub's cache at the commit it ran on" in change["left"] and "folder" not in change["left"]


def test_the_reducer_forwards_are_not_rebuilt_from_other_training_data(tiny_model, data_dir, tmp_path):
    """From a review: a record without hook_val_flops had its Reducer's scoring forwards rebuilt from the
    validation split of whatever data --data-dir gave (train.json reordered: other numbers written, unsaid); the
    data's training files are checked against the record's, as `harness run` checks them."""
    import json

    specs = build_specs(
        "commonsense", ["effilora"], [0], "smoke", method_options={"reducer": {"k": 1, "interval": 1}},
        model=str(tiny_model), random_weights=True, train_overrides={"steps": 3, "val_batch_size": 3},
        task_overrides={"eval_limit": 2},
    )  # fmt: skip
    [record] = run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    path = tmp_path / "runs" / record["run"]["id"] / RECORD
    old = read_record(path)
    del old["train"]["hook_val_flops"]  # as written before they were kept
    write_record(path.parent, old)
    other = tmp_path / "other"  # the same files, each benchmark's training examples in another order
    for benchmark in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        (other / benchmark.name).mkdir(parents=True)
        (other / benchmark.name / "test.json").symlink_to(benchmark / "test.json")
        if (benchmark / "train.json").is_file():
            rows = json.loads((benchmark / "train.json").read_text())
            (other / benchmark.name / "train.json").write_text(json.dumps(rows[::-1]))
    lines: list[str] = []
    [change] = recount_flops(tmp_path / "runs", {"commonsense": str(other)}, say=lines.append)
    assert "the data here is not what it trained on (the training file" in change["hooks"]["left"], change
    assert "--data-dir commonsense=PATH" in lines[-1]
    assert "hook_val_flops" not in read_record(path)["train"]  # left as it was (on the run's data: rebuilt, above)


def test_a_count_lacking_what_the_counter_writes_now_is_rewritten(tiny_model, data_dir, tmp_path):
    """From a review: a recount compared only the kept totals and the shapes, so a record without (or with
    other) ``reducer_layers`` or ``path`` was never given the ones the counter writes now (the committed
    effilora records lack ``reducer_layers``); a record that has them all is still left unchanged."""
    specs = build_specs(
        "commonsense", ["effilora"], [0], "smoke", method_options={"reducer": {"k": 1, "interval": 1}},
        model=str(tiny_model), random_weights=True, fast_path=True, train_overrides={"steps": 1},
        task_overrides={"eval_limit": 2},
    )  # fmt: skip
    [record] = run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    as_run = record["train"]["flops_per_step"]
    assert as_run["path"] == "fast" and as_run["reducer_layers"]
    path = tmp_path / "runs" / record["run"]["id"] / RECORD

    def recount():
        [change] = recount_flops(tmp_path / "runs", {"commonsense": str(data_dir)}, say=lambda line: None)
        return change, read_record(path)["train"]["flops_per_step"]

    change, flops = recount()
    assert not change["rewritten"] and flops == as_run  # everything equal: nothing changed
    for lacking, other in (("reducer_layers", {}), ("path", {}), ("", {"reducer_layers": [-1]})):
        older = read_record(path)  # without one (a record from before it was kept), or with another value
        older["train"]["flops_per_step"] = {k: v for k, v in as_run.items() if k != lacking} | other
        write_record(path.parent, older)
        change, flops = recount()
        assert change["rewritten"] and {k: v for k, v in flops.items() if k != "recounted"} == as_run, lacking
        assert flops["recounted"]["as_run"].get("reducer_layers") == older["train"]["flops_per_step"].get(
            "reducer_layers"
        )  # what the run wrote, kept
    change, flops = recount()
    assert not change["rewritten"]  # counted again: the same


def test_a_task_whose_data_cannot_be_read_is_said_so_not_a_model_that_does_not_build(tiny_model, data_dir, tmp_path):
    """From a review: a task whose data could not be read was reported as "its model does not build here:
    ValueError: no local data ..."; the data is named, and where to give it."""
    specs = build_specs(
        "commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True,
        train_overrides={"steps": 1}, task_overrides={"eval_limit": 2},
    )  # fmt: skip
    run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    [change] = recount_flops(tmp_path / "runs", {"commonsense": str(empty)}, say=lambda line: None)
    assert change["left"].startswith("RuntimeError: its task's data cannot be read here (ValueError: "), change
    assert change["left"].endswith("; give the data it ran on with --data-dir commonsense=PATH")


def test_a_second_recount_keeps_the_runs_own_count_under_as_run(tmp_path, monkeypatch):
    """From a mutation test (recount.py:187, as_run taken from the count it replaces): the module doc says the record keeps the
    run's own total/adapter/... under ``recounted.as_run``; counted again a second time, the mutant put the first
    recount's numbers there and the run's own were lost."""
    from types import SimpleNamespace

    import harness.recount as recount

    as_run = {"total": 100, "adapter": 10, "lora_total": 100, "relative_to_lora": 1.0, "counted_by": "v1"}
    shapes = [{"shape": [2, 8]}]
    old = {"total": 200, "adapter": 20, "lora_total": 200, "relative_to_lora": 1.0, "counted_by": "v2",
           "micro_batches": shapes, "recounted": {"at": "then", "model": "random weights", "as_run": as_run}}  # fmt: skip
    new = {"total": 300, "adapter": 30, "lora_total": 300, "relative_to_lora": 1.0, "counted_by": "v3",
           "micro_batches": shapes}  # fmt: skip
    record = {"run": {"id": "r", "status": "success"}, "train": {"flops_per_step": old, "steps": 2}}
    written = []
    monkeypatch.setattr(recount, "read_record", lambda path: record)
    monkeypatch.setattr(recount, "write_record", lambda folder, rec: written.append(rec))
    spec = SimpleNamespace(method="lora", method_options={}, model="m", task="t", train=None, extra={})
    monkeypatch.setattr(recount, "spec_from_record", lambda rec: spec)
    monkeypatch.setattr(recount, "_other_weights", lambda spec, rec: None)
    monkeypatch.setattr(recount, "flops_record", lambda *a: dict(new))
    monkeypatch.setattr(recount, "_recount_hooks", lambda *a: None)
    task = SimpleNamespace(recipe=lambda loaded, train: None)
    models = SimpleNamespace(get=lambda spec: (task, object(), "random weights"), data_dirs={})
    change = recount._recount_one(tmp_path / "r" / "record.json", models, {"commit": "c"})
    assert change["rewritten"] and written
    assert written[0]["train"]["flops_per_step"]["total"] == 300
    assert written[0]["train"]["flops_per_step"]["recounted"]["as_run"] == as_run  # the run's own, not v2's


def test_a_failed_runs_record_is_left_even_where_it_kept_a_count(tmp_path, monkeypatch):
    """From a mutation test (recount.py:141, the status check dropped): a failed (or cancelled) run's record that counted its first
    step was counted again and rewritten; the module counts successful training records only."""
    import harness.recount as recount

    old = {"total": 200, "adapter": 20, "counted_by": "v2", "micro_batches": [{"shape": [2, 8]}]}
    record = {"run": {"id": "r", "status": "failed"}, "train": {"flops_per_step": old}}
    monkeypatch.setattr(recount, "read_record", lambda path: record)
    monkeypatch.setattr(recount, "spec_from_record", lambda rec: pytest.fail("a failed run was counted"))
    change = recount._recount_one(tmp_path / "r" / "record.json", None, {})
    assert change == {"id": "r", "left": f"{recount.NOTHING_TO_COUNT} (no training, or not finished)"}
