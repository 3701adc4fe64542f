"""The ``cloze`` protocol: each option's own text scored as the continuation of the question.

This follows lm-evaluation-harness's convention for ARC, PIQA, OBQA, HellaSwag and WinoGrande (but for the
four details below), rebuilt from the LLM-Adapters records (whose ``instruction`` holds the question, the
numbered options and an ``Answer format:`` line):

- questions (ARC, OBQA, SIQA, PIQA): context ``"Question: {q}\\nAnswer:"``, continuation ``" {option}"``;
- true/false (BoolQ): context ``"Question: {q}?\\nAnswer:"``, continuations ``" yes"`` / ``" no"``;
- endings (HellaSwag): context ``"{ctx}"``, continuation ``" {ending}"``, both preprocessed as lm-eval's
  ``hellaswag`` task does (WikiHow's ``[title]``/``[step]`` markers out, the context's last part capitalised);
- fill in the blank (WinoGrande, lm-eval's partial scoring): context = the sentence up to the blank with
  the option put in, continuation = the rest of the sentence, the same for every option.

A record's ``input`` (a passage; empty in every LLM-Adapters file) goes before each context on a line of its own,
as lm-eval's ``boolq`` puts its passage: ``"{passage}\nQuestion: {q}?\nAnswer:"``.

``acc`` takes the option with the highest summed log-likelihood; ``acc_norm`` divides it by the
continuation's length in characters first. Training uses the same pair: the correct option's context as
prompt and its continuation as target.

Four details differ from lm-eval, and every committed commonsense result was scored with them (README,
"Scoring protocols", gives their measured effect): ``acc_norm``'s length counts the continuation's leading
space (lm-eval divides by the option's own text); OBQA gets the ``Question: …\\nAnswer:`` frame (lm-eval's
``openbookqa`` scores the option after the bare question stem, which it completes); an option's text is
stripped (lm-eval scores PIQA's trailing spaces); and no context starts with a BOS token (lm-eval's HFLM
adds the tokenizer's own where it has one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from tasks.commonsense import data
from tasks.lm import cache_kwargs, tokenize

_FORMAT = re.compile(r"Answer format:\s*([\w/]+)\s*$")
_YES_NO = {"true": "yes", "false": "no"}
# lm-eval reports acc_norm for these (length matters: their options differ a lot in length)
NORM_HEADLINE = {"ARC-Challenge", "openbookqa", "piqa", "hellaswag"}


@dataclass(frozen=True)
class ClozeItem:
    contexts: tuple[str, ...]  # one per option (WinoGrande's differ; the others repeat one context)
    continuations: tuple[str, ...]
    answer: int  # index of the correct option


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def parse(record: dict[str, Any], training: bool = False) -> ClozeItem:
    """Question and options from an LLM-Adapters record, its passage (``input``) before each context;
    ``ValueError`` says what does not fit. ``training``: a training example, whose answer outside its format's
    words is refused with the advice that ``--protocol choice`` trains it (where it does: ``_answer_not_a_word``)."""
    item = _parse(record, training)
    passage = (record.get("input") or "").strip()
    if not passage:
        return item
    return ClozeItem(tuple(f"{passage}\n{c}" for c in item.contexts), item.continuations, item.answer)


class FormatError(ValueError):
    """An ``Answer format:`` line no protocol can score on (``format_words``), or an answer not among its words."""


def format_words(found: str) -> list[str]:
    """The options an ``Answer format:`` line names; ``FormatError`` for an empty or repeated one ("a/b/", "a//b",
    "a/b/a"), which no question can be scored on."""
    words = found.split("/")
    if "" in words or len(set(words)) < len(words):
        raise FormatError(
            f"its answer format {found!r} has an empty or repeated option; name each option once (Answer format: a/b/...)"
        )
    return words


def _answer_not_a_word(record: dict[str, Any], words: list[str], training: bool) -> FormatError:
    """An answer not among its format's words: no option text to train or score. A test example's is refused by every
    protocol (choice: not one of its options), no other suggested; a training example's whose output ends with its
    answer trains under ``--protocol choice``, which trains on the output and checks nothing else of it
    (``data.ends_with_answer``): from a review, that advice was missing."""
    refused = f"answer {record['answer']!r} is not one of its answer format's words {words}; give one of them"
    if training and data.ends_with_answer(record):
        refused += (
            ", or use --protocol choice, which trains on its output (that ends with its answer) without reading "
            "its answer format"
        )
    return FormatError(refused)


def _parse(record: dict[str, Any], training: bool = False) -> ClozeItem:
    instruction = record["instruction"].strip()
    match = _FORMAT.search(instruction)
    if not match:
        raise ValueError("no 'Answer format: a/b/...' line at the end of the instruction")
    words = format_words(match.group(1))
    if len(set(words)) < 2:
        raise FormatError(  # every protocol refuses it (choice: "names one option"), none to suggest (a re-review)
            f"its answer format names one option ({'/'.join(words)}), which would always be right; name every option"
        )
    if record["answer"] not in words:
        raise _answer_not_a_word(record, words, training)
    body = instruction[: match.start()]
    head, sep, rest = body.partition(": ")
    if not sep or "\n" in head:
        raise ValueError("no 'Please ...: <question>' head before the options")
    answer = words.index(record["answer"])
    if not any(w[-1].isdigit() for w in words):  # true/false, yes/no or other words: the words are the options
        # letters naming options: one prefix (none, answer, solution...) and last letters a, b, c... (A, B...) in
        # order; him/his and cat/car share a prefix too, and are words
        lasts = "".join(w[-1] for w in words)
        if len({w[:-1] for w in words}) == 1 and lasts in (LETTERS[: len(words)], LETTERS[: len(words)].upper()):
            # letters (A/B/C/D, answerA/answerB) name options whose texts this cannot find: it would score the
            # letters themselves
            raise ValueError(
                f"answer format {'/'.join(words)}: cloze scores numbered options (answer1/answer2...) or words that "
                "are the answers themselves (true/false, yes/no), not letters naming options"
            )
        question = rest.strip()
        context = f"Question: {question}{'' if question.endswith('?') else '?'}\nAnswer:"
        return ClozeItem((context,) * len(words), tuple(" " + _YES_NO.get(w, w) for w in words), answer)
    question, options = _split_options(rest, words)
    if "fill in the blank" in head:
        if question.count("_") != 1:
            raise ValueError("a fill-in-the-blank sentence needs exactly one '_'")
        before, after = question.split("_")
        return ClozeItem(tuple(before + o for o in options), (" " + after.strip(),) * len(options), answer)
    if "ending" in head:  # HellaSwag: lm-eval's preprocessing of the context and of each ending
        return ClozeItem(
            (_hellaswag(_CTX_B.sub(lambda m: m[1] + m[2].capitalize(), question)),) * len(options),
            tuple(" " + _hellaswag(o) for o in options),
            answer,
        )
    context = f"Question: {question}\nAnswer:"
    return ClozeItem((context,) * len(options), tuple(" " + o for o in options), answer)


# A HellaSwag record's context is "{activity_label}: {ctx_a} {ctx_b}" with ctx_b, the start of the sentence the
# ending completes, in lower case ("... smiles. then"); lm-eval capitalises it. The record no longer says where
# ctx_b starts: taken as the lower-case tail after the last sentence end (ActivityNet's shape; a WikiHow context
# whose ctx_b is empty ends in a full sentence or a "[title]"/"[step]" marker and is left as it is).
_CTX_B = re.compile(r"""([.!?]["')]* )([a-z][^.!?]*)$""")


def _hellaswag(text: str) -> str:
    """lm-eval's ``hellaswag`` preprocessing (lm_eval/tasks/hellaswag/utils.py, lm-eval 0.4), as it is: WikiHow's
    " [title]" becomes ". " and every other [marker] goes, then double spaces once become single."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _split_options(text: str, words: list[str]) -> tuple[str, list[str]]:
    """``"q\\n\\nAnswer1: a Answer2: b"`` -> ("q", ["a", "b"]), markers taken from the answer words."""
    positions = []
    start = 0
    for word in words:
        marker = re.compile(rf"(?:^|\s){re.escape(word.capitalize())}:\s?")
        found = marker.search(text, start)
        if not found:
            raise ValueError(f"option marker {word.capitalize()!r}: not found")
        positions.append((found.start(), found.end()))
        start = found.end()
    question = text[: positions[0][0]].strip()
    ends = [p[0] for p in positions[1:]] + [len(text)]
    options = [text[b:e].strip() for (_, b), e in zip(positions, ends, strict=True)]
    if not question or not all(options):
        raise ValueError("empty question or option")
    return question, options


@torch.no_grad()
def loglikelihoods(
    model, tokenizer, groups: Sequence[tuple[str, Sequence[str]]], batch_size: int = 16, progress: str | None = None
) -> list[list[float]]:
    """Summed log-probability of each continuation after its group's context.

    Each context runs once: a left-padded batch of contexts fills a KV cache, which is then repeated for
    each continuation of its group (right-padded, explicit positions). Exact: the same numbers as
    scoring every context + continuation on its own, at a fraction of the tokens (ARC: ~2.5x fewer)."""
    from transformers import DynamicCache

    from tasks.commonsense.scoring import continuation_ids, left_pad

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctxs = [tokenize(tokenizer, c) for c, _ in groups]
    conts = [[continuation_ids(tokenizer, c, t) for t in ts] for c, ts in groups]
    for (context, texts), ctx, ids in zip(groups, ctxs, conts, strict=True):
        if not ctx:  # nothing to read the first continuation token's prediction from
            raise ValueError(f"an empty context (no tokens) for the continuations {texts}")
        if any(not c for c in ids):
            raise ValueError(f"a continuation of {context[-40:]!r} has no tokens after its context: {texts}")
    out = [[0.0] * len(ts) for _, ts in groups]
    # similar lengths batch together: by the longest row a group makes (PIQA's options are long)
    order = sorted(range(len(groups)), key=lambda g: len(ctxs[g]) + max(map(len, conts[g])))
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None, leave=False):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in left_pad([ctxs[g] for g in idx], pad_id).items()}
        cache = DynamicCache()
        first = model(**batch, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits[:, -1].float()
        first = torch.log_softmax(first, -1)  # predicts every continuation's first token
        rows = [(b, g, i) for b, g in enumerate(idx) for i in range(len(conts[g]))]
        width = max(len(conts[g][i]) - 1 for _, g, i in rows)
        second = None
        if width:  # the continuations' further tokens, on the context's cache
            cache.batch_select_indices(torch.tensor([b for b, _, _ in rows], device=device))
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (_, g, i) in enumerate(rows):
                tail = conts[g][i][:-1]
                ids[r, : len(tail)], mask[r, : len(tail)] = torch.tensor(tail, dtype=torch.long), 1
            ctx_mask = batch["attention_mask"][[b for b, _, _ in rows]]
            positions = ctx_mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
            logits = model(
                input_ids=ids.to(device),
                attention_mask=torch.cat([ctx_mask, mask.to(device)], -1),
                position_ids=positions,
                **cache_kwargs(model, cache),
                use_cache=True,
            ).logits
            second = torch.log_softmax(logits.float(), -1)
        for r, (b, g, i) in enumerate(rows):
            cont = conts[g][i]
            score = first[b, cont[0]].item()
            if len(cont) > 1:
                later = torch.tensor(cont[1:], device=device).unsqueeze(-1)
                score += second[r, : len(cont) - 1].gather(-1, later).sum().item()
            out[g][i] = score
    return out


def cloze_predictions(
    model, tokenizer, items: Sequence[ClozeItem], batch_size: int, progress: str | None = None
) -> tuple[list[int], list[int], list[list[float]]]:
    """(acc predictions, acc_norm predictions, scores) per item."""
    groups: list[tuple[str, list[str]]] = []  # one context and its continuations; WinoGrande: one each
    for item in items:
        if len(set(item.contexts)) == 1:
            groups.append((item.contexts[0], list(item.continuations)))
        else:
            groups += [(c, [t]) for c, t in zip(item.contexts, item.continuations, strict=True)]
    flat = iter(score for group in loglikelihoods(model, tokenizer, groups, batch_size, progress) for score in group)
    scores = [[next(flat) for _ in item.continuations] for item in items]
    acc = [max(range(len(s)), key=s.__getitem__) for s in scores]
    norm = [
        max(range(len(s)), key=lambda i, s=s, it=it: s[i] / len(it.continuations[i]))
        for s, it in zip(scores, items, strict=True)
    ]
    return acc, norm, scores
