"""The task (suite) contract: what differs between suites lives behind it, the core owns the rest.

A task declares its presets and protocols, loads its model (and says where the adapters attach), turns
examples into training batches and batches into a summed loss (its ``Recipe``), scores, and describes
its data. The core (training loop, Reducer, accounting, records, resume, leaderboard) calls only this
contract: no tokenizer, no model class. The harness knows no task by name; a task is a package in
``tasks/`` registered with ``@TASKS.register(name)``, or a plugin through the entry-point group
``harness.tasks``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from harness.models import MetaModel
    from harness.train import TrainConfig

Batch = dict[str, Any]  # tensors, plus plain values a recipe keeps with them (moved with ``to_device``)


@dataclass(frozen=True)
class Example:
    """One training or scoring example: the model reads ``prompt`` and should produce ``target``.
    Non-text suites keep what they need in ``meta`` (an image path, a caption...)."""

    prompt: str
    target: str
    source: str = ""  # benchmark / subset / domain name
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


EVERY_COLUMN = "*"  # a data_fingerprint key: the one test file behind all of a record's columns


@dataclass(frozen=True)
class TaskOptions:
    """Data-side options every task receives (a task may ignore some)."""

    data_dir: str | None = None
    train_cap: int | None = None  # per source
    val_size: int = 120
    eval_limit: int | None = None  # per benchmark
    template: str = "clean"
    seed: int = 0
    train_sources: tuple[str, ...] | None = None  # train on these sources (domains, benchmarks) only
    # optional scorers and their settings, e.g. (("judge_model", "gpt-4o"),): a task reads the ones it knows
    scoring: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("train_cap", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 (got {value}); 0 means no limit")
        if self.val_size < 0:
            raise ValueError(f"val_size must be >= 0 (got {self.val_size})")
        if self.train_sources is not None and not self.train_sources:
            raise ValueError("train_sources is empty; name at least one source or leave it unset")


@dataclass(frozen=True)
class Preset:
    """One scale of a task: model, training and data settings, method defaults, protocol."""

    description: str
    model: str
    train: TrainConfig
    task: TaskOptions
    method_options: dict[str, Any]
    protocol: str
    eval_batch_size: int
    settings: dict[str, Any] = field(default_factory=dict)  # the task's own, same for every method (hashed)


@dataclass
class Loaded:
    """A loaded model as a task hands it to the core: ``model`` is everything (counted as the base),
    adapters attach to ``root`` (the language model, the UNet...); ``processor`` (tokenizer, image
    processor, pipeline parts) is the task's own and the core never reads it."""

    model: nn.Module
    root: nn.Module
    label: str
    processor: Any = None
    info: dict[str, Any] = field(default_factory=dict)  # provenance for the record (weights, caches)
    # parameters the task trains along with every method's adapter (e.g. LLaVA's projector in stage 2):
    # the same for every method, counted apart from the adapter's, saved beside it
    task_params: list[nn.Parameter] = field(default_factory=list)


