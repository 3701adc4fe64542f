"""Name -> class registries with did-you-mean errors and entry-point plugins.

Built-in entries live in importable packages (``methods``, ``tasks``) that are imported on first
lookup; outside packages register through an entry-point group; a single file registers through
``load_plugin(path)`` (the CLI's ``--plugin``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named classes of one kind (``method``, ``task``)."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str, base: str) -> None:
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        self.base = base  # "module:Class" every registered class must subclass
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@METHODS.register("lora")``. Duplicate names are rejected."""
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"{self.kind} name {name!r} must be a lower-case Python identifier (e.g. 'my_lora')")
        if self.kind == "method" and name in RESERVED_METHODS:
            raise ValueError(f"method name {name!r} is reserved ({RESERVED_METHODS[name]}); name it otherwise")
        if self.kind == "task" and (why := _reserved_task(name)):
            raise ValueError(f"task name {name!r} is reserved ({why}); name it otherwise")

        def decorator(obj: T) -> T:
            self._check(name, obj)
            existing = self._entries.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {_qualname(existing)}); "
                    "register yours under another name"
                )
            self._entries[name] = obj
            obj.name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    def _check(self, name: str, obj: object) -> None:
        """A registered class is a subclass of ``self.base`` (a method's ``config_cls`` a dataclass of
        ``AdapterConfig``; a task's presets, its ``default_preset`` among them, their protocols among its
        ``protocols``): a plugin that registers something else fails here, in one line, not later."""
        module, _, cls_name = self.base.partition(":")
        base = getattr(importlib.import_module(module), cls_name)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise ValueError(f"{self.kind} {name!r}: {_qualname(obj)} is not a subclass of {cls_name}; register one")
        if inspect.isabstract(obj):  # it could not be made: the first run would stop with a traceback
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            raise ValueError(f"{self.kind} {name!r}: {_qualname(obj)} does not define {missing}; define them")
        if self.kind == "task" and not getattr(obj, "presets", None):
            raise ValueError(
                f"task {name!r}: {_qualname(obj)} defines no presets; give it presets = {{'name': Preset(...)}}"
            )
        if self.kind == "task":
            _check_presets(name, obj)
        if self.kind == "method":
            from harness.adapter import AdapterLinear
            from harness.config import AdapterConfig

            config_cls = getattr(obj, "config_cls", None)
            if not (isinstance(config_cls, type) and issubclass(config_cls, AdapterConfig)):
                raise ValueError(
                    f"method {name!r}: its config_cls ({config_cls!r}) is not a dataclass subclassing AdapterConfig"
                )
            # its own fields not made dataclass fields (undecorated: they would not be options, silently); a
            # subclass that adds no field may leave the decorator out
            fields = [a for a in inspect.get_annotations(config_cls).values() if "ClassVar" not in str(a)]
            if fields and "__dataclass_fields__" not in vars(config_cls):
                raise ValueError(
                    f"method {name!r}: its config_cls {_qualname(config_cls)} needs @dataclass(frozen=True)"
                )
            if obj.delta is AdapterLinear.delta:  # every forward would raise a bare NotImplementedError mid-run
                raise ValueError(f"method {name!r}: {_qualname(obj)} does not define delta(self, x); define it")

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before the imports: a plugin that asks the registry while it loads must not recurse
        try:
            module = importlib.import_module(self.builtin_package)
        except BaseException:  # a broken built-in: the next call raises again, not an empty registry
            self._loaded = False
            raise
        home = Path(__file__).resolve().parents[1]  # beside the harness package, installed or checked out
        where = Path(getattr(module, "__file__", None) or home / "?").resolve()
        if home not in where.parents:
            self._loaded = False
            raise ValueError(
                f"a {self.builtin_package!r} module at {where} hides lora-harness's built-in {self.kind}s "
                f"(the package of that name beside harness/); rename yours or run from another folder"
            )
        for ep in entry_points(group=self.entry_point_group):
            before = set(sys.modules)
            registered = _registrations(self)
            try:
                ep.load()  # registration happens at import time
            except BaseException as exc:  # a broken third-party plugin must not break the built-ins
                # what its own modules registered before it raised goes too (from a review: reported "could not
                # load", it still ran, and `harness list` failed on its module, gone from sys.modules); its own:
                # those of its top-level package first imported now (Python took out the ones that raised)
                own = ep.value.partition(":")[0].strip().partition(".")[0]  # not ep.module: a bad value raises there
                if own not in BUILTIN_PACKAGES:
                    for name in set(sys.modules) - before:
                        if name.partition(".")[0] == own:
                            sys.modules.pop(name, None)
                _undo_registrations(registered)
                # Ctrl-C as it is; a SystemExit (a module-level sys.exit or parse_args) is the plugin's failure,
                # not the command's end (a review: `sys.exit(0)` in a plugin made every command a silent success)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                if isinstance(exc, SystemExit):
                    exc = f"SystemExit: {exc.code}"
                print(
                    f"warning: could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}; "
                    "nothing it registered is used",
                    file=sys.stderr,
                )

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise ValueError(unknown_choice(self.kind, name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _check_presets(name: str, task: Any) -> None:
    """A task's ``default_preset`` is one of its presets, and each preset's protocol one of its ``protocols``: else a
    run without ``--preset`` or ``--protocol`` failed on a flag it never gave ("unknown preset 'embedded'"; "unknown
    protocol 'choice' ...; choose one of: " with none listed), from a review."""
    from harness.task import Preset, Task

    if isinstance(task.protocols, str):  # ("mse") is a string: its letters would be the protocols
        raise ValueError(f"task {name!r}: protocols is the string {task.protocols!r}; give a tuple, e.g. ('mse',)")
    presets, protocols = task.presets, tuple(task.protocols)
    if task.default_preset not in presets:
        unset = all("default_preset" not in vars(c) for c in task.__mro__ if c is not Task)
        inherited = " (Task's: the task sets none)" if unset else ""
        raise ValueError(
            f"task {name!r}: its default_preset {task.default_preset!r}{inherited} is not among its presets "
            f"({', '.join(map(repr, presets))}); set default_preset to one of them"
        )
    for key, preset in presets.items():
        if isinstance(preset, Preset) and preset.protocol not in protocols:
            raise ValueError(
                f"task {name!r}: its preset {key!r} has protocol {preset.protocol!r}, not in protocols={protocols!r}; "
                "add it to protocols"
            )


def _reserved_task(name: str) -> str | None:
    """Why ``name`` cannot name a task, or None: a task's leaderboard files (``<task>.csv``, ``<task>_seeds.csv``,
    ``<task>_comparisons.csv``, ``<task>.png``) would be another table's (from a review: a task named ``overhead``
    had its accuracy CSV replaced by the cost table, silently)."""
    if name in ("overhead", "bench"):
        return f"{name}.csv is the {'cost table' if name == 'overhead' else 'output of harness bench'}"
    for suffix in ("_seeds", "_comparisons"):
        if name.endswith(suffix):
            return f"{name}.csv is the {suffix[1:]} table of task {name.removesuffix(suffix)!r}"
    return None


RESERVED_METHODS = {"base": "--methods base is the zero-shot model", "all": "--methods all is every method"}


def unknown_choice(kind: str, value: str, valid: list[str], where: str = "") -> str:
    """``unknown method 'lroa' (did you mean 'lora'?); available: a, b, c``."""
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    plugin = (
        f" (a plugin's {kind}: harness --plugin FILE ..., or harness.load_plugin(FILE) in Python)"
        if kind in ("method", "task")
        else ""
    )
    return f"unknown {kind} {value!r}{where}{hint}; available: {', '.join(valid)}{plugin}"


def _registrations(*also: Registry) -> dict[Registry, tuple[dict[str, Any], bool]]:
    """Every registry's entries now, and whether it has loaded, for ``_undo_registrations`` should the import that
    follows fail."""
    return {registry: (dict(registry._entries), registry._loaded) for registry in (METHODS, TASKS, *also)}


def _undo_registrations(registered: dict[Registry, tuple[dict[str, Any], bool]]) -> None:
    """Take back what was registered since ``_registrations`` by a module no longer imported: the failed import's
    own modules, taken out of sys.modules (by Python, or by the caller). What a module still imported registered
    stays, as that module would not register again (from a review: undoing everything dropped for good another
    plugin's module the failed one imported, and the entry points of a registry it first asked). A registry that
    loaded during the import and lost an entry loads again at its next lookup: what it loaded from those modules
    comes back, imported afresh."""
    for registry, (entries, loaded) in registered.items():
        gone = [
            name
            for name, obj in registry._entries.items()
            if name not in entries and getattr(obj, "__module__", None) not in sys.modules
        ]
        for name in gone:
            del registry._entries[name]
        if gone and not loaded:
            registry._loaded = False


def load_plugin(path: str | Path) -> None:
    """Import a Python file so that its ``@register`` decorators run; any failure is one ``ValueError`` line."""
    path = Path(path).expanduser()  # as every other path flag: the shell leaves --plugin=~/x.py unexpanded
    what = "pass the path of a .py file that registers a method or task"
    if not path.exists():
        raise ValueError(f"plugin file {str(path)!r} not found; {what}")
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"plugin {str(path)!r} is not a .py file; {what}")
    for registry in (METHODS, TASKS):
        registry._load()  # built-ins first: a plugin that reuses one of their names is the one refused
    if path.resolve() in _PLUGINS_LOADED:  # named twice, or loaded again in a notebook: once is enough
        return
    folder = str(path.resolve().parent)
    # a plugin loaded before imported it by name, from beside it: the same module (run again under another name,
    # its registrations were refused as taken: from a review); only a file that plugin's code counts (not a
    # built-in's or an installed one's, and not one left by a plugin that failed, whose registrations were undone)
    if path.resolve() in _PLUGIN_OF and _module_of_file(path.resolve()) is not None:
        _PLUGINS_LOADED[path.resolve()] = _plugin_digest(path.resolve(), Path(folder), set())
        _PLUGIN_OF[path.resolve()] = path.resolve()  # given to --plugin itself: its own (whatever the flags' order)
        return
    # the folder in the name: two plugin files of one name (a/x.py, b/x.py) are two modules, not one replaced
    module_name = f"harness_plugin_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {str(path)!r} cannot be imported as a module; {what}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # the modules beside it import, as beside a script (after the installed)
    if folder not in sys.path:
        sys.path.append(folder)
    before = set(sys.modules)
    registered = _registrations()
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # whatever the file raises while importing: one line, not the plugin's traceback
        sys.modules.pop(module_name, None)
        for name in _own_modules(set(sys.modules) - before, Path(folder)):  # its helpers that imported: else the
            sys.modules.pop(name, None)  # fixed file's import of one would not run it again (its registrations gone)
        # what it registered before it raised goes too: else loading the fixed file says its names are taken (by
        # its own failed copy)
        _undo_registrations(registered)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C as it is; a SystemExit is the plugin's failure (a review)
            raise
        detail = " ".join(f"{type(exc).__name__}: {exc.code if isinstance(exc, SystemExit) else exc}".split())
        raise ValueError(f"plugin {str(path)!r} failed to import ({detail}); fix it or leave out --plugin") from None
    # another plugin given after it that imports it by its file's name gets this module, not a second copy whose
    # registrations would be refused as taken (only where that name finds this file: an installed module wins)
    try:  # a plain name only: a dotted stem would import its parent package to look
        found = (
            importlib.util.find_spec(path.stem) if path.stem.isidentifier() and path.stem not in sys.modules else None
        )
    except (ImportError, ValueError):
        found = None
    if found is not None and found.origin and Path(found.origin).resolve() == path.resolve():
        sys.modules[path.stem] = module
    imported = {Path(sys.modules[n].__file__).resolve() for n in _own_modules(set(sys.modules) - before, Path(folder))}
    _PLUGINS_LOADED[path.resolve()] = _plugin_digest(path.resolve(), Path(folder), imported)


def _plugin_digest(path: Path, folder: Path, imported: set[Path]) -> str:
    """The code a run of a plugin depends on: the file and the modules it imports from its own folder (and below),
    those first imported now (``imported``) and those its import statements name, imported yet or not (the hash
    must depend neither on the order plugins load in nor on when a function imports a helper). One sha256 over them
    all, not a file's own: ``relative path\\0content`` of each, the plugin file first, then the others by path (so
    ``sha256sum`` of the file does not give it; the README says how to recompute it). Run identity and checkpoints
    compare it: a change of its form would refuse every finished run and checkpoint of a plugin."""
    files = {path} | imported | _imported_beside(path, folder)
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: (f != path, str(f))):  # the plugin file first
        digest.update(f"{file.relative_to(folder)}\0".encode() + file.read_bytes())
    # whose a module is: the plugin's own file its; one it loaded (``imported``), the first loader's; one it only
    # names (in a function, not loaded yet) no plugin's until one loads it (a re-review: a helper another plugin
    # named first was recorded as that plugin's, not the one that loaded it and registered a class from it)
    _PLUGIN_OF[path] = path
    for file in files - {path}:
        if file in imported or _module_of_file(file) is not None:  # loaded: by this plugin, or before it
            _PLUGIN_OF.setdefault(file, path)
    return digest.hexdigest()


