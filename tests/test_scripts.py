"""The timing and checking scripts (scripts/): a bad argument is one line naming the script's own flag, found
before the work it would otherwise stop (a model loaded, every test set scored)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, *argv: str) -> subprocess.CompletedProcess:
    """``script`` as a command: a new interpreter (``test_ab_flag_names_its_rounds_flag``)."""
    return subprocess.run([sys.executable, str(SCRIPTS / script), *argv], capture_output=True, text=True, timeout=120)


@pytest.fixture
def run_here(capfd, monkeypatch):
    """``script`` run as ``__main__`` in this process (no new interpreter importing torch, ~2 s each), reported as
    ``_run`` reports it: exit status, stdout and stderr read at the file descriptors."""

    def run(script: str, *argv: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", [str(SCRIPTS / script), *argv])
        capfd.readouterr()
        try:
            runpy.run_path(str(SCRIPTS / script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([script, *argv], code, out, err)

    return run


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """argparse's refusal: exit 2, the usage, then one ``error:`` line; no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert "error: " in lines[-1] and not any("error: " in line for line in lines[:-1])
    return lines[-1]


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        # found only by loading: --layers of a model that is not built from its config
        ("ab_flag.py", ["--flag", "STACK_RAW", "--layers", "2"], "--layers builds a reduced shape and needs"),
        ("profile_step.py", ["--layers", "2"], "--layers builds a reduced shape and needs --random-weights"),
        # a path that is not there (transformers' OSError; a ValueError where the harness checks it first)
        ("profile_step.py", ["--model", "/nonexistent/x"], "'/nonexistent/x'"),
        ("ab_flag.py", ["--flag", "FUSE_BASE", "--model", "/nonexistent/x"], "'/nonexistent/x'"),
    ],
)
def test_a_model_the_bench_scripts_cannot_load_is_one_line(script, argv, message, run_here):
    """From a review: ``load_contenders`` ran outside the scripts' ``parser.error``, so these were a ValueError or
    OSError traceback (exit 1). Both fail before any weights load (no GGUF conversion, no download)."""
    assert message in _one_line_error(run_here(script, *argv))


@pytest.mark.parametrize("script", ["profile_step.py", "ab_flag.py"])
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seq", "-5"], "--seq must be >= 2 (got -5)"),
        (["--seq", "1"], "--seq must be >= 2 (got 1)"),
        (["--batch", "0"], "--batch must be >= 1 (got 0)"),
    ],
)
def test_the_bench_scripts_name_their_own_flags(script, argv, message, run_here):
    """From a review: ``--seq -5`` said "seq_len must be >= 2 and warmup >= 0 (got -5, 1)" (BenchConfig's field
    names, and a --warmup these scripts do not have)."""
    flags = ["--flag", "STACK_RAW"] if script == "ab_flag.py" else []
    line = _one_line_error(run_here(script, *flags, *argv))
    assert message in line and "seq_len" not in line and "batch_size" not in line and "warmup" not in line


def test_ab_flag_names_its_rounds_flag():
    assert "--rounds must be >= 1 (got 0)" in _one_line_error(
        _run("ab_flag.py", "--flag", "STACK_RAW", "--rounds", "0")
    )


