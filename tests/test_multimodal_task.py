"""The multimodal task through the core: every method trains and scores on a tiny LLaVA-style model
(tiny Llama + a random EfficientNet-Lite0 at 64 px: 4 image tokens) on the generated three-domain data;
the reduced LLaVA (transformers) shape runs a step and scoring; bad data fails before any model loads."""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from pathlib import Path

import pytest

from harness.runner import build_specs, run_all
from tests.conftest import ALL_METHODS

TWEMOJI = Path(__file__).resolve().parents[2] / "shared" / "data" / "diffusion" / "twemoji-64"


@pytest.fixture(autouse=True)
def twemoji(monkeypatch):
    if not (TWEMOJI / "metadata.jsonl").is_file():
        pytest.fail(f"Twemoji data not found at {TWEMOJI}; the generated multimodal data needs it")
    monkeypatch.setenv("HARNESS_TWEMOJI_DIR", str(TWEMOJI))


@pytest.fixture
def tiny_llava_style(tmp_path) -> str:
    text = {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "eos_token_id": 2,
    }
    folder = tmp_path / "tiny-llava-style"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llava_style", "text_config": text, "image_size": 64})
    )
    return str(folder)


def _run(model: str, methods: list[str], tmp_path: Path, **overrides) -> list[dict]:
    specs = build_specs("multimodal", methods, [0], "smoke", model=model, **overrides)
    return run_all(specs, tmp_path / "runs", None, progress=False)


def test_a_record_holding_the_placeholder_token_literally_is_refused_before_stage1_and_training(
    tiny_llava_style, tmp_path
):
    """From a review: a literal placeholder token in the data was refused only when training (or, in a test
    question, scoring) tokenised it: after stage 1, or after the whole training."""
    import torch
    from PIL import Image

    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tests.test_multimodal_data import _test_records, _train, _write

    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(folder / "images" / "a.png")
    _write(folder, "train.json", [_train("t1"), _train("t2", "math")])
    test = _test_records()
    test[0]["options"] = ["3", "11 <empty_output>", "7", "9"]  # a choice option: read in the prompt
    _write(folder, "test.json", test)

    def load(**options):
        task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat", **options))
        return task.load(tiny_llava_style, torch.device("cpu"), random_weights=True, seed=0, trust_remote_code=False)

    with pytest.raises(ValueError, match=r"record 'c1' holds text '11 <empty_output>' that tokenises to the "
                       r"model's image placeholder \(id 16, '<empty_output>'\); remove that token"):  # fmt: skip
        load()
    _write(folder, "test.json", _test_records())
    bad = _train("t2", "math")
    bad["conversations"][1]["value"] = "a cat <empty_output>"  # a trained answer
    _write(folder, "train.json", [_train("t1"), bad])
    with pytest.raises(ValueError, match=r"record 't2' holds text 'a cat <empty_output>'"):
        load()
    assert load(train_sources=("general",)).model is not None  # math not trained: its answer is never read


def test_every_method_trains_and_scores_on_the_multimodal_task(tiny_llava_style, tmp_path):
    records = _run(tiny_llava_style, ["base", *ALL_METHODS], tmp_path)
    by_method = {r["run"]["config"]["method"]: r for r in records}
    assert set(by_method) == {"base", *ALL_METHODS}
    for method, record in by_method.items():
        assert record["run"]["status"] == "success", (method, record["run"]["error"])
        for domain in ("general", "document", "math"):
            entry = record["eval"][domain]
            assert (
                0 <= entry["value"] <= 100 and entry["n"] == len(entry["scores"]) == 3
            )  # 1 choice, 1 yes/no pair (one item), 1 open
            assert set(entry["metrics"]) >= {"mmb_circular", "mme_acc", "mme_acc_plus"}
        if method == "base":
            continue
        train = record["train"]
        assert train["steps"] == 3 and train["trainable_params"] > 0
        flops = train["flops_per_step"]
        assert flops["total"] > flops["adapter"] > 0, flops  # the vision encoder and image tokens counted too
        shape = flops["micro_batches"][0]["shape"]
        assert shape[3] == 2 and shape[1] > 4  # two images in the micro-batch, 4 image tokens each
        info = record["run"]["config"]["model_info"]
        assert info["stage2_projector"].startswith("frozen")  # the embedded presets' stage 2
        assert train["task_trained_params"] == 0
    lines = (tmp_path / "runs" / by_method["lora"]["run"]["id"] / "predictions.jsonl").read_text().splitlines()
    assert {json.loads(line)["kind"] for line in lines} == {"choice", "yesno", "open"}
    again = _run(tiny_llava_style, ["base", *ALL_METHODS], tmp_path)  # the same data: every run is skipped
    assert [r["run"]["created_at"] for r in again] == [r["run"]["created_at"] for r in records]


def test_a_projector_trained_in_stage2_is_counted_apart_and_saved(tiny_llava_style, tmp_path, monkeypatch):
    from tasks.multimodal import presets

    monkeypatch.setitem(presets.EMBEDDED_SETTINGS, "train_projector", True)  # LLaVA's stage 2, as `paper`
    [record] = _run(tiny_llava_style, ["lora"], tmp_path)
    assert record["run"]["status"] == "success", record["run"]["error"]
    info, train = record["run"]["config"]["model_info"], record["train"]
    assert info["stage2_projector"].startswith("trained with every method's adapter")
    assert train["task_trained_params"] == info["projector_params"] > 0  # counted apart from the adapter's
    assert (tmp_path / "runs" / record["run"]["id"] / "adapter" / "task_params.pt").is_file()


def test_single_domain_rows_train_on_one_domain_and_join_the_table(tiny_llava_style, tmp_path):
    from harness.leaderboard import write_leaderboards

    records = _run(tiny_llava_style, ["lora"], tmp_path, task_overrides={"train_sources": ("math",)})
    records += _run(tiny_llava_style, ["lora"], tmp_path)
    assert records[0]["run"]["config"]["task_options"]["train_sources"] == ["math"]
    files = records[0]["run"]["config"]["data"]["files"]
    assert any(f["file"] == "train.json" for f in files)
    write_leaderboards(tmp_path / "runs", tmp_path / "board")
    import pandas as pd

    methods = set(pd.read_csv(tmp_path / "board" / "multimodal.csv")["method"])
    assert {"lora (trained_on=math)", "lora"} <= methods, methods  # two rows of one section


