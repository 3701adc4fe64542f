"""What a run is: its ``RunSpec`` (the run id), built from a preset and the command's options (``build_specs``), the
context one ``harness run`` shares, and the checks of its models and methods before any weights load (``preflight``).
Part of ``harness.runner``, which re-exports what others import."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.adapter import attach
from harness.config import AdapterConfig, ReducerConfig, make_config, parse_targets
from harness.guard import StopOnSigterm
from harness.identity import walk_model_folder
from harness.models import EMBEDDED, gguf_file_error
from harness.records import config_hash
from harness.registry import METHODS, TASKS, unknown_choice
from harness.task import Preset, Task, TaskOptions, trust_kwargs
from harness.train import TrainConfig

# what from_pretrained (transformers', diffusers') reads of a model folder's weights: the file, its shards or their
# index; not a GGUF (read for the embedded model only, converted), a .pt or a .ckpt, which it never reads
WEIGHT_FILES = ("model*.safetensors", "pytorch_model*.bin", "diffusion_pytorch_model*.safetensors",
                "diffusion_pytorch_model*.bin", "*.safetensors.index.json", "*.bin.index.json")  # fmt: skip
WEIGHT_FILES_SAID = "model.safetensors, pytorch_model.bin or diffusion_pytorch_model.safetensors/.bin file, nor shards"
UNREAD_WEIGHTS = ("*.gguf", "*.pt", "*.pth", "*.ckpt")  # weights in a format from_pretrained does not read
BASELINE = "base"  # reserved name: the model without an adapter, scored zero-shot


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result; its hash is part of the run id."""

    task: str
    method: str
    seed: int
    preset: str
    model: str
    protocol: str
    method_options: dict[str, Any]
    train: TrainConfig
    task_options: TaskOptions
    eval_batch_size: int
    random_weights: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    processes: int = 1  # each process takes grad_accum micro-batches a step: the batch grows with them

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["processes"] == 1:  # one process: the run ids from before it was recorded stay
            del d["processes"]
        d["task_options"].pop("data_dir")  # where the data lives is not part of what was run; its hashes are
        if d["task_options"]["train_sources"] is None:  # unset: the run ids from before it existed stay
            del d["task_options"]["train_sources"]
        else:
            d["task_options"]["train_sources"] = list(d["task_options"]["train_sources"])
        if d["task_options"]["scoring"] is None:  # unset: the run ids from before it existed stay
            del d["task_options"]["scoring"]
        else:  # a file a scorer reads is named, not located: where it lives is not part of what was run
            d["task_options"]["scoring"] = {
                k: Path(v).name if k.endswith("_checkpoint") else v for k, v in d["task_options"]["scoring"]
            }
        return d

    @property
    def run_id(self) -> str:
        return f"{self.task}-{self.method}-{self.preset}-s{self.seed}-{config_hash(self.to_dict())}"


def check_scorer_names(task: str, names: list[str]) -> None:
    """``ValueError`` naming the scorer flags ``task`` does not have (``Task.scorers``), for run and rescore."""
    if unknown := [k for k in names if k not in TASKS.get(task).scorers]:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{flags} does not apply to the {task} task (it scores nothing with it); leave it out")


def resolve_preset(task_cls: type[Task], name: str) -> Preset:
    if name not in task_cls.presets:
        raise ValueError(unknown_choice("preset", name, list(task_cls.presets)))
    return task_cls.presets[name]


