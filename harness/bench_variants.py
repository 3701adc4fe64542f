"""What ``harness bench``'s ``--reducer`` variants and ``--also`` options make of the method options: each row's
options and config, the refusal of two rows that would time the same step, and the Reducer options a variant's row
does not time."""

from __future__ import annotations

import dataclasses
from typing import Any


def _refuse_same(flag: str, given: str, made: dict[str, Any], method: str) -> None:
    """Refuse ``given``'s config (the last of ``made``) where an earlier one of ``made`` is the same: two rows
    timing one step (``""``: the row an ``--also`` is compared with, so that option changes nothing)."""
    *earlier, (_, config) = made.items()
    for other, seen in earlier:
        if seen == config:
            what = f"{method}'s setting already (its row times it)" if not other else f"what {other!r} gives {method}"
            raise ValueError(f"{flag} {given!r} is {what}: it would time the same step twice; give another value")


def _paired_with(variants: list[tuple[str, Any]], base: Any) -> tuple[str, Any]:
    """The timed Reducer variant an ``--also`` row is built on and compared with: the one at the method's
    defaults where it is timed, else the first (``--reducer off``: the variant is the Reducer off too, and says so)."""
    return next(((v, c) for v, c in variants if c == base), variants[0])


def _variant_options(options: dict[str, Any], variant: str) -> dict[str, Any]:
    """``options`` with a Reducer variant's: ``off`` also drops the Reducer shortcuts the options set (``k=4``
    with the Reducer off is no Reducer, not a contradiction), and a ``SELECTION:DROP_RATIO`` variant sets K by
    its drop ratio, so an option's ``k`` gives way to it (the row is what its label says), and so does the selection
    a ``reducer`` option names (``reducer=importance`` beside ``random:0.25``: ``_without_reducer_fields``);
    ``default`` keeps them."""
    from harness.config import REDUCER_SHORTCUTS

    variant_options = _reducer_options(variant)
    if variant == "off":
        kept = {k: v for k, v in options.items() if k not in REDUCER_SHORTCUTS}
    elif "drop_ratio" in variant_options:
        kept = {k: v for k, v in options.items() if k != "k"}
        kept = _without_reducer_fields(kept, {"selection", "drop_ratio", "k"})
    else:
        kept = options
    return kept | variant_options


def _replaced(options: dict[str, Any], base: Any, config: Any) -> list[str]:
    """The Reducer options of ``options`` (as ``KEY=VALUE``) that a ``--reducer`` variant's row, ``config``, does not
    time: ``base`` (the method's config from ``options``) has them, and the variant set the fields they set in their
    place (``_variant_options``: a ``SELECTION:DROP_RATIO`` variant its selection and K, ``off`` every one);
    ``default`` replaces none. The row's label names what it timed; the note and the report name what it did not."""
    if base.reducer is None or config.reducer == base.reducer:
        return []
    own = {f.name for f in dataclasses.fields(base)}  # a method's own option of that name is not the Reducer's
    replaced = []
    for key, value in options.items():
        fields = _reducer_fields(key, value) if key not in own or key == "reducer" else None
        if fields is None:
            continue
        if config.reducer is None or any(getattr(config.reducer, f) != getattr(base.reducer, f) for f in fields):
            replaced.append(f"{key}={value}")
    return replaced


def _reducer_fields(key: str, value: Any) -> set[str] | None:
    """The ``ReducerConfig`` fields an option sets (``k`` and ``drop_ratio`` both: each sets K), none for
    ``reducer=on`` (only the Reducer off replaces it); ``None`` for an option that is not the Reducer's."""
    from harness.config import _SHORTCUT_FIELD, REDUCER_SHORTCUTS, SELECTIONS, ReducerConfig

    if key in REDUCER_SHORTCUTS:
        fields = {_SHORTCUT_FIELD.get(key, key)}
    elif key != "reducer":
        return None
    elif isinstance(value, ReducerConfig):
        fields = {f.name for f in dataclasses.fields(ReducerConfig)}
    elif isinstance(value, dict):
        fields = set(value)
    else:
        fields = {"selection"} if isinstance(value, str) and value.strip().lower() in SELECTIONS else set()
    return fields | K_FIELDS if fields & K_FIELDS else fields