def test_a_llava_style_folder_with_its_own_tokenizer_trains_with_it_and_one_too_small_is_refused(tmp_path):
    """Random-weight LLaVA-style models tokenize with the config folder's own tokenizer files (as the text
    suites do); without them SmolLM2's 49,152 ids would not fit a small vocabulary: refused saying what to do."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tasks.multimodal import resolve_data

    text = {"model_type": "llama", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": 2}  # fmt: skip
    folder = tmp_path / "own-tokenizer"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llava_style", "text_config": text, "image_size": 64, "image_token_id": 3})
    )
    too_small = (
        r"vocab_size \(512\) is smaller than the embedded SmolLM2-135M-Instruct tokenizer \(49152 tokens\); put the "
        r"model's own tokenizer files"
    )
    # before any run (Task.check_built_tokenizer, in preflight): it was found run by run, a failed record each, after
    # the embedded tokenizer's conversion (a review: preflight's tokenizer check covered the causal-LM task only)
    with pytest.raises(ValueError, match=too_small):
        _run(str(folder), ["lora"], tmp_path)
    assert not list((tmp_path / "runs").glob("*/record.json"))
    from harness.runner import preflight

    with pytest.raises(ValueError, match=too_small):
        preflight(build_specs("multimodal", ["lora", "base"], [0], "smoke", model=str(folder))[1:])  # zero-shot too

    data, _ = resolve_data(None)  # the generated data: a word-level vocabulary of its questions and answers
    words = [w for f in sorted(data.glob("*.json")) for w in re.findall(r"\w+|[^\w\s]", f.read_text())]
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", "<image-slot>", *dict.fromkeys(words)][:512])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    own = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    own.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for token_id, what in ((512, "outside the vocabulary"), (2, "a pad/eos/bos id")):  # 2: <eos>
        (folder / "config.json").write_text(json.dumps({**config, "image_token_id": token_id}))
        [refused] = _run(str(folder), ["lora"], tmp_path)
        assert (
            f"image_token_id {token_id} is {what} (vocab_size 512, the tokenizer in own-tokenizer/); set "
            "image_token_id in its config.json to an id its tokenizer never produces"
        ) in refused["run"]["error"], refused["run"]["error"]
    (folder / "config.json").write_text(json.dumps(config))
    preflight(build_specs("multimodal", ["lora"], [0], "smoke", model=str(folder)))  # its own tokenizer fits
    [record] = _run(str(folder), ["lora"], tmp_path)  # the failed run is run again
    assert record["run"]["status"] == "success", record["run"]["error"]
    assert record["run"]["config"]["model_info"]["tokenizer"] == "the tokenizer in own-tokenizer/"
    assert record["train"]["steps"] == 3 and record["eval"]["math"]["n"] == 3


@pytest.mark.parametrize(
    "field, value, kind",
    [("image_token_id", "16", "integer"), ("image_token_id", True, "integer"), ("image_size", 64.5, "integer"),
     ("train_projector", "yes", "boolean"), ("text_config", [], "object"), ("projector", 2, "string")],
)  # fmt: skip
def test_a_llava_style_config_field_of_the_wrong_type_is_refused_when_the_model_is_checked(
    tiny_llava_style, field, value, kind
):
    """From a review: a string image_token_id passed every check, and the run failed after its record was started,
    with a bare TypeError from comparing it with the vocabulary size."""
    from harness.runner import preflight

    path = Path(tiny_llava_style) / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ValueError, match=rf"config.json: {field} is {re.escape(repr(value))}, not a JSON {kind}"):
        preflight(build_specs("multimodal", ["lora"], [0], "smoke", model=tiny_llava_style))  # before weights load


def test_a_llava_style_config_given_under_the_home_as_tilde_is_read_as_one(tiny_llava_style, tmp_path, monkeypatch):
    """From a review: ``_llava_style("~/cfg")`` did not expand the path, so the runner's checks (which expand it)
    read the folder as a transformers config and refused it: "model_type 'llava_style' is not one transformers
    knows"."""
    from harness.runner import preflight
    from tasks.multimodal import MultimodalTask, _llava_style
    from tasks.multimodal.model import LlavaStyle

    monkeypatch.setenv("HOME", str(tmp_path))
    given = "~/" + Path(tiny_llava_style).name
    assert _llava_style(given) == _llava_style(tiny_llava_style) is not None
    MultimodalTask.check_model(given)  # a zero-shot run's check
    assert isinstance(MultimodalTask.build_meta(given).model, LlavaStyle)
    preflight(build_specs("multimodal", ["base", "lora"], [0], "smoke", model=given))


@pytest.mark.parametrize(
    "text_config, said",
    [({}, "None"), ({"model_type": "no-such-model"}, "'no-such-model'")],
    ids=["missing", "unknown"],
)
def test_a_llava_style_text_config_without_a_known_model_type_is_refused_naming_the_file(
    tiny_llava_style, text_config, said
):
    """From a review: a ``text_config`` without ``model_type`` passed the checks and failed as the model was built,
    with a bare TypeError from ``AutoConfig.for_model`` naming no file or field."""
    from harness.runner import preflight

    path = Path(tiny_llava_style) / "config.json"
    config = json.loads(path.read_text())
    text = {k: v for k, v in config["text_config"].items() if k != "model_type"} | text_config
    path.write_text(json.dumps({**config, "text_config": text}))
    refused = rf"config.json: text_config.model_type is {re.escape(said)}, not a language model transformers knows"
    for specs in (["base"], ["lora"]):  # a zero-shot run's check and a trained one's
        with pytest.raises(ValueError, match=refused):
            preflight(build_specs("multimodal", specs, [0], "smoke", model=tiny_llava_style))


def test_a_llava_style_vision_dim_other_than_the_encoders_is_refused_when_the_model_is_checked(tiny_llava_style):
    """From a review: ``vision_dim`` 768 passed every check and the run failed at the model's first forward with a
    shape mismatch; refused before any run, naming the file, the field and the value it must be."""
    from harness.runner import preflight

    path = Path(tiny_llava_style) / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "vision_dim": 768}))
    refused = "config.json: vision_dim 768 is not the width of efficientnet-lite0's features; set it to 1280"
    for specs in (["base"], ["lora"]):
        with pytest.raises(ValueError, match=refused):
            preflight(build_specs("multimodal", specs, [0], "smoke", model=tiny_llava_style))


@pytest.mark.parametrize(
    "field, value, refused",
    [
        ("text_config", "t5", "text_config.model_type is 't5', a model transformers knows but not a causal language"),
        ("text_config", "clip_vision_model", "text_config.model_type is 'clip_vision_model', a model transformers"),
        ("projector", "linear", "projector 'linear' is not known; use 'mlp2x_gelu' in the llava_style config"),
    ],
)
def test_a_llava_style_text_model_or_projector_the_harness_cannot_build_is_refused_naming_the_file(
    tiny_llava_style, field, value, refused
):
    """From a review: a ``text_config.model_type`` transformers knows but builds no causal LM from (t5,
    clip_vision_model), or a projector other than mlp2x_gelu, passed the checks: a base run failed as its model was
    built, with a long message naming no file."""
    from harness.runner import preflight

    path = Path(tiny_llava_style) / "config.json"
    config = json.loads(path.read_text())
    if field == "text_config":
        config["text_config"]["model_type"] = value
    else:
        config[field] = value
    path.write_text(json.dumps(config))
    for specs in (["base"], ["lora"]):  # a zero-shot run's check and a trained one's
        with pytest.raises(ValueError, match=rf"config.json: {re.escape(refused)}"):
            preflight(build_specs("multimodal", specs, [0], "smoke", model=tiny_llava_style))