def build_specs(
    task: str,
    methods: list[str],
    seeds: list[int],
    preset: str,
    *,
    model: str | None = None,
    protocol: str | None = None,
    method_options: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    task_overrides: dict[str, Any] | None = None,
    eval_batch_size: int | None = None,
    random_weights: bool = False,
    fast_path: bool = False,
) -> list[RunSpec]:
    """Validate every name and option before anything runs (bad input fails fast, in one line)."""
    task_cls = TASKS.get(task)
    p = resolve_preset(task_cls, preset)
    protocol = protocol or p.protocol
    if protocol not in task_cls.protocols:
        raise ValueError(
            f"unknown protocol {protocol!r} for task {task!r}; choose one of: {', '.join(task_cls.protocols)}"
        )
    train_overrides = dict(train_overrides or {})
    if unused := [k for k in train_overrides if k in task_cls.unused_train_settings]:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ValueError(f"{flags} does not apply to the {task} task (its training never reads it); leave it out")
    if train_overrides.get("epochs") is not None:  # a preset's step count would win over the epochs asked for
        if train_overrides.get("steps") is not None:
            raise ValueError("give --steps or --epochs, not both (a step count makes the epochs count for nothing)")
        train_overrides["steps"] = None
    train_cfg = _replace(p.train, train_overrides, "training setting")
    task_overrides = dict(task_overrides or {})
    for name in ("eval_limit", "train_cap"):  # one form of "no limit", the presets': 0 made a second run id
        if task_overrides.get(name) == 0:  # (here, not in TaskOptions: a record that kept a 0 rebuilds its own id)
            task_overrides[name] = None
    if task_overrides.get("train_sources"):  # a set: one run id (and one leaderboard row) whatever the order given
        task_overrides["train_sources"] = tuple(sorted(task_overrides["train_sources"]))
    if protocol != p.protocol and "template" not in task_overrides:
        task_overrides["template"] = task_cls.default_template(protocol, p.task.template)
    task_opts = _replace(p.task, task_overrides, "task setting")
    task_cls.check_options(protocol, task_opts)
    settings = task_cls.run_settings(p.settings, task_opts)
    chosen = Path(model or p.model).expanduser()
    # ``embedded`` is never a file of that name in the working directory (resolve() takes it first)
    if not random_weights and (model or p.model) != EMBEDDED and chosen.is_file():
        raise model_file_error(chosen)
    check_scorer_names(task, [k for k, _ in task_opts.scoring or ()])
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval batch size must be >= 1 (got {eval_batch_size})")
    given = method_options or {}
    # the command line's rank replaces the preset's, under either name (``--rank 4`` over a preset's ``r=8``: the
    # two names together are one setting given twice, which make_config refuses)
    kept = {k: v for k, v in p.method_options.items() if not (k in ("r", "rank") and {"r", "rank"} & set(given))}
    options = {**kept, **given}
    if "targets" in (method_options or {}):  # one set of layers, one run id: whatever the order, or a name twice
        default = p.method_options.get("targets", AdapterConfig.__dataclass_fields__["targets"].default)
        options["targets"] = _canonical_targets(options["targets"], default)
    specs = []
    for method in methods:
        # the fully resolved config (every option, defaults included) is what the run id hashes and the
        # record keeps: a changed default then re-runs; raises on an unknown or bad option
        try:
            resolved = _resolved_options(method, p.method_options, options) if method != BASELINE else {}
        except ValueError as exc:
            if any(k not in _takes(method) and any(k in _takes(m) for m in methods if m != method) for k in options):
                raise ValueError(
                    f"{exc}; every --option goes to each method of --methods: give a method's own option in a run "
                    "of that method alone"
                ) from None
            raise
        for seed in seeds:
            specs.append(
                RunSpec(
                    task,
                    method,
                    seed,
                    preset,
                    model or p.model,
                    protocol,
                    resolved,
                    # the zero-shot model trains nothing: training options leave its run (and id) alone
                    dataclasses.replace(train_cfg if method != BASELINE else p.train, seed=seed),
                    # nor the sources it would train on (a review: base beside --train-domains math was a second
                    # zero-shot run, its row 'base (trained_on=math)'), nor their cap and validation split (only
                    # splits() reads them, which base never calls: it was a second run, outside the preset's section)
                    dataclasses.replace(task_opts, seed=seed, **(_untrained(p.task) if method == BASELINE else {})),
                    eval_batch_size or p.eval_batch_size,
                    random_weights,
                    # each only when set: the run ids from before stay
                    ({"task_settings": settings} if settings else {})
                    | ({"fast_path": True} if fast_path and method != BASELINE else {}),
                )
            )
    return specs


