"""The options every method shares, and turning user options (Python or CLI strings) into a config."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.registry import unknown_choice

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
_REGEX_CHARS = re.compile(r"[*+?\[\](){}|^$\\]")


SELECTIONS = ("importance", "random")  # how the Reducer picks the layers that train


@dataclass(frozen=True)
class ReducerConfig:
    """EffiLoRA's Reducer (spec: "The Reducer"). ``k`` wins over ``drop_ratio = 1 - K/L``."""

    k: int | None = None
    drop_ratio: float = 0.25  # our default: the paper leaves K open (Fig. 5 is flat up to 0.75)
    selection: str = "importance"
    interval: int = 10
    rollouts: int = 3
    n_suppressed: int | None = None  # None: L // 2
    suppression: float = 0.25
    score_lr: float = 10.0
    # None: the seed torch was last seeded with when the adapter was attached, which `harness run` sets to the
    # run's seed, so each seed draws its own layers (records before 2026-12-04 have 0: one stream for every seed)
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_choice("selection", self.selection, SELECTIONS)
        for name in ("k", "n_suppressed", "interval", "rollouts"):  # counts: the CLI's strings are parsed as integers,
            # the Python API's values were not (a review: k=2.0 attached and failed at the first step with torch's
            # TypeError; interval=2.5 scored only at steps 5, 10, ...)
            value = getattr(self, name)
            if not (value is None and name in ("k", "n_suppressed")) and not _is_int(value):
                raise ValueError(
                    f"reducer {name} must be an integer (got {value!r}, a {type(value).__name__}); give an int, "
                    f"e.g. {name}=2"
                )
        if self.k is not None and self.k < 1:
            raise ValueError(f"reducer k must be >= 1 (got {self.k})")
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1) (got {self.drop_ratio}); it is 1 - K/L")
        for name in ("interval", "rollouts"):
            if getattr(self, name) < 1:
                raise ValueError(f"reducer {name} must be >= 1 (got {getattr(self, name)})")
        if self.n_suppressed is not None and self.n_suppressed < 1:
            raise ValueError(
                f"reducer n_suppressed must be >= 1, or unset for half the layers (got {self.n_suppressed})"
            )
        if not 0.0 <= self.suppression < 1.0:  # NaN fails too
            raise ValueError(
                f"reducer suppression must be in [0, 1): the scale of a suppressed layer (got {self.suppression})"
            )
        if not (math.isfinite(self.score_lr) and self.score_lr > 0):
            raise ValueError(f"reducer score_lr must be a finite number > 0 (got {self.score_lr})")
        if self.seed is not None and not _is_seed(self.seed):
            raise ValueError(
                f"reducer seed must be an integer in 0..{SEED_MAX}, or None for the run's (got {self.seed!r})"
            )

    def resolve_k(self, num_layers: int) -> int:
        """K: ``k``, else ``round(L * (1 - drop_ratio))``, Python's round, which takes a half to the even number
        (L = 30 at 0.25 keeps 22, not 23; L = 2 keeps 2): kept as the committed records ran it. A drop_ratio > 0
        that keeps every layer leaves the Reducer off; a warning (stderr, once a process) says so."""
        k = self.k if self.k is not None else round(num_layers * (1.0 - self.drop_ratio))
        if not 1 <= k <= num_layers and self.k is None:  # K from drop_ratio: name what the user gave
            raise ValueError(
                f"reducer drop_ratio={float(self.drop_ratio)!r} keeps K = round({num_layers} x "
                f"{1.0 - self.drop_ratio:g}) = {k} of the {num_layers} adapted layers, and K must be in "
                f"1..{num_layers}: give a smaller drop_ratio, or k=1 in its place (one layer trains a step)"
            )
        if not 1 <= k <= num_layers:
            raise ValueError(f"reducer k={k} is outside 1..{num_layers} (the model has {num_layers} adapted layers)")
        if self.k is None and self.drop_ratio > 0 and k == num_layers and (self.drop_ratio, k) not in _WARNED_K:
            _WARNED_K.add((self.drop_ratio, k))  # once: a run attaches its adapter more than once (checks, FLOPs)
            turn_on = f"give k={k - 1} or a larger drop_ratio to turn it on" if k > 1 else "one layer has none to drop"
            print(
                f"warning: drop_ratio={float(self.drop_ratio)!r} keeps K = round({num_layers} x "
                f"{1.0 - self.drop_ratio:g}) = {k} of the {num_layers} adapted layers, all of them: the Reducer is off "
                f"(every layer trains every step); {turn_on}",
                file=sys.stderr,
            )
        return k