def test_unknown_domain_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown domain 'maths'.*general, document, math"):
        build_specs("multimodal", ["lora"], [0], "smoke", task_overrides={"train_sources": ("maths",)})


@pytest.mark.parametrize("preset", ["smoke", "embedded"])
@pytest.mark.parametrize("setting", ["stage1", "generated_data"])
def test_the_stage1_and_data_settings_are_part_of_the_run_id(monkeypatch, preset, setting):
    from tasks.multimodal import generate, presets

    [spec] = build_specs("multimodal", ["lora"], [0], preset)
    settings = spec.to_dict()["extra"]["task_settings"]
    assert settings["stage1"] == presets.STAGE1
    assert settings["generated_data"] == {"version": generate.VERSION, **presets.EMBEDDED_DATA}
    before = spec.run_id
    changed = presets.EMBEDDED_SETTINGS[setting]  # a longer stage 1, a new data version: a new run
    monkeypatch.setitem(changed, "steps" if setting == "stage1" else "version", 10_000)
    [after] = build_specs("multimodal", ["lora"], [0], preset)
    assert after.run_id != before


@pytest.mark.parametrize("preset", ["smoke", "embedded"])
def test_a_run_on_the_users_data_does_not_carry_the_generated_datas_settings(tmp_path, preset):
    [generated] = build_specs("multimodal", ["lora"], [0], preset)
    [given] = build_specs("multimodal", ["lora"], [0], preset, task_overrides={"data_dir": str(tmp_path)})
    settings = given.to_dict()["extra"]["task_settings"]
    assert "generated_data" not in settings and settings["data"] == "given"
    assert settings["stage1"] == generated.to_dict()["extra"]["task_settings"]["stage1"]  # the rest kept
    assert given.run_id != generated.run_id


def test_harness_run_and_run_all_on_the_users_data_record_it_as_given(tmp_path, monkeypatch):
    """From a review: `harness run --data-dir` passed the folder to run_all only, so the specs kept the generated
    data's settings (and run id); run_all given a folder now sets the specs' settings for it too."""
    import harness.runner as runner
    from harness.cli import main

    seen = []
    monkeypatch.setattr(runner, "run_all", lambda specs, runs, data_dir, **kw: seen.append((specs, data_dir)) or [])
    main(["run", "--task", "multimodal", "--methods", "lora", "--preset", "smoke", "--data-dir", str(tmp_path),
          "--runs-dir", str(tmp_path / "runs"), "--no-leaderboard"])  # fmt: skip
    [([spec], data_dir)] = seen
    assert spec.extra["task_settings"]["data"] == "given" and "generated_data" not in spec.extra["task_settings"]
    assert data_dir == str(tmp_path) and spec.task_options.data_dir == str(tmp_path)
    [built] = build_specs("multimodal", ["lora"], [0], "smoke")  # the API: specs built first, the folder given later
    on_data = runner._on_data(built, str(tmp_path))
    assert on_data.run_id == spec.run_id and on_data.task_options.data_dir == str(tmp_path)
    assert runner._on_data(spec, str(tmp_path)).run_id == spec.run_id
    # a caller's own change to the spec's settings stays (a review: they were rebuilt from the preset's)
    changed = dataclasses.replace(
        built, extra={**built.extra, "task_settings": {**built.extra["task_settings"], "x": 1}}
    )
    assert runner._on_data(changed, str(tmp_path)).extra["task_settings"]["x"] == 1


def test_the_reduced_llava_shape_trains_and_scores(tmp_path):
    from harness.models import load_config_dict
    from tasks.multimodal.model import PAPER_ID, reduced_llava_config

    folder = tmp_path / "llava-reduced"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(reduced_llava_config(load_config_dict(PAPER_ID))))
    [record] = _run(str(folder), ["lora"], tmp_path, random_weights=True)
    assert record["run"]["status"] == "success", record["run"]["error"]
    assert record["train"]["flops_per_step"]["total"] > 0
    assert set(record["eval"]) == {"general", "document", "math"}


