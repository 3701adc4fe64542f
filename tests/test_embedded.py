"""Every method trains on the real embedded SmolLM2-135M (converted from GGUF once, then cached)."""

from __future__ import annotations

import copy

import pytest
import torch

from harness import attach
from harness.models import embedded_folder

TEXTS = [
    "Question: Which gas do plants take in for photosynthesis? Answer: carbon dioxide",
    "Question: What force pulls objects toward the Earth? Answer: gravity",
]
HELD_OUT = ["Question: What do bees make from nectar? Answer: honey"]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = embedded_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    batches = []
    for texts in (TEXTS, HELD_OUT):
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        batches.append({**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)})
    return model, batches


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(method, smollm2):
    base, (batch, held_out) = smollm2
    torch.manual_seed(0)
    adapter = attach(copy.deepcopy(base), method, r=8, alpha=16, dropout=0.0)  # effilora keeps its Reducer
    model = adapter.model

    def val_loss() -> float:
        with torch.no_grad():
            return model(**held_out).loss.item()

    with torch.no_grad():
        before = model(**batch).loss.item()
    opt = torch.optim.AdamW(adapter.param_groups(lr=2e-3))
    model.train()
    for step in range(6):
        adapter.on_step_begin(step, val_loss)
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before - 0.1, (before, after)


def test_the_embedded_tokenizer_has_as_many_tokens_as_the_shipped_config_says():
    """``harness.models.check_random_weights_vocab`` takes the embedded tokenizer's size from the shipped config
    (so that the checks before any run convert no GGUF): the two must agree."""
    from transformers import AutoTokenizer

    from harness.models import EMBEDDED, load_config_dict

    assert len(AutoTokenizer.from_pretrained(embedded_folder())) == load_config_dict(EMBEDDED)["vocab_size"] == 49152
