"""``harness``: a thin shell. Arguments -> a config -> one library call; errors are one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import DEFAULT_TARGETS
from harness.registry import METHODS, TASKS, load_plugin, unknown_choice

EXAMPLES = """examples:
  harness list methods
  harness params --model meta-llama/Meta-Llama-3-8B --methods all
  harness params --model embedded --methods lora,effilora --rank 8 --json
  harness run --methods lora,effilora --task commonsense --preset smoke
  harness leaderboard --runs-dir runs/ --out runs/leaderboard/
  harness rescore --task diffusion --runs-dir runs/ --judge-model gpt-4o   # judge finished runs' samples
  harness bench --methods lora,hydralora --rounds 3          # step time vs the frozen-base floor and peft
  harness recount-flops runs/          # finished runs' FLOPs counted again from their records, after a counting fix
"""

RECOUNT_HELP = """Count finished runs' FLOPs again from their records (no training: a meta-device replica).

Each record whose count changes is rewritten in place (atomically), keeping what the run wrote under
train.flops_per_step.recounted.as_run (and train.hook_val_flops.recounted.as_run for the Reducer's scoring
forwards); regenerate the leaderboard afterwards (harness leaderboard). A task without --data-dir uses its default
data (HARNESS_DATA_DIR, the hub, or generated data). Exit status 1 where a record with FLOPs to count was left.

example:
  harness recount-flops results/runs --data-dir commonsense=../shared/data/commonsense \\
      --data-dir diffusion=../shared/data/diffusion/twemoji-64