# LLaVA-1.5's processor chat template (llava-hf/llava-1.5-7b-hf's chat_template.jinja): it reads only a list of
# {"type": "image"|"text"} parts, images first, and renders a string content as nothing
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_a_llava_folder_saved_with_llavas_chat_template_keeps_the_question_and_image_and_trains(tmp_path):
    """From a review: a LLaVA folder saved as the harness says (``processor.save_pretrained``) carries LLaVA's own
    chat template, which reads content only as a list of typed parts; the prompt was given a string, so it rendered
    as "USER: ASSISTANT:": an image example failed in LLaVA's forward (no image tokens) and a text-only one trained
    on its answer with no question. The template now gets parts, the image where ``<image>`` was."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from harness.models import load_config_dict
    from tasks.multimodal import model as mm
    from tasks.multimodal.recipe import Formatter
    from tests.test_multimodal_data import _test_records, _train, _write
    from tests.test_multimodal_model import tiny_word_tokenizer

    torch.manual_seed(0)
    config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
    model, processor = mm.build_paper(mm.PAPER_ID, random_weights=True, config=config, tokenizer=tiny_word_tokenizer())
    processor.chat_template = LLAVA_15_TEMPLATE
    folder = tmp_path / "llava"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)  # writes chat_template.jinja, which the tokenizer loads too
    loaded = AutoProcessor.from_pretrained(folder)
    assert loaded.tokenizer.chat_template == LLAVA_15_TEMPLATE
    fmt = Formatter(model, loaded)
    assert fmt.prompt("<image>\nthe cat") == "USER: <image>\nthe cat ASSISTANT:"
    assert fmt.prompt("a photo of the dog") == "USER: a photo of the dog ASSISTANT:"  # a text-only turn
    later = fmt.prompt("the dog", [("<image>\nthe cat", "a photo")])
    assert later == "USER: <image>\nthe cat ASSISTANT: a photo USER: the dog ASSISTANT:"
    assert fmt.ids(fmt.prompt("<image>\nthe cat")).count(model.config.image_token_id) == fmt.tokens_per_image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(data / "images" / "a.png")  # the test records'
    Image.new("RGB", (8, 8), "blue").save(data / "images" / "b.png")
    train = [_train(f"i{k}", image="images/b.png") for k in range(5)] + [_train(f"t{k}", image=None) for k in range(3)]
    _write(data, "train.json", train)  # t0-t2: text only
    _write(data, "test.json", _test_records("general"))
    specs = build_specs("multimodal", ["lora"], [0], "smoke", model=str(folder), task_overrides={"data_dir": str(data)})
    [record] = run_all(specs, tmp_path / "runs", None, progress=False)
    assert record["run"]["status"] == "success", record["run"]["error"]
    assert record["train"]["steps"] > 0


def test_the_paper_preset_resolves_offline():
    [spec] = build_specs("multimodal", ["effilora"], [0], "paper")
    assert spec.model == "llava-hf/llava-1.5-7b-hf" and spec.method_options["r"] == 32
    assert spec.method_options["heads"] == 3 and "o_proj" in spec.method_options["targets"]


def test_lmms_eval_and_the_native_scorer_make_the_same_predictions(tiny_llava_style, tmp_path, monkeypatch):
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    import torch

    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import native

    # a random tiny model picks the same letter for every question and rotation, which a mix-up of questions or
    # rotations on the way back from lmms-eval would leave unchanged (from a review): favour a candidate by the prompt
    scores_of = native.candidate_logprobs

    def varied(model, fmt, asks, cands):
        scores = scores_of(model, fmt, asks, cands)
        return [
            [x + 100.0 * (k == zlib.crc32(h.encode()) % len(s)) for k, x in enumerate(s)]
            for (h, _), s in zip(asks, scores, strict=True)
        ]

    monkeypatch.setattr(native, "candidate_logprobs", varied)
    task = TASKS.get("multimodal")(TaskOptions(eval_limit=2, template="chat"))
    loaded = task.load(tiny_llava_style, torch.device("cpu"), random_weights=True, seed=0, trust_remote_code=False)
    ours = task.evaluate(loaded, "native", 4, tmp_path / "native.jsonl", progress=False)
    theirs = task.evaluate(loaded, "lmms-eval", 4, tmp_path / "lmms.jsonl", progress=False)
    native_lines = [json.loads(line) for line in (tmp_path / "native.jsonl").read_text().splitlines()]
    lmms_lines = [json.loads(line) for line in (tmp_path / "lmms.jsonl").read_text().splitlines()]
    assert len(native_lines) == len(lmms_lines) == 24
    assert len({str(a["pred"]) for a in native_lines if a["kind"] == "choice"}) == 6  # the picks vary
    assert {a["pred"] for a in native_lines if a["kind"] == "yesno"} == {"yes", "no"}
    for a, b in zip(native_lines, lmms_lines, strict=True):
        assert (a["id"], a["pred"], a["score"]) == (b["id"], b["pred"], b["score"])
    assert {d: e["scores"] for d, e in ours.items()} == {d: e["scores"] for d, e in theirs.items()}
    # the guessers of an --eval-limit run take their answers from the domain's every question (from a review)
    from tasks.multimodal import baseline_scores, by_item

    for domain, entry in ours.items():
        limited, every = task.test_records(domain), [r for r in task._test if r.domain == domain]
        expected = {k: [round(x, 4) for x in by_item(limited, v)] for k, v in baseline_scores(limited, every).items()}
        assert entry["baselines"] == expected, domain


def test_lmms_eval_tasks_prompts_without_an_image_tag_get_one_per_image_in_front(char_tokenizer, tmp_path):
    """From a review: lmms-eval's own tasks send the bare question (``mme``'s doc_to_text), and its model wrappers
    put the image tokens in front; HarnessLMM passed it on, and the model stopped on 0 placeholders for 1 image."""
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    from types import SimpleNamespace

    from PIL import Image

    from tasks.multimodal.lmms_eval_protocol import HarnessLMM
    from tasks.multimodal.recipe import Formatter
    from tests.test_multimodal_model import tiny_model

    model = tiny_model()
    lmm = HarnessLMM(model, Formatter(model, char_tokenizer), batch_size=2)
    docs = [Image.new("RGB", (8, 8), "red"), None, [Image.new("RGB", (8, 8), "red")] * 2]
    lmm.task_dict = {"mme": {"test": docs}}

    def visuals(doc):
        return [] if doc is None else doc if isinstance(doc, list) else [doc]

    def request(context: str, doc_id: int):
        return SimpleNamespace(args=(context, {"max_new_tokens": 2}, visuals, doc_id, "mme", "test"))

    asks = [lmm._ask(request(c, i).args) for c, i in [("Is it red?", 0), ("Is it red?", 1), ("Same?", 2)]]
    assert [(c, len(v)) for c, v in asks] == [
        ("<image>\nIs it red?", 1),
        ("Is it red?", 0),
        ("<image>\n" * 2 + "Same?", 2),
    ]
    assert lmm._ask(request("Look: <image>\nIs it red?", 0).args)[0] == "Look: <image>\nIs it red?"  # placed: kept
    assert all(isinstance(a, str) for a in lmm.generate_until([request("Is it red?", 0), request("Hi", 1)]))


def test_open_answers_longer_than_the_cap_are_decoded_long_enough_by_both_protocols(monkeypatch):
    """From a review: open answers were decoded for 12 tokens at most, and SmolLM2 reads a digit a token: a
    reference such as "$1,234,567.89" (13) could never be said in full. Data whose answers fit keeps 12."""
    from types import SimpleNamespace

    from tasks.multimodal import native
    from tasks.multimodal.data import Record

    fmt = SimpleNamespace(target_ids=lambda text: list(text.encode()), feature_cache=None)  # a token a byte
    short = Record("s", "document", [], [], kind="open", question="Total?", answers=["12", "twelve"], metric="exact")
    long = Record("l", "document", [], [], kind="open", question="Total?", answers=["$1,234,567.89"], metric="anls")
    exactly = Record("e", "document", [], [], kind="open", question="Total?", answers=["x" * 12], metric="exact")
    assert native.new_tokens(fmt, [short, exactly]) == native.MAX_NEW_TOKENS == 12
    assert native.new_tokens(fmt, [short, long]) == 13 + 2
    asked = []

    def generate(model, fmt, asks, max_new=native.MAX_NEW_TOKENS):
        asked.append(max_new)
        return ["12"] * len(asks)

    monkeypatch.setattr(native, "generate", generate)
    assert [s.score for s in native.score_records(None, fmt, [short, long], 4)] == [100.0, 0.0]
    native.score_records(None, fmt, [short], 4)
    assert asked == [15, 12]
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    from tasks.multimodal.lmms_eval_protocol import lmms_eval_scored

    assert [s.score for s in lmms_eval_scored(object(), fmt, [short, long], 4)] == [100.0, 0.0]
    assert asked[2:] == [15]


def test_the_generated_datas_open_answers_fit_the_cap_its_results_were_scored_with():
    """The committed results decoded open answers for 12 tokens: the generated data keeps that cap."""
    from types import SimpleNamespace

    from harness import models
    from tasks.multimodal import data, native, resolve_data

    tokenizer, _ = models.random_weights_tokenizer(models.EMBEDDED, None)
    fmt = SimpleNamespace(target_ids=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    test = data.read_split(resolve_data(None)[0], "test")
    assert {d: native.new_tokens(fmt, [r for r in test if r.domain == d]) for d in data.DOMAINS} == dict.fromkeys(
        data.DOMAINS, native.MAX_NEW_TOKENS
    )


def test_the_lmms_eval_protocol_without_lmms_eval_is_refused_before_anything_runs(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "lmms_eval" or m.startswith("lmms_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # `import lmms_eval` raises ImportError
    monkeypatch.delitem(sys.modules, "tasks.multimodal.lmms_eval_protocol", raising=False)
    with pytest.raises(
        ValueError,
        match=r"the lmms-eval protocol needs lmms-eval: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "
        r'"filelock<4", beside pip install -e "\.\[test\]" for the datasets, evaluate and sacrebleu it imports',
    ):
        build_specs("multimodal", ["lora"], [0], "smoke", protocol="lmms-eval")


@pytest.mark.parametrize("missing", ["evaluate", "sacrebleu"])
def test_the_lmms_eval_protocol_without_what_its_scoring_imports_is_refused_before_anything_runs(monkeypatch, missing):
    """From a review: the check imported lmms-eval's model API only, which loads without the datasets, evaluate and
    sacrebleu that its evaluator imports: a run without them trained (stage 1 and all) and failed at scoring with a
    bare ModuleNotFoundError."""
    import sys

    for name in [m for m in sys.modules if m == "lmms_eval" or m.startswith("lmms_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # `import evaluate` raises ImportError
    monkeypatch.delitem(sys.modules, "tasks.multimodal.lmms_eval_protocol", raising=False)
    with pytest.raises(ValueError, match=rf"the lmms-eval protocol needs lmms-eval: .*\[.*{missing}"):
        build_specs("multimodal", ["lora"], [0], "smoke", protocol="lmms-eval")


def test_the_lmms_eval_protocol_imported_first_registers_its_model_in_lmms_eval(monkeypatch):
    """From a re-review: importing lmms-eval's evaluator at the module's top loads lmms-eval's model entry points, this
    module's ``manifests`` among them, while the module was half loaded: lmms-eval warned of a circular import and
    knew no ``--model harness``."""
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "lmms_eval" or m.startswith("lmms_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "tasks.multimodal.lmms_eval_protocol", raising=False)
    protocol = importlib.import_module("tasks.multimodal.lmms_eval_protocol")
    from lmms_eval.models import MODEL_REGISTRY_V2

    assert "harness" in MODEL_REGISTRY_V2.list_model_names()
    assert MODEL_REGISTRY_V2.get_model_class("harness") is protocol.HarnessLMM


def test_the_lmms_eval_protocol_under_several_processes_is_refused_before_anything_trains(
    tmp_path, monkeypatch, capsys
):
    """From a review: under torchrun or accelerate launch lmms-eval reads WORLD_SIZE and RANK and shares the questions
    out among processes that wait while the main one scores alone: every such run failed after its whole training."""
    from harness import runner
    from harness.cli import main

    trained = []
    monkeypatch.setattr(runner, "run_all", lambda *args, **kwargs: trained.append(args) or [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    runs = tmp_path / "runs"
    argv = ["run", "--methods", "lora", "--task", "multimodal", "--preset", "smoke", "--no-leaderboard"]
    assert main([*argv, "--protocol", "lmms-eval", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "--protocol lmms-eval scores in one process only" in err and "pass --protocol native" in err
    assert trained == [] and not runs.exists()
    assert main([*argv, "--protocol", "native", "--runs-dir", str(runs)]) == 0 and len(trained) == 1


def test_the_lmms_eval_protocol_leaves_no_folder_behind(tmp_path, monkeypatch):
    """From a review: each process kept a /tmp/harness-lmms-* folder: lmms-eval resolves its datasets cache folder
    once a process, so the first call's, named by LMMS_EVAL_DATASETS_CACHE, was made again by every later call.
    And now that replies stop at their ``until`` strings, the harness's open task keeps a reply whole, as the native
    scorer does (lmms-eval's default ``until`` would cut it at a blank line)."""
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    import tempfile
    from types import SimpleNamespace

    import datasets
    from lmms_eval.api import task as lmms_task

    from tasks.multimodal import native
    from tasks.multimodal.data import Record
    from tasks.multimodal.lmms_eval_protocol import lmms_eval_scored

    scratch, cache = tmp_path / "tmp", tmp_path / "hf-datasets"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the work folders are made
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))  # the user's datasets cache: lmms-eval's and datasets' own
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    fmt = SimpleNamespace(target_ids=lambda text: list(text.encode()), feature_cache=None)  # a token a byte
    monkeypatch.setattr(native, "generate", lambda model, fmt, asks, max_new: ["12\n\nmore"] * len(asks))
    monkeypatch.setattr(
        native,
        "candidate_logprobs",
        lambda model, fmt, asks, cands: [[-float(i) for i in range(len(c))] for c in cands],
    )  # the first candidate picked: lmms-eval itself runs
    records = [
        Record("s", "document", [], [], kind="open", question="Total?", answers=["12"], metric="exact"),
        Record("c", "general", [], [], kind="choice", question="q", options=["a", "b", "c", "d"], answer=0),
        Record("y", "general", [], [], kind="yesno", question="q?", answer="yes"),
    ]
    resolve = lmms_task._resolve_hf_datasets_cache_dir
    resolve.cache_clear()  # as in a new process: its first call fixes lmms-eval's cache folder
    try:
        for _ in range(2):
            scored = lmms_eval_scored(object(), fmt, records, 4)
            assert [(s.pred, s.score) for s in scored[::2]] == [("12\n\nmore", 0.0), ("yes", 100.0)]
    finally:
        resolve.cache_clear()  # the folders here go with tmp_path
    assert list(scratch.iterdir()) == [] and list(cache.rglob("*")) == []