def test_the_published_check_refuses_an_out_it_cannot_write_before_scoring(tmp_path, run_here):
    """From a review: an --out under a file was found by ``mkdir`` after the ~18 minutes of scoring, as a
    traceback. A nonexistent --data-dir here: the --out check comes first (without it, the data-dir error)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    nowhere = str(tmp_path / "no-data")
    line = _one_line_error(run_here("published_check.py", "--data-dir", nowhere, "--out", str(blocker / "check.json")))
    assert f"--out {blocker / 'check.json'}" in line and "not a folder you can write" in line
    # a folder still to be made is no reason to refuse, and the check makes nothing
    new = tmp_path / "new" / "deeper" / "check.json"
    line = _one_line_error(run_here("published_check.py", "--data-dir", nowhere, "--out", str(new)))
    assert "--out" not in line and "no-data" in line
    assert not (tmp_path / "new").exists()


def test_the_published_check_refuses_data_without_its_four_benchmarks_before_the_model_loads(
    tmp_path, data_dir, run_here, monkeypatch
):
    """From a review: a data folder holding none of ARC-Easy, ARC-Challenge, piqa, hellaswag still loaded the model
    and wrote a file of four "absent" rows, exit 0."""
    import harness.runner as runner

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_model", no_load)
    only = tmp_path / "data" / "openbookqa"
    only.mkdir(parents=True)
    (only / "test.json").write_text((data_dir / "openbookqa" / "test.json").read_text())
    out = tmp_path / "check.json"
    line = _one_line_error(run_here("published_check.py", "--data-dir", str(only.parent), "--out", str(out)))
    assert "holds none of ARC-Easy/test.json, ARC-Challenge/test.json, piqa/test.json, hellaswag/test.json" in line
    assert not out.exists()


@pytest.fixture
def malloc_kept(monkeypatch):
    """The malloc setting ``harness bench`` times under, as made (``harness.memory``), without changing this
    process's allocator."""
    from harness import memory

    monkeypatch.setattr(memory, "keep_freed_memory", lambda: None)
    monkeypatch.setattr(memory, "_applied", {"allocator": "glibc", "mmap_threshold": 1, "trim_threshold": 1})


TINY = ["--random-weights", "--batch", "1", "--seq", "4"]  # with --model: the tiny_model fixture's config
CHEAP = {  # each script's cheapest run: one round, one profiled step
    "ab_flag.py": ["--flag", "STACK_RAW", "--rounds", "1"],
    "profile_step.py": ["--no-peft", "--steps", "1", "--top", "1"],
}


@pytest.mark.parametrize("script", ["ab_flag.py", "profile_step.py"])
def test_the_timing_scripts_head_their_numbers_with_the_machine(script, tiny_model, malloc_kept, run_here):
    """From a review: their numbers named no CPU or GPU, threads, torch, malloc setting or dtype, which ``harness
    bench``'s table heads its own with (the project labels every number with model, data, steps and hardware)."""
    from harness.accounting import environment

    done = run_here(script, "--model", str(tiny_model), *TINY, "--methods", "lora", *CHEAP[script])
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    env = environment()
    machine = f"float32, on {env['device']} ({env['torch_threads']} threads, torch {env['torch']}"
    assert f"tiny (random weights), batch 1 x 4, {machine}; malloc keeps freed memory)" in first


@pytest.mark.parametrize("script", ["ab_flag.py", "profile_step.py"])
def test_the_timing_scripts_time_a_plugins_method(script, tiny_model, tmp_path, plugin_sandbox, run_here):
    """From a review: their unknown-method error advised ``harness --plugin FILE``, a flag they had not, so a
    plugin's method could not be timed with them. Their own ``--plugin`` loads it before the names are checked."""
    from tests.test_cli_and_plugins import PLUGIN

    plugin = tmp_path / "half_lora.py"
    plugin.write_text(PLUGIN.format(name="half_lora"))
    argv = ["--model", str(tiny_model), *TINY, "--methods", "half_lora", *CHEAP[script]]
    done = run_here(script, "--plugin", str(plugin), *argv)
    assert done.returncode == 0, done.stderr
    assert ("\nhalf_lora " if script == "ab_flag.py" else "\n### half_lora: wall ") in done.stdout
    line = _one_line_error(run_here(script, "--model", "no/such-model", "--methods", "halv_lora", *CHEAP[script]))
    assert "unknown method 'halv_lora' (did you mean 'half_lora'?)" in line  # loaded once, known after
    assert line.endswith("(a plugin's method: --plugin FILE, or harness.load_plugin(FILE) in Python)")
    missing = str(tmp_path / "nowhere.py")
    line = _one_line_error(run_here(script, "--plugin", missing, "--model", "no/such-model", *CHEAP[script]))
    assert f"plugin file {missing!r} not found" in line


