"""Where commonsense data comes from, what is absent, and what bad data says."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.task import Loaded, TaskOptions
from tasks.commonsense import CommonsenseTask, data


def copy_benchmarks(src, dst, names):
    for name in names:
        shutil.copytree(src / name, dst / name)
    return dst


def test_the_real_data_is_found_and_hellaswag_is_absent(data_dir):
    task = CommonsenseTask(TaskOptions(data_dir=str(data_dir), train_cap=5, val_size=4))
    train, val = task.splits()
    assert len(train) + len(val) == 5 * 4  # ARC-e, ARC-c, OBQA, BoolQ have train splits
    assert {e.source for e in train + val} == {"ARC-Easy", "ARC-Challenge", "openbookqa", "boolq"}
    described = task.describe()
    assert described["absent"] == ["hellaswag"]
    assert {f["file"] for f in described["train_files"]} >= {"boolq/train.json"}
    assert train[0].target.startswith("the correct answer is ")


def test_the_parent_folder_is_accepted_too(data_dir):
    assert data.resolve_data_dir(str(data_dir.parent)) == data_dir


def test_absent_benchmark_is_reported_absent_never_zero(tmp_path, data_dir, char_tokenizer):
    from tests.conftest import tiny_llama

    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), eval_limit=3, val_size=2))
    results = task.evaluate(Loaded(tiny_llama(), None, "tiny", char_tokenizer), "choice", 4, tmp_path / "pred.jsonl")
    assert results["piqa"] == {"status": "absent"} and "value" not in results["hellaswag"]
    assert results["boolq"]["n"] == 3 and 0 <= results["boolq"]["value"] <= 100
    assert results["boolq"]["sha256"] == "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9"
    lines = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and set(lines[0]) >= {"benchmark", "index", "answer", "pred", "correct", "scores"}


def test_an_extra_benchmark_folder_is_picked_up_by_name(tmp_path, data_dir):
    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    (tmp_path / "my_bench").mkdir()
    records = [
        {
            "instruction": f"Is {i} even?\n\nAnswer format: yes/no",
            "input": "",
            "output": "the correct answer is yes",
            "answer": "yes" if i % 2 == 0 else "no",
        }
        for i in range(6)
    ]
    (tmp_path / "my_bench" / "test.json").write_text(json.dumps(records))
    assert data.benchmark_names(tmp_path)[-1] == "my_bench"
    assert data.labels_for("my_bench", records) == ["no", "yes"]


def test_a_folder_with_only_a_training_file_is_trained_on_and_not_scored(tmp_path, data_dir):
    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    (tmp_path / "my_train").mkdir()
    extra = json.loads((data_dir / "ARC-Easy" / "train.json").read_text())[:5]
    (tmp_path / "my_train" / "train.json").write_text(json.dumps(extra))
    records, provenance = data.training_mix(tmp_path, cap=None, seed=0)
    assert [p["file"].split("/")[-2] for p in provenance][-1] == "my_train"  # was left out without a test.json
    assert sum(r["benchmark"] == "my_train" for r in records) == 5
    assert "my_train" not in data.benchmark_names(tmp_path)  # nothing to score it on


def test_mixed_training_file_is_used_when_present(tmp_path, data_dir):
    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    mixed = json.loads((data_dir / "ARC-Easy" / "train.json").read_text())[:30]
    (tmp_path / data.MIXED_TRAIN).write_text(json.dumps(mixed))
    records, provenance = data.training_mix(tmp_path, cap=None, seed=0)
    assert len(records) == 30 and provenance[0]["file"].endswith(data.MIXED_TRAIN)


def test_test_questions_are_left_out_of_training_and_the_committed_mixes_stay(data_dir):
    """From a review: two ARC-Easy test questions are also in its train.json, and the mix kept them (the capped
    embedded preset drew neither for seeds 0-2). They are left out after the shuffle, before the cap: a mix that
    drew none is unchanged, so the committed runs' training sets are the ones they trained on."""
    tests = frozenset(
        data.question_key(r)
        for b in data.benchmark_names(data_dir)
        if (t := data.read_split(data_dir, b, "test"))
        for r in t.records
    )
    for seed in (0, 1, 2):
        (mix, files), (before, before_files) = (
            data.training_mix(data_dir, 320, seed, tests),
            data.training_mix(data_dir, 320, seed),
        )
        assert mix == before and [{k: v for k, v in f.items() if k != "left_out"} for f in files] == before_files
    records, provenance = data.training_mix(data_dir, None, 0, tests)
    assert not any(data.question_key(r) in tests for r in records)
    left = {p["file"]: p.get("left_out", 0) for p in provenance}
    assert left["ARC-Easy/train.json"] == 2 and sum(left.values()) == 2
    everything, _ = data.training_mix(data_dir, None, 0)
    assert len(everything) - len(records) == 2


