"""Causal language modelling, shared by the text-based suites: one tokenisation for training and every
scorer, left-padded batches, a loss over the supervised tail only, and model loading.

Batches are left-padded: the supervised tokens then sit at the end of every row, and logits are
computed only for that tail (exact, and on a CPU about half the step).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness import hub, models
from harness.task import Batch, Example, Loaded, Recipe

IGNORE = -100


def cache_kwargs(model, cache: Any) -> dict[str, Any]:
    """The KV cache as the keyword ``model.forward`` takes: ``cache`` (transformers >= 5.24, which deprecates
    ``past_key_values`` and removes it in 5.40) or ``past_key_values`` (earlier 5.x)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` from transformers 5.24, ``out.past_key_values`` before)."""
    found = getattr(out, "cache", None)
    return found if found is not None else out.past_key_values


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def tokenize(tokenizer, text: str) -> list[int]:
    """The one tokenisation training and every scorer share: no special tokens (no BOS), so a
    BOS-adding tokenizer (Llama-3) sees the same ids in training as in scoring."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, example: Example, cutoff_len: int, train_on_inputs: bool) -> Encoded:
    """Prompt + target (+ EOS unless truncated); with ``train_on_inputs=False`` the prompt is masked.
    The target's tokens are those of ``prompt + target`` after the prompt's (the scorers' rule)."""
    return _encode(tokenizer, example, cutoff_len, train_on_inputs)[0]


def _encode(tokenizer, example: Example, cutoff_len: int, train_on_inputs: bool) -> tuple[Encoded, bool]:
    """``encode``'s result, and whether ``prompt + target`` was cut at ``cutoff_len``."""
    ids = tokenize(tokenizer, example.prompt + example.target)
    n_prompt = len(tokenize(tokenizer, example.prompt))
    return _with_labels(tokenizer, ids[:cutoff_len], n_prompt, cutoff_len, train_on_inputs), len(ids) > cutoff_len


def _with_labels(tokenizer, ids: list[int], n_prompt: int, cutoff_len: int, train_on_inputs: bool) -> Encoded:
    if len(ids) < cutoff_len and tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = min(n_prompt, len(ids))
        labels[:n_prompt] = [IGNORE] * n_prompt
    if labels:  # the first token has nothing before it in its row: left-padded, a pad's logits would predict it
        labels[0] = IGNORE
    return Encoded(ids, labels)


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, width - n :] = torch.tensor(e.input_ids)
        labels[i, width - n :] = torch.tensor(e.labels)
        mask[i, width - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def supervised_tail(labels: torch.Tensor) -> tuple[int, int]:
    """(positions from the end whose logits the loss needs, supervised tokens) of a left-padded batch."""
    supervised = labels[:, 1:] != IGNORE
    n_tokens = int(supervised.sum())
    if n_tokens == 0:
        return 0, 0
    first = int(supervised.any(0).float().argmax())  # first position any row supervises
    return labels.shape[1] - first, n_tokens


# what a saved tokenizer leaves in a model folder (any one: fast, sentencepiece, BPE or WordPiece files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt")  # fmt: skip


def check_tokenizer_files(folder: Path) -> None:
    """``ValueError`` where a model folder holds no tokenizer: transformers then builds a near-empty one, under
    which every text encodes to nothing (a run failed with an IndexError) or to one unknown token (every answer
    ties: a run scored nonsense)."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"model folder {str(folder)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
            "model's tokenizer beside its weights (tokenizer.save_pretrained(folder))"
        )


def loss_sum(model, batch: dict[str, Any], keep: int, use_cache: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised tokens, with logits for the last ``keep``
    positions only (from ``supervised_tail``). A batch with nothing supervised (``keep`` 0) gives 0 through the
    whole graph (two positions, the target ignored; ``logits_to_keep=0`` would mean every position)."""
    keep = max(keep, 2)
    inputs = {k: v for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
    logits = model(**inputs, logits_to_keep=keep, use_cache=use_cache).logits[:, :-1]
    targets = batch["labels"][:, batch["labels"].shape[1] - keep + 1 :]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def pad_id(tokenizer: Any, model: str | None = None) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its eos (left-padded, the mask hides either);
    a ``ValueError`` where it has neither (the batch, full of ``None``, failed in torch as each run loaded the model).
    ``model``: the ``--model`` the tokenizer is of, for the message."""
    found = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if found is None:
        raise ValueError(
            f"{f'model {model!r}: ' if model else ''}the tokenizer has neither a pad nor an eos token; set "
            "tokenizer.pad_token (one of its tokens) and save it beside the model (tokenizer.save_pretrained(folder))"
        )
    return found


class CausalLMRecipe(Recipe):
    """Prompt -> target with a tokenizer: the commonsense suite's training (and any text suite's).
    A batch also carries ``keep`` and ``n`` (from ``supervised_tail``) so they are computed once."""

    def __init__(self, tokenizer, cutoff_len: int, train_on_inputs: bool) -> None:
        self.tokenizer, self.cutoff_len, self.train_on_inputs = tokenizer, cutoff_len, train_on_inputs
        self.truncated = 0  # examples cut at cutoff_len (train() warns)
        self.pad_id = pad_id(tokenizer)

    def encode(self, example: Example) -> Encoded:
        encoded, cut = _encode(self.tokenizer, example, self.cutoff_len, self.train_on_inputs)
        self.truncated += cut  # its answer lost tokens (LLM-Adapters cuts at cutoff_len too): train() says so
        return encoded

    def collate(self, items: list[Encoded]) -> Batch:
        batch: Batch = collate(items, self.pad_id)
        batch["keep"], batch["n"] = supervised_tail(batch["labels"])
        return batch

    def units(self, batch: Batch) -> int:
        return batch["n"]

    def loss_sum(self, model, batch: Batch) -> torch.Tensor:
        # on the meta device (``meta_batch``: no attention_mask) transformers' causal-mask check reads the position
        # offset by value unless a KV cache exists; building one adds no FLOPs (a mask given there fails either way)
        return loss_sum(model, batch, batch["keep"], use_cache=batch["input_ids"].is_meta)

    def stats(self, batch: Batch) -> tuple[int, int]:
        return batch["input_ids"].shape[0], int(batch["attention_mask"].sum())

    def shape(self, batch: Batch) -> list[int]:
        return [*batch["input_ids"].shape, batch["keep"]]

    def meta_batch(self, shape: list[int]) -> Batch:
        rows, tokens, keep = shape  # an unpadded row's defaults: no mask, no positions
        ids = torch.zeros((rows, tokens), dtype=torch.long, device="meta")
        return {"input_ids": ids, "labels": ids, "keep": keep, "n": rows * (keep - 1)}


def random_weights_parts(model: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(config, tokenizer) of a ``--random-weights`` causal LM, as ``load_causal_lm`` builds it; a ``ValueError``
    where the config's vocabulary is smaller than the tokenizer, the model folder's tokenizer does not load
    (``models.random_weights_tokenizer``), or has no token to pad with (``pad_id``)."""
    config = models.transformers_config(model, trust_remote_code=trust_remote_code)
    tokenizer, _ = models.random_weights_tokenizer(model, getattr(config.get_text_config(), "vocab_size", None))
    pad_id(tokenizer, model)
    return config, tokenizer


def check_random_weights(model: str, trust_remote_code: bool = False) -> None:
    """``random_weights_parts``' checks, as ``harness run`` makes them before any run (its preflight) instead of
    run by run as each one loads the model: the embedded tokenizer is not converted for it (~25 s; it has an eos to
    pad with), a model folder's own is loaded."""
    config = models.transformers_config(model, trust_remote_code=trust_remote_code)
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if models.random_weights_tokenizer_folder(model) is None:
        models.check_random_weights_vocab(model, vocab_size)
    else:
        pad_id(models.random_weights_tokenizer(model, vocab_size)[0], model)


def load_causal_lm(
    model: str, device: torch.device, *, random_weights: bool, seed: int, trust_remote_code: bool
) -> Loaded:
    """A causal LM and its tokenizer: weights from the hub, a local folder or the embedded GGUF, or
    with ``random_weights`` the architecture from a config (paper shapes without a download)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if random_weights:
        config, tokenizer = random_weights_parts(model, trust_remote_code)
        torch.manual_seed(seed)
        net = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        label = f"{models.label(model, random_weights=True)} (random weights)"
    else:
        source = models.resolve(model)
        if Path(source).is_dir():
            check_tokenizer_files(Path(source))
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            pad_id(tokenizer, model)  # before the weights load
            net = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        except OSError as exc:  # a hub id offline, gated or gone: transformers says so in several lines
            if not hub.is_hub_id(model):
                raise
            raise hub.hub_load_error(model, exc) from None
        label = models.label(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    net = net.to(device)
    return Loaded(net, net, label, tokenizer, {"dtype": str(dtype).removeprefix("torch.")})
