"""Built-in tasks (suites). Each package registers one task with ``@TASKS.register(name)``."""
