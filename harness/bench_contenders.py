"""The contenders ``harness bench`` times: the floor, each method (per ``--reducer`` variant, ``--reference``
and ``--also`` option) and peft's LoRA and LoRA-FA, each a training step on one fixed random batch; and the
base model they share, loaded as ``harness bench`` loads it."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.bench_report import FLOOR
from harness.bench_variants import _also_config, _paired_with, _replaced, _sets_reducer, _variant_options

if TYPE_CHECKING:
    from harness.bench import BenchConfig


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
    replaced: list[str] = field(default_factory=list)  # Reducer options given ("k=4") its --reducer variant replaced


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
    # learned positions end where the table does: a longer --seq fails inside the model (an IndexError)
    if (positions := learned_positions(model)) and config.seq_len > positions:
        raise ValueError(
            f"--seq {config.seq_len} is longer than the model's {positions} positions; give --seq {positions} or less"
        )
    vocab = model.config.get_text_config().vocab_size  # a multimodal config (Gemma3Config) keeps it in its text one
    ids = torch.randint(0, vocab, (config.batch_size, config.seq_len), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}  # the loss covers every token (train_on_inputs, as the paper)


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")  # GPT-2, GPT-Neo; OPT, BioGPT; BERT-like
# tables whose model also reads the row after each position's: ProphetNet's predicting stream embeds position + 1
READS_NEXT_ROW = ("ProphetNetPositionalEmbeddings",)


def learned_positions(model: nn.Module) -> int | None:
    """The positions ``model`` has a learned table for: an ``nn.Embedding`` of ``POSITION_TABLES`` beside its token
    embeddings, less its ``offset`` (OPT's table starts 2 rows in; RoBERTa's past its ``padding_idx``) and the row a
    ``READS_NEXT_ROW`` model reads past the last position, else the config's ``n_positions`` (GPT-2 style); ``None``
    where positions are computed for any length (rotary, ALiBi), as a Llama's are past its ``max_position_embeddings``."""
    tokens = model.get_input_embeddings()
    for module in model.modules():
        children = dict(module.named_children())
        if any(child is tokens for child in children.values()):
            for name in POSITION_TABLES:
                if isinstance(table := children.get(name), nn.Embedding):
                    offset = getattr(table, "offset", 0)
                    # a table with a padding row (RoBERTa's family) counts positions from padding_idx + 1 (a re-review)
                    padding = table.padding_idx
                    offset = (offset if isinstance(offset, int) else 0) + (padding + 1 if padding is not None else 0)
                    # ProphetNet's last position reads the row after it: one position fewer (from a review)
                    offset += 1 if type(table).__name__ in READS_NEXT_ROW else 0
                    return table.num_embeddings - offset
    return getattr(model.config, "n_positions", None)


def load(config: BenchConfig, device: torch.device) -> tuple[nn.Module, Any, str]:
    """The base model (bf16 on a GPU, fp32 on a CPU) and its tokenizer (only if scoring is timed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import hub, models

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
        if hub.looks_like_path(config.model) and not Path(config.model).expanduser().exists():
            raise ValueError(
                f"--model {config.model!r}: no such folder; give a model folder, a hub id (org/name) or embedded"
            )
        source, label = models.resolve(config.model), models.label(config.model)
        trust = {"trust_remote_code": config.trust_remote_code}
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **trust)
            tokenizer = AutoTokenizer.from_pretrained(source, **trust) if config.protocols else None
        except OSError as exc:  # a hub id offline, gated or gone: transformers says so in several lines
            if not hub.is_hub_id(config.model):
                raise
            raise hub.hub_load_error(config.model, exc) from None
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, label


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
            for reference in (False, True) if config.reference and cls.offers_fast_path(cfg) else (False,):
                name = method + (f" ({label})" if label else "") + (" reference" if reference else "")
                out.append(_ours(name, method, cfg, model, batch, held_out, n, autocast, reference, label))
                out[-1].replaced = _replaced(config.options, base, cfg)
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
            c.replaced = _replaced(config.options, base, cfg) if keeps else []  # a Reducer item: its label says
            out.append(c)
    _note_replaced(replaced_options(out))
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


def replaced_options(contenders: list[Contender]) -> dict[str, list[str]]:
    """{a Reducer option as given (``drop_ratio=0.5``): the rows that did not time it}, their ``--reducer`` variant
    having set the Reducer in its place (bench.json's ``config.options_replaced``, bench.md's header)."""
    replaced: dict[str, list[str]] = {}
    for c in contenders:
        for option in c.replaced:
            replaced.setdefault(option, []).append(c.name)
    return replaced


def _note_replaced(replaced: dict[str, list[str]]) -> None:
    """One line (stderr) naming the Reducer options a ``--reducer`` variant replaced and the rows: a review found
    ``--option drop_ratio=0.5`` timed by no row while the report's config carried it."""
    if not replaced:
        return
    rows: dict[tuple[str, ...], list[str]] = {}  # the same rows for several options: said once
    for option, names in replaced.items():
        rows.setdefault(tuple(names), []).append(option)
    said = "; ".join(f"{', '.join(options)} in {', '.join(names)}" for names, options in rows.items())
    print(
        f"note: the --reducer variants replace Reducer options given: {said}; each of those rows times the Reducer "
        "its label names (--reducer default times the options as given)",
        file=sys.stderr,
    )


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
    adapter.use_fast_path(
        not reference and adapter.method_cls.offers_fast_path(adapter.config)
    )  # a method without one: its own
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
