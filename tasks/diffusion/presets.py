"""The diffusion suite's three scales (``--preset``)."""

from __future__ import annotations

from harness.task import Preset, TaskOptions
from harness.train import TrainConfig

PAPER_MODEL = "runwayml/stable-diffusion-v1-5"
TARGETS = "to_q,to_k,to_v,to_out.0"  # the UNet's attention linears (EffiLoRA §4.3, diffusers' LoRA script)
EMBEDDED_MODEL = "embedded"

# generation and objective settings: the same for every method (recorded, hashed into the run id)
EMBEDDED_SETTINGS = {
    "sampler": "ddim",
    "sample_steps": 25,
    "guidance": 3.0,
    "prediction_type": "epsilon",
    "snr_gamma": None,
    "noise_offset": 0.0,
}
PAPER_SETTINGS = {
    "sampler": "dpm++",
    "sample_steps": 30,
    "guidance": 7.5,
    "prediction_type": "epsilon",
    "snr_gamma": None,
    "noise_offset": 0.0,
}

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "a few steps and prompts on the embedded base: checks that everything runs (tests, CI)",
        EMBEDDED_MODEL,
        TrainConfig(
            steps=3, micro_batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=0, val_batch_size=4, checkpoint_every=2
        ),
        TaskOptions(train_cap=16, val_size=4, eval_limit=4, template="caption"),
        {"r": 4, "alpha": 8, "heads": 3, "targets": TARGETS},
        "native",
        4,
        {**EMBEDDED_SETTINGS, "sample_steps": 4},
    ),
    "embedded": Preset(
        "the small SD pipeline pre-trained on Twemoji's other categories, fine-tuned on faces + food at 32 px: "
        "1000 steps of 16 on 2 CPU cores, 60 held-out prompts",
        EMBEDDED_MODEL,
        TrainConfig(
            steps=1000,
            micro_batch_size=16,
            grad_accum=1,
            lr=1e-3,
            warmup_steps=10,
            val_batch_size=16,
            checkpoint_every=100,
        ),
        TaskOptions(val_size=16, eval_limit=None, template="caption"),
        {"r": 8, "alpha": 16, "heads": 3, "targets": TARGETS},
        "native",
        16,
        EMBEDDED_SETTINGS,
    ),
    "paper": Preset(
        "EffiLoRA Table 11: SD-1.5, r=4, alpha=8, 3 heads, batch 1, 20,000 steps, lr 1e-4, 512 px, up to 100 "
        "prompts (a GPU and the weights); the paper's pokemon-blip-captions through --data-dir, else the shipped "
        "Twemoji",
        PAPER_MODEL,
        TrainConfig(
            steps=20000,
            micro_batch_size=1,
            grad_accum=1,
            lr=1e-4,
            warmup_steps=0,
            schedule="constant",
            val_batch_size=4,
            checkpoint_every=1000,
        ),
        TaskOptions(val_size=16, eval_limit=100, template="caption"),
        {"r": 4, "alpha": 8, "heads": 3, "targets": TARGETS},
        "native",
        8,
        PAPER_SETTINGS,
    ),
}