def _untrained(preset: TaskOptions) -> dict[str, Any]:
    """The task options of the zero-shot ``base``: those only training reads are the preset's, whatever is given."""
    return {"train_sources": None, "train_cap": preset.train_cap, "val_size": preset.val_size}


def _resolved_options(method: str, preset: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``method``'s config from ``options`` (over the preset's), every option resolved. A number given equal to the
    preset's (``--alpha 16``, a float, where the preset says 16) keeps the preset's form, inside the Reducer's
    options too (``score_lr=10`` from Python, where the default is 10.0), and an option the method never reads
    (``--heads`` for LoRA) the preset's value: the run id is the preset's, not a second id for the same run."""
    cls = METHODS.get(method)
    resolved = make_config(cls.config_cls, options, method).to_dict()
    default = make_config(cls.config_cls, preset, method).to_dict()
    ignored = cls.__dict__.get("ignored_options", ())  # the class's own declaration (AdapterLinear.ignored_options)
    for key in resolved.keys() & set(ignored):
        resolved[key] = default[key]
    _same_form(resolved, default)
    if isinstance(resolved.get("reducer"), dict):  # a Reducer the method runs by default, or one turned on
        _same_form(resolved["reducer"], default.get("reducer") or dataclasses.asdict(ReducerConfig()))
    return resolved


def _same_form(given: dict[str, Any], default: dict[str, Any]) -> None:
    """Each number of ``given`` equal to ``default``'s in ``default``'s form (16 and 16.0 hash differently)."""
    for key, value in given.items():
        if _plain_number(value) and _plain_number(default.get(key)) and value == default[key]:
            given[key] = default[key]


def _takes(method: str) -> set[str]:
    """The option names ``method`` accepts (none for the zero-shot ``base``)."""
    from harness.config import REDUCER_SHORTCUTS

    if method == BASELINE or method not in METHODS:
        return set()
    return {f.name for f in dataclasses.fields(METHODS.get(method).config_cls)} | set(REDUCER_SHORTCUTS) | {"rank"}


def _plain_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _replace(obj: Any, overrides: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    for key in overrides:
        if key not in names:
            raise ValueError(unknown_choice(what, key, sorted(names)))
    return dataclasses.replace(obj, **overrides)


@dataclass
class RunContext:
    """What every run of one ``harness run`` shares: where records go, how to stop, which process writes."""

    runs_dir: Path
    force: bool = False
    progress: bool = True
    trust_remote_code: bool = False
    stop: StopOnSigterm = field(default_factory=StopOnSigterm)
    processes: Any = None  # accelerate's PartialState: several processes under accelerate launch / torchrun
    sweep: list[RunSpec] = field(default_factory=list)  # every run of the command: a refusal names its own among them

    @property
    def is_main(self) -> bool:
        return self.processes is None or self.processes.is_main_process

    def barrier(self) -> None:
        if self.processes is not None and self.processes.num_processes > 1:
            self.processes.wait_for_everyone()

    def agree(self, value: str) -> str:
        """The main process's ``value``, on every process."""
        if self.processes is None or self.processes.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]


def _canonical_targets(given: Any, preset: Any) -> Any:
    """``--targets`` as a run id names them: names (not a regex) once each, in the preset's form where they are its
    set of names, else sorted (``find_targets`` adapts the same layers whatever the order; the ids differed)."""
    names = parse_targets(given)
    if isinstance(names, str):  # a regex: as given
        return given
    names = tuple(dict.fromkeys(names))
    if preset is not None and not isinstance(ours := parse_targets(preset), str) and set(ours) == set(names):
        return preset
    return ",".join(sorted(names))


