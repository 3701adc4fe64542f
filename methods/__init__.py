"""Built-in methods. Each module registers one method with ``@METHODS.register(name)``."""

from methods import effilora, hydralora, lora, lora_fa, moslora, sharelora  # noqa: F401
