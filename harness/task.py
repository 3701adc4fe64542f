"""What a task (suite) gives the harness: training examples, a validation split, and scoring.

The harness knows no task by name; a task is a package in ``tasks/`` registered with
``@TASKS.register(name)``, or a plugin through the entry-point group ``harness.tasks``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Example:
    """One training or scoring example: the model reads ``prompt`` and should produce ``target``."""

    prompt: str
    target: str
    source: str = ""  # benchmark / subset name
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TaskOptions:
    """Data-side options every task receives (a task may ignore some)."""

    data_dir: str | None = None
    train_cap: int | None = None  # per source
    val_size: int = 120
    eval_limit: int | None = None  # per benchmark
    template: str = "clean"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_cap", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 (got {value}); 0 or none means no limit")
        if self.val_size < 0:
            raise ValueError(f"val_size must be >= 0 (got {self.val_size})")


class Task(ABC):
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    protocols: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: TaskOptions) -> None:
        self.options = options

    @classmethod
    def check_options(cls, protocol: str, options: TaskOptions) -> None:
        """Raise ``ValueError`` if ``protocol`` and ``options`` do not fit together (before any run)."""
        return None

    @classmethod
    def default_template(cls, protocol: str, preset_template: str) -> str:
        """The template to use when the user changes the protocol but names no template."""
        return preset_template

    @abstractmethod
    def splits(self) -> tuple[list[Example], list[Example]]:
        """(train, validation): validation is held out of training, for the Reducer and val loss."""

    @abstractmethod
    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        protocol: str,
        batch_size: int,
        predictions_path: Path | None,
        progress: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Score every benchmark: ``{benchmark: {"metric", "value", "n", "protocol", "sha256"} or
        {"status": "absent"}}``. Per-sample predictions go to ``predictions_path`` (JSONL)."""

    def describe(self) -> dict[str, Any]:
        """Provenance for the run record (data files, hashes, what is absent)."""
        return {}
