"""The ``lm-eval`` protocol: the same prompts and label words, scored by lm-evaluation-harness.

Our in-memory model goes in as ``HFLM(pretrained=<model object>)``; each benchmark becomes a
multiple-choice task over a local JSON file (context = prompt + "the correct answer is", choices = the
label words after a space), so the log-likelihoods come from the implementation the field already trusts.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.commonsense.prompts import ANSWER_PREFIX


def lm_eval_predictions(
    model,
    tokenizer,
    benchmark: str,
    records: list[dict[str, Any]],
    prompts: list[str],
    candidates: list[list[str]],
    batch_size: int,
    progress: bool = True,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Each question's pick among its candidates and their log-likelihoods; ``progress=False`` (``--quiet``, bench)
    keeps lm-eval silent: no bars, no warnings."""
    import torch

    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ValueError("the lm-eval protocol needs lm-eval: pip install 'lora-harness[lm-eval]'") from None
    docs = [
        {"context": p + ANSWER_PREFIX, "choices": c, "gold": c.index(r["answer"])}
        for p, c, r in zip(prompts, candidates, records, strict=True)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.json"
        path.write_text(json.dumps(docs))
        name = f"harness_{benchmark.lower().replace('-', '_')}"
        config = {
            "task": name,
            "dataset_path": "json",
            # datasets' Arrow copy of the docs goes in the temporary folder too (the default, the user's datasets
            # cache, kept one per call: a new content hash each time)
            "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(Path(tmp) / "datasets")},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        # as every other protocol and training tokenise: no BOS (lm-eval adds the tokenizer's own by default, a
        # Llama-3's BOS here but not in `choice`), log-softmax in fp32 (lm-eval's default is the model's dtype)
        kwargs: dict[str, Any] = {"add_bos_token": False}
        if "softmax_dtype" in inspect.signature(HFLM.__init__).parameters:  # newer lm-eval only
            kwargs["softmax_dtype"] = torch.float32
        with contextlib.nullcontext() if progress else _silent():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
            if not progress and "disable_tqdm" in inspect.signature(lm.loglikelihood).parameters:
                # lm-eval passes disable=False to its request bars itself, past tqdm's default: its own switch
                lm.loglikelihood = functools.partial(lm.loglikelihood, disable_tqdm=True)
            out = simple_evaluate(model=lm, tasks=[config], log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    preds, extra = [], []
    for sample, cands in zip(samples, candidates, strict=True):
        logliks = [float(resp[0]) for resp in sample["filtered_resps"]]
        preds.append(cands[max(range(len(logliks)), key=logliks.__getitem__)])
        extra.append({"scores": dict(zip(cands, logliks, strict=True))})
    return preds, extra


@contextlib.contextmanager
def _silent() -> Iterator[None]:
    """lm-eval's logger at ERROR (HFLM warns twice about a model object passed in for a name) and tqdm's bars off
    by default (lm-eval's bar building the requests and datasets' "Generating test split" have no switch), both
    undone on the way out. From a review: ``--quiet`` left lm-eval's bars and warnings."""
    import tqdm.std

    logger = logging.getLogger("lm_eval")
    level = logger.level
    init = tqdm.std.tqdm.__dict__["__init__"]  # a partialmethod where tqdm's envwrap or ``--quiet`` made one
    logger.setLevel(logging.ERROR)
    tqdm.std.tqdm.__init__ = functools.partialmethod(init, disable=True)
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = init
        logger.setLevel(level)
