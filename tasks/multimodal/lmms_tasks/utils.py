"""lmms-eval task helpers for the harness's multimodal test sets (``!function utils.<name>`` in the YAMLs).

A doc is one prompt the harness asks: ``{"id", "image": path or "", "prompt", "choices", "answer"}``.
"""

from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")] if doc["image"] else []


def doc_to_text(doc):
    return doc["prompt"]


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_target(doc):
    return doc["answer"]
