"""lora-harness: measure LoRA-family adapters the same way on the same models and data.

The names below load on first use (PEP 562): ``import harness.cli`` does not import torch, so the ``harness``
command starts at once and an interrupt while torch loads is the command's own (exit 130), not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Adapter": "harness.adapter",
    "AdapterLinear": "harness.adapter",
    "Site": "harness.adapter",
    "attach": "harness.adapter",
    "load_adapter": "harness.adapter",
    "AdapterConfig": "harness.config",
    "ReducerConfig": "harness.config",
    "METHODS": "harness.registry",
    "TASKS": "harness.registry",
    "load_plugin": "harness.registry",
}

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from harness.adapter import Adapter, AdapterLinear, Site, attach, load_adapter
    from harness.config import AdapterConfig, ReducerConfig
    from harness.registry import METHODS, TASKS, load_plugin


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(f"harness.{name}") is not None:
        # harness.config etc., as an eager import gave (never __main__: that would run the command line)
        value = importlib.import_module(f"harness.{name}")
    else:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "Adapter",
    "AdapterConfig",
    "AdapterLinear",
    "METHODS",
    "ReducerConfig",
    "Site",
    "TASKS",
    "attach",
    "load_adapter",
    "load_plugin",
    "__version__",
]
