"""The training loop, top to bottom: encode, batch, step, validate, checkpoint, resume.

Suite behaviour enters only through the task's ``Recipe`` (encode, collate, summed loss), method
behaviour only through the adapter's hooks (``param_groups``, ``on_step_begin``, ``extra_loss``, ``on_step_end``).
Device placement and mixed precision go through accelerate, so ``accelerate launch`` runs this same
code on several GPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from tqdm.auto import tqdm

from harness.accounting import MemoryMeter, environment
from harness.records import harness_code
from harness.task import Example, Recipe, to_device
from harness.train_checkpoint import (
    CHECKPOINT,
    LATER_CODE_KEYS,
    UNKNOWN_BEFORE_CODE_KEYS,
    _read_checkpoint,
    _rng_state,
    adapter_settings,
    check_adapter,
    check_model,
    describe_code,
    save_checkpoint,
    timed_facts,
)
from harness.train_checkpoint import TIMED_ON_KEYS as TIMED_ON_KEYS
from harness.train_checkpoint import UNREADABLE as UNREADABLE
from harness.train_checkpoint import CheckpointUnreadable as CheckpointUnreadable
from harness.train_schedule import (
    MAX_STEP_EXAMPLES,
    _first_shapes,
    _micro_batches,
    _warn_schedule,
    adamw,
    check_counts,
    encode_all,
    epoch_steps,
    lr_lambda,
)


class Cancelled(BaseException):
    """Training stopped on request (SIGTERM) after a checkpoint was saved; the next start resumes. A
    ``BaseException``, as ``KeyboardInterrupt`` is: a SIGTERM outside the training loop (counting FLOPs,
    loading, scoring) raises it wherever the program is, and an ``except Exception`` there (which records
    what it could not do and goes on) must not swallow it."""


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
        if (per_step := self.micro_batch_size * self.grad_accum) > MAX_STEP_EXAMPLES:  # before any list is built
            raise ValueError(
                f"micro_batch_size x grad_accum (--micro-batch-size x --grad-accum) is {self.micro_batch_size} x "
                f"{self.grad_accum} = {per_step} examples a step, over the {MAX_STEP_EXAMPLES} a step takes at most; "
                "give smaller values (a batch of 16 is the presets' largest), and --steps or --epochs to train longer"
            )
        if not all(math.isfinite(v) and v > 0 for v in (self.epochs, self.lr)):  # NaN passes `<= 0` checks
            raise ValueError(f"epochs and lr must be finite numbers > 0 (got {self.epochs}, {self.lr})")
        for name in ("weight_decay", "max_grad_norm"):  # NaN or < 0: clipping off unsaid, or weights made NaN
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (got {getattr(self, name)}; 0: none)")
        for name in ("warmup_steps", "checkpoint_every"):  # the setting that is wrong, named with its value
            if getattr(self, name) < 0:
                raise ValueError(f"warmup_steps and checkpoint_every must be >= 0 (got {name}={getattr(self, name)})")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r} is not valid; choose one of: linear, cosine, constant")


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
    # a run resumed by other harness code than this process's (another commit, dirty flag or version: the record's
    # ``run`` names this one's): the ``harness_code`` of its earlier sessions that differ, in order; None: all this
    code_before_resume: list[dict[str, Any]] | None = None


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
    unit: str = "tokens",
) -> TrainResult:
    """Train ``adapter`` on ``train_set``. ``should_stop`` is polled after every optimizer step and after the
    final validation: when it says so, a checkpoint is written and ``Cancelled`` raised. A loss that is not
    finite raises ``FloatingPointError`` naming the step, before that step's update (the last checkpoint stays).
    ``data``: what the training files are (``{file: sha256}``, ``Task.training_files``): kept in a checkpoint, and
    a checkpoint written on other files is refused instead of resumed on these. ``code``: what the run id leaves
    out of the code (``{"task_version": ..., "plugin ...": sha or version}``), checked on resume the same way.
    ``weights``: the digest of the model's weights (``harness.identity``), where they are known: a checkpoint written
    on other weights (a model folder's files replaced, another embedded GGUF) is refused instead of resumed on these.
    ``revision``: the commit a hub id's model was loaded at (``harness.hub.hub_revision``; it has no ``weights``):
    a checkpoint written at another commit is refused the same way. ``env``: this process's ``environment()`` (the
    record's; None: read here), whose ``TIMED_ON_KEYS`` a checkpoint keeps: a run resumed where they differ is not
    refused (its device type and precision are checked), but says where its earlier steps ran
    (``TrainResult.timed_on_before_resume``): its times and peaks are the sessions' together. A checkpoint written by
    another method, or with other options of it (the adapter's config), is refused; one written by other harness code
    (``harness.records.harness_code``: its commit, dirty flag, version) is resumed with a warning, and says what its
    earlier steps ran (``TrainResult.code_before_resume``). ``unit``: what the recipe's ``stats`` count as
    tokens (the task's ``throughput_unit``), named in the bar's rate."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    task_params = list(task_params or [])
    # DDP must be told where a step may leave a trained tensor without a gradient: the Reducer's paused heads, and
    # a task's own parameters that a micro-batch may not reach (LLaVA's projector on a text-only example)
    unused = adapter.pauses_parameters or bool(task_params)
    # cpu=: without CUDA the run trains where the runner put the model and the record says it ran (the CPU);
    # accelerate's default is the platform's accelerator (Apple's MPS, XPU), where prepare() moved it (a review)
    with _one_process_env():
        accelerator = accelerator or Accelerator(
            mixed_precision="bf16" if torch.cuda.is_available() else "no",
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
        )
    # each process its own stream (dropout masks, diffusion noise): the same seed gave every process the same draws
    # on its own examples; one process (the main one, index 0) draws what a single-process run does
    seed = process_seed(config.seed, accelerator.process_index)
    torch.manual_seed(seed)
    random.seed(seed)
    say = accelerator.is_main_process
    encoded = encode_all(recipe, train_set, "training", config.cutoff_len, say)
    # the validation loss and the Reducer's scores leave out what was cut (a review: not counted, unlike training's)
    val_encoded = encode_all(recipe, val_set, "validation", config.cutoff_len, say)
    if not encoded:
        raise ValueError("no training examples")

    # One deterministic order of micro-batches per epoch; this process takes every world_size-th.
    per_step = config.micro_batch_size * config.grad_accum * accelerator.num_processes
    total_steps = config.steps or epoch_steps(config.epochs, len(encoded), per_step)
    if accelerator.is_main_process:
        _warn_schedule(config, total_steps, len(encoded), per_step)
    micro_batches = _micro_batches(len(encoded), config, accelerator, total_steps)
    val_batches = [
        recipe.collate(val_encoded[i : i + config.val_batch_size])
        for i in range(0, len(val_encoded), config.val_batch_size)
    ]
    # the hooks' (the Reducer's) batches: those with something supervised (from a review: a batch whose answers were
    # all cut scored every layer at a loss of 0.0); none: as no validation split, which the importance Reducer refuses
    val_units = [recipe.units(b) for b in val_batches]
    hook_batches = [b for b, n in zip(val_batches, val_units, strict=True) if n]

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
    code_now = harness_code()  # what this process's steps run: the record's run names it

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
        # every session's harness code (commit, dirty flag, version) that trained into this state, in order: the
        # record's run names the last one's, so a run resumed by other code says what its earlier steps ran
        "harness_code": [code_now],
    }
    if total_steps and (first := micro_batches[0]) and first[0]:
        check_counts(recipe, recipe.collate([encoded[i] for i in first[0]]))
    # the FLOPs are counted on the first step with something supervised: with several processes, the first where any
    # process has (the earliest of each one's first), every process's micro-batches of it gathered. From a review:
    # step 0's were gathered, none where its answers were all cut (FLOPs 0), where one process counts the next step's
    first_step = next((k for k, idx in enumerate(micro_batches) if _first_shapes(recipe, encoded, [idx])), total_steps)
    if accelerator.num_processes > 1:
        first_step = int(accelerator.gather(torch.tensor([first_step], device=accelerator.device)).min())
    step_shapes = _first_shapes(recipe, encoded, [micro_batches[first_step]]) if first_step < total_steps else []
    if accelerator.num_processes > 1:  # the optimizer step is every process's micro-batches
        from accelerate.utils import gather_object

        step_shapes = gather_object(step_shapes)
    # a run with nothing to learn from (every answer cut away by cutoff_len) would step an adapter on no gradient
    # and record a loss of 0 a step: refused before it starts
    if first_step == total_steps:
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
        check_adapter(checkpoint, saved.get("adapter_settings"), adapter_settings(adapter))  # none: from before
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
        check_model(checkpoint, saved["state"], weights, revision)
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
        if "harness_code" not in state:  # a checkpoint from before it was kept: not known, taken as this process's
            state["harness_code"] = [code_now]
        if code_now not in state["harness_code"]:  # its steps so far ran other harness code: kept, to be said
            state["harness_code"] = [*state["harness_code"], code_now]
        if say and (earlier := [c for c in state["harness_code"] if c != code_now]):
            print(
                f"warning: {checkpoint} was written by other harness code "
                f"({'; '.join(describe_code(c) for c in earlier)}) than this ({describe_code(code_now)}): its steps so "
                "far ran that, which the record names (train.code_before_resume); use --force to train it again with "
                "this code alone"
            )
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
        # every process's, not the writer's only: a loss that is not finite then names the kept checkpoint on each
        state["saved_step"] = state["step"]
        if accelerator.is_main_process:
            state["memory"] = memory.state()
            save_checkpoint(checkpoint, adapter, optimizer, scheduler, config, state, task_params, device, rngs)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    while state["step"] < total_steps:
        step = state["step"]
        sync()  # on a GPU the clock reads after the queued kernels: each step is charged its own work
        began, hooks_before = time.perf_counter(), state["hook_val_s"]
        adapter.on_step_begin(step, val_loss_on(hook_batches[step % len(hook_batches)]) if hook_batches else None)
        batches = [recipe.collate([encoded[i] for i in idx]) for idx in micro_batches[step]]
        units = [recipe.units(b) for b in batches]
        # token-weighted mean over the whole step, across processes too: DDP averages the processes'
        # gradients, so each divides by the global token count and multiplies by the process count
        n_supervised = int(accelerator.reduce(torch.tensor(sum(units), device=device), "sum"))
        scale = accelerator.num_processes / max(n_supervised, 1)
        active = max(1, sum(1 for n in units if n))  # a method's extra_loss: the mean over these micro-batches
        step_loss = 0.0
        for i, (batch, n) in enumerate(zip(batches, units, strict=True)):
            # nothing to learn from; under DDP every process runs every micro-batch of a step where any has something
            # (a skipped backward would leave the others' all-reduce waiting), and none of a step where none has: no
            # gradient, so that optimizer.step() updates nothing, as with one process (from a review: each backward
            # of `loss * 0.0` made zeros, and AdamW stepped on them: its step count, the weight decay)
            if n == 0 and (accelerator.num_processes == 1 or not n_supervised):
                continue
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
                state["samples"] += int(samples)  # a numpy int too: the record is JSON
                state["tokens"] += int(tokens)
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
        # the Reducer counts the layers the step moved (none without a supervised token: no gradient); n_supervised
        # is every process's, so each process counts the same
        adapter.on_step_end(bool(n_supervised))
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)  # frozen heads keep grad=None: AdamW skips them
        sync()
        state["train_s"] += time.perf_counter() - began - (state["hook_val_s"] - hooks_before)
        state["step"] += 1
        # a step with nothing supervised (every answer of its examples cut away) measured no loss: null, not 0
        state["loss_curve"].append([state["step"], round(step_loss, 5) if n_supervised else None])
        bar.update(1)
        # per second of what the recipe counts (``unit``: the task's throughput_unit; a review: a diffusion run's
        # images were shown as tok_s)
        rate = f"{state['tokens'] / max(state['train_s'], 1e-9):.0f}"
        bar.set_postfix({"loss": f"{step_loss:.3f}", "tok_s" if unit == "tokens" else f"{unit}_s": rate})
        if (
            checkpoint
            and config.checkpoint_every
            and state["step"] % config.checkpoint_every == 0
            and state["step"] < total_steps
        ):
            save()
        if _asked(should_stop, accelerator):  # the last step too: its checkpoint spares a re-train
            _stop(save, accelerator, bar, state["step"], total_steps, bool(checkpoint))
    if checkpoint and config.checkpoint_every and state["step"] > state.get("saved_step", 0):
        save()  # the finished training: a stop during the final validation or the scoring does not train again
    bar.close()
    memory.freeze()  # training's peak: the final validation below is not in it (on a GPU it was)
    final_val, began = None, time.perf_counter()
    if sum(val_units):  # per unit (token, image) over the whole split, as the training loss: not a mean of batch means
        final_val = sum(val_loss_on(b, timer=None)() * n for b, n in zip(val_batches, val_units, strict=True) if n)
        final_val /= sum(val_units)
    final_val_s = time.perf_counter() - began
    if _asked(should_stop, accelerator):  # asked during the final validation
        _stop(save, accelerator, bar, state["step"], total_steps, bool(checkpoint))
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
        [c for c in state["harness_code"] if c != code_now] or None,
    )