def test_a_training_question_is_held_out_only_where_its_passage_is_a_test_questions_too(tmp_path, data_dir):
    """From a review: test questions were matched by instruction alone, so user data that keeps one instruction
    and puts each question's passage in ``input`` lost every training example, silently (``left_out`` only)."""
    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    instruction = "Does the passage support the claim?\n\nAnswer format: true/false"

    def record(i):
        answer = "true" if i % 2 else "false"
        return {"instruction": instruction, "input": f"passage {i}", "output": f"the correct answer is {answer}"} | {
            "answer": answer
        }

    (tmp_path / "rc").mkdir()
    (tmp_path / "rc" / "test.json").write_text(json.dumps([record(i) for i in range(4)]))
    (tmp_path / "rc" / "train.json").write_text(json.dumps([record(i) for i in range(2, 40)]))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=2))
    task.splits()
    rc = next(p for p in task.describe()["train_files"] if p["file"] == "rc/train.json")
    assert rc["examples"] == 38 and rc["used"] == 36 and rc["left_out"] == 2  # passages 2 and 3 are test questions


def test_the_training_files_a_finished_run_is_checked_against(tmp_path, data_dir):
    """What ``harness.runner._other_data`` compares besides the test files: the training files, by name and hash;
    a copy of the same data elsewhere (its mixed file named after the folder in records) is the same data; a
    zero-shot run is never checked (it trained on nothing) and never reports a trained run's files."""
    from harness import runner

    def task(folder):
        return CommonsenseTask(TaskOptions(data_dir=str(folder), val_size=4))

    first = copy_benchmarks(data_dir, tmp_path / "first", ["boolq"])
    mixed = json.loads((data_dir / "ARC-Easy" / "train.json").read_text())[:30]
    (first / data.MIXED_TRAIN).write_text(json.dumps(mixed))
    trained = task(first)
    trained.splits()
    described = trained.describe()
    assert trained.describe()["train_files"] == []  # the next (zero-shot) run of the sweep read none
    assert (
        trained.training_files(described)
        == trained.training_files()
        == {data.MIXED_TRAIN: described["train_files"][0]["sha256"]}
    )
    finished = {"eval": {}, "train": {"steps": 1}, "run": {"config": {"data": described}}}
    assert runner._other_data(finished, task(shutil.copytree(first, tmp_path / "copy"))) is None
    (first / data.MIXED_TRAIN).write_text(json.dumps(mixed[:-1]))
    assert runner._other_data(finished, task(first)) == f"the training file {data.MIXED_TRAIN} differs"
    assert runner._other_data({**finished, "train": {}}, task(first)) is None  # a zero-shot run's record
    (first / data.MIXED_TRAIN).unlink()  # the benchmarks' own train.json now
    assert runner._other_data(finished, task(first)) == "the training file boolq/train.json is new"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"instruction": "x"', "is not valid JSON"),
        ("{}", "must be a non-empty JSON list"),
        ('[{"instruction": "x", "output": "y"}]', "example 0 lacks one of the string keys"),
    ],
)
def test_malformed_test_json_says_what_is_wrong(tmp_path, content, message):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        data.read_split(tmp_path, "boolq", "test")


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.resolve_data_dir(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="holds no benchmark folder"):
        data.resolve_data_dir(str(tmp_path))


def test_online_source_downloads_into_the_cache(tmp_path, data_dir, monkeypatch):
    """The real download code, offline: LLM-Adapters' layout served from local files."""
    upstream = tmp_path / "upstream"
    for name in ("boolq", "piqa"):
        (upstream / "dataset" / name).mkdir(parents=True)
        shutil.copy(data_dir / name / "test.json", upstream / "dataset" / name / "test.json")
    (upstream / "ft-training_set").mkdir()
    shutil.copy(data_dir / "boolq" / "train.json", upstream / "ft-training_set" / data.MIXED_TRAIN)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setenv("HARNESS_COMMONSENSE_URL", upstream.as_uri())
    folder = data.resolve_data_dir(None)
    assert (folder / "piqa" / "test.json").read_bytes() == (data_dir / "piqa" / "test.json").read_bytes()
    assert not (folder / "hellaswag").exists()  # what upstream lacks stays absent
    assert (folder / data.MIXED_TRAIN).is_file()