K_FIELDS = {"k", "drop_ratio"}  # the Reducer's fields that set K (a variant's drop_ratio replaces an option's k)


def _without_reducer_fields(options: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``options`` with their ``reducer`` option no longer naming the Reducer ``fields`` a bench variant or an
    ``--also`` item sets: those replace the method's settings, and ``make_config`` refuses a ``reducer`` that names
    one beside a shortcut setting it otherwise. ``reducer=importance`` (a selection) is then ``reducer=on``, and a
    dict of ``ReducerConfig`` fields loses those keys."""
    from harness.config import SELECTIONS

    value = options.get("reducer")
    if "selection" in fields and isinstance(value, str) and value.strip().lower() in SELECTIONS:
        return options | {"reducer": "on"}
    if isinstance(value, dict) and fields & value.keys():
        return options | {"reducer": {k: v for k, v in value.items() if k not in fields}}
    return options


def _reducer_options(variant: str) -> dict[str, Any]:
    """``off`` | ``default`` | ``SELECTION:DROP_RATIO`` (``importance:0.25``, ``random:0.75``)."""
    if variant in ("off", "default"):
        return {"reducer": None} if variant == "off" else {}
    selection, sep, ratio = variant.partition(":")
    try:
        if selection not in ("importance", "random") or not sep or not 0.0 <= float(ratio) < 1.0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"reducer variant {variant!r} not understood; use off, default or SELECTION:DROP_RATIO "
            "with SELECTION importance|random and 0 <= DROP_RATIO < 1 (e.g. importance:0.25)"
        ) from None
    return {"selection": selection, "drop_ratio": float(ratio)}


ALIASES = ({"r", "rank"}, {"k", "drop_ratio"})  # options that set one thing (make_config: rank is r; both K)


def _sets_reducer(item: str) -> bool:
    """Whether an ``--also`` option is the Reducer's own (``reducer=off``, ``k=1``, ``selection=random``)."""
    from harness.config import REDUCER_SHORTCUTS

    return _also_option(item)[0] in ("reducer", *REDUCER_SHORTCUTS)


def _also_base(options: dict[str, Any], variant: str, item: str) -> dict[str, Any]:
    """The options an ``--also`` row changes: ``variant``'s (the Reducer variant it keeps), but the method's own
    for an option of the Reducer's (a variant's shortcuts would override or contradict it)."""
    return _variant_options(options, variant) if variant and not _sets_reducer(item) else options


def _also_config(cls: type, options: dict[str, Any], variant: str, item: str, method: str) -> Any:
    """The config of an ``--also`` row: ``variant``'s options (``_also_base``) with the item's value in."""
    from harness.config import make_config

    return make_config(cls.config_cls, _with_also(_also_base(options, variant, item), item), method)


def _with_also(options: dict[str, Any], item: str) -> dict[str, Any]:
    """``options`` with an ``--also`` option's value, in place of any option that sets the same thing (``--rank 8
    --also r=2`` is rank 2: ``rank`` would win over ``r``, and the row labelled r=2 would time rank 8); a Reducer
    item replaces the method's setting of it alike, where a ``reducer`` option names it (``--option
    reducer=importance --also selection=random``) or it names a shortcut's (``--also reducer=random`` beside
    ``--option selection=importance``)."""
    from harness.config import _SHORTCUT_FIELD, REDUCER_SHORTCUTS, SELECTIONS

    key, value = _also_option(item)
    same = next((names for names in ALIASES if key in names), {key})
    if key == "reducer" and value.lower() in ("off", "none"):  # the Reducer off: its options go with it, as
        same = {*same, *REDUCER_SHORTCUTS}  # with --reducer off (_variant_options)
    elif key == "reducer" and value.lower() in SELECTIONS:
        same = {*same, "selection"}
    options = _without_reducer_fields(options, {_SHORTCUT_FIELD.get(k, k) for k in same if k in REDUCER_SHORTCUTS})
    return {k: v for k, v in options.items() if k not in same} | {key: value}


def _also_option(item: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--also`` (``dropout=0``), as ``--option`` takes it."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"--also {item!r} must look like key=value (e.g. --also dropout=0)")
    return key.strip(), value.strip()