_WARNED_K: set[tuple[float, int]] = set()  # (drop_ratio, L) already warned about as keeping every layer


SEED_MAX = 2**32 - 1  # a seed, as --seeds takes it (a larger one overflowed torch's generator, naming no option)


def _is_int(value: object) -> bool:
    """An integer, not a bool (True is 1 to Python, and to torch a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seed(value: object) -> bool:
    return _is_int(value) and 0 <= value <= SEED_MAX


# method options that set the Reducer's fields where the method's own config has no field of that name
# (its seed as reducer_seed: a method option "seed" would read as the run's own --seeds)
REDUCER_SHORTCUTS = (*(f.name for f in dataclasses.fields(ReducerConfig) if f.name != "seed"), "reducer_seed")
_SHORTCUT_FIELD = {"reducer_seed": "seed"}  # a shortcut -> the ReducerConfig field it sets, where they differ


@dataclass(frozen=True)
class AdapterConfig:
    """Options common to every method; a method subclasses this and adds its own fields."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] | str = DEFAULT_TARGETS  # names (suffix match) or one regex (full match)
    heads: int = 4  # B heads m; read by the multi-head methods only
    reducer: ReducerConfig | None = None

    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        # the CLI's strings are parsed by the field's type; the Python API's values were not (a review: rank=8.0 and
        # heads=2.0 failed inside torch.empty, train_shared_a=0 in torch's requires_grad, targets=None as "'NoneType'
        # object is not iterable"): each refused here, naming the option
        for name, said, example in (("r", "rank r", 8), ("heads", "heads", 4)):
            if not _is_int(value := getattr(self, name)):
                raise ValueError(
                    f"{said} must be an integer (got {value!r}, a {type(value).__name__}); give an int, e.g. "
                    f"{name}={example}"
                )
        for f in dataclasses.fields(self):  # a method's own switches too (EffiLoRA's train_shared_a)
            if f.type in (bool, "bool") and not isinstance(value := getattr(self, f.name), bool):
                raise ValueError(
                    f"option {f.name} must be True or False (got {value!r}, a {type(value).__name__}); give a bool, e.g. "
                    f"{f.name}=False"
                )
        object.__setattr__(self, "targets", _checked_targets(self.targets))
        if self.r < 1:
            raise ValueError(f"rank r must be >= 1 (got {self.r})")
        if not self.alpha > 0 or not math.isfinite(self.alpha):  # NaN fails every comparison: not > 0
            raise ValueError(f"alpha must be a finite number > 0 (got {self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.heads < 1:
            raise ValueError(f"heads must be >= 1 (got {self.heads})")
        for name, valid in self.choices.items():
            _check_choice(name, getattr(self, name), valid)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(self.targets, tuple):
            d["targets"] = list(self.targets)
        return d


def _checked_targets(value: Any) -> tuple[str, ...] | str:
    """``targets`` as the config keeps it: a string (one regex, as given), or the names as a tuple (a list given is
    one); ``ValueError`` for anything else, saying what to give."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(
        f"option targets must be a string or a list of strings (got {value!r}, a {type(value).__name__}); give module "
        "names such as 'q_proj,v_proj' or ['q_proj', 'v_proj'], or a regex matched against full module names"
    )


def parse_targets(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...] | str:
    """``"q_proj,v_proj"`` -> names; a string with regex characters stays one regex."""
    value = _checked_targets(value)
    if isinstance(value, str):
        if _REGEX_CHARS.search(value):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"targets regex {value!r} does not compile ({exc}); give module names such as q_proj,v_proj "
                    "or a valid regex matched against full module names, e.g. '.*\\.(q|v)_proj'"
                ) from None
            return value
        value = value.split(",")
    names = tuple(v.strip() for v in value if v.strip())
    if not names:
        raise ValueError("targets is empty; give module names such as q_proj,v_proj or a regex")
    return names


def make_config(config_cls: type[AdapterConfig], options: dict[str, Any], method: str) -> AdapterConfig:
    """Build ``config_cls`` from keyword options; CLI strings are converted to the field's type."""
    options = dict(options)
    if "rank" in options:
        rank = options.pop("rank")
        if "r" in options and _coerce("r", options["r"], int) != _coerce("r", rank, int):  # one would win silently
            raise ValueError(f"rank={rank!r} and r={options['r']!r} both set the adapter's rank: give one")
        options["r"] = rank
    reducer_keys = set(REDUCER_SHORTCUTS)
    shortcuts = {k: options.pop(k) for k in list(options) if k in reducer_keys and k not in _field_names(config_cls)}
    valid = sorted(_field_names(config_cls) | reducer_keys | {"rank"})
    for key in options:
        if key not in _field_names(config_cls):
            raise ValueError(unknown_choice("option", key, valid, where=f" for method {method!r}"))
    hints = typing.get_type_hints(config_cls)
    kwargs = {key: _coerce(key, value, hints[key]) for key, value in options.items() if key != "reducer"}
    if "targets" in kwargs:
        kwargs["targets"] = parse_targets(kwargs["targets"])
    default_reducer = _field_default(config_cls, "reducer")
    reducer = _make_reducer(options["reducer"], default_reducer) if "reducer" in options else default_reducer
    if "k" in shortcuts:  # k=none is k unset (drop_ratio decides K): coerced before it is taken as set
        shortcuts["k"] = _coerce("k", shortcuts["k"], int | None)
    if shortcuts.get("k") is not None and "drop_ratio" in shortcuts:  # k would win silently (both enter the run id)
        raise ValueError(
            f"k={shortcuts['k']} and drop_ratio={shortcuts['drop_ratio']} both set the Reducer's K (drop_ratio = "
            "1 - K/L): give one"
        )
    if "reducer_seed" in shortcuts:  # checked even where it is then ignored: a typo is refused on every method
        seed = _coerce("reducer_seed", shortcuts["reducer_seed"], int | None)
        if seed is not None and not _is_seed(seed):
            raise ValueError(f"option reducer_seed={shortcuts['reducer_seed']!r} must be an integer in 0..{SEED_MAX}")
        shortcuts["reducer_seed"] = seed
    if reducer is None:  # no Reducer to set: a shortcut left unset (k=none, n_suppressed=none) sets nothing, and
        # the seed of a Reducer the method does not run seeds nothing: neither turns one on (a review: k=none did)
        hints = typing.get_type_hints(ReducerConfig)
        shortcuts = {k: v for k, v in shortcuts.items() if _coerce(k, v, hints[_SHORTCUT_FIELD.get(k, k)]) is not None}
        if set(shortcuts) == {"reducer_seed"}:
            shortcuts = {}
    if shortcuts and "reducer" in options and reducer is None:
        given = ", ".join(f"{k}={v}" for k, v in shortcuts.items())
        raise ValueError(
            f"reducer={options['reducer']} turns the Reducer off, and {given} sets it: leave out one of them"
        )
    _check_same_as_reducer(options.get("reducer"), shortcuts)
    if shortcuts:
        reducer = dataclasses.replace(
            reducer or ReducerConfig(),
            **{
                _SHORTCUT_FIELD.get(k, k): _coerce(
                    k, v, typing.get_type_hints(ReducerConfig)[_SHORTCUT_FIELD.get(k, k)]
                )
                for k, v in shortcuts.items()
            },
        )
    reducer = _one_k(reducer, shortcuts, options.get("reducer"))
    return config_cls(**kwargs, reducer=reducer)


def _one_k(reducer: ReducerConfig | None, shortcuts: dict[str, Any], given: Any) -> ReducerConfig | None:
    """The merged Reducer, K set one way: ``ValueError`` where the user gave both a ``k`` and a ``drop_ratio``
    (shortcuts, or a ``reducer={...}`` / ``ReducerConfig`` beside them: ``k`` won silently and the record carried
    the ignored ``drop_ratio``); a ``drop_ratio`` given alone replaces a K the method's default Reducer sets, and a
    ``k`` given alone wins over its default ``drop_ratio``. The method's defaults are not the user's: a plugin whose
    default Reducer sets a ``drop_ratio`` (or a ``k``) takes the other one."""
    if reducer is None:
        return None
    default = _field_default(ReducerConfig, "drop_ratio")
    explicit = _make_reducer(given) if given is not None and not isinstance(given, str) else None
    k = shortcuts.get("k") is not None or (explicit is not None and explicit.k is not None)
    drop = "drop_ratio" in shortcuts or (explicit is not None and explicit.drop_ratio != default)
    if k and drop:
        k_said, drop_said = (name if name in shortcuts else f"the reducer's {name}" for name in ("k", "drop_ratio"))
        raise ValueError(
            f"{k_said}={reducer.k} and {drop_said}={reducer.drop_ratio} both set the Reducer's K "
            "(drop_ratio = 1 - K/L): give one"
        )
    if drop and reducer.k is not None:  # the method's default K, replaced by the drop_ratio given
        return dataclasses.replace(reducer, k=None)
    return reducer


def config_from_dict(config_cls: type[AdapterConfig], data: dict[str, Any], method: str = "") -> AdapterConfig:
    """The config a saved adapter's ``adapter_config.json`` holds (``to_dict``'s). ``ValueError`` naming an option
    ``config_cls`` has not (a review: "LoraConfig.__init__() got an unexpected keyword argument"): saved by a newer
    harness, or edited."""
    data = dict(data)
    reducer = data.pop("reducer", None)
    for cls, given, where in ((config_cls, data, ""), (ReducerConfig, reducer or {}, "reducer ")):
        if unknown := sorted(set(given) - _field_names(cls) - {"reducer"}):
            raise ValueError(
                unknown_choice(
                    f"{where}option",
                    unknown[0],
                    sorted(_field_names(cls) - {"reducer"}),
                    where=f" for method {method!r}" if method else "",
                )
                + " (saved by a newer version of the harness, or edited by hand: this one cannot load it; save the "
                "adapter again with this version, or upgrade the harness)"
            )
    if isinstance(data.get("targets"), list):
        data["targets"] = tuple(data["targets"])
    return config_cls(**data, reducer=ReducerConfig(**reducer) if reducer else None)


def _check_same_as_reducer(value: Any, shortcuts: dict[str, Any]) -> None:
    """``ValueError`` where the ``reducer`` option names a field (``reducer=random``: the selection; a dict: its
    keys) that a shortcut sets to another value (the shortcut won silently: ``reducer=importance`` with
    ``selection=random`` ran random)."""
    if isinstance(value, str) and value.strip().lower() in SELECTIONS:
        named = {"selection": value.strip().lower()}
    elif isinstance(value, dict):
        named = value
    else:
        return
    hints = typing.get_type_hints(ReducerConfig)
    for key, given in shortcuts.items():
        name = _SHORTCUT_FIELD.get(key, key)
        if name in named and _coerce(key, given, hints[name]) != named[name]:
            said = value if isinstance(value, str) else f"{{{name!r}: {named[name]!r}}}"
            what = "the selection" if name == "selection" else f"the Reducer's {name}"
            raise ValueError(f"reducer={said} and {key}={given} both set {what}: give one")


def _make_reducer(value: Any, default: ReducerConfig | None = None) -> ReducerConfig | None:
    """The Reducer ``reducer=value`` asks for: ``on`` (or True) and a selection word start from the method's
    ``default`` Reducer where it has one (a review: they dropped a plugin default's K, interval, ..., which
    ``selection=random`` kept); a dict or a ``ReducerConfig`` is the Reducer given."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    if isinstance(value, str):
        try:
            value = parse_bool(value.strip())  # the words a boolean option takes: on/off, true/false, yes/no, 1/0
        except ValueError:
            if value.strip().lower() not in SELECTIONS:
                raise ValueError(
                    f"reducer={value!r} not understood; use on or off (true/false, yes/no, 1/0), "
                    f"{' or '.join(SELECTIONS)} (the selection), or none"
                ) from None
            return dataclasses.replace(default or ReducerConfig(), selection=value.strip().lower())
    if value is None or value is False:
        return None
    if value is True:
        return default or ReducerConfig()
    if isinstance(value, ReducerConfig):
        return value
    if isinstance(value, dict):
        return ReducerConfig(**value)
    raise ValueError(
        f"reducer={value!r} not understood; use None, True, 'importance', 'random' or a dict of ReducerConfig fields"
    )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value
    args = typing.get_args(hint) or (hint,)
    if value.lower() == "none" and type(None) in args:
        return None
    # a Literal's own values (``Literal["auto"] | int`` takes "auto"; ``Literal[1, 2]`` takes "1" as 1)
    members = [v for t in (hint, *args) if typing.get_origin(t) is typing.Literal for v in typing.get_args(t)]
    for member in members:
        if isinstance(member, bool) and int in args and value.strip() in ("0", "1"):
            continue  # a digit where the hint takes an int too is that int (``Literal[False] | int``: "1" is 1, "0" 0)
        if member is None or isinstance(member, bool):  # the words "none" and a boolean's (on/off, 1/0, ...)
            try:
                if (None if value.lower() == "none" else parse_bool(value)) is member:
                    return member
            except ValueError:
                pass
        elif str(member) == value:
            return member
    kinds = [f"one of {', '.join(map(str, members))}"] if members else []
    for typ, kind in ((bool, "true or false"), (int, "an integer"), (float, "a number")):
        if typ in args:  # every type the hint allows is tried (``int | float`` takes 0.5), in this order
            try:
                return parse_bool(value) if typ is bool else typ(value)
            except ValueError:
                kinds.append(kind)
    if kinds and str not in args:
        raise ValueError(f"option {key}={value!r} must be {' or '.join(kinds)}")
    return value


def parse_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
