"""One of the fast path's switches on and off, timed in the same rounds: what it saves, paired.

python scripts/ab_flag.py --flag STACK_RAW --methods hydralora --option dropout=0 --rounds 21
python scripts/ab_flag.py --flag STACK_RAW --plugin my_method.py --methods my_method --option dropout=0

The switches are ``harness.fastpath``'s module flags (``FUSE_BASE``, ``STACK_RAW``); both settings compute the
same outputs and gradients (tests/test_fused_parity.py). For every method, built as ``harness bench`` builds
it (the embedded model or ``--model``, batch, options; the fast path; the Reducer off unless the options set it),
the training step is timed with the flag as it is and switched, alternating with the frozen-base floor in the same
rounds; printed: the median step time, its ratio to the floor's in each round and the switched setting's ratio
to the default's in each round (medians with 95% bootstrap intervals, rounds resampled), headed by the model,
shape and machine (its CPU or GPU, threads, torch, malloc setting; the weights' dtype, and bf16 autocast on a GPU)
as ``harness bench``'s table is. Prints to stdout; nothing is written. ``--plugin FILE.py`` (repeatable) times a
plugin's method, as ``harness --plugin`` runs one.

A switch acts only where its path runs: ``FUSE_BASE`` on a CPU without autocast, for plain ``nn.Linear`` bases
(not GPT-2's ``Conv1D``); ``STACK_RAW`` without a dropout mask (``--option dropout=0``), for a method whose router
reads x, and where A and the router both train (or neither does) unless the bases are fused in. Where it cannot act, both
settings run the same step, and the script says so under its table: the paired ratio is then an A/A
comparison, a measure of the timing's noise and nothing else.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import nn

from harness import fastpath
from harness.adapter import AdapterLinear
from harness.bench import BenchConfig, alternate, load_contenders_or_exit
from harness.bench_report import FLOOR, step_machine
from harness.cli import CliError, add_plugin_argument, method_options, split_names
from harness.config import REDUCER_SHORTCUTS
from harness.registry import METHODS, load_plugin
from harness.stats import MEDIAN_INTERVAL_FROM, median_interval

FLAGS = ("FUSE_BASE", "STACK_RAW")


def inert(flag: str, device: torch.device, model: nn.Module) -> str | None:
    """Why ``flag`` cannot change a step of ``model`` on ``device`` (``None`` if it may)."""
    wrappers = [m for m in model.modules() if isinstance(m, AdapterLinear) and m.fuses_input]
    fusable = device.type == "cpu" and any(type(m.base) is nn.Linear for m in wrappers)  # fastpath._fuses_base
    if flag == "FUSE_BASE" and device.type != "cpu":
        return f"FUSE_BASE fuses the base linears only on a CPU: on {device.type} both settings run the same step"
    if flag == "FUSE_BASE" and not fusable:
        return (
            "FUSE_BASE fuses only plain nn.Linear bases of adapted layers, and none is here (GPT-2's are Conv1D): "
            "both settings run the same step"
        )
    if flag == "STACK_RAW":
        routers = [m for m in wrappers if m.input_weights()[1] is not None]
        if not routers:
            return "STACK_RAW acts only on a router that reads x, which this method has not: both settings run the same step"
        if any(isinstance(m, AdapterLinear) and getattr(m.lora_dropout, "p", 0) > 0 for m in model.modules()):
            return "STACK_RAW acts only without a dropout mask (--option dropout=0): both settings run the same step"
        alike = [m for m in routers if m.input_weights()[0].requires_grad == m.input_weights()[1].requires_grad]
        if not alike and not (fusable and fastpath.FUSE_BASE):  # outside the fused node: fastpath._train_alike
            return (
                "STACK_RAW stacks A and a router only where both train or neither does, or in the fused node with the "
                "base linears (a CPU, nn.Linear bases): neither here, so both settings run the same step"
            )
    return None


def reducer_variant(options: dict) -> tuple[str, ...]:
    """The ``--reducer`` variants the step is built with: the Reducer off (its per-step layer draw is not what a
    switch changes), but where the options set one (``--option k=1``) none: the method as the options make it, one
    unnamed row timed as it is (``off`` dropped them while the header printed them as used, a review; ``default``
    left the method out where K is every layer, a re-review)."""
    return () if any(key == "reducer" or key in REDUCER_SHORTCUTS for key in options) else ("off",)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flag", required=True, choices=FLAGS)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--layers", type=int, default=None, help="with --random-weights: this many layers")
    parser.add_argument("--methods", default="hydralora", help="comma-separated registered methods, or all")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a method option")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    add_plugin_argument(parser, "methods")
    args = parser.parse_args(argv)
    try:  # before the model loads
        for path in args.plugin:  # before the names are checked: a plugin's method is timed as a built-in's
            load_plugin(path)
        methods = tuple(split_names(args.methods, METHODS.names(), "method"))
        for name in methods:
            METHODS.get(name)
        options = method_options(args)
        config = BenchConfig(
            model=args.model,
            random_weights=args.random_weights,
            layers=args.layers,
            methods=methods,
            options=options,
            batch_size=args.batch,
            seq_len=args.seq,
            rounds=args.rounds,
            peft=False,
            reducer=reducer_variant(options),
            protocols=(),
        )
    except (CliError, ValueError) as exc:  # the registry's advice names harness's --plugin: this script's own
        parser.error(str(exc).replace("harness --plugin FILE ...", "--plugin FILE"))
    label, device, contenders = load_contenders_or_exit(config, parser)  # under harness bench's malloc setting
    default = getattr(fastpath, args.flag)
    switched = f"{args.flag}={not default}"

    def with_flag(step: Callable[[], None], value: bool) -> Callable[[], None]:
        def run() -> None:
            setattr(fastpath, args.flag, value)
            try:
                step()
            finally:
                setattr(fastpath, args.flag, default)

        return run

    fns = {FLOOR: contenders[0].step}
    for c in contenders[1:]:
        fns[c.name] = c.step
        fns[f"{c.name}, {switched}"] = with_flag(c.step, not default)
    times = {
        name: [wall for wall, _ in t] for name, t in alternate(fns, args.rounds, 1, device, desc=args.flag).items()
    }
    print(
        f"{label}, batch {args.batch} x {args.seq}, {step_machine(contenders[0].model, device)}; options "
        f"{options or 'defaults'}, {args.rounds} rounds"
    )
    # below MEDIAN_INTERVAL_FROM rounds the bootstrap's interval is their min-max: not called 95% (as bench.md)
    span = "95%" if args.rounds >= MEDIAN_INTERVAL_FROM else "min-max"
    print(f"{'contender':40s} {'step s':>8s}  x floor, paired ({span})")
    for name, walls in times.items():
        ratio = [a / b for a, b in zip(walls, times[FLOOR], strict=True)]
        lo, hi = median_interval(ratio)
        print(f"{name:40s} {statistics.median(walls):8.3f}  {statistics.median(ratio):.4f} ({lo:.4f}-{hi:.4f})")
    for c in contenders[1:]:
        ratio = [a / b for a, b in zip(times[f"{c.name}, {switched}"], times[c.name], strict=True)]
        lo, hi = median_interval(ratio)
        print(
            f"{c.name}: {switched} over {args.flag}={default}, paired: {statistics.median(ratio):.4f} ({lo:.4f}-{hi:.4f}"
            f" {span})"
        )
        if (why := inert(args.flag, device, c.model)) is not None:
            print(f"  {c.name}: an A/A comparison (timing noise only): {why}")


if __name__ == "__main__":
    main()
