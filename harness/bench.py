"""``harness bench``: what a training step and scoring cost, per method, against the floor and peft.

A training step (forward, backward, AdamW step, weight decay 0: torch's fused AdamW for the fast path and for
peft's LoRA; for ``--reference`` and a method without a fast path, torch's default implementation, the
``foreach`` one on a GPU and the for-loop one on a CPU) of every registered method on one fixed batch of random
tokens (``--batch`` x ``--seq``, loss on every token), against ``floor`` — the frozen base model's forward
and backward down to the input embeddings, about the least any adapter can cost since the gradient must reach
the lowest adapted layer (a little more: the embeddings' gradient also needs layer 0's attention input
gradients, which an adapter on q, k, v alone would not) — and against peft where peft has the method (``lora``; ``lora_fa`` as peft's LoRA
with ``peft.optimizers.create_lorafa_optimizer``). A method whose default has the Reducer is timed per
``--reducer`` variant (one whose K, from its drop ratio and the model's adapted layers, is 0 or all of them is left
out with a note: the Reducer cannot run or would be off; a Reducer option given, ``k=4``, gives way in a variant that
sets it, and a note and the report's config name those rows); an importance scoring round (``rollouts`` no-grad forward passes on a held-out batch
every ``interval`` steps) is timed on its own and added per step. ``--reference`` adds each method's
reference path (``delta``, one ``nn.Dropout`` per wrapper), to measure the fast path. ``--also KEY=VALUE``
adds each method with that option changed (``dropout=0``), timed in the same rounds and reported paired
against the row it changes: the method at its defaults, or for a method with the Reducer where ``--reducer``
leaves its default out (``off``), the first variant timed, which the row keeps (an option of the Reducer's own,
``k=1`` or ``reducer=off``, changes the method's defaults): what one setting costs, without comparing runs made at
other times.

Contenders alternate in one process (round k starts at contender k) after ``--warmup`` untimed rounds, so
drifts and other load fall on all alike; reported: the median and range over ``--rounds``, the ratio to
the floor's time in the same round (median, 95% bootstrap interval over rounds, range), process CPU time,
peak memory of one step above what was allocated before it (the CUDA allocator; on a CPU, tensor storages
tracked by a dispatch mode), the tensors that train and their optimizer state (not a frozen A), and FLOPs counted on the meta device as
run records count them. Scoring: the task's ``evaluate`` with the base model per protocol (a task that scores a
causal LM, ``SCORED_TASKS``; another is refused before anything loads), on
``--eval-limit`` examples per benchmark. Writes ``bench.csv``, ``bench.md``, ``bench.json`` (config,
environment, rows) and ``bench.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.bench_contenders import Contender as Contender
from harness.bench_contenders import _runnable as _runnable
from harness.bench_contenders import _share, adapter_settings, load, peft_lora_config, replaced_options
from harness.bench_contenders import build_contenders as build_contenders
from harness.bench_contenders import load_contenders_or_exit as load_contenders_or_exit
from harness.bench_cost import flops, peak_bytes, state_bytes
from harness.bench_report import markdown, portable, relate, write_outputs
from harness.bench_variants import _also_base, _also_config, _also_option, _paired_with, _reducer_options, _refuse_same
from harness.bench_variants import _variant_options as _variant_options
from harness.bench_variants import _with_also as _with_also
from harness.config import SEED_MAX

EXAMPLES = """examples:
  harness bench --data-dir ../shared/data/commonsense        # the embedded SmolLM2, every method, batch 8 x 128
  harness bench --methods lora,hydralora --reference --protocols none --rounds 9   # fast path vs reference
  harness bench --model meta-llama/Meta-Llama-3-8B --random-weights --layers 2     # on a GPU: bf16, Llama-3-8B layers
  harness bench --methods lora --also dropout=0 --protocols none --rounds 21         # what the dropout costs, paired
