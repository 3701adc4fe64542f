"""Several processes through torchrun (what `accelerate launch` also sets up), on the CPU with gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from harness.records import RECORD, read_record
from tests.test_robustness import run_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> list[str]:
    """``python -m harness …`` under torchrun with 2 processes."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    return [*launch, "--master_port", str(free_port()), "-m", "harness", *args[3:]]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_write_one_record_with_the_single_process_results(tiny_model, data_dir, tmp_path):
    common = ["--steps", "4", "--option", "dropout=0", "--micro-batch-size", "2", "--no-leaderboard"]
    one = run_args(tiny_model, data_dir, tmp_path / "one", "lora", *common, "--grad-accum", "2")
    two = run_args(tiny_model, data_dir, tmp_path / "two", "lora", *common, "--grad-accum", "1")  # same batch: 4
    single = subprocess.run(one, capture_output=True, text=True, timeout=600, env=env())
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(torchrun(two), capture_output=True, text=True, timeout=600, env=env())
    assert multi.returncode == 0, multi.stderr[-3000:]
    [a] = [read_record(p) for p in (tmp_path / "one").glob(f"*/{RECORD}")]
    records = [read_record(p) for p in (tmp_path / "two").glob(f"*/{RECORD}")]
    assert len(records) == 1  # one record, written by the main process
    [b] = records
    assert b["run"]["status"] == "success" and b["train"]["samples"] == a["train"]["samples"]
    for name, entry in a["eval"].items():
        assert entry.get("value") == b["eval"][name].get("value"), name  # the same accuracies
        assert entry.get("preds") == b["eval"][name].get("preds"), name
    for (_, x), (_, y) in zip(a["train"]["loss_curve"], b["train"]["loss_curve"], strict=True):
        assert abs(x - y) <= 1e-3 * max(1.0, abs(x))  # the same loss curve at the same effective batch
    assert multi.stdout.count("[1/1]") == 1  # one process reports
    assert b["run"]["config"]["processes"] == 2 and "processes" not in a["run"]["config"]  # in the run id too
    # the step's FLOPs cover both processes' micro-batches (other pairings of the same examples: other padding)
    assert len(b["train"]["flops_per_step"]["micro_batches"]) == len(a["train"]["flops_per_step"]["micro_batches"]) == 2


@pytest.mark.slow
def test_two_processes_killed_mid_run_resume(tiny_model, data_dir, tmp_path):
    runs = tmp_path / "runs"
    args = torchrun(run_args(tiny_model, data_dir, runs, "lora", "--steps", "200", "--no-leaderboard"))
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while not list(runs.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list(runs.glob("*/checkpoint.pt")), "no checkpoint appeared"
    finally:
        import psutil

        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()  # the launcher and both workers, at once, mid-run
        proc.wait()
    assert not list(runs.glob(f"*/{RECORD}"))
    finished = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env())
    assert finished.returncode == 0, finished.stderr[-3000:]
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "success", finished.stdout[-2000:]
    assert (record["train"]["resumed_from_step"] or 0) >= 2, finished.stdout[-2000:]
    assert record["train"]["steps"] == 200