def test_harness_lmm_decodes_each_request_for_its_own_length_and_cuts_it_at_its_own_stop_strings(monkeypatch):
    """From a review: ``generate_until`` decoded a whole batch for its first request's ``max_new_tokens`` (``mme``'s
    16 for ``mmbench``'s 1024 in one batch) and never cut a reply at its ``until`` strings as lmms-eval's wrappers
    do, so a reply ran on into a turn of its own."""
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    from types import SimpleNamespace

    from tasks.multimodal import native
    from tasks.multimodal.lmms_eval_protocol import HarnessLMM

    asked = []

    def generate(model, fmt, asks, max_new):
        asked.append((len(asks), max_new))
        return [f"{human} USER: more ASSISTANT: text\n\nend" for human, _ in asks]

    monkeypatch.setattr(native, "generate", generate)
    lmm = HarnessLMM(model=object(), fmt=object(), batch_size=2)
    lmm.task_dict = {"mme": {"test": [None] * 3}, "mmbench_en_dev": {"dev": [None] * 2}}

    def request(doc_id: int, task: str, split: str, **gen_kwargs):
        return SimpleNamespace(args=(f"Q{doc_id}", gen_kwargs, None, doc_id, task, split))

    requests = [
        request(0, "mme", "test", max_new_tokens=16),
        request(
            0, "mmbench_en_dev", "dev", max_new_tokens=1024, until=["ASSISTANT:", "USER:"]
        ),  # the earlier in the reply
        request(1, "mme", "test", max_new_tokens=16, until="ASSISTANT:"),  # one string, not a list
        request(1, "mmbench_en_dev", "dev", max_new_tokens=1024, until=[]),
        request(2, "mme", "test", max_new_tokens=16, until=["", "nowhere"]),
    ]
    assert lmm.generate_until(requests) == [
        "Q0 USER: more ASSISTANT: text\n\nend",
        "Q0",
        "Q1 USER: more",
        "Q1 USER: more ASSISTANT: text\n\nend",
        "Q2 USER: more ASSISTANT: text\n\nend",
    ]
    assert asked == [(2, 16), (1, 16), (2, 1024)]