def _module_of_file(path: Path) -> Any:
    """The loaded module whose file is ``path``, if any."""
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            try:
                if Path(file).resolve() == path:
                    return module
            except (OSError, ValueError):
                continue
    return None


def _own_modules(names: set[str], folder: Path) -> list[str]:
    """The modules of ``names`` whose files lie in a plugin's ``folder`` (and below): its own code, not the harness's
    (a plugin beside the checkout) nor an installed package's (a ``.venv`` in its folder)."""
    own = []
    for name in names:
        if name.partition(".")[0] in BUILTIN_PACKAGES:
            continue
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder) and not _installed(Path(file).resolve()):
            own.append(name)
    return own


def _installed(path: Path) -> bool:
    """``path`` belongs to an installed package (a site-packages, or the environment's own files), not to the
    plugin's code, even where the plugin's folder holds the environment (a ``.venv`` in a checkout, ``~``)."""
    import site

    if {"site-packages", "dist-packages"} & set(path.parts):
        return True
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    return any(path.is_relative_to(Path(p).resolve()) for p in prefixes if p)


def _imported_beside(file: Path, folder: Path) -> set[Path]:
    """The modules of ``folder`` (and below) that ``file`` imports by name, and those they import: every import
    statement's, in a function or class too, found where ``import`` would find it now without importing it (from
    a review: a helper a plugin imports inside ``__init__`` was left out of its hash until imported, so editing it
    after a run left the run done), and by a call ``importlib.import_module("name")`` or ``__import__("name")``
    with a literal name; a module imported otherwise is seen once loaded."""
    import ast

    found: set[Path] = set()
    todo: list[tuple[Path, str | None]] = [(file, None)]  # a file and its module's name (a relative import's base)
    while todo:
        path, module = todo.pop()
        try:
            tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            for name in _imported_names(node, module, path.name == "__init__.py"):
                if name.partition(".")[0] in BUILTIN_PACKAGES:
                    continue
                for full, beside in _module_files(name):
                    if beside.is_relative_to(folder) and beside not in found and not _installed(beside):
                        found.add(beside)
                        todo.append((beside, full))
    return found


