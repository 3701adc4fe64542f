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