"""


# The tasks whose scoring bench times: their ``evaluate`` scores a causal LM and its tokenizer, the model bench loads
# (every protocol they have). Another task scores a model of its own (a LLaVA, a UNet pipeline, a plugin's network)
# and is refused before anything loads: its evaluate failed on bench's model after all the timing (from a review).
SCORED_TASKS = ("commonsense",)

# (flag, BenchConfig field, least value): the shape and counts a bench is given
BOUNDS = (
    ("--batch", "batch_size", 1),
    ("--seq", "seq_len", 2),
    ("--rounds", "rounds", 1),
    ("--warmup", "warmup", 0),
    ("--eval-limit", "eval_limit", 1),
    ("eval_batch_size", "eval_batch_size", 1),  # no flag: the Python API's
)


@dataclass(frozen=True)
class BenchConfig:
    model: str = "embedded"
    random_weights: bool = False
    trust_remote_code: bool = False  # a model with its own code (its config's auto_map) builds from that code
    layers: int | None = None  # with random weights: build only this many layers (a reduced paper shape)
    methods: tuple[str, ...] = ()  # empty: every registered method
    options: dict[str, Any] = field(default_factory=dict)  # method options (rank, alpha, targets, dropout, ...)
    batch_size: int = 8
    seq_len: int = 128  # tokens per row
    rounds: int = 5
    warmup: int = 1
    peft: bool = True
    reference: bool = False
    reducer: tuple[str, ...] = ("off", "importance:0.25", "random:0.25", "importance:0.75")
    also: tuple[str, ...] = ()  # "KEY=VALUE": every method also timed with this option changed, in the same rounds
    task: str = "commonsense"
    protocols: tuple[str, ...] = ("cloze", "choice")
    data_dir: str | None = None
    eval_limit: int = 8  # test examples per benchmark
    eval_batch_size: int = 8
    threads: int | None = None
    seed: int = 0
    out: str = "runs/bench"  # not results/: its committed tables are rewritten only when asked (--out results)

    def __post_init__(self) -> None:
        # named by the flags that set them (harness bench's, and the timing scripts' alike), not the fields
        for flag, name, least in BOUNDS:
            if getattr(self, name) < least:
                raise ValueError(f"{flag} must be >= {least} (got {getattr(self, name)})")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"--layers must be >= 1 (got {self.layers}); leave it out for the model's own depth")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1 (got {self.threads}); leave it out for torch's default")
        if not 0 <= self.seed <= SEED_MAX:  # as run's --seeds (a fuzz review: -1 taken, a huge one torch's overflow)
            raise ValueError(f"--seed {self.seed} is out of range; a seed is an integer in 0..{SEED_MAX}")
        for variant in self.reducer:
            _reducer_options(variant)
        for item in self.also:
            _also_option(item)
        # a repeat would be a second contender of the same name: its timings would land on one row, twice (a
        # value that reads otherwise but sets the same, importance:.25 beside importance:0.25, is refused by
        # check_methods, which compares what each makes)
        for flag, values in (("--reducer", list(self.reducer)), ("--also", [_also_option(a) for a in self.also])):
            if (repeated := next((i for i, v in enumerate(values) if v in values[:i]), None)) is not None:
                given = (self.reducer if flag == "--reducer" else self.also)[repeated]
                raise ValueError(f"{flag} {given!r} is given twice; give each value once (each is timed once)")
        self.check_methods()

    def check_methods(self) -> None:
        """Every method is registered and takes the options (and each ``--also`` option), before any loading."""
        from harness.adapter import AdapterLinear
        from harness.config import make_config
        from harness.reducer import no_heads
        from harness.registry import METHODS

        for name in self.methods or METHODS.names():
            cls = METHODS.get(name)
            base = make_config(cls.config_cls, self.options, name)
            made: dict[str, Any] = {}  # the Reducer variants' rows: an --also row that times one of them is refused
            if base.reducer is not None and self.reducer:
                for v in self.reducer:  # the variants too: each makes its own config, and none twice
                    made[v] = make_config(cls.config_cls, _variant_options(self.options, v), name)
                    _refuse_same("--reducer", v, made, name)
            paired = _paired_with(list(made.items()), base)[0] if made else ""  # the variant --also rows keep
            rows = {f"--reducer {v}": c for v, c in made.items()}
            for item in self.also:  # each changes something, and not what another does nor a --reducer row
                changed = {"": make_config(cls.config_cls, _also_base(self.options, paired, item), name)}
                rows[item] = _also_config(cls, self.options, paired, item, name)
                _refuse_same("--also", item, changed | rows, name)
            # a Reducer for a method with nothing to pause, as attach refuses it (after the model has loaded)
            timed = (
                list(rows.values()) if made else [base, *rows.values()]
            )  # the --reducer variants replace the defaults
            if cls.reducer_parameters is AdapterLinear.reducer_parameters and any(c.reducer is not None for c in timed):
                raise ValueError(no_heads(name))
        if self.peft and "lora" in METHODS:
            peft_lora_config(self.options)


def run_bench(config: BenchConfig, model: nn.Module | None = None, tokenizer: Any = None, label: str = "") -> dict:
    """Time everything, write the files to ``config.out``, return the report: ``{"config", "model", "model_dtype",
    "environment", "adapter" (the settings every method shared), "rows"}``. ``model``/``tokenizer``: use
    these instead of loading ``config.model`` (tests pass a tiny model)."""
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        return _run(config, model, tokenizer, label)
    except (MemoryError, torch.OutOfMemoryError) as exc:  # one line, not a traceback (a fuzz review)
        raise ValueError(_memory_said(config, exc)) from None
    except RuntimeError as exc:  # the CPU allocator's own: "[enforce fail at alloc_cpu.cpp] ... can't allocate"
        if "can't allocate memory" not in str(exc):
            raise
        raise ValueError(_memory_said(config, exc)) from None
    finally:
        torch.set_num_threads(threads)


def _memory_said(config: BenchConfig, exc: BaseException) -> str:
    """What a bench out of memory says: the shape that did not fit, and what to give instead."""
    said = " ".join(str(exc).split())[:200] or type(exc).__name__
    return (
        f"a step at --batch {config.batch_size} --seq {config.seq_len} does not fit in memory ({said}); "
        "give a smaller --batch or --seq"
    )


def _run(config: BenchConfig, model: nn.Module | None, tokenizer: Any, label: str) -> dict:
    from harness.accounting import environment
    from harness.registry import METHODS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods = list(config.methods) or METHODS.names()
    config.check_methods()  # again: a plugin may have registered since the config was made
    # before the model loads (minutes) and the timing (more): the scoring's task, protocols and data, the output
    tasks = _scoring_tasks(config)
    _check_out(Path(config.out))
    if model is None:
        try:
            model, tokenizer, label = load(config, device)
        except (MemoryError, torch.OutOfMemoryError, RuntimeError) as exc:  # the model itself, not a step (a re-review)
            if isinstance(exc, RuntimeError) and "can't allocate memory" not in str(exc):
                raise
            said = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ValueError(
                f"model {config.model!r} does not fit in memory here ({said}); give a smaller model, or fewer "
                "--layers with --random-weights"
            ) from None
    if config.protocols and tokenizer is None:
        raise ValueError("timing scoring needs the model's tokenizer; pass one, or no protocols (--protocols none)")
    model, contenders = build_contenders(config, model, methods, device)
    rounds = {f"{c.name} :round": c.round_fn for c in contenders if c.round_fn is not None}
    fns = {c.name: c.step for c in contenders} | rounds
    times = alternate(fns, config.rounds, config.warmup, device, desc="bench training")
    rows = relate([_train_row(c, times, model, config, device) for c in contenders])
    rows += _scoring(model, tokenizer, config, device, tasks) if config.protocols else []
    env = environment() | {"torch_threads": torch.get_num_threads()} | code_state(config, methods)
    report = {
        # the Reducer options a --reducer variant's rows did not time ({option: rows}): options records them as given
        "config": portable(asdict(config)) | {"options_replaced": replaced_options(contenders)},
        "model": label or config.model,
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),  # bf16 on a GPU, else fp32
        "environment": env,
        "adapter": adapter_settings(contenders),
        "rows": rows,
    }
    write_outputs(report, Path(config.out))
    return report


def code_state(config: BenchConfig, methods: list[str]) -> dict[str, Any]:
    """The code that was timed, as run records keep it: the harness version, the checkout's commit and dirty flag,
    each method's ``version``, and the plugin files (sha256) and packages defining the methods (and the task whose
    scoring is timed); ``plugins`` is empty for built-ins."""
    from harness import __version__
    from harness.records import git_state
    from harness.registry import METHODS, TASKS, plugin_files

    classes = [METHODS.get(m) for m in methods] + ([TASKS.get(config.task)] if config.protocols else [])
    return {
        "harness_version": __version__,
        **git_state(),
        "method_versions": {m: str(METHODS.get(m).version) for m in methods},
        "plugins": plugin_files(*classes),
    }


def alternate(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    device: torch.device,
    desc: str = "bench",
) -> dict[str, list[tuple[float, float]]]:
    """(wall s, process CPU s) of each call; round k starts at the k-th name (a rotation), so none always runs
    first; each still follows the same neighbour in every round but the one it starts (the committed runs show no
    effect of the position in a round beyond ±1%). A progress bar (stderr) counts the calls, warm-up included. On a GPU
    each call is timed between synchronisations, so it counts the kernels it queued (``device`` is required:
    without it a GPU step would be timed as the time to queue it)."""
    names = list(fns)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tqdm(total=(warmup + rounds) * len(names), desc=desc, unit="call", dynamic_ncols=True) as bar:
        for w in range(warmup):
            for name, fn in fns.items():
                bar.set_postfix_str(f"warm-up {w + 1}/{warmup}: {name}")
                fn()
                bar.update()
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for k in range(rounds):
            for name in names[k % len(names) :] + names[: k % len(names)]:
                bar.set_postfix_str(f"round {k + 1}/{rounds}: {name}")
                sync()
                wall, cpu = time.perf_counter(), time.process_time()
                fns[name]()
                sync()
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                bar.update()
    return times


# -- measurements ------------------------------------------------------------------------------------
def _timing(values: list[tuple[float, float]]) -> dict[str, Any]:
    wall, cpu = [w for w, _ in values], statistics.median(c for _, c in values)
    return {
        **{"step_s": statistics.median(wall), "step_min_s": min(wall), "step_max_s": max(wall), "cpu_s": cpu},
        "round_s": wall,  # every timed round in order: round k of each contender ran close in time
    }


def _train_row(c: Contender, times: dict, model: nn.Module, config: BenchConfig, device: torch.device) -> dict:
    timed = times[f"{c.name} :round"] if c.round_fn is not None else [(0.0, 0.0)]
    round_s, round_cpu_s = statistics.median(w for w, _ in timed), statistics.median(cpu for _, cpu in timed)
    step, rounds = flops(c, model, config)
    return {
        **{"kind": "train", "contender": c.name, "source": c.source, "method": c.method, "reducer": c.reducer},
        "fast_path": c.fast_path,
        "variant": c.variant,
        "baseline": c.baseline,
        **_timing(times[c.name]),
        "hook_s": round_s / c.interval,  # the Reducer's scoring round, per step
        "hook_cpu_s": round_cpu_s / c.interval,  # the same in process CPU seconds (for x_floor_cpu)
        # each round's own scoring round, per step, beside round_s: the paired ratios add round k's to round k's step
        "hook_round_s": [w / c.interval for w, _ in timed] if c.round_fn is not None else [0.0] * len(times[c.name]),
        "peak_mb": peak_bytes(c.step, device) / 2**20,
        "state_mb": state_bytes(c) / 2**20,
        "gflops": step / 1e9 if step is not None else None,
        "hook_gflops": rounds / 1e9 if rounds is not None else None,
        "rounds": len(times[c.name]),
    }


def _scoring_tasks(config: BenchConfig) -> dict[str, Any]:
    """{protocol: the task built to score it}: an unknown task or protocol, a task that does not score a causal LM
    (``SCORED_TASKS``), a protocol the task cannot run here, or data that cannot be read, fails here, before
    anything is loaded or timed. With no protocols (``--protocols none``) nothing is scored, yet an unknown
    ``--task`` and a ``--data-dir`` that is no folder are refused still, as bench checks its other values where
    unused (``--reducer``, ``--eval-limit``): they passed silently (from a review)."""
    from harness.registry import TASKS
    from harness.task import TaskOptions

    task_cls = TASKS.get(config.task)  # an unknown name: the registry's message, naming the tasks
    if not config.protocols:
        if config.data_dir is not None and not (path := Path(config.data_dir).expanduser()).is_dir():
            state = "is a file, not a folder" if path.exists() else "does not exist"
            raise ValueError(
                f"--data-dir {config.data_dir!r} {state}; pass the task's data folder, or leave --data-dir out "
                "(with --protocols none nothing is scored)"
            )
        return {}
    if config.task not in SCORED_TASKS:  # before the protocols: that refusal's advice (--protocols native) crashed
        scored = "; ".join(f"{t} ({', '.join(TASKS.get(t).protocols)})" for t in SCORED_TASKS)
        raise ValueError(
            f"--task {config.task}: bench times scoring on the causal LM it loads, and the {config.task} task scores "
            f"a model of its own; bench can score {scored}: pass --task with one of those, or --protocols none"
        )
    for protocol in config.protocols:
        if protocol not in task_cls.protocols:
            raise ValueError(
                f"protocol {protocol!r} is not one of {config.task}'s: {', '.join(task_cls.protocols)}; pass --protocols "
                "with those (comma-separated), or none"
            )
    tasks = {}
    for protocol in config.protocols:
        template = task_cls.default_template(protocol, "clean")
        options = TaskOptions(config.data_dir, eval_limit=config.eval_limit, template=template, seed=config.seed)
        task_cls.check_options(protocol, options)  # evaluate checks them after the timing (lm-eval not installed)
        tasks[protocol] = task_cls(options)
    return tasks


def _check_out(out: Path) -> None:
    """The folder bench's files go into exists, or can be made, and takes a file (nothing is made yet)."""
    from harness.atomic import check_writable

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; pass a folder (bench.csv, .md, .json and .png go into it)")
    check_writable(out, "output folder", "--out")


