"""The training loop, top to bottom: encode, batch, step, validate, checkpoint, resume.

Suite behaviour enters only through the task's ``Recipe`` (encode, collate, summed loss), method
behaviour only through the adapter's hooks (``param_groups``, ``on_step_begin``, ``extra_loss``).
Device placement and mixed precision go through accelerate, so ``accelerate launch`` runs this same
code on several GPUs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from tqdm.auto import tqdm

from harness.accounting import MemoryMeter, environment
from harness.atomic import atomic_path
from harness.records import FIRST_METHOD_VERSION
from harness.task import Example, Recipe, to_device

CHECKPOINT = "checkpoint.pt"


# in a checkpoint's code since 2026-12-05, with the value an older checkpoint's code was made with
LATER_CODE_KEYS = {"method_version": FIRST_METHOD_VERSION}
# in a checkpoint's code since 2026-12-06 (whose checkpoints also keep "hub_revision" in their state), kept only where
# set: one from before lacks it whichever its run had (a model that loads only with --trust-remote-code ran with it),
# so it is not compared there
UNKNOWN_BEFORE_CODE_KEYS = ("trust_remote_code",)
# the facts of ``environment()`` a step's time depends on, by which the leaderboard pools times
# (``harness.leaderboard_render._timed_on``): a checkpoint keeps them, so that a run resumed elsewhere says so
TIMED_ON_KEYS = ("device", "device_type", "torch_threads", "malloc")


def timed_facts(env: dict[str, Any]) -> dict[str, Any]:
    """``env``'s ``TIMED_ON_KEYS`` as the leaderboard files times apart (``_timed_on``): the CPU threads only where a
    CPU computes, the malloc setting only as whether it keeps freed memory (a GPU job given other CPU threads
    computes its steps alike, and was marked as resumed elsewhere while the leaderboard pooled it)."""
    threshold = (env.get("malloc") or {}).get("mmap_threshold")
    return {
        "device": env.get("device"),
        "device_type": env.get("device_type"),
        "torch_threads": env.get("torch_threads") if env.get("device_type", "cpu") == "cpu" else None,
        "malloc": {"mmap_threshold": threshold} if threshold else None,
    }


class Cancelled(BaseException):
    """Training stopped on request (SIGTERM) after a checkpoint was saved; the next start resumes. A
    ``BaseException``, as ``KeyboardInterrupt`` is: a SIGTERM outside the training loop (counting FLOPs,
    loading, scoring) raises it wherever the program is, and an ``except Exception`` there (which records
    what it could not do and goes on) must not swallow it."""


class CheckpointUnreadable(RuntimeError):
    """The machine could not read a run's checkpoint (an I/O error, no memory): the file may be good and is kept.
    The run's record says failed and the command stops (``harness.runner``): the next runs would meet the same
    machine, and the checkpoint is resumed once it reads."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int | None = None  # optimizer steps; None: derived from epochs
    epochs: float = 1.0
    micro_batch_size: int = 4
    grad_accum: int = 4  # effective batch = micro_batch_size * grad_accum * processes
    lr: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "linear"  # linear | cosine | constant (after warm-up)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    cutoff_len: int = 256  # tokens
    train_on_inputs: bool = True  # LLM-Adapters default: the loss also covers the prompt
    val_batch_size: int = 8
    checkpoint_every: int = 50  # optimizer steps; 0 = never
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        for name in ("micro_batch_size", "grad_accum", "cutoff_len", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not all(math.isfinite(v) and v > 0 for v in (self.epochs, self.lr)):  # NaN passes `<= 0` checks
            raise ValueError(f"epochs and lr must be finite numbers > 0 (got {self.epochs}, {self.lr})")
        for name in ("warmup_steps", "checkpoint_every"):  # the setting that is wrong, named with its value
            if getattr(self, name) < 0:
                raise ValueError(f"warmup_steps and checkpoint_every must be >= 0 (got {name}={getattr(self, name)})")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r} is not valid; choose one of: linear, cosine, constant")