def test_a_download_cut_short_warns_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    """From a review: a body cut short raises ``http.client.IncompleteRead`` (not an ``OSError``), which escaped
    as a traceback instead of the warning and the 'could not fetch' error."""
    import http.server
    import threading

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b'[{"instruction": ')  # then the connection closes

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
        with pytest.raises(ValueError, match="the download from .* failed; pass --data-dir"):
            data.download(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().out.count("IncompleteRead") == len(data.BENCHMARKS) + 1
    assert not list((tmp_path / "cache").rglob("*.json"))


def _mine(tmp_path, data_dir, records):
    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.json").write_text(json.dumps(records))
    return str(tmp_path)


def test_a_further_benchmark_whose_answers_are_all_one_word_needs_an_answer_format_line(tmp_path, data_dir):
    """From a review: without ``Answer format:`` lines a further benchmark's options are the answers its test file
    gives; all ``true``, and ``true`` was each question's only option: 100 under ``choice``."""
    record = {"instruction": "Is fire hot?", "input": "", "output": "the correct answer is true", "answer": "true"}
    folder = _mine(tmp_path, data_dir, [record, record])
    with pytest.raises(ValueError, match=r"mine/test.json: every answer is 'true' .*'Answer format: a/b/\.\.\.'"):
        CommonsenseTask(TaskOptions(data_dir=folder))
    one = {**record, "instruction": "Is fire hot?\n\nAnswer format: true"}  # one option named is the same
    (tmp_path / "mine" / "test.json").write_text(json.dumps([record, one, {**record, "answer": "false"}]))
    with pytest.raises(ValueError, match=r"example 1: its 'Answer format:' line names one option \(true\)"):
        CommonsenseTask(TaskOptions(data_dir=folder))
    (tmp_path / "mine" / "test.json").write_text(json.dumps([record, {**record, "answer": "false"}]))
    CommonsenseTask(TaskOptions(data_dir=folder))  # two answers: two options


@pytest.mark.parametrize("kind", ["folder", "broken link"])
@pytest.mark.parametrize("name", ["boolq", "mine"])
def test_a_test_json_that_is_not_a_file_is_an_error_naming_it_not_absent(tmp_path, data_dir, kind, name):
    """From a review: a test.json that was a folder or a broken link was reported ``absent`` without a word (and
    a further benchmark's broken link was not even listed)."""
    copy_benchmarks(data_dir, tmp_path, ["piqa"])
    path = tmp_path / name / "test.json"
    path.parent.mkdir()
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.json")
    with pytest.raises(ValueError, match=rf"{name}/test.json is a {kind}, not a readable file"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path)))


@pytest.mark.parametrize("name", ["ARC-Easy", "mine"])
def test_a_benchmark_folder_that_is_a_broken_link_is_an_error_naming_it_not_absent(tmp_path, data_dir, name):
    """From a review: a benchmark folder that was a broken link was reported ``absent`` (one of the paper's eight)
    or left out without a word (one of yours), where a broken link to its test.json is an error naming it. A
    broken link beside a commonsense/ folder does not keep the data there from being found."""
    copy_benchmarks(data_dir, tmp_path, ["piqa"])
    (tmp_path / name).symlink_to(tmp_path / "gone")
    assert name in data.benchmark_names(tmp_path) and name in data.benchmark_names(tmp_path, "train")
    with pytest.raises(ValueError, match=rf"{name} is a broken link, not a benchmark folder"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=rf"{name} is a broken link"):
        data.training_mix(tmp_path, None, 0)
    parent = tmp_path / "parent"
    (parent / "commonsense").mkdir(parents=True)
    shutil.move(tmp_path / "piqa", parent / "commonsense" / "piqa")
    (parent / "stale").symlink_to(tmp_path / "gone")
    assert data.resolve_data_dir(str(parent)) == parent / "commonsense"


def test_an_unreadable_file_is_an_error_naming_it(tmp_path):
    """(As root a chmod cannot make a file unreadable: this path's read fails by hand.)"""

    class Unreadable(type(tmp_path)):
        def read_bytes(self):
            raise PermissionError(13, "Permission denied", str(self))

    with pytest.raises(ValueError, match=r"boolq/test.json cannot be read \(Permission denied\)"):
        data.read_json_file(Unreadable(tmp_path / "boolq" / "test.json"))


