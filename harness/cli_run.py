"""``harness run`` and ``harness leaderboard``: argument parsing only; the work is in runner/leaderboard."""

from __future__ import annotations

import argparse
import contextlib
import errno
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.atomic import check_writable, disk_error
from harness.cli import CliError, add_method_args, method_options, split_names
from harness.config import parse_bool
from harness.registry import unknown_choice


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds {value!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise CliError("--seeds is empty; e.g. --seeds 0,1,2")
    if bad := [s for s in seeds if not 0 <= s < 2**32]:
        raise CliError(f"--seeds {bad[0]} is out of range; a seed is an integer in 0..{2**32 - 1}")
    return list(dict.fromkeys(seeds))  # each once, as --methods: a seed listed twice is one run


def _train_domains(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    domains = tuple(split_list(value))
    if not domains:
        raise CliError(
            f"--train-domains {value!r} names no domain; name one or more (e.g. math,document) or leave it out"
        )
    if twice := sorted({d for d in domains if domains.count(d) > 1}):
        raise CliError(f"--train-domains lists {twice[0]!r} twice; name each domain once")
    return domains


def _bool(value: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not true or false") from None


def cmd_run(args: argparse.Namespace) -> None:
    with _quiet_bars() if args.quiet else contextlib.nullcontext():  # before any model loads, undone after
        _cmd_run(args)


def _cmd_run(args: argparse.Namespace) -> None:
    from harness.leaderboard import NoRecords, write_leaderboards
    from harness.memory import keep_freed_memory
    from harness.registry import METHODS, TASKS
    from harness.runner import BASELINE, RunRefused, build_specs, run_all
    from harness.train import Cancelled, CheckpointUnreadable

    words = (BASELINE, "all")  # the two words `run` takes besides the registered methods, named in its errors
    methods = split_names(args.methods, METHODS.names(), "method", also=words)
    for m in methods:
        if m != BASELINE and m not in METHODS:
            raise CliError(unknown_choice("method", m, [*METHODS.names(), *words]))
    adapter_flags = [f for f, given in (("--rank/--alpha/--heads/--targets/--option", method_options(args)),
                                        ("--fast-path", args.fast_path)) if given]  # fmt: skip
    if methods == [BASELINE] and adapter_flags:
        raise CliError(f"{adapter_flags[0]}: base (the zero-shot model) has no adapter to apply it to; leave it out")
    train = {
        k: v
        for k, v in {
            "steps": args.steps,
            "epochs": args.epochs,
            "lr": args.lr,
            "warmup_steps": args.warmup_steps,
            "train_on_inputs": args.train_on_inputs,
            "micro_batch_size": args.micro_batch_size,
            "grad_accum": args.grad_accum,
        }.items()
        if v is not None
    }
    # the training flags given (the sources trained on too, and the split they are drawn into: only training reads
    # --train-cap and --val-size): refused as the adapter's are where nothing is trained
    split = [("--train-domains", args.train_domains), ("--train-cap", args.train_cap), ("--val-size", args.val_size)]
    flags = [f"--{k.replace('_', '-')}" for k in train] + [f for f, v in split if v is not None]
    if methods == [BASELINE] and flags:
        them = "them" if len(flags) > 1 else "it"
        raise CliError(
            f"{', '.join(flags)}: base (the zero-shot model) is not trained; leave {them} out, or run base beside a "
            "trained method (e.g. --methods base,lora)"
        )
    task = {
        k: v
        for k, v in {
            "eval_limit": args.eval_limit,
            "train_cap": args.train_cap,
            "val_size": args.val_size,
            "template": args.template,
            "train_sources": _train_domains(args.train_domains),
            "data_dir": args.data_dir,  # not in the run id (its hashes are); a task's settings may read it
            "scoring": _scoring(args, TASKS.get(args.task)),
        }.items()
        if v is not None
    }
    specs = build_specs(
        args.task,
        methods,
        _seeds(args.seeds),
        args.preset or TASKS.get(args.task).default_preset,
        model=args.model,
        protocol=args.protocol,
        method_options=method_options(args),
        train_overrides=train,
        task_overrides=task,
        eval_batch_size=args.eval_batch_size,
        random_weights=args.random_weights,
        fast_path=args.fast_path,
    )
    keep_freed_memory()  # the allocator keeps freed blocks for the next step (harness.memory; recorded)
    _refuse_unused_out(args)
    _expand_folders(args)
    runs_dir, out = Path(args.runs_dir), Path(args.out or args.runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise CliError(f"--runs-dir {str(runs_dir)!r} is a file; pass a folder for the run records")
    if args.leaderboard and out.exists() and not out.is_dir():
        raise CliError(
            f"--out {str(out)!r} is a file; pass a folder for the leaderboard files (or --no-leaderboard without --out)"
        )
    if _is_main_process():  # first: where --out defaults to it, its fault is the runs dir's, not --out's
        check_writable(runs_dir)
    if args.leaderboard:  # before any training: a folder that cannot be made failed after every run
        check_writable(out, "leaderboard folder", "--out")
    ran = False  # whether the runs were made: a file error after them leaves the leaderboard to rebuild
    try:
        records = run_all(
            specs,
            runs_dir,
            args.data_dir,
            force=args.force,
            progress=not args.quiet,
            trust_remote_code=args.trust_remote_code,
        )
        ran = True
        failed = [r["run"]["id"] for r in records if r["run"]["status"] != "success"]
        not_written = ""  # where runs failed: why the leaderboard was not written, said with the failures
        if args.leaderboard and _is_main_process():
            try:
                for path in write_leaderboards(runs_dir, out):
                    print(f"wrote {path}")
            except ValueError as exc:
                if not failed:
                    raise
                # no successful record at all: the failures say why, not that there is none; any other fault of the
                # leaderboard (a bug, a record it cannot read) is said beside them, not swallowed
                if not isinstance(exc, NoRecords):
                    not_written = f"; the leaderboard was not rebuilt: {exc} (the records are kept)"
    except Cancelled as exc:  # the runner says what the next start does
        print(f"harness: cancelled: {exc}{leaderboard_not_rebuilt(args)}", file=sys.stderr)
        by_ctrl_c = getattr(exc, "by", None) == "Ctrl-C"
        raise SystemExit(128 + (signal.SIGINT if by_ctrl_c else signal.SIGTERM)) from None
    except CheckpointUnreadable as exc:  # its run's record says failed; the checkpoint is kept for the next start
        raise CliError(f"{exc}{leaderboard_not_rebuilt(args)}") from None
    except RunRefused as exc:  # a finished run that is not the one asked for: refused before any run, or after some
        raise CliError(f"{exc}{leaderboard_not_rebuilt(args) if exc.after_runs else ''}") from None
    except OSError as exc:  # disk full, permissions, a data file missing: every file is written atomically, nothing
        # is half-written (a run that met a full disk has its record say failed, and stopped the sweep: harness.runner)
        rebuild = leaderboard_not_rebuilt(args) if ran or _runs_began(exc) else ""  # none to rebuild before any run
        raise CliError(
            f"{_file_error(exc)}, then run the same command again: finished runs are kept{rebuild}"
        ) from None
    if failed:
        first = next(r for r in records if r["run"]["status"] != "success")
        error = _first_line(str(first["run"].get("error") or ""))[:300]
        why = f"; {first['run']['id']}: {error}" if error else ""
        raise CliError(
            f"{len(failed)} of {len(records)} runs failed: {', '.join(failed)} (see their records{why}){not_written}"
        )


def _first_line(error: str) -> str:
    """The first line that says something: a record's error is "Type: message", and a message that begins with a
    newline (safetensors' "Some tensors share memory") left "RuntimeError: " alone on the first line."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # the type, then the message's first line
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else ""


@contextlib.contextmanager
def _quiet_bars() -> Iterator[None]:
    """No progress bar while the command runs: transformers' and the hub's (their switches), and tqdm's own, as
    ``TQDM_DISABLE=1`` gives: transformers' GGUF conversion ("Converting and de-quantizing GGUF tensors...") calls
    tqdm directly, past transformers' switch (a review: ``--quiet`` left it). tqdm reads ``TQDM_*`` once, on its
    import, which torch has done by now (the parser of ``harness.cli`` imports it, for ``bench``): the variable is set
    for the processes this one starts, and here ``disable=True`` is made the default of tqdm's ``__init__``, as the
    variable makes it on import. All of it is undone on the way out (a caller of ``main`` in the same process keeps
    its bars; from a review: transformers' and the hub's stayed off). Our bars that pass ``disable=not progress``
    keep their own say: an argument given wins over the default."""
    import functools
    import os

    import huggingface_hub.utils
    import tqdm.std
    from transformers.utils import logging as hf_logging

    before = os.environ.get("TQDM_DISABLE")
    hf_on, hub_off = hf_logging.is_progress_bar_enabled(), huggingface_hub.utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # transformers' and the hub's own bars (loading weights, downloads)
    huggingface_hub.utils.disable_progress_bars()
    os.environ["TQDM_DISABLE"] = "1"
    init = tqdm.std.tqdm.__dict__["__init__"]  # a partialmethod where tqdm's envwrap made one: nested, it flattens
    tqdm.std.tqdm.__init__ = functools.partialmethod(init, disable=True)
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = init
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before
        if hf_on:
            hf_logging.enable_progress_bar()  # which turns the hub's on too: set just after
        if hub_off:
            huggingface_hub.utils.disable_progress_bars()
        else:
            huggingface_hub.utils.enable_progress_bars()


def _expand_folders(args: argparse.Namespace) -> None:
    """``--runs-dir`` and ``--out`` with a leading ``~`` are the home's: the shell leaves ``--runs-dir=~/runs`` (and a
    quoted ``"~/runs"``) as it is, and a folder ``./~/runs`` was made of it (from a review: pandas, which expands a
    ``~``, wrote the tables to the home's folder and left empty CSVs in ``./~``)."""
    import os

    args.runs_dir = os.path.expanduser(args.runs_dir)
    if args.out is not None:
        args.out = os.path.expanduser(args.out)


def _refuse_unused_out(args: argparse.Namespace) -> None:
    """``--out`` names where the leaderboard goes; with ``--no-leaderboard`` none is written (a review: it was
    ignored without a word, as the CLI refuses other flags that would do nothing)."""
    if args.out is not None and not args.leaderboard:
        raise CliError("--out says where the leaderboard goes, and --no-leaderboard writes none; leave one of them out")


# errors of a file that is not there to read (a task's data file; a task's __init__ reads it before any run); either
# side's permission (a disk that cannot take a write: harness.atomic.disk_error)
_MISSING = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
_PERMISSION = {errno.EACCES, errno.EPERM}


def _runs_began(exc: BaseException) -> bool:
    """Whether ``exc`` came once the sweep's runs began: its traceback passes through ``harness.runner.run_one``,
    where a run is taken and trained (a run that met a full disk stops the sweep from there). The checks before any
    run (the models, every task's data, its split) are not in it: from a review, an unreadable ``config.json`` there
    said the leaderboard was not rebuilt and gave a command to rebuild it from a runs dir that did not exist."""
    import harness.runner

    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is harness.runner.run_one.__code__:
            return True
        tb = tb.tb_next
    return False


def _in_cache(exc: OSError) -> bool:
    """Whether ``exc``'s file is in the harness's cache (``HARNESS_CACHE``; a task's generated data is built there)."""
    import os

    from harness.models import cache_dir

    cache = os.path.abspath(cache_dir())
    files = [os.path.abspath(f) for f in (exc.filename, exc.filename2) if isinstance(f, str | os.PathLike)]
    return any(f == cache or f.startswith(cache.rstrip(os.sep) + os.sep) for f in files)


def _file_error(exc: OSError) -> str:
    """What ``exc`` says of its file and what to do, decided by its errno: a read of a missing file was said as a
    failed write, with "free space" for advice (from a review: a plugin task's missing data file, read in its
    ``__init__`` before any run, was "could not write .../train.csv (No such file or directory); free space"). A
    file of the cache that cannot be written names ``HARNESS_CACHE``, as the embedded model's conversion does
    (``harness.models.check_cache_writable``; a review: the multimodal data built there said "fix permissions")."""
    where, why = exc.filename or "a file", exc.strerror or exc
    if exc.errno in _PERMISSION | {errno.EROFS} and _in_cache(exc):
        return f"could not read or write {where} ({why}) in the harness's cache; set HARNESS_CACHE to a folder you can write"
    if exc.errno in _MISSING:
        return f"cannot read {where} ({why}); check the path (a task's data: --data-dir)"
    if disk_error(exc):
        return f"could not write {where} ({why}); free space or fix permissions"
    if exc.errno in _PERMISSION:  # a read or a write: the error does not say which
        return f"could not read or write {where} ({why}); fix permissions"
    return f"could not read or write {where} ({why}); check the path, its permissions and the disk"


def leaderboard_not_rebuilt(args: argparse.Namespace) -> str:
    """For the message of a stopped ``harness run`` or ``rescore`` (Ctrl-C, SIGTERM, an unreadable checkpoint, a
    finished run refused after runs of the sweep finished: ``harness.runner.RunRefused``): the
    leaderboard is rebuilt after the last run only, so a stopped sweep's tables lack the runs it finished; the
    command that rebuilds them. Not rebuilt here: a stop asks to stop, and a scheduler's SIGTERM leaves seconds before its SIGKILL, which the runs'
    checkpoints and records are for, not tables that one command rebuilds from them at any time."""
    if not getattr(args, "leaderboard", False) or not _is_main_process():
        return ""
    out = f" --out {shlex.quote(args.out)}" if args.out else ""
    return (
        f"; the leaderboard was not rebuilt: harness leaderboard --runs-dir {shlex.quote(args.runs_dir)}{out} "
        "rebuilds it from the finished records"
    )


def _scoring(args: argparse.Namespace, task_cls, environment: bool = True) -> tuple[tuple[str, str], ...] | None:
    """Optional scorers (the diffusion suite's judge and HPS v2); None when none is asked for. A flag for a
    scorer the task does not have is refused by ``build_specs``; ``HARNESS_HPS_CHECKPOINT`` is read only by a task
    that has it, and only with ``environment`` (not by ``harness rescore``, which scores with what it is named)."""
    import os

    has_hps = environment and "hps_checkpoint" in task_cls.scorers
    env = os.environ.get("HARNESS_HPS_CHECKPOINT") if has_hps else None
    hps = args.hps_checkpoint or env
    if args.hps_checkpoint and "hps_checkpoint" not in task_cls.scorers:
        return _named_scorers(args)  # build_specs refuses it, naming the task: whether the file exists or not
    if hps and not Path(hps).expanduser().is_file():
        given = "--hps-checkpoint" if args.hps_checkpoint else "HARNESS_HPS_CHECKPOINT"
        raise CliError(f"{given} {hps!r} is not a file; give the path of HPS v2's checkpoint (HPS_v2_compressed.pt)")
    hps = str(Path(hps).expanduser()) if hps else hps  # "~/x.pt" from the environment or --flag=~/x.pt: not the shell's
    pairs = tuple((k, v) for k, v in (("judge_model", args.judge_model), ("hps_checkpoint", hps)) if v)
    return pairs or None


def _named_scorers(args: argparse.Namespace) -> tuple[tuple[str, str], ...] | None:
    """The scorer flags as given, unchecked (for a task that has not the scorer: refused by build_specs)."""
    pairs = (("judge_model", args.judge_model), ("hps_checkpoint", args.hps_checkpoint))
    return tuple((k, v) for k, v in pairs if v) or None


def _is_main_process() -> bool:
    from harness.guard import is_main_process

    return is_main_process()


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from harness.leaderboard import write_leaderboards

    _expand_folders(args)
    out, runs = Path(args.out or args.runs_dir), Path(args.runs_dir)
    if runs.exists() and not runs.is_dir():  # named as itself, not as the --out it stands for when --out is not given
        raise CliError(f"runs dir {str(runs)!r} is a file; pass --runs-dir the folder that holds the runs")
    check_writable(out, "leaderboard folder", "--out")  # before every table is built
    for path in write_leaderboards(runs, out):
        print(f"wrote {path}")


def cmd_rescore(args: argparse.Namespace) -> None:
    from harness.leaderboard import write_leaderboards
    from harness.registry import TASKS
    from harness.rescore import rescore_runs

    task_cls = TASKS.get(args.task)
    scoring = dict(_scoring(args, task_cls, environment=False) or ())  # only the scorers named
    _refuse_unused_out(args)
    _expand_folders(args)
    out = Path(args.out or args.runs_dir)
    if args.leaderboard:  # before any run is scored
        check_writable(out, "leaderboard folder", "--out")
    ids = split_list(args.runs) if args.runs is not None else None
    if ids is not None and not ids:  # "--runs ," (or two unset variables): none named, not every run
        raise CliError("--runs names no run; give run ids separated by commas, or leave --runs out for every run")
    done, problems = rescore_runs(
        Path(args.runs_dir), args.task, scoring, ids, say=lambda line: print(line, flush=True)
    )
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    if args.leaderboard and done:
        try:
            for path in write_leaderboards(Path(args.runs_dir), out):
                print(f"wrote {path}")
        except OSError as exc:  # the records are written: say so, and how to rebuild (a review: a temp file's error)
            said = f"; {len(problems)} problem(s) rescoring (above)" if problems else ""
            raise CliError(
                f"{_file_error(exc)}; {len(done)} run(s) rescored, their records written{said}"
                f"{leaderboard_not_rebuilt(args)}"
            ) from None
    if problems:  # after the leaderboard: the runs that were scored are in it
        raise CliError(
            f"{len(problems)} problem(s) rescoring (above; the first: {problems[0]}); {len(done)} run(s) rescored"
        )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and score methods on a task; one record per method x seed")
    p.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods ('all': every registered one; 'base': the zero-shot model), e.g. base,all",
    )
    p.add_argument("--task", required=True, help="a registered task, e.g. commonsense")
    p.add_argument(
        "--preset", help="the task's scale: smoke | embedded | paper (default: the task's default_preset, embedded)"
    )
    p.add_argument("--model", help="override the preset's model: 'embedded', a folder, or a hub id")
    p.add_argument(
        "--protocol",
        help="scoring protocol; commonsense: cloze | choice | generate | lm-eval, multimodal: native | lmms-eval, "
        "diffusion: native (default: the preset's)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument(
        "--data-dir",
        help="the task's data (commonsense: a folder of benchmark folders, default $HARNESS_DATA_DIR, else "
        "download; multimodal and diffusion: their own default data, see the README)",
    )
    p.add_argument("--runs-dir", default="runs", help="where run folders and records go (default runs/)")
    p.add_argument(
        "--out",
        help="where the leaderboard files go (default: the runs dir; `harness leaderboard --runs-dir results/runs "
        "--out results` rebuilds this repository's committed tables)",
    )
    p.add_argument("--no-leaderboard", dest="leaderboard", action="store_false", help="do not rebuild the leaderboard")
    p.add_argument(
        "--force",
        action="store_true",
        help="re-run finished runs and start interrupted ones over (drops their checkpoints)",
    )
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the preset's epochs)")
    p.add_argument("--epochs", type=float, help="passes over the training set (overrides the preset's steps)")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--warmup-steps", type=int, help="steps of linear learning-rate warm-up (default: the preset's)")
    p.add_argument("--micro-batch-size", type=int, help="examples per forward pass, per process")
    p.add_argument(
        "--grad-accum", type=int, help="micro-batches per optimizer step (batch = micro x accum x processes)"
    )
    p.add_argument("--train-on-inputs", type=_bool, metavar="true|false", help="loss on prompt tokens too")
    p.add_argument(
        "--template",
        help="prompt template; commonsense: cloze | clean | llm-adapters, multimodal: chat, diffusion: caption "
        "(default: the protocol's)",
    )
    p.add_argument(
        "--eval-limit",
        type=int,
        help="test examples per benchmark (multimodal: per question kind in each domain, a yes/no pair counted "
        "once); 0: no limit",
    )
    p.add_argument(
        "--train-cap", type=int, help="training examples per benchmark (multimodal: per domain); 0: no limit"
    )
    p.add_argument(
        "--val-size", type=int, help="training examples held out for validation and the Reducer (default: the preset's)"
    )
    p.add_argument(
        "--train-domains",
        help="train on these sources only, comma-separated (multimodal: general,document,math), e.g. for "
        "the single-domain rows that show cross-domain interference",
    )
    p.add_argument("--eval-batch-size", type=int, help="examples per scoring forward pass (default: the preset's)")
    p.add_argument(
        "--judge-model",
        help="diffusion: score samples with this model as the seven-criteria judge, through the OpenAI API "
        "(OPENAI_BASE_URL and OPENAI_API_KEY; any compatible server)",
    )
    p.add_argument(
        "--hps-checkpoint", help="diffusion: HPS v2's checkpoint file, to score samples (or $HARNESS_HPS_CHECKPOINT)"
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="build the model from its config with random weights (paper shapes without a download)",
    )
    p.add_argument(
        "--fast-path",
        action="store_true",
        help="train through the adapters' fast path (fused first matmuls, one dropout draw per shared input; "
        "faster on a CPU, other dropout draws): recorded, its own run id and leaderboard row",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (ours, transformers' and the hub's)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model run its own Python code (its config's auto_map; a hub id's or a local folder's), in the "
        "checks before a run too (off by default: only for models you trust)",
    )
    add_method_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "rescore",
        help="score finished runs again with an optional scorer (diffusion: the judge, HPS v2) from what they saved, "
        "without training",
    )
    p.add_argument("--task", required=True, help="the task whose runs to score, e.g. diffusion")
    p.add_argument("--runs-dir", default="runs", help="the folder of run folders (default runs/)")
    p.add_argument("--runs", help="comma-separated run ids (default: every successful run of the task there)")
    p.add_argument(
        "--judge-model",
        help="diffusion: the seven-criteria judge's model, through the OpenAI API (OPENAI_BASE_URL, OPENAI_API_KEY)",
    )
    p.add_argument(
        "--hps-checkpoint", help="diffusion: HPS v2's checkpoint file ($HARNESS_HPS_CHECKPOINT is not read here)"
    )
    p.add_argument("--out", help="where the leaderboard files go (default: the runs dir)")
    p.add_argument("--no-leaderboard", dest="leaderboard", action="store_false", help="do not rebuild the leaderboard")
    p.set_defaults(func=cmd_rescore)

    p = sub.add_parser("leaderboard", help="rebuild the leaderboard files (CSV, Markdown, HTML, PNG) from run records")
    p.add_argument("--runs-dir", default="runs", help="the folder of run folders to tabulate (default runs/)")
    p.add_argument("--out", help="where the leaderboard files go (default: the runs dir)")
    p.set_defaults(func=cmd_leaderboard)