class Recipe(ABC):
    """How a task trains: examples into batches, a batch into a summed loss. The core divides each
    optimizer step's loss by the step's total ``units`` (supervised tokens, images...), over every
    micro-batch and process, so gradient accumulation and several processes give the same update."""

    @abstractmethod
    def encode(self, example: Example) -> Any:
        """One example, ready to batch (done once, before training)."""

    @abstractmethod
    def collate(self, items: list[Any]) -> Batch:
        """A micro-batch on the CPU."""

    @abstractmethod
    def units(self, batch: Batch) -> int:
        """How many terms ``loss_sum`` adds up (0: the batch has nothing to learn from)."""

    @abstractmethod
    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The summed training loss of ``batch`` (on the model's device; also on a meta replica)."""

    @abstractmethod
    def stats(self, batch: Batch) -> tuple[int, int]:
        """(samples, tokens) the record counts for this batch (tokens: non-padding inputs)."""

    @abstractmethod
    def shape(self, batch: Batch) -> list[int]:
        """The batch's shape as the record keeps it, and as ``meta_batch`` rebuilds it."""

    @abstractmethod
    def meta_batch(self, shape: list[int]) -> Batch:
        """A batch of ``shape`` on the ``meta`` device, for counting a step's FLOPs without compute."""


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def trust_kwargs(fn: Any, trust_remote_code: bool) -> dict[str, bool]:
    """``{"trust_remote_code": True}`` where the run has the flag and ``fn`` takes the parameter, else ``{}``: a
    task method written before the parameter still works."""
    takes = "trust_remote_code" in inspect.signature(fn).parameters
    return {"trust_remote_code": True} if trust_remote_code and takes else {}


def _built_in(obj: Any) -> bool:
    """Whether ``obj`` (a class, a function) is one of lora-harness's own tasks' (a module under the ``tasks`` package
    beside ``harness``), not a plugin's, whatever its package is called."""
    try:
        where = Path(inspect.getfile(obj)).resolve()
    except (TypeError, OSError):
        return False
    return (Path(__file__).resolve().parents[1] / "tasks") in where.parents


class Task(ABC):
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    protocols: ClassVar[tuple[str, ...]] = ()
    presets: ClassVar[dict[str, Preset]] = {}
    columns: ClassVar[tuple[str, ...]] = ()  # the leaderboard's benchmark columns, in order (others follow)
    averaged: ClassVar[tuple[str, ...] | None] = None  # the columns the leaderboard's Avg covers (None: all)
    default_preset: ClassVar[str] = "embedded"
    scorers: ClassVar[tuple[str, ...]] = ()  # the optional scorers (TaskOptions.scoring keys) the task reads
    # TrainConfig fields its recipe never reads (e.g. train_on_inputs where the loss is always on the answer):
    # setting one is refused, not ignored under a new run id
    unused_train_settings: ClassVar[tuple[str, ...]] = ()
    # whether a local model folder may hold a config alone (the task assembles the model from pretrained parts);
    # else a folder without a weights file is refused before loading, unless the run builds random weights
    config_only_models: ClassVar[bool] = False
    # what a recipe's second ``stats`` count and a record's ``tokens``/``tokens_per_s`` are counts of
    throughput_unit: ClassVar[str] = "tokens"
    # whether ``load`` hands ``trust_remote_code`` to what loads the model and its tokenizer: where it does not (the
    # task builds its own classes), a model's own code never runs, and the flag changes nothing its runs compute
    loads_remote_code: ClassVar[bool] = True

    def __init__(self, options: TaskOptions) -> None:
        self.options = options

    def data_fingerprint(self) -> dict[str, str] | None:
        """``{benchmark: sha256 of its test file}``, as a record's eval entries hold them (``"sha256"``), so that
        a finished run is not taken for a run on other data; ``{EVERY_COLUMN: sha256}`` where one test file is
        behind every column (each entry that has a hash must have this one); ``None``: the task does not say
        (no check)."""
        return None

    def training_files(self, described: dict[str, Any] | None = None) -> dict[str, str]:
        """``{file: sha256}`` of the data files training reads: those a finished run read, from what its record
        kept of ``describe()`` (``run.config.data``, passed as ``described``), or with ``None`` those it would
        read now. A finished run whose files differ from today's is not reused. ``{}``: the task does not say
        (no check)."""
        return {}

    @classmethod
    def check_options(cls, protocol: str, options: TaskOptions) -> None:
        """Raise ``ValueError`` if ``protocol`` and ``options`` do not fit together (before any run)."""
        return None

    @classmethod
    def default_template(cls, protocol: str, preset_template: str) -> str:
        """The template to use when the user changes the protocol but names no template."""
        return preset_template

    @classmethod
    def run_settings(cls, settings: dict[str, Any], options: TaskOptions) -> dict[str, Any]:
        """The task settings a run with ``options`` records and hashes into its run id, from the preset's
        ``settings``: a task drops those the options make moot (e.g. the generated data's parameters for a run
        on the user's ``--data-dir``). By default the preset's, unchanged."""
        return settings

    def other_scoring(self, finished: dict[str, Any]) -> str | None:
        """How this task's scorers (``options.scoring``) differ from those that scored the ``finished`` record's
        columns where the run id cannot tell (a checkpoint of the same file name, another server of the same
        model name): then the run is not taken as done. ``None``: the same, or not known; by default ``None``."""
        return None

    @classmethod
    def check_scoring(cls, scoring: dict[str, str]) -> None:
        """Before ``harness rescore`` touches any run: the scorers in ``scoring`` can run here (``ValueError``
        saying what to fix); by default nothing is checked."""
        return None

    @classmethod
    def rescore(cls, run_dir: Path, record: dict[str, Any], scoring: dict[str, str]) -> dict[str, dict[str, Any]]:
        """``harness rescore``: a finished run's columns of the scorers in ``scoring`` (``{scorer: value}``, the
        names of ``scorers``), and only those, computed again from what the run saved in ``run_dir`` (no
        training, no sampling), as ``evaluate`` gives them; ``ValueError`` where the run cannot be scored again
        (what it saved is missing). The record's other columns stay. By default a task cannot."""
        raise ValueError(
            f"the {cls.name} task cannot score a finished run again from what it saved; run it again with the "
            "scorer flags (a new run id) or --force"
        )

    @classmethod
    def check_model(cls, model: str, trust_remote_code: bool = False) -> None:
        """Before any weights load: raise ``ValueError`` if ``model`` cannot be this task's model. By default its
        config is read (a hub id or folder) as the run reads it: a model with its own code (``auto_map``) is refused
        without ``trust_remote_code``, as an unknown ``model_type`` is; a task that builds its own models (its own
        ``build_meta``) is asked to build it on the ``meta`` device instead, with ``trust_remote_code`` where it
        takes it (passed, as to ``build_meta``, only when the run has the flag and the method takes the parameter)."""
        if getattr(cls.build_meta, "__func__", None) is not Task.build_meta.__func__:
            cls.build_meta(model, **trust_kwargs(cls.build_meta, trust_remote_code))
            return
        from harness.models import check_transformers_config, load_config_dict

        try:
            data = load_config_dict(model)
        except ValueError as exc:
            if _built_in(cls):  # a built-in task: the message says what to give
                raise
            raise ValueError(
                f"{exc} (task {cls.name!r} reads models as transformers configs; one that builds its own model "
                "overrides Task.build_meta, or Task.check_model)"
            ) from None
        # as the run's from_pretrained reads it: an auto_map without the flag failed there in three lines
        check_transformers_config(model, data, trust_remote_code)

    @classmethod
    def check_weights_folder(cls, folder: Path) -> None:
        """Before any weights load, for a run that loads the weights in the local ``folder`` (not
        ``--random-weights``): raise ``ValueError`` if the folder lacks something else this task reads from it
        (a causal LM's tokenizer); by default nothing more is checked."""
        return None

    @classmethod
    def check_built_tokenizer(cls, model: str, random_weights: bool, trust_remote_code: bool = False) -> None:
        """Before any run, once a model: raise ``ValueError`` where a model this task builds from a config (random
        weights) would tokenize with a tokenizer that does not load, or has more tokens than the config's vocabulary
        (its ids would index past the embeddings). By default nothing is checked: a task whose model is built so
        overrides this (the causal-LM and multimodal tasks do), so that a bad tokenizer is refused before the runs
        instead of failing each as it loads the model."""
        return None

    @classmethod
    def reads_weights(cls, model: str, random_weights: bool) -> bool:
        """Whether a run of the local ``model`` loads the weights in its folder: a run's record then identifies the
        model by its weights, configs, tokenizer and code (``harness.identity``), else by all but the weights, which
        may change under it without changing what it computes. By default: unless it builds random weights or the
        task assembles its models from a config (``config_only_models``). Before any run, a folder whose weights a
        run loads must hold some (``harness.runner.has_weights``), and ``check_weights_folder`` is asked."""
        return not random_weights and not cls.config_only_models

    @classmethod
    def reads_embedded(cls, model: str, random_weights: bool) -> bool:
        """Whether a run of ``model`` reads the embedded model's conversion (``harness.models.embedded_folder``:
        the GGUF converted once, ~25 s, into the cache), its weights or only its tokenizer: ``harness run`` then checks
        before any run that the cache can be written, and a run that loads the embedded model's weights records the
        GGUF's sha256 as their digest. By default ``False``; a task that loads it overrides this."""
        return False

    @classmethod
    def reads_hub(cls, model: str) -> bool:
        """Whether a run of ``model`` (not ``--random-weights``) loads its weights from the Hugging Face hub where the
        name is no folder: with the hub switched off (``HF_HUB_OFFLINE``), ``harness run`` then refuses before any run
        a model whose weights the hub's cache does not hold. By default: where the task builds its models the
        harness's way (``Task.build_meta``) or a built-in task's way; a task with a ``build_meta`` of its own builds
        its own model (as ``check_model`` takes it), and its names are its own, not hub ids (from a review: a plugin's
        model ``tiny`` was refused offline), unless it overrides this."""
        build = getattr(cls.build_meta, "__func__", cls.build_meta)
        # a built-in task's load, inherited, reads the hub whatever build_meta does (a re-review)
        return build is Task.build_meta.__func__ or _built_in(build) or _built_in(cls.load)

    @classmethod
    def build_meta(cls, model: str, trust_remote_code: bool = False) -> MetaModel:
        """The model's architecture on the ``meta`` device, for checks before a run and for counting.
        ``trust_remote_code`` (passed only when the run has it): a model may build from its own code."""
        from harness.models import build_meta

        return build_meta(model, trust_remote_code)

    @abstractmethod
    def load(
        self,
        model: str,
        device: torch.device,
        *,
        random_weights: bool,
        seed: int,
        trust_remote_code: bool,
        settings: dict[str, Any] | None = None,
    ) -> Loaded:
        """The model named ``model`` (a hub id, a folder, ``embedded``), or with ``random_weights`` its
        architecture from a config. A model's own code runs only with ``trust_remote_code``. ``settings``:
        the preset's task settings (``Preset.settings``)."""

    @abstractmethod
    def recipe(self, loaded: Loaded, config: TrainConfig) -> Recipe:
        """How this task trains ``loaded`` under ``config``."""

    def meta_replica(self, loaded: Loaded) -> MetaModel:
        """``loaded``'s architecture on the ``meta`` device, its root at the same place."""
        from harness.accounting import meta_replica
        from harness.models import MetaModel

        replica = meta_replica(loaded.model)
        path = _path_of(loaded.model, loaded.root)
        return MetaModel(
            loaded.label, same_trainability(loaded.model, replica), replica.get_submodule(path) if path else replica
        )

    @abstractmethod
    def splits(self) -> tuple[list[Example], list[Example]]:
        """(train, validation): validation is held out of training, for the Reducer and val loss."""

    @abstractmethod
    def evaluate(
        self,
        loaded: Loaded,
        protocol: str,
        batch_size: int,
        predictions_path: Path | None,
        progress: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Score every benchmark: ``{benchmark: {"metric", "value", "n", "protocol", "sha256"} or
        {"status": "absent"}}``. Per-sample predictions go to ``predictions_path`` (JSONL)."""

    def check_data_for(self, model: str, random_weights: bool) -> None:
        """Before any run (``run_all``, once the data is read): what this task's data must hold for ``model``, e.g.
        the multimodal task's captions.json, on which the embedded model's stage 1 aligns. Raise ``ValueError``
        saying what to add (found in ``load`` instead, every run of a sweep failed in turn, a record each)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance for the run record (data files, hashes, what is absent)."""
        return {}

    @classmethod
    def leaderboard_files(cls, records: list[dict[str, Any]], runs_dir: Path, out_dir: Path) -> list[Path]:
        """Extra files ``harness leaderboard`` writes for this task's ``records`` (e.g. a contact sheet of
        generated samples, read from the run folders under ``runs_dir``); the paths written."""
        return []


def same_trainability(model: nn.Module, replica: nn.Module) -> nn.Module:
    """``replica``'s parameters train exactly where ``model``'s do (a frozen vision tower's weight
    gradients are not computed, so they must not be counted)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in replica.named_parameters():
        p.requires_grad_(flags.get(name, False))
    return replica


def _path_of(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError("the adapters' root is not a submodule of the model")
