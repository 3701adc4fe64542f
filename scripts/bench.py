"""Timing ratios on the embedded SmolLM2, alternating the contenders in one process.

1. Scoring: ``choice`` (one forward pass per question) against ``generate`` (LLM-Adapters: 4 beams,
   32 new tokens) on the same ARC-Easy questions.
2. Training step: our ``lora`` against peft's LoRA at the same settings (r=16, alpha=32, dropout 0.05,
   q,k,v,up,down), same batch, same loss, same AdamW step.

Alternating A, B, A, B ... spreads slow drifts (thermal, other load) over both. Reports medians.

    python scripts/bench.py --data-dir ../shared/data/commonsense [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    for fn in contenders.values():  # warm-up, not timed
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import attach
    from harness.accounting import environment
    from harness.models import EMBEDDED_LABEL, embedded_folder
    from harness.task import Example
    from harness.train import collate, encode, loss_sum, supervised_tail
    from tasks.commonsense import candidates_for
    from tasks.commonsense.data import read_split
    from tasks.commonsense.prompts import get_template
    from tasks.commonsense.scoring import choice_scores, generate

    torch.manual_seed(0)
    folder = embedded_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    template = get_template("clean")
    records = read_split(Path(args.data_dir), "ARC-Easy", "test").records[: args.questions]
    prompts = [template.eval_prompt(r["instruction"]) for r in records]
    labels = [f"answer{i}" for i in range(1, 6)]
    candidates = [candidates_for(r, labels) for r in records]

    scoring = alternate(
        {
            "choice": lambda: choice_scores(base, tokenizer, prompts, candidates, batch_size=8),
            "generate": lambda: generate(base, tokenizer, prompts, batch_size=8, num_beams=4, max_new_tokens=32),
        },
        args.rounds,
    )

    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    ours = attach(copy.deepcopy(base), "lora", r=16, alpha=32, dropout=0.05, targets=",".join(targets))
    theirs = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets)
    )
    train = read_split(Path(args.data_dir), "ARC-Easy", "train").records[:8]
    examples = [Example(template.train_prompt(r["instruction"]), r["output"]) for r in train]
    batch = collate([encode(tokenizer, e, 256, train_on_inputs=False) for e in examples], tokenizer.pad_token_id)
    keep, n = supervised_tail(batch["labels"])

    def stepper(model, params):
        opt = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def step() -> None:
            (loss_sum(model, batch, keep) / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    steps = alternate(
        {
            "harness lora": stepper(ours.model, ours.trainable_parameters()),
            "peft lora": stepper(theirs, [p for p in theirs.parameters() if p.requires_grad]),
        },
        args.rounds,
    )

    med = {k: statistics.median(v) for k, v in {**scoring, **steps}.items()}
    env = environment()
    report = {
        "model": EMBEDDED_LABEL,
        "device": env["device"],
        "threads": env["torch_threads"],
        "rounds": args.rounds,
        "questions": len(prompts),
        "train_batch": list(batch["input_ids"].shape),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "generate_over_choice": round(med["generate"] / med["choice"], 2),
        "harness_lora_over_peft_lora": round(med["harness lora"] / med["peft lora"], 3),
    }
    print(f"model {report['model']} on {report['device']} ({report['threads']} threads), {args.rounds} rounds, medians")
    for name, seconds in med.items():
        print(f"  {name:14s} {seconds:8.3f} s")
    print(
        f"generate / choice scoring time:     {report['generate_over_choice']:.2f}x  ({len(prompts)} ARC-Easy questions)"
    )
    print(
        f"harness lora / peft lora step time: {report['harness_lora_over_peft_lora']:.3f}x  (batch {report['train_batch']})"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
