"""``attach``: wrap the target linears of a model in place with a method's ``AdapterLinear``.

Every wrapper keeps the frozen layer as ``base`` and adds ``scaling * gate * delta(x)``; every adapter
tensor's name starts with ``lora_``, so "trainable", "saved" and "counted" are one filter. Tensors
shared across layers live once, on the ``lora_shared`` module added to the model's root.

The fast path (opt-in: a method defines ``input_weights`` + ``factors_from``, or ``delta_factors``; a plugin
with only ``delta`` is unaffected) computes the same sum with fewer passes over the activations
(``harness.fastpath`` says how); with dropout off (p = 0 or eval) it equals ``delta`` within fp32 rounding
(tests/test_fused_parity.py).

The fast path is OFF by default in training: sharing one draw across q, k and v correlates their masks, a
change of method, not of speed alone, and the committed results were trained without it. ``harness run
--fast-path`` turns it on (recorded; its own run id and leaderboard row), ``Adapter.use_fast_path(True)`` in
Python; ``harness bench`` times it (and the reference path with ``--reference``).
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.amp import is_autocast_available

from harness.config import AdapterConfig
from harness.fastpath import SharedInput

if TYPE_CHECKING:  # for type checkers and editors: the names harness.adapter_model holds, imported eagerly
    from harness.adapter_model import ADAPTER_CONFIG as ADAPTER_CONFIG
    from harness.adapter_model import ADAPTER_WEIGHTS as ADAPTER_WEIGHTS
    from harness.adapter_model import CONFIG_METADATA as CONFIG_METADATA
    from harness.adapter_model import Adapter as Adapter
    from harness.adapter_model import attach as attach
    from harness.adapter_model import find_targets as find_targets
    from harness.adapter_model import linear_names as linear_names
    from harness.adapter_model import load_adapter as load_adapter

SHARED = "lora_shared"


@dataclass(frozen=True)
class Site:
    """Where a wrapper sits: ``model.layers.3.self_attn.q_proj`` -> layer ``model.layers.3``, type ``q_proj``;
    diffusers' ``...transformer_blocks.0.ff.net.2`` -> layer ``...transformer_blocks.0``, type ``net``."""

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
    def of(cls, name: str, linear: nn.Module, model: nn.Module | None = None) -> Site:
        """The site of ``linear``, named ``name`` in ``model``. The model tells a list of layers from a numbered
        list of steps (``ff.net``), whose index is no layer (``_layer_of``). Without it, the grouping from before
        2026-12-06 (the layer is the name up to its last number, ``ff.net.0.proj`` a layer of its own; no nn.Sequential
        type split), kept for tests that rebuild older adapters: attach and bench always pass the model."""
        parts = name.split(".")
        if model is None:
            digits = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
            layer = ".".join(parts[: digits[-1] + 1]) if digits else ""
        else:
            layer = _layer_of(model, parts)
        typ = next((p for p in reversed(parts) if not p.isdigit()), parts[-1])  # nn.Sequential's "0": itself
        if model is not None and parts[-1].isdigit() and len(parts) > 1:
            steps = model.get_submodule(".".join(parts[:-1])).children()
            if sum(map(is_linear, steps)) > 1:  # an nn.Sequential MLP's mlp.0 and mlp.2: two types, not one A
                typ = f"{typ}_{parts[-1]}"
        return cls(name, layer, typ, *linear_dims(linear))


def _layer_of(model: nn.Module, parts: list[str]) -> str:
    """The layer a linear named ``parts`` sits in: the deepest numbered module above it in a list of one class
    (``model.layers.3``, ``transformer_blocks.0``), not an index into a list of steps of several classes (``ff.net``:
    GEGLU, Dropout, Linear); where no list above it is of one class, the outermost list of blocks that each hold
    modules (a hybrid model's Mamba and attention layers); '' (one layer) where there is neither."""
    same, blocks = [], []
    for i, part in enumerate(parts[:-1]):  # not the last: a numbered linear (to_out.0) is never a layer itself
        if part.isdigit():
            children = list(model.get_submodule(".".join(parts[:i])).children())
            if len({type(c) for c in children}) == 1:
                same.append(i)
            elif all(next(c.children(), None) is not None for c in children):
                blocks.append(i)
    at = same[-1] if same else blocks[0] if blocks else None
    return "" if at is None else ".".join(parts[: at + 1])


