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
out with a note: the Reducer cannot run or would be off); an importance scoring round (``rollouts`` no-grad forward passes on a held-out batch
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
run records count them. Scoring: the task's ``evaluate`` with the base model per protocol, on
``--eval-limit`` examples per benchmark. Writes ``bench.csv``, ``bench.md``, ``bench.json`` (config,
environment, rows) and ``bench.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.bench_cost import flops, peak_bytes, state_bytes
from harness.bench_report import FLOOR, markdown, portable, relate, write_outputs

EXAMPLES = """examples:
  harness bench --data-dir ../shared/data/commonsense        # the embedded SmolLM2, every method, batch 8 x 128
  harness bench --methods lora,hydralora --reference --protocols none --rounds 9   # fast path vs reference
  harness bench --model meta-llama/Meta-Llama-3-8B --random-weights --layers 2     # on a GPU: bf16, Llama-3-8B layers
  harness bench --methods lora --also dropout=0 --protocols none --rounds 21         # what the dropout costs, paired
"""


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
        from harness.config import make_config
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
        if self.peft and "lora" in METHODS:
            peft_lora_config(self.options)


@dataclass
class Contender:
    name: str
    source: str  # floor | ours | peft
    method: str
    step: Callable[[], None]
    model: nn.Module  # the copy it trains (its frozen weights are the base model's)
    optimizer: torch.optim.Optimizer | None = None
    config: Any = None  # the resolved method config (ours) or peft's LoraConfig
    reducer: str = ""
    variant: str = ""  # an --also option ("dropout=0"): the method's default with that option changed
    baseline: str = ""  # a variant's: the contender of the same method at its defaults ("" if none is timed)
    round_fn: Callable[[], None] | None = None  # the Reducer's scoring round
    interval: int = 1
    fast_path: bool = False  # ours: timed through the adapters' fast path (its FLOPs counted on it too)
    trainable: list[torch.Tensor] = field(default_factory=list)  # what trains, fixed when built (``state_bytes``)


def run_bench(config: BenchConfig, model: nn.Module | None = None, tokenizer: Any = None, label: str = "") -> dict:
    """Time everything, write the files to ``config.out``, return the report: ``{"config", "model", "model_dtype",
    "environment", "adapter" (the settings every method shared), "rows"}``. ``model``/``tokenizer``: use
    these instead of loading ``config.model`` (tests pass a tiny model)."""
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        return _run(config, model, tokenizer, label)
    finally:
        torch.set_num_threads(threads)


def _run(config: BenchConfig, model: nn.Module | None, tokenizer: Any, label: str) -> dict:
    from harness.accounting import environment
    from harness.registry import METHODS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods = list(config.methods) or METHODS.names()
    config.check_methods()  # again: a plugin may have registered since the config was made
    # before the model loads (minutes) and the timing (more): the scoring's task, protocols and data, the output
    tasks = _scoring_tasks(config) if config.protocols else {}
    _check_out(Path(config.out))
    if model is None:
        model, tokenizer, label = load(config, device)
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
        "config": portable(asdict(config)),
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


def build_contenders(
    config: BenchConfig, model: nn.Module, methods: list[str], device: torch.device
) -> tuple[nn.Module, list[Contender]]:
    """The frozen ``model`` on ``device`` and every contender timed on it (the floor first), each with its
    ``step`` (bf16 autocast on a GPU) on one fixed random batch; ``scripts/profile_step.py`` profiles these."""
    model = model.to(device).requires_grad_(False)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    g = torch.Generator().manual_seed(config.seed)
    batch, held_out = (_random_batch(model, config, g, device) for _ in range(2))  # train, and the Reducer's
    return model, _contenders(model, methods, config, batch, held_out, autocast)


def load_contenders(config: BenchConfig) -> tuple[str, torch.device, list[Contender]]:
    """``config.model`` loaded on the GPU if there is one, else the CPU, under the malloc setting ``harness
    bench`` times with (``harness.memory``), and its contenders: for the scripts that time or profile them."""
    from harness.memory import keep_freed_memory

    keep_freed_memory()  # before the model is loaded
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _, label = load(config, device)
    return label, device, build_contenders(config, model, list(config.methods), device)[1]


def load_contenders_or_exit(config: BenchConfig, parser: Any) -> tuple[str, torch.device, list[Contender]]:
    """``load_contenders`` for a script: what only loading finds (``--layers`` without ``--random-weights``, a model
    that is not there) ends it through ``parser.error`` in one line, naming ``--model`` where the model did not load
    (transformers' hub errors name no flag, and span lines); ``HARNESS_DEBUG`` gives the traceback, as the CLI does."""
    from harness.cli import _debug

    try:
        return load_contenders(config)
    except (ValueError, OSError) as exc:
        if _debug():
            raise
        why = " ".join(str(exc).split())
        parser.error(f"--model {config.model!r} cannot be loaded ({why})" if isinstance(exc, OSError) else why)
        raise  # parser.error exits; this line only tells type checkers so


def _random_batch(model: nn.Module, config: BenchConfig, g: torch.Generator, device: torch.device) -> dict:
    # learned positions (GPT-2's n_positions) end where the table does: a longer --seq fails inside the model
    if (positions := getattr(model.config, "n_positions", None)) and config.seq_len > positions:
        raise ValueError(
            f"--seq {config.seq_len} is longer than the model's {positions} positions; give --seq {positions} or less"
        )
    vocab = model.config.get_text_config().vocab_size  # a multimodal config (Gemma3Config) keeps it in its text one
    ids = torch.randint(0, vocab, (config.batch_size, config.seq_len), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}  # the loss covers every token (train_on_inputs, as the paper)


def load(config: BenchConfig, device: torch.device) -> tuple[nn.Module, Any, str]:
    """The base model (bf16 on a GPU, fp32 on a CPU) and its tokenizer (only if scoring is timed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import models

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if config.random_weights:
        layers = {"num_hidden_layers": config.layers} if config.layers else {}
        model_config = models.transformers_config(config.model, None, config.trust_remote_code, layers)
        found = getattr(model_config.get_text_config(), "num_hidden_layers", None)
        if layers and found != config.layers:
            raise ValueError(
                f"--layers {config.layers}: the config of {config.model!r} did not take it (its text config's "
                f"num_hidden_layers is {found}); leave --layers out, or give a config with that many layers"
            )
        torch.manual_seed(config.seed)
        with torch.device(device):  # initialised where it runs: a paper shape is slow to initialise on a CPU
            model = AutoModelForCausalLM.from_config(
                model_config, dtype=dtype, trust_remote_code=config.trust_remote_code
            )
        label = f"{models.label(config.model, random_weights=True)} (random weights)"
        label += f", {config.layers} layer{'s' if config.layers != 1 else ''}" if config.layers else ""
        vocab = getattr(model.config.get_text_config(), "vocab_size", None)
        tokenizer = models.random_weights_tokenizer(config.model, vocab)[0] if config.protocols else None
    elif config.layers:
        raise ValueError("--layers builds a reduced shape and needs --random-weights")
    else:
        if models.looks_like_path(config.model) and not Path(config.model).expanduser().exists():
            raise ValueError(
                f"--model {config.model!r}: no such folder; give a model folder, a hub id (org/name) or embedded"
            )
        source, label = models.resolve(config.model), models.label(config.model)
        trust = {"trust_remote_code": config.trust_remote_code}
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **trust)
            tokenizer = AutoTokenizer.from_pretrained(source, **trust) if config.protocols else None
        except OSError as exc:  # a hub id offline, gated or gone: transformers says so in several lines
            if not models.is_hub_id(config.model):
                raise
            raise models.hub_load_error(config.model, exc) from None
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, label


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


# -- contenders --------------------------------------------------------------------------------------
def _contenders(model, methods, config, batch, held_out, autocast) -> list[Contender]:
    from harness.config import make_config
    from harness.registry import METHODS

    n = batch["input_ids"].numel() - batch["input_ids"].shape[0]  # predicted tokens per step
    floor = _share(model).train()  # as every contender (a model loaded in eval mode would skip its own dropout)
    floor.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_())
    out = [Contender(FLOOR, FLOOR, "", _stepper(floor, None, batch, n, autocast), floor)]
    for method in methods:
        cls = METHODS.get(method)
        base = make_config(cls.config_cls, config.options, method)
        variants = [("", base)]
        if base.reducer is not None and config.reducer:
            variants = [
                (v, make_config(cls.config_cls, _variant_options(config.options, v), method)) for v in config.reducer
            ]
        variants = _runnable(method, variants, model, named=variants[0][0] != "")
        # the contender an --also variant is compared with: this method at its defaults, else (its defaults' Reducer
        # not timed, as with --reducer off) the first Reducer variant timed, which the --also row keeps
        paired, paired_cfg = _paired_with(variants, base) if variants else ("", base)
        default = defaults_row = ""  # the rows timed with paired's Reducer, and at the method's defaults
        for reducer, cfg in variants:
            label = reducer + (", default" if reducer and reducer != "default" and cfg == base else "")
            # a method without a fast path runs its reference path either way: one contender, not two alike
            for reference in (False, True) if config.reference and cls.offers_fast_path() else (False,):
                name = method + (f" ({label})" if label else "") + (" reference" if reference else "")
                out.append(_ours(name, method, cfg, model, batch, held_out, n, autocast, reference, label))
                default = default or (name if reducer == paired and not reference else "")
                defaults_row = defaults_row or (name if cfg == base and not reference else "")
        for item in config.also:
            keeps = "" if _sets_reducer(item) else paired  # a Reducer option changes the method's defaults
            cfg = _also_config(cls, config.options, keeps, item, method)
            # a Reducer option names its Reducer: left out, with a note, where K is every layer (the Reducer off)
            if not _runnable(method, [(item, cfg)], model, named=_sets_reducer(item)):
                continue
            label = f"{keeps}, {item}" if keeps and paired_cfg != base else item  # the defaults' Reducer: unsaid
            c = _ours(f"{method} ({label})", method, cfg, model, batch, held_out, n, autocast, False, keeps)
            # compared with the row it changes: the one it keeps the Reducer of, or the defaults' where timed
            c.variant, c.baseline = item, default if keeps == paired else defaults_row
            out.append(c)
    if config.peft and "lora" in METHODS:
        lora, left_out = peft_lora_config(config.options)
        peft = [c for fa in (False, True) if (c := _peft(model, lora, fa, batch, n, autocast)) is not None]
        if peft and left_out:
            given = ", ".join(f"{k}={v}" for k, v in left_out.items())
            print(
                f"note: peft's LoRA takes rank, alpha, dropout and targets only; not given to it: {given}",
                file=sys.stderr,
            )
        out += peft
    return out


PEFT_OPTIONS = ("rank", "r", "alpha", "dropout", "targets")  # what peft's LoraConfig is built from (``_peft``)


def peft_lora_config(options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Our LoRA's config for peft's contenders from the options every method shares (rank, alpha, dropout,
    targets), and the options left out (a method's own, ``mixer_init``; the Reducer's): ``--option`` applies to
    every method of ``--methods``, and LoRA has none of those."""
    from harness.config import make_config
    from harness.registry import METHODS

    given = {k: v for k, v in options.items() if k in PEFT_OPTIONS}
    left_out = {k: v for k, v in options.items() if k not in PEFT_OPTIONS}
    return make_config(METHODS.get("lora").config_cls, given, "lora"), left_out


def _ours(name, method, cfg, model, batch, held_out, n, autocast, reference, reducer) -> Contender:
    from harness.adapter import attach
    from harness.train import adamw
    from tasks.lm import loss_sum

    trained = _share(model)
    adapter = attach(trained, method, config=cfg)
    adapter.use_fast_path(not reference and adapter.method_cls.offers_fast_path())  # a method without one: its own
    fast = any(layer.fast_path for layer in adapter.layers.values())  # a method without one: the reference path
    trained.train()
    opt = adamw(adapter.param_groups(lr=1e-4), fused=fast)  # as the training loop builds it
    red = adapter.reducer if adapter.reducer is not None and adapter.reducer.active else None
    step = _stepper(trained, opt, batch, n, autocast, before=red.select if red else None, extra=adapter.extra_loss)
    c = Contender(name, "ours", method, step, trained, opt, cfg, reducer, fast_path=fast)
    c.trainable = adapter.trainable_parameters()  # the Reducer pauses some each step; all keep their state
    if red is not None and red.config.selection == "importance":

        def val_loss() -> float:  # as the training loop's: eval mode, no gradients
            trained.eval()
            try:
                with torch.no_grad(), autocast():
                    return float(loss_sum(trained, held_out, held_out["input_ids"].shape[1]) / n)
            finally:
                trained.train()

        c.round_fn, c.interval = (lambda: red.score(val_loss, 0)), red.config.interval
    return c


def _peft(model, lora, fa: bool, batch, n, autocast) -> Contender | None:
    from harness.train import adamw

    try:
        from peft import LoraConfig, get_peft_model
        from peft.optimizers import create_lorafa_optimizer
    except ImportError:  # no peft, or a peft without LoRA-FA: the comparison is left out
        return None
    targets = list(lora.targets) if isinstance(lora.targets, tuple) else lora.targets
    peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
    wrapped = get_peft_model(_share(model), peft_cfg).train()
    if fa and (idle := _without_gradient(wrapped, batch, n, autocast)):  # its optimizer would raise a TypeError
        print(
            f"note: peft lora_fa left out: {len(idle)} of its adapted layers get no gradient from the loss "
            f"({idle[0]}{', ...' if len(idle) > 1 else ''}), and peft's LoRA-FA optimizer cannot step such a layer "
            "(it multiplies a missing gradient); --targets with a regex naming only the layers the loss reaches "
            "(e.g. '.*language_model.*_proj') times it",
            file=sys.stderr,
        )
        return None
    if fa:
        opt = create_lorafa_optimizer(wrapped, r=lora.r, lora_alpha=lora.alpha, lr=1e-4, weight_decay=0.0)
    else:  # weight decay 0, as ours (``Adapter.param_groups``), not torch's default 0.01
        params = [p for p in wrapped.parameters() if p.requires_grad]
        opt = adamw([{"params": params, "lr": 1e-4, "weight_decay": 0.0}], fused=True)
    method = "lora_fa" if fa else "lora"
    step = _stepper(wrapped, opt, batch, n, autocast)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]  # LoRA-FA's optimizer froze A
    return Contender(f"peft {method}", "peft", method, step, wrapped, opt, peft_cfg, trainable=trainable)


