"""Where a training step's time goes, per contender of ``harness bench``: torch.profiler over a few steps.

python scripts/profile_step.py --model meta-llama/Meta-Llama-3-8B --random-weights --batch 16 --seq 256 \
    --methods lora,hydralora --reference          # on a GPU: bf16 base, fp32 adapters, autocast
python scripts/profile_step.py --plugin my_method.py --methods lora,my_method   # a plugin's method too

For the floor and every contender (built as ``harness bench`` builds them): the wall time of a step, and on
a GPU the time its kernels ran (the sum over kernels: how busy the GPU was, so whether the step is bound by
the GPU's work or by launching it) and how many kernels it launched; then the operators and kernels that
took most of it (``--top``). Headed by the model, shape and machine (its CPU or GPU, threads, torch, malloc setting;
the weights' dtype, and bf16 autocast on a GPU) as ``harness bench``'s table is. Prints to stdout; nothing is
written.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from harness.bench import BenchConfig, load_contenders_or_exit
from harness.bench_report import step_machine
from harness.cli import CliError, add_plugin_argument, split_names
from harness.registry import METHODS, load_plugin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--layers", type=int, default=None, help="with --random-weights: this many layers")
    parser.add_argument("--methods", default="lora,hydralora", help="comma-separated registered methods, or all")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reference", action="store_true", help="also each method's reference path")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled (after 3 untimed, 5 timed)")
    parser.add_argument("--top", type=int, default=15, help="rows of each table")
    add_plugin_argument(parser, "methods")
    args = parser.parse_args(argv)
    try:  # before the model loads (minutes at a paper shape): an unknown name, a bad shape
        for path in args.plugin:  # before the names are checked: a plugin's method is profiled as a built-in's
            load_plugin(path)
        methods = tuple(split_names(args.methods, METHODS.names(), "method"))
        for name in methods:
            METHODS.get(name)
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1 (got {args.steps})")
        config = BenchConfig(
            model=args.model,
            random_weights=args.random_weights,
            layers=args.layers,
            methods=methods,
            batch_size=args.batch,
            seq_len=args.seq,
            peft=not args.no_peft,
            reference=args.reference,
            reducer=("off",),
            protocols=(),
        )
    except (CliError, ValueError) as exc:  # the registry's advice names harness's --plugin: this script's own
        parser.error(str(exc).replace("harness --plugin FILE ...", "--plugin FILE"))
    label, device, contenders = load_contenders_or_exit(config, parser)  # under harness bench's malloc setting
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    print(f"{label}, batch {args.batch} x {args.seq}, {step_machine(contenders[0].model, device)}")
    for c in contenders:
        for _ in range(3):
            c.step()
        sync()
        start = time.perf_counter()
        for _ in range(5):
            c.step()
        sync()
        wall = (time.perf_counter() - start) / 5
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                c.step()
            sync()
        line = f"\n### {c.name}: wall {wall * 1e3:.1f} ms/step"
        if cuda:  # kernels only: an operator's row repeats the time of the kernels it launched
            kernels = [  # kernels, copies and sets; not the user annotations that span them (as the footer)
                e
                for e in prof.events()
                if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            ]
            busy = sum(e.time_range.elapsed_us() for e in kernels) / args.steps / 1e6  # the footer's Self CUDA total
            line += f", kernels {busy * 1e3:.1f} ms/step ({len(kernels) / args.steps:.0f} launches), GPU busy "
            line += f"{100 * busy / wall:.0f}%"
        print(line)
        sort = "self_device_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