def _conv1d() -> type | None:
    """transformers' ``Conv1D`` (GPT-2's linear layers, the weight stored in x out), where transformers is imported
    (a model holding one has imported it; the harness does not import transformers for this)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a layer the adapters wrap: an ``nn.Linear``, or a GPT-2-style ``Conv1D``."""
    conv1d = _conv1d()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def stores_transposed(module: nn.Module) -> bool:
    """Whether the layer's weight is stored in x out (``Conv1D``: ``y = x W + b``), not out x in (``nn.Linear``)."""
    conv1d = _conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(input width, output width) of a layer ``is_linear`` takes."""
    if stores_transposed(module):
        d_in, d_out = module.weight.shape
        return int(d_in), int(d_out)
    return module.in_features, module.out_features


class SharedTensors(nn.Module):
    """Tensors one method shares across layers, registered once on the model (``lora_shared``)."""

    def forward(self, x: Any) -> Any:  # an nn.Sequential model runs its every child: this one passes x through
        return x

    def get_or_create(self, kind: str, key: str, make: Callable[[], nn.Parameter]) -> nn.Parameter:
        if kind not in self._modules:
            self.add_module(kind, nn.ParameterDict())
        table: nn.ParameterDict = self._modules[kind]  # type: ignore[assignment]
        if key not in table:
            table[key] = make()
        return table[key]


class AdapterLinear(nn.Module):
    """Base of every method's wrapper. Subclasses create ``lora_*`` tensors and define ``delta``;
    ``delta_factors`` is an optional fast path (see the module docstring)."""

    config_cls: ClassVar[type[AdapterConfig]] = AdapterConfig
    mergeable: ClassVar[bool] = True
    # common options (AdapterConfig's) the method never reads, e.g. ("heads",): a run given another value keeps the
    # preset's (one run id, not a second for the same run). Read from the class's own body only, never inherited:
    # a subclass that reads one is not told it does not
    ignored_options: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]  # set by the registry
    # what the method computes and trains, as Task.version for a task: bump it when that changes without an option
    # that is part of the run id; a finished run recorded with another version is then not taken as done, and a
    # checkpoint of one is refused (records and checkpoints from before it was kept count as version "1")
    version: ClassVar[str] = "1"
    # methods ``delta`` calls that the fast path computes its own way (HydraLoRA's ``router_weights``): a subclass
    # overriding one of them below the fast path's methods runs the plain path, as one overriding ``delta`` does.
    # Those a config's ``delta`` never calls are left out by ``delta_helpers_for`` (EffiLoRA's router at heads=1)
    delta_helpers: ClassVar[tuple[str, ...]] = ()
    # whether ``r`` bounds the rank of the update (B A): then attach refuses an r above a target's smaller side. A
    # method whose r counts something else (a VeRA-style shared basis, a number of coefficients) sets it False
    rank_bounded: ClassVar[bool] = True
    # True: under autocast, ``delta`` and the fast path read x in autocast's dtype, not copied to the weights'
    # fp32 (right when every op on x is a matmul or the dropout, as in the built-in methods; see _compute_dtype).
    # Set where ``delta`` is defined: a subclass that overrides ``delta`` does not inherit it (follows_delta).
    autocast_input: ClassVar[bool] = False

    def __init__(self, base: nn.Linear, config: AdapterConfig, site: Site, shared: SharedTensors) -> None:
        super().__init__()
        self.base = base
        self.site = site
        self.scaling = config.alpha / config.r
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.gate = 1.0  # multiplies the adapter output; the Reducer lowers it to suppress a layer
        self.merged = False
        self.fast_path = False  # opt-in (Adapter.use_fast_path): it changes dropout draws; see the module doc
        # a subclass that overrides delta without setting autocast_input itself does not inherit it
        cls = type(self)
        self._autocast_input = cls.autocast_input and cls.follows_delta("autocast_input", config=config)
        self._fuses_input = _fuses_input(cls, config)  # once, for fuses_input: forward asks on every call
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

    def extra_loss(self) -> Tensor | float | None:
        """Optional: a term this wrapper adds to the training loss of the micro-batch its forward just ran (e.g. a
        router's load-balancing loss from statistics the forward kept), or None. The loop adds the wrappers'
        sum to each micro-batch with anything supervised, divided by their number (the step's mean); it is in
        the recorded loss curve, not in validation losses; a term of tensors shared across layers belongs to one
        wrapper; layers the Reducer paused add theirs too. Keep the statistics where the forward computes them
        on both paths: the fast path runs ``factors_from`` / ``delta_factors``, not ``delta``. The step's FLOPs
        count the term's matrix products (FlopCounterMode counts no elementwise op)."""
        return None

    def factors_from(self, z: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(h, W)`` of ``delta_factors`` from ``z = drop(x) W_dropᵀ`` and ``g = x W_rawᵀ``."""
        raise NotImplementedError

    @property
    def fuses_input(self) -> bool:
        """Whether the fast path takes the fused route (``input_weights`` + ``factors_from``, made with the
        wrapper's siblings): only where ``factors_from`` is defined where ``delta`` is or below it (``input_weights``
        only names the first matmul's weights: MoSLoRA inherits LoRA's; a review: a plugin that subclassed a built-in
        with its own ``delta`` and ``delta_factors`` ran the built-in's Δ on the fast path); read with the
        wrapper's config (``delta_helpers_for``)."""
        return self._fuses_input

    @classmethod
    def offers_fast_path(cls, config: AdapterConfig | None = None) -> bool:
        """Whether the method defines a fast path of its own: ``delta_factors``, or ``input_weights`` and
        ``factors_from``, where its ``delta`` is defined or below it (an inherited one computes another Δ).
        Without ``config``, every one of ``delta_helpers`` counts (as at a config whose ``delta`` calls them all)."""
        own = cls.delta_factors is not AdapterLinear.delta_factors and cls.follows_delta("delta_factors", config=config)
        return own or _fuses_input(cls, config)

    @classmethod
    def delta_helpers_for(cls, config: AdapterConfig) -> tuple[str, ...]:
        """The ``delta_helpers`` that ``delta`` calls under ``config``: all of them here; a method whose ``delta``
        skips one at some settings leaves it out there (EffiLoRA: no router at heads=1), so that a plugin
        overriding only that helper keeps the fast path and merge where the helper never runs."""
        return cls.delta_helpers

    @classmethod
    def follows_delta(cls, *names: str, config: AdapterConfig | None = None) -> bool:
        """Whether the methods ``names`` (a fast path's, ``delta_weight``) are defined where ``delta`` is or below
        it and its helpers (``delta_helpers_for(config)``; every one of ``delta_helpers`` without a config): a
        plugin that subclasses a built-in method and overrides only ``delta`` (or a helper of it) inherits the
        built-in's fast path and merge, which compute the built-in's Δ, not its own."""
        helpers = cls.delta_helpers if config is None else cls.delta_helpers_for(config)

        def owner(name: str) -> type:
            return next(k for k in cls.__mro__ if name in vars(k))

        # a review: a plugin overriding only HydraLoRA's router_weights ran the built-in router on the fast path
        return all(issubclass(owner(name), owner(d)) for name in names for d in ("delta", *helpers))

    def delta_weight(self) -> Tensor:
        """``Δ`` as a ``d_out x d_in`` matrix, for merging (mergeable methods only)."""
        raise NotImplementedError(f"{type(self).name} cannot be merged")

    def reducer_parameters(self) -> list[nn.Parameter]:
        """Per-layer tensors the Reducer freezes in unselected layers (B heads and router)."""
        return []

    @classmethod
    def is_mergeable(cls, config: AdapterConfig) -> bool:
        return (
            cls.mergeable
            and cls.delta_weight is not AdapterLinear.delta_weight
            and cls.follows_delta("delta_weight", config=config)
        )

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

    # -- the base layer's attributes, read through ------------------------------------------------
    # Model code reads them from the layer it wraps (``self.o_proj.weight.dtype``; GPT-Neo's flash attention,
    # diffusers' fuse_projections), as peft's wrappers allow. Served only where nothing of the wrapper's own has the
    # name (``__getattr__`` runs after a miss): a plugin may set ``self.in_features`` (peft's LoraLayer does) or
    # register a tensor named ``bias``. No tensors of the wrapper's: parameters(), state_dict() and the counts see
    # the base's once, as ``base.*`` (which adapter state leaves out).
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, children
        except AttributeError:
            if name == self._registering:  # being registered as the wrapper's own: not taken yet
                raise
            base, site = self.__dict__.get("_modules", {}).get("base"), self.__dict__.get("site")
            if name in ("weight", "bias") and base is not None:
                return getattr(base, name)
            if name in ("in_features", "out_features") and site is not None:  # a Conv1D's widths too
                return site.d_in if name == "in_features" else site.d_out
            raise

    _registering: str | None = None  # the name a tensor is being registered under: torch refuses one that reads

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        with self._own(name):
            super().register_buffer(name, tensor, persistent)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        with self._own(name):
            super().register_parameter(name, param)

    @contextmanager
    def _own(self, name: str) -> Iterator[None]:
        """While ``name`` is registered as the wrapper's own: torch refuses a name ``hasattr`` finds, and the
        read-through would make ``weight``/``bias`` found."""
        self.__dict__["_registering"] = name
        try:
            yield
        finally:
            del self.__dict__["_registering"]

    # -- forward ---------------------------------------------------------------------------------
    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the adapter reads ``x`` in: its own weights' (fp32), but under autocast ``x``'s own
        when that is autocast's dtype and the method says every op on its input is a matmul or the dropout
        (``autocast_input``): autocast runs the matmuls in its dtype anyway, so an fp32 copy of a bf16
        ``x`` would be cast straight back (copies of the input and of its gradient each way: in an H200
        profile, copies took 27 ms of ``lora``'s 59 ms a step over the floor; README "Performance")."""
        dtype = next(iter(self._parameters.values())).dtype if self._parameters else self.base.weight.dtype
        if self._autocast_input and x.dtype != dtype and x.is_floating_point():
            kind = x.device.type
            if (
                is_autocast_available(kind)
                and torch.is_autocast_enabled(kind)
                and x.dtype == torch.get_autocast_dtype(kind)
            ):
                return x.dtype
        return dtype

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or self.gate == 0.0:
            return self.base(x)
        dtype = self._compute_dtype(x)
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
            return y + (F.linear(h, w) * scale).to(y.dtype).view(y.shape)  # h may be the fused node's 2-D rows
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), w.t(), alpha=scale)
        return out.view(y.shape)

    def _weight_delta(self) -> Tensor:
        """``scaling · ΔW`` laid out as the base stores its weight (a ``Conv1D``'s is in x out: ΔW transposed)."""
        delta = self.scaling * self.delta_weight()
        return delta.t() if stores_transposed(self.base) else delta

    def merge(self) -> None:
        if not self.merged:
            w = self.base.weight
            w.data += self._weight_delta().to(w.dtype)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            w.data -= self._weight_delta().to(w.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"method={type(self).name}, scaling={self.scaling:g}"


# The model-level names moved to harness.adapter_model, which imports this module (AdapterLinear, Site,
# SharedTensors): served from here on first use (PEP 562), so that ``from harness.adapter import attach`` works as
# before the split without an import cycle.
_MOVED = frozenset(
    {
        "ADAPTER_CONFIG",
        "ADAPTER_WEIGHTS",
        "CONFIG_METADATA",
        "Adapter",
        "attach",
        "find_targets",
        "linear_names",
        "load_adapter",
    }
)


def _fuses_input(cls: type[AdapterLinear], config: AdapterConfig | None) -> bool:
    """``AdapterLinear.fuses_input`` of a class under ``config`` (every helper counted without one)."""
    return cls.input_weights is not AdapterLinear.input_weights and cls.follows_delta("factors_from", config=config)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("harness.adapter_model"), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value