def test_the_mixed_training_file_replaces_the_benchmarks_own_which_are_not_read(tmp_path, data_dir):
    """From a review: with commonsense_170k.json present every <benchmark>/train.json was still read and checked,
    though none is trained on, and a malformed one stopped the run."""
    copy_benchmarks(data_dir, tmp_path, ["boolq"])
    (tmp_path / "boolq" / "train.json").write_text('[{"instruction": "x"')  # malformed
    with pytest.raises(ValueError, match="boolq/train.json is not valid JSON"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), val_size=4))  # read when it is what trains
    mixed = json.loads((data_dir / "ARC-Easy" / "train.json").read_text())[:30]
    (tmp_path / data.MIXED_TRAIN).write_text(json.dumps(mixed))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), val_size=4))
    train, val = task.splits()
    assert len(train) + len(val) == 30 and {e.source for e in train + val} == {"mixed"}
    assert [f["file"] for f in task.describe()["train_files"]] == [f"{tmp_path.name}/{data.MIXED_TRAIN}"]
    (tmp_path / data.MIXED_TRAIN).unlink()
    (tmp_path / data.MIXED_TRAIN).mkdir()  # a folder is no mixed file: an error, not the benchmarks' files instead
    with pytest.raises(ValueError, match=rf"{data.MIXED_TRAIN} is a folder, not a readable file"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), val_size=4))


def test_a_repeated_question_is_never_both_validated_and_trained_on(tmp_path):
    """From a review: validation was cut from the shuffled training mix, which keeps a file's repeated questions
    (ARC-Challenge's train.json repeats one, OBQA's five), so one question could be held out for validation and
    trained on too (seeds 19, 31 and 39 of the paper preset). Its repeats are left out of training, and counted."""

    def record(i):
        return {"instruction": f"Is {i} even?\n\nAnswer format: yes/no", "input": ""} | {
            "output": f"the correct answer is {'no' if i % 2 else 'yes'}",
            "answer": "no" if i % 2 else "yes",
        }

    (tmp_path / "rc").mkdir()
    (tmp_path / "rc" / "test.json").write_text(json.dumps([record(i) for i in range(100, 104)]))
    (tmp_path / "rc" / "train.json").write_text(json.dumps([record(i) for i in range(10)] * 2))  # each one twice
    mix, _ = data.training_mix(tmp_path, None, 0)
    held = {data.question_key(r) for r in mix[:4]}
    repeats = sum(data.question_key(r) in held for r in mix[4:])
    assert repeats > 0  # the mix puts a question on both sides of val_size=4: what the fix is for
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=4))
    train, val = task.splits()
    assert len(val) == 4 and len(train) == 16 - repeats
    assert not {e.prompt for e in train} & {e.prompt for e in val}
    assert task.describe()["train_files"][0]["validation_repeats_left_out"] == repeats
    (tmp_path / "rc" / "train.json").write_text(json.dumps([record(0)] * 6))  # nothing left to train on
    with pytest.raises(ValueError, match="every training example repeats one of the val_size=2 validation"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=2)).splits()


@pytest.mark.parametrize(
    ("preset", "seed", "n_train", "train_sha", "val_sha"),
    [
        ("smoke", 0, 60, "b651b717e77f5ac0", "f4312583bd853896"),
        ("embedded", 0, 1248, "cb477ba42551a6d3", "922ade1cd55b4ddb"),
        ("embedded", 1, 1248, "1d69b89acbae147f", "16c5b26254939c19"),
        ("embedded", 2, 1248, "0e60919071f46bd5", "432fb27c87b19b57"),
        ("paper", 0, 17632, "412665ddabf5d8d7", "4cacc06b80cda2a5"),
        ("paper", 1, 17632, "3467713449678c65", "76dafff41d14f300"),
        ("paper", 2, 17632, "c7ce70e52a4d5ad1", "7303ff859bac61cb"),
    ],
)
def test_a_split_with_no_repeat_on_both_sides_is_the_one_it_was(data_dir, preset, seed, n_train, train_sha, val_sha):
    """From a review: leaving validation questions' repeats out of training must not move a split that drew none
    onto both sides, so the committed runs (embedded, seeds 0-2) keep the data they trained on: these digests are
    the splits as they were before the change (2026-12-06)."""
    import dataclasses
    import hashlib

    from tasks.commonsense.presets import PRESETS

    def sha(examples):
        text = json.dumps([[e.prompt, e.target, e.source, e.meta] for e in examples])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    task = CommonsenseTask(dataclasses.replace(PRESETS[preset].task, data_dir=str(data_dir), seed=seed))
    train, val = task.splits()
    assert (len(train), sha(train), sha(val)) == (n_train, train_sha, val_sha)
    assert all("validation_repeats_left_out" not in f for f in task.describe()["train_files"])