def _imported_names(node: Any, module: str | None, package: bool) -> list[str]:
    """The module names an import statement may load: ``from a import b`` names ``a`` and ``a.b`` (a submodule, or
    not); a relative one is resolved from ``module`` (None: the plugin file, which has no package)."""
    import ast

    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.Call):
        return _imported_by_call(node)
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        if not node.module:
            return []
        base = node.module
    else:
        if module is None:
            return []
        parts = (module if package else module.rpartition(".")[0]).split(".")
        if not parts[0] or len(parts) < node.level:  # beyond the top-level package: the import fails
            return []
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]


def _imported_by_call(node: Any) -> list[str]:
    """The module a call ``importlib.import_module("name")`` or ``__import__("name")`` loads, where the name is a
    literal and absolute (from a review: a helper so imported inside a function was left out of the hash until
    loaded); a name computed at run time, or relative, is seen once loaded."""
    import ast

    func = node.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if called not in ("import_module", "__import__") or not node.args:
        return []
    name = node.args[0]
    if not isinstance(name, ast.Constant) or not isinstance(name.value, str) or not name.value:
        return []
    return [] if name.value.startswith(".") else [name.value]


def _module_files(name: str) -> list[tuple[str, Path]]:
    """The files of ``name`` and its parent packages, as ``import name`` would load them now: a loaded module's
    own, else found on ``sys.path`` (and in the package's folders) without running anything."""
    from importlib.machinery import FrozenImporter, PathFinder

    files: list[tuple[str, Path]] = []
    parts = name.split(".")
    search: list[str] | None = None  # the parent package's folders; None: sys.path, or a parent of no submodules
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        loaded = sys.modules.get(full)
        if loaded is not None:  # os.path too, under a module that is no package
            file, path = getattr(loaded, "__file__", None), getattr(loaded, "__path__", None)
        elif i > 0 and search is None:  # not a package: no submodule to find
            break
        else:
            if i == 0 and (full in sys.builtin_module_names or FrozenImporter.find_spec(full) is not None):
                break  # found before sys.path: no file beside the plugin
            try:
                spec = PathFinder.find_spec(full, search)
            except Exception:  # noqa: BLE001 -- a namespace package's child whose parent is not loaded: KeyError
                spec = None
            if spec is None:
                break
            file, path = spec.origin if spec.has_location else None, spec.submodule_search_locations
        if isinstance(file, str):
            files.append((full, Path(file).resolve()))
        search = [str(p) for p in path] if isinstance(path, Iterable) else None
    return files


