"""The commonsense suite's three scales (``--preset``)."""

from __future__ import annotations

from harness import models
from harness.task import Preset, TaskOptions
from harness.train import TrainConfig

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "a few steps and examples: checks that everything runs (tests, CI)",
        models.EMBEDDED,
        TrainConfig(
            steps=3,
            micro_batch_size=2,
            grad_accum=1,
            lr=1e-3,
            warmup_steps=0,
            cutoff_len=128,
            train_on_inputs=False,
            val_batch_size=4,
            checkpoint_every=2,
        ),
        TaskOptions(train_cap=16, val_size=4, eval_limit=4, template="cloze"),
        {"r": 8, "alpha": 16},
        "cloze",
        4,
    ),
    "embedded": Preset(
        "SmolLM2-135M on 2 CPU cores, cloze: 78 steps of 16 and up to 1,200 test examples a benchmark",
        models.EMBEDDED,
        TrainConfig(
            epochs=1.0,
            micro_batch_size=16,
            grad_accum=1,
            lr=1e-3,
            warmup_steps=8,
            cutoff_len=256,
            train_on_inputs=False,
            val_batch_size=8,
            checkpoint_every=10,
        ),
        # 1,200 test examples: all of ARC-c (1,172) and OBQA (500); the first 500 of ARC-c alone put its majority
        # label at 28.8% (26.5% over the whole set) and gave +-5-point intervals
        TaskOptions(train_cap=320, val_size=32, eval_limit=1200, template="cloze"),
        {},
        "cloze",
        4,  # cloze batches questions (each with its options on one cached context): 4 is fastest on a CPU
    ),
    "paper": Preset(
        "EffiLoRA Table 9 / LLM-Adapters settings with Meta-Llama-3-8B (a GPU and the weights needed)",
        "meta-llama/Meta-Llama-3-8B",
        TrainConfig(
            epochs=3.0,
            micro_batch_size=4,
            grad_accum=4,
            lr=3e-4,
            warmup_steps=100,
            cutoff_len=256,
            train_on_inputs=True,
            val_batch_size=8,
            checkpoint_every=200,
        ),
        TaskOptions(val_size=120, template="llm-adapters"),
        {"r": 16, "alpha": 32, "dropout": 0.05, "heads": 4},
        "generate",
        16,
    ),
}