@contextlib.contextmanager
def _one_process_env() -> Iterator[None]:
    """Without CUDA and with one process, ``LOCAL_RANK`` hidden while the Accelerator is made: with ``cpu=True``
    accelerate takes it alone for several CPU processes (a re-review: ``torchrun --nproc_per_node 1`` trained through
    a gloo group and DDP, and a LOCAL_RANK inherited without MASTER_ADDR failed), where the runner saw one process."""
    hide = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "LOCAL_RANK" in os.environ
    rank = os.environ.pop("LOCAL_RANK") if hide else None
    try:
        yield
    finally:
        if rank is not None:
            os.environ["LOCAL_RANK"] = rank


def process_seed(seed: int, index: int) -> int:
    """The seed of process ``index`` of a run seeded ``seed``: ``seed`` itself for the main process (index 0: a
    single-process run's draws), a hash of the pair for the others. From a review: ``seed + index`` gave process 1 of
    seed s the stream of process 0 of seed s + 1 (``--seeds 0,1``: the same noise for halves of two runs)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: within what torch.manual_seed and random.seed take


def _asked(should_stop: Callable[[], bool] | None, accelerator) -> bool:
    """Whether to stop; with several processes, whether any was asked, so that all stop at the same step
    (one that went on into the next step's all-reduce would wait for the others forever)."""
    asked = should_stop is not None and should_stop()
    if accelerator.num_processes > 1:
        asked = bool(accelerator.reduce(torch.tensor(int(asked), device=accelerator.device), "sum"))
    return asked


def _stop(save: Callable[[], None], accelerator, bar, step: int, total_steps: int, saves: bool = True) -> NoReturn:
    """Checkpoint (every process: the main one writes), then raise ``Cancelled``: the next start resumes from here;
    ``saves``: whether there is a checkpoint path (the Python API's ``train`` without ``run_dir`` has none)."""
    save()
    accelerator.wait_for_everyone()
    bar.close()
    kept = "checkpoint saved, the next start resumes" if saves else "no checkpoint (no run_dir): nothing was saved"
    raise Cancelled(f"stopped at step {step} of {total_steps}; {kept}")


def _not_finite(what: str, step: int, state: dict[str, Any]) -> NoReturn:
    """Stop before a step's update that would make the adapter's weights NaN (and the next checkpoint with them)."""
    saved = state.get("saved_step")
    kept = f"the last good checkpoint (step {saved}) is kept" if saved else "no checkpoint"
    raise FloatingPointError(
        f"{what} at step {step + 1}: stopped before its update; {kept}. Lower --lr or check the data"
    )
