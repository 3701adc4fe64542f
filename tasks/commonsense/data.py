"""Commonsense data in LLM-Adapters format: one folder per benchmark with ``test.json`` / ``train.json``.

Sources, in order: ``--data-dir`` / ``HARNESS_DATA_DIR`` (the folder holding the benchmark folders, or
its parent with a ``commonsense/`` inside), else the LLM-Adapters repository online, downloaded once
into the cache. A benchmark without local data is *absent*: reported as such, never scored as zero.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.atomic import atomic_path
from harness.models import cache_dir

# The paper's eight, in Table 1's order, with their label words (shared/data/commonsense/README.md)
BENCHMARKS: dict[str, list[str]] = {
    "ARC-Easy": [f"answer{i}" for i in range(1, 6)],
    "openbookqa": [f"answer{i}" for i in range(1, 5)],
    "social_i_qa": [f"answer{i}" for i in range(1, 4)],
    "ARC-Challenge": [f"answer{i}" for i in range(1, 6)],
    "winogrande": ["option1", "option2"],
    "piqa": ["solution1", "solution2"],
    "boolq": ["true", "false"],
    "hellaswag": [f"ending{i}" for i in range(1, 5)],
}
MIXED_TRAIN = "commonsense_170k.json"
# LLM-Adapters at the commit our reference copy was taken from; HARNESS_COMMONSENSE_URL overrides it
UPSTREAM = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/816657208af4db747803f87ba40a4c71383fed7a"
REQUIRED_KEYS = ("instruction", "output", "answer")


@dataclass(frozen=True)
class DataFile:
    path: Path
    sha256: str
    records: list[dict[str, Any]]


def resolve_data_dir(data_dir: str | None) -> Path:
    """The folder holding the benchmark folders; downloaded from upstream when none is given."""
    given = data_dir or os.environ.get("HARNESS_DATA_DIR")
    if given:
        path = Path(given).expanduser()
        if path.is_file():
            raise ValueError(
                f"data dir {str(path)!r} is a file, not a folder; pass --data-dir (or HARNESS_DATA_DIR) "
                "pointing at a folder of benchmark folders such as ARC-Easy/test.json"
            )
        if not path.is_dir():
            raise ValueError(
                f"data dir {str(path)!r} does not exist; pass --data-dir (or HARNESS_DATA_DIR) "
                "pointing at a folder of benchmark folders such as ARC-Easy/test.json"
            )
        # a broken link here does not keep the data in commonsense/ from being found (it may be anything)
        if not _benchmark_dirs(path, links=False) and _benchmark_dirs(path / "commonsense"):
            path = path / "commonsense"
        if not _benchmark_dirs(path, links=False):  # the wrong folder: said so, not a stray link in it blamed
            for folder in (path, path / "commonsense"):  # or the right one (or its parent), in another format
                check_formats(folder, "test")
            broken = sorted(set(_benchmark_dirs(path)))
            raise ValueError(
                f"data dir {str(path)!r} holds no benchmark folder with a test.json; expected e.g. "
                f"{path / 'ARC-Easy' / 'test.json'}" + (f" (broken links there: {', '.join(broken)})" if broken else "")
            )
        return path
    return download()


def download(base_url: str | None = None) -> Path:
    """Fetch the eight test sets and the mixed training file from LLM-Adapters into the cache."""
    given = "base_url" if base_url else "HARNESS_COMMONSENSE_URL"  # what a URL that is none is named as
    base_url = base_url or os.environ.get("HARNESS_COMMONSENSE_URL", UPSTREAM)
    target = cache_dir() / "data" / "commonsense"
    wanted = [(f"dataset/{b}/test.json", target / b / "test.json") for b in BENCHMARKS]
    wanted.append((f"ft-training_set/{MIXED_TRAIN}", target / MIXED_TRAIN))
    fetched = 0
    for remote, local in wanted:
        if local.is_file():
            fetched += 1
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(f"{base_url}/{remote}", timeout=60) as response, atomic_path(local) as tmp:
                tmp.write_bytes(response.read())
            fetched += 1
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:  # a cut body too
            if local.parent != target and not any(local.parent.iterdir()):
                local.parent.rmdir()  # what upstream lacks stays absent
            if isinstance(exc, ValueError):  # not a URL ("unknown url type"): every file would fail alike
                raise ValueError(
                    f"{given} {base_url!r} is not a URL ({exc}); set it to an http(s) address of LLM-Adapters' "
                    f"files (default {UPSTREAM}), or pass --data-dir (or set HARNESS_DATA_DIR) to local data"
                ) from None
            print(f"warning: could not fetch {remote} ({exc})")
    if not fetched:
        raise ValueError(
            f"no local data and the download from {base_url} failed; pass --data-dir (or set "
            "HARNESS_DATA_DIR) to a folder of LLM-Adapters benchmark folders"
        )
    return target


def _benchmark_dirs(path: Path, split: str = "test", links: bool = True) -> list[str]:
    """The folders in ``path`` with a ``split`` file, a broken link or a folder of that name included, and with
    ``links`` every broken link in ``path`` but the mixed file's and a hidden one's (an editor's ``.#file`` lock
    is a link to nothing), which may be a benchmark folder (read_split then names them: a glob follows links and
    would leave such a benchmark out without a word)."""
    if not path.is_dir():
        return []
    return sorted(
        p.name
        for p in path.iterdir()
        if (p.is_dir() and _there(p / f"{split}.json"))
        or (links and _broken(p) and p.name != MIXED_TRAIN and not p.name.startswith("."))
    )


OTHER_FORMATS = (".jsonl", ".parquet")  # what a split is often shipped as, and is not read here


def check_formats(path: Path, split: str) -> None:
    """Fail on a folder in ``path`` holding ``split`` in another format (``OTHER_FORMATS``) and no ``split``.json:
    it would be absent (a test set) or not trained on (a training set) without a word."""
    if not path.is_dir():
        return
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        other = next((folder / f"{split}{ext}" for ext in OTHER_FORMATS if _there(folder / f"{split}{ext}")), None)
        if other is not None and not _there(folder / f"{split}.json"):
            raise ValueError(
                f"{other} is not read: the harness reads {split}.json, a JSON list of examples with keys "
                f"{', '.join(REQUIRED_KEYS)}; convert it to {folder / f'{split}.json'} or remove it"
            )


def _there(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _broken(path: Path) -> bool:
    """A link to nothing (or to itself, round a loop)."""
    return path.is_symlink() and not path.exists()


def data_file(path: Path) -> Path | None:
    """``path`` if it is a file, None if nothing is there; anything else there (a folder, a broken link) is an
    error naming it, not an absent benchmark or training file."""
    if path.is_file():
        return path
    if not _there(path):
        return None
    what = "a folder" if path.is_dir() else "a broken link" if not path.exists() else "not a regular file"
    raise ValueError(f"{path} is {what}, not a readable file; replace it with the JSON file or remove it")


def mixed_train(data_dir: Path) -> Path | None:
    """The mixed training file when present: it replaces every ``<benchmark>/train.json``, which are then not read."""
    return data_file(data_dir / MIXED_TRAIN)


def benchmark_names(data_dir: Path, split: str = "test") -> list[str]:
    """The paper's eight (present or not) then any further folder with a ``split`` file, or broken link (which
    read_split refuses, naming it), by name: a folder with only a train.json is trained on and not scored. A folder
    with the split in another format only is an error (``check_formats``)."""
    check_formats(data_dir, split)
    return list(BENCHMARKS) + [b for b in _benchmark_dirs(data_dir, split) if b not in BENCHMARKS]


def labels_for(benchmark: str, records: list[dict[str, Any]]) -> list[str]:
    return BENCHMARKS.get(benchmark) or sorted({r["answer"] for r in records})


def read_split(data_dir: Path, benchmark: str, split: str) -> DataFile | None:
    folder = data_dir / benchmark
    if _broken(folder):  # its split files cannot be seen: an error, as a broken link to one of them is (data_file)
        raise ValueError(
            f"{folder} is a broken link, not a benchmark folder; point it at the folder holding {benchmark}'s "
            "test.json / train.json, or remove it"
        )
    path = data_file(folder / f"{split}.json")
    return read_json_file(path) if path is not None else None


def read_json_file(path: Path) -> DataFile:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror or exc}); fix its permissions or remove it") from None
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix or remove the file"
        ) from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON (not UTF-8: byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "fix or remove the file"
        ) from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} must be a non-empty JSON list of examples with keys {', '.join(REQUIRED_KEYS)}")
    for i, record in enumerate(records):
        problem = _example_problem(record)
        if problem:
            raise ValueError(
                f"{path}: example {i} lacks one of the string keys {', '.join(REQUIRED_KEYS)} ({problem}); "
                "fix or remove the example (LLM-Adapters format)"
            )
    return DataFile(path, hashlib.sha256(raw).hexdigest(), records)


def _example_problem(record: Any) -> str | None:
    """What keeps ``record`` from being an LLM-Adapters example, or None."""
    if not isinstance(record, dict):
        return f"it is {_json_type(record)}, not an object"
    for key in REQUIRED_KEYS:
        if key not in record:
            return f"{key!r} is missing"
        if not isinstance(record[key], str):
            return f"{key!r} is {_json_type(record[key])}, not a string"
    return None


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def provenance_name(path: Path) -> str:
    """A training file as records name it: its folder and its name."""
    return f"{path.parent.name}/{path.name}"


def question_key(record: dict[str, Any]) -> tuple[str, str]:
    """What makes two records one question: the instruction and the input (a passage) the prompt is built from;
    records that share an instruction and differ in their passage are different questions."""
    return record.get("instruction"), record.get("input") or ""


def ends_with_answer(record: dict[str, Any]) -> bool:
    """Whether the record's output ends with its answer, as "the correct answer is <answer>" does: what choice,
    generate and lm-eval train on (the output) must give the answer, and is all they check of a training example."""
    return re.search(rf"(?<!\w){re.escape(record['answer'])}$", record["output"].strip()) is not None


def training_files(data_dir: Path) -> list[tuple[str, DataFile]]:
    """The training files, read, each with the name its records are tagged with (``training_mix``): the mixed file
    alone (``mixed``) when present, else every ``<benchmark>/train.json``; ``[]`` where there are none."""
    mixed = mixed_train(data_dir)
    if mixed is not None:
        return [("mixed", read_json_file(mixed))]
    return [(b, f) for b in benchmark_names(data_dir, "train") if (f := read_split(data_dir, b, "train")) is not None]


def read_again(path: Path, sha256: str) -> DataFile:
    """A training file read as it was when its hash (``sha256``, in the run's identity) was taken: one that changed
    or went since is an error, not another mix trained under the same identity."""
    if data_file(path) is None:
        raise ValueError(
            f"{path} was read when the command started and is gone now; put it back, or run the command again to "
            "train on the data there now"
        )
    again = read_json_file(path)
    if again.sha256 != sha256:
        raise ValueError(
            f"{path} changed after the command started (sha256 {sha256[:12]} then, {again.sha256[:12]} now): the "
            "runs are named after the data read then; put the file back, or run the command again to train on it"
        )
    return again


def training_mix(
    data_dir: Path,
    cap: int | None,
    seed: int,
    held_out: frozenset[tuple[str, str]] = frozenset(),
    files: list[tuple[str, DataFile]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training records (each tagged with its ``benchmark``) and a provenance list of the files used: ``files``
    (``training_files``), else those in ``data_dir`` now. A record whose prompt (``question_key``: instruction and
    input) is in ``held_out`` (the test questions) is left out after the shuffle and before the cap, so a mix that
    drew none of them is the one it was before they were left out (``left_out``: how many of the file's examples
    are test questions, taken out of what the cap draws from)."""
    files = training_files(data_dir) if files is None else files
    if not files:
        raise ValueError(f"no training data in {data_dir}: need {MIXED_TRAIN} or at least one <benchmark>/train.json")
    rng = random.Random(seed)
    records, provenance = [], []
    for benchmark, data in files:
        chosen = list(data.records)
        rng.shuffle(chosen)
        kept = [r for r in chosen if question_key(r) not in held_out]
        chosen = kept[:cap] if cap else kept
        records += [{**r, "benchmark": benchmark} for r in chosen]
        provenance.append(
            {
                "file": provenance_name(data.path),
                "sha256": data.sha256,
                "examples": len(data.records),
                "used": len(chosen),
            }
            | ({"left_out": len(data.records) - len(kept)} if len(kept) < len(data.records) else {})
        )
    rng.shuffle(records)
    return records, provenance