def spec_from_record(record: dict[str, Any]) -> RunSpec:
    """A ``RunSpec`` with the record's run id (checked): enough to rebuild the run's model and recipe (a recount),
    not to score it again (scorer settings come back sorted, checkpoint files by name only, as records keep them)."""
    config = record["run"]["config"]
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    values = {k: v for k, v in config.items() if k in fields}
    options = dict(values["task_options"])
    if options.get("train_sources") is not None:
        options["train_sources"] = tuple(options["train_sources"])
    if options.get("scoring") is not None:
        options["scoring"] = tuple(sorted(options["scoring"].items()))
    values.update(train=TrainConfig(**values["train"]), task_options=TaskOptions(**options))
    spec = RunSpec(**values)
    if spec.run_id != record["run"]["id"]:
        raise ValueError(
            f"record {record['run']['id']}: its config gives run id {spec.run_id}; it was written by another "
            "version of RunSpec, so the run cannot be rebuilt from it"
        )
    return spec


def _on_data(spec: RunSpec, data_dir: str) -> RunSpec:
    """``spec`` run on ``data_dir``: its task options name it, and its task settings are as the task sets them for
    that data (``Task.run_settings``, as ``build_specs`` does for a ``data_dir`` among its task overrides)."""
    options = dataclasses.replace(spec.task_options, data_dir=data_dir)
    extra = dict(spec.extra)  # the spec's own settings (a caller may have changed the preset's), as the data sets them
    settings = TASKS.get(spec.task).run_settings(spec.extra.get("task_settings", {}), options)
    if settings:
        extra["task_settings"] = settings
    else:
        extra.pop("task_settings", None)
    return dataclasses.replace(spec, task_options=options, extra=extra)