"""


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def split_names(value: str, registry_names: list[str], kind: str, also: tuple[str, ...] = ()) -> list[str]:
    """Comma-separated names, ``all`` (alone or in the list, e.g. ``base,all``) standing for every registered
    name; each name once, in the order given. ``also``: further words the command takes, named in the error."""
    names: list[str] = []
    for v in (v.strip() for v in value.split(",")):
        for name in registry_names if v == "all" else [v] if v else []:
            if name not in names:
                names.append(name)
    if not names:
        raise CliError(f"no {kind} given; available: {', '.join([*registry_names, *also])}")
    return names


def cmd_list(args: argparse.Namespace) -> None:
    registry = METHODS if args.what == "methods" else TASKS
    for name in registry.names():
        obj = registry.get(name)
        module = sys.modules.get(obj.__module__)  # a plugin's module may be gone from it: its name still lists
        doc = (getattr(module, "__doc__", None) or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else ''}")


def method_options(args: argparse.Namespace) -> dict:
    """The method options of ``--rank/--alpha/--heads/--targets`` and every ``--option key=value``; one setting
    given twice with two values (``--rank 8 --option r=4``) is refused rather than one silently winning."""
    options: dict = {}
    given: dict[str, tuple[str, str]] = {}  # setting (rank and r are one) -> (its value, how it was given)

    def put(key: str, value: Any, how: str) -> None:
        setting = "r" if key in ("r", "rank") else key
        if setting in given and not _same(given[setting][0], str(value)):
            raise CliError(f"{given[setting][1]} and {how} both set {setting}; give it once")
        options[key], given[setting] = value, (str(value), how)

    for key in ("rank", "alpha", "heads", "targets"):
        if getattr(args, key, None) is not None:
            put(key, getattr(args, key), f"--{key} {getattr(args, key)}")
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--option {item!r} must look like key=value (e.g. --option drop_ratio=0.5)")
        put(key.strip(), value.strip(), f"--option {item.strip()}")
    return options


def cmd_recount_flops(args: argparse.Namespace) -> int:
    from harness.records import find_records
    from harness.recount import recount_flops, summary

    data_dirs: dict[str, str] = {}
    for item in args.data_dir:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise CliError(f"--data-dir takes TASK=PATH (e.g. commonsense=../shared/data/commonsense), got {item!r}")
        if task in data_dirs and data_dirs[task] != path:  # the last one won, silently (a review)
            raise CliError(f"--data-dir gives {task} twice ({data_dirs[task]}, {path}); give it once")
        if not Path(path).expanduser().is_dir():
            raise CliError(f"--data-dir {item!r}: {path!r} is not a folder; give the folder that holds {task}'s data")
        data_dirs[task] = path
    runs_dir = Path(args.runs_folder)
    # listed as the leaderboard lists them: a run folder it cannot enter is counted (and said) as one left, where a
    # glob left it out without a word (a review); a runs dir it cannot list is a ValueError saying so
    if not runs_dir.is_dir() or not find_records(runs_dir):
        raise CliError(f"{runs_dir} is not a folder of runs, each with its record.json (e.g. results/runs)")
    if unknown := [t for t in data_dirs if t not in TASKS]:
        raise CliError(unknown_choice("task", unknown[0], TASKS.names(), " in --data-dir"))
    changes = recount_flops(runs_dir, data_dirs, trust_remote_code=args.trust_remote_code)
    return summary(changes)


def _same(a: str, b: str) -> bool:
    """Two option values that mean the same (``16`` and ``16.0``)."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def cmd_params(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  (heavy imports stay out of `harness list`)

    from harness.adapter import attach
    from harness.models import build_meta

    rows = []
    given = method_options(args)
    for method in split_names(args.methods, METHODS.names(), "method"):
        METHODS.get(method)
        meta = build_meta(args.model, trust_remote_code=args.trust_remote_code, pipeline=True)
        base = sum(p.numel() for p in meta.model.parameters())
        options = dict(given)
        if "targets" not in options and type(meta.root).__name__ == "UNet2DConditionModel":
            from tasks.diffusion.presets import TARGETS  # a UNet has no q_proj: its attention's, as the suite adapts

            options["targets"] = TARGETS
        adapter = attach(meta.root, method, **options)
        trainable = adapter.num_trainable_params
        rows.append(
            {
                "method": method,
                "trainable": trainable,
                "total": base + adapter.num_adapter_params,
                "base": base,
                "percent": round(100.0 * trainable / base, 4),
                "model": meta.label,
                "config": adapter.config.to_dict(),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"model: {rows[0]['model']}   base params: {rows[0]['base']:,}")
    # what the counts depend on, as bench.md's header says it (a review: only --json carried the settings); one line
    # where every method has them, else a line per settings naming its methods (a plugin's own defaults); every
    # option given with --option too, as the method took it (a review: train_shared_a=false changed the counts, not
    # the line)
    said: dict[str, list[str]] = {}
    for row in rows:
        config = row["config"]
        shown = {k: config[k] for k in ("r", "alpha", "heads", "targets", *given) if k in config}
        text = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in shown.items())
        said.setdefault(text, []).append(row["method"])
    for text, methods in said.items():
        whose = f" ({', '.join(methods)})" if len(said) > 1 else ""
        print(f"settings{whose}: {text} (heads: the multi-head methods')")
    print(f"{'method':12s} {'trainable':>14s} {'% of base':>10s} {'total':>16s}")
    for row in rows:
        print(f"{row['method']:12s} {row['trainable']:>14,} {row['percent']:>10.3f} {row['total']:>16,}")


class _StoreOnce(argparse._StoreAction):
    """A single-value flag (argparse's ``store``, every command's) given twice with two values is refused: the last
    one silently won (``--methods lora --methods effilora`` ran effilora alone). The same value twice is one."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = vars(namespace).setdefault(_GIVEN, {})
        if self.dest in given and given[self.dest] != values:
            flag = max(self.option_strings, key=len) if self.option_strings else self.dest
            first, listed = given[self.dest], "comma-separated" in (self.help or "")
            as_list = f" (a list is one flag: {flag} {first},{values})" if listed else ""
            raise CliError(f"{flag} is given twice ({first!r}, then {values!r}); give it once{as_list}")
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


_GIVEN = "_harness_given_once"  # the namespace attribute where _StoreOnce keeps the values given, while parsing


class _Parser(argparse.ArgumentParser):
    """``harness`` and its commands' parser (``add_parser`` makes its own class): single-value flags are
    ``_StoreOnce``; repeatable ones (``--option``, ``--also``, ``--plugin``) are ``append`` and stay repeatable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, rest = super().parse_known_args(args, namespace)
        vars(namespace).pop(_GIVEN, None)  # the bookkeeping is no argument
        return namespace, rest


