"""What a ``harness bench`` contender's step costs besides its time: FLOPs counted on a meta-device replica
(as run records count them), peak memory of one step, and the trainable tensors' and optimizer's state."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from harness.bench import BenchConfig, Contender


def flops(c: Contender, model: nn.Module, config: BenchConfig) -> tuple[float | None, float | None]:
    """(step, Reducer rounds per step) FLOPs on a meta-device replica, as run records count them (the fused
    CPU attention kernel is invisible to a count on real tensors); ``None`` where a plugin cannot run on
    the meta device — no count rather than a wrong one."""
    from harness.accounting import REDUCER_COUNT_SEED, meta_replica
    from harness.adapter import attach

    try:
        replica = meta_replica(model).requires_grad_(False)
        if c.source == "ours":
            adapter = attach(replica, c.method, config=c.config)
            adapter.use_fast_path(c.fast_path)  # the path timed: MoSLoRA's differs in FLOPs
            replica.to("meta")  # a plugin may make tensors of its own elsewhere
            if adapter.reducer is not None:  # the unselected heads frozen, as in a real step, at run records' draw
                adapter.reducer.select(torch.Generator().manual_seed(REDUCER_COUNT_SEED))
        elif c.source == "peft":
            from peft import get_peft_model

            replica = get_peft_model(replica, copy.deepcopy(c.config))
            for name, p in replica.named_parameters():  # LoRA-FA: A frozen, as create_lorafa_optimizer does
                p.requires_grad_(p.requires_grad and not (c.method == "lora_fa" and "lora_A" in name))
        else:
            replica.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_())
        step = _count(replica, config, backward=True, extra=adapter.extra_loss if c.source == "ours" else None)
        if c.round_fn is None:
            return step, 0.0
        return step, _rollout(replica.eval(), adapter.reducer, config) * c.config.reducer.rollouts / c.interval
    except (RuntimeError, ValueError, NotImplementedError, TypeError):
        return None, None


def _rollout(replica: nn.Module, reducer: Any, config: BenchConfig) -> float:
    """One of the Reducer's scoring rollouts: a no-grad forward with ``n_suppressed`` layers suppressed, drawn as
    a round draws them (from run records' fixed seed): at suppression 0 their adapters are skipped (the wrapper
    returns its base's output), as run records count them; a layer suppressed to a scale above 0 costs as much."""
    from harness.accounting import REDUCER_COUNT_SEED

    with reducer.suppressed(reducer.draw_suppressed(torch.Generator().manual_seed(REDUCER_COUNT_SEED))):
        return _count(replica, config, backward=False)


def _count(replica: nn.Module, config: BenchConfig, backward: bool, extra: Any = None) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from tasks.lm import loss_sum

    ids = torch.zeros((config.batch_size, config.seq_len), dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        # no mask, no positions: transformers reads those by value (impossible on meta) unless a cache exists
        loss = loss_sum(replica, {"input_ids": ids, "labels": ids}, config.seq_len, use_cache=True)
        term = extra() if extra is not None else None  # a method's own loss term (harness.adapter)
        if term is not None:
            loss = loss + term
        if backward:
            loss.backward()
    return float(counter.get_total_flops())


def state_bytes(c: Contender) -> int:
    """Trainable tensors (``c.trainable``, fixed when built) and their optimizer state (AdamW moments). Not
    ``requires_grad`` now: the Reducer leaves the heads it did not select for the last step frozen, and they
    keep their weights and moments all the same. A tensor the optimizer has not stepped yet (a head never
    selected in the bench's few steps) is counted with the state a stepped one has (moments of its size,
    the same scalars)."""
    if c.optimizer is None:
        return 0
    params = list({id(p): p for p in c.trainable}.values())
    state = c.optimizer.state
    if state and not any(state.get(p) for p in params):  # state kept by other keys (peft's LoraFAOptimizer: names)
        return sum(p.numel() * p.element_size() for p in params) + sum(
            t.numel() * t.element_size() for own in state.values() for t in own.values() if isinstance(t, torch.Tensor)
        )
    template = next((state[p] for p in params if state.get(p)), {})
    total = 0
    for p in params:
        total += p.numel() * p.element_size()
        own = state.get(p)
        for t in (own or template).values():
            if isinstance(t, torch.Tensor):
                moment = not own and t.numel() > 1  # the template's moment: one of p's size
                total += (p.numel() if moment else t.numel()) * t.element_size()
    return total


def peak_bytes(step: Callable[[], None], device: torch.device) -> float:
    """Most bytes allocated at once during one step, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    with _StorageMeter() as meter:
        step()
    return float(meter.peak)


class _StorageMeter(torch.utils._python_dispatch.TorchDispatchMode):
    """Live bytes of the tensor storages that ops create while active (a CPU has no allocator statistics):
    an op's output counts unless it shares storage with an input (views, in-place ops), until its storage
    is freed (a storage keeps its Python object while alive, so a weak reference sees the free)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._ids: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if id(storage) not in inputs and id(storage) not in self._ids:
                    self._ids.add(id(storage))
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._ids:
            self._ids.discard(key)
            self.live -= nbytes