def preflight(specs: list[RunSpec], trust_remote_code: bool = False) -> None:
    """Before any weights load: every model's config reads and every method attaches to it (targets
    match, options fit), on the ``meta`` device, in seconds. With ``trust_remote_code`` a model may build
    from its own code (passed to ``Task.build_meta`` where it takes the parameter: a task written before
    it still works, building what it builds). Also refused here: a cache (``HARNESS_CACHE``) one cannot write where
    a run converts the embedded model into it (``_check_cache``, ``Task.reads_embedded``), a model built from its
    config (``--random-weights``) whose vocabulary is smaller than its tokenizer or whose folder's tokenizer does not
    load (``Task.check_built_tokenizer``), and with the hub switched off
    (``HF_HUB_OFFLINE``) a hub model whose weights are not in its cache, where its task reads the hub
    (``Task.reads_hub``; each failed as its run loaded the model, a record each)."""
    from harness import hub

    _check_cache(specs)
    seen = set()
    tokenizers_checked: set[tuple[str, str, bool]] = set()
    scores: dict[tuple, bool] = {}  # whether the method's Reducer scores layers on a validation split
    for spec in specs:
        task_cls = TASKS.get(spec.task)
        key = (spec.task, spec.model, spec.method, json.dumps(spec.method_options, sort_keys=True))
        # a task that never hands the flag on (Task.loads_remote_code) runs no model code of its own here either
        flag = trust_remote_code and task_cls.loads_remote_code
        trust = trust_kwargs(task_cls.build_meta, flag)
        if spec.method == BASELINE:
            task_cls.check_model(spec.model, **trust_kwargs(task_cls.check_model, flag))
        elif key not in seen:
            adapter = attach(task_cls.build_meta(spec.model, **trust).root, spec.method, **spec.method_options)
            reducer = adapter.reducer
            scores[key] = reducer is not None and reducer.active and reducer.config.selection == "importance"
            if spec.extra.get("fast_path") and not METHODS.get(spec.method).offers_fast_path(adapter.config):
                raise ValueError(
                    f"method {spec.method!r} has no fast path (no delta_factors, or input_weights and "
                    "factors_from, of its own): --fast-path would record a path the run does not take; leave it out"
                )
        seen.add(key)
        if (tokenizer_key := (spec.task, spec.model, spec.random_weights)) not in tokenizers_checked:
            # a model built from its config: its tokenizer loads, its ids fit the embeddings
            task_cls.check_built_tokenizer(
                spec.model, spec.random_weights, **trust_kwargs(task_cls.check_built_tokenizer, flag)
            )
            tokenizers_checked.add(tokenizer_key)
        if not spec.random_weights and task_cls.reads_hub(spec.model):  # not a plugin's own model's name
            hub.check_hub_weights(spec.model)  # offline: a paper id's shipped config asked nothing of the hub
        folder = Path(spec.model).expanduser()  # after its config is read: a config error is named first
        # ``embedded`` is never a folder of that name in the working directory (resolve() takes it first)
        built = spec.model == EMBEDDED or not task_cls.reads_weights(spec.model, spec.random_weights)
        if not built and folder.is_dir() and not has_weights(folder):
            nested = sorted(p.name for p in folder.glob("checkpoint-*") if has_weights(p))
            where = f"; its {', '.join(nested)} folder(s) do: give one of those" if nested else ""
            unread = sorted(p.name for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, w) for w in UNREAD_WEIGHTS))
            unread_said = (
                f"; from_pretrained does not read its {', '.join(unread)} (a GGUF is read for the embedded model only, "
                "which the harness converts): save the model with save_pretrained"
                if unread
                else ""
            )
            raise ValueError(
                f"model folder {str(folder)!r} holds no weights (no {WEIGHT_FILES_SAID} of one{where}){unread_said}; "
                "give the folder with the model's weights, or --random-weights to build it from its config"
            )
        if not built and folder.is_dir():
            task_cls.check_weights_folder(folder)
        # the Reducer scores layers on validation batches (not when it trains every layer, K = L)
        if spec.method != BASELINE and spec.task_options.val_size == 0 and scores.get(key):
            raise ValueError(
                f"--val-size 0 leaves {spec.method}'s Reducer no validation split to score layers with; give "
                "--val-size 1 or more, --option selection=random, or --option reducer=off"
            )


def _check_cache(specs: list[RunSpec]) -> None:
    """Where a run converts the embedded model (not yet converted) into the cache, that it can be written (the
    conversion failed run by run after its ~25 s); a cache that is converted already may be read-only (a shared
    copy). A ``HARNESS_CACHE`` that is there but no folder is refused in any case (data and digests go there too)."""
    from harness import models

    if (
        any(TASKS.get(s.task).reads_embedded(s.model, s.random_weights) for s in specs)
        and not models.embedded_converted()
    ):
        models.check_cache_writable()
    elif os.environ.get("HARNESS_CACHE") and (cache := models.cache_dir()).exists() and not cache.is_dir():
        raise ValueError(f"HARNESS_CACHE {str(cache)!r} is not a folder; set HARNESS_CACHE to a folder")


def model_file_error(path: Path) -> ValueError:
    """What to do with a ``--model`` that is a file (without ``--random-weights``): weights load from a folder."""
    if path.suffix.lower() == ".gguf":
        return gguf_file_error(path)  # as harness params says it
    also = ", or --random-weights to build the architecture from this config" if path.suffix == ".json" else ""
    return ValueError(
        f"model {str(path)!r} is a file: weights load from a model folder (or a hub id); pass its folder{also}"
    )


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` or a subfolder holds a weights file (``WEIGHT_FILES``), following symlinked subfolders
    (a diffusers pipeline may link its ``unet/``) once each; a training checkpoint's ``checkpoint-*/`` subfolder
    does not count: ``from_pretrained`` reads the folder itself, not a checkpoint inside it."""
    return any(fnmatch.fnmatch(f, w) for _, files in walk_model_folder(folder) for f in files for w in WEIGHT_FILES)