def add_plugin_argument(parser: argparse.ArgumentParser, what: str = "methods or tasks") -> None:
    """``--plugin FILE.py``, repeatable: ``harness``'s and the timing scripts' (which load each before the names
    they are given are checked)."""
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help=f"import a file that registers extra {what} (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harness", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_plugin_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods or tasks")
    p.add_argument("what", choices=["methods", "tasks"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("params", help="exact parameter accounting, offline, on the meta device")
    p.add_argument(
        "--model",
        default="embedded",
        help="'embedded', a local folder or config.json, or a hub id (paper models work offline)",
    )
    p.add_argument("--methods", default="all", help="comma-separated method names or 'all'")
    add_method_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="build a model that comes with its own Python code (its config's auto_map): only for models you trust",
    )
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "recount-flops",
        help="count finished runs' FLOPs again from their records (no training), rewriting the counts that changed",
        description=RECOUNT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # its own dest: an empty one is named as the positional it is (_refuse_empty), not as --runs-dir
    p.add_argument("runs_folder", metavar="RUNS_DIR", help="the folder of run folders, e.g. results/runs")
    p.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="a task's data, where it is not at the task's default (repeatable, one per task)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="build a model that comes with its own Python code (its config's auto_map): only for models you trust",
    )
    p.set_defaults(func=cmd_recount_flops)

    from harness.bench import register as register_bench
    from harness.cli_run import register

    register(sub)
    register_bench(sub)
    for command in sub.choices.values():  # read before parsing (_early_plugins): listed here for --help
        command.add_argument(
            "--plugin", metavar="FILE.py", help="import a file that registers extra methods or tasks (repeatable)"
        )
    return parser


def add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rank", type=int, help="rank r (default: for run, the preset's; for params and bench, the method's, 16)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        help="alpha; scaling = alpha / r (default: for run, the preset's; for params and bench, 32)",
    )
    p.add_argument(
        "--heads",
        type=int,
        help="B heads m for multi-head methods (default: for run, the preset's; for params and bench, 4)",
    )
    p.add_argument(
        "--targets",
        help="module names, comma-separated, or a regex (default: for run, the preset's; for params and bench, "
        f"{','.join(DEFAULT_TARGETS)})",
    )
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="any other method option, e.g. drop_ratio=0.5, selection=random, mixer_init=orthogonal",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None  # parsed: what the Ctrl-C message reads (--force, the runs dir); None if stopped before
    try:
        argv = _early_plugins(argv)
        args = build_parser().parse_args(argv)  # argparse's own errors: usage + one error line, exit 2
        _refuse_empty(args)
        status = args.func(args)  # None, or a command's own exit status (recount-flops: 1 where a record was left)
        if sys.stdout is not None:  # here, not at exit: a reader that has gone (`| head`) is seen below; `>&-`: None
            sys.stdout.flush()
    except SystemExit:  # argparse's --help: its text may still be in stdout's buffer, which Python flushes at exit
        _flush_stdout()
        raise
    except (CliError, ValueError, OSError) as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():  # `harness list methods | head -3`: not an error
            _stdout_to_devnull()
            return 1
        if _debug():
            raise
        message = str(exc)
        if isinstance(exc, OSError) and exc.strerror and exc.filename:  # name the path and what to check
            message = f"{str(exc.filename)!r}: {exc.strerror}; check the path and its permissions"
        print(f"harness: error: {' '.join(message.split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        commands = ("run", "rescore", "bench", "params", "leaderboard", "list", "recount-flops")
        command = args.command if args is not None else next((a for a in argv if a in commands), "")
        print(f"harness: interrupted; {_after_interrupt(command, args, argv)}", file=sys.stderr)
        return 130
    return status or 0


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone, so that a ``BrokenPipeError`` is stdout's and not another
    pipe's (that one is an error to report): Linux's poll says ``POLLERR``; where this cannot be told (no poll, a
    stdout without a file descriptor), yes, as Python's docs on SIGPIPE take every one to be."""
    import select

    try:
        fd, poller = sys.stdout.fileno(), select.poll()
    except (AttributeError, OSError, ValueError):
        return True
    poller.register(fd, select.POLLOUT)
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at devnull (Python's docs on SIGPIPE): what is left in its buffer goes there,
    and Python's flush at exit prints no ``BrokenPipeError`` (stdout without a descriptor is left as it is)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _flush_stdout() -> None:
    """Flush stdout; a reader that has gone is left quietly (``harness --help | head -1``)."""
    try:
        if sys.stdout is not None:  # closed (`>&-`): nothing to flush
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()


def _debug() -> bool:
    """``HARNESS_DEBUG`` asks for the traceback instead of the one line; unset, empty, ``0``, ``false``, ``no`` or
    ``off`` (any case) do not (``HARNESS_DEBUG=0`` turned it on: any value did)."""
    return os.environ.get("HARNESS_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _after_interrupt(command: str, args: argparse.Namespace | None, argv: list[str]) -> str:
    """What an interrupted ``command`` left and how to go on (``args``: the parsed command line, None where the
    interrupt came before it was parsed: the subcommand is then the first word of ``argv`` that names one)."""
    if command == "rescore":
        said = "the runs rescored so far are written; the others keep their records as they were"
        if args is not None:  # (a review) the leaderboard is rebuilt at the end only, as after a run
            from harness.cli_run import leaderboard_not_rebuilt

            said += leaderboard_not_rebuilt(args)
        return said
    if command != "run":
        return "nothing half-written is left"
    force = args.force if args is not None else "--force" in argv
    if force:  # --force drops each run's checkpoint when it starts, and a forced re-run of a run that had finished
        # keeps that record until it succeeds (without --force the run is then skipped as done): which run is
        # which, this cannot tell, so both ways are said
        said = (
            "with --force the same command starts each run over (finished runs keep their records until their "
            "re-run succeeds); to go on from an unfinished run's last checkpoint instead, run it without --force "
            "(runs that had finished are then skipped)"
        )
    else:
        # a run stopped before its first checkpoint (loading its model, the multimodal stage 1) has none to go on from
        said = (
            "the same command goes on from each unfinished run's last checkpoint, or starts one over that saved none "
            "yet (finished runs are kept)"
        )
    if args is not None:
        from harness.cli_run import leaderboard_not_rebuilt

        said += leaderboard_not_rebuilt(args)
    return said


POSITIONALS = {"runs_folder": "RUNS_DIR"}  # the dests of positional arguments, by the metavar they are shown as


def _refuse_empty(args: argparse.Namespace) -> None:
    """A flag given an empty value (``--preset "$UNSET"``) is refused: it would silently mean its default."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if dest in POSITIONALS and any(isinstance(v, str) and not v.strip() for v in values):
            # a review: recount-flops "" was told about a --runs-dir flag it has not
            raise CliError(f"{POSITIONALS[dest]} is empty; give the folder of runs (e.g. results/runs)")
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise CliError(
                f"--{dest.replace('_', '-')} is empty; give it a value ('none' where the flag takes it), or leave it "
                "out for its default"
            )


def _early_plugins(argv: list[str]) -> list[str]:
    """Load ``--plugin`` files before parsing, so their names are known to every command (``ValueError`` if
    one cannot be loaded; ``main`` prints it as one line); ``argv`` without them, so that one given after the
    command (``harness params --plugin x.py``) works as one given before it."""
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg.partition("=")[0]
        if len(name) >= 4 and "--plugin".startswith(name):  # argparse takes a prefix (--plug) as the flag too
            path = arg.partition("=")[2] if "=" in arg else argv[i + 1] if i + 1 < len(argv) else ""
            if not path.strip() or (path.startswith("-") and "=" not in arg):
                raise CliError("--plugin needs a file: --plugin my_method.py (a .py file that registers a method)")
            load_plugin(path)
            i += 1 if "=" in arg else 2
            continue
        else:
            rest.append(arg)
        i += 1
    return rest
