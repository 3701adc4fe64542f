"""Measured costs: FLOPs of a training step, memory, and the environment a run ran in.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a shape-only replica of the model
on the ``meta`` device, running the exact step the loop runs (the task's own loss, same batch shape, LoRA-FA's
frozen A and the Reducer's frozen heads included). That counts every matmul, attention too (on a CPU
the fused attention kernel is invisible to the counter), is the same on every machine, and costs no
compute — so the LoRA reference at the same settings is measured the same way in every run.

The adapter's share is the step's count less the count of the same step with every adapter bypassed (each
wrapper returns its base's output, made to need a gradient wherever the adapter made it need one, so the
backward reaches every module it reaches in the adapted step): what the adapters add, on either path,
whatever modules compute it. (Per-module counts cannot give it: FlopCounterMode's module tracker never sees
the backward of a module whose input needs no gradient end, such as layer 0's q/k/v, so it kept counting
theirs under each other, and the fast path makes q, k and v's first matmul once, in one autograd node for
the three, whose backward the split put partly outside the wrappers.)
"""

from __future__ import annotations

import copy
import gc
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from harness.models import MetaModel
    from harness.task import Recipe

REFERENCE_METHOD = "lora"  # FLOPs are also reported relative to this method at the same settings
PROC = "/proc/self"  # Linux's view of this process: the resident size now, and its high-water mark


def meta_replica(model: nn.Module) -> nn.Module:
    """The same architecture without weights: Hugging Face and diffusers models from their config, any other
    module (a plugin task's own) as a copy moved to ``meta`` (which holds its weights in memory while it copies)."""
    with torch.device("meta"):
        if hasattr(type(model), "_from_config") and hasattr(model, "config"):  # transformers
            return type(model)._from_config(model.config)
        if hasattr(type(model), "from_config") and hasattr(model, "config"):  # diffusers
            return type(model).from_config(model.config)
    from harness.adapter import SHARED, AdapterLinear, SharedTensors

    memo: dict[int, Any] = {}  # every weight copied as a meta tensor: nothing is allocated for them
    for t in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    replica = copy.deepcopy(model, memo)
    for name, module in list(replica.named_modules()):  # an adapter already attached: the bare model again
        if isinstance(module, AdapterLinear):
            replica.set_submodule(name, module.base)
        elif isinstance(getattr(module, SHARED, None), SharedTensors):
            delattr(module, SHARED)
    return replica.to("meta")


# The Reducer's layers a counted step trains: the first draw of a generator seeded with this, whatever the run's
# seed. Where a step's cost depends on the draw (LoRA-FA, or EffiLoRA without a trained shared A: the backward
# stops at the lowest trained layer; a UNet's layers of several widths) the count was one draw of the run's own
# random state: another number for each seed, and a sweep's later seeds took the first seed's (the count is
# cached by every setting but the seed). One draw, not the mean over a run's steps: ``reducer_layers`` says which.
# Every committed record counts the same at it (recount_flops, 2026-12-06), so the counter kept its version.
REDUCER_COUNT_SEED = 0


# a change to how this module counts must change the counter version in harness.runner.FLOPS_COUNTED_BY
def step_flops(
    replica: MetaModel,
    method: str,
    config: Any,
    shapes: list[list[int]],
    recipe: Recipe,
    fast_path: bool = False,
    adapter_share: bool = True,
) -> dict[str, Any]:
    """FLOPs of one optimizer step: forward+backward of the task's ``recipe.loss_sum`` on ``replica``
    (a fresh ``meta``-device model) with ``method`` attached to its root, once per micro-batch of the
    accumulation (``shapes``, as ``recipe.shape`` gives them), through the adapters' fast path when the run
    takes it (``fast_path``: it can compute other products, e.g. MoSLoRA's ``B·M`` once instead of ``M`` on
    every token). ``total``/``adapter`` are per optimizer step (the sum); ``micro_batches`` keeps each one.
    ``adapter_share`` False: the step only, once per micro-batch, ``adapter`` None (the second pass, with the
    adapters bypassed, is what tells their share: what a check that the step can be counted leaves out)."""
    from harness.adapter import attach

    adapter = attach(replica.root, method, config=config)
    adapter.use_fast_path(fast_path)
    replica.model.to("meta")  # a plugin may create tensors itself (on the CPU): they must not leave the replica
    drawn = None
    if adapter.reducer is not None:  # freeze the unselected heads, as in a real step: one fixed draw (below)
        drawn = adapter.reducer.select(torch.Generator().manual_seed(REDUCER_COUNT_SEED))
    micro = []
    for shape in shapes:
        needs: dict[str, list[bool]] = {}  # wrapper -> per call, whether its output needed a gradient when adapted
        total = _count(replica, recipe, shape, adapter, needs)
        base = _count(replica, recipe, shape, adapter, needs, bypass=True) if adapter_share else None
        micro.append({"shape": list(shape), "total": total, "adapter": None if base is None else total - base})
    return {
        "total": sum(m["total"] for m in micro),
        "adapter": sum(m["adapter"] for m in micro) if adapter_share else None,
        "micro_batches": micro,
    } | ({"reducer_layers": drawn} if drawn is not None else {})