def _warn_schedule(config: TrainConfig, total_steps: int, n: int, per_step: int) -> None:
    """Say (stderr) where the schedule is not what the settings read as: a warm-up as long as the run, whose
    learning rate then never reaches ``lr``; a step of more examples than there are; ``epochs`` that whole steps of
    ``per_step`` examples miss by over 5%."""
    if config.warmup_steps >= total_steps:
        print(
            f"warning: the warm-up ({config.warmup_steps} steps) is not shorter than the run ({total_steps} steps): "
            f"the learning rate reaches {total_steps / (config.warmup_steps + 1):.2g} of --lr at most and never "
            "decays; lower --warmup-steps or raise --steps",
            file=sys.stderr,
        )
    if per_step > n:  # the stream of examples wraps within one step: some are in it twice, unevenly
        print(
            f"warning: a step takes {per_step} examples (micro-batch x grad-accum x processes) but the training set "
            f"holds {n}: every step repeats some of them, some more often than others; lower --micro-batch-size or "
            "--grad-accum",
            file=sys.stderr,
        )
    passes = total_steps * per_step / n
    if not config.steps and abs(passes - config.epochs) > 0.05 * config.epochs:  # more than 5% off what was asked
        print(
            f"warning: --epochs {config.epochs:g} trains {total_steps} steps of {per_step} examples: "
            f"{passes:.4g} passes over the {n} training examples (whole steps only)",
            file=sys.stderr,
        )


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


@dataclass
class TrainResult:
    steps: int
    samples: int
    tokens: int  # non-pad tokens seen by the model in training steps
    train_s: float  # wall time of training steps; hooks' validation calls and checkpoint writes excluded
    hook_val_s: float  # wall time of validation-loss calls made by hooks (the Reducer's rollouts)
    loss_curve: list[list[float]]  # [step, loss]
    params_updated: list[int]  # per step: elements of trainable tensors that received a gradient
    memory: dict[str, float]
    final_val_loss: float | None
    final_val_s: float  # the final validation pass, counted in neither train_s nor hook_val_s
    resumed_from: int | None
    first_step_shapes: list[list[int]]  # per micro-batch of one optimizer step, as ``Recipe.shape`` gives it
    # the hooks' validation forwards (the Reducer's rollouts), every process's: ``{"shape", "skipped", "count"}``
    # per batch shape and set of wrappers whose adapter was off (``skipped``: gate 0), for counting their FLOPs;
    # None: not known (resumed from a checkpoint written before they were kept)
    hook_val_forwards: list[dict[str, Any]] | None = field(default_factory=list)
    # a run resumed under other ``TIMED_ON_KEYS`` facts than this process's (another machine, CPU thread count or
    # malloc setting): those its earlier steps ran under, in order, whose time and peaks it carries; None: all here
    timed_on_before_resume: list[dict[str, Any]] | None = None


def adamw(groups: list[dict[str, Any]], fused: bool = False) -> torch.optim.AdamW:
    """AdamW as the training loop builds it. ``fused`` (the fast path's choice): torch's fused kernel, one
    pass over every tensor instead of a Python loop of ~10 ops per tensor (the same update within fp32
    rounding), where every tensor is floating point on a CPU or a CUDA device."""
    if fused:
        tensors = [p for group in groups for p in group["params"]]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(groups, fused=fused or None)