def test_an_lmms_eval_hub_tasks_reply_is_kept_whole_past_a_blank_line(monkeypatch):
    """From a review: lmms-eval gives every task without an ``until`` of its own (``mme``, ``mathvista_testmini``,
    ``mmvet``, ``docvqa_val``) the stop string "\\n\\n", and ``generate_until`` cut those replies at their first blank
    line, where lmms-eval's LLaVA wrappers cut nothing and its newer ones drop "\\n\\n" so as not to truncate."""
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    from types import SimpleNamespace

    from lmms_eval.api.task import TaskConfig

    from tasks.multimodal import native
    from tasks.multimodal.lmms_eval_protocol import HarnessLMM

    # what lmms-eval makes of a hub task's YAML that names no until (mmvet's generation_kwargs)
    hub = TaskConfig(task="mmvet", output_type="generate_until", generation_kwargs={"max_new_tokens": 1024})
    assert hub.generation_kwargs["until"] == ["\n\n"]
    reply = "The chart has three bars.\n\nThey read 3, 5 and 7, so the answer is 7. ASSISTANT: next"
    monkeypatch.setattr(native, "generate", lambda model, fmt, asks, max_new: [reply] * len(asks))
    lmm = HarnessLMM(model=object(), fmt=object(), batch_size=2)
    lmm.task_dict = {"mmvet": {"test": [None]}, "mmbench_en_dev": {"dev": [None]}}
    requests = [
        SimpleNamespace(args=("Q", dict(hub.generation_kwargs), None, 0, "mmvet", "test")),
        SimpleNamespace(args=("Q", {"until": ["\n\n", "ASSISTANT:"]}, None, 0, "mmbench_en_dev", "dev")),
    ]
    assert lmm.generate_until(requests) == [reply, reply.split(" ASSISTANT:")[0]]  # an explicit stop still cuts


def test_a_domains_sub_metrics_are_what_its_scored_questions_say(tmp_path):
    """``mmb_circular``, ``mmb_first_rotation``, ``mme_acc``/``mme_acc_plus``, ``open_*`` and the item scores of a
    domain, from hand-made scored questions (a review: only the metric names were checked)."""
    from tasks.multimodal import _entry
    from tasks.multimodal.data import Record
    from tasks.multimodal.native import score_one

    def choice(i: str, picks: list[int]):
        r = Record(i, "general", [], [], kind="choice", question="q", options=["a", "b", "c", "d"], answer=1)
        return score_one(r, picks, "")

    def yesno(i: str, pair: str, answer: str, pick: int):
        return score_one(Record(i, "general", [], [], kind="yesno", question="q", answer=answer, pair=pair), [pick], "")

    def open_(i: str, text: str):
        return score_one(
            Record(i, "general", [], [], kind="open", question="q", answers=["7"], metric="exact"), [], text
        )

    scored = [
        choice("c1", [1, 0, 3, 2]),  # every rotation right
        choice("c2", [0, 0, 3, 2]),  # the first rotation wrong, the rest right
        choice("c3", [1, 3, 3, 2]),  # the first right, one other wrong
        yesno("y1", "p1", "yes", 0),
        yesno("y2", "p1", "no", 1),  # pair p1: both right
        yesno("y3", "p2", "yes", 0),
        yesno("y4", "p2", "no", 0),  # pair p2: one wrong
        open_("o1", "7"),
        open_("o2", "8"),
    ]
    (tmp_path / "test.json").write_text("[]")
    entry = _entry("general", scored, "native", tmp_path, [s.record for s in scored])
    assert entry["metrics"] == pytest.approx(
        {
            "mmb_circular": 100 / 3,
            "mmb_first_rotation": 200 / 3,
            "mme_acc": 75.0,
            "mme_acc_plus": 50.0,
            "open_exact": 50.0,
        }
    )
    assert entry["scores"] == [100.0, 0.0, 0.0, 100.0, 0.0, 100.0, 0.0]  # questions; each yes/no pair one item
    assert entry["n"] == 7 and entry["n_by_kind"] == {"choice": 3, "yesno": 4, "open": 2}
    assert entry["value"] == pytest.approx(300 / 7)


def test_a_random_weights_embedded_model_is_labelled_as_its_architecture_and_the_dtype_recorded(tmp_path):
    """From a review: the embedded LLaVA-style model built with random weights was labelled as the GGUF it
    never read ("SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32) (LLaVA-style, random weights)"), and no
    record said what dtype it computed in."""
    import torch

    from harness.registry import TASKS
    from harness.task import TaskOptions

    task = TASKS.get("multimodal")(TaskOptions(eval_limit=2, template="chat"))
    loaded = task.load("embedded", torch.device("cpu"), random_weights=True, seed=0, trust_remote_code=False)
    assert loaded.label == "SmolLM2-135M-Instruct architecture (LLaVA-style, random weights)"
    assert loaded.info["dtype"] == "float32"


def _reduced_llava_folder(tmp_path: Path) -> Path:
    """A transformers LLaVA config at the reduced shape, alone in its folder (no processor: built offline)."""
    from harness.models import load_config_dict
    from tasks.multimodal.model import PAPER_ID, reduced_llava_config

    folder = tmp_path / "llava-reduced"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(reduced_llava_config(load_config_dict(PAPER_ID))))
    return folder


def _load_random(model: str, **settings):
    import torch

    from harness.registry import TASKS
    from harness.task import TaskOptions

    task = TASKS.get("multimodal")(TaskOptions(template="chat", eval_limit=1, val_size=3, train_cap=8))
    device = torch.device("cpu")
    return task.load(model, device, random_weights=True, seed=0, trust_remote_code=False, settings=settings)


