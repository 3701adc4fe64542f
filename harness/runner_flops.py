"""What a run's record says of its training (``_train_record``): the FLOPs of its optimizer step, the adapters'
share and LoRA's at the same settings (``flops_record``), and of its hooks' validation forwards
(``hook_flops_record``), each counted once per process. Part of ``harness.runner``, which re-exports what others
import."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

from harness.accounting import REFERENCE_METHOD, hook_forward_flops, step_flops
from harness.adapter_model import rank_unchecked
from harness.atomic import save_torch
from harness.registry import METHODS
from harness.runner_spec import RunSpec
from harness.task import Loaded, Recipe, Task

# what every record's flops_per_step.counted_by says: change the version with any change to how FLOPs are
# counted (harness.accounting), so that `harness leaderboard` flags sections that mix counts of two versions
FLOPS_COUNTED_BY = (
    "torch.utils.flop_counter.FlopCounterMode, meta-device replica; adapter: the step less the step with every "
    "adapter bypassed (counter version 2, 2026-12-04)"
)


# the FLOP counts this process has made: a sweep counts LoRA's reference step at the same settings for every
# method and seed, and each seed's run of a method the same step again (seconds each on the meta device; a
# UNet's thousands of small ops most). A count is a function of what its key holds, and of nothing else: the
# run's settings but its seed and method (``flops_settings``), the method's class and config, the shapes, the
# path, and the code that counts (the counter, the task's replica and recipe); any of them new is a new count
_FLOPS_COUNTED: dict[tuple[Any, ...], dict[str, Any]] = {}


def flops_settings(spec: RunSpec, loaded: Loaded) -> tuple[Any, ...]:
    """What a run's FLOP counts depend on besides the method and the step's shapes: its settings except the seed
    and the method (the model, task options, training settings, path), and the loaded model's parameters'
    names, shapes and dtypes (a folder whose model changed within the process counts afresh); taken before an
    adapter attaches."""
    settings = spec.to_dict()
    for name in ("seed", "method", "method_options"):
        settings.pop(name)
    for part in ("train", "task_options"):  # the seed again, as those settings carry it (from a review: every
        settings.get(part, {}).pop("seed", None)  # seed was counted afresh, as the comment above says it is not)
    parameters = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in loaded.model.named_parameters())
    return json.dumps(settings, sort_keys=True, default=str), type(loaded.model), parameters


def _count_flops(
    task: Task,
    loaded: Loaded,
    method: str,
    config: Any,
    shapes: list[list[int]],
    recipe: Recipe,
    fast_path: bool,
    settings: tuple[Any, ...] | None = None,
    adapter_share: bool = True,
) -> dict[str, Any]:
    """``step_flops`` of the run, or why it could not be counted; with ``settings`` (``flops_settings``), a count
    this process made before at the same key is taken again (a failure is counted again, and says so again)."""
    key = None
    if settings is not None:
        code = (step_flops, type(task), type(task).meta_replica, type(recipe), METHODS.get(method))
        key = (settings, code, repr(config), tuple(tuple(s) for s in shapes), fast_path, adapter_share)
        if key in _FLOPS_COUNTED:
            return copy.deepcopy(_FLOPS_COUNTED[key])
    try:
        replica = task.meta_replica(loaded)
        counted = step_flops(replica, method, config, shapes, recipe, fast_path, adapter_share=adapter_share)
        if key is not None:
            _FLOPS_COUNTED[key] = copy.deepcopy(counted)
        return counted
    except Exception as exc:  # a plugin the meta replica cannot run: recorded as not counted
        reason = f"{type(exc).__name__}: {exc}"
        print(
            f"warning: {method}'s FLOPs not counted ({_clip(reason)}): the model or the method cannot run on the meta "
            "device (a task overrides Task.meta_replica; a method keeps to tensor ops, no .item() or numpy)"
            f"{_meta_mask_hint(exc)}",
            file=sys.stderr,
        )
        return {"status": "not counted", "reason": reason}


def _meta_mask_hint(exc: BaseException) -> str:
    """Where ``exc`` is a value read on ``meta`` by transformers' causal-mask code (``_ignore_causal_mask_sdpa`` asks
    whether the attention_mask is all ones, and, without a KV cache, whether the position offset is 0), what the task
    does about it; else "". From a review: a plugin task that passed its batch's mask was told only that a method
    must not call .item(). Tried with transformers 5.25 on the tiny Llama: with a mask the call fails with a cache or
    without; without one, it runs with a cache only."""
    if "cannot be called on meta tensors" not in str(exc):
        return ""
    frames = traceback.extract_tb(exc.__traceback__)
    if not any("transformers" in f.filename and "mask" in f"{Path(f.filename).name} {f.name}" for f in frames):
        return ""
    return (
        "; here transformers' causal-mask check read a value on the meta device (of an attention_mask the model was "
        "given, or, without a KV cache, its position offset): call it there without the mask and with use_cache=True, "
        "as tasks/lm.py does (a mask adds no FLOPs)"
    )


def flops_record(
    task: Task,
    loaded: Loaded,
    method: str,
    config: Any,
    shapes: list[list[int]],
    recipe: Recipe,
    fast: bool,
    settings: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """A record's ``train.flops_per_step``: one optimizer step of ``method`` at ``shapes`` (every micro-batch),
    the adapters' share of it, and LoRA's total at the same settings; or why it could not be counted, with the
    shapes (``micro_batches`` without counts) that ``recount_flops`` counts once it can. ``settings``: as
    ``_count_flops`` takes them (a recount leaves them out: it counts afresh)."""
    flops = _count_flops(task, loaded, method, config, shapes, recipe, fast, settings)
    if "status" in flops:  # the shapes kept, uncounted: recount_flops counts them once the replica can run
        return flops | {"micro_batches": [{"shape": list(s)} for s in shapes]}
    reference = METHODS.get(REFERENCE_METHOD).config_cls(**_common(config))
    # the run's own count is LoRA's only without a Reducer: the reference never has one (``_common``), and a
    # reduced LoRA's step (unselected layers frozen) is not the plain LoRA step it is compared with
    own = method == REFERENCE_METHOD and getattr(config, "reducer", None) is None
    if own:
        lora = flops
    else:  # what LoRA would cost at these settings: at an r above a target's smaller side too (a method whose r is
        with rank_unchecked():  # no rank trains at one), which attach refuses LoRA for training (from a review)
            lora = _count_flops(task, loaded, REFERENCE_METHOD, reference, shapes, recipe, fast, settings)
    extra = {"path": "fast"} if fast else {}
    if "reducer_layers" in flops:  # the Reducer's layers the count trained
        extra["reducer_layers"] = flops["reducer_layers"]
    return {
        "unit": "optimizer step: every micro-batch of the accumulation (first step's shapes)",
        "total": flops["total"],
        "adapter": flops["adapter"],
        "lora_total": lora.get("total"),
        "relative_to_lora": flops["total"] / lora["total"] if lora.get("total") else None,
        "micro_batches": flops["micro_batches"],
        "counted_by": FLOPS_COUNTED_BY,
    } | extra


def hook_flops_record(
    task: Task,
    loaded: Loaded,
    method: str,
    config: Any,
    forwards: list[dict[str, Any]] | None,
    recipe: Recipe,
    fast: bool,
    steps: int,
) -> dict[str, Any]:
    """A record's ``train.hook_val_flops``: the FLOPs of the validation forwards the method's hooks ran over the
    whole run (the Reducer's scoring rollouts), which ``flops_per_step`` leaves out: ``total``, ``per_step``
    (over the run's optimizer steps) and each batch shape's ``count`` and ``flops`` (one forward); or why
    they could not be counted (with the forwards, uncounted, where they are known)."""
    if forwards is None:
        return {"status": "not counted", "reason": "resumed from a checkpoint written before these forwards were kept"}
    counted: list[int] = []
    if forwards:
        try:
            counted = hook_forward_flops(task.meta_replica(loaded), method, config, forwards, recipe, fast)
        except Exception as exc:  # a plugin the meta replica cannot run, as for flops_per_step; the forwards are
            # kept, so that recount_flops can count them once it can
            return {"status": "not counted", "reason": f"{type(exc).__name__}: {exc}", "shapes": forwards}
    total = sum(f["count"] * n for f, n in zip(forwards, counted, strict=True))
    return {
        "unit": "the whole run: every validation forward of the method's hooks (the Reducer's scoring rounds)",
        "total": total,
        "per_step": total / steps if steps else 0.0,
        "forwards": sum(f["count"] for f in forwards),
        "shapes": [{**f, "flops": n} for f, n in zip(forwards, counted, strict=True)],
        "counted_by": FLOPS_COUNTED_BY,
    } | ({"path": "fast"} if fast else {})


def _train_record(
    spec: RunSpec,
    adapter,
    result,
    run_dir: Path,
    probe: dict[str, Any],
    task: Task,
    loaded: Loaded,
    recipe: Recipe,
    settings: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """What training measured; saved adapter first, so nothing after it can lose the trained weights."""
    adapter_dir = adapter.save(run_dir / "adapter")
    if loaded.task_params:  # the task's own trained tensors (e.g. the projector), beside the adapter
        save_torch(adapter_dir / "task_params.pt", [p.detach().cpu() for p in loaded.task_params])
    fast = bool(spec.extra.get("fast_path"))  # counted on the path the run took, lora's too
    if "status" in probe:  # the probe could not count it: the step's shapes kept uncounted, for recount_flops
        flops = probe | {"micro_batches": [{"shape": list(s)} for s in result.first_step_shapes]}
    else:
        flops = flops_record(
            task, loaded, spec.method, adapter.config, result.first_step_shapes, recipe, fast, settings
        )
    hooks = hook_flops_record(
        task, loaded, spec.method, adapter.config, result.hook_val_forwards, recipe, fast, result.steps
    )
    updated = result.params_updated
    adapter_ids = {id(p) for p in adapter.adapter_parameters()}
    base_params = sum(p.numel() for p in dict.fromkeys(loaded.model.parameters()) if id(p) not in adapter_ids)
    return {
        "steps": result.steps,
        "samples": result.samples,
        "tokens": result.tokens,
        "train_s": round(result.train_s, 3),
        "hook_val_s": round(result.hook_val_s, 3),
        "final_val_s": round(result.final_val_s, 3),
        "tokens_per_s": round(result.tokens / max(result.train_s, 1e-9), 2),
        "throughput_unit": task.throughput_unit,  # what "tokens" counts (images, for the diffusion task)
        "memory": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.memory.items()},
        "trainable_params": adapter.num_trainable_params,
        "base_params": base_params,  # the whole model (a multimodal one: vision and projector too)
        "task_trained_params": sum(p.numel() for p in loaded.task_params),  # not the method's: apart
        "percent_trainable": 100.0 * adapter.num_trainable_params / base_params,
        "params_updated_per_step": {
            "mean": sum(updated) / len(updated) if updated else 0,
            "min": min(updated, default=0),
            "max": max(updated, default=0),
        },
        "adapter_file_bytes": adapter.file_size_bytes(adapter_dir),
        "flops_per_step": flops,
        "hook_val_flops": hooks,
        "loss_curve": result.loss_curve,
        # JSON has no NaN: a validation loss that is not finite is null, with what it was beside it
        "final_val_loss": _finite(result.final_val_loss),
        **(
            {"final_val_loss_not_finite": str(v)}
            if (v := result.final_val_loss) is not None and _finite(v) is None
            else {}
        ),
        "resumed_from_step": result.resumed_from,
        # resumed on another device, CPU thread count or malloc setting than its earlier steps ran under (the facts
        # of each, ``harness.train.TIMED_ON_KEYS``): its times are theirs together, named by ``env`` (this one's),
        # so the leaderboard pools none of them; absent where every step ran here
        **({"timed_on_before_resume": t} if (t := result.timed_on_before_resume) else {}),
        # resumed by other harness code (commit, dirty flag, version) than the record's run names: what its earlier
        # steps ran, each as ``harness.records.harness_code`` gives it; absent where every step ran this code
        **({"code_before_resume": c} if (c := result.code_before_resume) else {}),
        "adapter": adapter.summary(),
    }


def _clip(reason: str, limit: int = 200) -> str:
    """``reason`` cut at the last word's end within ``limit`` characters, " ..." marking the cut; whole where no
    word ends within it. Never within a word or number (from a review: "use r <= 16" was printed "use r <= 1")."""
    head = reason[: limit + 1].rsplit(" ", 1)[0]
    return reason if len(reason) <= limit or head == reason[: limit + 1] else head.rstrip(" ,;:(") + " ..."


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def _common(config: Any) -> dict[str, Any]:
    """The options every method shares, to build the LoRA reference at the same settings."""
    from harness.config import AdapterConfig

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(AdapterConfig) if f.name != "reducer"}
