"""Built-in tasks (suites). Each package registers one task with ``@TASKS.register(name)``."""

from tasks import commonsense, diffusion, multimodal  # noqa: F401