def test_a_hidden_broken_link_is_no_benchmark_and_a_folder_without_one_says_so(tmp_path, data_dir):
    """From a review of the fix above: every broken link in the data folder was taken for a benchmark folder, so
    an editor's lock (``.#README.md``, a link to nothing) stopped every run, and a wrong folder holding a stray
    broken link was refused as that link, not as a folder without benchmarks."""
    copy_benchmarks(data_dir, tmp_path, ["piqa"])
    (tmp_path / ".#README.md").symlink_to("root@host.4242:1733500000")
    assert ".#README.md" not in data.benchmark_names(tmp_path)
    CommonsenseTask(TaskOptions(data_dir=str(tmp_path)))  # reads, as before the fix
    wrong = tmp_path / "wrong"
    (wrong / "src").mkdir(parents=True)
    (wrong / "stale").symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError, match=r"holds no benchmark folder with a test.json.*\(broken links there: stale\)"):
        data.resolve_data_dir(str(wrong))


def yes_no(numbers):
    """Records of a benchmark of yours: is i even? (yes/no)."""
    return [
        {"instruction": f"Is {i} even?\n\nAnswer format: yes/no", "input": ""}
        | {"output": f"the correct answer is {'no' if i % 2 else 'yes'}", "answer": "no" if i % 2 else "yes"}
        for i in numbers
    ]


def write_benchmark(folder, test=None, train=None):
    folder.mkdir()
    for split, records in (("test", test), ("train", train)):
        if records is not None:
            (folder / f"{split}.json").write_text(json.dumps(records))


def test_a_task_trains_on_and_describes_the_files_it_read_when_it_was_made(tmp_path):
    """From a review: describe() and splits() listed the data folder again at each run, and a sweep makes its
    tasks before its first run: a benchmark folder added meanwhile failed describe() with a KeyError after
    training, and was trained on though the run's identity (training_files, hashed when the task was made) did
    not name it; a training file changed meanwhile was trained on under the old file's hash."""
    write_benchmark(tmp_path / "rc", test=yes_no(range(100, 104)), train=yes_no(range(10)))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=2))
    identity = task.training_files()
    write_benchmark(tmp_path / "later", test=yes_no(range(200, 204)), train=yes_no(range(300, 340)))
    train, val = task.splits()
    assert len(train) + len(val) == 10 and {e.source for e in train + val} == {"rc"}
    described = task.describe()
    assert described["benchmarks"] == ["rc"] and task.training_files(described) == identity
    (tmp_path / "rc" / "train.json").write_text(json.dumps(yes_no(range(20, 30))))  # other data, same name
    with pytest.raises(ValueError, match=r"rc/train.json changed after the command started \(sha256 \w+ then"):
        task.splits()
    (tmp_path / "rc" / "train.json").unlink()
    with pytest.raises(ValueError, match=r"rc/train.json was read when the command started and is gone now"):
        task.splits()


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_a_split_in_another_format_only_is_an_error_saying_to_convert_it(tmp_path, split, ext):
    """From a review: only test.json / train.json were looked for, so a benchmark folder holding test.jsonl or
    test.parquet was reported absent, and one holding train.jsonl was not trained on, without a word."""
    write_benchmark(tmp_path / "rc", test=yes_no(range(100, 104)), train=yes_no(range(10)))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / f"{split}.{ext}").write_text("\n".join(json.dumps(r) for r in yes_no(range(4))))
    expected = rf"mine/{split}\.{ext} is not read: the harness reads {split}\.json, a JSON list of examples"
    with pytest.raises(ValueError, match=rf"{expected} .*; convert it to \S*mine/{split}\.json or remove it"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))
    if split == "test":  # a folder whose every benchmark is in another format says so too
        shutil.rmtree(tmp_path / "rc")
        with pytest.raises(ValueError, match=expected):
            data.resolve_data_dir(str(tmp_path))
        write_benchmark(tmp_path / "rc", test=yes_no(range(100, 104)), train=yes_no(range(10)))
    (tmp_path / "mine" / f"{split}.json").write_text(json.dumps(yes_no(range(4, 8))))  # converted: read
    CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))


