"""``attach``: wrap the target linears of a model in place with a method's ``AdapterLinear``.

Every wrapper keeps the frozen layer as ``base`` and adds ``scaling * gate * delta(x)``; every adapter
tensor's name starts with ``lora_``, so "trainable", "saved" and "counted" are one filter. Tensors
shared across layers live once, on the ``lora_shared`` module added to the model's root.

The fast path (opt-in: a method defines ``input_weights`` + ``factors_from``, or ``delta_factors``; a plugin
with only ``delta`` is unaffected) computes the same sum with fewer passes over the activations:
``y + s·h Wᵀ`` as one ``addmm``; the adapter input (dtype conversion and one dropout draw) made once for
all the wrappers of a layer that read the same tensor (q, k, v; gate, up); their first matmuls (A, and a
router that reads the input) made as one over the stacked weights, with the dropout folded into it
(``_DroppedProjection``: the mask kept as ~p·n dropped positions, drawn with ~p·n random numbers on a CPU
instead of n, and one input-gradient buffer written in the backward). Where the bases are plain
``nn.Linear`` on a CPU without autocast, that node also computes the frozen base linears
(``_FusedProjection``): the input gradient of the bases and the adapters is one buffer, accumulated by
``addmm_`` instead of one buffer per reader added up, and each wrapper adds ``s·h Wᵀ`` into its base output
in place. The fast path trains with torch's fused AdamW (``harness.train.adamw``). The dropout draw differs from the
reference path's (one draw shared by q, k and v; other random numbers), not its per-wrapper distribution;
with dropout off (p = 0 or eval) the fast path equals ``delta`` within fp32 rounding
(tests/test_fused_parity.py). ``delta`` itself is unchanged (``nn.Dropout``, one draw per wrapper).

The fast path is OFF by default in training: sharing one draw across q, k and v correlates their masks, a
change of method, not of speed alone, and the committed results were trained without it. ``harness run
--fast-path`` turns it on (recorded; its own run id and leaderboard row), ``Adapter.use_fast_path(True)`` in
Python; ``harness bench`` times it (and the reference path with ``--reference``).
"""

from __future__ import annotations

import json
import math
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

from harness.atomic import atomic_path, write_json
from harness.config import AdapterConfig, config_from_dict, make_config
from harness.reducer import Reducer
from harness.registry import METHODS

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SHARED = "lora_shared"
FUSE_BASE = True  # False: never compute a base linear in the fused node (the tests compare both paths)
SPARSE_DROPOUT_MIN = 1 << 15  # elements: below this, nn.Dropout's one kernel beats the sparse kernel's ~12 ops


@dataclass(frozen=True)
class Site:
    """Where a wrapper sits: ``model.layers.3.self_attn.q_proj`` -> layer ``model.layers.3``, type ``q_proj``."""

    name: str
    layer: str
    type: str
    d_in: int
    d_out: int

    @property
    def group(self) -> str:
        """Key of tensors shared by all layers: same module type and same input width."""
        return f"{self.type}_{self.d_in}"

    @classmethod
    def of(cls, name: str, linear: nn.Linear) -> Site:
        parts = name.split(".")
        digits = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        layer = ".".join(parts[: digits[-1] + 1]) if digits else ""
        typ = next(p for p in reversed(parts) if not p.isdigit())
        return cls(name, layer, typ, linear.in_features, linear.out_features)


class SharedTensors(nn.Module):
    """Tensors one method shares across layers, registered once on the model (``lora_shared``)."""

    def get_or_create(self, kind: str, key: str, make: Callable[[], nn.Parameter]) -> nn.Parameter:
        if kind not in self._modules:
            self.add_module(kind, nn.ParameterDict())
        table: nn.ParameterDict = self._modules[kind]  # type: ignore[assignment]
        if key not in table:
            table[key] = make()
        return table[key]


