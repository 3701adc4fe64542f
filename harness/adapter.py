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

import functools
import json
import math
import operator
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.amp import is_autocast_available

from harness.atomic import atomic_path, write_json
from harness.config import AdapterConfig, config_from_dict, make_config
from harness.fastpath import SharedInput
from harness.reducer import Reducer
from harness.registry import METHODS

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONFIG_METADATA = "adapter_config"  # the weights file's metadata key holding adapter_config.json's content (JSON)
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
        self._autocast_input = type(self).autocast_input and type(self).follows_delta("autocast_input")
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
        return type(self).input_weights is not AdapterLinear.input_weights

    @classmethod
    def offers_fast_path(cls) -> bool:
        """Whether the method defines a fast path of its own: ``delta_factors``, or ``input_weights`` and
        ``factors_from``, where its ``delta`` is defined or below it (an inherited one computes another Δ)."""
        own = cls.delta_factors is not AdapterLinear.delta_factors and cls.follows_delta("delta_factors")
        fused = cls.input_weights is not AdapterLinear.input_weights and cls.follows_delta("factors_from")
        return own or fused

    @classmethod
    def follows_delta(cls, *names: str) -> bool:
        """Whether the methods ``names`` (a fast path's, ``delta_weight``) are defined where ``delta`` is or below
        it: a plugin that subclasses a built-in method and overrides only ``delta`` inherits the built-in's fast
        path and merge, which compute the built-in's Δ, not its own."""

        def owner(name: str) -> type:
            return next(k for k in cls.__mro__ if name in vars(k))

        return all(issubclass(owner(name), owner("delta")) for name in names)

    def delta_weight(self) -> Tensor:
        """``Δ`` as a ``d_out x d_in`` matrix, for merging (mergeable methods only)."""
        raise NotImplementedError(f"{type(self).name} cannot be merged")

    def reducer_parameters(self) -> list[nn.Parameter]:
        """Per-layer tensors the Reducer freezes in unselected layers (B heads and router)."""
        return []

    @classmethod
    def is_mergeable(cls, config: AdapterConfig) -> bool:
        return (
            cls.mergeable and cls.delta_weight is not AdapterLinear.delta_weight and cls.follows_delta("delta_weight")
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
        self._requires_grad_before: dict[str, bool] = {}  # attach() fills it: what unload() restores

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
        """Every tensor the adapter adds: its ``lora_*`` tensors and whatever else its wrappers keep beside their
        base layer (a frozen random basis, a buffer): ``load_adapter`` rebuilt those from the random state, and
        the loaded adapter computed something else."""
        own = tuple(f"{name}." for name in self.layers)
        bases = tuple(f"{name}.base." for name in self.layers)
        return {
            n: t
            for n, t in self.model.state_dict().items()
            if _is_adapter(n) or (n.startswith(own) and not n.startswith(bases))
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if any(layer.merged for layer in self.layers.values()):  # unmerge would subtract the new Δ, not the old
            raise ValueError("the adapter is merged into the base weights; call unmerge() before loading weights")
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing and not unexpected and not any(_is_adapter(n) for n in missing):
            raise ValueError(  # only what a method keeps beside lora_*: saved before those were (2026-12-06)
                f"the adapter state lacks the method's frozen tensors or buffers ({missing[:3]}): it was saved before "
                "the harness saved them (2026-12-06), so they cannot be restored; train it again (a run's checkpoint: "
                "delete it or use --force)"
            )
        if missing or unexpected:
            # only shared tensors' names differ: the layers match, the grouping into module types does not
            # (and of the same input widths, ``{type}_{d_in}``: a re-review: a model of another width differs in its
            # shared names only too)
            older = all(n.startswith(f"{SHARED}.") for n in missing + unexpected) and {
                n.rsplit("_", 1)[-1] for n in missing
            } == {n.rsplit("_", 1)[-1] for n in unexpected}
            raise ValueError(
                f"adapter state does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                + (
                    f" (only shared tensors, {SHARED}.*, differ: an adapter saved by older harness code, before "
                    "2026-12-06's layer/type grouping (an nn.Sequential's mlp.0 and mlp.2 are two module types "
                    "since), may name its shared tensors differently; train it again (a run's checkpoint: delete it "
                    "or use --force))"
                    if older
                    else ""
                )
            )
        # every shape before any copy: a refusal part-way left the tensors before it overwritten in the live adapter
        for name, tensor in state.items():
            if own[name].shape != tensor.shape:
                raise ValueError(
                    f"adapter tensor {name} has shape {tuple(tensor.shape)}, model expects {tuple(own[name].shape)}"
                )
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    def save(self, directory: str | Path) -> Path:
        """Write the adapter weights (safetensors) and the method config (JSON), each atomically. The weights file's
        metadata holds the config too, written with the weights: a save interrupted between the two files leaves
        new weights beside the old config, which ``load_adapter`` then refuses instead of loading with the old
        settings."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.detach().to("cpu").contiguous() for n, t in self.state_dict().items()}
        meta = {"method": self.method, "config": self.config.to_dict()}
        with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"method": self.method, CONFIG_METADATA: json.dumps(meta)})
        write_json(directory / ADAPTER_CONFIG, meta)
        return directory

    def file_size_bytes(self, directory: str | Path) -> int:
        return (Path(directory) / ADAPTER_WEIGHTS).stat().st_size

    def use_fast_path(self, enabled: bool = True) -> None:
        """``True``: wrappers whose method has ``delta_factors`` take the fast path (module doc). ``False``
        (the default): every wrapper computes ``delta(x)`` with its own ``nn.Dropout`` draw, the reference
        the parity tests and ``harness bench`` compare against."""
        for layer in self.layers.values():
            cls = type(layer)
            offered = cls.offers_fast_path()
            if enabled and not offered and (layer.fuses_input or cls.delta_factors is not AdapterLinear.delta_factors):
                warnings.warn(
                    f"method {self.method!r} overrides delta below its fast path (inherited from "
                    f"{cls.__mro__[1].__name__}): the fast path is off for it and every step computes its own delta",
                    stacklevel=2,
                )
                enabled = False
            elif enabled and not offered:
                warnings.warn(
                    f"method {self.method!r} has no fast path: every wrapper computes its own delta (use_fast_path "
                    "changes nothing for it)",
                    stacklevel=2,
                )
                enabled = False
            layer.fast_path = enabled and offered

    # -- merge -------------------------------------------------------------------------------------
    def merge(self) -> None:
        if not self.method_cls.is_mergeable(self.config):
            raise ValueError(
                f"method {self.method!r} with this config cannot be merged into W: its Δ is input-dependent, or it "
                "has no delta_weight of its own delta"
            )
        self._check_mergeable_weights()
        with torch.no_grad():
            for layer in self.layers.values():
                layer.merge()

    def _check_mergeable_weights(self) -> None:
        """``ValueError`` where adding Δ into a wrapped linear's weight would be wrong: the weight is shared with
        another parameter (a tied ``lm_head`` is the input embeddings: merging changes them too) or is not a
        floating-point tensor (a quantised layer's int8 or packed 4-bit weight, whose scale merge cannot see)."""
        uses: dict[int, int] = {}
        for _, p in self.model.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        for name, layer in self.layers.items():
            w = layer.base.weight
            if uses.get(id(w), 0) > 1:
                raise ValueError(
                    f"cannot merge into {name}: its weight is tied to another parameter (the input embeddings, with "
                    "tie_word_embeddings), which merging would change too; keep the adapter unmerged, as training "
                    "and scoring do, or untie the weights first"
                )
            if not w.is_floating_point():
                raise ValueError(
                    f"cannot merge into {name}: its weight is {w.dtype} (a quantised {type(layer.base).__name__}), "
                    "which Δ cannot be added to; keep the adapter unmerged"
                )

    def unmerge(self) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                layer.unmerge()

    def unload(self) -> nn.Module:
        """Take the adapter off (unmerged first): the base linears back in their places, the model's parameters
        as trainable as before ``attach``. Returns the model; this handle is spent. A merged base gets its weights
        back within the rounding of their dtype (unmerge subtracts Δ again, as peft's does: bf16 rounds twice)."""
        self.unmerge()
        for name, layer in self.layers.items():
            self.model.set_submodule(name, layer.base)
        if isinstance(getattr(self.model, SHARED, None), SharedTensors):
            delattr(self.model, SHARED)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad_before.get(name, p.requires_grad))
        self.layers, self.layer_groups, self._trainable = {}, {}, []
        return self.model

    # -- hooks the training loop calls ---------------------------------------------------------------
    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    def on_step_begin(self, step: int, val_loss_fn: Callable[[], float] | None) -> None:
        if self.reducer is not None:
            self.reducer.on_step_begin(step, val_loss_fn)

    def extra_loss(self) -> Tensor | float | None:
        """The sum of the wrappers' ``extra_loss`` terms for the micro-batch just run, or None if none has one."""
        terms = [t for layer in self.layers.values() if not layer.merged and (t := layer.extra_loss()) is not None]
        return functools.reduce(operator.add, terms) if terms else None  # a float, a CPU scalar beside CUDA: added

    def skipped_layers(self) -> list[str]:
        """The wrappers that add nothing now (merged, or gate 0: a layer the Reducer suppresses fully), by name."""
        return [name for name, layer in self.layers.items() if layer.merged or layer.gate == 0.0]

    @property
    def pauses_parameters(self) -> bool:
        """True when some trainable tensors get no gradient in some steps (DDP must then allow it)."""
        return self.reducer is not None and self.reducer.active

    def training_state(self) -> dict[str, Any]:
        """Hook state a checkpoint must carry to resume exactly: the Reducer's scores and RNG, and the fast path's
        learnt groups of wrappers that read one input (by name; without them the first step after a resume made
        their first matmuls one by one, another rounding than the uninterrupted run's stacked one)."""
        state: dict[str, Any] = {"reducer": self.reducer.state_dict()} if self.reducer is not None else {}
        names = {id(layer): name for name, layer in self.layers.items()}
        groups: dict[str, list[list[str]]] = {}
        for shared in {id(layer._input): layer._input for layer in self.layers.values()}.values():
            for which, learnt in (("groups", shared._groups), ("learning", shared._learning)):
                groups.setdefault(which, []).extend([names[id(r)] for r in readers] for readers in learnt.values())
        if any(groups.values()):
            state["fast_path_groups"] = groups
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        if self.reducer is not None and "reducer" in state:
            self.reducer.load_state_dict(state["reducer"])
        for which, lists in state.get("fast_path_groups", {}).items():
            for named in lists:
                if not all(name in self.layers for name in named):  # another adapter's: left to be learnt again
                    continue
                readers = [self.layers[name] for name in named]
                learnt = readers[0]._input._groups if which == "groups" else readers[0]._input._learning
                learnt[id(readers[0])] = readers  # keyed by the first reader, as SharedInput keeps them

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
    # before anything changes (a wrapped step list reads differently), and before a huge r's tensors are made (an
    # int64 overflow): the narrowest target bounds r
    sites = {name: Site.of(name, model.get_submodule(name), model) for name in names}
    if cls.rank_bounded and config.r > (side := min(min(t.d_in, t.d_out) for t in sites.values())):
        site = next(t for t in sites.values() if min(t.d_in, t.d_out) == side)
        raise ValueError(
            f"rank r={config.r} is above {site.name}'s smaller side ({side}: {site.d_in} in, {site.d_out} out): its "
            f"update cannot have a rank above {side}, and the rest would be parameters that add nothing; use "
            f"r <= {side} (--rank; a method whose r is not its update's rank sets rank_bounded = False)"
        )
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    shared = SharedTensors()
    layers: dict[str, AdapterLinear] = {}
    inputs: dict[str, SharedInput] = {}  # one per layer: its wrappers that read one tensor share its dropout
    try:
        model.requires_grad_(False)
        for name in names:
            base = model.get_submodule(name)
            layer = cls(base, config, sites[name], shared).train(base.training)
            named = layer.named_parameters()
            if unnamed := [n for n, p in named if p.requires_grad and not n.startswith("base.") and not _is_adapter(n)]:
                raise ValueError(
                    f"method {cls.name!r}: its trainable tensor {unnamed[0]!r} (in {name}) is not named lora_*: the "
                    "harness counts and trains the tensors whose name starts with lora_ (lora_A, lora_mix, ...); rename "
                    "it (a tensor that never trains may keep its name with requires_grad=False, or be a buffer: it is "
                    "saved too)"
                )
            object.__setattr__(layer, "_input", inputs.setdefault(layer.site.layer, SharedInput()))
            layers[name] = layer
            model.set_submodule(name, layer)
        if len(list(shared.parameters())):
            model.add_module(SHARED, shared)
        adapter = Adapter(model, cls, config, layers)  # the Reducer may refuse its settings for these layers
    except BaseException:  # a refusal, or a wrapper that failed part-way (out of memory): the model as it was given,
        for done, layer in layers.items():  # so that a retry (a smaller r, other settings) can attach to it
            model.set_submodule(done, layer.base)
        if getattr(model, SHARED, None) is shared:
            delattr(model, SHARED)
        for n, p in model.named_parameters():
            p.requires_grad_(before.get(n, p.requires_grad))
        raise
    adapter._requires_grad_before = before
    return adapter


def load_adapter(model: nn.Module, directory: str | Path) -> Adapter:
    """Attach the method saved in ``directory`` to ``model`` and load its weights; weights saved with another config
    than ``adapter_config.json``'s (the files of two saves) are refused."""
    directory = Path(directory)
    meta_file = directory / ADAPTER_CONFIG
    if not meta_file.is_file():
        raise ValueError(f"{str(directory)!r} holds no {ADAPTER_CONFIG}; pass a directory written by Adapter.save()")
    meta = json.loads(meta_file.read_text())
    if not isinstance(meta, dict) or not {"method", "config"} <= meta.keys():  # a peft folder names its files so too
        raise ValueError(
            f"{str(meta_file)!r} was not written by Adapter.save() (it has no method and config; a peft "
            "adapter's folder, whose files have the same names, is not one: load it with peft's PeftModel)"
        )
    with safe_open(str(directory / ADAPTER_WEIGHTS), "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        saved = (f.metadata() or {}).get(CONFIG_METADATA)  # None: saved before the weights held their config
    differ = _config_differs(json.loads(saved), meta) if saved is not None else ""
    torn = differ and (
        f"{str(directory)!r}: {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG} come from different saves (the weights were "
        f"saved with {differ}; a save interrupted between its two files leaves them so): save the adapter again"
    )
    cls = METHODS.get(meta["method"])
    adapter = attach(model, cls, config=config_from_dict(cls.config_cls, meta["config"]))
    try:
        try:
            adapter.load_state_dict(tensors)
        except ValueError as exc:
            if torn:  # weights that do not fit the config file's settings: why, beside what does not fit
                raise ValueError(f"{exc}; {torn}") from None
            raise
        if torn:  # weights that fit, saved with other settings (alpha): loaded, they would compute something else
            raise ValueError(torn)
    except BaseException:
        adapter.unload()  # the model as it was given, so that the caller can try another directory
        raise
    return adapter


def _config_differs(saved: dict[str, Any], meta: dict[str, Any]) -> str:
    """How the config the weights were saved with differs from ``adapter_config.json``'s (``alpha=8, not 64``);
    '' where they are the same (compared as JSON, so a float NaN equals itself)."""
    if json.dumps(saved, sort_keys=True) == json.dumps(meta, sort_keys=True):
        return ""
    if saved.get("method") != meta.get("method"):
        return f"method {saved.get('method')!r}, not {meta.get('method')!r}"
    ours, theirs = saved.get("config") or {}, meta.get("config") or {}
    keys = sorted(
        k
        for k in ours.keys() | theirs.keys()
        if json.dumps(ours.get(k), sort_keys=True) != json.dumps(theirs.get(k), sort_keys=True)
    )
    return ", ".join(f"{k}={ours.get(k)!r}, not {theirs.get(k)!r}" for k in keys[:4]) + (", ..." if keys[4:] else "")


def linear_names(model: nn.Module) -> list[str]:
    """The names of the model's layers the adapters can wrap (``is_linear``)."""
    return [n for n, m in model.named_modules() if is_linear(m)]


def find_targets(model: nn.Module, targets: tuple[str, ...] | str) -> list[str]:
    """Names of the ``nn.Linear`` modules matched by ``targets``; every target must match something."""
    names = linear_names(model)
    short = sorted({_target_name(n) for n in names})
    if isinstance(targets, str):
        pattern = re.compile(targets)
        found = [n for n in names if pattern.fullmatch(n)]
        if not found:
            raise ValueError(
                f"target regex {targets!r} matches no linear layer; the model's linear layers: {', '.join(short) or 'none'}"
                + _not_linear(model, pattern.fullmatch)
            )
        return found
    found = []
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            raise ValueError(
                f"target {target!r} matches no linear layer; the model's linear layers: {', '.join(short) or 'none'}"
                + _not_linear(model, lambda n, t=target: n == t or n.endswith("." + t))
            )
        found += hits
    return sorted(set(found), key=names.index)


def _target_name(name: str) -> str:
    """The shortest name that targets the linear ``name`` in every block: its own (``q_proj``), or a numbered one with
    its parent's (``to_out.0``, ``net.2``: the parent is a list, which is refused as a target). Where the parent is a
    number too (an ``nn.Sequential`` straight in a list of blocks: ``blocks.1.0``), no name targets it in every block
    (``1.0`` is block 1's alone): its full name."""
    parts = name.split(".")
    if not parts[-1].isdigit():
        return parts[-1]
    return name if len(parts) > 1 and parts[-2].isdigit() else ".".join(parts[-2:])


def _not_linear(model: nn.Module, matches: Callable[[str], bool]) -> str:
    """Where a target names modules that are not linear layers (an attention block, an MLP, a convolution): a
    sentence saying so, for the no-match message; '' where it names none."""
    matched = [(n, m) for n, m in model.named_modules() if n and matches(n)]
    if not matched:
        return ""
    kinds = sorted({type(m).__name__ for _, m in matched})
    # a GPT-2-style layer of another library: named Conv1D, with a 2-D weight (a real 1-D convolution's is 3-D)
    gpt2_like = [m for _, m in matched if type(m).__name__ == "Conv1D"]
    if any(getattr(getattr(m, "weight", None), "ndim", 0) == 2 for m in gpt2_like):
        other = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in gpt2_like})
        return (
            f" (it names {', '.join(kinds)} modules; of the Conv1D layers ({', '.join(other)}) transformers' own "
            "(transformers.pytorch_utils.Conv1D) is adapted, another library's or a model's own copy is not: use the "
            "transformers class, or an nn.Linear holding the weight transposed (weight.T))"
        )
    convolutions = [m for _, m in matched if isinstance(m, nn.modules.conv._ConvNd)]
    if len(convolutions) == len(matched):
        return (
            f" (it names {', '.join(kinds)} modules: convolutions are not adapted, only nn.Linear layers (and GPT-2-style "
            "Conv1D) are; name linear layers from the list instead)"
        )
    inside = sorted({_target_name(f"{n}.{sub}") for n, m in matched for sub, s in m.named_modules() if is_linear(s)})
    return (
        f" (it names {', '.join(kinds)} modules, which are not torch.nn.Linear: only nn.Linear layers (and GPT-2-style "
        f"Conv1D) are adapted{', not convolutions' if convolutions else ''}; "
        + (
            f"name the linear layers inside them: {', '.join(inside)})"
            if inside
            else "they hold no linear layer to adapt: name linear layers from the list instead)"
        )
    )


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
