"""The model-level side of ``attach`` (``harness.adapter`` holds the wrapper, ``AdapterLinear``): the ``Adapter``
handle (accounting, adapter-only state, save/load, merge, the training hooks), ``attach``/``load_adapter``, and which
linears a target names. ``harness.adapter`` still exports these names."""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from harness.adapter import SHARED, AdapterLinear, SharedTensors, Site, is_linear
from harness.atomic import write_bytes, write_json
from harness.config import AdapterConfig, config_from_dict, make_config
from harness.fastpath import SharedInput
from harness.reducer import Reducer
from harness.registry import METHODS

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONFIG_METADATA = "adapter_config"  # the weights file's metadata key holding adapter_config.json's content (JSON)

# True only within ``rank_unchecked``: attach then makes an r above a target's smaller side (see there)
_RANK_UNCHECKED: ContextVar[bool] = ContextVar("rank_unchecked", default=False)


_F = TypeVar("_F", bound=Callable[..., Any])


def _attached(method: _F) -> _F:
    """A method of ``Adapter`` that reads its wrappers or the model's adapter tensors: ``ValueError`` once ``unload``
    has taken them off (a review: a save then wrote an empty adapter over a good one, a handle of an earlier attach
    saved the next attach's weights under its own config, and ``merge`` did nothing)."""

    @functools.wraps(method)
    def checked(self: Adapter, *args: Any, **kwargs: Any) -> Any:
        if self.unloaded:
            raise ValueError(
                f"this adapter was unloaded (unload() took its wrappers off the model), so Adapter.{method.__name__} "
                "has nothing to act on; attach again (harness.attach or harness.load_adapter) and use the handle "
                "that returns"
            )
        return method(self, *args, **kwargs)

    return checked  # type: ignore[return-value]