def drop_positions(n: int, p: float) -> Tensor:
    """Flat indices of the dropped elements of ``n`` independent Bernoulli(``p``) draws, in order.

    The gaps between drops of a Bernoulli process are Geometric(p), so about ``n·p`` uniform draws give
    the whole mask (``nn.Dropout`` on a CPU draws ``n``: most of an adapter's cost). Exact in distribution
    up to float64 rounding; the CPU generator's state moves, so results are reproducible from a seed."""
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
    if isinstance(dropout, nn.Dropout) and dropout.training and 0 < dropout.p and x.device.type == "cpu":
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


class _DroppedProjection(torch.autograd.Function):
    """``(drop(x) W_dropᵀ, x W_rawᵀ)`` with the dropout mask given as dropped positions, in one node:
    the backward writes the input gradient once (the drop rows' part masked in place, the raw rows' part
    accumulated into it by ``addmm_``) instead of a masked copy and a sum of separate gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pos: Tensor, p: float, w_drop: Tensor, w_raw: Tensor | None):  # noqa: ANN205
        ctx.set_materialize_grads(False)
        scale = 1.0 / (1.0 - p)
        kept = x.contiguous().clone()  # x with the dropped entries zeroed; 1/(1-p) goes on the small side
        kept.view(-1).index_fill_(0, pos, 0.0)
        z = F.linear(kept, w_drop) * scale
        g = F.linear(x, w_raw) if w_raw is not None else None
        ctx.scale, ctx.shape, ctx.has_raw = scale, x.shape, w_raw is not None
        ctx.save_for_backward(
            pos,
            kept if w_drop.requires_grad else None,
            x if w_raw is not None and w_raw.requires_grad else None,
            w_drop,
            w_raw,
        )
        return (z, g) if g is not None else z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor | None, grad_g: Tensor | None = None):  # noqa: ANN205
        pos, kept, x, w_drop, w_raw = ctx.saved_tensors
        d_in = ctx.shape[-1]
        gz = None if grad_z is None else grad_z.reshape(-1, grad_z.shape[-1]) * ctx.scale
        gg = None if grad_g is None else grad_g.reshape(-1, grad_g.shape[-1])
        grad_x = grad_wd = grad_wr = None
        if ctx.needs_input_grad[0]:
            if gz is not None:
                grad_x = gz @ w_drop
                grad_x.view(-1).index_fill_(0, pos, 0.0)
                if gg is not None:
                    grad_x.addmm_(gg, w_raw)
            elif gg is not None:
                grad_x = gg @ w_raw
            grad_x = None if grad_x is None else grad_x.view(ctx.shape)
        if ctx.needs_input_grad[3] and gz is not None:
            grad_wd = gz.t() @ kept.reshape(-1, d_in)
        if ctx.has_raw and ctx.needs_input_grad[4] and gg is not None:
            grad_wr = gg.t() @ x.reshape(-1, d_in)
        return grad_x, None, None, grad_wd, grad_wr


class _FusedProjection(torch.autograd.Function):
    """A group's frozen base linears and its adapters' first matmul, in one node: ``(y_1 .. y_n, z, g)`` with
    ``y_i = x W_iᵀ + b_i`` (flattened to 2-D), ``z = drop(x) W_dropᵀ`` (the dropout as dropped positions, or
    none) and ``g = x W_rawᵀ``. Its backward writes the input gradient into one buffer: the adapters' part
    (masked in place), then every base's ``grad_y_i W_i`` accumulated by ``addmm_``, where autograd would
    make one buffer per reader and add them up. Each wrapper then adds its ``s·h Wᵀ`` into its ``y_i`` in
    place. Only for plain ``nn.Linear`` bases on a CPU without autocast (``_fuses_base``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pos: Tensor | None, p: float, w_drop: Tensor, w_raw: Tensor | None, *bases):  # noqa: ANN205
        ctx.set_materialize_grads(False)
        x2 = x.reshape(-1, x.shape[-1])
        n = len(bases) // 2
        ys = [F.linear(x2, bases[2 * i], bases[2 * i + 1]) for i in range(n)]
        scale = 1.0
        if pos is not None:
            scale = 1.0 / (1.0 - p)
            kept = x2.clone()  # x with the dropped entries zeroed; 1/(1-p) goes on the small side
            kept.view(-1).index_fill_(0, pos, 0.0)
            z = F.linear(kept, w_drop).mul_(scale)
        else:
            kept = x2
            z = F.linear(x2, w_drop)
        g = F.linear(x2, w_raw) if w_raw is not None else None
        base_grads = any(t is not None and t.requires_grad for t in bases)
        ctx.scale, ctx.shape, ctx.n, ctx.has_raw = scale, x.shape, n, w_raw is not None
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
        grad_wd = gz.t() @ kept if ctx.needs_input_grad[3] and gz is not None else None
        grad_wr = gg.t() @ x2 if ctx.has_raw and ctx.needs_input_grad[4] and gg is not None else None
        base_grads: list[Tensor | None] = []
        for i, gy in enumerate(gys):
            need_w, need_b = ctx.needs_input_grad[5 + 2 * i], ctx.needs_input_grad[6 + 2 * i]
            base_grads.append(gy.t() @ x2 if need_w and gy is not None else None)
            base_grads.append(gy.sum(0) if need_b and gy is not None else None)
        return grad_x, None, None, grad_wd, grad_wr, *base_grads