def test_scripts_bench_py_is_harness_bench(tiny_model, tmp_path, malloc_kept, run_here):
    """``python scripts/bench.py ARGS`` (kept for old command lines) runs ``harness bench ARGS``: at a tiny shape."""
    import json

    out = tmp_path / "out"
    argv = ["--model", str(tiny_model), *TINY, "--methods", "lora", "--rounds", "1", "--warmup", "0"]
    done = run_here("bench.py", *argv, "--protocols", "none", "--no-peft", "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "bench.json").read_text())
    assert [r["contender"] for r in report["rows"]] == ["floor", "lora"]
    assert report["config"]["batch_size"] == 1 and report["config"]["seq_len"] == 4
    assert "| lora |" in done.stdout and "(1 threads, torch " in done.stdout


def test_the_published_check_writes_its_scores_with_the_commit_and_batch_size(
    tmp_path, data_dir, run_here, monkeypatch
):
    """The scoring and writing, with the model load and its predictions stubbed (the real ones take ~18 minutes):
    each row's numbers are the stubbed predictions' (ARC-Easy's acc: every one right; piqa's acc_norm: half), the
    benchmarks the data lacks are absent, and the file names the code (commit) and --batch-size it scored with (a
    review: it recorded neither)."""
    import hashlib
    import json
    from types import SimpleNamespace

    import torch

    import harness
    import harness.runner as runner
    from harness.records import CODE_PATHS, git_state
    from tasks.commonsense import cloze

    folder = tmp_path / "data"
    for benchmark in ("ARC-Easy", "piqa"):  # the first 4 examples of each
        (folder / benchmark).mkdir(parents=True)
        records = json.loads((data_dir / benchmark / "test.json").read_text())[:4]
        (folder / benchmark / "test.json").write_text(json.dumps(records))
    batches = []

    def predictions(model, tokenizer, items, batch_size, progress=None):
        batches.append(batch_size)
        right = [it.answer for it in items]
        half = [
            a if i % 2 == 0 else (a + 1) % len(it.continuations)
            for i, (a, it) in enumerate(zip(right, items, strict=True))
        ]
        return right, half, [[0.0] * len(it.continuations) for it in items]

    loaded = SimpleNamespace(model=torch.nn.Linear(1, 1), processor=None, label="stub model")
    monkeypatch.setattr(runner, "load_model", lambda *args, **kwargs: loaded)
    monkeypatch.setattr(cloze, "cloze_predictions", predictions)
    out = tmp_path / "check.json"
    done = run_here("published_check.py", "--data-dir", str(folder), "--out", str(out), "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert batches == [3, 3] and written["batch_size"] == 3
    assert written["harness_version"] == harness.__version__
    code = git_state(paths=(*CODE_PATHS, "scripts"))
    assert written["git_commit"] == code["git_commit"] and written["git_dirty"] == code["git_dirty"]
    assert written["model"] == "stub model" and written["data"] == "data" and written["env"]["torch"]
    rows = {r["benchmark"]: r for r in written["results"]}
    assert rows["ARC-Challenge"]["status"] == rows["hellaswag"]["status"] == "absent"
    easy, piqa = rows["ARC-Easy"], rows["piqa"]
    assert (easy["metric"], easy["n"], easy["ours"], easy["ci95"][1]) == ("acc", 4, 100.0, 100.0)
    assert easy["difference"] == round(100.0 - 54.1, 2)
    assert (piqa["metric"], piqa["n"], piqa["ours"], piqa["difference"]) == ("acc_norm", 4, 50.0, round(50 - 66.9, 2))
    assert piqa["ci95"][0] <= 50.0 <= piqa["ci95"][1] and piqa["ci95"][0] < piqa["ci95"][1]
    for benchmark, row in (("ARC-Easy", easy), ("piqa", piqa)):
        assert row["file_sha256"] == hashlib.sha256((folder / benchmark / "test.json").read_bytes()).hexdigest()
    assert f"wrote {out}" in done.stdout