def train(
    model,
    recipe: Recipe,
    adapter,
    train_set: list[Example],
    val_set: list[Example],
    config: TrainConfig,
    run_dir: Path | None = None,
    accelerator=None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    task_params: list[torch.nn.Parameter] | None = None,
    data: dict[str, str] | None = None,
    code: dict[str, str] | None = None,
    weights: str | None = None,
    revision: str | None = None,
    env: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``adapter`` on ``train_set``. ``should_stop`` is polled after every optimizer step and after the
    final validation: when it says so, a checkpoint is written and ``Cancelled`` raised. A loss that is not
    finite raises ``FloatingPointError`` naming the step, before that step's update (the last checkpoint stays).
    ``data``: what the training files are (``{file: sha256}``, ``Task.training_files``): kept in a checkpoint, and
    a checkpoint written on other files is refused instead of resumed on these. ``code``: what the run id leaves
    out of the code (``{"task_version": ..., "plugin ...": sha or version}``), checked on resume the same way.
    ``weights``: the digest of the model's weights (``harness.identity``), where they are known: a checkpoint written
    on other weights (a model folder's files replaced, another embedded GGUF) is refused instead of resumed on these.
    ``revision``: the commit a hub id's model was loaded at (``harness.models.hub_revision``; it has no ``weights``):
    a checkpoint written at another commit is refused the same way. ``env``: this process's ``environment()`` (the
    record's; None: read here), whose ``TIMED_ON_KEYS`` a checkpoint keeps: a run resumed where they differ is not
    refused (its device type and precision are checked), but says where its earlier steps ran
    (``TrainResult.timed_on_before_resume``): its times and peaks are the sessions' together."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    task_params = list(task_params or [])
    # DDP must be told where a step may leave a trained tensor without a gradient: the Reducer's paused heads, and
    # a task's own parameters that a micro-batch may not reach (LLaVA's projector on a text-only example)
    unused = adapter.pauses_parameters or bool(task_params)
    accelerator = accelerator or Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
    )
    # each process its own stream (dropout masks, diffusion noise): the same seed gave every process the same draws
    # on its own examples; one process (the main one, index 0) draws what a single-process run does
    torch.manual_seed(config.seed + accelerator.process_index)
    random.seed(config.seed + accelerator.process_index)
    before = getattr(recipe, "truncated", 0)  # a recipe that counts them (the FLOPs probe may have encoded one)
    encoded = [recipe.encode(e) for e in train_set]
    if (cut := getattr(recipe, "truncated", 0) - before) and accelerator.is_main_process:
        print(
            f"warning: {cut} of {len(encoded)} training examples are longer than cutoff_len={config.cutoff_len} tokens "
            "and were cut, their answers with them; to keep them, raise cutoff_len (TrainConfig.cutoff_len: the "
            "preset's, or in the Python API)",
            file=sys.stderr,
        )
    val_encoded = [recipe.encode(e) for e in val_set]
    if not encoded:
        raise ValueError("no training examples")

    # One deterministic order of micro-batches per epoch; this process takes every world_size-th.
    per_step = config.micro_batch_size * config.grad_accum * accelerator.num_processes
    steps_per_epoch = max(1, len(encoded) // per_step)
    total_steps = config.steps or max(1, round(config.epochs * steps_per_epoch))
    if accelerator.is_main_process:
        _warn_schedule(config, total_steps, len(encoded), per_step)
    micro_batches = _micro_batches(len(encoded), config, accelerator, total_steps)
    val_batches = [
        recipe.collate(val_encoded[i : i + config.val_batch_size])
        for i in range(0, len(val_encoded), config.val_batch_size)
    ]

    # a task may train some of its own parameters along with every method's adapter (LLaVA's projector in
    # stage 2): one more group, the same for every method; they are saved with the checkpoint
    groups = adapter.param_groups(config.lr, config.weight_decay)
    if task_params:
        groups.append({"params": task_params, "lr": config.lr, "weight_decay": config.weight_decay})
    optimizer = adamw(groups, fused=any(layer.fast_path for layer in adapter.layers.values()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    env = environment() if env is None else env
    timed_on = timed_facts(env)  # where this process's steps are timed

    state = {
        "step": 0,
        "samples": 0,
        "tokens": 0,
        "train_s": 0.0,
        "hook_val_s": 0.0,
        "hook_val_forwards": {},  # json [shape, skipped] -> forwards on this process
        "loss_curve": [],
        "params_updated": [],
        "saved_step": 0,  # the step of the last checkpoint written
        "data": dict(data or {}),  # the training files' hashes, checked on resume
        "code": dict(code or {}),  # the task's version and plugin code, checked on resume
        "weights": weights,  # the model's weights' digest (None: not known), checked on resume
        "hub_revision": revision,  # a hub id's commit (None: no hub id, or not known), checked on resume
        # where it computes: a run stopped on a GPU (bf16 autocast) and resumed on a CPU (fp32) would mix the two
        "device": {"type": device.type, "mixed_precision": str(accelerator.mixed_precision)},
        # every session's ``timed_on`` that trained into this state, in order: train_s, tokens and the memory peaks
        # carry over a resume, so those of a run resumed on another machine (thread count, malloc) are both machines'
        "timed_on": [timed_on],
    }
    if accelerator.num_processes > 1:  # the optimizer step is every process's micro-batches: step 0's, gathered
        from accelerate.utils import gather_object

        step_shapes = gather_object(_first_shapes(recipe, encoded, micro_batches[:1]))
    else:
        step_shapes = _first_shapes(recipe, encoded, micro_batches)
    # a run with nothing to learn from (every answer cut away by cutoff_len) would step an adapter on no gradient
    # and record a loss of 0 a step: refused before it starts
    supervised = bool(step_shapes if accelerator.num_processes == 1 else _first_shapes(recipe, encoded, micro_batches))
    if accelerator.num_processes > 1:
        supervised = bool(accelerator.reduce(torch.tensor(int(supervised), device=accelerator.device), "sum"))
    if not supervised:
        raise ValueError(
            f"no training step has a supervised token: at cutoff_len={config.cutoff_len} every example's answer is cut "
            "away (or none has one); raise cutoff_len, or train on the prompt too (train_on_inputs)"
        )
    memory = MemoryMeter(device)  # before a resume, so that a resumed run's baseline is a fresh run's
    resumed_from = None
    checkpoint = run_dir / CHECKPOINT if run_dir else None
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
    saved = _read_checkpoint(checkpoint) if checkpoint and checkpoint.is_file() else None
    if saved is not None:
        if saved["config"] != asdict(config):
            raise ValueError(f"{checkpoint} was written with other training settings; delete it or use --force")
        then = saved["state"].get("data") or {}
        if data and then and then != data:
            changed = sorted(k for k in set(then) | set(data) if then.get(k) != data.get(k))
            raise ValueError(
                f"{checkpoint} was written on other training data ({', '.join(changed)} changed since); delete it "
                "or use --force to start over on this data"
            )
        then_code = saved["state"].get("code") or {}  # none kept: a checkpoint from before, taken as it is
        # keys kept since a date: a checkpoint from before lacks them and was made with their first value
        if then_code:
            then_code = {k: v for k, v in LATER_CODE_KEYS.items() if k in (code or {})} | then_code
        now_code = dict(code or {})
        if "hub_revision" not in saved["state"]:  # from before UNKNOWN_BEFORE_CODE_KEYS were kept: not known
            then_code = {k: v for k, v in then_code.items() if k not in UNKNOWN_BEFORE_CODE_KEYS}
            now_code = {k: v for k, v in now_code.items() if k not in UNKNOWN_BEFORE_CODE_KEYS}
        changed = sorted(k for k in set(then_code) | set(now_code) if then_code.get(k) != now_code.get(k))
        if code and then_code and changed:
            raise ValueError(
                f"{checkpoint} was written by other code ({', '.join(changed)} changed since); delete it or use "
                "--force to start over with this code"
            )
        then_weights = saved["state"].get("weights")  # none kept: not known then, or a checkpoint from before
        if weights and then_weights and then_weights != weights:
            raise ValueError(
                f"{checkpoint} was written on another model (the files the run reads of it, weights, configs, "
                f"tokenizer or code, or another embedded GGUF: {then_weights[:8]} -> {weights[:8]} since); delete it "
                "or use --force to start over on this one"
            )
        then_revision = saved["state"].get("hub_revision")  # none kept: not known then, or a checkpoint from before
        if revision and then_revision and then_revision != revision:
            raise ValueError(
                f"{checkpoint} was written on another revision of the hub model (commit {then_revision[:8]} -> "
                f"{revision[:8]} since); delete it or use --force to start over on this one"
            )
        then_device = saved["state"].get("device")  # none kept: a checkpoint from before, taken as it is
        if then_device and then_device != state["device"]:
            raise ValueError(
                f"{checkpoint} was written on {then_device['type']} (mixed precision {then_device['mixed_precision']}),"
                f" and this process computes on {device.type} (mixed precision {accelerator.mixed_precision}): resume "
                "it where it ran, or use --force to start over here"
            )
        adapter.load_state_dict(saved["adapter"])
        with torch.no_grad():
            for p, t in zip(task_params, saved.get("task_params", []), strict=True):
                p.copy_(t)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        adapter.load_training_state(saved["hooks"])
        rngs = saved.get("process_rngs")  # several processes: each one's own (dropout draws differ per process)
        mine = rngs[accelerator.process_index] if rngs and len(rngs) == accelerator.num_processes else saved
        torch.set_rng_state(mine["torch_rng"])
        if mine.get("cuda_rng") is not None and device.type == "cuda":  # dropout and noise drawn on the GPU
            torch.cuda.set_rng_state(mine["cuda_rng"], device)
        random.setstate(mine["python_rng"])
        state = saved["state"]
        if code:  # the same as the checkpoint's (checked above), or kept from now on where a key was not known
            state["code"] = dict(code)
        if weights:  # the same as the checkpoint's (checked above), or kept from now on where it had none
            state["weights"] = weights
        # the same, for a hub id's commit; kept (None where not known) from now on where the checkpoint had none, so
        # that its next resume reads it as a checkpoint of this version (UNKNOWN_BEFORE_CODE_KEYS compared)
        if revision or "hub_revision" not in state:
            state["hub_revision"] = revision
        if "hook_val_forwards" not in state:  # a checkpoint from before they were kept: known only if none ran
            state["hook_val_forwards"] = None if state.get("hook_val_s") else {}
        if "samples" in mine:  # several processes: this one's counts (the main process's state holds its own)
            state["samples"], state["tokens"] = mine["samples"], mine["tokens"]
        memory.carry(state.get("memory"))  # the steps before the checkpoint count too
        if "timed_on" not in state:  # a checkpoint from before they were kept: not known, taken as this process's
            state["timed_on"] = [timed_on]
        state["timed_on"] = [timed_facts(t) for t in state["timed_on"]]  # as compared now (a 31cdf34 one kept more)
        if timed_on not in state["timed_on"]:  # its time so far was measured elsewhere: kept, to be said
            state["timed_on"] = [*state["timed_on"], timed_on]
        resumed_from = state["step"]
        del saved, mine, rngs  # the payload (the adapter's tensors among it) is restored: not held through training

    def val_loss_on(batch: dict[str, Any], timer: str | None = "hook_val_s") -> Callable[[], float]:
        def run() -> float:  # eval mode, no gradients; the time goes to state[timer], not to train_s
            began = time.perf_counter()
            was_training = model.training
            model.eval()
            try:
                n = recipe.units(batch)
                if (
                    timer == "hook_val_s" and n and state["hook_val_forwards"] is not None
                ):  # what the FLOPs of the hooks' forwards are counted on
                    key = json.dumps([recipe.shape(batch), adapter.skipped_layers()])
                    state["hook_val_forwards"][key] = state["hook_val_forwards"].get(key, 0) + 1
                with torch.no_grad(), accelerator.autocast():
                    loss = recipe.loss_sum(model, to_device(batch, device)) if n else torch.zeros(())
                return loss.item() / max(n, 1)
            finally:  # also when the loss raises: back in training mode (dropout on), the time counted
                model.train(was_training)
                if timer:
                    state[timer] += time.perf_counter() - began

        return run

    params = adapter.trainable_parameters()  # "params updated" counts these: the method's own
    model.train()
    bar = tqdm(
        total=total_steps, initial=state["step"], desc="train", disable=not progress or not accelerator.is_main_process
    )

    def save() -> None:  # a checkpoint of where training is now (none without a checkpoint path)
        if not checkpoint:
            return
        rngs = None  # every process calls save(): each one's random state is gathered; the main process writes
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            # with each process's own counts: the record sums them, and the main process's state holds its own
            rngs = gather_object([{**_rng_state(device), "samples": state["samples"], "tokens": state["tokens"]}])
        if accelerator.is_main_process:
            state["memory"] = memory.state()
            save_checkpoint(checkpoint, adapter, optimizer, scheduler, config, state, task_params, device, rngs)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    while state["step"] < total_steps:
        step = state["step"]
        sync()  # on a GPU the clock reads after the queued kernels: each step is charged its own work
        began, hooks_before = time.perf_counter(), state["hook_val_s"]
        adapter.on_step_begin(step, val_loss_on(val_batches[step % len(val_batches)]) if val_batches else None)
        batches = [recipe.collate([encoded[i] for i in idx]) for idx in micro_batches[step]]
        units = [recipe.units(b) for b in batches]
        # token-weighted mean over the whole step, across processes too: DDP averages the processes'
        # gradients, so each divides by the global token count and multiplies by the process count
        n_supervised = int(accelerator.reduce(torch.tensor(sum(units), device=device), "sum"))
        scale = accelerator.num_processes / max(n_supervised, 1)
        active = max(1, sum(1 for n in units if n))  # a method's extra_loss: the mean over these micro-batches
        step_loss = 0.0
        for i, (batch, n) in enumerate(zip(batches, units, strict=True)):
            if n == 0 and accelerator.num_processes == 1:  # nothing to learn from; under DDP every process
                continue  # runs every micro-batch (a skipped backward would leave the others' all-reduce waiting)
            batch = to_device(batch, device)
            # under DDP the gradients are all-reduced once a step, after its last micro-batch, not after each
            with accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext():
                with accelerator.autocast():
                    loss = recipe.loss_sum(model, batch) * scale
                    if n == 0:  # (several processes) a backward through the graph that adds nothing
                        loss = loss * 0.0
                    elif (extra := adapter.extra_loss()) is not None:
                        loss = loss + extra / active
                accelerator.backward(loss)
            step_loss += loss.item() / accelerator.num_processes
            if n:
                samples, tokens = recipe.stats(batch)
                state["samples"] += samples
                state["tokens"] += tokens
            memory.sample()
        if accelerator.num_processes > 1:  # the step's loss over every process's micro-batches
            step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=device), "sum"))
        if not math.isfinite(step_loss):
            _not_finite(f"training loss is {step_loss}", step, state)
        state["params_updated"].append(sum(p.numel() for p in params if p.grad is not None))
        graded = [p for p in [*params, *task_params] if p.grad is not None]
        if config.max_grad_norm > 0:
            norm = accelerator.clip_grad_norm_(graded, config.max_grad_norm)
        else:
            # the 2-norm of every gradient, as clip_grad_norm_ computes it (get_total_norm needs torch 2.6)
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in graded])) if graded else None
        if norm is not None and not math.isfinite(float(norm)):  # a finite loss can have an inf gradient
            _not_finite(f"the gradient's norm is {float(norm)} (the loss {step_loss:.4g})", step, state)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)  # frozen heads keep grad=None: AdamW skips them
        sync()
        state["train_s"] += time.perf_counter() - began - (state["hook_val_s"] - hooks_before)
        state["step"] += 1
        # a step with nothing supervised (every answer of its examples cut away) measured no loss: null, not 0
        state["loss_curve"].append([state["step"], round(step_loss, 5) if n_supervised else None])
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{state['tokens'] / max(state['train_s'], 1e-9):.0f}")
        if (
            checkpoint
            and config.checkpoint_every
            and state["step"] % config.checkpoint_every == 0
            and state["step"] < total_steps
        ):
            save()
        if _asked(should_stop, accelerator):  # the last step too: its checkpoint spares a re-train
            _stop(save, accelerator, bar, state["step"], total_steps)
    if checkpoint and config.checkpoint_every and state["step"] > state.get("saved_step", 0):
        save()  # the finished training: a stop during the final validation or the scoring does not train again
    bar.close()
    memory.freeze()  # training's peak: the final validation below is not in it (on a GPU it was)
    final_val, began = None, time.perf_counter()
    units = [recipe.units(b) for b in val_batches]
    if sum(units):  # per unit (token, image) over the whole split, as the training loss: not a mean of batch means
        final_val = sum(val_loss_on(b, timer=None)() * n for b, n in zip(val_batches, units, strict=True) if n)
        final_val /= sum(units)
    final_val_s = time.perf_counter() - began
    if _asked(should_stop, accelerator):  # asked during the final validation
        _stop(save, accelerator, bar, state["step"], total_steps)
    # prepare() under mixed precision patched the model's forward with autocast (in place, so the caller's model
    # too): the scoring after training then ran under autocast where the zero-shot model's did not; take it off
    # (accelerate's own unwrap_model(keep_fp32_wrapper=False) also strips transformers' decorators off forward)
    inner = accelerator.unwrap_model(model)
    if (original := inner.__dict__.pop("_original_forward", None)) is not None:
        if getattr(original, "__func__", None) is type(inner).forward:
            inner.__dict__.pop("forward", None)  # the class's own forward again
        else:
            inner.forward = original
    samples, tokens = state["samples"], state["tokens"]
    if accelerator.num_processes > 1:  # every process's share, so the record holds the run's totals
        totals = accelerator.reduce(torch.tensor([samples, tokens], device=device), "sum")
        samples, tokens = int(totals[0]), int(totals[1])
    return TrainResult(
        state["step"],
        samples,
        tokens,
        state["train_s"],
        state["hook_val_s"],
        state["loss_curve"],
        state["params_updated"],
        memory.summary(),
        final_val,
        final_val_s,
        resumed_from,
        step_shapes,
        None
        if state["hook_val_forwards"] is None
        else [  # every process ran the same validation batches
            {"shape": shape, "skipped": skipped, "count": count * accelerator.num_processes}
            for (shape, skipped), count in ((json.loads(k), c) for k, c in state["hook_val_forwards"].items())
        ],
        [t for t in state["timed_on"] if t != timed_on] or None,
    )


