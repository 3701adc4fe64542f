"""The two LLM-Adapters scoring protocols, batched so that batched results equal batch-size-1 results.

Batches are left-padded with an attention mask *and* explicit position ids (a left-padded row without
them would see shifted positions). ``choice`` scores each label word as the continuation of
``prompt + "the correct answer is"`` by log-likelihood; when the label words share all tokens but the
last (``answer1`` .. ``answer5`` are `` answer`` + digit), one forward pass serves every candidate,
which is exact, not an approximation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tasks.commonsense.prompts import ANSWER_PREFIX


@dataclass
class _Row:
    ids: list[int]  # context + the continuation tokens shared by the candidates, minus the last
    shared: list[int]  # the scored tokens before the last one
    last: list[int]  # per candidate: its last token


def continuation_ids(tokenizer, context: str, continuation: str) -> list[int]:
    """Tokens of ``continuation`` as they fall after ``context`` (lm-eval's whole-minus-context rule)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return whole[len(ctx) :]


def _rows_for(tokenizer, prompt: str, candidates: Sequence[str]) -> list[tuple[_Row, list[int]]]:
    """One row if the candidates differ only in their last token, else one row per candidate."""
    context = prompt + ANSWER_PREFIX
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    conts = [continuation_ids(tokenizer, context, " " + c) for c in candidates]
    heads = {tuple(c[:-1]) for c in conts}
    if len(heads) == 1 and all(conts):
        head = list(conts[0][:-1])
        return [(_Row(ctx + head, head, [c[-1] for c in conts]), list(range(len(candidates))))]
    return [(_Row(ctx + c[:-1], c[:-1], [c[-1]]), [i]) for i, c in enumerate(conts)]


def left_pad(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


@torch.no_grad()
def choice_scores(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    batch_size: int = 8,
    progress: str | None = None,
) -> list[list[float]]:
    """Sum of log-probabilities of each candidate continuation, per prompt."""
    device = next(model.parameters()).device
    rows: list[tuple[int, _Row, list[int]]] = []
    for p, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
        rows += [(p, row, idx) for row, idx in _rows_for(tokenizer, prompt, cands)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1].ids))  # similar lengths batch together
    scores = [[0.0] * len(c) for c in candidates]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None, leave=False):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in left_pad([r.ids for _, r, _ in chunk], pad_id).items()}
        keep = max(len(r.shared) + 1 for _, r, _ in chunk)
        logits = model(**batch, logits_to_keep=keep, use_cache=False).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for b, (p, row, idx) in enumerate(chunk):
            tail = logprobs[b, keep - len(row.shared) - 1 :]
            shared = sum(tail[t, tok].item() for t, tok in enumerate(row.shared))
            for i, tok in zip(idx, row.last, strict=True):
                scores[p][i] = shared + tail[-1, tok].item()
    return scores


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 4,
    num_beams: int = 4,
    max_new_tokens: int = 32,
    progress: str | None = None,
) -> list[str]:
    """Beam-search decode (LLM-Adapters: 4 beams, 32 new tokens) with a correct attention mask."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None, leave=False):
        idx = order[start : start + batch_size]
        batch = left_pad([encoded[i] for i in idx], pad_id)
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for i, seq in zip(idx, out[:, batch["input_ids"].shape[1] :], strict=True):
            outputs[i] = tokenizer.decode(seq, skip_special_tokens=True)
    return outputs