@contextmanager
def rank_unchecked() -> Iterator[None]:
    """Within it, ``attach`` skips its rank check, for counting LoRA's FLOPs as the reference of a method whose
    ``r`` is no rank (``rank_bounded = False``, ``harness.runner_flops.flops_record``): what LoRA would compute at
    that r is still a number of products, though LoRA is refused training at it. Never for a model that trains."""
    token = _RANK_UNCHECKED.set(True)
    try:
        yield
    finally:
        _RANK_UNCHECKED.reset(token)


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
        self.unloaded = False  # unload() sets it: the handle is spent (``_attached``)
        self._trainable = _unique(p for p in self.adapter_parameters() if p.requires_grad)
        groups: dict[str, list[AdapterLinear]] = {}
        for layer in layers.values():
            groups.setdefault(layer.site.layer, []).append(layer)
        self.layer_groups = groups
        self.reducer = Reducer(config.reducer, list(groups.values())) if config.reducer else None
        self._requires_grad_before: dict[str, bool] = {}  # attach() fills it: what unload() restores

    # -- accounting ------------------------------------------------------------------------------
    @_attached
    def adapter_parameters(self) -> list[nn.Parameter]:
        return _unique(p for n, p in self.model.named_parameters(remove_duplicate=False) if _is_adapter(n))

    @_attached
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The tensors that train (fixed at attach; the Reducer only pauses some per step)."""
        return list(self._trainable)

    @property
    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

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
    @_attached
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

    @_attached
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        own = self.state_dict()
        if on_meta := [n for n, t in own.items() if t.is_meta]:  # copy_ into a meta tensor copies nothing
            raise ValueError(_on_meta("load weights into", on_meta[0]))
        if any(layer.merged for layer in self.layers.values()):  # unmerge would subtract the new Δ, not the old
            raise ValueError("the adapter is merged into the base weights; call unmerge() before loading weights")
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

    @_attached
    def save(self, directory: str | Path) -> Path:
        """Write the adapter weights (safetensors) and the method config (JSON), each atomically. The weights file's
        metadata holds the config too, written with the weights: a save interrupted between the two files leaves
        new weights beside the old config, which ``load_adapter`` then refuses instead of loading with the old
        settings. The tensors are gathered before the folder is made: a save that fails there leaves no folder."""
        state = self.state_dict()
        if on_meta := [n for n, t in state.items() if t.is_meta]:
            raise ValueError(_on_meta("save", on_meta[0]))
        # each copied: a plugin wrapper that keeps a shared tensor as an attribute too (``self.vera_A =
        # shared.get_or_create(...)``) holds it under two names, which safetensors refuses to save where they share
        # memory (a review: on a CPU the run trained to its end, then failed at every save); a load fills both alike
        tensors = {n: t.detach().to("cpu", copy=True).contiguous() for n, t in state.items()}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.method, "config": self.config.to_dict()}
        # made in memory, then written (``write_bytes``): a full disk is an OSError, which stops a sweep
        write_bytes(
            directory / ADAPTER_WEIGHTS, save(tensors, {"method": self.method, CONFIG_METADATA: json.dumps(meta)})
        )
        write_json(directory / ADAPTER_CONFIG, meta)
        return directory

    def file_size_bytes(self, directory: str | Path) -> int:
        return (Path(directory) / ADAPTER_WEIGHTS).stat().st_size

    @_attached
    def use_fast_path(self, enabled: bool = True) -> None:
        """``True``: wrappers whose method has ``delta_factors`` take the fast path (module doc). ``False``
        (the default): every wrapper computes ``delta(x)`` with its own ``nn.Dropout`` draw, the reference
        the parity tests and ``harness bench`` compare against."""
        for layer in self.layers.values():
            cls = type(layer)
            offered = cls.offers_fast_path(self.config)  # per config: EffiLoRA's router only where heads > 1
            inherited = cls.input_weights is not AdapterLinear.input_weights  # a built-in's fused route, below delta
            if enabled and not offered and (inherited or cls.delta_factors is not AdapterLinear.delta_factors):
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
    @_attached
    def merge(self) -> None:
        if not self.method_cls.is_mergeable(self.config):
            raise ValueError(_not_mergeable(self.method_cls, self.config))
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

    @_attached
    def unmerge(self) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                layer.unmerge()

    @_attached
    def unload(self) -> nn.Module:
        """Take the adapter off (unmerged first): the base linears back in their places, the model's parameters
        as trainable as before ``attach``. Returns the model; this handle is spent: what reads its wrappers (save,
        merge, state_dict, the hooks, ...) raises ``ValueError`` after it. A merged base gets its weights back within
        the rounding of their dtype (unmerge subtracts Δ again, as peft's does: bf16 rounds twice)."""
        self.unmerge()
        for name, layer in self.layers.items():
            self.model.set_submodule(name, layer.base)
        if isinstance(getattr(self.model, SHARED, None), SharedTensors):
            delattr(self.model, SHARED)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad_before.get(name, p.requires_grad))
        self.layers, self.layer_groups, self._trainable = {}, {}, []
        self.unloaded = True
        return self.model

    # -- hooks the training loop calls ---------------------------------------------------------------
    @_attached
    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    @_attached
    def on_step_begin(self, step: int, val_loss_fn: Callable[[], float] | None) -> None:
        if self.reducer is not None:
            self.reducer.on_step_begin(step, val_loss_fn)

    @_attached
    def on_step_end(self, moved: bool) -> None:
        """After the optimizer step; ``moved``: it had supervised tokens (else no gradient, nothing moved)."""
        if self.reducer is not None and moved:
            self.reducer.count_update()

    @_attached
    def extra_loss(self) -> Tensor | float | None:
        """The sum of the wrappers' ``extra_loss`` terms for the micro-batch just run, or None if none has one."""
        terms = [t for layer in self.layers.values() if not layer.merged and (t := layer.extra_loss()) is not None]
        return functools.reduce(operator.add, terms) if terms else None  # a float, a CPU scalar beside CUDA: added

    @_attached
    def skipped_layers(self) -> list[str]:
        """The wrappers that add nothing now (merged, or gate 0: a layer the Reducer suppresses fully), by name."""
        return [name for name, layer in self.layers.items() if layer.merged or layer.gate == 0.0]

    @property
    def pauses_parameters(self) -> bool:
        """True when some trainable tensors get no gradient in some steps (DDP must then allow it)."""
        return self.reducer is not None and self.reducer.active

    @_attached
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

    @_attached
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

    @_attached
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
    bounded = cls.rank_bounded and not _RANK_UNCHECKED.get()
    if bounded and config.r > (side := min(min(t.d_in, t.d_out) for t in sites.values())):
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
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # a save cut short, a file copied in part
        raise ValueError(
            f"{str(meta_file)!r} is not readable JSON ({exc}): it is damaged; save the adapter again"
        ) from None
    if not isinstance(meta, dict) or not {"method", "config"} <= meta.keys():  # a peft folder names its files so too
        raise ValueError(
            f"{str(meta_file)!r} was not written by Adapter.save() (it has no method and config; a peft "
            "adapter's folder, whose files have the same names, is not one: load it with peft's PeftModel)"
        )
    weights_file = directory / ADAPTER_WEIGHTS
    try:
        with safe_open(str(weights_file), "pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            saved = (f.metadata() or {}).get(CONFIG_METADATA)  # None: saved before the weights held their config
        saved_meta = json.loads(saved) if saved is not None else None
    except (SafetensorError, json.JSONDecodeError) as exc:  # a file cut short: safetensors' "invalid header length"
        raise ValueError(
            f"{str(weights_file)!r} is not a readable safetensors file ({exc}): it is damaged; save the adapter again"
        ) from None
    differ = _config_differs(saved_meta, meta) if saved_meta is not None else ""
    torn = differ and (
        f"{str(directory)!r}: {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG} come from different saves (the weights were "
        f"saved with {differ}; a save interrupted between its two files leaves them so): save the adapter again"
    )
    cls = METHODS.get(meta["method"])
    try:
        config = config_from_dict(cls.config_cls, meta["config"], cls.name)
    except ValueError as exc:  # an option this harness has not (saved by a newer one), or a value it refuses
        raise ValueError(f"{str(meta_file)!r}: {exc}") from None
    adapter = attach(model, cls, config=config)
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


def _on_meta(what: str, name: str) -> str:
    """The refusal to ``what`` (``save``, ``load weights into``) an adapter whose tensor ``name`` is on the meta device
    (a model built without its weights): a load copied nothing into it, silently, and a save failed in torch after
    making its folder (a review)."""
    return (
        f"cannot {what} this adapter: its tensors ({name}, ...) are on the meta device, which holds no values (the "
        "model was built without its weights, as for counting FLOPs); materialise the model's weights first "
        "(build it on a real device, or model.to_empty(device=...) and load its weights), then attach the adapter "
        "to it (a meta model is for counting only)"
    )


def _not_mergeable(cls: type[AdapterLinear], config: AdapterConfig) -> str:
    """Why ``cls`` at ``config`` cannot be merged, and how it could be: the options whose other value makes
    ``cls.is_mergeable`` true (EffiLoRA's ``heads=1``: no router), read off the method, not named here."""
    said = f"method {cls.name!r} with this config cannot be merged into W"
    if not cls.mergeable:
        return f"{said}: its Δ is input-dependent (the method sets mergeable = False); keep the adapter unmerged"
    if merges := _mergeable_with(cls, config):
        now = ", ".join(f"{name}={getattr(config, name)!r}" for name, _ in merges)
        return (
            f"{said}: its Δ is input-dependent at {now}; it merges with "
            f"{' or '.join(f'{n}={v!r}' for n, v in merges)}: attach it so to merge, or keep the adapter unmerged"
        )
    if cls.delta_weight is AdapterLinear.delta_weight or not cls.follows_delta("delta_weight", config=config):
        return (
            f"{said}: it has no delta_weight of its own delta (delta_weight(): Δ as one matrix, which merging adds "
            "into W; an inherited one computes another Δ); define delta_weight() beside its delta to merge it, or keep "
            "the adapter unmerged"
        )
    return f"{said}: the method's is_mergeable() says it cannot at this config; keep the adapter unmerged"


def _mergeable_with(cls: type[AdapterLinear], config: AdapterConfig) -> list[tuple[str, Any]]:
    """The options of ``config`` that, given another value alone, make ``cls.is_mergeable`` true: each tried at its
    choices, its default, the other bool, or 1 for an integer (one head). The rank, scale, dropout, targets and
    Reducer are left out: a Δ that merges merges at any of them."""
    found = []
    for f in dataclasses.fields(config):
        if f.name in ("r", "alpha", "dropout", "targets", "reducer"):
            continue
        value = getattr(config, f.name)
        tries = [*config.choices.get(f.name, ()), f.default]
        if isinstance(value, bool):
            tries.append(not value)
        elif isinstance(value, int):
            tries.append(1)
        for other in tries:
            if other is dataclasses.MISSING or type(other) is not type(value) or other == value:
                continue
            try:
                merges = cls.is_mergeable(dataclasses.replace(config, **{f.name: other}))
            except (ValueError, TypeError):  # a value the config refuses
                continue
            if merges:
                found.append((f.name, other))
                break
    return found


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
            raise ValueError(_regex_matches_none(targets, names, short) + _not_linear(model, pattern.fullmatch))
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


def _regex_matches_none(regex: str, names: list[str], short: list[str]) -> str:
    """The no-match message of a targets regex: it is matched against whole module names (a review: ``q_proj|v_proj``
    matched nothing, and the message listed q_proj and v_proj), so one whole name, and the regex that matches the
    plain names it gives in every block (``.*\\.(q_proj|v_proj)``) where that matches something."""
    if not names:
        return f"target regex {regex!r} matches no linear layer; the model has none"
    given = regex.split("|") if re.fullmatch(r"\w+(\.\w+)*(\|\w+(\.\w+)*)*", regex) else []
    example = next((n for n in names if any(n == g or n.endswith("." + g) for g in given)), names[0])
    text = f"target regex {regex!r} matches no linear layer: it must match a whole module name, such as {example!r}"
    if given:
        escaped = [re.escape(g) for g in given]
        suggested = rf".*\.{escaped[0]}" if len(escaped) == 1 else rf".*\.({'|'.join(escaped)})"
        if any(re.fullmatch(suggested, n) for n in names):
            text += f" (for these names in every block: '{suggested}', or the names alone: {','.join(given)})"
    return text + f"; the model's linear layers end in: {', '.join(short)}"


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