def hook_forward_flops(
    replica: MetaModel,
    method: str,
    config: Any,
    forwards: list[dict[str, Any]],
    recipe: Recipe,
    fast_path: bool = False,
) -> list[int]:
    """FLOPs of one forward of each of ``forwards`` (``{"shape": ..., "skipped": [wrapper names]}``): the task's
    ``recipe.loss_sum`` at ``shape`` in eval mode without gradients, the adapters of ``skipped`` off (gate 0),
    as the training loop runs the validation calls of a method's hooks (the Reducer's scoring rollouts; a layer
    suppressed to a scale above 0 computes as much as any other)."""
    from harness.adapter import attach

    adapter = attach(replica.root, method, config=config)
    adapter.use_fast_path(fast_path)
    replica.model.to("meta")
    replica.model.eval()
    out = []
    for forward in forwards:
        off = [adapter.layers[name] for name in forward["skipped"]]
        gates = [layer.gate for layer in off]
        try:
            for layer in off:
                layer.gate = 0.0
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                recipe.loss_sum(replica.model, recipe.meta_batch(list(forward["shape"])))
        finally:
            for layer, gate in zip(off, gates, strict=True):
                layer.gate = gate
        out.append(int(counter.get_total_flops()))
    return out


def _count(
    replica: MetaModel,
    recipe: Recipe,
    shape: list[int],
    adapter: Any,
    needs: dict[str, list[bool]],
    bypass: bool = False,
) -> int:
    """FLOPs of one forward+backward of ``recipe.loss_sum``. Adapted (``bypass`` False): records in ``needs``
    whether each wrapper's output needed a gradient, call by call. Bypassed: each wrapper returns its base's
    output, plus a zero that needs a gradient where its adapted call's output did (an addition, which
    FlopCounterMode does not count), so that the backward reaches every module below it as in the adapted
    step; the base's own backward then runs exactly as there (it depends on its input only)."""
    hooks, own, made = [], {}, {}
    for name, layer in adapter.layers.items():
        if bypass:
            own[name] = layer.__dict__.get("forward")  # an instance's own forward (a plugin's): put back after
            made[name] = []
            layer.forward = _bypass(layer, iter(needs.get(name, [])), made[name])
        else:
            hooks.append(layer.register_forward_hook(lambda m, i, out, name=name: _record(needs, name, out)))
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            loss = recipe.loss_sum(replica.model, recipe.meta_batch(shape))
            extra = None if bypass else adapter.extra_loss()  # a method's own term (the loop adds it too)
            (loss if extra is None else loss + extra).backward()
    finally:
        for h in hooks:
            h.remove()
        for name, forward in own.items():
            layer = adapter.layers[name]
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    if bypass and (odd := [n for n, calls in made.items() if len(calls) != len(needs.get(n, []))]):
        raise RuntimeError(
            f"{odd[0]} was called {len(needs.get(odd[0], []))} times in the step and {len(made[odd[0]])} times with "
            "the adapters bypassed: the step is not the same twice, so the adapters' share cannot be told apart"
        )
    return int(counter.get_total_flops())


def _record(needs: dict[str, list[bool]], name: str, out: Any) -> None:
    needs.setdefault(name, []).append(isinstance(out, torch.Tensor) and out.requires_grad)


def _bypass(layer: nn.Module, calls: Any, made: list[int]) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        made.append(1)
        y = layer.base(x)
        if not next(calls, False) or y.requires_grad:
            return y
        return y + torch.zeros((), device=y.device, dtype=y.dtype, requires_grad=True)

    return forward