def _first_shapes(recipe: Recipe, encoded: list[Any], micro_batches: list[list[list[int]]]) -> list[list[int]]:
    """The micro-batch shapes of the first step with anything supervised, on which the step's FLOPs are
    counted: the same whichever step a run resumes at (a run resumed at its end runs no step)."""
    for step in micro_batches:
        batches = [recipe.collate([encoded[i] for i in idx]) for idx in step]
        shapes = [recipe.shape(b) for b in batches if recipe.units(b)]
        if shapes:
            return shapes
    return []


def _asked(should_stop: Callable[[], bool] | None, accelerator) -> bool:
    """Whether to stop; with several processes, whether any was asked, so that all stop at the same step
    (one that went on into the next step's all-reduce would wait for the others forever)."""
    asked = should_stop is not None and should_stop()
    if accelerator.num_processes > 1:
        asked = bool(accelerator.reduce(torch.tensor(int(asked), device=accelerator.device), "sum"))
    return asked


def _stop(save: Callable[[], None], accelerator, bar, step: int, total_steps: int) -> NoReturn:
    """Checkpoint (every process: the main one writes), then raise ``Cancelled``: the next start resumes from here."""
    save()
    accelerator.wait_for_everyone()
    bar.close()
    raise Cancelled(f"stopped at step {step} of {total_steps}; checkpoint saved, the next start resumes")