def _scoring(model: nn.Module, tokenizer: Any, config: BenchConfig, device: torch.device, tasks: dict) -> list[dict]:
    """The task's own ``evaluate`` per protocol, with the base model, alternating protocols."""
    from harness.task import Loaded

    scored, fns, counts = _share(model).eval(), {}, {}
    for protocol, task in tasks.items():

        def evaluate(task=task, protocol=protocol) -> None:
            loaded = Loaded(scored, scored, "bench", tokenizer)
            results = task.evaluate(loaded, protocol, config.eval_batch_size, None, progress=False)
            counts[protocol] = sum(r.get("n", 0) for r in results.values())

        fns[protocol] = evaluate
    times = alternate(fns, config.rounds, min(config.warmup, 1), device, desc="bench scoring")
    rows = [{"kind": "score", "contender": p, "source": config.task, **_timing(v)} for p, v in times.items()]
    for r in rows:
        r["examples"], r["rounds"] = counts.get(r["contender"], 0), config.rounds
        r["ms_per_example"] = 1e3 * r["step_s"] / r["examples"] if r["examples"] else None
    return rows


# -- CLI ---------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    from harness.cli import add_method_args

    p = sub.add_parser(
        "bench",
        help="time a training step of every method against the frozen-base floor and peft; scoring per protocol",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="embedded", help="'embedded' (default), a local folder, or a hub id")
    p.add_argument("--random-weights", action="store_true", help="build the model from its config, random weights")
    p.add_argument("--layers", type=int, help="with --random-weights: only this many layers (a reduced paper shape)")
    p.add_argument("--methods", default="all", help="comma-separated method names or 'all' (default)")
    p.add_argument("--batch", type=int, default=8, help="rows per step (default 8)")
    p.add_argument("--seq", type=int, default=128, help="tokens per row (default 128)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--no-peft", dest="peft", action="store_false", help="leave out peft's implementations")
    p.add_argument("--reference", action="store_true", help="also time each method's reference path")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="let a model with its own code (auto_map) build from it"
    )
    p.add_argument(
        "--reducer",
        default=",".join(BenchConfig.reducer),
        help="variants for methods with the Reducer on by default: off, default, SELECTION:DROP_RATIO",
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also time every method with this option changed, in the same rounds (repeatable; e.g. dropout=0)",
    )
    p.add_argument(
        "--task",
        default="commonsense",
        help="the task whose scoring is timed (default commonsense, the one bench can score)",
    )
    p.add_argument("--protocols", default="cloze,choice", help="protocols to time, comma-separated, or 'none'")
    p.add_argument("--data-dir", help="the task's data (default: $HARNESS_DATA_DIR, else download)")
    p.add_argument("--eval-limit", type=int, default=8, help="test examples per benchmark when scoring (default 8)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default="runs/bench",
        help="where bench.csv/.md/.json/.png go (default runs/bench/; --out results replaces this repo's committed tables)",
    )
    add_method_args(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    from harness.cli import method_options, split_names
    from harness.memory import keep_freed_memory
    from harness.registry import METHODS

    def names(value: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in value.split(",") if v.strip() and v.strip() != "none")

    same = (
        "model",
        "random_weights",
        "trust_remote_code",
        "layers",
        "rounds",
        "warmup",
        "peft",
        "reference",
        "task",
        "data_dir",
    )
    args.out = os.path.expanduser(args.out)  # the shell leaves --out=~/b as it is (a folder ./~/b was made)
    config = BenchConfig(
        **{k: getattr(args, k) for k in (*same, "eval_limit", "threads", "seed", "out")},
        methods=tuple(split_names(args.methods, METHODS.names(), "method")),
        options=method_options(args),
        batch_size=args.batch,
        seq_len=args.seq,
        reducer=names(args.reducer),
        also=tuple(args.also),
        protocols=names(args.protocols),
    )
    keep_freed_memory()  # before the model is loaded: as `harness run` trains (harness.memory)
    report = run_bench(config)
    print(markdown(report), end="")
    print(f"wrote {Path(config.out) / 'bench.csv'} (and bench.md, bench.json, bench.png)")
