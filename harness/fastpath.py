"""The adapters' fast path, which ``AdapterLinear.forward`` (``harness.adapter``) takes when it is on.

The fast path (opt-in: a method defines ``input_weights`` + ``factors_from``, or ``delta_factors``; a plugin
with only ``delta`` is unaffected) computes the same sum with fewer passes over the activations:
``y + s·h Wᵀ`` as one ``addmm``; the adapter input (dtype conversion and one dropout draw) made once for
all the wrappers of a layer that read the same tensor (q, k, v; gate, up); their first matmuls (A, and a
router that reads the input) made as one over the stacked weights, with the dropout folded into it
(``_FusedProjection``: the mask kept as ~p·n dropped positions, drawn with ~p·n random numbers on a CPU
instead of n, one input-gradient buffer written in the backward; without dropout, a router's rows in the
same matmul as A's, unless one of the two is frozen and the other trains: then no weight gradient is made
for the frozen rows). Where the bases are plain ``nn.Linear`` on a CPU without autocast, that node also computes the
frozen base linears: the input gradient of the bases and the adapters is one buffer, accumulated by
``addmm_`` instead of one buffer per reader added up, and each wrapper adds ``s·h Wᵀ`` into its base output
in place. The fast path trains with torch's fused AdamW (``harness.train.adamw``). The dropout draw differs from the
reference path's (one draw shared by q, k and v; other random numbers), not its per-wrapper distribution;
with dropout off (p = 0 or eval) the fast path equals ``delta`` within fp32 rounding
(tests/test_fused_parity.py). ``delta`` itself is unchanged (``nn.Dropout``, one draw per wrapper).

It is off by default in training, for the reason ``harness.adapter`` gives.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

if TYPE_CHECKING:
    from harness.adapter import AdapterLinear

FUSE_BASE = True  # False: never compute a base linear in the fused node (the tests compare both paths)
STACK_RAW = True  # False: without a mask, the rows that read x (a router) in their own matmul, not with A's
SPARSE_DROPOUT_MIN = 1 << 15  # elements: below this, nn.Dropout's one kernel beats the sparse kernel's ~12 ops


def drop_positions(n: int, p: float) -> Tensor:
    """Flat indices of the dropped elements of ``n`` independent Bernoulli(``p``) draws, in order.

    The gaps between drops of a Bernoulli process are Geometric(p), so about ``n·p`` uniform draws give
    the whole mask (``nn.Dropout`` on a CPU draws ``n``: most of an adapter's cost). Exact in distribution
    up to float64 rounding; the CPU generator's state moves, so results are reproducible from a seed."""
    if n == 0:  # an empty input (e.g. no tokens): nothing to drop
        return torch.empty(0, dtype=torch.int64)
    log_keep = math.log1p(-p)
    expected = n * p
    chunk = int(expected + 6.0 * math.sqrt(expected * (1.0 - p)) + 16)  # almost always one chunk
    parts, end = [], -1
    while end < n - 1:
        u = torch.rand(chunk, dtype=torch.float64, device="cpu")
        # gap = floor(log(1-u) / log(1-p)) + 1: P(gap = g) = p (1-p)^(g-1), g >= 1 (in place: few temporaries;
        # the quotient is >= 0, so truncation is the floor)
        gaps = u.neg_().log1p_().div_(log_keep).to(torch.int64).add_(1)
        parts.append(gaps.cumsum_(0).add_(end))
        end = int(parts[-1][-1])
    pos = parts[0] if len(parts) == 1 else torch.cat(parts)
    return pos[: int(torch.searchsorted(pos, n))]


class _SparseDropout(torch.autograd.Function):
    """``x · mask / (1-p)`` with the mask stored as its dropped positions (~p·n indices)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: float, pos: Tensor | None = None) -> Tensor:
        pos = drop_positions(x.numel(), p) if pos is None else pos
        out = x.contiguous() * (1.0 / (1.0 - p))
        out.view(-1).index_fill_(0, pos, 0.0)
        ctx.save_for_backward(pos)
        ctx.scale = 1.0 / (1.0 - p)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (pos,) = ctx.saved_tensors
        out = grad.contiguous() * ctx.scale
        out.view(-1).index_fill_(0, pos, 0.0)
        return out, None, None


def _sparse_p(dropout: nn.Module, x: Tensor, any_size: bool = False) -> float | None:
    """The dropout probability when the sparse CPU kernel applies to ``x``, else ``None``."""
    if (
        isinstance(dropout, nn.Dropout)
        and dropout.training
        and 0 < dropout.p
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")  # its custom nodes keep one dtype: under autocast, nn.Dropout
    ):
        if any_size or x.numel() >= SPARSE_DROPOUT_MIN:
            return dropout.p
    return None


def sparse_dropout(dropout: nn.Module, x: Tensor) -> Tensor:
    """``dropout(x)`` for the wrapper's ``lora_dropout`` (``nn.Dropout`` or ``nn.Identity``), with a cheaper
    kernel on a CPU: the same distribution (each element dropped with probability p, survivors scaled by
    1/(1-p)) from ~p·n random numbers instead of n, and a mask kept as indices. Other random draws than
    ``nn.Dropout``'s; small tensors and other devices use ``nn.Dropout`` (fused on a GPU)."""
    p = _sparse_p(dropout, x)
    return dropout(x) if p is None else _SparseDropout.apply(x, p)


class _FusedProjection(torch.autograd.Function):
    """A group's frozen base linears and its adapters' first matmul, in one node: ``(y_1 .. y_n, z, g)`` with
    ``y_i = x W_iᵀ + b_i`` (flattened to 2-D; none where the bases are not fused in), ``z = drop(x) W_dropᵀ``
    (the dropout as dropped positions, or none) and ``g = x W_rawᵀ``. Without a mask (p = 0, eval) the rows
    that read ``drop(x)`` and those that read ``x`` (a router: HydraLoRA's) are one matmul, forward and
    backward (``STACK_RAW``); with one they are two (README "Performance": the alternative tried). Its
    backward writes the input gradient into one buffer: the adapters' part (masked in place), then every
    base's ``grad_y_i W_i`` accumulated by ``addmm_``, where autograd would make one buffer per reader and
    add them up. Each wrapper then adds its ``s·h Wᵀ`` into its ``y_i`` in place. The bases only for plain
    ``nn.Linear`` on a CPU without autocast (``_fuses_base``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pos: Tensor | None, p: float, w_drop: Tensor, w_raw: Tensor | None, *bases):  # noqa: ANN205
        ctx.set_materialize_grads(False)
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # positions index its elements in order
        n = len(bases) // 2
        ys = [F.linear(x2, bases[2 * i], bases[2 * i + 1]) for i in range(n)]
        stack = STACK_RAW and w_raw is not None and pos is None  # no mask: A's and the raw rows read one x
        scale, kept = 1.0, x2
        if pos is not None:
            scale = 1.0 / (1.0 - p)
            kept = x2.clone()  # x with the dropped entries zeroed; 1/(1-p) goes on the small side
            kept.view(-1).index_fill_(0, pos, 0.0)
            z = F.linear(kept, w_drop).mul_(scale)
            g = F.linear(x2, w_raw) if w_raw is not None else None
        elif stack:
            z, g = (t.contiguous() for t in _stacked(x2, w_drop, w_raw))
        else:
            z = F.linear(x2, w_drop)
            g = F.linear(x2, w_raw) if w_raw is not None else None
        base_grads = any(t is not None and t.requires_grad for t in bases)
        ctx.scale, ctx.shape, ctx.n, ctx.has_raw, ctx.stack = scale, x.shape, n, w_raw is not None, stack
        ctx.save_for_backward(
            pos,
            kept if w_drop.requires_grad else None,
            x2 if base_grads or (w_raw is not None and w_raw.requires_grad) else None,
            w_drop,
            w_raw,
            *bases,
        )
        return (*ys, z, g) if g is not None else (*ys, z)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None):  # noqa: ANN205
        pos, kept, x2, w_drop, w_raw, *bases = ctx.saved_tensors
        n = ctx.n
        gys, gz, gg = grads[:n], grads[n], (grads[n + 1] if ctx.has_raw else None)
        if gz is not None and ctx.scale != 1.0:
            gz = gz * ctx.scale
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.stack and gz is not None and gg is not None:  # one matmul for both
                grad_x = torch.cat([gz, gg], 1) @ torch.cat([w_drop, w_raw])
            else:
                if gz is not None:
                    grad_x = gz @ w_drop
                    if pos is not None:
                        grad_x.view(-1).index_fill_(0, pos, 0.0)
                if gg is not None:
                    grad_x = gg @ w_raw if grad_x is None else grad_x.addmm_(gg, w_raw)
            for gy, w in zip(gys, bases[0::2], strict=True):
                if gy is not None:
                    grad_x = gy @ w if grad_x is None else grad_x.addmm_(gy, w)
            grad_x = None if grad_x is None else grad_x.view(ctx.shape)
        need_wd = ctx.needs_input_grad[3] and gz is not None
        need_wr = ctx.has_raw and ctx.needs_input_grad[4] and gg is not None
        if ctx.stack and need_wd and need_wr:
            both = torch.cat([gz, gg], 1).t() @ x2
            grad_wd, grad_wr = both[: gz.shape[1]], both[gz.shape[1] :]
        else:
            grad_wd = gz.t() @ kept if need_wd else None
            grad_wr = gg.t() @ x2 if need_wr else None
        base_grads: list[Tensor | None] = []
        for i, gy in enumerate(gys):
            need_w, need_b = ctx.needs_input_grad[5 + 2 * i], ctx.needs_input_grad[6 + 2 * i]
            base_grads.append(gy.t() @ x2 if need_w and gy is not None else None)
            base_grads.append(gy.sum(0) if need_b and gy is not None else None)
        return grad_x, None, None, grad_wd, grad_wr, *base_grads


def _fuses_base(layer: AdapterLinear, x: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``_FusedProjection`` may compute this wrapper's base linear: a plain ``nn.Linear`` without hooks
    (forward or backward, its own or global, or a forward patched on it, as accelerate's offloading does: a review
    found them skipped), its weight on x's device, a CPU, no autocast, one dtype throughout (anything else keeps
    ``base(x)`` as it is)."""
    base = layer.base
    return (
        FUSE_BASE
        and type(base) is nn.Linear
        and x.device.type == "cpu"
        and x.dtype == dtype == base.weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and not (base._forward_hooks or base._forward_pre_hooks or base._backward_hooks or base._backward_pre_hooks)
        and not any(
            getattr(_nn_module, name, None)
            for name in (
                "_global_forward_hooks",
                "_global_forward_pre_hooks",
                "_global_backward_hooks",
                "_global_backward_pre_hooks",
            )
        )
        # a forward patched on the instance (accelerate's hooks: offloading, device maps) or weights elsewhere
        and "forward" not in vars(base)
        and not hasattr(base, "_hf_hook")
        and base.weight.device == x.device
    )


class _Entry:
    """One input tensor's shared state: its readers (in call order), the converted input, one dropout draw
    (positions for the sparse kernel, or a dropped copy), and the first-matmul outputs made for the readers
    learnt from the last time (popped as they are used)."""

    __slots__ = ("ref", "key", "layers", "ids", "xa", "xd", "pos", "p", "proj", "learnt", "replay")

    def __init__(self, ref: weakref.ref, key: tuple, learnt: list, replay: bool) -> None:
        self.ref, self.key, self.learnt, self.replay = ref, key, learnt, replay
        self.xa: Tensor | None = None  # None: x itself (never held, or the entry would never expire)
        self.xd: Tensor | None = None  # None: x itself, or not made yet (see pos)
        self.pos: Tensor | None = None  # the sparse kernel's draw: dropped positions
        self.p: float = 0.0
        self.layers: list[AdapterLinear] = []
        self.ids: set[int] = set()
        self.proj: dict[int, tuple[Tensor | None, Tensor, Tensor | None]] = {}


class SharedInput:
    """The adapter input of one layer's wrappers (dtype conversion, then dropout), made once per input
    tensor: wrappers that read the same tensor (q, k, v) get the same ``(x, drop(x))``. A wrapper that
    reads a tensor a second time draws afresh; the entry dies with its input tensor (a weak reference).

    Wrappers whose method declares ``input_weights`` also share their first matmul: which wrappers read one
    tensor is learnt from the previous forward (q, k and v; gate and up), and when the first of them
    arrives the first matmul of all of them is made at once over their stacked weights (``project``), with
    the dropout folded in (``_FusedProjection``). A wrapper that does not come as learnt computes its own
    from the same draw: never a wrong reuse, at worst a wasted slice.

    A forward run inside a backward (activation checkpointing's recomputation) groups as the forward it
    replays did: what a first reader's input teaches is used from its next input outside a backward, and a
    replay learns nothing, so the recomputation saves the same tensors and draws the same random numbers.
    (A wrapper that is the first reader of two inputs in one forward, e.g. a module called twice, can still
    group its replay otherwise; no built-in model does.)"""

    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self._groups: dict[int, list[AdapterLinear]] = {}  # id(first reader) -> the readers of its tensor
        self._learning: dict[int, list[AdapterLinear]] = {}  # learnt in this forward: used from the next

    def get(self, layer: AdapterLinear, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        entry = self._join(layer, x, dtype)
        if entry is None:
            xa = x.to(dtype)
            return xa, sparse_dropout(layer.lora_dropout, xa)
        xa = x if entry.xa is None else entry.xa
        if entry.pos is not None and entry.xd is None:
            entry.xd = _SparseDropout.apply(xa, entry.p, entry.pos)
        return xa, (xa if entry.xd is None else entry.xd)

    def _join(self, layer: AdapterLinear, x: Tensor, dtype: torch.dtype) -> _Entry | None:
        if x.is_inference():  # inference mode: no version counter to check reuse against (and no training)
            return None
        key = (x._version, torch.is_grad_enabled(), layer.lora_dropout.training, dtype)
        entry = self._entry
        if entry is None or entry.ref() is not x or entry.key != key or id(layer) in entry.ids:
            replay = torch._C._current_graph_task_id() != -1  # a forward inside a backward: a recomputation
            if not replay and id(layer) in self._learning:
                self._groups[id(layer)] = self._learning.pop(id(layer))
            entry = _Entry(weakref.ref(x, self._expire), key, self._groups.get(id(layer), []), replay)
            xa = x.to(dtype)
            entry.xa = None if xa is x else xa
            # positions, whatever the size, where the base is fused in: its backward masks with them
            p = _sparse_p(layer.lora_dropout, xa, any_size=layer.fuses_input and _fuses_base(layer, x, dtype))
            if p is not None:
                entry.pos, entry.p = drop_positions(xa.numel(), p), p
            else:
                xd = layer.lora_dropout(xa)
                entry.xd = None if xd is x else xd
            self._entry = entry
        entry.ids.add(id(layer))
        entry.layers.append(layer)
        if not entry.replay:
            self._learning[id(entry.layers[0])] = list(entry.layers)
        return entry

    def project(
        self, layer: AdapterLinear, x: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """``(y, drop(x) W_dropᵀ, x W_rawᵀ)`` for ``layer`` (its ``input_weights``), made with its siblings;
        ``y`` is the base's output (2-D) where the base is fused in (``_fuses_base``), else ``None``."""
        entry = self._join(layer, x, dtype)
        if entry is None:
            xa = x.to(dtype)
            xd = sparse_dropout(layer.lora_dropout, xa)
            return _project([layer], xa, xd, fuse=xd is xa and _fuses_base(layer, x, dtype))[id(layer)]
        xa = x if entry.xa is None else entry.xa
        xd = xa if entry.xd is None else entry.xd
        if len(entry.layers) == 1:  # the first reader: make the first matmul of the readers learnt last time
            group = [peer for peer in entry.learnt if peer is layer or _fusable_now(peer)]
            if len(group) > 1 and group[0] is layer:
                fuse = xd is xa and all(_fuses_base(peer, x, dtype) for peer in group)
                entry.proj = _project(group, xa, xd, entry.pos, entry.p, fuse=fuse)
        out = entry.proj.pop(id(layer), None)
        if out is None:
            fuse = xd is xa and _fuses_base(layer, x, dtype)
            out = _project([layer], xa, xd, entry.pos, entry.p, fuse=fuse)[id(layer)]
        return out

    def _expire(self, ref: weakref.ref) -> None:
        if self._entry is not None and self._entry.ref is ref:
            self._entry = None

    def __deepcopy__(self, memo: dict) -> SharedInput:
        return SharedInput()  # a cache, not state: copies and pickles start empty

    def __getstate__(self) -> dict:
        return {"_entry": None, "_groups": {}, "_learning": {}}


def _fusable_now(layer: AdapterLinear) -> bool:
    return layer.fast_path and layer.fuses_input and not layer.merged and layer.gate != 0.0


def _project(
    layers: list[AdapterLinear],
    xa: Tensor,
    xd: Tensor,
    pos: Tensor | None = None,
    p: float = 0.0,
    fuse: bool = False,
) -> dict[int, tuple[Tensor | None, Tensor, Tensor | None]]:
    """The first matmul of ``layers`` (which read one tensor), over their stacked weights, split per
    wrapper: ``drop(x)`` times every ``W_drop``, ``x`` times every ``W_raw``. With ``pos`` (a sparse
    dropout draw) the dropout is folded into the matmul; else ``xd`` is the dropped input. With ``fuse``
    the base linears are computed in the same node (``_FusedProjection``; ``xd`` must be ``xa``)."""
    weights = [layer.input_weights() for layer in layers]
    drop, raw = [w for w, _ in weights], [w for _, w in weights if w is not None]
    w_drop = drop[0] if len(drop) == 1 else torch.cat(drop)
    w_raw = (raw[0] if len(raw) == 1 else torch.cat(raw)) if raw else None
    ys: list[Tensor | None] = [None] * len(layers)
    if fuse or pos is not None:  # the bases computed in the node too, or only the dropout folded in
        bases = [t for layer in layers for t in (layer.base.weight, layer.base.bias)] if fuse else []
        out = _FusedProjection.apply(xa, pos, p, w_drop, w_raw, *bases)
        n = len(bases) // 2
        z_all, g_all = out[n], (out[n + 1] if w_raw is not None else None)
        if fuse:
            ys = list(out[:n])
    elif STACK_RAW and w_raw is not None and xd is xa and _train_alike(w_drop, w_raw):  # no dropout: one x
        z_all, g_all = _stacked(xa, w_drop, w_raw)
    else:
        z_all, g_all = F.linear(xd, w_drop), (F.linear(xa, w_raw) if w_raw is not None else None)
    z = _split(z_all, [w.shape[0] for w in drop])
    g = _split(g_all, [w.shape[0] for w in raw]) if g_all is not None else []
    result, it = {}, iter(g)
    for layer, y, (_, w) in zip(layers, ys, weights, strict=True):
        result[id(layer)] = (y, z.pop(0), None if w is None else next(it))
    return result


def _train_alike(w_drop: Tensor, w_raw: Tensor) -> bool:
    """Whether ``_stacked`` may make both products as one matmul in autograd: its backward computes the weight
    gradient of the whole stack, so a frozen router beside a training A (the Reducer pauses a layer's router,
    not the A it reads) would have its rows' gradient computed and thrown away (``_FusedProjection`` skips it
    itself). Without gradients nothing is computed for either: one matmul."""
    return not torch.is_grad_enabled() or w_drop.requires_grad == w_raw.requires_grad


def _stacked(x: Tensor, w_drop: Tensor, w_raw: Tensor) -> tuple[Tensor, Tensor]:
    """``(x W_dropᵀ, x W_rawᵀ)`` as one matmul over the stacked weights (views of its output); only where
    both weights train or neither does (``_train_alike``)."""
    z, g = F.linear(x, torch.cat([w_drop, w_raw])).split([w_drop.shape[0], w_raw.shape[0]], dim=-1)
    return z, g


def _split(t: Tensor, sizes: list[int]) -> list[Tensor]:
    return [t] if len(sizes) == 1 else list(t.split(sizes, dim=-1))