def save_checkpoint(
    path: Path,
    adapter,
    optimizer,
    scheduler,
    config: TrainConfig,
    state: dict[str, Any],
    task_params: list[torch.nn.Parameter] | None = None,
    device: torch.device | None = None,
    process_rngs: list[dict[str, Any]] | None = None,
) -> None:
    """``process_rngs``: under several processes, each one's random state (``_rng_state``) and its samples and
    tokens so far, in process order; the top-level states are this process's."""
    state["saved_step"] = state["step"]
    payload = {
        "adapter": adapter.state_dict(),
        "task_params": [p.detach().cpu().clone() for p in task_params or []],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "hooks": adapter.training_state(),
        "config": asdict(config),
        **_rng_state(device),
        "state": state,
    }
    if process_rngs is not None:
        payload["process_rngs"] = process_rngs
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _rng_state(device: torch.device | None) -> dict[str, Any]:
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "python_rng": random.getstate(),
    }


def _not_finite(what: str, step: int, state: dict[str, Any]) -> NoReturn:
    """Stop before a step's update that would make the adapter's weights NaN (and the next checkpoint with them)."""
    saved = state.get("saved_step")
    kept = f"the last good checkpoint (step {saved}) is kept" if saved else "no checkpoint"
    raise FloatingPointError(
        f"{what} at step {step + 1}: stopped before its update; {kept}. Lower --lr or check the data"
    )