def _without_gradient(model: nn.Module, batch: dict, n: int, autocast: Callable[[], Any]) -> list[str]:
    """The peft-adapted layers whose ``lora_B`` one backward of the step leaves without a gradient (targets that
    also match layers the loss does not reach, as a multimodal model's vision tower), by module name; the
    gradients are cleared again."""
    from tasks.lm import loss_sum

    with autocast():
        loss = loss_sum(model, batch, batch["input_ids"].shape[1]) / n
    loss.backward()
    idle = [
        name.split(".lora_B")[0].removeprefix("base_model.model.")
        for name, p in model.named_parameters()
        if p.requires_grad and ".lora_B." in name and p.grad is None
    ]
    model.zero_grad(set_to_none=True)
    return idle


def _stepper(
    model,
    optimizer,
    batch,
    n,
    autocast,
    before: Callable[[], Any] | None = None,
    extra: Callable[[], Any] | None = None,
) -> Callable[[], None]:
    from tasks.lm import loss_sum

    def step() -> None:
        if before is not None:
            before()  # the Reducer's per-step layer draw
        with autocast():
            loss = loss_sum(model, batch, batch["input_ids"].shape[1]) / n
            term = extra() if extra is not None else None  # a method's own loss term, as the training loop adds it
            if term is not None:
                loss = loss + term
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def _runnable(
    method: str, variants: list[tuple[str, Any]], model: nn.Module, named: bool = True
) -> list[tuple[str, Any]]:
    """The configs whose Reducer (if any) can run on the model: K within 1..L, and for a ``named`` Reducer
    variant (``importance:0.25``) below L; a note (stderr) says which are left out and why, before anything is
    timed (``attach`` would refuse K = 0, naming a k no one set, and at K = L the Reducer is off: a row labelled
    with a Reducer variant would time a step without it; an unnamed row, the method's default or an --also
    one, claims no Reducer and is timed as it is)."""
    from harness.adapter import Site, find_targets

    kept = []
    for variant, cfg in variants:
        if cfg.reducer is None:  # off
            kept.append((variant, cfg))
            continue
        sites = {Site.of(name, model.get_submodule(name), model).layer for name in find_targets(model, cfg.targets)}
        layers = len(sites)
        try:
            k = cfg.reducer.resolve_k(layers)
        except ValueError as exc:  # K outside 1..L
            why = f"{exc}: the Reducer cannot run"
        else:
            if k < layers or not named:
                kept.append((variant, cfg))
                continue
            why = f"K = {k} of its {layers} adapted layers: the Reducer would be off"
        print(
            f"note: {method} ({variant or 'default'}) left out: {why}; a model with more layers, or another "
            "--reducer drop ratio, times it",
            file=sys.stderr,
        )
    return kept