def test_a_transformers_llava_built_with_random_weights_is_its_seeds_whatever_the_global_rng_did(tmp_path):
    """From a review: the paper model (a transformers LLaVA) built with --random-weights was never seeded, as the
    llava_style and embedded models and tasks/lm.py are: its weights were whatever the process had drawn before,
    so each method of one sweep started from another random model."""
    import torch

    folder = str(_reduced_llava_folder(tmp_path))
    weights = []
    for state in (1, 2):
        torch.manual_seed(state)
        weights.append(_load_random(folder, train_projector=True).model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_a_transformers_llava_built_with_random_weights_is_its_seeds_on_a_cold_cache_too(tmp_path, monkeypatch):
    """From a re-review: the seed was set before the embedded tokenizer loaded, and its first load (the GGUF's
    conversion, on a cold cache) draws random numbers: the first run of a fresh machine got other weights than
    the runs after it. The seed is set as the model is built; here the load draws as a conversion would."""
    import torch

    from harness import models

    folder = str(_reduced_llava_folder(tmp_path))
    warm = _load_random(folder, train_projector=True).model.state_dict()
    loaded = models.embedded_folder

    def converting():  # a cold cache: the conversion builds a model from its config, drawing its weights
        torch.rand(1000)
        return loaded()

    monkeypatch.setattr(models, "embedded_folder", converting)
    cold = _load_random(folder, train_projector=True).model.state_dict()
    for name, tensor in warm.items():
        assert torch.equal(tensor, cold[name]), name


def test_a_transformers_llava_built_with_random_weights_records_no_stage1_and_the_tokenizer_it_read(tmp_path):
    """From a review: its record said "pretrained LLaVA projector" under --random-weights (the projector is random),
    and nothing said that the embedded SmolLM2 tokenizer stood in for its processor's (a llava_style config's
    record names its tokenizer). Record info only: the run id, a hash of the run's spec, is not made from it."""
    from harness.models import load_config_dict
    from tasks.multimodal import model as mm
    from tests.test_multimodal_model import tiny_word_tokenizer

    info = _load_random(str(_reduced_llava_folder(tmp_path))).info
    assert info["stage1"] == "none: random weights"
    assert info["tokenizer"] == (
        "the embedded SmolLM2-135M-Instruct tokenizer, with <image> added (the model's own processor does not load "
        "offline)"
    )
    config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
    model, processor = mm.build_paper(mm.PAPER_ID, random_weights=True, config=config, tokenizer=tiny_word_tokenizer())
    own = tmp_path / "own-processor"
    model.config.save_pretrained(own)
    processor.save_pretrained(own)  # loads offline: its tokenizer is the one the run reads
    info = _load_random(str(own)).info
    assert info["stage1"] == "none: random weights" and info["tokenizer"] == "the tokenizer in own-processor/"


def test_a_llava_style_config_setting_train_projector_is_refused_naming_the_preset_setting(tiny_llava_style):
    """From a review: a llava_style config's train_projector was read and type-checked, then overridden by the
    preset's setting (the README: whether the projector trains in stage 2 is one preset setting) without a word."""
    from harness.runner import preflight

    path = Path(tiny_llava_style) / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "train_projector": True}))
    with pytest.raises(ValueError, match=r"config.json: train_projector is not a llava_style config field a run "
                       r"reads: .* the preset's task setting train_projector .*; remove it from the config"):  # fmt: skip
        preflight(build_specs("multimodal", ["lora"], [0], "smoke", model=tiny_llava_style))  # before weights load


def test_your_own_datas_stage1_key_is_as_before_and_its_captions_and_images_are_read_once(tmp_path, monkeypatch):
    """From a review: on a --data-dir every load parsed captions.json three times and read and hashed every caption
    image in full (not once a process), even where the projector was cached. The key is the same as before: the
    sha256 of the captions file's bytes, and of the caption images' sha256s in order (the cached projectors stay),
    and since 2026-12-07 how the images are read (upright by their EXIF: a projector aligned before is not loaded)."""
    import hashlib

    import torch
    from PIL import Image

    import tasks.multimodal as multimodal
    from harness import identity
    from harness.registry import TASKS
    from harness.task import TaskOptions
    from tasks.multimodal import data, stage1, vision
    from tasks.multimodal import model as mm
    from tests.test_multimodal_data import _test_records, _train, _write
    from tests.test_multimodal_model import tiny_model, tiny_word_tokenizer

    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for name, colour in (("a.png", "red"), ("b.png", "blue"), ("c.png", "green")):
        Image.new("RGB", (8, 8), colour).save(folder / "images" / name)
    _write(folder, "train.json", [_train("t1", image="images/b.png"), _train("t2", "math", image="images/b.png")])
    _write(folder, "test.json", _test_records())
    captions = [_train(f"c{k}", image=f"images/{name}") for k, name in enumerate(["c.png", "a.png", "c.png"])]
    _write(folder, data.CAPTIONS, [{k: v for k, v in c.items() if k != "domain"} for c in captions])

    keys: list[dict] = []
    monkeypatch.setattr(mm, "build_embedded", lambda *a, **k: (tiny_model(), tiny_word_tokenizer()))
    monkeypatch.setattr(stage1, "align_projector", lambda *a, cache_key, **k: keys.append(cache_key) or {"path": "p"})
    monkeypatch.setattr(stage1, "prompt_for", lambda tokenizer, template: "")
    monkeypatch.setattr(vision, "provenance", lambda: {"weights_sha256": "w"})
    monkeypatch.setattr(multimodal, "embedded_digest", lambda: {"weights_sha256": "g"})
    reads, hashed = [], []
    read_captions, sha256_file, old_sha256 = data.read_captions, identity.sha256_file, multimodal._sha256
    monkeypatch.setattr(data, "read_captions", lambda d: reads.append(d) or read_captions(d))
    monkeypatch.setattr(identity, "sha256_file", lambda p: hashed.append(Path(p).name) or sha256_file(p))
    monkeypatch.setattr(multimodal, "_sha256", lambda p: hashed.append(p.name) or old_sha256(p))  # as it hashed
    task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))
    for _ in range(2):  # two runs of one sweep
        task.load("embedded", torch.device("cpu"), random_weights=False, seed=0, trust_remote_code=False)
    assert len(reads) == 2  # once a load
    assert sorted(hashed) == ["a.png", "c.png", "captions.json"]  # once a process
    images = hashlib.sha256()
    for name in ("c.png", "a.png"):  # distinct, in the captions' order
        images.update(hashlib.sha256((folder / "images" / name).read_bytes()).hexdigest().encode())
    assert (
        keys[0]
        == keys[1]
        == {
            "captions_sha256": hashlib.sha256((folder / data.CAPTIONS).read_bytes()).hexdigest(),
            "language_model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)",
            "language_model_sha256": "g",
            "vision_sha256": "w",
            "images_sha256": images.hexdigest(),
            "images_read": "exif-upright",
        }
    )


