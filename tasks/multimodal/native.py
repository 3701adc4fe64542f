"""The native scorer: MMBench-style multiple choice (the option letters scored by log-likelihood, every
rotation of the options asked: CircularEval), MME-style yes/no pairs (``Yes`` vs ``No`` by
log-likelihood; acc and acc+), and short open answers (greedy decoding; exact match, or ANLS for
document answers). Every prompt goes through the same ``Formatter`` the training used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from tasks.lm import cache_kwargs, output_cache
from tasks.multimodal import scoring
from tasks.multimodal.data import IMAGE_TOKEN, Record
from tasks.multimodal.recipe import Encoded, Formatter, collate_rows

YES, NO = "Yes", "No"  # the training data's yes/no answers
# Open answers are decoded for at most this many tokens ("short answers"; the generated data's longest, the
# worked "9 + 8 = 17", is 8 SmolLM2 tokens), unless the domain's reference answers need more: see new_tokens.
MAX_NEW_TOKENS = 12


@dataclass
class Scored:
    """One test question: its 0-100 score and what the model answered."""

    record: Record
    score: float
    pred: Any
    detail: dict[str, Any]


def prompts_for(record: Record) -> list[tuple[str, list[str]]]:
    """The (human turn, candidate answers) the model is asked for ``record``: one per rotation for a
    choice question, one for yes/no and open (no candidates: generated).

    The scorer adds its instruction line (``scoring.YESNO_INSTRUCTION``, ``OPEN_INSTRUCTION``, after a choice
    question's options ``CHOICE_INSTRUCTION``) unless the question already ends with it, word for word, as those
    converted from MME or LLaVA's eval files do: asked as written then, not with the line twice (a choice
    question's line goes after its options, where the scorer puts it; a yes/no question ending with the open line,
    as LLaVA's MME and POPE files ask them, is asked as written too)."""
    tag = IMAGE_TOKEN + "\n" if record.images else ""
    question = record.question.strip()
    if record.kind == "choice":
        asked = question.removesuffix(scoring.CHOICE_INSTRUCTION).rstrip()
        return [
            (tag + scoring.choice_prompt(asked, options), list(scoring.LETTERS[: len(options)]))
            for options, _ in scoring.circular_variants(record.options, record.answer)
        ]
    if record.kind == "yesno":
        # LLaVA's own MME and POPE files end a yes/no question with the open line, as LLaVA asks them (a re-review)
        ends = question.endswith((scoring.YESNO_INSTRUCTION, scoring.OPEN_INSTRUCTION))
        asked = question if ends else scoring.yesno_prompt(question)
        return [(tag + asked, [YES, NO])]
    asked = question if question.endswith(scoring.OPEN_INSTRUCTION) else scoring.open_prompt(question)
    return [(tag + asked, [])]


def new_tokens(fmt: Formatter, records: Sequence[Record]) -> int:
    """How many tokens open answers to ``records`` are decoded for: ``MAX_NEW_TOKENS``, or where a reference
    answer is longer in ``fmt``'s tokens (SmolLM2 reads "$1,234,567.89" as 13, a digit a token), its length + 2,
    so that the longest answer can be said in full (its own tokenisation, two to spare)."""
    longest = max((len(fmt.target_ids(a)) for r in records if r.kind == "open" for a in r.answers or ()), default=0)
    return MAX_NEW_TOKENS if longest <= MAX_NEW_TOKENS else longest + 2


def score_records(
    model,
    fmt: Formatter,
    records: Sequence[Record],
    batch_size: int,
    progress: str | None = None,
    max_new: int | None = None,
) -> list[Scored]:
    """Every record scored; choices and yes/no in batches of ``batch_size`` prompts, open answers
    decoded greedily in batches, for ``max_new`` tokens at most (default: ``new_tokens`` of ``records``)."""
    max_new = new_tokens(fmt, records) if max_new is None else max_new
    fmt.feature_cache = {}  # the frozen encoder's output per image, reused by every prompt about it
    asked = [(i, human, cands) for i, r in enumerate(records) for human, cands in prompts_for(r)]
    ranked = [a for a in asked if a[2]]
    opened = [a for a in asked if not a[2]]
    picks: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    bar = tqdm(total=len(asked), desc=progress or "", disable=progress is None, leave=False)
    for start in range(0, len(ranked), batch_size):
        chunk = ranked[start : start + batch_size]
        best = _pick(model, fmt, [(h, records[i].images) for i, h, _ in chunk], [c for _, _, c in chunk])
        for (i, _, _), b in zip(chunk, best, strict=True):
            picks.setdefault(i, []).append(b)
        bar.update(len(chunk))
    for start in range(0, len(opened), batch_size):
        chunk = opened[start : start + batch_size]
        outs = generate(model, fmt, [(h, records[i].images) for i, h, _ in chunk], max_new)
        for (i, _, _), text in zip(chunk, outs, strict=True):
            texts[i] = text
        bar.update(len(chunk))
    bar.close()
    fmt.feature_cache = None
    return [score_one(r, picks.get(i, []), texts.get(i, "")) for i, r in enumerate(records)]


def score_one(record: Record, picks: list[int], text: str) -> Scored:
    if record.kind == "choice":
        rotations = scoring.circular_variants(record.options, record.answer)
        right = [p == answer for p, (_, answer) in zip(picks, rotations, strict=True)]
        return Scored(record, 100.0 * scoring.circular_correct(right), picks, {"rotations_right": right})
    if record.kind == "yesno":
        said = "yes" if picks[0] == 0 else "no"
        return Scored(record, 100.0 * (said == record.answer), said, {})
    if record.metric == "anls":
        return Scored(record, scoring.anls(text, record.answers), text, {})
    return Scored(record, 100.0 * scoring.exact_match(text, record.answers), text, {})


def _encode(fmt: Formatter, human: str, images: Sequence[Any], cont: Sequence[int] = ()) -> Encoded:
    ids = fmt.ids(fmt.prompt(human)) + list(cont)
    return Encoded(ids, ids, list(images))


def _pick(model, fmt: Formatter, asks: list[tuple[str, Sequence[Any]]], cands: list[list[str]]) -> list[int]:
    """Index of the most likely candidate per prompt (the first of equals)."""
    scores = candidate_logprobs(model, fmt, asks, cands)
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


@torch.no_grad()
def candidate_logprobs(
    model, fmt: Formatter, asks: list[tuple[str, Sequence[Any]]], cands: list[list[str]]
) -> list[list[float]]:
    """log P(candidate | prompt) for each prompt's candidates. Single-token candidates (letters, Yes/No)
    are read off the prompt's last logits; longer ones are scored as whole continuations."""
    cand_ids = [[fmt.target_ids(c) for c in cs] for cs in cands]
    if all(len(ids) == 1 for cs in cand_ids for ids in cs):
        batch = collate_rows(fmt, [_encode(fmt, h, imgs) for h, imgs in asks])
        logp = _forward(model, batch, keep=1)[:, -1].log_softmax(-1)
        return [[float(logp[r, ids[0]]) for ids in cs] for r, cs in enumerate(cand_ids)]
    out = []
    for (h, imgs), cs in zip(asks, cand_ids, strict=True):
        batch = collate_rows(fmt, [_encode(fmt, h, imgs, ids) for ids in cs])
        keep = max(len(ids) for ids in cs) + 1
        logp = _forward(model, batch, keep=keep)[:, :-1].log_softmax(-1)
        out.append(
            [sum(float(logp[r, keep - 1 - len(ids) + k, t]) for k, t in enumerate(ids)) for r, ids in enumerate(cs)]
        )
    return out


def _forward(model, batch: dict[str, Any], keep: int, **kw: Any) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
    return model(**inputs, logits_to_keep=keep, **kw).logits.float()


@torch.no_grad()
def generate(model, fmt: Formatter, asks: list[tuple[str, Sequence[Any]]], max_new: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers for left-padded prompts, with the KV cache; each row stops at EOS."""
    device = next(model.parameters()).device
    batch = collate_rows(fmt, [_encode(fmt, h, imgs) for h, imgs in asks])
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    mask, positions = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    tokens: list[list[int]] = [[] for _ in asks]
    done = torch.zeros(len(asks), dtype=torch.bool, device=device)
    for _ in range(max_new):
        logits = out.logits[:, -1]
        logits[:, fmt.image_token_id] = -math.inf  # the image placeholder: fed back, it would ask for an image
        nxt = logits.argmax(-1)
        for r, t in enumerate(nxt.tolist()):
            if not done[r]:
                if t == fmt.eos_id:
                    done[r] = True
                else:
                    tokens[r].append(t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(model, output_cache(out)),
            use_cache=True,
            logits_to_keep=1,
        )
    return [fmt.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
