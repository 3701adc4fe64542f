"""lora-harness: measure LoRA-family adapters the same way on the same models and data."""

from harness.adapter import Adapter, AdapterLinear, Site, attach, load_adapter
from harness.config import AdapterConfig, ReducerConfig
from harness.registry import METHODS, TASKS, load_plugin

__version__ = "0.1.0"

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
