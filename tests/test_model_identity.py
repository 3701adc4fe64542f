"""A local model folder's weights are identified by their sha256 (``harness.identity``): recorded in each run's
``model_info``, and a finished run whose folder now holds other weights is refused, not skipped as "done already".

From a review: the run id hashes the ``--model`` string only, so a folder whose weights were replaced kept its
finished runs (the new model was never scored), and the records did not say which weights they measured."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from harness import identity
from harness.identity import model_digest
from harness.records import RECORD, read_record
from tests.conftest import tiny_llama


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Digests cached in this test's folder, not the user's."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _folder(root):
    """A model folder as from_pretrained reads it, with a diffusers-style subfolder, a tokenizer file (not weights)
    and a training checkpoint's subfolder (not read by from_pretrained: left out, as has_weights leaves it)."""
    folder = root / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "checkpoint-2").mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 5000)
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x02" * 300)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "checkpoint-2" / "model.safetensors").write_bytes(b"\x03" * 10)
    return folder


def _expected(folder, names):
    lines = "".join(f"{n} {hashlib.sha256((folder / n).read_bytes()).hexdigest()}\n" for n in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


def _counting_open(monkeypatch):
    """Count the files ``harness.identity`` opens to hash (its module-level ``open``)."""
    opened = []

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(identity, "open", counting, raising=False)
    return opened


def test_the_digest_covers_weights_and_configs_and_a_second_call_reads_no_file(tmp_path, monkeypatch, own_cache):
    folder = _folder(tmp_path)
    opened = _counting_open(monkeypatch)
    first = model_digest(str(folder))
    names = ["config.json", "model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert first == {"weights_sha256": _expected(folder, names), "files": 4}
    assert len(opened) == 4 and (own_cache / "digests.json").is_file()
    opened.clear()
    assert model_digest(str(folder)) == first
    assert opened == []  # every file's sha256 from the cache: a 16 GB model is hashed once
    monkeypatch.chdir(tmp_path)
    assert model_digest("model") == first  # the folder as given (relative): the same files, the same digest


def test_the_digest_changes_with_the_bytes_even_of_the_same_size_with_the_mtime_put_back(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    before = model_digest(str(folder))
    weights = folder / "model.safetensors"
    st = weights.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity: the rewrite moves the ctime
    weights.write_bytes(b"\x04" * 5000)  # the same size, the same inode
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime as it was (cp -p, rsync -t)
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    opened = _counting_open(monkeypatch)
    after = model_digest(str(folder))
    assert after["weights_sha256"] != before["weights_sha256"] and opened == [os.path.realpath(weights)]
    names = ["config.json", "model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert after["weights_sha256"] == _expected(folder, names)
    (folder / "tokenizer.json").write_text('{"other": 1}')  # no weight or config file: the same weights
    assert model_digest(str(folder)) == after


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, own_cache):
    folder = _folder(tmp_path)
    own_cache.mkdir()
    (own_cache / "digests.json").write_text("{not json")
    first = model_digest(str(folder))
    assert first["files"] == 4
    assert len(json.loads((own_cache / "digests.json").read_text())["files"]) == 4
    (own_cache / "digests.json").write_text('{"version": 1, "files": {"%s": "junk"}}' % (folder / "config.json"))
    assert model_digest(str(folder)) == first  # an entry of another shape: hashed again


def test_no_digest_for_hub_ids_the_embedded_model_or_random_weights(tmp_path, monkeypatch, tiny_model):
    from harness.runner import _weights_digest, build_specs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded").mkdir()  # even beside a folder of that name: the embedded model is no local folder
    assert model_digest("embedded") is None
    assert model_digest("HuggingFaceTB/SmolLM2-135M") is None
    [spec] = build_specs("commonsense", ["base"], [0], "smoke", model=str(tiny_model), random_weights=True)
    assert _weights_digest(spec) is None  # its weights are not read: none to identify


# -- end to end: a base run of a tiny Llama folder, in this process ------------------------------------------------


def _tiny_folder(tmp_path, seed: int = 0):
    """A 2-layer Llama with its own small tokenizer (word level, 128 ids), its weights from ``seed``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "tiny"
    tiny_llama(seed=seed, layers=2).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", "yes", "no", "true", "false"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(folder)
    return folder


def test_a_finished_run_of_a_folder_whose_weights_changed_is_refused_not_skipped(data_dir, tmp_path, capfd):
    from harness.cli import main

    folder = _tiny_folder(tmp_path)
    small = tmp_path / "data" / "boolq"
    small.mkdir(parents=True)
    (small / "test.json").write_text(json.dumps(json.loads((data_dir / "boolq" / "test.json").read_text())[:2]))
    runs = tmp_path / "runs"
    args = ["run", "--methods", "base", "--task", "commonsense", "--preset", "smoke", "--model", str(folder)]
    args += ["--data-dir", str(small.parent), "--runs-dir", str(runs), "--quiet", "--no-leaderboard"]

    def run(*extra: str) -> tuple[int, str, str]:
        capfd.readouterr()
        code = main([*args, *extra])
        return code, *capfd.readouterr()

    def weights() -> str:
        return read_record(runs / run_id / RECORD)["run"]["config"]["model_info"]["weights_sha256"]

    code, out, err = run()
    assert code == 0, err[-2000:]
    [run_id] = [p.name for p in runs.iterdir()]
    first = weights()
    assert first == model_digest(str(folder))["weights_sha256"]  # the record says which weights it measured
    assert read_record(runs / run_id / RECORD)["run"]["config"]["model_info"]["weights_files"] == 2

    code, out, err = run()  # the same weights: done already, as before
    assert code == 0 and "done already (skipped; --force re-runs it)" in out, out + err

    tiny_llama(seed=1, layers=2).save_pretrained(folder)  # other weights, in the same folder
    new = model_digest(str(folder))["weights_sha256"]
    code, out, err = run()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (
        f"the model folder {str(folder)!r} changed since run {run_id} in {str(runs)!r} finished (weights "
        f"{first[:8]} -> {new[:8]}): --force re-runs it (its record is replaced when the re-run succeeds), or give "
        "the changed model another folder"
    ) in err, err
    assert weights() == first  # the finished record as it was

    code, out, err = run("--force")
    assert code == 0, err[-2000:]
    assert weights() == new  # the re-run replaced it
    code, out, err = run()
    assert code == 0 and "done already" in out, out + err

    record = json.loads((runs / run_id / RECORD).read_text())  # a record from before the digest was kept
    del record["run"]["config"]["model_info"]
    (runs / run_id / RECORD).write_text(json.dumps(record))
    tiny_llama(seed=2, layers=2).save_pretrained(folder)
    code, out, err = run()
    assert code == 0 and "done already" in out, out + err  # not known: skipped, as every committed record is