UNREADABLE = ".unreadable"  # the suffix an unreadable checkpoint is kept under (never deleted)
# errors of the machine, not of the file: raised, the checkpoint left in place (a truncated zip is EINVAL)
_MACHINE_ERRORS = {errno.EIO, errno.ENOMEM, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE, errno.ESTALE}


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's payload (tensors and plain data only: ``weights_only``), or None if it is
    unreadable: then the run starts afresh, with a message, instead of crashing; the file is kept beside it
    (``checkpoint.pt.unreadable``: a method's hook state that ``weights_only`` refuses, say, is not lost). An
    error of the machine (``MemoryError``, an I/O or permission ``OSError``) is raised as ``CheckpointUnreadable``
    (the run's record says failed and the command stops): the file may be good."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"config", "adapter", "optimizer", "state"} <= set(saved):
            raise ValueError("not a harness checkpoint")
        return saved
    except Exception as exc:  # truncated, corrupted or foreign file: any unpickling error
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _MACHINE_ERRORS):
            raise CheckpointUnreadable(
                f"could not read the checkpoint {path} ({type(exc).__name__}: {exc}); it is kept: free memory, or fix "
                "the disk or the file's permissions, then run the same command again, which resumes from it"
            ) from exc
        kept = path.with_name(path.name + UNREADABLE)
        with contextlib.suppress(FileNotFoundError):  # another process of the run set it aside first
            path.replace(kept)
        print(
            f"warning: checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); starting this run afresh "
            f"(the file is kept as {kept.name})"
        )
        return None


class _MicroBatches:
    """``[step][micro][example index]`` for this process, reshuffled each epoch from the seed: the examples in
    one order per epoch (``random.Random(seed)`` shuffling ``range(n)`` once an epoch, in turn), each step the next
    ``per_step`` of them, this process taking every world_size-th. Made as the steps are asked for, keeping two
    epochs: a list of every step made up front held ``steps x per_step`` indices (a mistyped --steps of 10**20
    took all memory before the first step, where a stop is read)."""

    def __init__(self, n: int, config: TrainConfig, accelerator, total_steps: int) -> None:
        self.n, self.total, self.seed = n, total_steps, config.seed
        self.micro = config.micro_batch_size
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.per_step = config.micro_batch_size * config.grad_accum * accelerator.num_processes
        self._rng, self._next, self._kept = random.Random(self.seed), 0, {}

    def __iter__(self) -> Iterator[list[list[int]]]:  # no __len__: a step count may exceed what len() returns
        step = 0
        while step < self.total:
            yield self[step]
            step += 1

    def _epoch(self, e: int) -> list[int]:
        if e not in self._kept:
            if e < self._next:  # an epoch already let go: the order is made again from the seed
                self._rng, self._next, self._kept = random.Random(self.seed), 0, {}
            while self._next <= e:
                order = list(range(self.n))
                self._rng.shuffle(order)
                self._kept = {k: v for k, v in self._kept.items() if k >= self._next - 1}
                self._kept[self._next] = order
                self._next += 1
        return self._kept[e]

    def __getitem__(self, step):  # noqa: ANN001, ANN204
        if isinstance(step, slice):
            return [self[i] for i in range(*step.indices(self.total))]
        if not -self.total <= step < self.total:
            raise IndexError(f"step {step} of {self.total}")
        step %= self.total
        start = step * self.per_step
        chunk = [self._epoch(p // self.n)[p % self.n] for p in range(start, start + self.per_step)]
        chunk = chunk[self.rank :: self.world]
        return [chunk[i : i + self.micro] for i in range(0, len(chunk), self.micro)]


def _micro_batches(n: int, config: TrainConfig, accelerator, total_steps: int) -> _MicroBatches:
    """``[step][micro][example index]`` for this process, reshuffled each epoch from the seed (``_MicroBatches``)."""
    return _MicroBatches(n, config, accelerator, total_steps)
