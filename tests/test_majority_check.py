"""scripts/majority_check.py: the test-label majority against the train split's majority label."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from harness.records import new_record

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "majority_check.py"


def _data(root: Path) -> Path:
    for bench, train in {
        "ARC-Easy": ["answer2"] * 3 + ["answer3"] * 2 + ["answer1"],
        "boolq": ["true", "false"],  # a tie: the lowest option, as for majority
    }.items():
        (root / bench).mkdir(parents=True)
        (root / bench / "test.json").write_text("[]")
        rows = [{"instruction": "q", "output": f"the correct answer is {a}", "answer": a} for a in train]
        (root / bench / "train.json").write_text(json.dumps(rows))
    (root / "piqa").mkdir()
    (root / "piqa" / "test.json").write_text("[]")  # no train split
    return root


def _record(tmp_path: Path) -> Path:
    record = new_record("commonsense-lora-x-s0-1", {"task": "commonsense"}, {"device": "Test CPU"}) | {
        "eval": {
            "ARC-Easy": {"value": 50.0, "answers": "2221102"},  # test majority answer3 (4/7), train's answer2
            "boolq": {"value": 50.0, "answers": "1100"},  # a test tie: option 0 ("true"), train's true
            "piqa": {"value": 50.0, "answers": "011"},
            "hellaswag": {"status": "absent"},
        },
    }
    record["run"]["status"] = "success"
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    return path


def test_the_train_label_scores_the_same_examples(tmp_path):
    check = runpy.run_path(str(SCRIPT))["majority_check"]
    rows = {r["benchmark"]: r for r in check(json.loads(_record(tmp_path).read_text()), _data(tmp_path / "d"))}
    assert set(rows) == {"ARC-Easy", "boolq", "piqa"}
    arc = rows["ARC-Easy"]
    assert (arc["test_label"], arc["train_label"]) == ("answer3", "answer2")
    assert arc["test_majority"] == pytest.approx(400 / 7) and arc["train_majority"] == pytest.approx(200 / 7)
    assert (rows["boolq"]["test_label"], rows["boolq"]["train_label"], rows["boolq"]["train_majority"]) == (
        "true",
        "true",
        50.0,
    )
    assert rows["piqa"]["train_label"] is None and rows["piqa"]["test_majority"] == pytest.approx(200 / 3)


def test_the_command_prints_both_and_refuses_what_it_cannot_read(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    data = _data(tmp_path / "d")
    main([str(_record(tmp_path)), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert "answer3" in out and "57.1" in out and "answer2" in out and "28.6" in out and "(no train split)" in out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json"), "--data-dir", str(data)])
    assert "is not a file" in capsys.readouterr().err
    other = tmp_path / "other.json"
    diffusion = json.loads(_record(tmp_path).read_text())
    diffusion["run"]["config"]["task"] = "diffusion"
    other.write_text(json.dumps(diffusion))
    with pytest.raises(SystemExit):
        main([str(other), "--data-dir", str(data)])
    assert "not a commonsense run" in capsys.readouterr().err
    listed = tmp_path / "list.json"  # was an AttributeError traceback
    listed.write_text("[1]")
    with pytest.raises(SystemExit):
        main([str(listed), "--data-dir", str(data)])
    assert "not a JSON object; pass a run's record.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"), (["--out", "{tmp}"], "is a folder; pass the JSON")],
)
def test_the_published_check_refuses_bad_flags_before_scoring(tmp_path, data_dir, flags, message):
    """scripts/published_check.py: found before the model loads (the folder was found only after every test set)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "published_check.py"
    argv = [sys.executable, str(script), "--data-dir", str(data_dir), *[f.format(tmp=tmp_path) for f in flags]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_the_published_check_keeps_the_committed_file_only_from_losing_a_scored_benchmark(tmp_path, monkeypatch):
    """From a review: the documented command was refused, since the committed file holds hellaswag as absent (the
    data has none) and the check wanted every benchmark; ``./results/...`` also slipped past the string compare."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "published_check.py"
    spec = importlib.util.spec_from_file_location("published_check", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    rows = [{"benchmark": "piqa", "ours": 60.0, "file_sha256": "aa"}, {"benchmark": "hellaswag", "status": "absent"}]
    (tmp_path / "results" / "published_check.json").write_text(json.dumps({"results": rows}))
    default = str(tmp_path / "results" / "published_check.json")  # (the script's own default is its repo's file)
    assert module.partial_problem({"piqa": "aa", "hellaswag": None}, default, default) is None  # absent there too
    assert module.partial_problem({"piqa": None}, "./results/published_check.json", default) == (
        "lacks piqa, which ./results/published_check.json scored; pass --out elsewhere to check a part"
    )
    assert module.partial_problem({"piqa": None}, str(tmp_path / "elsewhere.json"), default) is None
    # from a review: the first 6 examples of each benchmark replaced the committed full-set check, labelled as one
    assert "has other test files for piqa than" in module.partial_problem({"piqa": "bb"}, default, default)
    assert module.partial_problem({"piqa": "bb"}, str(tmp_path / "elsewhere.json"), default) is None
    # (a re-review) run from another folder, the repo's committed file is still the one guarded
    repo_file = script.parents[1] / "results" / "published_check.json"
    assert "lacks ARC-Easy" in module.partial_problem(
        {"ARC-Easy": None}, str(repo_file), "results/published_check.json"
    )


def test_the_majority_check_needs_a_folder_with_train_splits(tmp_path, data_dir, monkeypatch, capsys):
    """From a review: without --data-dir it fetched the hub's copy, which has no train.json, and printed "(no train
    split)" on every row with exit 0; a train.json that is not JSON gave a traceback."""
    main = runpy.run_path(str(SCRIPT))["main"]
    record = _record(tmp_path)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    with pytest.raises(SystemExit):
        main([str(record)])
    assert "give --data-dir (or HARNESS_DATA_DIR)" in capsys.readouterr().err
    bare = tmp_path / "bare"
    (bare / "ARC-Easy").mkdir(parents=True)
    (bare / "ARC-Easy" / "test.json").write_text((data_dir / "ARC-Easy" / "test.json").read_text())
    with pytest.raises(SystemExit):
        main([str(record), "--data-dir", str(bare)])
    assert "holds no <benchmark>/train.json for the benchmarks the run scored" in capsys.readouterr().err
    (bare / "ARC-Easy" / "train.json").write_text("[{")
    with pytest.raises(SystemExit):
        main([str(record), "--data-dir", str(bare)])
    assert "train.json cannot be read" in capsys.readouterr().err


