"""lmms-eval task helpers for the harness's multimodal test sets (``!function utils.<name>`` in the YAMLs).

A doc is one prompt the harness asks: ``{"id", "image": path or "", "prompt", "choices", "answer"}``.
"""

from PIL import Image

from tasks.images import to_rgb


def doc_to_visual(doc):
    """The image as the native scorer reads it: transparency composited onto white (``to_rgb``)."""
    if not doc["image"]:
        return []
    with Image.open(doc["image"]) as image:
        return [to_rgb(image)]


def doc_to_text(doc):
    return doc["prompt"]


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_target(doc):
    return doc["answer"]