def _fuses_base(layer: AdapterLinear, x: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``_FusedProjection`` may compute this wrapper's base linear: a plain ``nn.Linear`` without
    hooks, on a CPU, no autocast, one dtype throughout (anything else keeps ``base(x)`` as it is)."""
    base = layer.base
    return (
        FUSE_BASE
        and type(base) is nn.Linear
        and x.device.type == "cpu"
        and x.dtype == dtype == base.weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and not (base._forward_hooks or base._forward_pre_hooks)
        and not (
            getattr(_nn_module, "_global_forward_hooks", None) or getattr(_nn_module, "_global_forward_pre_hooks", None)
        )
    )


class _Entry:
    """One input tensor's shared state: its readers (in call order), the converted input, one dropout draw
    (positions for the sparse kernel, or a dropped copy), and the first-matmul outputs made for the readers
    learnt from the last time (popped as they are used)."""

    __slots__ = ("ref", "key", "layers", "ids", "xa", "xd", "pos", "p", "proj", "learnt")

    def __init__(self, ref: weakref.ref, key: tuple, learnt: list) -> None:
        self.ref, self.key, self.learnt = ref, key, learnt
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
    the dropout folded in (``_DroppedProjection``). A wrapper that does not come as learnt computes its own
    from the same draw: never a wrong reuse, at worst a wasted slice."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self._groups: dict[int, list[AdapterLinear]] = {}  # id(first reader) -> the readers of its tensor

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
            entry = _Entry(weakref.ref(x, self._expire), key, self._groups.get(id(layer), []))
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
        self._groups[id(entry.layers[0])] = list(entry.layers)
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
        return {"_entry": None, "_groups": {}}


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
    if fuse:
        bases = [t for layer in layers for t in (layer.base.weight, layer.base.bias)]
        out = _FusedProjection.apply(xa, pos, p, w_drop, w_raw, *bases)
        ys, z_all, g_all = list(out[: len(layers)]), out[len(layers)], (out[-1] if w_raw is not None else None)
    elif pos is not None:
        out = _DroppedProjection.apply(xa, pos, p, w_drop, w_raw)
        z_all, g_all = out if w_raw is not None else (out, None)
    else:
        z_all, g_all = F.linear(xd, w_drop), (F.linear(xa, w_raw) if w_raw is not None else None)
    z = _split(z_all, [w.shape[0] for w in drop])
    g = _split(g_all, [w.shape[0] for w in raw]) if g_all is not None else []
    result, it = {}, iter(g)
    for layer, y, (_, w) in zip(layers, ys, weights, strict=True):
        result[id(layer)] = (y, z.pop(0), None if w is None else next(it))
    return result


def _split(t: Tensor, sizes: list[int]) -> list[Tensor]:
    return [t] if len(sizes) == 1 else list(t.split(sizes, dim=-1))


class AdapterLinear(nn.Module):
    """Base of every method's wrapper. Subclasses create ``lora_*`` tensors and define ``delta``;
    ``delta_factors`` is an optional fast path (see the module docstring)."""

    config_cls: ClassVar[type[AdapterConfig]] = AdapterConfig
    mergeable: ClassVar[bool] = True
    name: ClassVar[str]  # set by the registry

    def __init__(self, base: nn.Linear, config: AdapterConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__()
        self.base = base
        self.site = site
        self.scaling = config.alpha / config.r
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.gate = 1.0  # multiplies the adapter output; the Reducer lowers it to suppress a layer
        self.merged = False
        self.fast_path = False  # opt-in (Adapter.use_fast_path): it changes dropout draws; see the module doc
        object.__setattr__(self, "_shared", shared)  # not a child: registered once at the root
        object.__setattr__(self, "_input", SharedInput())  # attach() gives a layer's wrappers one

    # -- to implement -------------------------------------------------------------------------
    def delta(self, x: Tensor) -> Tensor:
        """The adapter path before scaling: ``Δ(x)`` of the spec (apply ``self.lora_dropout``)."""
        raise NotImplementedError

    def delta_factors(self, x: Tensor, x_drop: Tensor) -> tuple[Tensor, Tensor]:
        """Optional fast path: ``(h, W)`` with ``Δ(x) = h Wᵀ`` (the last matmul left undone), given ``x`` and
        ``x_drop = lora_dropout(x)``; the caller fuses ``y + s·h Wᵀ`` into one ``addmm`` and shares
        ``x_drop`` between wrappers that read the same tensor. Must equal ``delta`` when dropout is off.
        Methods that define ``input_weights`` and ``factors_from`` get this for free."""
        if not self.fuses_input:
            raise NotImplementedError
        w_drop, w_raw = self.input_weights()
        return self.factors_from(F.linear(x_drop, w_drop), None if w_raw is None else F.linear(x, w_raw))

    def input_weights(self) -> tuple[Tensor, Tensor | None]:
        """Optional, with ``factors_from``: the weights of the first matmul, ``(W_drop, W_raw)``: ``W_drop``
        (rows x d_in) reads ``lora_dropout(x)``, ``W_raw`` (or ``None``) reads ``x`` itself (a router).
        Wrappers that read one tensor (q, k, v) then make this matmul together, over their stacked weights."""
        raise NotImplementedError

    def factors_from(self, z: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(h, W)`` of ``delta_factors`` from ``z = drop(x) W_dropᵀ`` and ``g = x W_rawᵀ``."""
        raise NotImplementedError

    @property
    def fuses_input(self) -> bool:
        return type(self).input_weights is not AdapterLinear.input_weights

    def delta_weight(self) -> Tensor:
        """``Δ`` as a ``d_out x d_in`` matrix, for merging (mergeable methods only)."""
        raise NotImplementedError(f"{type(self).name} cannot be merged")

    def reducer_parameters(self) -> list[nn.Parameter]:
        """Per-layer tensors the Reducer freezes in unselected layers (B heads and router)."""
        return []

    @classmethod
    def is_mergeable(cls, config: AdapterConfig) -> bool:
        return cls.mergeable

    # -- helpers for subclasses -----------------------------------------------------------------
    def new_param(self, *shape: int, init: str = "zeros", trainable: bool = True) -> nn.Parameter:
        """A tensor on the base layer's device; fp32 unless the base is fp64 (16-bit bases train fp32 adapters)."""
        weight = self.base.weight
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        t = torch.empty(*shape, device=weight.device, dtype=dtype)
        if init == "zeros":
            nn.init.zeros_(t)
        elif init == "kaiming":
            nn.init.kaiming_uniform_(t, a=math.sqrt(5))
        elif init == "orthogonal":
            if t.device.type != "meta":
                nn.init.orthogonal_(t)
        else:
            raise ValueError(f"unknown init {init!r}; choose zeros, kaiming or orthogonal")
        return nn.Parameter(t, requires_grad=trainable)

    def shared_param(self, kind: str, *shape: int, init: str = "kaiming", trainable: bool = True) -> nn.Parameter:
        return self._shared.get_or_create(
            kind, self.site.group, lambda: self.new_param(*shape, init=init, trainable=trainable)
        )

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.merged or self.gate == 0.0:
            return self.base(x)
        dtype = next(iter(self._parameters.values())).dtype if self._parameters else self.base.weight.dtype
        scale = self.scaling * self.gate
        if not self.fast_path:
            y = self.base(x)
            return y + (self.delta(x.to(dtype)) * scale).to(y.dtype)
        if self.fuses_input:
            y2, z, g = self._input.project(self, x, dtype)
            h, w = self.factors_from(z, g)
            if y2 is not None:  # the base was computed in the fused node: add s·h Wᵀ into its output in place
                y2.addmm_(h.reshape(-1, h.shape[-1]), w.t(), alpha=scale)
                return y2.view(*x.shape[:-1], y2.shape[-1])
            y = self.base(x)
        else:
            y = self.base(x)
            h, w = self.delta_factors(*self._input.get(self, x, dtype))
        if h.dtype != y.dtype:  # a 16-bit base without autocast: the delta in fp32, then cast, as delta() does
            return y + (F.linear(h, w) * scale).to(y.dtype)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), w.t(), alpha=scale)
        return out.view(y.shape)

    def merge(self) -> None:
        if not self.merged:
            w = self.base.weight
            w.data += (self.scaling * self.delta_weight()).to(w.dtype)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            w.data -= (self.scaling * self.delta_weight()).to(w.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"method={type(self).name}, scaling={self.scaling:g}"


class Adapter:
    """What ``attach`` returns: accounting, adapter-only state, save/merge, and the training hooks."""

    def __init__(
        self, model: nn.Module, method: type[AdapterLinear], config: AdapterConfig, layers: dict[str, AdapterLinear]
    ) -> None:
        self.model = model
        self.method = method.name
        self.method_cls = method
        self.config = config
        self.layers = layers
        self._trainable = _unique(p for p in self.adapter_parameters() if p.requires_grad)
        groups: dict[str, list[AdapterLinear]] = {}
        for layer in layers.values():
            groups.setdefault(layer.site.layer, []).append(layer)
        self.layer_groups = groups
        self.reducer = Reducer(config.reducer, list(groups.values())) if config.reducer else None

    # -- accounting ------------------------------------------------------------------------------
    def adapter_parameters(self) -> list[nn.Parameter]:
        return _unique(p for n, p in self.model.named_parameters(remove_duplicate=False) if _is_adapter(n))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The tensors that train (fixed at attach; the Reducer only pauses some per step)."""
        return list(self._trainable)

    @property
    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self._trainable)

    @property
    def num_adapter_params(self) -> int:
        return sum(p.numel() for p in self.adapter_parameters())

    @property
    def num_base_params(self) -> int:
        adapter = {id(p) for p in self.adapter_parameters()}
        return sum(p.numel() for p in _unique(self.model.parameters()) if id(p) not in adapter)

    @property
    def num_total_params(self) -> int:
        return self.num_base_params + self.num_adapter_params

    @property
    def percent_trainable(self) -> float:
        """Trainable params as % of the base model's (the papers' "Param %")."""
        return 100.0 * self.num_trainable_params / self.num_base_params

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {n: t for n, t in self.model.state_dict().items() if _is_adapter(n)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"adapter state does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(
                        f"adapter tensor {name} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor)

    def save(self, directory: str | Path) -> Path:
        """Write the adapter weights (safetensors) and the method config (JSON), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.detach().to("cpu").contiguous() for n, t in self.state_dict().items()}
        with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"method": self.method})
        meta = {"method": self.method, "config": self.config.to_dict()}
        write_json(directory / ADAPTER_CONFIG, meta)
        return directory

    def file_size_bytes(self, directory: str | Path) -> int:
        return (Path(directory) / ADAPTER_WEIGHTS).stat().st_size

    def use_fast_path(self, enabled: bool = True) -> None:
        """``True``: wrappers whose method has ``delta_factors`` take the fast path (module doc). ``False``
        (the default): every wrapper computes ``delta(x)`` with its own ``nn.Dropout`` draw, the reference
        the parity tests and ``harness bench`` compare against."""
        for layer in self.layers.values():
            own = type(layer).delta_factors is not AdapterLinear.delta_factors
            layer.fast_path = enabled and (own or layer.fuses_input)

    # -- merge -------------------------------------------------------------------------------------
    def merge(self) -> None:
        if not self.method_cls.is_mergeable(self.config):
            raise ValueError(f"method {self.method!r} with this config is input-dependent and cannot be merged into W")
        with torch.no_grad():
            for layer in self.layers.values():
                layer.merge()

    def unmerge(self) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                layer.unmerge()

    # -- hooks the training loop calls ---------------------------------------------------------------
    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    def on_step_begin(self, step: int, val_loss_fn: Callable[[], float] | None) -> None:
        if self.reducer is not None:
            self.reducer.on_step_begin(step, val_loss_fn)

    def extra_loss(self) -> Tensor | None:
        return None

    @property
    def pauses_parameters(self) -> bool:
        """True when some trainable tensors get no gradient in some steps (DDP must then allow it)."""
        return self.reducer is not None and self.reducer.active

    def training_state(self) -> dict[str, Any]:
        """Hook state a checkpoint must carry to resume exactly (the Reducer's scores and RNG)."""
        return {"reducer": self.reducer.state_dict()} if self.reducer is not None else {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if self.reducer is not None and "reducer" in state:
            self.reducer.load_state_dict(state["reducer"])

    def summary(self) -> dict[str, Any]:
        """What a run record keeps of the adapter beyond its config."""
        out: dict[str, Any] = {"layers": len(self.layer_groups), "wrapped_linears": len(self.layers)}
        if self.reducer is not None:
            out["reducer"] = self.reducer.summary(list(self.layer_groups))
        return out


def attach(model: nn.Module, method: str | type[AdapterLinear], **options: Any) -> Adapter:
    """Freeze ``model`` and wrap its target linears in place with ``method``; return the handle."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    config = options.pop("config", None) or make_config(cls.config_cls, options, cls.name)
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise ValueError("this model already has an adapter attached; attach to a fresh model")
    names = find_targets(model, config.targets)
    model.requires_grad_(False)
    shared = SharedTensors()
    layers: dict[str, AdapterLinear] = {}
    inputs: dict[str, SharedInput] = {}  # one per layer: its wrappers that read one tensor share its dropout
    for name in names:
        base = model.get_submodule(name)
        layers[name] = cls(base, config, Site.of(name, base), shared).train(base.training)
        object.__setattr__(layers[name], "_input", inputs.setdefault(layers[name].site.layer, SharedInput()))
        model.set_submodule(name, layers[name])
    if len(list(shared.parameters())):
        model.add_module(SHARED, shared)
    return Adapter(model, cls, config, layers)


def load_adapter(model: nn.Module, directory: str | Path) -> Adapter:
    """Attach the method saved in ``directory`` to ``model`` and load its weights."""
    directory = Path(directory)
    meta_file = directory / ADAPTER_CONFIG
    if not meta_file.is_file():
        raise ValueError(f"{str(directory)!r} holds no {ADAPTER_CONFIG}; pass a directory written by Adapter.save()")
    meta = json.loads(meta_file.read_text())
    cls = METHODS.get(meta["method"])
    adapter = attach(model, cls, config=config_from_dict(cls.config_cls, meta["config"]))
    adapter.load_state_dict(load_file(str(directory / ADAPTER_WEIGHTS)))
    return adapter


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def find_targets(model: nn.Module, targets: tuple[str, ...] | str) -> list[str]:
    """Names of the ``nn.Linear`` modules matched by ``targets``; every target must match something."""
    names = linear_names(model)
    short = sorted({Site.of(n, model.get_submodule(n)).type for n in names})
    if isinstance(targets, str):
        pattern = re.compile(targets)
        found = [n for n in names if pattern.fullmatch(n)]
        if not found:
            raise ValueError(
                f"target regex {targets!r} matches no linear layer; the model's linear layers: {', '.join(short)}"
            )
        return found
    found = []
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            raise ValueError(
                f"target {target!r} matches no linear layer; the model's linear layers: {', '.join(short)}"
            )
        found += hits
    return sorted(set(found), key=names.index)


def _is_adapter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def _unique(params: Any) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