def test_a_llava_folder_without_a_tokenizer_is_told_so_not_that_its_processor_config_is_missing(tmp_path):
    """From a re-review: once a processor counted as at hand only with a tokenizer vocabulary, a folder holding its
    image processor's config but no tokenizer was told it held no image processor config."""
    from tasks.multimodal import MultimodalTask

    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no tokenizer"):
        MultimodalTask.check_weights_folder(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="holds no image processor config"):
        MultimodalTask.check_weights_folder(tmp_path)


def test_a_run_without_stage1_neither_reads_nor_keeps_captions_json(tiny_llava_style, tmp_path):
    """From a review: captions.json, which only the embedded model's stage 1 aligns on, was read (every caption image
    decoded) and hashed for every run: a broken one (an image never downloaded) failed a llava_style run after its
    model loaded, and an edited one refused the finished run ("the training file captions.json differs")."""
    import hashlib

    import torch
    from PIL import Image

    from harness.registry import TASKS
    from harness.task import TaskOptions

    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(folder / "images" / "a.png")
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]
    train = [{"id": f"t{i}", "image": "a.png", "domain": "general", "conversations": turns} for i in range(3)]
    (folder / "train.json").write_text(json.dumps(train))
    test = {**train[0], "id": "o", "kind": "open", "question": "What?", "answers": ["red"], "metric": "exact"}
    (folder / "test.json").write_text(json.dumps([test]))
    caption = {"id": "c", "image": "never/downloaded.jpg", "conversations": turns}
    (folder / "captions.json").write_text(json.dumps([caption]))
    overrides = {"train_overrides": {"steps": 1}, "task_overrides": {"data_dir": str(folder), "val_size": 1}}
    [record] = _run(tiny_llava_style, ["lora"], tmp_path, **overrides)
    assert record["run"]["status"] == "success", record["run"]["error"]
    described = record["run"]["config"]["data"]
    assert [f["file"] for f in described["files"]] == ["train.json", "test.json"] and "captions" not in described
    (folder / "captions.json").write_text(json.dumps([{**caption, "id": "edited"}]))
    [again] = _run(tiny_llava_style, ["lora"], tmp_path, **overrides)  # not read: the finished run is reused
    assert again["run"]["created_at"] == record["run"]["created_at"]
    task = TASKS.get("multimodal")(TaskOptions(data_dir=str(folder), template="chat"))
    task.load(tiny_llava_style, torch.device("cpu"), random_weights=False, seed=0, trust_remote_code=False)
    assert task.training_files() == {"train.json": hashlib.sha256((folder / "train.json").read_bytes()).hexdigest()}


def test_the_lmms_eval_protocol_leaves_accelerates_state_for_the_next_runs_training(monkeypatch):
    """From a review: lmms-eval gave the harness's model ``lm.accelerator = Accelerator()``, which fixed accelerate's
    process-wide state at mixed precision "no": on a GPU, `--methods base,lora --protocol lmms-eval` scored base and
    then refused lora's bf16 Accelerator ("AcceleratorState has already been initialized")."""
    pytest.importorskip(
        "lmms_eval", reason='optional: pip install --no-deps lmms-eval==0.7.3 loguru tenacity "filelock<4"'
    )
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from tasks.multimodal import native
    from tasks.multimodal.data import Record
    from tasks.multimodal.lmms_eval_protocol import lmms_eval_scored

    fmt = SimpleNamespace(target_ids=lambda text: list(text.encode()), feature_cache=None)
    monkeypatch.setattr(native, "generate", lambda model, fmt, asks, max_new: ["12"] * len(asks))
    record = Record("s", "document", [], [], kind="open", question="Total?", answers=["12"], metric="exact")
    AcceleratorState._reset_state(True)  # as in a new process, where base's scoring comes first
    try:
        assert [s.score for s in lmms_eval_scored(object(), fmt, [record], 4)] == [100.0]
        Accelerator(mixed_precision="bf16", cpu=True)  # a GPU run's training (bf16), here on the CPU
    finally:
        AcceleratorState._reset_state(True)  # the next Accelerator() is the harness's own again


def test_a_text_model_given_to_the_multimodal_task_is_refused_before_any_run(tiny_model, tmp_path, capsys):
    """From a fuzz review: a text model's config (no vision_config) passed the checks before the runs, and each run
    of the sweep failed in turn at its load with "KeyError: 'vision_config'", a record each."""
    from harness.cli import main

    runs = tmp_path / "runs"
    args = ["run", "--methods", "lora,base", "--task", "multimodal", "--preset", "smoke", "--random-weights"]
    assert main([*args, "--model", str(tiny_model), "--runs-dir", str(runs), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(llama) has no vision_config: the multimodal task needs a vision-language" in err[0]
    assert not runs.exists() or not any(runs.iterdir())


def test_a_llava_config_leaving_its_vision_config_to_the_defaults_is_a_vision_language_model(tmp_path):
    """From a re-review: the vision-language check read the raw config.json, so a LLaVA config that leaves
    vision_config to transformers' defaults (CLIP's) was refused, where it built before."""
    from harness.models import CONFIG_DIR
    from tasks.multimodal import MultimodalTask

    config = json.loads((CONFIG_DIR / "llava-1.5-7b.json").read_text())
    del config["vision_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    MultimodalTask.check_model(str(tmp_path))
    MultimodalTask.build_meta(str(tmp_path))  # on meta, as before the check


def test_a_subclass_that_loads_otherwise_is_not_held_to_the_embedded_models_captions(folder_without_captions):
    """From a re-review: check_data_for (captions.json for the embedded model's stage 1) and the vision-language
    check were inherited by a plugin subclass with its own load, which may need neither (the class's other checks
    skip such a subclass)."""
    from harness import models
    from harness.task import TaskOptions
    from tasks.multimodal import MultimodalTask

    class OwnLoad(MultimodalTask):
        def load(self, *args, **kwargs):
            raise NotImplementedError

    options = TaskOptions(data_dir=str(folder_without_captions), template="chat")
    OwnLoad(options).check_data_for(models.EMBEDDED, False)
    with pytest.raises(ValueError, match="has no captions.json for stage 1"):
        MultimodalTask(options).check_data_for(models.EMBEDDED, False)


@pytest.fixture
def folder_without_captions(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "a.png")
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    record = {"id": "t1", "domain": "general", "image": "images/a.png", "conversations": turns}
    (tmp_path / "train.json").write_text(json.dumps([record]))
    test = {**record, "id": "o1", "kind": "open", "question": "What colour?", "answers": ["red"], "metric": "exact"}
    (tmp_path / "test.json").write_text(json.dumps([test]))
    return tmp_path