_PLUGINS_LOADED: dict[Path, str] = {}  # each plugin file loaded: the sha256 of it and the modules beside it
_PLUGIN_OF: dict[Path, Path] = {}  # each of those files: the plugin that imported it


def plugin_files(*classes: type) -> list[dict[str, str]]:
    """The plugin code that defined ``classes`` (a run's method and task), as a record keeps it: a plugin file
    (``--plugin``; the class in the file or a module beside it) as ``{"file": name, "sha256": one digest of the
    file and the modules it imports from its folder, with their relative paths (``_plugin_digest``), not the
    file's own sha256}``, an installed package's class (an entry point) as ``{"package":
    distribution, "version": its version}``; built-ins are not listed."""
    out = []
    for cls in classes:
        file = getattr(sys.modules.get(cls.__module__), "__file__", None)
        plugin = _PLUGIN_OF.get(Path(file).resolve()) if file else None
        entry = {"file": plugin.name, "sha256": _PLUGINS_LOADED[plugin]} if plugin else _distribution(cls.__module__)
        if entry is not None and entry not in out:
            out.append(entry)
    return out


BUILTIN_PACKAGES = ("harness", "methods", "tasks")
NOT_PACKAGES = (
    "__main__",
    "tests",
    "conftest",
)  # a checkout's own tests: a distribution that ships "tests" is not theirs


@functools.cache
def _top_level_distributions() -> dict[str, list[str]]:
    """``importlib.metadata.packages_distributions()``, read once a process (it scans every installed package)."""
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def _distribution(module: str) -> dict[str, str] | None:
    """``{"package": name, "version": version}`` of the installed distribution that holds ``module`` (by its
    top-level package); None for the built-ins, a module of no distribution, or one several share."""
    from importlib.metadata import PackageNotFoundError, version

    top = module.partition(".")[0]
    if top in BUILTIN_PACKAGES or top in NOT_PACKAGES:
        return None
    names = sorted(set(_top_level_distributions().get(top, [])))
    if len(names) != 1:
        return None
    try:
        return {"package": names[0], "version": version(names[0])}
    except PackageNotFoundError:
        return None


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


METHODS: Registry = Registry("method", "methods", "harness.methods", "harness.adapter:AdapterLinear")
TASKS: Registry = Registry("task", "tasks", "harness.tasks", "harness.task:Task")
