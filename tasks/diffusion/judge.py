"""The GPT-as-judge of EffiLoRA Tables 12-13: seven criteria, each an integer 1-10, Avg as Table 4.

Speaks the OpenAI chat API through the ``openai`` client, so any compatible server works: the endpoint
is the client's ``OPENAI_BASE_URL``, the key ``OPENAI_API_KEY`` (read by the client, never written
anywhere by the harness). Every parsed answer is cached on disk, keyed by the image's sha256, the
prompt, the rubric version and the judge model: a cached answer is never requested again. An answer
that is not one JSON object with exactly the seven keys and integer values 1-10 is asked for again up
to ``RETRIES`` times, then recorded as failed for that image; the run goes on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import models
from harness.atomic import write_json

RUBRIC_VERSION = "1"
CRITERIA = ("quality", "detail", "theme", "creativity", "style", "emotion", "tech")
RETRIES = 3  # requests per image at most (the first and two more) before it is recorded as failed
TIMEOUT_S = 60.0
RUBRIC = """You are an expert judge of AI-generated images. Rate the image for the text prompt it was generated \
from on seven criteria, each an integer from 1 (worst) to 10 (best):
- quality: overall visual quality (sharpness, no artifacts).
- detail: richness and precision of details.
- theme: how well the image matches the prompt's subject and theme.
- creativity: originality of composition and interpretation.
- style: consistency and appeal of the artistic style.
- emotion: how well the image conveys the mood the prompt implies.
- tech: technical execution (colour, lighting, composition).
Answer with one JSON object and nothing else, whose keys are exactly quality, detail, theme, creativity, \
style, emotion, tech and whose values are integers 1-10."""


@dataclass
class Verdict:
    scores: dict[str, int] | None  # None: failed after RETRIES answers
    raw: str
    cached: bool
    requests: int


def parse(answer: str) -> dict[str, int]:
    """The seven scores of one answer; ``ValueError`` says what is wrong with it."""
    match = re.search(r"\{.*\}", answer, re.DOTALL)
    if not match:
        raise ValueError("no JSON object in the answer")
    obj = json.loads(match.group(0))
    if not isinstance(obj, dict) or set(obj) != set(CRITERIA):
        raise ValueError(
            f"keys must be exactly {', '.join(CRITERIA)}; got {sorted(obj) if isinstance(obj, dict) else obj!r}"
        )
    out = {}
    for key in CRITERIA:
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
            raise ValueError(f"{key} must be an integer 1-10, got {value!r}")
        out[key] = value
    return out


def cache_key(image_png: bytes, prompt: str, judge_model: str) -> str:
    ident = {
        "image_sha256": hashlib.sha256(image_png).hexdigest(),
        "prompt": prompt,
        "rubric": RUBRIC_VERSION,
        "judge_model": judge_model,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class Judge:
    def __init__(self, judge_model: str, cache: Path | None = None, client: Any = None):
        if client is None:
            try:
                import openai
            except ImportError:
                raise ValueError("the judge needs the openai client: pip install openai") from None
            client = openai.OpenAI(timeout=TIMEOUT_S, max_retries=2)  # OPENAI_BASE_URL and OPENAI_API_KEY
        self.model, self.client = judge_model, client
        self.cache = cache or models.cache_dir() / "diffusion" / "judge"

    def __call__(self, image_png: bytes, prompt: str) -> Verdict:
        path = self.cache / f"{cache_key(image_png, prompt, self.model)}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            return Verdict(parse(saved["answer"]), saved["answer"], True, 0)
        url = "data:image/png;base64," + base64.b64encode(image_png).decode()
        messages = [
            {"role": "system", "content": RUBRIC},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Prompt: {prompt}"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            },
        ]
        raw = ""
        for attempt in range(1, RETRIES + 1):
            reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0)
            raw = reply.choices[0].message.content or ""
            try:
                scores = parse(raw)
            except (ValueError, json.JSONDecodeError):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"answer": raw, "prompt": prompt, "judge_model": self.model, "rubric": RUBRIC_VERSION})
            return Verdict(scores, raw, False, attempt)
        return Verdict(None, raw, False, RETRIES)
