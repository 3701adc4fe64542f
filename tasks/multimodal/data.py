"""Multimodal data in the LLaVA / LLaVA-OneVision JSON format, validated when read (before any training).

A data folder (``--data-dir``) holds ``images/`` and either ``train.json`` / ``test.json``, whose records
each name their ``domain``, or per-domain files ``train-<domain>.json`` / ``test-<domain>.json``, plus
an optional ``captions.json`` of stage-1 alignment pairs. A record::

    {"id": "math-test-0007", "image": "images/math-test-0007.png", "domain": "math",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is the sum of the two digits?"},
                       {"from": "gpt", "value": "11"}]}

``image`` is a path relative to the data folder, a list of them (one ``<image>`` token each in the human
turns), or absent (text only). Test records also carry what scoring needs: ``kind`` ``"choice"``
(``question``, ``options``, ``answer``: the index of the right option), ``"yesno"`` (``question``,
``answer`` "yes"/"no", ``pair``: an id shared by the two questions about one image, one yes, one no) or
``"open"`` (``question``, ``answers``: the acceptable strings, ``metric``: "exact" or "anls", one metric for
a domain's open questions). ``question`` and ``options`` hold no ``<image>``: the scorers put it in front.
A human turn with one ``<image>`` is read with it in front (``tag_in_front``, as LLaVA trains), wherever it was.
Other keys (such as the embedded data's ``source``) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from tasks.images import check_decodes, pixel_digest

DOMAINS = ("general", "document", "math")
SPLITS = ("train", "test")
MAX_OPTIONS = 26  # choice options are lettered A-Z
KINDS = ("choice", "yesno", "open")
METRICS = ("exact", "anls")
IMAGE_TOKEN = "<image>"
CAPTIONS = "captions.json"


@dataclass(frozen=True)
class Record:
    """One conversation; ``turns`` are its (human, gpt) exchanges in order, ``images`` absolute paths."""

    id: str
    domain: str
    images: list[Path]
    turns: list[tuple[str, str]]
    kind: str | None = None  # test records: "choice", "yesno" or "open"; None for training records
    question: str | None = None
    options: list[str] | None = None  # choice
    answer: int | str | None = None  # choice: index into options; yesno: "yes" or "no"
    answers: list[str] | None = None  # open
    metric: str | None = None  # open: "exact" or "anls"
    pair: str | None = None  # yesno: shared by the two questions about one image


@dataclass(frozen=True)
class _File:
    path: Path
    sha256: str
    records: list[Record]


def read_split(data_dir: Path, split: str, domains: list[str] | None = None) -> list[Record]:
    """The validated records of ``split`` ("train" or "test"), only those of ``domains`` if given."""
    return [r for f in _read_split_files(Path(data_dir), split, domains) for r in f.records]


def read_captions(data_dir: Path) -> list[Record]:
    """Stage-1 alignment pairs from ``captions.json`` ([] when there is none); a domain is optional there. Each
    record is an image and its caption: one without exactly one image is refused, naming it (stage 1 left a
    text-only record out unsaid, and a file of only those failed after the weights loaded, naming no file)."""
    path = _data_dir(Path(data_dir)) / CAPTIONS
    if not path.is_file():
        return []
    records = _read_file(path, Path(data_dir), split="captions", file_domain=None).records
    for i, r in enumerate(records):
        if len(r.images) != 1:
            raise ValueError(
                f"{path}: record {i} (id {r.id!r}): a caption record with {len(r.images)} images; stage 1 aligns "
                "the projector on an image and its caption: give it exactly one image (a conversation without one "
                "belongs in the training files)"
            )
    return records


def describe(data_dir: Path, captions: bool = True) -> dict[str, Any]:
    """What a data folder holds: files used (with sha256), counts per domain and kind, and what is absent.
    ``captions``: whether captions.json is read (its records checked, its images decoded) and described; a run
    without stage 1 reads none of it (a ``llava_style`` config, ``paper``, random weights)."""
    data_dir = _data_dir(Path(data_dir))
    out: dict[str, Any] = {"data_dir": str(data_dir), "files": [], "train": {}, "test": {}, "captions": 0}
    absent: list[str] = []
    images: set[Path] = set()
    for split in SPLITS:
        try:
            files = _read_split_files(data_dir, split, None)
        except _MissingSplit:
            absent.append(f"{split}.json or {split}-<domain>.json")
            continue
        records = [r for f in files for r in f.records]
        for d in DOMAINS:
            mine = [r for r in records if r.domain == d]
            if not mine:
                absent.append(f"{split}: {d}")
            elif split == "train":
                out["train"][d] = len(mine)
            else:
                out["test"][d] = {k: n for k in KINDS if (n := sum(r.kind == k for r in mine))}
        out["files"] += [{"file": f.path.name, "sha256": f.sha256, "records": len(f.records)} for f in files]
        images.update(p for r in records for p in r.images)
    path = data_dir / CAPTIONS
    if not captions:
        del out["captions"]  # not read: no count, and not said to be absent
    elif path.is_file():
        f = _read_file(path, data_dir, split="captions", file_domain=None)
        out["files"].append({"file": f.path.name, "sha256": f.sha256, "records": len(f.records)})
        out["captions"] = sum(len(r.images) == 1 for r in f.records)  # what stage 1 can align on
        if left_out := len(f.records) - out["captions"]:  # refused where stage 1 reads them (read_captions)
            out["captions_left_out"] = left_out
        images.update(p for r in f.records for p in r.images)
    else:
        absent.append(CAPTIONS)
    return {**out, "images": len(images), "absent": absent}


_DESCRIBED: dict[tuple, dict[str, Any]] = {}  # describe_again's last answer per folder and state of its JSON files


def describe_again(data_dir: Path, captions: bool = True) -> dict[str, Any]:
    """``describe(data_dir, captions)``, read again only where one of the folder's JSON files changed (size, mtime or
    inode), or was added or removed: the training-data check of finished runs asks it for every run of a sweep, once
    before any run trains and again at its turn (a re-review: a large train.json was parsed and hashed twice a
    run). The files it hashes are those JSON files; its answer is not to be changed by the caller."""
    data_dir = Path(data_dir)
    stats = [(p.name, p.stat()) for p in data_dir.glob("*.json")]
    state = tuple(sorted((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats))
    key = (str(data_dir.resolve()), state, captions)
    if any(time.time() - st.st_mtime < 2.0 for _, st in stats):  # written within a clock tick (1 s on some file
        return describe(data_dir, captions)  # systems): a same-size rewrite in that tick would keep the key; not cached
    if key not in _DESCRIBED:
        _DESCRIBED.clear()  # one folder's at a time: a sweep reads one
        _DESCRIBED[key] = describe(data_dir, captions)
    return _DESCRIBED[key]


UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a bad file


def seen_test_images(test: list[Record], seen: list[Record]) -> list[str]:
    """The ids of the ``test`` records whose image shows the same pixels as one of ``seen``'s (training or caption
    records): a model trained on those answers its question from memory. Pixels as the vision tower reads them
    (``tasks.multimodal.vision``: converted to RGB): the same picture saved as PNG and as BMP, or with other
    metadata, is one image; a lossy re-encoding (JPEG) is not found. Only images of a test image's size are decoded
    (the size is read from the file's header, either way round: EXIF may turn it), once a process (``tasks.images.pixel_digest``): about as long again
    as the check that every image decodes, which each process makes too (~3 ms a 640 x 480 JPEG); a file PIL cannot
    open is compared by its bytes."""
    sizes: dict[Path, Any] = {}
    digests: dict[Path, str] = {}

    def size(path: Path) -> Any:
        if path not in sizes:
            try:
                with Image.open(path) as im:  # either way round: a photo EXIF turns upright reads transposed
                    sizes[path] = tuple(sorted(im.size))  # (a re-review: its upright copy was never compared)
            except UNREADABLE:
                sizes[path] = ("bytes", path.stat().st_size)  # unreadable: equal only to the same bytes
        return sizes[path]

    def digest(path: Path) -> str:
        if path not in digests:
            try:
                digests[path] = pixel_digest(path)  # once a process: the training and the caption checks share it
            except UNREADABLE:  # a header that reads above a body that does not (a truncated file)
                digests[path] = "bytes " + hashlib.sha256(path.read_bytes()).hexdigest()
        return digests[path]

    wanted = {size(p) for r in test for p in r.images}  # only an image of a test image's size can equal it
    known = {digest(p) for r in seen for p in r.images if size(p) in wanted}
    return [r.id for r in test if any(digest(p) in known for p in r.images)] if known else []


class _MissingSplit(ValueError):
    pass


def _data_dir(data_dir: Path) -> Path:
    if not data_dir.is_dir():
        raise ValueError(
            f"data dir {str(data_dir)!r} is not a folder; pass --data-dir pointing at a folder with images/ and "
            "train.json/test.json (or train-<domain>.json/test-<domain>.json)"
        )
    return data_dir


def _read_split_files(data_dir: Path, split: str, domains: list[str] | None) -> list[_File]:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    for d in domains or []:
        check_domain(d, f"domain {d!r} asked for")
    data_dir = _data_dir(data_dir)
    combined = data_dir / f"{split}.json"
    per_domain = sorted(data_dir.glob(f"{split}-*.json"))
    # a split saved in another format beside (or instead of) its .json is not read: said, where it was skipped and its
    # domain trained on nothing or scored absent without a word (a review: train-math.jsonl)
    # (only where the layout in use lacks it: a leftover train-math.jsonl beside a train.json holding math is no
    # loss, and converting it would meet the two-layouts refusal below; a re-review)
    for ext in (".jsonl", ".parquet"):
        for other in sorted(data_dir.glob(f"{split}*{ext}")):
            lacking = not per_domain if other.stem == split else not combined.is_file()
            named = other.stem in (split, *(f"{split}-{d}" for d in DOMAINS))
            if named and lacking and not other.with_suffix(".json").is_file():
                raise ValueError(
                    f"{other} is not read: the harness reads {other.stem}.json, a JSON list of records; convert it "
                    f"to {other.with_suffix('.json')} or remove it"
                )
    if combined.is_file() and per_domain:
        raise ValueError(
            f"{data_dir} has both {combined.name} and {per_domain[0].name}; keep one layout: remove {combined.name} "
            f"or the {split}-<domain>.json files"
        )
    if combined.is_file():
        f = _read_file(combined, data_dir, split=split, file_domain=None)
        _check_unique_ids([f], split)
        return [_File(f.path, f.sha256, [r for r in f.records if domains is None or r.domain in domains])]
    if not per_domain:
        raise _MissingSplit(
            f"{data_dir} has no {split} data: expected {combined.name} or {split}-<domain>.json with domain one of "
            f"{', '.join(DOMAINS)}; add it or point --data-dir at the right folder"
        )
    by_domain = {p.stem[len(split) + 1 :]: p for p in per_domain}
    for domain, path in by_domain.items():
        check_domain(domain, f"{path}: file name domain {domain!r}")
    wanted = [d for d in DOMAINS if d in by_domain and (domains is None or d in domains)]
    files = [_read_file(by_domain[d], data_dir, split=split, file_domain=d) for d in wanted]
    _check_unique_ids(files, split)
    return files


def check_domain(domain: str, what: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"{what} is not a known domain; use one of {', '.join(DOMAINS)}")


def _check_unique_ids(files: list[_File], split: str) -> None:
    if split != "test":  # scoring is keyed by id; training data may repeat ids harmlessly
        return
    seen: dict[str, Path] = {}
    for f in files:
        for i, r in enumerate(f.records):
            if r.id in seen:
                raise ValueError(
                    f"{f.path}: record {i} (id {r.id!r}) repeats an id already used in {seen[r.id].name}; "
                    "give every test record its own id"
                )
            seen[r.id] = f.path


def _read_file(path: Path, data_dir: Path, *, split: str, file_domain: str | None) -> _File:
    raw = path.read_bytes()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix or remove the file"
        ) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 at byte {exc.start}); fix or remove the file") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path} must be a non-empty JSON list of records (LLaVA format); fix or remove the file")
    verified: set[Path] = set()
    records = [_parse(item, path, i, data_dir, split, file_domain, verified) for i, item in enumerate(items)]
    if split == "test":
        _check_pairs(records, path)
        _check_metrics(records, path)
    return _File(path, hashlib.sha256(raw).hexdigest(), records)


def _parse(
    item: Any, path: Path, index: int, data_dir: Path, split: str, file_domain: str | None, verified: set[Path]
) -> Record:
    def fail(problem: str, fix: str) -> ValueError:
        rid = item.get("id") if isinstance(item, dict) else None
        return ValueError(f"{path}: record {index} (id {rid!r}): {problem}; {fix}")

    if not isinstance(item, dict):
        raise fail(
            f"it is a {type(item).__name__}, not an object", "each record is an object with id and conversations"
        )
    rid = item.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise fail("'id' is missing or not a string", "give the record a unique string id")
    domain = item.get("domain")
    if domain is None:  # absent or null: the file's (train-<domain>.json), a caption's "general"
        domain = file_domain or ("general" if split == "captions" else None)
    if domain is None:
        raise fail("'domain' is missing", f'add "domain": one of {", ".join(DOMAINS)}, or use {split}-<domain>.json')
    if domain not in DOMAINS:
        raise fail(f"domain {domain!r} is unknown", f"use one of {', '.join(DOMAINS)}")
    if file_domain is not None and domain != file_domain:
        raise fail(f"domain {domain!r} disagrees with the file name", f"drop the key or move the record to {path.name}")
    image = item.get("image")
    names = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise fail(f"'image' is {image!r}", "give a path relative to the data folder, a list of them, or none")
    images = [_image_path(data_dir, name, verified, fail) for name in names]
    problem = conversation_problem(item.get("conversations"), len(images))
    if problem:
        raise fail(problem, "each record needs human/gpt turns, starting with human, one <image> per image")
    turns = [
        (tag_in_front(a["value"]), b["value"])
        for a, b in zip(item["conversations"][::2], item["conversations"][1::2], strict=True)
    ]
    scoring = _scoring_fields(item, split, fail)
    if split == "test" and len(images) > 1:
        raise fail(f"a test question with {len(images)} images", "the scorers show one image a question: keep one")
    return Record(id=str(rid), domain=domain, images=images, turns=turns, **scoring)


def _image_path(data_dir: Path, name: str, verified: set[Path], fail: Callable[[str, str], ValueError]) -> Path:
    candidates = [data_dir / name, data_dir / "images" / name]  # LLaVA paths may be relative to images/
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise fail(f"image {name!r} does not exist under {data_dir}", "add the file or fix the path")
    if path not in verified:
        try:
            check_decodes(path)
        except UNREADABLE as exc:
            raise fail(f"image {name!r} is not a readable image ({exc})", "replace or remove the file") from None
        verified.add(path)
    return path


def tag_in_front(human: str) -> str:
    """A human turn holding one ``<image>`` as LLaVA's ``preprocess_multimodal`` trains it: the tag moved to the
    front, ``"<image>\\n"`` then the rest stripped (``"What colour is the bus?\\n<image>"``, as about half of
    LLaVA-Instruct-150K asks, is ``"<image>\\nWhat colour is the bus?"``), where the scorers put it too. A turn with
    none, or with several (each marks where its image goes), is kept as written."""
    if human.count(IMAGE_TOKEN) != 1:
        return human
    return f"{IMAGE_TOKEN}\n{human.replace(IMAGE_TOKEN, '').strip()}".strip()


def conversation_problem(conversations: Any, n_images: int) -> str | None:
    """What keeps ``conversations`` from being LLaVA turns for ``n_images`` images, or None."""
    if not isinstance(conversations, list) or not conversations:
        return "'conversations' is missing or empty"
    for t, turn in enumerate(conversations):
        expected = ("human", "gpt")[t % 2]
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return f"turn {t} is not an object with a string 'value'"
        if turn.get("from") != expected:
            return f"turn {t} is from {turn.get('from')!r} where {expected!r} was expected (turns alternate human, gpt)"
    if len(conversations) % 2:
        return f"the last turn ({len(conversations) - 1}) is from 'human' with no gpt answer"
    if empty := [t for t in range(1, len(conversations), 2) if not conversations[t]["value"].strip()]:
        return f"the gpt answer of turn {empty[0]} is empty (training would teach the model to say nothing)"
    if answered := [t for t in range(1, len(conversations), 2) if IMAGE_TOKEN in conversations[t]["value"]]:
        return f"the gpt answer of turn {answered[0]} holds {IMAGE_TOKEN} (an answer cannot show an image)"
    tokens = sum(turn["value"].count(IMAGE_TOKEN) for turn in conversations[::2])
    if tokens != n_images:
        return f"the human turns hold {tokens} {IMAGE_TOKEN} token(s) for {n_images} image(s)"
    return None


def _scoring_fields(item: dict[str, Any], split: str, fail: Callable[[str, str], ValueError]) -> dict[str, Any]:
    kind = item.get("kind")
    if kind is None and split != "test":
        return {}
    if kind not in KINDS:
        raise fail(f"'kind' is {kind!r}", f"test records need kind one of {', '.join(KINDS)}")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise fail("'question' is missing or empty", f"{kind} records need the question text")
    tag_fix = f"remove the tag: the harness puts {IMAGE_TOKEN} before the question itself (one per image)"
    if IMAGE_TOKEN in question:  # asked with the harness's own tag too: more placeholders than images
        raise fail(f"'question' holds {IMAGE_TOKEN}", tag_fix)
    fields: dict[str, Any] = {"kind": kind, "question": question}
    answer = item.get("answer")
    if kind == "choice":
        options = item.get("options")
        if not isinstance(options, list) or not all(isinstance(o, str) and o for o in options):
            raise fail(f"'options' is {options!r}", "choice records need a list of 2 to 26 option strings")
        if not 2 <= len(options) <= MAX_OPTIONS:
            raise fail(f"{len(options)} options", f"choice records take 2 to {MAX_OPTIONS} (lettered A-Z)")
        if tagged := [i for i, o in enumerate(options) if IMAGE_TOKEN in o]:
            raise fail(f"option {tagged[0]} holds {IMAGE_TOKEN}", tag_fix)
        if len(set(options)) != len(options):
            raise fail(f"options {options!r} repeat", "make the options distinct")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
            raise fail(f"answer {answer!r} is not an index into the {len(options)} options", "use 0..n-1")
        return {**fields, "options": options, "answer": answer}
    if kind == "yesno":
        if not isinstance(answer, str) or answer.lower() not in ("yes", "no"):
            raise fail(f"answer {answer!r} is not 'yes' or 'no'", "yesno records answer 'yes' or 'no'")
        pair = item.get("pair")
        if isinstance(pair, bool) or not isinstance(pair, (str, int)) or pair == "":
            raise fail(
                f"'pair' is {pair!r}", "yesno records need a pair id shared with the other question on the image"
            )
        return {**fields, "answer": answer.lower(), "pair": str(pair)}
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise fail(
            f"'answers' is {answers!r}", "open records need a non-empty list of acceptable, non-blank answer strings"
        )
    metric = item.get("metric")
    if metric not in METRICS:
        raise fail(f"'metric' is {metric!r}", f"open records need metric one of {', '.join(METRICS)}")
    return {**fields, "answers": answers, "metric": metric}


def _check_pairs(records: list[Record], path: Path) -> None:
    """MME's acc+ needs each pair to be two different questions on the same image(s), one yes and one no (one
    question answered both ways is never right both times). A pair is one domain's (scoring goes domain by domain):
    one id may name a pair in each domain of a combined file."""
    pairs: dict[tuple[str, str], list[tuple[int, Record]]] = {}
    for i, r in enumerate(records):
        if r.kind == "yesno":
            pairs.setdefault((r.domain, r.pair), []).append((i, r))
    for (_, pair), members in pairs.items():
        i, r = members[-1]
        answers = sorted(m.answer for _, m in members)
        if answers != ["no", "yes"]:
            raise ValueError(
                f"{path}: record {i} (id {r.id!r}): pair {pair!r} has answers {answers}, not one yes and one no; "
                "give each image exactly two yesno questions, one true and one false"
            )
        if members[0][1].images != r.images:
            raise ValueError(
                f"{path}: record {i} (id {r.id!r}): pair {pair!r} asks about different images; "
                "a pair's two questions are about the same image"
            )
        if members[0][1].question == r.question:  # one of the two answers is wrong whatever the model says
            raise ValueError(
                f"{path}: record {i} (id {r.id!r}): pair {pair!r} asks {r.question!r} twice, answered yes and no, "
                "so one of its answers is wrong whatever the model says and acc+ never counts it; ask two different "
                "questions, one true of the image (yes) and one false (no)"
            )


def _check_metrics(records: list[Record], path: Path) -> None:
    """A domain's open questions share one metric: its score is reported as ``open_exact`` or ``open_anls``."""
    first: dict[str, tuple[int, Record]] = {}
    for i, r in enumerate(records):
        if r.kind != "open":
            continue
        j, other = first.setdefault(r.domain, (i, r))
        if r.metric != other.metric:
            raise ValueError(
                f"{path}: record {i} (id {r.id!r}): metric {r.metric!r} in domain {r.domain!r}, whose record {j} "
                f"(id {other.id!r}) is scored by {other.metric!r}; give one domain's open questions one metric"
            )
