"""The lm-eval protocol gives the same log-likelihoods and predictions as our ``choice`` protocol."""

from __future__ import annotations

import pytest
import torch

from harness.task import Loaded, TaskOptions
from tasks.commonsense import CommonsenseTask


@pytest.mark.slow
def test_lm_eval_agrees_with_choice_on_smollm2(tmp_path, data_dir):
    import json
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import embedded_folder

    for name in ("boolq", "ARC-Easy"):
        shutil.copytree(data_dir / name, tmp_path / "data" / name)
    task = CommonsenseTask(TaskOptions(data_dir=str(tmp_path / "data"), eval_limit=4))
    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    model = AutoModelForCausalLM.from_pretrained(embedded_folder(), dtype=torch.float32).eval()
    ours = task.evaluate(Loaded(model, None, "tiny", tokenizer), "choice", 4, tmp_path / "choice.jsonl", progress=False)
    theirs = task.evaluate(
        Loaded(model, None, "tiny", tokenizer), "lm-eval", 4, tmp_path / "lm_eval.jsonl", progress=False
    )
    for name in ("boolq", "ARC-Easy"):
        assert theirs[name]["protocol"] == "lm-eval" and theirs[name]["n"] == 4
        assert theirs[name]["value"] == ours[name]["value"]
    a = [json.loads(line) for line in (tmp_path / "choice.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "lm_eval.jsonl").read_text().splitlines()]
    for x, y in zip(a, b, strict=True):
        assert x["pred"] == y["pred"]
        for label, score in x["scores"].items():
            assert abs(score - y["scores"][label]) < 1e-3