def test_a_test_set_in_another_format_under_the_parents_commonsense_folder_is_named(tmp_path):
    """From a review: a --data-dir given as the parent of commonsense/ (a form the README accepts) whose benchmark
    held test.jsonl only was said to hold no benchmark folder with a test.json: the other format was looked for in
    the folder given only."""
    (tmp_path / "commonsense" / "boolq").mkdir(parents=True)
    (tmp_path / "commonsense" / "boolq" / "test.jsonl").write_text(json.dumps(yes_no(range(4))[0]))
    with pytest.raises(ValueError, match=r"commonsense/boolq/test\.jsonl is not read: the harness reads test\.json"):
        data.resolve_data_dir(str(tmp_path))


def test_a_benchmark_folder_named_mixed_is_named_as_itself_not_as_the_mixed_file(tmp_path, data_dir):
    """From a review: the mixed file's records are tagged ``mixed``, and that tag was taken for commonsense_170k.json
    wherever it came from, so a benchmark folder named mixed/ was named as a file that does not exist (a cloze
    message) and its repeats of validation questions were not counted in its train_files entry."""
    tests = json.loads((data_dir / "ARC-Easy" / "test.json").read_text())[:4]
    records = json.loads((data_dir / "ARC-Challenge" / "train.json").read_text())[:10] * 2  # each one twice
    write_benchmark(tmp_path / "rc", test=tests)
    write_benchmark(tmp_path / "mixed", train=records)
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=4))
    task.splits()
    [entry] = task.describe()["train_files"]
    assert entry["file"] == "mixed/train.json" and entry["validation_repeats_left_out"] > 0
    records[5] = records[5] | {"instruction": records[5]["instruction"].replace("Answer2:", "AnswerX:")}
    (tmp_path / "mixed" / "train.json").write_text(json.dumps(records))
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="cloze", val_size=4))
    with pytest.raises(ValueError, match=rf"^{tmp_path}/mixed/train.json: the example .* does not fit the cloze"):
        task.splits()


@pytest.mark.parametrize("where", ["rc/train.json", data.MIXED_TRAIN])
@pytest.mark.parametrize(("output", "answer"), [("the correct answer is no", "yes"), ("it is untrue", "true")])
def test_a_training_output_that_does_not_end_with_its_answer_is_refused(tmp_path, where, output, answer):
    """From a review: choice and generate train on a record's output without looking at its answer, so an output
    that contradicts the answer trained silently. The data's outputs are "the correct answer is <answer>"."""
    write_benchmark(tmp_path / "rc", test=yes_no(range(100, 104)))
    records = yes_no(range(10))
    records[7] = records[7] | {"output": output, "answer": answer}
    (tmp_path / where).write_text(json.dumps(records))
    with pytest.raises(ValueError, match=rf"{where}: example 7: its output '{output}' does not end with its answer"):
        CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean"))
    records[7]["output"] = f"The correct answer is {answer}\n"  # ends with it: trained on
    (tmp_path / where).write_text(json.dumps(records))
    CommonsenseTask(TaskOptions(data_dir=str(tmp_path), template="clean", val_size=2)).splits()


def test_an_empty_test_file_is_refused(tmp_path):
    """From a mutation test: ``[]`` (a benchmark of no questions) was covered by no parametrised case."""
    (tmp_path / "test.json").write_text("[]")
    with pytest.raises(ValueError, match="must be a non-empty JSON list"):
        data.read_json_file(tmp_path / "test.json")


def test_each_benchmarks_label_words_are_those_its_data_answers_with(data_dir):
    """From a mutation test: the label table (``BENCHMARKS``) was barely read, since candidates come from each
    question's Answer format line: ARC-Easy without answer5, WinoGrande's option0/option1 and SIQA's answer1..2
    passed. Checked against the words and answers the data uses."""
    from tasks.commonsense import _FORMAT
    from tasks.commonsense.cloze import format_words

    seen = 0
    for name, labels in data.BENCHMARKS.items():
        test = data.read_split(data_dir, name, "test")
        if test is None:
            continue
        seen += 1
        words = {w for r in test.records for w in format_words(_FORMAT.search(r["instruction"]).group(1))}
        assert words == set(labels) and {r["answer"] for r in test.records} <= set(labels), name
    assert seen >= 7  # the shared data's seven (HellaSwag's is not shipped)
