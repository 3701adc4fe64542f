"""The multimodal suite's models, called one way: ``model(**prepare(texts, images))``.

``embedded``: ``LlavaStyle`` = SmolLM2-135M-Instruct + frozen EfficientNet-Lite0 (49 tokens of 1280 at
224 px) + LLaVA's ``mlp2x_gelu`` projector. ``paper``: transformers' ``LlavaForConditionalGeneration``
(llava-hf/llava-1.5-7b-hf). How the two differ, all hidden behind ``prepare``:

- placeholders: LLaVA's processor repeats the added token ``<image>`` (id 32000) 576 times in the *text*
  ((336/14)² patches, CLS dropped by ``vision_feature_select_strategy="default"``) and tokenises the whole
  string, BOS added. ``expand_image_tokens`` splits the text at ``<image>``, tokenises each piece alone
  (``add_special_tokens=False``) and inserts the placeholders (49 ids of an unused special token in the
  embedded model); the recipe's ``Formatter.ids`` puts BOS in front where the tokenizer adds one (LLaVA's
  Llama tokenizer; SmolLM2 has none).
- pixels: CLIP (shortest edge → 336 bicubic, centre crop, CLIP mean/std) vs. ImageNet normalisation at
  224 px after padding to a square (``vision.preprocess``).
- forward: both take ``input_ids, attention_mask, position_ids, pixel_values, use_cache, logits_to_keep``
  and the KV cache (``cache``; ``past_key_values`` before transformers 5.24); only LLaVA takes ``labels``
  (the harness computes its own loss).
- trainable parts: ``build_*`` freeze the vision tower of both (``build_paper`` everything, ``lm_head`` too);
  the projector follows ``train_projector``.
- offline, the paper model with random weights has no Llama tokenizer: ``build_paper`` then uses the
  embedded tokenizer plus ``<image>`` and ``<pad>``, growing the vocabulary to fit (recorded in the config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from tasks.lm import cache_kwargs
from tasks.multimodal import vision

IMAGE_TAG = "<image>"  # where an image goes in a prompt, for both models
# SmolLM2's tokenizer reserves StarCoder's code-metadata specials (ids 3-16); ids 8-16 have identical,
# never-trained embedding rows, so SmolLM2 never saw them. ``expand_image_tokens`` refuses text whose
# tokens contain the placeholder, so it can only come from an <image> tag.
EMBEDDED_IMAGE_TOKEN = "<empty_output>"
EMBEDDED_IMAGE_TOKEN_ID = 16
PAPER_ID = "llava-hf/llava-1.5-7b-hf"
Prepare = Callable[[Sequence[str], Sequence[Any] | None], dict[str, Tensor]]
PROJECTOR = "mlp2x_gelu"  # the one projector LlavaStyle builds


@dataclass
class LlavaStyleConfig:
    """Everything ``LlavaStyle.from_config`` needs to build the architecture (random weights, any device)."""

    text_config: dict[str, Any]  # a transformers causal-LM config as a dict (with "model_type")
    vision_variant: str = vision.VARIANT
    vision_dim: int = vision.FEATURE_DIM
    image_size: int = vision.IMAGE_SIZE
    image_token_id: int = EMBEDDED_IMAGE_TOKEN_ID
    projector: str = PROJECTOR  # Linear(vision_dim → d), GELU, Linear(d → d); d = the LM's hidden size
    train_projector: bool = True  # the built model's; a config.json may not set it (the preset's setting decides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def embedded_config(image_size: int = vision.IMAGE_SIZE) -> LlavaStyleConfig:
    """The embedded architecture from the shipped SmolLM2 config (no GGUF conversion needed)."""
    from harness.models import EMBEDDED, load_config_dict

    return LlavaStyleConfig(text_config=load_config_dict(EMBEDDED), image_size=image_size)


def check_vision(config: LlavaStyleConfig) -> None:
    """Refuse a vision tower or projector the harness does not have: another variant, a ``vision_dim`` other than
    its feature width (the projector's input was built at that width and the first forward failed on a shape
    mismatch), another projector (refused only as the model was built: after a base run's checks, naming no file)."""
    if config.projector != PROJECTOR:
        raise ValueError(f"projector {config.projector!r} is not known; use {PROJECTOR!r}")
    if config.vision_variant != vision.VARIANT:
        raise ValueError(f"vision encoder {config.vision_variant!r} is not known; use {vision.VARIANT!r}")
    if config.vision_dim != vision.FEATURE_DIM:
        raise ValueError(
            f"vision_dim {config.vision_dim} is not the width of {vision.VARIANT}'s features; set it to "
            f"{vision.FEATURE_DIM} (or leave it out)"
        )


class LlavaStyle(nn.Module):
    """A LLaVA-style model: image tokens from a frozen ``vision`` encoder, mapped by ``projector`` into the
    input embeddings of ``language_model`` at the positions holding ``image_token_id``."""

    def __init__(self, config: LlavaStyleConfig, vision_encoder: nn.Module, language_model: nn.Module) -> None:
        super().__init__()
        check_vision(config)  # the projector below is mlp2x_gelu's, at the encoder's width
        self.config = config
        self.vision = vision_encoder.requires_grad_(False)
        self.language_model = language_model
        d = language_model.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(config.vision_dim, d), nn.GELU(), nn.Linear(d, d))
        self.image_token_id = config.image_token_id
        self.tokens_per_image = vision_encoder.tokens_per_image
        self.set_projector_trainable(config.train_projector)

    @classmethod
    def from_config(cls, config: LlavaStyleConfig) -> LlavaStyle:
        """Random weights; under ``with torch.device("meta"):`` a weightless replica for FLOPs counting."""
        from transformers import AutoConfig, AutoModelForCausalLM

        check_vision(config)
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config.text_config))
        return cls(config, vision.load_efficientnet_lite0(pretrained=False, image_size=config.image_size), lm)

    def set_projector_trainable(self, trainable: bool) -> None:
        self.projector.requires_grad_(trainable)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """Frozen encoder output ``[n_images, tokens_per_image, vision_dim]`` (what stage 1 caches)."""
        with torch.no_grad():
            return self.vision(pixel_values.to(next(self.vision.parameters()).dtype))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int | Tensor = 0,
        vision_features: Tensor | None = None,
        **kw: Any,
    ) -> Any:
        """The language model's output (``.logits`` and its KV cache). ``vision_features`` (from
        ``encode_images``) may stand in for ``pixel_values``; with neither it is the plain LM. ``cache`` is
        the KV cache (also accepted under transformers' older name ``past_key_values``)."""
        cache = kw.pop("past_key_values", cache)
        if pixel_values is not None and vision_features is not None:
            raise ValueError("give pixel_values or vision_features, not both")
        embeds = self.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        if pixel_values is not None:
            vision_features = self.encode_images(pixel_values)
        if vision_features is not None:
            features = self.projector(vision_features.to(self.projector[0].weight.dtype))
            self._check_count(mask, features.shape[0], features.shape[1])
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))
        else:
            self._check_count(mask, 0, self.tokens_per_image)
        if embeds.device.type == "meta" and cache is None and attention_mask is None:
            use_cache = True  # else transformers reads position values to find packed rows; a cache adds no FLOPs
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(self.language_model, cache),
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kw,
        )

    def _check_count(self, mask: Tensor, images: int, per_image: int) -> None:
        if mask.device.type == "meta":  # no values to count: the FLOPs replica
            return
        found = int(mask.sum())
        if found != images * per_image:
            raise ValueError(
                f"input_ids hold {found} image placeholders (id {self.image_token_id}) but {images} image(s) × "
                f"{per_image} tokens = {images * per_image} were given; write one {IMAGE_TAG} per image and "
                "expand it with expand_image_tokens (or use the prepare callable)"
            )