def _examples(answers: list[str], options: str | None) -> str:
    line = f"\n\nAnswer format: {options}" if options else ""
    return json.dumps([{"instruction": f"q{line}", "output": f"the answer is {a}", "answer": a} for a in answers])


def test_a_benchmark_of_yours_is_compared_with_its_options_read_as_the_harness_reads_them(tmp_path, capsys):
    """From a review: a benchmark not among the paper's eight (``bench not in BENCHMARKS``) was left out without a
    word, though any further folder in the same format is a benchmark: a record scoring only one was refused as
    keeping "no per-example answers", one with it and boolq printed boolq alone, exit 0."""
    main = runpy.run_path(str(SCRIPT))["main"]
    data = tmp_path / "d"
    for bench, test, train, options in (
        ("mybench", ["yes", "yes", "no", "no", "no"], ["yes", "yes", "no"], "yes/no"),
        ("colours", ["red", "blue", "red"], ["blue", "blue", "red"], None),  # options: the test file's answers, sorted
        ("boolq", ["true"], ["true", "true", "false"], None),
    ):
        (data / bench).mkdir(parents=True)
        (data / bench / "test.json").write_text(_examples(test, options))
        (data / bench / "train.json").write_text(_examples(train, options))
    (data / "gone").mkdir()  # scored elsewhere: its train.json here, no test.json to read the options from
    (data / "gone" / "train.json").write_text(_examples(["a"], "a/b"))
    record = new_record("commonsense-lora-x-s0-1", {"task": "commonsense"}, {"device": "Test CPU"})
    record["run"]["status"] = "success"
    only = tmp_path / "only.json"
    only.write_text(json.dumps(record | {"eval": {"mybench": {"value": 50.0, "answers": "00111"}}}))
    main([str(only), "--data-dir", str(data)])
    assert "mybench             5  no             60.0  yes            40.0" in capsys.readouterr().out
    record["eval"] = {
        "mybench": {"value": 50.0, "answers": "00111"},
        "colours": {"value": 50.0, "answers": "101"},  # 0 blue, 1 red
        "gone": {"value": 50.0, "answers": "0111"},
        "boolq": {"value": 50.0, "answers": "0011"},
    }
    both = tmp_path / "both.json"
    both.write_text(json.dumps(record))
    main([str(both), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert "mybench             5  no             60.0  yes            40.0" in out
    assert "colours             3  red            66.7  blue           33.3" in out
    assert "gone                4  option 2       75.0  (no gone/test.json here to read its options from)" in out
    assert "boolq               4  true           50.0  true           50.0" in out
    record["eval"] = {"colours": {"value": 50.0, "answers": "101", "sha256": "0" * 64}}  # another copy was scored
    both.write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        main([str(both), "--data-dir", str(data)])
    assert "colours: colours/test.json here is not the one the run scored: another sha256" in capsys.readouterr().err


def test_the_train_label_is_a_word_scored_where_the_test_questions_put_it(tmp_path, capsys):
    """From a review: a train example was taken as an option index of its own options (without an "Answer
    format:" line, the test file's sorted answers) and that index read against the test questions' own order, so
    a test file with "yes/no" and a train file without the line printed "yn 3 yes 66.7 no 33.3" (train yes x3)."""
    main = runpy.run_path(str(SCRIPT))["main"]
    data = tmp_path / "d"
    for bench, test, test_format, train, train_format in (
        ("yn", ["yes", "yes", "no"], "yes/no", ["yes", "yes", "yes", "no"], None),
        ("ny", ["yes", "no", "no"], None, ["yes", "yes", "yes", "no"], "yes/no"),  # test options: no, yes
    ):
        (data / bench).mkdir(parents=True)
        (data / bench / "test.json").write_text(_examples(test, test_format))
        (data / bench / "train.json").write_text(_examples(train, train_format))
    (data / "pets").mkdir()  # its questions put "cat" at different options: no index to score it at
    pets = [{"instruction": f"q\n\nAnswer format: {f}", "output": "", "answer": "car"} for f in ("cat/car", "car/cat")]
    (data / "pets" / "test.json").write_text(json.dumps(pets))
    (data / "pets" / "train.json").write_text(_examples(["cat", "cat", "car"], "cat/car"))
    record = new_record("commonsense-lora-x-s0-1", {"task": "commonsense"}, {"device": "Test CPU"})
    record["run"]["status"] = "success"
    record["eval"] = {
        "yn": {"value": 50.0, "answers": "001"},
        "ny": {"value": 50.0, "answers": "100"},
        "pets": {"value": 50.0, "answers": "10"},
    }
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    main([str(path), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert "yn                  3  yes            66.7  yes            66.7" in out
    assert "ny                  3  no             66.7  yes            33.3" in out
    assert "(train label 'cat' is not at one option of the scored questions (option 1, option 2))" in out
