"""Conversations with images into training batches, for either model (the embedded ``LlavaStyle`` or
transformers' LLaVA): one chat format and one tokenisation for training and scoring.

A prompt is the model's chat template around the human turn (``<image>`` where the image goes), the
target the gpt turn plus EOS; the loss covers the target only. Images stay paths until a batch is
built (a batch's pixels are made then, not kept for the whole training set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import torch
from torch import nn

from harness.task import Batch, Example, Recipe
from tasks.lm import IGNORE, collate, loss_sum, supervised_tail
from tasks.multimodal import vision
from tasks.multimodal.model import IMAGE_TAG, LlavaStyle, expand_image_tokens, image_geometry, pad_id


def chat_prompt(tokenizer: Any, human: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """``human`` as the user turn in ``tokenizer``'s chat template, after the conversation's earlier
    ``(human, gpt)`` turns, ending where the answer starts (LLaVA-1.5's ``USER: … ASSISTANT: …</s>`` turns
    when the tokenizer has no template). Stage 1 and stage 2 both use it.

    A template that reads content as a string gets strings; one that reads only a list of ``{"type": ...}``
    parts (LLaVA's processor template, which ``processor.save_pretrained`` puts beside the tokenizer) renders
    strings as nothing, so it gets parts: an image part where each ``<image>`` was, text parts between. A
    template that keeps the turns' text and images neither way is refused rather than trained on empty prompts."""
    if not getattr(tokenizer, "chat_template", None):
        end = getattr(tokenizer, "eos_token", None) or ""  # LLaVA-1.5 (Vicuna v1) ends an answer with </s>
        earlier = "".join(f"USER: {h} ASSISTANT: {g}{end}" for h, g in history)
        return f"{earlier}USER: {human} ASSISTANT:"  # LLaVA-1.5's conversation format
    turns = [text for h, g in history for text in (h, g)] + [human]
    rendered = []
    for as_parts in (False, True):
        messages = [
            {"role": "user" if k % 2 == 0 else "assistant", "content": _parts(text) if as_parts else text}
            for k, text in enumerate(turns)
        ]
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError as exc:  # a template that reads parts may fail on strings (content[0]['text'])
            rendered.append(f"an error, {type(exc).__name__}: {exc}")
            continue
        if _keeps(prompt, turns):
            return prompt
        rendered.append(repr(prompt[:120]))
    raise ValueError(
        f"the tokenizer's chat template drops the question or its {IMAGE_TAG} tags whether a turn's content is a "
        f"string or a list of {{'type': 'image'|'text'}} parts (it rendered {rendered[0]}, then "
        f"{rendered[1]}); give the model folder a chat template that renders one of the two, or remove "
        "chat_template (tokenizer_config.json, chat_template.jinja/.json) for LLaVA-1.5's USER: … ASSISTANT: format"
    )


def _parts(text: str) -> list[dict[str, str]]:
    """``text`` as LLaVA's processor template reads a turn: an image part per ``<image>``, in its place, and
    the text between (stripped: the template writes ``<image>\\n`` and a space after each text itself)."""
    parts: list[dict[str, str]] = []
    for i, piece in enumerate(text.split(IMAGE_TAG)):
        if i:
            parts.append({"type": "image"})
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts


def _keeps(prompt: str, turns: Sequence[str]) -> bool:
    """Whether ``prompt`` holds every turn's text, in order, and exactly the turns' ``<image>`` tags."""
    at = 0
    for text in turns:
        for piece in text.split(IMAGE_TAG):
            if piece.strip():
                at = prompt.find(piece.strip(), at)
                if at < 0:
                    return False
                at += len(piece.strip())
    return prompt.count(IMAGE_TAG) == sum(text.count(IMAGE_TAG) for text in turns)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    images: list[Path]


class Formatter:
    """Chat formatting and tokenisation for one model: ``prompt(text)`` (the full prompt string),
    ``ids(prompt)`` (image tags expanded to the model's placeholders), ``pixels(images)``."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.embedded = isinstance(model, LlavaStyle)
        self.pad_id = pad_id(self.tokenizer)
        self.eos_id = self.tokenizer.eos_token_id
        self.image_size, self.tokens_per_image = image_geometry(model)
        self.image_token_id = model.image_token_id if self.embedded else model.config.image_token_id
        self.feature_cache: dict[Path, torch.Tensor] | None = None  # scoring: each image encoded once
        # LLaVA's processor tokenises the whole prompt with BOS first (Vicuna always saw one); ours tokenises it
        # in pieces without special tokens, so the BOS goes in front here, in training and scoring alike.
        # The embedded SmolLM2 adds none.
        self.bos: list[int] = []
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        if not self.embedded and bos_id is not None:
            probe = list(self.tokenizer("a")["input_ids"])
            self.bos = [bos_id] if probe and probe[0] == bos_id else []

    def features(self, images: Sequence[Path]) -> torch.Tensor:
        """The frozen encoder's output for ``images`` (embedded model), each image encoded once."""
        cache = self.feature_cache if self.feature_cache is not None else {}
        missing = list(dict.fromkeys(p for p in images if p not in cache))
        if missing:
            device = next(self.model.parameters()).device
            encoded = self.model.encode_images(self.pixels(missing).to(device))
            cache.update(zip(missing, encoded, strict=True))
        return torch.stack([cache[p] for p in images])

    def prompt(self, human: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The human turn in the model's chat format, after the earlier turns, ending where the answer starts."""
        return chat_prompt(self.tokenizer, human, history)

    def ids(self, text: str) -> list[int]:
        """Token ids (the BOS a LLaVA tokenizer adds, then the text without special tokens); each ``<image>``
        becomes the model's placeholders."""
        return self.bos + expand_image_tokens(self.tokenizer, text, self.image_token_id, self.tokens_per_image)

    def target_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def pixels(self, images: Sequence[Path]) -> torch.Tensor:
        if self.embedded:
            return vision.preprocess(list(images), self.image_size)
        pil = [vision.load_image(i) for i in images]
        return self.processor.image_processor(pil, return_tensors="pt")["pixel_values"]


def collate_rows(fmt: Formatter, items: Sequence[Encoded]) -> Batch:
    """Left-padded ``input_ids``/``attention_mask``/``position_ids``/``labels`` (+ ``pixel_values``)."""
    batch: Batch = collate(items, fmt.pad_id)
    images = [p for e in items for p in e.images]
    if images and fmt.embedded and fmt.feature_cache is not None:
        batch["vision_features"] = fmt.features(images)
    elif images:
        batch["pixel_values"] = fmt.pixels(images)
    return batch


class MultimodalRecipe(Recipe):
    """Image + question -> answer, loss on the answer tokens (and EOS)."""

    def __init__(self, fmt: Formatter, cutoff_len: int) -> None:
        self.fmt, self.cutoff_len = fmt, cutoff_len
        self.truncated = 0  # examples whose answer (or its EOS) was cut at cutoff_len (train() warns)

    def encode(self, example: Example) -> Encoded:
        prompt = self.fmt.ids(self.fmt.prompt(example.prompt, example.meta.get("history", ())))
        target = self.fmt.target_ids(example.target)
        if self.fmt.eos_id is not None:
            target.append(self.fmt.eos_id)
        room = self.cutoff_len - len(prompt)
        if room < 1:  # never cut into the image tokens: the count must match the images
            raise ValueError(
                f"example {example.meta.get('id', '?')}: its prompt is {len(prompt)} tokens with the image(s) and "
                f"the conversation's earlier turns, leaving no room for its answer under cutoff_len="
                f"{self.cutoff_len}; shorten the question or the conversation, or raise cutoff_len (TrainConfig."
                "cutoff_len: the preset's, or in the Python API; no flag sets it)"
            )
        self.truncated += len(target) > room  # its answer lost tokens: train() says how many examples did
        target = target[:room]
        return Encoded(prompt + target, [IGNORE] * len(prompt) + target, list(example.meta.get("images", [])))

    def collate(self, items: list[Encoded]) -> Batch:
        batch = collate_rows(self.fmt, items)
        batch["keep"], batch["n"] = supervised_tail(batch["labels"])
        batch["n_images"] = sum(len(e.images) for e in items)
        return batch

    def units(self, batch: Batch) -> int:
        return batch["n"]

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return loss_sum(model, batch, batch["keep"], use_cache=batch["input_ids"].is_meta)

    def stats(self, batch: Batch) -> tuple[int, int]:
        return batch["input_ids"].shape[0], int(batch["attention_mask"].sum())

    def shape(self, batch: Batch) -> list[int]:
        return [*batch["input_ids"].shape, batch["keep"], batch["n_images"]]

    def meta_batch(self, shape: list[int]) -> Batch:
        rows, tokens, keep, n_images = shape  # no mask: transformers would read its values
        ids = torch.zeros((rows, tokens), dtype=torch.long, device="meta")
        batch: Batch = {"input_ids": ids, "labels": ids, "keep": keep, "n": rows}
        if n_images:
            size = self.fmt.image_size
            batch["pixel_values"] = torch.zeros((n_images, 3, size, size), device="meta")
        return batch


def examples_from(records: Sequence[Any]) -> list[Example]:
    """Training examples from data records: each (human, gpt) turn of a conversation is one example, the loss
    on its answer, with the conversation's earlier turns as its context (``meta["history"]``) and the images
    their ``<image>`` tags and its own call for (LLaVA-style data has them in the first turn): a later
    question is about the image the conversation showed, not asked without it."""
    out = []
    for r in records:
        seen = 0
        for k, (human, gpt) in enumerate(r.turns):
            seen += human.count(IMAGE_TAG)
            meta = {"images": list(r.images[:seen]), "id": r.id, "history": list(r.turns[:k])}
            out.append(Example(human, gpt, r.domain, meta))
    return out