def _refuse_same(flag: str, given: str, made: dict[str, Any], method: str) -> None:
    """Refuse ``given``'s config (the last of ``made``) where an earlier one of ``made`` is the same: two rows
    timing one step (``""``: the row an ``--also`` is compared with, so that option changes nothing)."""
    *earlier, (_, config) = made.items()
    for other, seen in earlier:
        if seen == config:
            what = f"{method}'s setting already (its row times it)" if not other else f"what {other!r} gives {method}"
            raise ValueError(f"{flag} {given!r} is {what}: it would time the same step twice; give another value")


def _paired_with(variants: list[tuple[str, Any]], base: Any) -> tuple[str, Any]:
    """The timed Reducer variant an ``--also`` row is built on and compared with: the one at the method's
    defaults where it is timed, else the first (``--reducer off``: the variant is the Reducer off too, and says so)."""
    return next(((v, c) for v, c in variants if c == base), variants[0])


def _variant_options(options: dict[str, Any], variant: str) -> dict[str, Any]:
    """``options`` with a Reducer variant's: ``off`` also drops the Reducer shortcuts the options set (``k=4``
    with the Reducer off is no Reducer, not a contradiction), and a ``SELECTION:DROP_RATIO`` variant sets K by
    its drop ratio, so an option's ``k`` gives way to it (the row is what its label says), and so does the selection
    a ``reducer`` option names (``reducer=importance`` beside ``random:0.25``: ``_without_reducer_fields``);
    ``default`` keeps them."""
    from harness.config import REDUCER_SHORTCUTS

    variant_options = _reducer_options(variant)
    if variant == "off":
        kept = {k: v for k, v in options.items() if k not in REDUCER_SHORTCUTS}
    elif "drop_ratio" in variant_options:
        kept = {k: v for k, v in options.items() if k != "k"}
        kept = _without_reducer_fields(kept, {"selection", "drop_ratio", "k"})
    else:
        kept = options
    return kept | variant_options