def image_geometry(model: nn.Module) -> tuple[int, int]:
    """``(image size in px, tokens per image)`` of either model."""
    if isinstance(model, LlavaStyle):
        return model.config.image_size, model.tokens_per_image
    vis = model.config.vision_config  # LLaVA: CLIP patches; the "default" strategy drops the CLS token
    cls_token = 0 if model.config.vision_feature_select_strategy == "default" else 1
    return vis.image_size, (vis.image_size // vis.patch_size) ** 2 + cls_token


def meta_batch(model: nn.Module, rows: int, text_tokens: int, images_per_row: int = 1) -> dict[str, Tensor]:
    """Inputs of a batch's shape on the ``meta`` device for FLOPs counting on a replica of either model
    (no attention mask: transformers reads a mask's values, which ``meta`` tensors lack)."""
    size, per_image = image_geometry(model)
    return {
        "input_ids": torch.zeros((rows, text_tokens + images_per_row * per_image), dtype=torch.long, device="meta"),
        "pixel_values": torch.zeros((rows * images_per_row, 3, size, size), device="meta"),
    }


def countable_on_meta(replica: nn.Module) -> nn.Module:
    """Let a ``meta`` replica of either model run: LLaVA's placeholder-count check reads values, so this
    replica (only) takes the mask without it. ``LlavaStyle`` skips its check on ``meta`` by itself."""
    inner = getattr(replica, "model", None)
    if inner is not None and hasattr(inner, "get_placeholder_mask"):
        image_id = replica.config.image_token_id

        def unchecked(input_ids: Tensor, inputs_embeds: Tensor, image_features: Tensor) -> Tensor:
            return (input_ids == image_id).unsqueeze(-1)

        inner.get_placeholder_mask = unchecked
    return replica


def expand_image_tokens(tokenizer: Any, text: str, image_token_id: int, tokens_per_image: int) -> list[int]:
    """Token ids of ``text`` (``add_special_tokens=False``) with each ``<image>`` replaced by
    ``tokens_per_image`` copies of ``image_token_id``; each piece between tags is tokenised on its own."""
    ids: list[int] = []
    for i, piece in enumerate(text.split(IMAGE_TAG)):
        if i:
            ids.extend([image_token_id] * tokens_per_image)
        if piece:
            piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
            if image_token_id in piece_ids:
                raise ValueError(
                    f"the text {piece[:60]!r} tokenises to the image placeholder id {image_token_id}; remove the "
                    f"literal placeholder token from the data (images go where {IMAGE_TAG} is), or, for a "
                    "LLaVA-style config with its own tokenizer, set its image_token_id to an id that tokenizer "
                    "never produces"
                )
            ids.extend(piece_ids)
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` ``[len(rows), longest]``, padded on the left so every row ends
    at the last column (generation continues there; the last K logits cover every row's last K tokens)."""
    if not rows:
        raise ValueError("left_pad got no rows; pass at least one token list")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pad_id(tokenizer: Any) -> int:
    found = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if found is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(found)


def build_embedded(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    image_size: int = vision.IMAGE_SIZE,
    seed: int = 0,
) -> tuple[LlavaStyle, Any]:
    """Pretrained SmolLM2-135M-Instruct + pretrained EfficientNet-Lite0 + a projector initialised from
    ``seed`` (align it with ``stage1.align_projector``). In eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import embedded_folder

    folder = embedded_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.convert_ids_to_tokens(EMBEDDED_IMAGE_TOKEN_ID) != EMBEDDED_IMAGE_TOKEN:
        raise ValueError(
            f"{folder}: token {EMBEDDED_IMAGE_TOKEN_ID} is not {EMBEDDED_IMAGE_TOKEN!r}; delete the folder to convert it again"
        )
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    config = LlavaStyleConfig(text_config=lm.config.to_dict(), image_size=image_size)
    encoder = vision.load_efficientnet_lite0(pretrained=True, image_size=image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaStyle(config, encoder, lm)
    model = model.to(device=device, dtype=dtype).eval()
    hold_in_fp32(model.projector, dtype)  # stage 1 trains it
    return model, tokenizer


def hold_in_fp32(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Keep a trained part's parameters (the projector) in fp32 inside a model computing in ``dtype`` (bf16 on a
    GPU), as the adapters' are: in bf16 AdamW's small updates round away (one step at lr 2e-5 leaves about 75% of a
    1024 x 4096 bf16 weight unchanged). Its floating input is cast to fp32 and its output back to ``dtype``, so the
    model around it reads what it read before, with or without autocast (under autocast its matmuls still run in
    bf16). Nothing changes where ``dtype`` is fp32 (every CPU run)."""
    if dtype == torch.float32:
        return module
    module.float()

    def to_fp32(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)

    def back(_module: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        return out.to(dtype) if isinstance(out, Tensor) and out.is_floating_point() else out

    module.register_forward_pre_hook(to_fp32)
    module.register_forward_hook(back)
    return module


def reduced_llava_config(
    config_dict: dict[str, Any],
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    image_size: int = 28,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """A LLaVA config of the same kind (Llama text model, CLIP vision tower, same feature layer and
    strategy) shrunk for a CPU test: ``(image_size/patch)²`` image tokens, e.g. 28 px / 14 = 4."""
    if vision_layers < 2:
        raise ValueError(f"vision_layers={vision_layers}: LLaVA reads the second-to-last layer; give 2 or more")
    out = {k: v for k, v in config_dict.items() if k not in ("text_config", "vision_config")}
    text = dict(config_dict["text_config"])
    text.update(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
    )
    vis = dict(config_dict["vision_config"])
    vis.update(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        projection_dim=vision_hidden,
    )
    if vocab_size is not None:
        text["vocab_size"] = out["vocab_size"] = vocab_size
    out.update(text_config=text, vision_config=vis)
    return out


def offline_llava_processor(config_dict: dict[str, Any], tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """A ``LlavaProcessor`` built without the hub: PIL CLIP image processing at the vision tower's size,
    and ``tokenizer`` given ``<image>`` (and ``<pad>`` if it has no pad token), in place. Returns it and ``config_dict`` adjusted
    to the tokenizer (``image_token_index``, ``pad_token_id``, a vocabulary large enough)."""
    from transformers import AutoConfig, CLIPImageProcessorPil, LlavaProcessor

    config_dict = AutoConfig.for_model(**config_dict).to_dict()  # the defaults a config.json may leave out
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [IMAGE_TAG], **({} if tokenizer.pad_token else {"pad_token": "<pad>"})}
    )
    tokenizer.padding_side = "left"
    size = config_dict["vision_config"]["image_size"]
    images = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=config_dict["vision_config"]["patch_size"],
        vision_feature_select_strategy=config_dict.get("vision_feature_select_strategy", "default"),
        image_token=IMAGE_TAG,
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy then drops (as llava-hf's)
    )
    vocab = max(config_dict["text_config"].get("vocab_size", 0), len(tokenizer))
    adjusted = dict(config_dict, text_config={**config_dict["text_config"], "vocab_size": vocab}, vocab_size=vocab)
    adjusted.update(image_token_index=processor.image_token_id, pad_token_id=tokenizer.pad_token_id)
    return processor, adjusted


def build_paper(
    source: str = PAPER_ID,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    *,
    config: dict[str, Any] | None = None,
    tokenizer: Any = None,
    train_projector: bool = True,
    seed: int | None = None,
) -> tuple[nn.Module, Any]:
    """``(LlavaForConditionalGeneration, processor)``; frozen but the projector (``train_projector``), eval
    mode. Pretrained from a hub id or a local folder with ``AutoProcessor``; or ``random_weights`` from ``config`` (default: the
    shipped llava-1.5-7b config), with the source's processor if it loads offline, else
    ``offline_llava_processor`` over ``tokenizer`` (default: the embedded SmolLM2 tokenizer); ``seed``: the random
    weights', set as the model is built (after the tokenizer, whose first conversion draws random numbers)."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from harness.hub import hub_load_error, is_hub_id
    from harness.models import _brief, embedded_folder, load_config_dict

    local = Path(source).expanduser()  # "~/llava": the home's folder, as the runner's checks and models.resolve read it
    where = str(local) if local.exists() else source  # what from_pretrained reads; messages name the source as given
    processor = None
    if tokenizer is None or not random_weights:  # random weights never download: a local or cached processor only
        try:
            processor = AutoProcessor.from_pretrained(where, local_files_only=random_weights)
        except (OSError, ValueError) as exc:
            if not random_weights:
                if isinstance(exc, OSError) and is_hub_id(source):  # offline, gated: transformers' several lines
                    raise hub_load_error(source, exc) from None
                raise ValueError(f"no processor for {source!r} ({_brief(exc)}); give a local LLaVA folder") from None
    if random_weights:
        data = config if config is not None else load_config_dict(source)
        if processor is None:
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
            processor, data = offline_llava_processor(data, tokenizer)
        if seed is not None:
            torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(AutoConfig.for_model(**data))
    else:
        try:
            model = LlavaForConditionalGeneration.from_pretrained(where, dtype=dtype)
        except OSError as exc:
            if is_hub_id(source):
                raise hub_load_error(source, exc) from None
            raise ValueError(
                f"cannot load {source!r} ({_brief(exc)}); give a local folder or use random_weights=True"
            ) from None
    processor.tokenizer.padding_side = "left"
    model.requires_grad_(False)  # frozen, lm_head too (outside the language model the adapters attach to)
    model.model.multi_modal_projector.requires_grad_(train_projector)
    model = model.to(device=device, dtype=dtype).eval()
    if train_projector:
        hold_in_fp32(model.model.multi_modal_projector, dtype)
    return model, processor


def make_prepare(model: nn.Module, tokenizer_or_processor: Any) -> Prepare:
    """``prepare(texts, images)`` → tensors for ``model(**batch)``: texts with one ``<image>`` per image
    (images flat, in order of appearance), left-padded; ``pixel_values`` only when images are given."""
    if isinstance(model, LlavaStyle):
        tokenizer, padding = tokenizer_or_processor, pad_id(tokenizer_or_processor)

        def prepare(texts: Sequence[str], images: Sequence[Any] | None = None) -> dict[str, Tensor]:
            _check_tags(texts, images)
            rows = [expand_image_tokens(tokenizer, t, model.image_token_id, model.tokens_per_image) for t in texts]
            batch = left_pad(rows, padding)
            if images:
                batch["pixel_values"] = vision.preprocess(list(images), model.config.image_size)
            return batch

        return prepare
    processor = tokenizer_or_processor
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"{type(model).__name__} needs its processor (AutoProcessor), not {type(processor).__name__}")

    def prepare_hf(texts: Sequence[str], images: Sequence[Any] | None = None) -> dict[str, Tensor]:
        _check_tags(texts, images)
        pil = [vision.load_image(i) for i in images] if images else None
        batch = dict(processor(text=list(texts), images=pil, return_tensors="pt", padding=True))
        if "pixel_values" in batch:  # the processor gives float32; the vision tower wants its own dtype
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        return batch

    return prepare_hf


def load(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, random_weights: bool = False
) -> tuple[nn.Module, Any, Prepare]:
    """``(model, tokenizer or processor, prepare)`` for ``embedded`` or a LLaVA hub id / folder."""
    if spec == "embedded":
        if random_weights:
            model = LlavaStyle.from_config(embedded_config()).to(device=device, dtype=dtype).eval()
            from transformers import AutoTokenizer

            from harness.models import embedded_folder

            tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
        else:
            model, tokenizer = build_embedded(device, dtype)
    else:
        model, tokenizer = build_paper(spec, device, dtype, random_weights)
    return model, tokenizer, make_prepare(model, tokenizer)


def _check_tags(texts: Sequence[str], images: Sequence[Image.Image | str | Path] | None) -> None:
    tags, given = sum(t.count(IMAGE_TAG) for t in texts), len(images or [])
    if tags != given:
        raise ValueError(
            f"the texts hold {tags} {IMAGE_TAG} tag(s) but {given} image(s) were given; give one image per tag"
        )