class MemoryMeter:
    """Peak and mean memory during training: CUDA allocated/reserved above the starting baseline, or
    the process's resident set size (RSS) on a CPU; where the resident size now cannot be read (no ``/proc``:
    macOS), only the process's lifetime peak, kind ``process_maxrss_lifetime``, without a mean."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.samples: list[tuple[float, float]] = []
        # a CPU's peak: the kernel's high-water mark of the resident size, reset here (Linux); else samples. Freed
        # memory that malloc kept (harness.memory: an earlier run's in this process) is handed back first, so
        # that the peak does not hold it (a run's peak depended on what ran before it)
        if not self.cuda:
            from harness.memory import release_freed_memory

            release_freed_memory()
        self.lifetime = not self.cuda and not _reads_rss()  # then _rss_bytes() is the lifetime peak
        self.start_rss = 0.0 if self.cuda else _rss_bytes()
        self.hwm = not self.cuda and _reset_peak_rss()
        if self.cuda:
            # what an earlier run in this process freed goes back first: its blocks, kept in the caching allocator,
            # would be in the baseline, and this run reusing them would read as reserving nothing above it
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = (torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))
        self.device = device
        self.before: dict[str, Any] = {"samples": [], "peaks": [0.0, 0.0]}  # a resumed run's earlier steps
        self.frozen: list[float] | None = None  # the peaks when training ended (``freeze``)

    def carry(self, saved: dict[str, Any] | None) -> None:
        """Continue from ``state()`` saved in a checkpoint: the summary then covers every step of the run."""
        if saved:
            self.before = {"samples": [tuple(x) for x in saved["samples"]], "peaks": list(saved["peaks"])}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, for ``carry`` after a resume."""
        return {"samples": self.before["samples"] + self.samples, "peaks": self._peaks()}

    def freeze(self) -> None:
        """Keep the peaks as they are at the end of training: what runs after it (the final validation, at its own
        batch size) is not training's. A CPU's peaks are read in ``sample`` only, in the loop; a GPU's allocator
        counts whatever ran since the baseline, so without this its peak held the final validation's."""
        self.frozen = self._peaks()

    def _peaks(self) -> list[float]:
        if self.frozen is not None:
            return list(self.frozen)
        if self.cuda:
            now = [
                torch.cuda.max_memory_allocated(self.device) - self.base[0],
                torch.cuda.max_memory_reserved(self.device) - self.base[1],
            ]
        else:
            now = [max((a for a, _ in self.samples), default=0.0)] * 2
        return [max(a, b) for a, b in zip(self.before["peaks"], now, strict=True)]

    def sample(self) -> None:
        if self.cuda:
            self.samples.append(
                (
                    torch.cuda.memory_allocated(self.device) - self.base[0],
                    torch.cuda.memory_reserved(self.device) - self.base[1],
                )
            )
        else:  # (peak so far, now): the peak catches what the step allocated and freed before this sample
            rss = _rss_bytes()
            self.samples.append((max(_peak_rss_bytes(), rss) if self.hwm else rss, rss))

    def summary(self) -> dict[str, Any]:
        gb = 1024**3
        samples, peaks = self.before["samples"] + self.samples, self._peaks()
        if self.cuda:
            return {
                "kind": "cuda_minus_baseline",
                "peak_allocated_gb": peaks[0] / gb,
                "peak_reserved_gb": peaks[1] / gb,
                "mean_allocated_gb": _mean([a for a, _ in samples]) / gb,
                "mean_reserved_gb": _mean([r for _, r in samples]) / gb,
            }
        if self.lifetime:  # the process's peak since it started (an earlier run's, the model load's): no mean
            return {
                "kind": "process_maxrss_lifetime",
                "peak_rss_gb": peaks[0] / gb,
                "start_rss_gb": self.start_rss / gb,  # the lifetime peak when training began
            }
        kind = "process_rss_hwm" if self.hwm else "process_rss"  # the high-water mark, or samples after a backward
        return {
            "kind": kind,
            "peak_rss_gb": peaks[0] / gb,
            "mean_rss_gb": _mean([r for _, r in samples]) / gb,
            "start_rss_gb": self.start_rss / gb,  # the process's resident size when training began (model, data)
        }


def _reads_rss() -> bool:
    """Whether the resident size now can be read (``/proc/self/statm``, Linux); else ``_rss_bytes`` is the peak."""
    return os.path.isfile(f"{PROC}/statm")


def _rss_bytes() -> float:
    try:
        with open(f"{PROC}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the lifetime peak is the best we can read
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident size (Linux ``clear_refs`` 5: ``VmHWM`` starts again from now); False
    where it cannot be (another OS, a kernel that refuses)."""
    try:
        with open(f"{PROC}/clear_refs", "w") as f:
            f.write("5")
        return _peak_rss_bytes() > 0
    except OSError:
        return False


def _peak_rss_bytes() -> float:
    """``VmHWM`` of /proc/self/status: the most resident memory since the last reset (0 where not read)."""
    try:
        with open(f"{PROC}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def environment() -> dict[str, Any]:
    import transformers

    from harness.memory import malloc_setting

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "diffusers": _installed("diffusers"),  # it makes every diffusion image; None: not installed
        "device": torch.cuda.get_device_name(0) if cuda else _cpu_name(),
        "device_type": "cuda" if cuda else "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "malloc": malloc_setting(),  # None: the C allocator's defaults (harness.memory)
    }


def _installed(package: str) -> str | None:
    """``package``'s installed version, read from its metadata (no import: diffusers takes seconds); None if absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