def _without_reducer_fields(options: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``options`` with their ``reducer`` option no longer naming the Reducer ``fields`` a bench variant or an
    ``--also`` item sets: those replace the method's settings, and ``make_config`` refuses a ``reducer`` that names
    one beside a shortcut setting it otherwise. ``reducer=importance`` (a selection) is then ``reducer=on``, and a
    dict of ``ReducerConfig`` fields loses those keys."""
    from harness.config import SELECTIONS

    value = options.get("reducer")
    if "selection" in fields and isinstance(value, str) and value.strip().lower() in SELECTIONS:
        return options | {"reducer": "on"}
    if isinstance(value, dict) and fields & value.keys():
        return options | {"reducer": {k: v for k, v in value.items() if k not in fields}}
    return options


def _reducer_options(variant: str) -> dict[str, Any]:
    """``off`` | ``default`` | ``SELECTION:DROP_RATIO`` (``importance:0.25``, ``random:0.75``)."""
    if variant in ("off", "default"):
        return {"reducer": None} if variant == "off" else {}
    selection, sep, ratio = variant.partition(":")
    try:
        if selection not in ("importance", "random") or not sep or not 0.0 <= float(ratio) < 1.0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"reducer variant {variant!r} not understood; use off, default or SELECTION:DROP_RATIO "
            "with SELECTION importance|random and 0 <= DROP_RATIO < 1 (e.g. importance:0.25)"
        ) from None
    return {"selection": selection, "drop_ratio": float(ratio)}


ALIASES = ({"r", "rank"}, {"k", "drop_ratio"})  # options that set one thing (make_config: rank is r; both K)


def _sets_reducer(item: str) -> bool:
    """Whether an ``--also`` option is the Reducer's own (``reducer=off``, ``k=1``, ``selection=random``)."""
    from harness.config import REDUCER_SHORTCUTS

    return _also_option(item)[0] in ("reducer", *REDUCER_SHORTCUTS)


def _also_base(options: dict[str, Any], variant: str, item: str) -> dict[str, Any]:
    """The options an ``--also`` row changes: ``variant``'s (the Reducer variant it keeps), but the method's own
    for an option of the Reducer's (a variant's shortcuts would override or contradict it)."""
    return _variant_options(options, variant) if variant and not _sets_reducer(item) else options


def _also_config(cls: type, options: dict[str, Any], variant: str, item: str, method: str) -> Any:
    """The config of an ``--also`` row: ``variant``'s options (``_also_base``) with the item's value in."""
    from harness.config import make_config

    return make_config(cls.config_cls, _with_also(_also_base(options, variant, item), item), method)


def _with_also(options: dict[str, Any], item: str) -> dict[str, Any]:
    """``options`` with an ``--also`` option's value, in place of any option that sets the same thing (``--rank 8
    --also r=2`` is rank 2: ``rank`` would win over ``r``, and the row labelled r=2 would time rank 8); a Reducer
    item replaces the method's setting of it alike, where a ``reducer`` option names it (``--option
    reducer=importance --also selection=random``) or it names a shortcut's (``--also reducer=random`` beside
    ``--option selection=importance``)."""
    from harness.config import _SHORTCUT_FIELD, REDUCER_SHORTCUTS, SELECTIONS

    key, value = _also_option(item)
    same = next((names for names in ALIASES if key in names), {key})
    if key == "reducer" and value.lower() in ("off", "none"):  # the Reducer off: its options go with it, as
        same = {*same, *REDUCER_SHORTCUTS}  # with --reducer off (_variant_options)
    elif key == "reducer" and value.lower() in SELECTIONS:
        same = {*same, "selection"}
    options = _without_reducer_fields(options, {_SHORTCUT_FIELD.get(k, k) for k in same if k in REDUCER_SHORTCUTS})
    return {k: v for k, v in options.items() if k not in same} | {key: value}


def _also_option(item: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--also`` (``dropout=0``), as ``--option`` takes it."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"--also {item!r} must look like key=value (e.g. --also dropout=0)")
    return key.strip(), value.strip()


def adapter_settings(contenders: list[Contender]) -> dict[str, Any] | None:
    """The settings every method shares (rank, alpha, dropout, targets, heads), as our contenders resolved
    them from the defaults and ``--rank``/``--option``: the table must say what it timed."""
    ours = next((c.config for c in contenders if c.source == "ours" and not c.variant), None)
    if ours is None:
        return None
    targets = ours.targets if isinstance(ours.targets, str) else list(ours.targets)
    return {"r": ours.r, "alpha": ours.alpha, "dropout": ours.dropout, "targets": targets, "heads": ours.heads}


def _share(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose (frozen) parameters are the original's: a contender costs its adapter only."""
    return copy.deepcopy(model, {id(p): p for p in model.parameters()})


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
        "peak_mb": peak_bytes(c.step, device) / 2**20,
        "state_mb": state_bytes(c) / 2**20,
        "gflops": step / 1e9 if step is not None else None,
        "hook_gflops": rounds / 1e9 if rounds is not None else None,
        "rounds": len(times[c.name]),
    }


def _scoring_tasks(config: BenchConfig) -> dict[str, Any]:
    """{protocol: the task built to score it}: an unknown task or protocol, or data that cannot be read, fails
    here, before anything is loaded or timed."""
    from harness.registry import TASKS
    from harness.task import TaskOptions

    task_cls = TASKS.get(config.task)
    for protocol in config.protocols:
        if protocol not in task_cls.protocols:
            raise ValueError(
                f"protocol {protocol!r} is not one of {config.task}'s: {', '.join(task_cls.protocols)}; pass --protocols "
                "with those (comma-separated), or none"
            )
    tasks = {}
    for protocol in config.protocols:
        template = task_cls.default_template(protocol, "clean")
        tasks[protocol] = task_cls(
            TaskOptions(config.data_dir, eval_limit=config.eval_limit, template=template, seed=config.seed)
        )
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
    p.add_argument("--task", default="commonsense", help="the task whose scoring is timed (default commonsense)")
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
